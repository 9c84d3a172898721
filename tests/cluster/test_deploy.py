"""The plain manifests (deploy/, a kustomize base) against the validators and the API server.

Offline: ``kubectl kustomize deploy/`` builds — the operator is image gisjob-operator, a
control plane with nothing mounted but its /tmp scratch (no data volume), whose RBAC has
pods/log get, ConfigMaps (the job document) create and delete only, and nothing on Secrets —
and every built-in kind in it and in deploy/examples/
passes ``kubernetes-validate --strict`` (unknown fields are errors); the example GisJobs
bring their data volume and worker image in ``spec.worker``.
Dev cluster: ``kubectl apply -k deploy/ --dry-run=server`` then a real apply succeed (the
namespace and the CRD are created first: a server-side dry run cannot create the namespace
its other objects go into); the Deployment's pod passes admission with no data volume; the
examples pass a server-side dry run against the real CRD.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from clusterutil import ClusterHandle, wait_for
from devcluster import DevCluster

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
EXAMPLES = DEPLOY / "examples"
NAMESPACE = "gisjob-system"
VALIDATE_VERSION = "1.25.0"  # the oldest schema set kubernetes-validate ships
BUILT_IN_GROUPS = {"", "apps", "batch", "rbac.authorization.k8s.io", "apiextensions.k8s.io"}


def kubectl(kubeconfig: Path | None, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = ["kubectl", *(["--kubeconfig", str(kubeconfig)] if kubeconfig else []), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, f"{' '.join(proc.args)}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def kustomize_build() -> list[dict[str, Any]]:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not on PATH")
    return [d for d in yaml.safe_load_all(ok(kubectl(None, "kustomize", str(DEPLOY)))) if d]


def group(doc: dict[str, Any]) -> str:
    api_version: str = doc["apiVersion"]
    return api_version.rpartition("/")[0]


def is_token_volume(volume: dict[str, Any]) -> bool:
    """The ServiceAccount token volume admission adds (projected, or a token Secret)."""
    if "projected" in volume:
        return any("serviceAccountToken" in src for src in volume["projected"]["sources"])
    secret_name: str = volume.get("secret", {}).get("secretName", "")
    return secret_name.startswith("gisjob-operator-token-")


def verbs(rules: list[dict[str, Any]], api_group: str, resource: str) -> set[str]:
    return {
        v
        for r in rules
        if api_group in r["apiGroups"] and resource in r["resources"]
        for v in r["verbs"]
    }


# ----------------------------------------------------------------------------- offline


def test_kustomization_lists_the_operator() -> None:
    docs = kustomize_build()
    assert sorted((d["kind"], d["metadata"]["name"]) for d in docs) == [
        ("ClusterRole", "gisjob-operator"),
        ("ClusterRoleBinding", "gisjob-operator"),
        ("CustomResourceDefinition", "gisjobs.gisjob.dev"),
        ("Deployment", "gisjob-operator"),
        ("Namespace", NAMESPACE),
        ("Service", "gisjob-operator-metrics"),
        ("ServiceAccount", "gisjob-operator"),
    ]
    dep = next(d for d in docs if d["kind"] == "Deployment")
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"] == {"type": "Recreate"}
    pod = dep["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "gisjob-operator"
    (c,) = pod["containers"]
    assert c["image"] == "gisjob-operator:0.1.0" and c["command"] == ["gisjob-operator"]
    for probe in ("livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"metrics": 9090, "health": 8080}
    assert "--metrics-port=9090" in c["args"] and "--liveness-port=8080" in c["args"]
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] and not sc["allowPrivilegeEscalation"]
    assert sc["readOnlyRootFilesystem"] and sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert c["resources"]["requests"]["memory"] == "128Mi"
    assert c["resources"]["limits"]["memory"] == "384Mi"
    # a control plane: its /tmp scratch and nothing else (no data volume of any kind)
    assert c["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
    assert pod["volumes"] == [{"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}}]
    rules = next(d for d in docs if d["kind"] == "ClusterRole")["rules"]
    assert verbs(rules, "", "pods/log") == {"get"}
    assert verbs(rules, "", "pods") == {"get", "list", "watch", "create", "delete"}
    # the job document's ConfigMap: created and deleted, never read
    assert verbs(rules, "", "configmaps") == {"create", "delete"}
    for rule in rules:
        assert "*" not in rule["apiGroups"] + rule["resources"] + rule["verbs"], rule
        assert "secrets" not in rule["resources"], rule
    svc = next(d for d in docs if d["kind"] == "Service")
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    assert svc["spec"]["ports"][0]["targetPort"] == "metrics"
    # the operator's ServiceAccount is the one the ClusterRoleBinding names
    binding = next(d for d in docs if d["kind"] == "ClusterRoleBinding")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "gisjob-operator", "namespace": NAMESPACE}
    ]


def test_built_in_kinds_validate_strictly() -> None:
    kv: Any = pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate not installed (pip install it)"
    )
    docs = kustomize_build()
    for path in sorted(EXAMPLES.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    checked = []
    for doc in docs:
        if group(doc) not in BUILT_IN_GROUPS:
            continue  # GisJobs: the API server validates them against the CRD (below)
        kv.validate(doc, VALIDATE_VERSION, strict=True)
        checked.append(doc["kind"])
    assert {"Deployment", "Service", "PersistentVolumeClaim", "Job"} <= set(checked)
    assert {"CustomResourceDefinition", "ClusterRole", "Namespace"} <= set(checked)
    # and strict means strict: a misspelt field is an error
    dep = next(d for d in docs if d["kind"] == "Deployment")
    dep["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kv.ValidationError):
        kv.validate(dep, VALIDATE_VERSION, strict=True)


def test_examples_cover_every_operation() -> None:
    from gisjob_worker.spec import parse_job

    ops = {}
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "GisJob":
                job = parse_job(doc, str(path))
                ops[job.spec.operation.name] = job
            elif doc and doc.get("kind") == "PersistentVolumeClaim":
                assert doc["metadata"]["name"] == "gisjob-data"
    assert sorted(ops) == ["expression", "filter", "ndvi", "scale"]
    for job in ops.values():
        # the jobs' pods (planner, workers, finalizer) mount the data; the operator does not
        assert job.spec.worker.image == "gisjob:0.1.0"
        assert job.spec.input.uri and job.spec.input.uri.startswith("/data/")
        assert job.spec.output.uri.startswith("/data/")
        assert {"name": "data", "mountPath": "/data"} in job.spec.worker.volume_mounts
        (volume,) = job.spec.worker.volumes
        assert volume["persistentVolumeClaim"] == {"claimName": "gisjob-data"}


# ----------------------------------------------------------------------------- dev cluster


def test_apply_dry_run_then_real(cluster: ClusterHandle, dev_cluster: DevCluster) -> None:
    admin = cluster.kubeconfig
    # prerequisites a server-side dry run cannot stand in for: the namespace and the CRD
    ok(
        kubectl(
            admin, "apply", "-f", str(DEPLOY / "namespace.yaml"), "-f", str(DEPLOY / "crd.yaml")
        )
    )
    ok(
        kubectl(
            admin, "wait", "--for=condition=Established", "--timeout=30s", "crd/gisjobs.gisjob.dev"
        )
    )

    out = ok(kubectl(admin, "apply", "-k", str(DEPLOY), "--dry-run=server"))
    assert "deployment.apps/gisjob-operator" in out and "(server dry run)" in out
    out = ok(kubectl(admin, "apply", "-k", str(DEPLOY)))
    assert "deployment.apps/gisjob-operator" in out
    try:
        # the controller manager turns the Deployment into a pod the API server admits
        pods = wait_for(
            lambda: yaml.safe_load(
                ok(
                    kubectl(
                        admin,
                        "-n",
                        NAMESPACE,
                        "get",
                        "pods",
                        "-l",
                        "app.kubernetes.io/name=gisjob-operator",
                        "-o",
                        "yaml",
                    )
                )
            )["items"],
            timeout=30,
            what="the operator Deployment's pod",
        )
        assert len(pods) == 1
        assert pods[0]["spec"]["serviceAccountName"] == "gisjob-operator"
        # admitted with its scratch and the ServiceAccount token only: no data volume
        spec = pods[0]["spec"]
        tokens = {v["name"] for v in spec["volumes"] if is_token_volume(v)}
        assert [v for v in spec["volumes"] if v["name"] not in tokens] == [
            {"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}}
        ]
        (c,) = spec["containers"]
        assert c["image"] == "gisjob-operator:0.1.0"
        assert [m for m in c["volumeMounts"] if m["name"] not in tokens] == [
            {"name": "tmp", "mountPath": "/tmp"}
        ]
        # the examples against the real CRD schema and the real PVC/Job validation
        out = ok(kubectl(admin, "apply", "--dry-run=server", "-f", str(EXAMPLES)))
        for name in ("demo-scale", "demo-ndvi", "demo-expression", "demo-filter"):
            assert f"gisjob.gisjob.dev/{name} created (server dry run)" in out
        # a second apply changes nothing
        out = ok(kubectl(admin, "apply", "-k", str(DEPLOY)))
        assert "configured" not in out, out
    finally:
        # no operator process left running under the test kubelet (it has no token there);
        # the ServiceAccount, RBAC and CRD stay for other tests (apply is idempotent)
        kubectl(admin, "-n", NAMESPACE, "delete", "deployment", "gisjob-operator", "--wait=true")
