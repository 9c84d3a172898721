"""Object storage on the cluster (issue 10, points 2 and 6): s3 → s3 through the operator,
with credentials from a Secret and no data volume anywhere.

A real SeaweedFS S3 server (``s3_server``) holds the input and receives every output; the
job's pods (planner, workers, finalizer) get ``AWS_*`` from the namespace's storage Secret
through ``envFrom``, which the test kubelet resolves from the API server as a kubelet does.
The operator runs as its own RBAC identity (which cannot read Secrets), with the storage
Secret's *name* as its setting, with no volume type allowed at all
(``GISJOB_ALLOWED_VOLUME_TYPES=""``) and, where the machine allows, with the tests' data
folders hidden from it: it never sees the data, the bucket or the credentials.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from clusterutil import (
    Api,
    ClusterHandle,
    OperatorProcess,
    can_hide_folders,
    pod_manifest,
    terminated,
    unique,
    wait_for,
    wait_pod,
)
from kubernetes import client as k8s
from kubernetes import watch as k8s_watch

from s3server import SeaweedS3

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(420)]

REPO = Path(__file__).resolve().parents[2]
GROUP, VERSION, PLURAL = "gisjob.dev", "v1alpha1", "gisjobs"
SECRET = "gisjob-s3"  # the operator's storage Secret (GISJOB_STORAGE_SECRET)
RASTER_SIZE = 1024
TILE_SIZE = 512
NIR, RED = 4, 3
NODATA = -9999.0
GIB = 1024**3
CREDENTIAL_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


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
    cluster: ClusterHandle, tmp_path_factory: pytest.TempPathFactory, s3_server: SeaweedS3
) -> Iterator[dict[str, Any]]:
    """CRD and the operator's RBAC applied as admin; a namespace holding the storage Secret
    (``s3_server.env()``, created by the admin: the operator cannot read it)."""
    admin = cluster.kubeconfig
    for f in ("crd.yaml", "namespace.yaml", "serviceaccount.yaml", "rbac.yaml"):
        out = kubectl(admin, "apply", "-f", str(REPO / "deploy" / f))
        assert out.returncode == 0, out.stderr
    wait_for(
        lambda: "GisJob" in kubectl(admin, "api-resources", "--api-group", GROUP).stdout,
        timeout=30,
        what="the GisJob CRD to be served",
    )
    ns = unique("s3")
    assert kubectl(admin, "create", "namespace", ns).returncode == 0
    if cluster.dev is not None:
        identity = Path(cluster.dev.service_account_kubeconfig("gisjob-system", "gisjob-operator"))
    else:
        identity = admin
    api = cluster.api_client()
    core: Api = k8s.CoreV1Api(api)
    core.create_namespaced_secret(
        ns, {"metadata": {"name": SECRET}, "type": "Opaque", "stringData": s3_server.env()}
    )
    yield {
        "admin": admin,
        "identity": identity,
        "namespace": ns,
        "api": api,
        "core": core,
        "custom": k8s.CustomObjectsApi(api),
        "dir": tmp_path_factory.mktemp("s3-cluster"),
    }
    kubectl(admin, "delete", "namespace", ns, "--wait=false")


@pytest.fixture(scope="module")
def operator(setup: dict[str, Any], s3_server: SeaweedS3) -> Iterator[OperatorProcess]:
    """``gisjob-operator run`` with the storage Secret's name and no volume type allowed,
    started before any test puts AWS variables into this process's environment."""
    present = [k for k in CREDENTIAL_VARS if k in os.environ]
    assert not present, f"{present} set in the test process"
    hide = (setup["dir"], s3_server.root) if can_hide_folders() is None else ()
    op = OperatorProcess(
        setup["identity"],
        setup["namespace"],
        setup["dir"] / "operator.log",
        hide=hide,
        extra_env={"GISJOB_STORAGE_SECRET": SECRET, "GISJOB_ALLOWED_VOLUME_TYPES": ""},
    )
    op.start()
    yield op
    op.stop()


class PodRecorder:
    """Every pod that ever existed in the namespace, as first seen (a real watch)."""

    def __init__(self, setup: dict[str, Any]) -> None:
        self.pods: dict[str, dict[str, Any]] = {}
        self._api: k8s.ApiClient = setup["api"]
        self._core: Api = setup["core"]
        self._ns = setup["namespace"]
        self._stop = threading.Event()
        self._w = k8s_watch.Watch()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                for ev in self._w.stream(
                    self._core.list_namespaced_pod, self._ns, timeout_seconds=5
                ):
                    pod = self._api.sanitize_for_serialization(ev["object"])
                    self.pods.setdefault(pod["metadata"]["name"], pod)
                    if self._stop.is_set():
                        break
            except Exception:  # the API server may be restarting
                time.sleep(0.5)

    def of(self, job: str) -> dict[str, dict[str, Any]]:
        return {
            name: pod
            for name, pod in self.pods.items()
            if (pod["metadata"].get("labels") or {}).get("gisjob.dev/job") == job
        }

    def stop(self) -> None:
        self._stop.set()
        self._w.stop()
        self._t.join(timeout=10)


def apply(setup: dict[str, Any], doc: dict[str, Any]) -> None:
    out = kubectl(
        setup["admin"], "apply", "-n", setup["namespace"], "-f", "-", stdin=yaml.safe_dump(doc)
    )
    assert out.returncode == 0, out.stderr


def get_job(setup: dict[str, Any], name: str) -> dict[str, Any]:
    obj: dict[str, Any] = setup["custom"].get_namespaced_custom_object(
        GROUP, VERSION, setup["namespace"], PLURAL, name
    )
    return obj


def wait_phase(
    setup: dict[str, Any], op: OperatorProcess, name: str, phases: tuple[str, ...], timeout: float
) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        job = get_job(setup, name)
        return job if (job.get("status") or {}).get("phase") in phases else None

    try:
        return wait_for(check, timeout=timeout, interval=0.5, what=f"{name} in {phases}")
    except TimeoutError as exc:
        status = get_job(setup, name).get("status") or {}
        pods = setup["core"].list_namespaced_pod(
            setup["namespace"], label_selector=f"gisjob.dev/job={name}"
        )
        states = [
            (p.metadata.name, p.status.phase, p.status.container_statuses) for p in pods.items
        ]
        raise AssertionError(
            f"{exc}\nstatus: {json.dumps(status)[:2000]}\npods: {states}\n"
            f"operator log:\n{op.tail()}"
        ) from None


def storage_job(name: str, bucket: str, secret: str) -> dict[str, Any]:
    """NDVI of ``s3://<bucket>/in/x.tif`` into ``s3://<bucket>/out/<name>``: no volumes."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "GisJob",
        "metadata": {"name": name},
        "spec": {
            "input": {"uri": f"s3://{bucket}/in/x.tif"},
            "operation": {"name": "ndvi", "params": {"nir": NIR, "red": RED}},
            "output": {"uri": f"s3://{bucket}/out/{name}", "format": "COG"},
            "tiling": {"tileSize": TILE_SIZE},
            "parallelism": 2,
            "resources": {"gdalCacheMax": "8Mi"},
            "storage": {"secretName": secret},
            "worker": {"image": "gisjob:test"},
        },
    }


def expected_ndvi(path: Path) -> np.ndarray:
    """``(nir − red) / (nir + red)`` in float32 over the whole input, -9999 where either band
    is nodata (0) or the denominator is zero (gisjob_worker.operations.raster.Ndvi)."""
    import rasterio

    with rasterio.open(path) as ds:
        assert ds.nodata == 0
        nir_raw, red_raw = ds.read(NIR), ds.read(RED)
    nir, red = nir_raw.astype(np.float32), red_raw.astype(np.float32)
    num, den = nir - red, nir + red
    ok = (den != 0) & (nir_raw != 0) & (red_raw != 0)
    out = np.full(num.shape, np.float32(NODATA), dtype=np.float32)
    np.divide(num, den, out=out, where=ok)
    return out


def _job_events(setup: dict[str, Any], name: str) -> list[Any]:
    events = setup["core"].list_namespaced_event(
        setup["namespace"], field_selector=f"involvedObject.name={name}"
    )
    return list(events.items)


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    pairs = (item.partition(b"=") for item in raw.split(b"\0") if item)
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, _, v in pairs}


# ---------------------------------------------------------------------------------- tests


def test_s3_to_s3_through_the_operator_with_credentials_from_a_secret(
    setup: dict[str, Any],
    operator: OperatorProcess,
    s3_server: SeaweedS3,
    s3_bucket: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from gisjob_worker.demo import write_raster

    source = setup["dir"] / "x.tif"
    write_raster(source, RASTER_SIZE)
    s3_server.put_file(source, f"{s3_bucket}/in/x.tif")
    name = "s3-ndvi"
    doc = storage_job(name, s3_bucket, SECRET)
    assert "volumes" not in doc["spec"]["worker"] and "volumeMounts" not in doc["spec"]["worker"]
    recorder = PodRecorder(setup)
    t0 = time.monotonic()
    try:
        apply(setup, doc)
        done = wait_phase(setup, operator, name, ("Succeeded", "Failed"), timeout=300)
        wait_for(lambda: recorder.of(name), timeout=10, what="the job's pods seen")
    finally:
        recorder.stop()
    elapsed = time.monotonic() - t0
    status = done["status"]
    assert status["phase"] == "Succeeded", json.dumps(status)[:3000] + "\n" + operator.tail()
    print(f"\ns3 → s3 job Succeeded in {elapsed:.1f}s")
    tiles = [f"r{r:04d}c{c:04d}" for r in range(2) for c in range(2)]
    assert status["plan"]["tiles"] == len(tiles)
    assert status["completedTiles"] == f"0-{len(tiles) - 1}"
    out = f"{s3_bucket}/out/{name}"
    assert status["outputs"]["manifest"] == f"s3://{out}/manifest.json"

    # every planned tile is an object; the manifest says succeeded, tile by tile
    keys = s3_server.list_keys(out)
    assert sorted(k for k in keys if k.startswith(f"{out}/tiles/")) == [
        f"{out}/tiles/{t}.tif" for t in tiles
    ], keys
    manifest = json.loads(s3_server.get_bytes(f"{out}/manifest.json"))
    assert manifest["outcome"] == "succeeded"
    assert sorted(t["id"] for t in manifest["tiles"]) == tiles
    assert {t["outcome"] for t in manifest["tiles"]} == {"succeeded"}
    # the ledger: a record per tile under .gisjob/ledger/, written by the worker pods
    ledger = [k for k in keys if k.startswith(f"{out}/.gisjob/ledger/") and k.endswith(".json")]
    records = [json.loads(s3_server.get_bytes(k)) for k in ledger]
    done_tiles = sorted(r["tile"] for r in records if r["outcome"] == "succeeded")
    assert done_tiles == tiles, records
    assert {r["writer"] for r in records} == {"worker"}
    assert {r["pod"] for r in records} <= set(recorder.of(name)), records
    # nothing left behind: no temporary upload keys
    assert not [k for k in keys if "/.gisjob/tmp/" in k], keys
    # the planner pod claimed the location for this GisJob (GISJOB_OWNER)
    owner = json.loads(s3_server.get_bytes(f"{out}/.gisjob/owner.json"))
    assert (owner["namespace"], owner["name"]) == (setup["namespace"], name)
    assert owner["uid"] == done["metadata"]["uid"]

    # the mosaic opens through GDAL's /vsis3/ and is the NDVI of the whole input
    import rasterio

    for key, value in s3_server.gdal_env().items():
        monkeypatch.setenv(key, value)
    with rasterio.open(f"/vsis3/{out}/mosaic.vrt") as ds:
        assert (ds.width, ds.height, ds.count) == (RASTER_SIZE, RASTER_SIZE, 1)
        assert ds.dtypes == ("float32",) and ds.nodata == NODATA
        mosaic = ds.read(1)
    expected = expected_ndvi(source)
    assert (expected == NODATA).any() and (expected != NODATA).mean() > 0.5  # both kinds
    np.testing.assert_array_equal(mosaic, expected)

    # the pods: the storage Secret by name in every one, no volume but the scratch emptyDir
    # and the job document (a ConfigMap of the operator's)
    pods = recorder.of(name)
    roles = sorted(p["metadata"]["labels"]["gisjob.dev/role"] for p in pods.values())
    assert roles == ["finalizer", "planner"] + ["worker"] * len(tiles), sorted(pods)
    for pod_name, pod in pods.items():
        spec = pod["spec"]
        (container,) = spec["containers"]
        role = pod["metadata"]["labels"]["gisjob.dev/role"]
        assert container["envFrom"] == [{"secretRef": {"name": SECRET}}], pod_name
        # Kubernetes adds a service-account token volume unless automount is off: it is off
        assert spec["automountServiceAccountToken"] is False, pod_name
        scratch, document = spec["volumes"]
        assert scratch == {"name": "scratch", "emptyDir": {}}, (pod_name, spec)
        assert document["name"] == "gisjob-job", (pod_name, spec)
        assert document["configMap"]["name"].startswith(f"{name}-spec-"), (pod_name, spec)
        mounts = [m["mountPath"] for m in container["volumeMounts"]]
        assert mounts == ["/tmp", "/etc/gisjob"], pod_name
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert not [k for k in env if k.startswith("AWS_")], (pod_name, env)
        assert env["GISJOB_SCRATCH"] == "/tmp", pod_name
        resources = container["resources"]
        if role in ("planner", "finalizer"):
            assert resources["requests"]["ephemeral-storage"] == str(GIB), pod_name
            assert resources["limits"]["ephemeral-storage"] == str(GIB), pod_name
        else:  # the tile it builds before upload: 512² float32 x 2 + 64 MiB, in MiB
            scratch = str((2 * 512 * 512 * 4 + 64 * 2**20 + 2**20 - 1) // 2**20 * 2**20)
            assert resources["requests"]["ephemeral-storage"] == scratch, pod_name
            assert resources["limits"]["ephemeral-storage"] == scratch, pod_name

    # the secret key is nowhere the operator writes or reads
    key = s3_server.secret_key
    job_now = get_job(setup, name)
    assert key not in json.dumps(job_now), "the secret key is in the GisJob"
    for event in _job_events(setup, name):
        assert key not in (event.message or ""), event.message
    events = setup["core"].list_namespaced_event(setup["namespace"]).items
    assert not [e.message for e in events if key in (e.message or "")]
    assert key not in operator.log.read_text(errors="replace"), "the secret key is in its log"
    environ = _environ(operator.pid)  # the operator's own (its wrapper exec'd it)
    assert environ["GISJOB_STORAGE_SECRET"] == SECRET
    assert not [k for k in CREDENTIAL_VARS if k in environ], sorted(environ)
    assert key not in "\0".join(environ.values())
    for pod in pods.values():
        assert key not in json.dumps(pod), pod["metadata"]["name"]
    reasons = {e.reason for e in _job_events(setup, name)}
    assert {"Planned", "Completed"} <= reasons, reasons


def test_a_storage_secret_other_than_the_operators_is_refused(
    setup: dict[str, Any], operator: OperatorProcess, s3_bucket: str
) -> None:
    """``spec.storage.secretName`` becomes every pod's environment: a job naming another
    Secret of its namespace is refused before any pod exists (Failed, reason Forbidden)."""
    name = "s3-other-secret"
    core: Api = setup["core"]
    core.create_namespaced_secret(
        setup["namespace"],
        {"metadata": {"name": "not-for-jobs"}, "stringData": {"AWS_SECRET_ACCESS_KEY": "x"}},
    )
    apply(setup, storage_job(name, s3_bucket, "not-for-jobs"))
    done = wait_phase(setup, operator, name, ("Failed", "Succeeded"), timeout=60)
    status = done["status"]
    assert status["phase"] == "Failed", status
    assert status["message"] == (
        "spec.storage.secretName: secret 'not-for-jobs' is not allowed "
        f"(only the storage secret '{SECRET}' may be referenced)"
    )
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["status"] == "True" and failed["reason"] == "Forbidden"
    time.sleep(2)  # nothing follows
    pods = core.list_namespaced_pod(setup["namespace"], label_selector=f"gisjob.dev/job={name}")
    assert pods.items == []
    reasons = {e.reason for e in _job_events(setup, name)}
    assert "Forbidden" in reasons, reasons


def test_the_kubelet_resolves_env_from_a_secret_and_waits_for_a_missing_one(
    cluster: ClusterHandle, core: Api, namespace: str
) -> None:
    """The test kubelet as a kubelet: a pod whose ``envFrom`` Secret does not exist stays
    Pending with its container Waiting (CreateContainerConfigError) and runs once the Secret
    is created, with its decoded keys — and ``env`` over ``envFrom``."""
    if cluster.dev is None:
        pytest.skip("checks the test kubelet of the dev cluster")
    code = (
        "import os; open('/dev/termination-log', 'w').write("
        "os.environ['AWS_SECRET_ACCESS_KEY'] + ' ' + os.environ['AWS_REGION'])"
    )
    manifest = pod_manifest(
        "env-from", ["python3", "-c", code], env=[{"name": "AWS_REGION", "value": "eu-west-1"}]
    )
    manifest["spec"]["containers"][0]["envFrom"] = [{"secretRef": {"name": "late"}}]
    core.create_namespaced_pod(namespace, manifest)

    def waiting() -> Any:
        pod = core.read_namespaced_pod("env-from", namespace)
        statuses = pod.status.container_statuses or []
        return pod if statuses and statuses[0].state.waiting else None

    pod = wait_for(waiting, 30, what="a waiting container")
    assert pod.status.phase == "Pending"
    state = pod.status.container_statuses[0].state.waiting
    assert state.reason == "CreateContainerConfigError"
    assert state.message == 'secret "late" not found'
    events = wait_for(
        lambda: [
            e
            for e in core.list_namespaced_event(namespace).items
            if e.involved_object.name == "env-from" and e.reason == "Failed"
        ],
        15,
        what="the kubelet's Failed event",
    )
    assert events[0].message == 'Error: secret "late" not found'
    secret = "s3cr3t/+=" + unique("k")
    core.create_namespaced_secret(
        namespace,
        {
            "metadata": {"name": "late"},
            "stringData": {"AWS_SECRET_ACCESS_KEY": secret, "AWS_REGION": "us-east-1"},
        },
    )
    pod = wait_pod(core, namespace, "env-from", timeout=60)
    assert pod.status.phase == "Succeeded"
    assert terminated(pod).message == f"{secret} eu-west-1"
