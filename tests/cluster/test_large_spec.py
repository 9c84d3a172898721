"""Large specs on a real API server (issue 17 #5): the job document reaches pods as a file.

An environment variable holds at most 128 KiB (``exec`` fails with E2BIG past it: a
``uris:`` list of ~2,000 files), so the operator puts each job's document into an immutable
ConfigMap ``<job>-spec-<hash>`` owned by the GisJob and mounts it at ``/etc/gisjob`` in every
pod (``GISJOB_JOB_FILE``). Here:

* a GisJob listing 3,000 files (hard links to one tiny GeoTIFF) plans its 3,000 tiles and
  runs its first tiles from the mounted document; deleted, its pods and its ConfigMap go
  (the dev cluster's garbage collector). All 3,000 tiles would take the test kubelet, which
  starts a Python process per pod on 2 cores, far longer than a test may run: the test stops
  after the first tiles and prints the rate it measured;
* a GisJob whose document is over the ConfigMap limit (900 KiB) fails ``SpecTooLarge`` with
  the size and the limit, before any pod or ConfigMap exists;
* the test kubelet mounts a ConfigMap volume like a kubelet: a missing one keeps the pod
  waiting (``ContainerCreating``, a ``FailedMount`` event) until it appears.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import test_operator
import yaml
from clusterutil import Api, OperatorProcess, pod_manifest, wait_for, wait_pod
from kubernetes import client as k8s
from test_operator import GROUP, PLURAL, VERSION, _job, get_job, job_pods, kubectl, wait_phase

from gisjob_worker.spec import parse_job

FILES = 3000
ENV_LIMIT = 128 * 1024  # MAX_ARG_STRLEN: the most one environment variable may hold
FIRST_TILES = 6  # tiles that must succeed before the 3,000-file job is deleted

# test_operator's module fixtures: CRD, RBAC (deploy/rbac.yaml), a namespace, the operator
# process with the identity that RBAC grants (here a namespace and an operator of our own)
setup = test_operator.setup
operator = test_operator.operator


def _tiny_raster(path: Path) -> None:
    import numpy as np
    import rasterio
    from affine import Affine

    path.parent.mkdir(parents=True, exist_ok=True)
    profile = {
        "driver": "GTiff",
        "width": 16,
        "height": 16,
        "count": 1,
        "dtype": "uint16",
        "crs": "EPSG:32633",
        "transform": Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 5000000.0),
        "nodata": 0,
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.arange(1, 257, dtype=np.uint16).reshape(1, 16, 16))


def _create(setup: dict[str, Any], doc: dict[str, Any], *how: str) -> None:
    """``kubectl create``, or ``kubectl apply --server-side`` (``how``); a client-side
    ``apply`` would copy the whole document into an annotation, which cannot pass 256 KiB."""
    out = kubectl(setup["admin"], *(how or ("create",)), "-n", setup["namespace"], "-f", "-",
                  stdin=yaml.safe_dump(doc))  # fmt: skip
    assert out.returncode == 0, out.stderr


def _configmaps(setup: dict[str, Any], job: str) -> list[Any]:
    core: Api = setup["core"]
    found = core.list_namespaced_config_map(
        setup["namespace"], label_selector=f"gisjob.dev/job={job}"
    )
    return list(found.items)


def _env(pod: Any) -> dict[str, str | None]:
    return {e.name: e.value for e in pod.spec.containers[0].env or []}


def _assert_mounts(pod: Any, configmap: str) -> None:
    """The pod reads the job document from the ConfigMap, not from its environment."""
    env = _env(pod)
    assert "GISJOB_JOB" not in env, pod.metadata.name
    assert env["GISJOB_JOB_FILE"] == "/etc/gisjob/job.yaml"
    (volume,) = [v for v in pod.spec.volumes if v.config_map is not None]
    assert volume.config_map.name == configmap
    (mount,) = [m for m in pod.spec.containers[0].volume_mounts if m.name == volume.name]
    assert mount.mount_path == "/etc/gisjob" and mount.read_only
    # and the pod is small: no env value near what exec refuses
    assert max(len(v or "") for v in env.values()) < 4096


def test_a_3000_file_job_runs_from_its_mounted_document(
    setup: dict[str, Any],
    operator: OperatorProcess,
) -> None:
    t0 = time.monotonic()
    data = setup["dir"] / "large"
    source = data / "src" / "tiny.tif"
    _tiny_raster(source)
    folder = data / "scenes"
    folder.mkdir(parents=True)
    uris = []
    for i in range(FILES):
        path = folder / f"S2B_MSIL2A_20240607T102559_N0510_R108_T32TQM_{i:04d}.tif"
        os.link(source, path)
        uris.append(str(path))
    doc = _job(
        "big",
        data,
        {"uris": uris},
        {"name": "scale", "params": {"scale": 0.5}},
        {"uri": str(data / "out"), "format": "GTiff"},
        parallelism=4,
        resources={"gdalCacheMax": "8Mi"},
    )
    started = time.monotonic()
    print(f"\n{FILES:,} hard links made in {started - t0:.1f} s")
    _create(setup, doc, "apply", "--server-side")

    def planned_job() -> dict[str, Any] | None:
        body = get_job(setup, "big")
        return body if (body.get("status") or {}).get("plan") else None

    try:
        job = wait_for(planned_job, timeout=120, interval=0.5, what="the 3,000-file job planned")
    except TimeoutError as exc:
        status = get_job(setup, "big").get("status")
        raise AssertionError(
            f"{exc}\nstatus: {json.dumps(status)[:2000]}\n{operator.tail()}"
        ) from None
    planned = time.monotonic() - started
    uid = job["metadata"]["uid"]
    assert job["status"]["plan"]["tiles"] == FILES, job["status"]
    # its document: one ConfigMap, owned by the job, immutable, past what env can carry
    (cm,) = _configmaps(setup, "big")
    assert cm.metadata.name.startswith("big-spec-")
    (owner,) = cm.metadata.owner_references
    assert (owner.kind, owner.name, owner.uid) == ("GisJob", "big", uid)
    assert owner.controller and owner.block_owner_deletion
    assert cm.immutable is True
    text = cm.data["job.yaml"]
    size = len(text.encode())
    assert ENV_LIMIT < size <= 900 * 1024, size
    assert parse_job(yaml.safe_load(text)).spec.input.uris == uris
    (planner,) = job_pods(setup, "big", role="planner")
    _assert_mounts(planner, cm.metadata.name)

    def first_tiles() -> dict[str, Any] | None:
        body = get_job(setup, "big")
        tiles = (body.get("status") or {}).get("tiles") or {}
        return body if tiles.get("succeeded", 0) >= FIRST_TILES else None

    try:
        body = wait_for(first_tiles, timeout=150, interval=0.5, what="the first tiles")
    except TimeoutError as exc:
        status = get_job(setup, "big").get("status")
        raise AssertionError(
            f"{exc}\nstatus: {json.dumps(status)[:2000]}\n{operator.tail()}"
        ) from None
    ran = time.monotonic() - started - planned
    tiles = body["status"]["tiles"]
    assert tiles["failed"] == 0, body["status"]
    workers = job_pods(setup, "big")
    assert workers
    for pod in workers:
        _assert_mounts(pod, cm.metadata.name)
    outputs = list((data / "out" / "tiles").glob("*.tif"))
    assert len(outputs) >= FIRST_TILES
    # deleted: the pods and the ConfigMap go with it (owner references, garbage collector)
    deleting = time.monotonic()
    out = kubectl(setup["admin"], "delete", "gisjob", "big", "-n", setup["namespace"],
                  "--wait=false")  # fmt: skip
    assert out.returncode == 0, out.stderr

    def gone() -> bool:
        try:
            get_job(setup, "big")
        except k8s.ApiException as exc:
            return exc.status == 404
        return False

    wait_for(gone, timeout=60, what="the GisJob deleted")
    # the garbage collector may first have to discover the GisJob resource (~30 s, its
    # discovery resync, on a cluster that has just got the CRD)
    wait_for(lambda: not _configmaps(setup, "big"), timeout=90, what="the ConfigMap collected")
    wait_for(lambda: not job_pods(setup, "big", role=""), timeout=60, what="the pods deleted")
    print(
        f"\n3,000-file job: document {size:,} bytes, planned in {planned:.1f} s, "
        f"{tiles['succeeded']} tiles in {ran:.1f} s after planning "
        f"({ran / tiles['succeeded']:.2f} s a tile on this node); pods and ConfigMap gone "
        f"{time.monotonic() - deleting:.1f} s after the delete"
    )


def test_a_document_over_the_limit_fails_before_any_pod(
    setup: dict[str, Any],
    operator: OperatorProcess,
) -> None:
    # ~1 MiB of document, under what etcd stores (1.5 MiB a request); never read
    prefix = "/data/scenes/S2B_MSIL2A_20240607T102559_N0510_R108_T32TQM_20240607T135846"
    uris = [f"{prefix}_{i:05d}.tif" for i in range(12_000)]
    doc = _job(
        "huge",
        setup["dir"],
        {"uris": uris},
        {"name": "scale", "params": {"scale": 0.5}},
        {"uri": f"{setup['dir']}/huge-out", "format": "GTiff"},
    )
    _create(setup, doc)
    job = wait_phase(setup, operator, "huge", ("Failed",), timeout=60)
    status = job["status"]
    (cond,) = [c for c in status["conditions"] if c["type"] == "Failed"]
    assert cond["reason"] == "SpecTooLarge" and cond["status"] == "True"
    message = status["message"]
    assert message.startswith("the job document is ") and "\n" not in message
    assert "(921,600 bytes)" in message and "spec.input.uris" in message
    size = int(message.split("(", 1)[1].split(" bytes")[0].replace(",", ""))
    assert size > 900 * 1024
    seq = status["reconcileSeq"]
    time.sleep(3)  # once: no retry loop
    assert get_job(setup, "huge")["status"]["reconcileSeq"] == seq
    assert job_pods(setup, "huge", role="") == []
    assert _configmaps(setup, "huge") == []
    events = kubectl(setup["admin"], "get", "events", "-n", setup["namespace"],
                     "--field-selector", "involvedObject.name=huge").stdout  # fmt: skip
    assert "SpecTooLarge" in events
    custom: Any = setup["custom"]
    custom.delete_namespaced_custom_object(GROUP, VERSION, setup["namespace"], PLURAL, "huge")


def test_kubelet_waits_for_a_configmap_volume_then_mounts_it(
    dev_cluster: Any, core: Api, namespace: str
) -> None:
    """Like a kubelet: a pod mounting a ConfigMap that does not exist yet stays Pending,
    Waiting ``ContainerCreating``, with a ``FailedMount`` event; once the ConfigMap exists
    the pod runs and reads its keys as files, at the path its env names."""
    pod = pod_manifest(
        "reads-job",
        ["sh", "-c", 'cat "$GISJOB_JOB_FILE" > /dev/termination-log'],
        env=[{"name": "GISJOB_JOB_FILE", "value": "/etc/gisjob/job.yaml"}],
        volumes=[{"name": "gisjob-job", "configMap": {"name": "later", "defaultMode": 0o444}}],
        mounts=[{"name": "gisjob-job", "mountPath": "/etc/gisjob", "readOnly": True}],
    )
    core.create_namespaced_pod(namespace, pod)

    def waiting() -> Any:
        p = core.read_namespaced_pod("reads-job", namespace)
        statuses = p.status.container_statuses or []
        state = statuses[0].state.waiting if statuses else None
        return state if state is not None and state.reason == "ContainerCreating" else None

    state = wait_for(waiting, timeout=30, what="the pod waiting for its ConfigMap")
    assert 'configmap "later" not found' in (state.message or "")
    assert core.read_namespaced_pod("reads-job", namespace).status.phase == "Pending"

    def failed_mount() -> Any:
        events = core.list_namespaced_event(
            namespace, field_selector="involvedObject.name=reads-job"
        ).items
        return [e for e in events if e.reason == "FailedMount"]

    (event, *_) = wait_for(failed_mount, timeout=30, what="a FailedMount event")
    assert event.type == "Warning" and 'volume "gisjob-job"' in event.message
    text = "apiVersion: gisjob.dev/v1alpha1\nkind: GisJob\n"
    core.create_namespaced_config_map(
        namespace,
        k8s.V1ConfigMap(metadata=k8s.V1ObjectMeta(name="later"), data={"job.yaml": text}),
    )
    done = wait_pod(core, namespace, "reads-job", timeout=60)
    assert done.status.phase == "Succeeded"
    assert done.status.container_statuses[0].state.terminated.message == text
