"""The Helm chart (charts/gisjob), rendered offline with the real helm CLI (3.6.2 from npm).

``helm lint --strict`` and ``helm template`` with the defaults and with every flag on; the
values schema rejects bad values; names stay within 63 characters; the ClusterRole grants
exactly deploy/rbac.yaml (pods/log get, ConfigMaps create and delete, nothing on Secrets);
the operator pod, a pure
control plane of image gisjob-operator, mounts nothing but its /tmp scratch (no data volume,
no way to configure one); the monitoring objects and the dashboard ConfigMap are what
Prometheus and the Grafana sidecar select; the pod policy (what a GisJob may set in
spec.worker) reaches the operator as the environment it parses, from values and by
default; the chart and the kustomize base agree on the operator container. Skips (with the
reason) when helm cannot be installed.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from gisjob_operator.admission import KNOWN_VOLUME_TYPES, UNLISTABLE_VOLUME_TYPES, PodPolicy
from gisjob_operator.settings import POLICY_ENV, pod_policy_from_env

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "gisjob"
DEPLOY = ROOT / "deploy"
DASHBOARD = "dashboards/gisjob.json"
RULES = "rules/gisjob-alerts.yaml"
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
LONG_RELEASE = "r" * 40 + "-release-name"  # 53: helm's maximum release name length

EVERY_FLAG: dict[str, Any] = {
    "metrics": {
        "serviceMonitor": {"enabled": True, "labels": {"release": "prom"}, "scrapeTimeout": "10s"},
        "podMonitor": {"enabled": True, "labels": {"release": "prom"}},
        "prometheusRule": {"enabled": True, "labels": {"release": "prom"}},
        "service": {"annotations": {"prometheus.io/scrape": "true"}},
    },
    "grafana": {"dashboards": {"enabled": True, "annotations": {"grafana_folder": "GIS"}}},
    "operator": {
        "namespaces": ["team-a", "team-b"],
        "verbose": True,
        "extraArgs": ["--status-interval=5"],
        "extraEnv": [{"name": "GISJOB_BACKOFF_MAX", "value": "120"}],
    },
    "serviceAccount": {"annotations": {"example.com/role": "gisjob"}},
    "podLabels": {"team": "gis"},
    "podAnnotations": {"example.com/note": "x"},
    "nodeSelector": {"kubernetes.io/os": "linux"},
    "tolerations": [{"key": "gis", "operator": "Exists", "effect": "NoSchedule"}],
    "affinity": {"nodeAffinity": {}},
    "priorityClassName": "system-cluster-critical",
    "imagePullSecrets": [{"name": "regcred"}],
    "image": {"repository": "registry.example/gis/gisjob-operator", "tag": "0.1.0-rc1"},
    "podPolicy": {
        "allowedImages": ["registry.example/gis/", "gisjob:"],
        "allowedVolumeTypes": ["persistentVolumeClaim", "nfs"],
        "allowedServiceAccounts": ["gis-reader", "gis-writer"],
        "storageSecret": "gisjob-storage",
    },
}
POLICY_ENV_NAMES = [
    "GISJOB_ALLOWED_IMAGES",
    "GISJOB_ALLOWED_VOLUME_TYPES",
    "GISJOB_ALLOWED_SERVICE_ACCOUNTS",
    "GISJOB_STORAGE_SECRET",
]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def chart(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The chart — or, while the dashboard or the rules file are not written yet, a copy
    with minimal stand-ins for them (the templates are what is tested here)."""
    if (CHART / DASHBOARD).is_file() and (CHART / RULES).is_file():
        yield CHART
        return
    copy = tmp_path_factory.mktemp("chart") / "gisjob"
    shutil.copytree(CHART, copy)
    stand_in_dashboard(copy)
    stand_in_rules(copy)
    yield copy


def stand_in_dashboard(chart: Path) -> None:
    path = chart / DASHBOARD
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"title": "gisjob (stand-in)", "uid": "gisjob", "panels": []}))


def stand_in_rules(chart: Path) -> None:
    path = chart / RULES
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        rule = {"alert": "StandIn", "expr": "vector(0) > 1", "labels": {"severity": "info"}}
        path.write_text(yaml.safe_dump({"groups": [{"name": "stand-in", "rules": [rule]}]}))


# --------------------------------------------------------------------------- helpers


def run_helm(helm: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm, *args], capture_output=True, text=True, timeout=60, check=False)


def values_file(tmp_path: Path, values: dict[str, Any], name: str = "values.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(values))
    return path


def render(
    helm: str,
    chart: Path,
    tmp_path: Path,
    values: dict[str, Any] | None = None,
    release: str = "gj",
    namespace: str = "gisjob-system",
    *extra: str,
) -> list[dict[str, Any]]:
    args = ["template", release, str(chart), "--namespace", namespace, *extra]
    if values is not None:
        args += ["--values", str(values_file(tmp_path, values))]
    proc = run_helm(helm, *args)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(docs, kind)
    assert len(found) == 1, f"{len(found)} {kind} objects"
    return found[0]


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    spec = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert len(spec["containers"]) == 1
    c: dict[str, Any] = spec["containers"][0]
    return c


def normalise_rules(rules: list[dict[str, Any]]) -> list[str]:
    """Rules as comparable strings: the order of rules and of list items does not matter."""
    return sorted(
        json.dumps(
            {k: sorted(v) if isinstance(v, list) else v for k, v in r.items()}, sort_keys=True
        )
        for r in rules
    )


def deploy_rbac() -> dict[str, dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all((DEPLOY / "rbac.yaml").read_text()) if d]
    return {d["kind"]: d for d in docs}


def assert_scratch_only(pod: dict[str, Any]) -> None:
    """The operator pod mounts its /tmp emptyDir and nothing else: no data volume (claim,
    hostPath, NFS, ...) — it is a control plane and never reads or writes job data."""
    assert pod["volumes"] == [{"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}}]
    (c,) = pod["containers"]
    assert c["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
    assert "initContainers" not in pod and "ephemeralContainers" not in pod


def rendered_policy(c: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> PodPolicy:
    """The pod policy the operator parses from the container's environment (the policy's
    variables are plain values, each set once)."""
    env = {v["name"]: v for v in c["env"] if v["name"] in POLICY_ENV_NAMES}
    # images and volume types always; service accounts and the storage secret only when set
    # (an empty value reads back as a changed Deployment on every kubectl apply)
    assert {"GISJOB_ALLOWED_IMAGES", "GISJOB_ALLOWED_VOLUME_TYPES"} <= set(env)
    for name in POLICY_ENV_NAMES:
        assert [v["name"] for v in c["env"]].count(name) <= 1
        monkeypatch.delenv(name, raising=False)
        if name in env:
            assert set(env[name]) == {"name", "value"}, env[name]
            if name in ("GISJOB_ALLOWED_SERVICE_ACCOUNTS", "GISJOB_STORAGE_SECRET"):
                assert env[name]["value"], f"{name} rendered empty"
            monkeypatch.setenv(name, env[name]["value"])
    return pod_policy_from_env()


def assert_operator_rules(rules: list[dict[str, Any]]) -> None:
    """What the control plane needs — pods (create, delete, read) and their logs (a plan
    descriptor larger than a termination message), ConfigMaps created and deleted (the job
    document, never read) — and nothing on Secrets or wildcards."""

    def verbs(group: str, resource: str) -> set[str]:
        return {
            v
            for r in rules
            if group in r["apiGroups"] and resource in r["resources"]
            for v in r["verbs"]
        }

    assert verbs("", "pods/log") == {"get"}
    assert verbs("", "pods") == {"get", "list", "watch", "create", "delete"}
    assert verbs("", "events") == {"create"}
    assert verbs("", "configmaps") == {"create", "delete"}  # the job document; never read
    assert verbs("gisjob.dev", "gisjobs/status") == {"get", "patch"}
    for r in rules:
        assert "*" not in r["apiGroups"] + r["resources"] + r["verbs"], r
        assert not {"secrets", "pods/exec"} & set(r["resources"]), r


# --------------------------------------------------------------------------- lint, render


def test_lint_strict_defaults(helm: str, chart: Path) -> None:
    proc = run_helm(helm, "lint", "--strict", str(chart))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout


def test_lint_strict_every_flag_on(helm: str, chart: Path, tmp_path: Path) -> None:
    values = values_file(tmp_path, EVERY_FLAG)
    proc = run_helm(helm, "lint", "--strict", str(chart), "--values", str(values))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_render_defaults(
    helm: str, chart: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = render(helm, chart, tmp_path)
    assert sorted(d["kind"] for d in docs) == [
        "ClusterRole",
        "ClusterRoleBinding",
        "Deployment",
        "Service",
        "ServiceAccount",
    ]
    for d in docs:
        if d["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
            assert d["metadata"]["namespace"] == "gisjob-system", d["kind"]
    dep = one(docs, "Deployment")
    assert dep["spec"]["replicas"] == 1
    assert dep["spec"]["strategy"] == {"type": "Recreate"}
    pod = dep["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "gj-gisjob"
    assert one(docs, "ServiceAccount")["metadata"]["name"] == "gj-gisjob"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    c = container(docs)
    assert c["image"] == "gisjob-operator:0.1.0"
    assert c["command"] == ["gisjob-operator"]
    assert c["args"] == [
        "run",
        "--metrics-port=9090",
        "--liveness-port=8080",
        "--status-interval=2",
        "--keep-failed-pods=3",
        "--backoff-base=10",
    ]
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    for probe in ("livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"metrics": 9090, "health": 8080}
    assert_scratch_only(pod)
    # the default pod policy, as the operator would parse it from the environment
    assert rendered_policy(c, monkeypatch) == PodPolicy()
    env = {v["name"]: v.get("value") for v in c["env"]}
    assert env["GISJOB_ALLOWED_IMAGES"] == "gisjob:"
    assert env["GISJOB_ALLOWED_VOLUME_TYPES"] == (
        "persistentVolumeClaim,configMap,emptyDir,ephemeral,csi"
    )
    assert "GISJOB_ALLOWED_SERVICE_ACCOUNTS" not in env and "GISJOB_STORAGE_SECRET" not in env
    # a control plane's memory (no GDAL, Arrow or NumPy in the operator image)
    assert c["resources"] == {
        "requests": {"cpu": "100m", "memory": "128Mi"},
        "limits": {"memory": "384Mi"},
    }
    assert_operator_rules(one(docs, "ClusterRole")["rules"])
    svc = one(docs, "Service")
    assert svc["spec"]["ports"] == [
        {"name": "metrics", "port": 9090, "targetPort": "metrics", "protocol": "TCP"}
    ]
    selector = dep["spec"]["selector"]["matchLabels"]
    assert svc["spec"]["selector"] == selector
    assert selector.items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    # the operator's selector never matches worker pods
    assert selector["app.kubernetes.io/name"] != "gisjob-worker"


def test_render_every_flag_on(
    helm: str, chart: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = render(helm, chart, tmp_path, EVERY_FLAG)
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == [
        "ClusterRole",
        "ClusterRoleBinding",
        "ConfigMap",
        "Deployment",
        "PodMonitor",
        "PrometheusRule",
        "Service",
        "ServiceAccount",
        "ServiceMonitor",
    ]
    c = container(docs)
    assert "--namespace=team-a" in c["args"] and "--namespace=team-b" in c["args"]
    assert "--verbose" in c["args"] and c["args"][-1] == "--status-interval=5"
    assert {"name": "GISJOB_BACKOFF_MAX", "value": "120"} in c["env"]
    assert rendered_policy(c, monkeypatch) == PodPolicy(
        allowed_images=("registry.example/gis/", "gisjob:"),
        allowed_volume_types=("persistentVolumeClaim", "nfs"),
        allowed_service_accounts=("gis-reader", "gis-writer"),
        storage_secret="gisjob-storage",
    )
    assert c["image"] == "registry.example/gis/gisjob-operator:0.1.0-rc1"
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert_scratch_only(pod)
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["priorityClassName"] == "system-cluster-critical"

    # ServiceMonitor -> the metrics Service, by its labels and port name
    svc, sm = one(docs, "Service"), one(docs, "ServiceMonitor")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert sm["spec"]["namespaceSelector"] == {"matchNames": ["gisjob-system"]}
    assert sm["spec"]["endpoints"][0]["port"] in {p["name"] for p in svc["spec"]["ports"]}
    assert sm["spec"]["endpoints"][0]["scrapeTimeout"] == "10s"
    assert sm["metadata"]["labels"]["release"] == "prom"

    # PodMonitor -> worker pods (labels and port as the operator's pod builder makes them)
    from gisjob_operator.pods import METRICS_PORT, job_labels

    pm = one(docs, "PodMonitor")
    assert pm["spec"]["selector"] == {"matchLabels": {"app.kubernetes.io/name": "gisjob-worker"}}
    assert pm["spec"]["selector"]["matchLabels"].items() <= job_labels("j").items()
    assert pm["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    assert pm["spec"]["namespaceSelector"] == {"any": True}
    assert METRICS_PORT == 9090

    # PrometheusRule: the rules file's groups, verbatim
    pr = one(docs, "PrometheusRule")
    rules = yaml.safe_load((chart / RULES).read_text())
    assert pr["spec"] == {"groups": rules["groups"]}

    # dashboard ConfigMap, labelled for the Grafana sidecar
    cm = one(docs, "ConfigMap")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "GIS"}
    assert json.loads(cm["data"]["gisjob.json"]) == json.loads((chart / DASHBOARD).read_text())


def test_dashboard_label_and_namespace_configurable(helm: str, chart: Path, tmp_path: Path) -> None:
    values = {
        "grafana": {
            "dashboards": {
                "enabled": True,
                "label": "grafana.com/dashboard",
                "labelValue": "gis",
                "namespace": "monitoring",
            }
        }
    }
    cm = one(render(helm, chart, tmp_path, values), "ConfigMap")
    assert cm["metadata"]["namespace"] == "monitoring"
    assert cm["metadata"]["labels"]["grafana.com/dashboard"] == "gis"
    assert "grafana_dashboard" not in cm["metadata"]["labels"]


def test_monitoring_objects_off_by_default_and_namespaced(
    helm: str, chart: Path, tmp_path: Path
) -> None:
    values = {
        "metrics": {
            k: {"enabled": True, "namespace": "monitoring"}
            for k in ("serviceMonitor", "podMonitor", "prometheusRule")
        }
    }
    docs = render(helm, chart, tmp_path, values)
    for kind in ("ServiceMonitor", "PodMonitor", "PrometheusRule"):
        assert one(docs, kind)["metadata"]["namespace"] == "monitoring"
    # the ServiceMonitor still looks for the Service in the release namespace
    assert one(docs, "ServiceMonitor")["spec"]["namespaceSelector"] == {
        "matchNames": ["gisjob-system"]
    }


def test_replicas_zero_and_existing_service_account(helm: str, chart: Path, tmp_path: Path) -> None:
    values = {
        "replicas": 0,
        "serviceAccount": {"create": False, "name": "ops"},
        "rbac": {"create": False},
        "metrics": {"service": {"enabled": False}},
    }
    docs = render(helm, chart, tmp_path, values)
    assert sorted(d["kind"] for d in docs) == ["Deployment"]
    dep = one(docs, "Deployment")
    assert dep["spec"]["replicas"] == 0
    pod = dep["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "ops"
    assert_scratch_only(pod)


def test_pod_policy_from_values(
    helm: str, chart: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One key changed keeps the others' defaults; an empty volume list means none."""
    values = {"podPolicy": {"allowedVolumeTypes": [], "storageSecret": "s3"}}
    policy = rendered_policy(container(render(helm, chart, tmp_path, values)), monkeypatch)
    assert policy == PodPolicy(allowed_volume_types=(), storage_secret="s3")


def test_pod_policy_env_names_are_the_operators() -> None:
    assert sorted(POLICY_ENV.values()) == sorted(POLICY_ENV_NAMES)


def test_schema_volume_types_are_the_listable_ones() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    items = schema["properties"]["podPolicy"]["properties"]["allowedVolumeTypes"]["items"]
    assert sorted(items["enum"]) == sorted(KNOWN_VOLUME_TYPES - set(UNLISTABLE_VOLUME_TYPES))


# --------------------------------------------------------------------------- the schema


@pytest.mark.parametrize(
    ("values", "needle"),
    [
        ({"replicas": "x"}, "replicas"),
        ({"replicas": 2}, "replicas"),
        ({"replicass": 1}, "replicass"),
        ({"image": {"pullPolicy": "Sometimes"}}, "pullPolicy"),
        ({"image": {"registry": "example.com"}}, "registry"),
        ({"metrics": {"service": {"type": "ExternalName"}}}, "type"),
        ({"metrics": {"serviceMonitor": {"enabled": "yes"}}}, "enabled"),
        ({"metrics": {"podMonitor": {"interval": "soon"}}}, "interval"),
        ({"operator": {"metricsPort": 70000}}, "metricsPort"),
        ({"operator": {"namespaces": ["Not_A_Namespace"]}}, "namespaces"),
        ({"grafana": {"dashboards": {"enabeld": True}}}, "enabeld"),
        # the operator mounts no data: there is nothing to configure
        ({"data": {"existingClaim": "gisjob-data"}}, "Additional property data is not allowed"),
        ({"data": {"enabled": False}}, "Additional property data is not allowed"),
        ({"image": {"repository": ""}}, "repository"),
        ({"podPolicy": {"allowedImages": []}}, "allowedImages"),
        ({"podPolicy": {"allowedImages": ["a,b"]}}, "allowedImages"),
        ({"podPolicy": {"allowedVolumeTypes": ["secret"]}}, "allowedVolumeTypes"),
        ({"podPolicy": {"allowedVolumeTypes": ["projected"]}}, "allowedVolumeTypes"),
        ({"podPolicy": {"allowedServiceAccounts": ["Admin"]}}, "allowedServiceAccounts"),
        ({"podPolicy": {"storageSecret": "a/b"}}, "storageSecret"),
        ({"podPolicy": {"allowedSecrets": ["x"]}}, "allowedSecrets"),
    ],
    ids=lambda v: json.dumps(v, separators=(",", ":")) if isinstance(v, dict) else None,
)
def test_schema_rejects(
    helm: str, chart: Path, tmp_path: Path, values: dict[str, Any], needle: str
) -> None:
    path = values_file(tmp_path, values)
    for args in (
        ["template", "gj", str(chart), "--values", str(path)],
        ["lint", "--strict", str(chart), "--values", str(path)],
    ):
        proc = run_helm(helm, *args)
        assert proc.returncode != 0, f"helm {args[0]} accepted {values}"
        out = proc.stdout + proc.stderr
        assert "values don't meet the specifications of the schema" in out, out
        assert needle in out, out


def test_schema_objects_are_closed() -> None:
    """Every object of the schema that lists its properties rejects unknown ones."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    open_objects: list[str] = []

    def walk(node: dict[str, Any], path: str) -> None:
        if "properties" in node:
            if node.get("additionalProperties") is not False:
                open_objects.append(path or "<root>")
            for key, child in node["properties"].items():
                walk(child, f"{path}.{key}")
        if isinstance(node.get("items"), dict):
            walk(node["items"], f"{path}[]")

    walk(schema, "")
    # extraEnv items are EnvVar objects (value, valueFrom): only their name is checked
    assert open_objects == [".operator.extraEnv[]"]


def test_every_values_key_is_commented() -> None:
    """Each key the chart defines (not the contents of free-form Kubernetes objects) has a
    comment on the line above or at the end of its line."""
    text = (CHART / "values.yaml").read_text()
    lines = text.splitlines()
    schema = json.loads((CHART / "values.schema.json").read_text())
    missing: list[str] = []

    def walk(node: yaml.Node, sch: dict[str, Any], path: str) -> None:
        if not isinstance(node, yaml.MappingNode) or "properties" not in sch:
            return
        for key_node, value_node in node.value:
            key = key_node.value
            line = key_node.start_mark.line
            above = lines[line - 1].strip() if line > 0 else ""
            if not (above.startswith("#") or "#" in lines[line].split(":", 1)[1]):
                missing.append(f"{path}{key}")
            walk(value_node, sch["properties"].get(key, {}), f"{path}{key}.")

    root = yaml.compose(text)
    assert root is not None
    walk(root, schema, "")
    assert missing == []


def test_values_yaml_is_valid_against_its_schema_keys() -> None:
    """values.yaml has no key the schema does not define (lint checks types)."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())
    unknown: list[str] = []

    def walk(v: Any, sch: dict[str, Any], path: str) -> None:
        if isinstance(v, dict) and "properties" in sch:
            for key, child in v.items():
                if key not in sch["properties"]:
                    unknown.append(path + key)
                else:
                    walk(child, sch["properties"][key], f"{path}{key}.")

    walk(values, schema, "")
    assert unknown == []


# --------------------------------------------------------------------------- names


@pytest.mark.parametrize(
    "values",
    [
        {"nameOverride": "gisjob-operator-with-a-really-quite-long-name-override-x"},
        {"fullnameOverride": "f" * 70},
        {},
    ],
    ids=["nameOverride", "fullnameOverride", "release-only"],
)
def test_names_truncated_to_63(
    helm: str, chart: Path, tmp_path: Path, values: dict[str, Any]
) -> None:
    flags: dict[str, Any] = json.loads(json.dumps(EVERY_FLAG))
    flags.update(values)
    docs = render(helm, chart, tmp_path, flags, LONG_RELEASE)
    # suffixed names keep their suffix, so they stay distinct after truncation
    assert one(docs, "Service")["metadata"]["name"].endswith("-metrics")
    assert one(docs, "PodMonitor")["metadata"]["name"].endswith("-workers")
    assert one(docs, "ConfigMap")["metadata"]["name"].endswith("-dashboard")
    for d in docs:
        name = d["metadata"]["name"]
        assert len(name) <= 63 and DNS_LABEL.match(name), (d["kind"], name)
        for key, value in d["metadata"]["labels"].items():
            assert len(value) <= 63, (d["kind"], key, value)
    dep = one(docs, "Deployment")
    assert (
        dep["spec"]["template"]["spec"]["serviceAccountName"]
        == one(docs, "ServiceAccount")["metadata"]["name"]
    )
    binding = one(docs, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == one(docs, "ClusterRole")["metadata"]["name"]
    assert binding["subjects"][0]["name"] == one(docs, "ServiceAccount")["metadata"]["name"]
    if "fullnameOverride" in values:
        assert dep["metadata"]["name"] == "f" * 63


def test_release_name_containing_chart_name(helm: str, chart: Path, tmp_path: Path) -> None:
    docs = render(helm, chart, tmp_path, None, "gisjob")
    assert one(docs, "Deployment")["metadata"]["name"] == "gisjob"
    assert one(docs, "Service")["metadata"]["name"] == "gisjob-metrics"


# --------------------------------------------------------------------------- agreement


def test_clusterrole_rules_equal_deploy_rbac(helm: str, chart: Path, tmp_path: Path) -> None:
    docs = render(helm, chart, tmp_path, None, "gj", "ops")
    plain = deploy_rbac()
    role = one(docs, "ClusterRole")
    assert normalise_rules(role["rules"]) == normalise_rules(plain["ClusterRole"]["rules"])
    assert_operator_rules(plain["ClusterRole"]["rules"])
    binding = one(docs, "ClusterRoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "gj-gisjob", "namespace": "ops"}
    ]


def test_chart_and_kustomize_agree_on_the_operator_container(
    helm: str, chart: Path, tmp_path: Path
) -> None:
    docs = render(helm, chart, tmp_path)
    plain = yaml.safe_load((DEPLOY / "deployment.yaml").read_text())
    pc = plain["spec"]["template"]["spec"]["containers"][0]
    hc = container(docs)
    for key in (
        "image",
        "command",
        "args",
        "env",
        "ports",
        "livenessProbe",
        "readinessProbe",
        "resources",
        "securityContext",
        "volumeMounts",
    ):
        assert hc[key] == pc[key], key
    hpod = one(docs, "Deployment")["spec"]["template"]["spec"]
    ppod = plain["spec"]["template"]["spec"]
    assert hpod["securityContext"] == ppod["securityContext"]
    assert hpod["volumes"] == ppod["volumes"]
    assert_scratch_only(ppod)
    assert plain["spec"]["strategy"] == {"type": "Recreate"} and plain["spec"]["replicas"] == 1


def test_crd_copy_is_identical() -> None:
    assert (CHART / "crds" / "gisjob.dev_gisjobs.yaml").read_bytes() == (
        DEPLOY / "crd.yaml"
    ).read_bytes()


def test_crds_rendered_only_on_request(helm: str, chart: Path, tmp_path: Path) -> None:
    docs = render(helm, chart, tmp_path, None, "gj", "gisjob-system", "--include-crds")
    crd = one(docs, "CustomResourceDefinition")
    assert crd["metadata"]["name"] == "gisjobs.gisjob.dev"


def test_missing_chart_files_fail_clearly(helm: str, chart: Path, tmp_path: Path) -> None:
    """A chart packaged without the dashboard or rules file fails with a message when the
    feature is on (and renders when it is off)."""
    bare = tmp_path / "gisjob"
    shutil.copytree(chart, bare, ignore=shutil.ignore_patterns("*.json", "gisjob-alerts.yaml"))
    assert run_helm(helm, "template", "gj", str(bare)).returncode == 0
    for values, message in (
        ({"grafana": {"dashboards": {"enabled": True}}}, DASHBOARD),
        ({"metrics": {"prometheusRule": {"enabled": True}}}, RULES),
    ):
        proc = run_helm(
            helm, "template", "gj", str(bare), "--values", str(values_file(tmp_path, values))
        )
        assert proc.returncode != 0 and f"{message} is missing" in proc.stderr, proc.stderr


def test_notes_render(helm: str, chart: Path, tmp_path: Path) -> None:
    """NOTES.txt renders (helm 3.6 only renders it on install, which needs a cluster: here
    it goes through `tpl` in a scratch template of a copy of the chart)."""
    copy = tmp_path / "gisjob"
    shutil.copytree(chart, copy)
    shutil.copy(copy / "templates" / "NOTES.txt", copy / "notes.txt")
    (copy / "templates" / "zz-notes.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: notes}\n"
        'data: {notes: {{ tpl (.Files.Get "notes.txt") . | quote }}}\n'
    )
    for values, expected in (
        (EVERY_FLAG, ["team-a, team-b", "PodMonitor gj-gisjob-workers", "registry.example/"]),
        ({}, ["all namespaces", "operator's gisjob-operator", "image: gisjob:0.1.0"]),
        ({"replicas": 0}, ["paused"]),
    ):
        docs = render(helm, copy, tmp_path, values)
        notes = next(d for d in docs if d["metadata"]["name"] == "notes")["data"]["notes"]
        assert "deployment/gj-gisjob" in notes
        # jobs bring their own data volume and worker image
        assert "mounts no data volume" in notes and "spec.worker.volumes" in notes
        for text in expected:
            assert text in notes, (text, notes)


# --------------------------------------------------------------------------- other tools


def test_rendered_built_in_kinds_validate_strictly(helm: str, chart: Path, tmp_path: Path) -> None:
    """Every built-in kind the chart renders passes kubernetes-validate --strict."""
    kv: Any = pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate not installed (pip install it)"
    )
    docs = render(helm, chart, tmp_path, EVERY_FLAG, "gj", "gisjob-system", "--include-crds")
    checked = []
    for doc in docs:
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # prometheus-operator's kinds: server-side dry run in tests/cluster
        kv.validate(doc, "1.25.0", strict=True)
        checked.append(doc["kind"])
    assert len(checked) == len(docs) - 3


def test_helm4_sdk_lints_and_enforces_the_schema(chart: Path) -> None:
    """The same chart under Helm 4 (PyPI helm-python-sdk, a dev dependency)."""
    import helm_python

    for values in ({}, EVERY_FLAG):
        report = helm_python.lint(str(chart), values, strict=True)
        assert report["errors"] == [], report
    report = helm_python.lint(str(chart), {"replicas": "x"}, strict=True)
    assert any("replicas" in e for e in report["errors"]), report
    with helm_python.Chart.load(str(chart)) as loaded:
        out = loaded.render(EVERY_FLAG, name="gj", namespace="gisjob-system")
    manifests = [text for path, text in out.items() if path.endswith(".yaml")]
    kinds = sorted(
        d["kind"] for text in manifests for d in yaml.safe_load_all(text) if isinstance(d, dict)
    )
    assert "PodMonitor gj-gisjob-workers" in out["gisjob/templates/NOTES.txt"]
    assert kinds.count("Deployment") == 1 and "PrometheusRule" in kinds
