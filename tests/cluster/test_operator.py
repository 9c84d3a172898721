"""The operator on a real API server with the test kubelet: kubectl apply to Succeeded.

The operator runs as a real process (``gisjob-operator run``) with exactly the identity
``deploy/rbac.yaml`` grants, watching one namespace per test module — and, where the machine
allows mount namespaces, with the tests' data folder hidden under an empty tmpfs: it is a
pure control plane. Planner, worker and finalizer pods run as memory-capped processes under
the test kubelet; their data lives in host folders mounted at the same paths.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from clusterutil import Api, ClusterHandle, OperatorProcess, can_hide_folders, unique, wait_for
from kubernetes import client as k8s
from kubernetes import watch as k8s_watch

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
GROUP, VERSION, PLURAL = "gisjob.dev", "v1alpha1", "gisjobs"
MIB = 1024**2


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


@pytest.fixture(scope="module")
def setup(
    cluster: ClusterHandle, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """CRD + the operator's namespace/ServiceAccount/RBAC applied as admin; a test namespace."""
    admin = cluster.kubeconfig
    for f in ("crd.yaml", "namespace.yaml", "serviceaccount.yaml", "rbac.yaml"):
        out = kubectl(admin, "apply", "-f", str(REPO / "deploy" / f))
        assert out.returncode == 0, out.stderr
    wait_for(
        lambda: "GisJob" in kubectl(admin, "api-resources", "--api-group", GROUP).stdout,
        timeout=30,
        what="the GisJob CRD to be served",
    )
    ns = unique("op")
    assert kubectl(admin, "create", "namespace", ns).returncode == 0
    if cluster.dev is not None:
        identity = Path(cluster.dev.service_account_kubeconfig("gisjob-system", "gisjob-operator"))
    else:
        identity = admin  # a real cluster: its own credentials, RBAC not checked here
    api = cluster.api_client()
    yield {
        "admin": admin,
        "identity": identity,
        "namespace": ns,
        "api": api,
        "core": k8s.CoreV1Api(api),
        "custom": k8s.CustomObjectsApi(api),
        "dir": tmp_path_factory.mktemp("operator"),
    }
    kubectl(admin, "delete", "namespace", ns, "--wait=false")


@pytest.fixture(scope="module")
def operator(setup: dict[str, Any]) -> Iterator[OperatorProcess]:
    hide = (setup["dir"],) if can_hide_folders() is None else ()
    op = OperatorProcess(
        setup["identity"], setup["namespace"], setup["dir"] / "operator.log", hide=hide
    )
    op.start()
    yield op
    op.stop()


def _job(
    name: str,
    data: Path,
    input_: dict[str, Any],
    operation: dict[str, Any],
    output: dict[str, Any],
    **spec: Any,
) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "GisJob",
        "metadata": {"name": name},
        "spec": {
            "input": input_,
            "operation": operation,
            "output": output,
            "worker": {
                "volumes": [{"name": "data", "hostPath": {"path": str(data)}}],
                "volumeMounts": [{"name": "data", "mountPath": str(data)}],
            },
            **spec,
        },
    }


def apply(
    setup: dict[str, Any], doc: dict[str, Any], *extra: str
) -> subprocess.CompletedProcess[str]:
    return kubectl(
        setup["admin"],
        "apply",
        "-n",
        setup["namespace"],
        *extra,
        "-f",
        "-",
        stdin=yaml.safe_dump(doc),
    )


def get_job(setup: dict[str, Any], name: str) -> dict[str, Any]:
    obj: dict[str, Any] = setup["custom"].get_namespaced_custom_object(
        GROUP, VERSION, setup["namespace"], PLURAL, name
    )
    return obj


def wait_phase(
    setup: dict[str, Any],
    op: OperatorProcess,
    name: str,
    phases: tuple[str, ...],
    timeout: float = 120,
) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        job = get_job(setup, name)
        return job if (job.get("status") or {}).get("phase") in phases else None

    try:
        return wait_for(check, timeout=timeout, interval=0.5, what=f"{name} in {phases}")
    except TimeoutError as exc:
        status = get_job(setup, name).get("status") or {}
        raise AssertionError(
            f"{exc}\nstatus: {json.dumps(status)[:2000]}\noperator log:\n{op.tail()}"
        ) from None


def job_pods(setup: dict[str, Any], name: str, role: str = "worker") -> list[Any]:
    """The job's pods of one role (worker, planner, finalizer; "" for all)."""
    core: Api = setup["core"]
    selector = f"gisjob.dev/job={name}" + (f",gisjob.dev/role={role}" if role else "")
    pods = core.list_namespaced_pod(setup["namespace"], label_selector=selector)
    return list(pods.items)


class PodRecorder:
    """Every worker pod that ever existed in the namespace (a real watch, in a thread)."""

    def __init__(self, setup: dict[str, Any]) -> None:
        self.names: set[str] = set()
        self.oom: dict[str, Any] = {}
        self._stop = threading.Event()
        self._w = k8s_watch.Watch()
        self._core: Api = setup["core"]
        self._ns = setup["namespace"]
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                for ev in self._w.stream(
                    self._core.list_namespaced_pod, self._ns, timeout_seconds=5
                ):
                    pod = ev["object"]
                    self.names.add(pod.metadata.name)
                    for cs in pod.status.container_statuses or []:
                        term = cs.state.terminated if cs.state else None
                        if term is not None and term.reason == "OOMKilled":
                            self.oom[pod.metadata.name] = pod
                    if self._stop.is_set():
                        break
            except Exception:  # the API server may be restarting
                time.sleep(0.5)

    def stop(self) -> None:
        self._stop.set()
        self._w.stop()
        self._t.join(timeout=10)


def _demo(folder: Path) -> Path:
    from gisjob_worker.demo import write_demo

    write_demo(folder, raster_size=1024, features=20_000, tile_size=512, features_per_tile=10_000)
    return folder


def _read_mosaic(path: Path) -> np.ndarray:
    import rasterio

    with rasterio.open(path) as ds:
        return ds.read()


# ---------------------------------------------------------------------------------- tests


def test_operator_cannot_see_the_data(setup: dict[str, Any], operator: OperatorProcess) -> None:
    """The operator's process sees an empty folder where the tests keep their data (it runs
    in a mount namespace of its own): everything it does, it does through pods."""
    reason = can_hide_folders()
    if reason is not None:
        if os.environ.get("CI"):  # CI runs as root with util-linux installed: must work
            pytest.fail(f"cannot hide the data folder from the operator: {reason}")
        pytest.skip(reason)
    (setup["dir"] / "visible-to-pods.txt").write_text("data")
    seen = subprocess.run(
        ["nsenter", "--target", str(operator.pid), "--mount", "ls", "-A", str(setup["dir"])],
        capture_output=True, text=True, timeout=10, check=False,
    )  # fmt: skip
    assert seen.returncode == 0, seen.stderr
    assert seen.stdout.split() == [], seen.stdout
    # and its process has none of the data stack loaded
    maps = Path(f"/proc/{operator.pid}/maps").read_text()
    for lib in ("libgdal", "libarrow", "numpy"):
        assert lib not in maps, f"{lib} is mapped into the operator"


def test_invalid_specs_are_rejected_at_apply(setup: dict[str, Any]) -> None:
    data = setup["dir"]
    base = _job("bad", data, {"uri": "/data/x.tif"}, {"name": "ndvi"}, {"uri": "/data/out"})
    cases = {
        "headroom": ("resources", {"memoryHeadroom": 1.5}, "memoryHeadroom"),
        "format": ("output", {"uri": "/data/out", "format": "PNG"}, "format"),
        "quantity": ("resources", {"memory": "12XB"}, "memory"),
        "parallelism": ("parallelism", 0, "parallelism"),
    }
    for key, (field, value, words) in cases.items():
        doc = json.loads(json.dumps(base))
        doc["metadata"]["name"] = f"bad-{key}"
        doc["spec"][field] = value
        # --validate=false: the API server's own CRD schema check, not kubectl's
        out = apply(setup, doc, "--validate=false")
        assert out.returncode != 0, f"{key} was accepted"
        assert "is invalid" in out.stderr and words in out.stderr, out.stderr
    doc = json.loads(json.dumps(base))
    del doc["spec"]["input"]
    out = apply(setup, doc, "--validate=false")
    assert out.returncode != 0 and "spec.input: Required value" in out.stderr, out.stderr


def test_spec_the_schema_accepts_but_the_model_rejects_fails_once(
    setup: dict[str, Any], operator: OperatorProcess
) -> None:
    doc = _job(
        "twosources",
        setup["dir"],
        {"uri": "/a.tif", "glob": "/b/*.tif"},
        {"name": "ndvi", "params": {"nir": 4, "red": 3}},
        {"uri": "/data/out"},
    )
    assert apply(setup, doc).returncode == 0
    job = wait_phase(setup, operator, "twosources", ("Failed",), timeout=60)
    status = job["status"]
    assert "give exactly one of uri, uris or glob" in status["message"]
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "InvalidSpec" and failed["status"] == "True"
    seq = status["reconcileSeq"]
    time.sleep(4)  # no retry loop: nothing more is written
    assert get_job(setup, "twosources")["status"]["reconcileSeq"] == seq
    assert job_pods(setup, "twosources", role="") == []


def test_demo_jobs_succeed_with_outputs_equal_to_local_runs(
    setup: dict[str, Any], operator: OperatorProcess
) -> None:
    data = _demo(setup["dir"] / "demo")
    raster = _job(
        "ndvi",
        data,
        {"uri": str(data / "s2.tif")},
        {"name": "ndvi", "params": {"nir": 4, "red": 3}},
        {"uri": str(data / "k8s-ndvi"), "format": "COG"},
        tiling={"tileSize": 512},
        parallelism=2,
        resources={"gdalCacheMax": "8Mi"},
    )
    vector = _job(
        "filter",
        data,
        {"uri": str(data / "parcels.gpkg"), "layer": "parcels"},
        {"name": "filter", "params": {"where": "population > 500", "area": True}},
        {"uri": str(data / "k8s-filter"), "format": "GeoParquet"},
        tiling={"featuresPerTile": 10_000},
        parallelism=2,
        resources={"gdalCacheMax": "8Mi"},
    )
    assert apply(setup, raster).returncode == 0
    assert apply(setup, vector).returncode == 0
    # a worker pod while it exists: sized from the plan, restricted, owned by the job
    try:
        pod = wait_for(
            lambda: (job_pods(setup, "ndvi") or [None])[0], timeout=60, what="an ndvi worker pod"
        )
    except TimeoutError as exc:
        status = get_job(setup, "ndvi").get("status")
        pods = [(p.metadata.name, p.status.phase) for p in job_pods(setup, "ndvi", role="")]
        raise AssertionError(f"{exc}\nstatus: {status}\npods: {pods}") from None
    job = get_job(setup, "ndvi")
    plan_request = job["status"]["plan"]["memoryRequestBytes"]
    res = pod.spec.containers[0].resources
    assert res.requests["memory"] == res.limits["memory"] == str(plan_request)
    assert pod.spec.restart_policy == "Never"
    sc = pod.spec.containers[0].security_context
    assert sc.allow_privilege_escalation is False and sc.read_only_root_filesystem is True
    assert sc.capabilities.drop == ["ALL"] and sc.run_as_non_root is True
    assert pod.spec.security_context.seccomp_profile.type == "RuntimeDefault"
    (owner,) = pod.metadata.owner_references
    assert owner.kind == "GisJob" and owner.uid == job["metadata"]["uid"] and owner.controller
    assert pod.metadata.labels["gisjob.dev/job"] == "ndvi"
    assert pod.metadata.labels["gisjob.dev/attempt"] == "0"
    done = wait_phase(setup, operator, "ndvi", ("Succeeded", "Failed"))
    assert done["status"]["phase"] == "Succeeded", done["status"]
    assert done["status"]["completedTiles"] == "0-3"
    assert done["status"]["progress"] == "4/4"
    assert done["status"]["outputs"]["manifest"] == str(data / "k8s-ndvi" / "manifest.json")
    # kopf keeps no copy of the spec in an annotation (it would fail past 256 KiB)
    annotations = done["metadata"].get("annotations") or {}
    assert not [k for k in annotations if "last-handled-configuration" in k], annotations
    vdone = wait_phase(setup, operator, "filter", ("Succeeded", "Failed"))
    assert vdone["status"]["phase"] == "Succeeded", vdone["status"]
    # the same jobs run locally give the same outputs
    for doc, out in ((raster, "local-ndvi"), (vector, "local-filter")):
        local = json.loads(json.dumps(doc))
        local["spec"]["output"]["uri"] = str(data / out)
        job_file = data / f"{out}.yaml"
        job_file.write_text(yaml.safe_dump(local))
        run = subprocess.run(
            [str(BIN / "gisjob"), "run", str(job_file)],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert run.returncode == 0, run.stderr[-2000:]
    np.testing.assert_array_equal(
        _read_mosaic(data / "k8s-ndvi" / "mosaic.vrt"),
        _read_mosaic(data / "local-ndvi" / "mosaic.vrt"),
    )
    import geopandas as gpd

    k8s_parts = gpd.read_parquet(data / "k8s-filter" / "parts").sort_values("parcel_id")
    local_parts = gpd.read_parquet(data / "local-filter" / "parts").sort_values("parcel_id")
    assert len(k8s_parts) == len(local_parts) > 0
    assert k8s_parts.reset_index(drop=True).equals(local_parts.reset_index(drop=True))
    manifest = json.loads((data / "k8s-ndvi" / "manifest.json").read_text())
    assert manifest["outcome"] == "succeeded"
    assert sorted(t["id"] for t in manifest["tiles"]) == [
        "r0000c0000",
        "r0000c0001",
        "r0001c0000",
        "r0001c0001",
    ]
    # succeeded pods are deleted once their results are in the status
    wait_for(lambda: not job_pods(setup, "ndvi", role=""), timeout=30, what="ndvi pods deleted")
    table = kubectl(setup["admin"], "get", "gj", "-n", setup["namespace"]).stdout
    header, *rows = table.strip().splitlines()
    assert header.split() == ["NAME", "PHASE", "DONE/TILES", "PEAK", "MEMORY", "AGE"]
    row = next(r.split() for r in rows if r.startswith("ndvi "))
    assert row[1] == "Succeeded" and row[2] == "4/4" and row[3].endswith("Mi")
    events = kubectl(
        setup["admin"],
        "get",
        "events",
        "-n",
        setup["namespace"],
        "--field-selector",
        "involvedObject.name=ndvi",
    ).stdout
    assert "Planned" in events and "Completed" in events


def _skewed_vectors(folder: Path) -> Path:
    """5,000 small parcels, then 600 polygons of 8,000 vertices: the planner's sample (the
    first features) makes the second tile's batches look small; they are not."""
    import geopandas as gpd
    import shapely

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    small = [
        shapely.box(500_000 + i * 50, 5_000_000, 500_040 + i * 50, 5_000_040) for i in range(5000)
    ]
    t = np.linspace(0, 2 * np.pi, 8000, endpoint=False)
    big = []
    for i in range(600):
        r = 1000 + rng.uniform(0, 50, t.size)
        big.append(
            shapely.Polygon(
                np.column_stack([600_000 + i * 3000 + r * np.cos(t), 5_100_000 + r * np.sin(t)])
            )
        )
    gdf = gpd.GeoDataFrame(
        {"population": rng.integers(0, 1000, 5600)}, geometry=small + big, crs="EPSG:32632"
    )
    path = folder / "skew.gpkg"
    gdf.to_file(path, layer="parcels", engine="pyogrio")
    return path


def test_tile_oom_killed_by_its_cgroup_recovers_by_growing(
    setup: dict[str, Any], operator: OperatorProcess
) -> None:
    node = setup["core"].read_node("gisjob-dev-node")
    if (node.metadata.annotations or {}).get("gisjob.dev/memory-limits") in (None, "none"):
        pytest.skip("the test kubelet cannot enforce memory limits here (no writable cgroup)")
    from gisjob_worker.memory import measured_baseline
    from gisjob_worker.quantity import round_up_mib

    memory = round_up_mib(measured_baseline("vector") + 110 * MIB)
    data = setup["dir"] / "skew"
    src = _skewed_vectors(data)
    doc = _job(
        "skew",
        data,
        {"uri": str(src), "layer": "parcels"},
        {"name": "filter", "params": {"area": True}},
        {"uri": str(data / "out"), "format": "GeoParquet"},
        tiling={"featuresPerTile": 5000},
        parallelism=1,
        # ~110 MiB above the import baseline: the huge polygons' batch needs ~150 MiB
        resources={"memory": f"{memory // MIB}Mi", "maxMemory": "1Gi", "gdalCacheMax": "4Mi"},
        retry={"onOutOfMemory": ["grow", "grow"]},
    )
    recorder = PodRecorder(setup)
    try:
        assert apply(setup, doc).returncode == 0
        done = wait_phase(setup, operator, "skew", ("Succeeded", "Failed"), timeout=180)
    finally:
        recorder.stop()
    assert done["status"]["phase"] == "Succeeded", done["status"]
    assert done["status"]["retries"]["memory"] >= 1
    killed = recorder.oom.get("skew-f000001-0")
    assert killed is not None, f"no OOMKilled pod seen: {sorted(recorder.names)}"
    term = killed.status.container_statuses[0].state.terminated
    assert term.exit_code == 137 and term.reason == "OOMKilled"
    manifest = json.loads((data / "out" / "manifest.json").read_text())
    tile = next(t for t in manifest["tiles"] if t["id"] == "f000001")
    strategies = [a["strategy"] for a in tile["attempts"]]
    assert strategies[:2] == ["initial", "grow"], tile["attempts"]
    assert tile["attempts"][0]["oomKilled"] is True
    assert tile["attempts"][1]["memory"] == round_up_mib(int(memory * 1.5))
    events = kubectl(
        setup["admin"],
        "get",
        "events",
        "-n",
        setup["namespace"],
        "--field-selector",
        "involvedObject.name=skew",
    ).stdout
    assert "OutOfMemory" in events and "grow" in events


def _many_tiles(setup: dict[str, Any], name: str) -> dict[str, Any]:
    from gisjob_worker.demo import write_raster

    data = setup["dir"] / name
    data.mkdir(exist_ok=True)
    write_raster(data / "in.tif", 1536)
    return _job(
        name,
        data,
        {"uri": str(data / "in.tif")},
        {"name": "ndvi", "params": {"nir": 4, "red": 3}},
        {"uri": str(data / "out"), "format": "COG"},
        tiling={"tileSize": 512},
        parallelism=2,
        resources={"gdalCacheMax": "4Mi"},
    )


def _completed(setup: dict[str, Any], name: str) -> int:
    from gisjob_worker.ranges import expand

    status = get_job(setup, name).get("status") or {}
    return len(expand(status.get("completedTiles") or ""))


def _assert_each_tile_ran_once(recorder: PodRecorder, name: str, tiles: int, out: Path) -> None:
    ours = sorted(n for n in recorder.names if n.startswith(f"{name}-"))
    planners = [n for n in ours if n.startswith(f"{name}-plan-")]
    finalizers = [n for n in ours if n.startswith(f"{name}-finalize-")]
    mine = [n for n in ours if n not in planners and n not in finalizers]
    # one planner and one finalizer: a restarted operator reads the plan from the same pod
    assert len(planners) == 1 and len(finalizers) == 1, ours
    assert len(mine) == tiles, f"expected one pod per tile, saw {mine}"
    assert all(n.endswith("-0") for n in mine), f"a tile was retried or repeated: {mine}"
    manifest = json.loads((out / "manifest.json").read_text())
    assert [t["outcome"] for t in manifest["tiles"]] == ["succeeded"] * tiles
    assert len(list((out / "tiles").iterdir())) == tiles


def test_operator_sigkilled_mid_job_restarts_without_duplicates(
    setup: dict[str, Any], operator: OperatorProcess
) -> None:
    doc = _many_tiles(setup, "restart")
    recorder = PodRecorder(setup)
    try:
        assert apply(setup, doc).returncode == 0
        wait_for(lambda: _completed(setup, "restart") >= 3, timeout=120, what="three tiles done")
        operator.kill()
        time.sleep(2)
        operator.start()
        done = wait_phase(setup, operator, "restart", ("Succeeded", "Failed"), timeout=180)
    finally:
        recorder.stop()
    assert done["status"]["phase"] == "Succeeded", done["status"]
    _assert_each_tile_ran_once(recorder, "restart", 9, Path(doc["spec"]["output"]["uri"]))


def test_api_server_restart_mid_job(
    setup: dict[str, Any], operator: OperatorProcess, cluster: ClusterHandle
) -> None:
    if cluster.dev is None:
        pytest.skip("restarting the API server needs the dev control plane")
    doc = _many_tiles(setup, "apirestart")
    recorder = PodRecorder(setup)
    try:
        assert apply(setup, doc).returncode == 0
        wait_for(lambda: _completed(setup, "apirestart") >= 2, timeout=120, what="two tiles done")
        cluster.dev.restart_apiserver(downtime=3.0)
        done = wait_phase(setup, operator, "apirestart", ("Succeeded", "Failed"), timeout=240)
    finally:
        recorder.stop()
    assert done["status"]["phase"] == "Succeeded", done["status"]
    _assert_each_tile_ran_once(recorder, "apirestart", 9, Path(doc["spec"]["output"]["uri"]))


def test_suspend_stops_pods_and_resume_completes(
    setup: dict[str, Any], operator: OperatorProcess
) -> None:
    doc = _many_tiles(setup, "suspend")
    assert apply(setup, doc).returncode == 0
    wait_for(lambda: job_pods(setup, "suspend"), timeout=60, what="suspend pods")
    doc["spec"]["suspend"] = True
    assert apply(setup, doc).returncode == 0
    wait_phase(setup, operator, "suspend", ("Suspended",), timeout=60)
    wait_for(
        lambda: (
            not [p for p in job_pods(setup, "suspend") if p.status.phase in ("Pending", "Running")]
        ),
        timeout=60,
        what="running pods deleted",
    )
    time.sleep(2)
    assert not [p for p in job_pods(setup, "suspend") if p.status.phase in ("Pending", "Running")]
    doc["spec"]["suspend"] = False
    assert apply(setup, doc).returncode == 0
    done = wait_phase(setup, operator, "suspend", ("Succeeded", "Failed"), timeout=180)
    assert done["status"]["phase"] == "Succeeded"


def test_ttl_deletes_a_finished_job(setup: dict[str, Any], operator: OperatorProcess) -> None:
    data = setup["dir"] / "ttl"
    data.mkdir(exist_ok=True)
    from gisjob_worker.demo import write_raster

    write_raster(data / "in.tif", 512)
    doc = _job(
        "ttl",
        data,
        {"uri": str(data / "in.tif")},
        {"name": "ndvi", "params": {"nir": 4, "red": 3}},
        {"uri": str(data / "out"), "format": "GTiff"},
        ttlSecondsAfterFinished=2,
    )
    assert apply(setup, doc).returncode == 0

    def gone() -> bool:
        try:
            get_job(setup, "ttl")
        except k8s.ApiException as exc:
            return exc.status == 404
        return False

    try:
        wait_for(gone, timeout=120, what="the finished job deleted by its TTL")
    except TimeoutError:
        job = get_job(setup, "ttl")
        raise AssertionError(f"not deleted: {job.get('status')}\n{operator.tail()}") from None
    assert (data / "out" / "manifest.json").exists()


def test_deleting_a_job_mid_run_removes_its_pods(
    setup: dict[str, Any], operator: OperatorProcess
) -> None:
    doc = _many_tiles(setup, "deleteme")
    assert apply(setup, doc).returncode == 0
    wait_for(lambda: job_pods(setup, "deleteme"), timeout=60, what="deleteme pods")
    out = kubectl(
        setup["admin"],
        "delete",
        "gj",
        "deleteme",
        "-n",
        setup["namespace"],
        "--wait=true",
        "--timeout=60s",
    )
    assert out.returncode == 0, out.stderr
    wait_for(
        lambda: not job_pods(setup, "deleteme", role=""),
        timeout=60,
        what="pods removed with their job",
    )


def test_operator_identity_cannot_read_secrets(
    setup: dict[str, Any], cluster: ClusterHandle
) -> None:
    if cluster.dev is None:
        pytest.skip("needs the dev control plane's service-account identity")
    api = cluster.api_client(setup["identity"])
    with pytest.raises(k8s.ApiException) as exc:
        k8s.CoreV1Api(api).list_namespaced_secret(setup["namespace"])
    assert exc.value.status == 403
    with pytest.raises(k8s.ApiException) as exc:
        k8s.CoreV1Api(api).list_secret_for_all_namespaces()
    assert exc.value.status == 403


def test_a_plan_too_large_for_a_termination_message_comes_through_the_pods_log(
    setup: dict[str, Any], operator: OperatorProcess
) -> None:
    """A multi-file job whose descriptor is over the 4 KiB termination message: the operator
    reads it from the planner pod's log (pods/log through the API server to the kubelet)."""
    import secrets

    import rasterio
    from rasterio.transform import from_origin

    folder = setup["dir"] / "manyfiles"
    folder.mkdir()
    uris = []
    for i in range(120):
        path = folder / f"scene-{i:03d}-{secrets.token_hex(24)}.tif"
        with rasterio.open(
            path, "w", driver="GTiff", width=32, height=32, count=2, dtype="uint16",
            crs="EPSG:32632", transform=from_origin(600000 + i * 320, 5100000, 10, 10),
        ) as ds:  # fmt: skip
            ds.write(np.full((2, 32, 32), i + 1, dtype="uint16"))
        uris.append(str(path))
    doc = _job(
        "manyfiles",
        setup["dir"],
        {"uris": uris},
        {"name": "ndvi", "params": {"nir": 2, "red": 1}},
        {"uri": str(folder / "out")},
        suspend=True,  # plan only
    )
    assert apply(setup, doc).returncode == 0
    job = wait_phase(setup, operator, "manyfiles", ("Suspended", "Failed"), timeout=90)
    assert job["status"]["phase"] == "Suspended", job["status"]
    assert job["status"]["plan"]["tiles"] == 120
    (planner,) = job_pods(setup, "manyfiles", role="planner")
    record = json.loads(planner.status.container_statuses[0].state.terminated.message)
    assert "descriptor" not in record, "the descriptor fit inline: the test needs a larger one"
    assert record["descriptorBytes"] > 4096
    assert record["digest"] == job["status"]["plan"]["digest"]
    assert job_pods(setup, "manyfiles") == []  # suspended: no workers


def test_evicted_worker_without_finished_at_gets_a_successor_as_it_was(
    setup: dict[str, Any], operator: OperatorProcess
) -> None:
    """A worker pod evicted before it ran (phase Failed, reason Evicted, no container state,
    no finishedAt — what nodes leave): a successor with the same memory, no memory strategy,
    nothing counted against backoffLimit."""
    data = _demo(setup["dir"] / "evict")
    doc = _job(
        "evict",
        data,
        {"uri": str(data / "s2.tif")},
        {"name": "ndvi", "params": {"nir": 4, "red": 3}},
        {"uri": str(data / "out")},
        tiling={"tileSize": 1024},
        retry={"backoffLimit": 0},
    )
    # no node can hold the workers (the planner pod's memory is the operator's own setting):
    # they stay Pending until the test evicts them, as a node under pressure would
    doc["spec"]["resources"] = {"memory": "900Gi"}
    assert apply(setup, doc).returncode == 0
    core: Api = setup["core"]

    def evict(name: str) -> None:
        core.patch_namespaced_pod_status(
            name,
            setup["namespace"],
            {"status": {"phase": "Failed", "reason": "Evicted",
                        "message": "The node was low on resource: memory."}},
        )  # fmt: skip

    def attempt_pods(attempt: str) -> list[Any]:
        return [
            p
            for p in job_pods(setup, "evict")
            if p.metadata.labels["gisjob.dev/attempt"] == attempt
        ]

    first = wait_for(lambda: job_pods(setup, "evict"), timeout=90, what="a worker pod")[0]
    memory = first.spec.containers[0].resources.limits["memory"]
    evict(first.metadata.name)
    second = wait_for(
        lambda: attempt_pods("1"),
        timeout=60,
        what="a successor of the evicted pod",
    )[0]
    # as it was: same memory and chunk, strategy "disrupted" — no memory strategy applied
    assert second.spec.containers[0].resources.limits["memory"] == memory
    assert second.metadata.annotations["gisjob.dev/strategy"] == "disrupted"
    assert second.metadata.annotations["gisjob.dev/chunk-scale"] == "1.0"
    history = json.loads(second.metadata.annotations["gisjob.dev/history"])
    assert history[0]["d"] is True and history[0]["o"] is False
    evict(second.metadata.name)
    third = wait_for(
        lambda: attempt_pods("2"),
        timeout=60,
        what="a successor of the second evicted pod",
    )[0]
    assert third.metadata.annotations["gisjob.dev/strategy"] == "disrupted"
    job = get_job(setup, "evict")
    assert job["status"]["phase"] == "Running"  # backoffLimit 0, yet not failed
    retries = job["status"].get("retries") or {}
    assert retries.get("memory", 0) == 0 and retries.get("other", 0) == 0, retries
    setup["custom"].delete_namespaced_custom_object(
        GROUP, VERSION, setup["namespace"], PLURAL, "evict"
    )


def test_a_failure_to_record_outcomes_leaves_every_finished_output_in_place(
    setup: dict[str, Any], operator: OperatorProcess
) -> None:
    """Workers whose ledger cannot be written (here: a file where the ledger folder should
    be) fail their attempts saying so; the job fails, and every tile they finished stays
    where it is — nothing unrecorded is ever deleted, and nothing is reported Succeeded."""
    data = _demo(setup["dir"] / "norecord")
    out = data / "out"
    (out / ".gisjob").mkdir(parents=True)
    (out / ".gisjob" / "ledger").write_text("not a folder\n")
    doc = _job(
        "norecord",
        data,
        {"uri": str(data / "s2.tif")},
        {"name": "ndvi", "params": {"nir": 4, "red": 3}},
        {"uri": str(out), "format": "GTiff"},
        tiling={"tileSize": 512},
        parallelism=4,
        retry={"backoffLimit": 0},
    )
    assert apply(setup, doc).returncode == 0
    done = wait_phase(setup, operator, "norecord", ("Succeeded", "Failed"), timeout=180)
    assert done["status"]["phase"] == "Failed", done["status"]
    assert done["status"]["tiles"]["failed"] == 4
    written = sorted(p.name for p in (out / "tiles").iterdir())
    assert written == [f"r000{r}c000{c}.tif" for r in (0, 1) for c in (0, 1)], written
    failed = [
        p
        for p in job_pods(setup, "norecord")
        if p.status.phase == "Failed" and p.status.container_statuses
    ]
    assert failed, "no failed worker pod kept for debugging"
    record = json.loads(failed[0].status.container_statuses[0].state.terminated.message)
    assert record["exitCode"] == 1 and "could not record the outcome" in record["error"]
    assert (
        not (out / "manifest.json").exists()
        or json.loads((out / "manifest.json").read_text())["outcome"] != "succeeded"
    )
