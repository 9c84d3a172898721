"""The operator's side of monitoring, for real: a Prometheus on loopback scrapes a real
``gisjob-operator`` process while it reconciles a GisJob on the dev cluster, and every operator
panel of the Grafana dashboard returns data; the alert rules evaluate on those metrics and
the ones this run must raise are raised.

The job is chosen to go through the interesting paths in a few seconds:

* a ResourceQuota of ``pods: 0`` at first: the operator's pod creations fail with 403 (API
  errors, reconcile errors) until the test deletes it;
* job ``mon-skew``: two vector tiles, the second one far heavier than the planner's sample
  suggests: tile 0 succeeds (progress, ETA), tile 1 runs out of memory at ~110 MiB above
  the import baseline and succeeds after growing (GisJobTileOutOfMemory);
* job ``mon-nogrow``: the same data without out-of-memory strategies: tile 1 fails, the job
  fails (GisJobFailed).

Data lives under /var/tmp (hostPath volumes mounted at the same path, as the test kubelet
runs workers as local processes).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from clusterutil import ClusterHandle, OperatorProcess, wait_for
from kubernetes import client as k8s

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "monitoring"))

from promutil import (
    RULES,
    Prometheus,
    PrometheusError,
    Unavailable,
    binaries,
    finite,
    load_dashboard,
    samples,
    substitute,
    targets,
)

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
GROUP, VERSION, PLURAL = "gisjob.dev", "v1alpha1", "gisjobs"
JOB = "mon-skew"
FAILING_JOB = "mon-nogrow"
SCRAPE_JOB = "gisjob-operator"


def kubectl(kubeconfig: Path, *args: str, stdin: str | None = None) -> str:
    out = subprocess.run(
        ["kubectl", "--kubeconfig", str(kubeconfig), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, f"kubectl {' '.join(args)}: {out.stderr}"
    return out.stdout


@pytest.fixture
def prometheus_bin() -> Path:
    try:
        return binaries()[0]
    except Unavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """Job data outside /tmp, removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="gisjob-monitoring-", dir="/var/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _skewed_parcels(folder: Path) -> Path:
    """5,000 small parcels, then 300 polygons of 12,000 vertices: the planner samples the first
    features, so tile 1's batches are far bigger than their memory request allows (its worker
    peaks near 500 MiB)."""
    import geopandas as gpd
    import shapely

    rng = np.random.default_rng(1)
    small = [
        shapely.box(500_000 + i * 50, 5_000_000, 500_040 + i * 50, 5_000_040) for i in range(5000)
    ]
    t = np.linspace(0, 2 * np.pi, 12_000, endpoint=False)
    big = []
    for i in range(300):
        r = 1000 + rng.uniform(0, 50, t.size)
        big.append(
            shapely.Polygon(
                np.column_stack([600_000 + i * 3000 + r * np.cos(t), 5_100_000 + r * np.sin(t)])
            )
        )
    gdf = gpd.GeoDataFrame(
        {"population": rng.integers(0, 1000, 5300)}, geometry=small + big, crs="EPSG:32632"
    )
    path = folder / "parcels.gpkg"
    gdf.to_file(path, layer="parcels", engine="pyogrio")
    return path


def _vector_baseline() -> int:
    from gisjob_worker.memory import measured_baseline

    return measured_baseline("vector")


def _skew_memory() -> str:
    return f"{(_vector_baseline() + 110 * 2**20) // 2**20}Mi"


def _job(name: str, data: Path, src: Path, strategies: list[str]) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "GisJob",
        "metadata": {"name": name},
        "spec": {
            "input": {"uri": str(src), "layer": "parcels"},
            "operation": {"name": "filter", "params": {"area": True}},
            "output": {"uri": str(data / name), "format": "GeoParquet"},
            "tiling": {"featuresPerTile": 5000},
            "parallelism": 2,
            # ~110 MiB above the import baseline: tile 1's batch of huge polygons needs more
            "resources": {"memory": _skew_memory(), "maxMemory": "1Gi", "gdalCacheMax": "4Mi"},
            "retry": {"onOutOfMemory": strategies},
            "worker": {
                "volumes": [{"name": "data", "hostPath": {"path": str(data)}}],
                "volumeMounts": [{"name": "data", "mountPath": str(data)}],
                # no GISJOB_* here (the pod policy refuses it): the planner pod reads the
                # baseline the machine measured (the test kubelet's image rule), and worker
                # pods get the plan's from the operator
            },
        },
    }


def _value(prom: Prometheus, expr: str) -> float | None:
    body = prom.query(expr)
    values = samples(body) if body.get("status") == "success" else []
    return values[0] if values else None


def _alert_states(prom: Prometheus, name: str) -> dict[str, str]:
    """{gisjob or "": state} of the alert ``name`` (pending / firing)."""
    return {
        a["labels"].get("gisjob", ""): a["state"]
        for a in prom.alerts()
        if a["labels"]["alertname"] == name
    }


def test_every_operator_panel_has_data_and_alerts_fire(
    cluster: ClusterHandle,
    dev_cluster: Any,
    namespace: str,
    prometheus_bin: Path,
    data_dir: Path,
    tmp_path: Path,
) -> None:
    t_begin = time.monotonic()
    admin = cluster.kubeconfig
    api = cluster.api_client()
    core = k8s.CoreV1Api(api)
    custom = k8s.CustomObjectsApi(api)
    operator = OperatorProcess(admin, namespace, tmp_path / "operator.log")
    scrape = [
        {
            "job_name": SCRAPE_JOB,
            "static_configs": [{"targets": [f"127.0.0.1:{operator.metrics_port}"]}],
        }
    ]
    prom = Prometheus(
        prometheus_bin, tmp_path / "prometheus", scrape, rule_files=[RULES], max_lifetime=240
    )
    try:
        # Prometheus first: its discovery hands the target to the scrape loop after ~5 s
        prom.start()
        kubectl(admin, "apply", "-f", str(REPO / "deploy" / "crd.yaml"))
        wait_for(
            lambda: "GisJob" in kubectl(admin, "api-resources", "--api-group", GROUP),
            timeout=30,
            what="the GisJob CRD to be served",
        )
        core.create_namespaced_resource_quota(
            namespace, {"metadata": {"name": "no-pods"}, "spec": {"hard": {"pods": "0"}}}
        )
        operator.start()
        src = _skewed_parcels(data_dir)  # while the operator starts
        try:
            prom.wait_up(SCRAPE_JOB, 1, timeout=45, until=operator.running)
        except PrometheusError as exc:
            raise AssertionError(f"{exc}\noperator log:\n{operator.tail()}") from None
        start = time.time()
        ready = time.monotonic() - t_begin
        jobs = [_job(JOB, data_dir, src, ["grow", "grow"]), _job(FAILING_JOB, data_dir, src, [])]
        kubectl(admin, "apply", "-n", namespace, "-f", "-", stdin=yaml.safe_dump_all(jobs))

        # 1. pods forbidden by the quota: API errors (403) and failing reconciles, scraped
        wait_for(
            lambda: (_value(prom, 'sum(gisjob_operator_api_errors_total{code="403"})') or 0) >= 2,
            timeout=45,
            interval=0.5,
            what=f"403s from pod creation in Prometheus; operator log:\n{operator.tail()}",
        )
        wait_for(
            lambda: _alert_states(prom, "GisJobOperatorReconcileErrors"),
            timeout=15,
            interval=0.5,
            what="GisJobOperatorReconcileErrors pending",
        )
        core.delete_namespaced_resource_quota("no-pods", namespace)

        # 2. mon-skew: tile 0 succeeds, tile 1 runs out of memory twice, then succeeds;
        #    mon-nogrow: tile 1 runs out of memory once and fails the job
        def finished(name: str) -> dict[str, Any] | None:
            job = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
            status = job.get("status") or {}
            return status if status.get("phase") in ("Succeeded", "Failed") else None

        try:
            status = wait_for(lambda: finished(JOB), timeout=120, interval=0.5, what=JOB)
            failing = wait_for(lambda: finished(FAILING_JOB), timeout=30, what=FAILING_JOB)
        except TimeoutError as exc:
            raise AssertionError(f"{exc}\noperator log:\n{operator.tail()}") from None
        finished_at = time.monotonic() - t_begin
        assert status["phase"] == "Succeeded", status
        assert status["tiles"]["succeeded"] == 2, status
        # one or two grows, depending on this environment's import baseline (the tile's
        # request is sized from it, the heavy batches are not)
        assert status["retries"]["memory"] in (1, 2), status
        assert failing["phase"] == "Failed", failing
        assert failing["tiles"]["succeeded"] == 1 and failing["tiles"]["failed"] == 1, failing

        # 3. the alerts this run must raise, from the real metrics
        def raised() -> bool:
            failed = _alert_states(prom, "GisJobFailed").get(FAILING_JOB) == "firing"
            oom = _alert_states(prom, "GisJobTileOutOfMemory").get(JOB) == "firing"
            return failed and oom

        try:
            wait_for(raised, timeout=20, interval=0.5, what="GisJobFailed, GisJobTileOutOfMemory")
        except TimeoutError as exc:
            oom = prom.query_range("gisjob_operator_tile_oom_total", start, time.time(), 1.0)
            raise AssertionError(f"{exc}\nalerts: {prom.alerts()}\nOOM counter: {oom}") from None
        time.sleep(1.5)  # a last scrape after the final status
        end = time.time()

        # 4. every operator panel target returns data over the run
        variables = {"namespace": namespace, "gisjob": f"{JOB}|{FAILING_JOB}"}
        checked = []
        for t in targets(load_dashboard()):
            expr = substitute(t.expr, variables)
            body = prom.query_range(expr, start, end, 1.0)
            assert body.get("status") == "success", f"{t}: {expr}\n{body}"
            if t.source != "operator":
                continue  # the workers' panels: tests/monitoring/test_local_run_metrics.py
            assert finite(samples(body)), f"{t} has no data from the operator: {expr}"
            checked.append(t)
        assert len(checked) >= 12

        # 5. the numbers behind them
        def value(metric: str, job: str, **labels: str) -> float | None:
            selector = ", ".join([f'gisjob="{job}"', *(f'{k}="{v}"' for k, v in labels.items())])
            return _value(prom, f"{metric}{{{selector}}}")

        assert value("gisjob_operator_jobs", JOB, phase="Succeeded") == 1
        assert value("gisjob_operator_jobs", FAILING_JOB, phase="Failed") == 1
        assert value("gisjob_operator_tiles", JOB, phase="succeeded") == 2
        assert value("gisjob_operator_tiles", FAILING_JOB, phase="failed") == 1
        assert value("gisjob_operator_tile_oom_total", JOB) >= 1
        peak = _value(prom, f'gisjob_operator_job_peak_memory_bytes{{gisjob="{JOB}"}}')
        assert peak is not None and peak > 50 * 1024**2
        errors = prom.query("sum by (verb, resource, code) (gisjob_operator_api_errors_total)")
        assert {
            (s["metric"]["verb"], s["metric"]["resource"], s["metric"]["code"])
            for s in errors["data"]["result"]
        } == {("create", "pods", "403")}
        bad = [(r["name"], r.get("lastError")) for r in prom.rules() if r.get("health") != "ok"]
        assert not bad, bad
        assert "GisJobOperatorDown" not in {
            a["labels"]["alertname"] for a in prom.alerts() if a["state"] == "firing"
        }
    finally:
        operator.stop()
        prom.stop()
        try:
            core.delete_namespaced_resource_quota("no-pods", namespace)
        except k8s.ApiException:
            pass
    assert prom.proc is not None and prom.proc.poll() is not None
    print(
        f"\nmonitoring e2e: operator scraped after {ready:.1f}s, jobs finished after "
        f"{finished_at:.1f}s, done after {time.monotonic() - t_begin:.1f}s"
    )
