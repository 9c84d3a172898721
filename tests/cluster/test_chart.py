"""The Helm chart against a real API server, and its RBAC driving the real operator.

* Every flag on, rendered with the CRD, passes ``kubectl apply --dry-run=server`` (with
  minimal prometheus-operator CRDs installed: fixtures/monitoring-crds.yaml).
* ``helm install`` / ``helm uninstall`` of the chart (replicas 0: the test kubelet would run
  the operator without credentials) work as the README says.
  The installed operator Deployment runs image gisjob-operator and mounts nothing but its
  /tmp scratch: the chart has no data volume to give it.
* The chart's ServiceAccount, ClusterRole and ClusterRoleBinding are applied for real; a
  ``gisjob-operator run`` process whose only credentials are that ServiceAccount's token
  runs a small GisJob (a 512 x 512 raster, one tile) to Succeeded — what the chart grants is
  what the operator needs, pods/log and the job document's ConfigMap included and Secrets
  excluded.

Data lives under /var/tmp (not /tmp: the test kubelet maps /tmp to the pods' scratch
volume), mounted into the job's planner, worker and finalizer pods with hostPath at the same
path (spec.worker). The operator process runs with that folder hidden (an empty tmpfs over
it, in a mount namespace of its own) where the machine allows it, as the chart's operator
pod has no data volume.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from clusterutil import (
    Api,
    ClusterHandle,
    OperatorProcess,
    can_hide_folders,
    new_client,
    unique,
    wait_for,
)
from devcluster import DevCluster
from kubernetes import client as k8s

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "gisjob"
MONITORING_CRDS = Path(__file__).resolve().parent / "fixtures" / "monitoring-crds.yaml"
DASHBOARD = "dashboards/gisjob.json"
RULES = "rules/gisjob-alerts.yaml"

EVERY_FLAG: dict[str, Any] = {
    "metrics": {
        "serviceMonitor": {"enabled": True, "labels": {"release": "prom"}},
        "podMonitor": {"enabled": True},
        "prometheusRule": {"enabled": True},
    },
    "grafana": {"dashboards": {"enabled": True}},
    "operator": {"verbose": True},
}


# --------------------------------------------------------------------------- helpers


def kubectl(
    kubeconfig: Path, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["kubectl", "--kubeconfig", str(kubeconfig), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, f"{' '.join(proc.args)}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def render(
    helm: str, chart: Path, release: str, namespace: str, values: dict[str, Any], *extra: str
) -> str:
    proc = subprocess.run(
        [helm, "template", release, str(chart), "--namespace", namespace, "--values", "-", *extra],
        input=yaml.safe_dump(values),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return ok(proc)


def docs_of(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def chart(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The chart, or a copy with stand-ins for a dashboard/rules file not written yet."""
    if (CHART / DASHBOARD).is_file() and (CHART / RULES).is_file():
        return CHART
    copy = tmp_path_factory.mktemp("chart") / "gisjob"
    shutil.copytree(CHART, copy)
    if not (copy / DASHBOARD).is_file():
        (copy / DASHBOARD).parent.mkdir(parents=True, exist_ok=True)
        (copy / DASHBOARD).write_text(json.dumps({"title": "gisjob (stand-in)", "panels": []}))
    if not (copy / RULES).is_file():
        (copy / RULES).parent.mkdir(parents=True, exist_ok=True)
        rule = {"alert": "StandIn", "expr": "vector(0) > 1"}
        (copy / RULES).write_text(yaml.safe_dump({"groups": [{"name": "s", "rules": [rule]}]}))
    return copy


@pytest.fixture(scope="module")
def monitoring_crds(cluster: ClusterHandle) -> None:
    admin = cluster.kubeconfig
    ok(kubectl(admin, "apply", "-f", str(MONITORING_CRDS)))
    ok(
        kubectl(
            admin,
            "wait",
            "--for=condition=Established",
            "--timeout=30s",
            "crd/servicemonitors.monitoring.coreos.com",
            "crd/podmonitors.monitoring.coreos.com",
            "crd/prometheusrules.monitoring.coreos.com",
        )
    )


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """Job data outside /tmp (see the module docstring); removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="gisjob-chart-", dir="/var/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


# --------------------------------------------------------------------------- tests


def test_every_flag_server_dry_run(
    cluster: ClusterHandle, monitoring_crds: None, helm: str, chart: Path, namespace: str
) -> None:
    rendered = render(helm, chart, unique("gj"), namespace, EVERY_FLAG, "--include-crds")
    kinds = sorted(d["kind"] for d in docs_of(rendered))
    assert kinds == [
        "ClusterRole",
        "ClusterRoleBinding",
        "ConfigMap",
        "CustomResourceDefinition",
        "Deployment",
        "PodMonitor",
        "PrometheusRule",
        "Service",
        "ServiceAccount",
        "ServiceMonitor",
    ]
    out = ok(kubectl(cluster.kubeconfig, "apply", "--dry-run=server", "-f", "-", stdin=rendered))
    for kind in ("servicemonitor", "podmonitor", "prometheusrule"):
        assert f"{kind}.monitoring.coreos.com/" in out, out
    assert "deployment.apps/" in out, out
    assert out.count("(server dry run)") == len(kinds), out


def test_helm_install_and_uninstall(
    cluster: ClusterHandle,
    dev_cluster: DevCluster,
    monitoring_crds: None,
    helm: str,
    chart: Path,
    namespace: str,
) -> None:
    """What the README tells users, with replicas 0 (no operator process under the test
    kubelet, which has no ServiceAccount token to give it)."""
    release = unique("gj")
    values = {**EVERY_FLAG, "replicas": 0}
    base = [helm, "--kubeconfig", str(cluster.kubeconfig), "--namespace", namespace]
    proc = subprocess.run(
        [*base, "install", release, str(chart), "--values", "-", "--wait", "--timeout", "60s"],
        input=yaml.safe_dump(values),
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "NOTES:" in proc.stdout and "(replicas: 0 — paused)" in proc.stdout
    try:
        fullname = f"{release}-gisjob"
        for ref in (
            f"deployment/{fullname}",
            f"serviceaccount/{fullname}",
            f"service/{fullname}-metrics",
            f"servicemonitor/{fullname}",
            f"podmonitor/{fullname}-workers",
            f"prometheusrule/{fullname}",
            f"configmap/{fullname}-dashboard",
        ):
            ok(kubectl(cluster.kubeconfig, "-n", namespace, "get", ref))
        ok(kubectl(cluster.kubeconfig, "get", f"clusterrole/{fullname}"))
        ok(kubectl(cluster.kubeconfig, "get", "crd/gisjobs.gisjob.dev"))
        # the operator as installed: a control plane with its scratch and no data volume
        got = kubectl(
            cluster.kubeconfig, "-n", namespace, "get", f"deployment/{fullname}", "-o", "json"
        )
        dep = json.loads(ok(got))
        pod = dep["spec"]["template"]["spec"]
        (c,) = pod["containers"]
        assert c["image"] == "gisjob-operator:0.1.0", c["image"]
        assert pod["volumes"] == [{"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}}]
        assert c["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
    finally:
        proc = subprocess.run(
            [*base, "uninstall", release], capture_output=True, text=True, timeout=60, check=False
        )
    assert proc.returncode == 0, proc.stderr
    gone = kubectl(cluster.kubeconfig, "get", f"clusterrole/{release}-gisjob")
    assert gone.returncode != 0 and "NotFound" in gone.stderr
    # Helm never deletes CRDs from crds/ (the README says so)
    ok(kubectl(cluster.kubeconfig, "get", "crd/gisjobs.gisjob.dev"))


def test_chart_rbac_runs_the_operator(
    cluster: ClusterHandle,
    dev_cluster: DevCluster,
    helm: str,
    chart: Path,
    namespace: str,
    data_dir: Path,
    tmp_path: Path,
) -> None:
    admin = cluster.kubeconfig
    release = unique("gj")
    rendered = render(
        helm,
        chart,
        release,
        namespace,
        {},
        "--include-crds",
        "--show-only",
        "templates/serviceaccount.yaml",
        "--show-only",
        "templates/clusterrole.yaml",
        "--show-only",
        "templates/clusterrolebinding.yaml",
    )
    docs = docs_of(rendered)
    crd = (chart / "crds" / "gisjob.dev_gisjobs.yaml").read_text()
    sa_name = next(d for d in docs if d["kind"] == "ServiceAccount")["metadata"]["name"]
    role = f"{release}-gisjob"
    ok(kubectl(admin, "apply", "-f", "-", stdin=crd))
    ok(
        kubectl(
            admin, "wait", "--for=condition=Established", "--timeout=30s", "crd/gisjobs.gisjob.dev"
        )
    )
    ok(kubectl(admin, "apply", "-f", "-", stdin=rendered))
    identity = dev_cluster.service_account_kubeconfig(namespace, sa_name)
    # started first: its imports overlap with the checks and the raster below; it cannot see
    # the data folder (as the chart's operator pod, which mounts no data volume)
    hide = (data_dir,) if can_hide_folders() is None else ()
    operator = OperatorProcess(identity, namespace, tmp_path / "operator.log", hide=hide)
    try:
        operator.start()
        assert_grants(identity, namespace, f"system:serviceaccount:{namespace}:{sa_name}")

        # a small real job: 512 x 512, 4 bands, one tile
        write_raster(data_dir / "s2.tif")
        job = {
            "apiVersion": "gisjob.dev/v1alpha1",
            "kind": "GisJob",
            "metadata": {"name": "chart-ndvi", "namespace": namespace},
            "spec": {
                "input": {"uri": str(data_dir / "s2.tif")},
                "operation": {"name": "ndvi", "params": {"nir": 4, "red": 3}},
                "output": {"uri": str(data_dir / "out"), "format": "GTiff"},
                "tiling": {"tileSize": 512},
                "parallelism": 4,
                "worker": {
                    "volumes": [{"name": "data", "hostPath": {"path": str(data_dir)}}],
                    "volumeMounts": [{"name": "data", "mountPath": str(data_dir)}],
                },
            },
        }
        ok(kubectl(admin, "apply", "-f", "-", stdin=yaml.safe_dump(job)))

        def phase() -> dict[str, Any] | None:
            if not operator.running():
                raise AssertionError(f"operator exited:\n{operator.tail()}")
            out = kubectl(admin, "-n", namespace, "get", "gisjob", "chart-ndvi", "-o", "json")
            status: dict[str, Any] = json.loads(out.stdout or "{}").get("status") or {}
            if status.get("phase") == "Failed":
                raise AssertionError(
                    f"job failed: {status.get('message')}\n{status}\n{operator.tail()}\n"
                    + worker_logs(dev_cluster)
                )
            return status if status.get("phase") == "Succeeded" else None

        try:
            status = wait_for(phase, timeout=90, interval=0.5, what="GisJob chart-ndvi Succeeded")
        except TimeoutError as exc:
            raise AssertionError(f"{exc}\n{operator.tail()}") from exc
        assert status["tiles"]["succeeded"] == status["tiles"]["total"] == 1, status
        # the finalizer pod (not the operator) wrote the manifest and mosaic next to the tiles
        manifest = json.loads((data_dir / "out" / "manifest.json").read_text())
        assert len(manifest["tiles"]) == 1
        assert (data_dir / "out" / "mosaic.vrt").is_file()
        # no authorization failures anywhere in the operator's log
        text = operator.log.read_text()
        assert "403" not in text and "Forbidden" not in text, operator.tail()
        # the endpoints the chart's probes and metrics Service/ServiceMonitor point at
        port = operator.liveness_port
        health = urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5)
        assert health.status == 200
        port = operator.metrics_port
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            assert "gisjob_operator_reconciles_total" in r.read().decode()
        # and its events were posted with the chart's identity
        events = ok(kubectl(admin, "-n", namespace, "get", "events", "-o", "json"))
        reasons = {e["reason"] for e in json.loads(events)["items"]}
        assert {"Planned", "Completed"} <= reasons, reasons
    finally:
        operator.stop()
        kubectl(admin, "delete", "--ignore-not-found", f"clusterrolebinding/{role}")
        kubectl(admin, "delete", "--ignore-not-found", f"clusterrole/{role}")


def write_raster(path: Path, size: int = 512, block: int = 256) -> None:
    import numpy as np
    import rasterio
    from affine import Affine

    rng = np.random.default_rng(5)
    data = rng.integers(100, 4000, size=(4, size, size), dtype=np.uint16)
    profile = {
        "driver": "GTiff",
        "width": size,
        "height": size,
        "count": 4,
        "dtype": "uint16",
        "crs": "EPSG:32633",
        "transform": Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 5000000.0),
        "tiled": True,
        "blockxsize": block,
        "blockysize": block,
        "nodata": 0,
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)


def assert_grants(identity: Path, namespace: str, me: str) -> None:
    """The ServiceAccount's token is accepted and RBAC grants what the chart says (and not
    Secrets, reading ConfigMaps or writes the operator never makes)."""
    auth: Api = k8s.AuthorizationV1Api(new_client(identity))
    allowed = [
        ("list", "gisjob.dev", "gisjobs", "", None),
        ("watch", "", "pods", "", None),
        ("patch", "gisjob.dev", "gisjobs", "status", namespace),
        ("delete", "gisjob.dev", "gisjobs", "", namespace),
        ("create", "", "pods", "", namespace),
        ("get", "", "pods", "log", namespace),
        ("create", "", "events", "", namespace),
        ("create", "", "configmaps", "", namespace),  # the job document
        ("delete", "", "configmaps", "", namespace),
        ("watch", "apiextensions.k8s.io", "customresourcedefinitions", "", None),
        ("watch", "", "namespaces", "", None),
        ("get", "", "namespaces", "", None),
    ]
    denied = [
        ("get", "", "secrets", "", namespace),
        ("list", "", "secrets", "", None),
        ("get", "", "configmaps", "", namespace),
        ("list", "", "configmaps", "", None),
        ("update", "", "configmaps", "", namespace),
        ("update", "", "pods", "", namespace),
        ("create", "gisjob.dev", "gisjobs", "", namespace),
        ("update", "gisjob.dev", "gisjobs", "status", namespace),
        ("delete", "", "namespaces", "", None),
        ("create", "", "pods", "exec", namespace),
    ]
    for verb, group, resource, sub, ns in allowed + denied:
        attrs = {"verb": verb, "group": group, "resource": resource, "subresource": sub}
        if ns:
            attrs["namespace"] = ns
        review = auth.create_self_subject_access_review({"spec": {"resourceAttributes": attrs}})
        expected = (verb, group, resource, sub, ns) in allowed
        assert review.status.allowed is expected, f"{me}: {attrs} -> {review.status}"


def worker_logs(dev: DevCluster) -> str:
    """The test kubelet's logs of this test's worker pods (for failure messages)."""
    out = []
    for path in sorted((Path(dev.state_dir) / "kubelet" / "pods").glob("*chart-ndvi*/*.log")):
        out.append(f"--- {path.parent.name}/{path.name}\n{path.read_text()[-2000:]}")
    return "\n".join(out)
