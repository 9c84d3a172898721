"""Worker pod manifests (pure): ``build_worker_pod`` and ``pod_name``.

A pod per tile attempt: memory request = limit = the launch's memory, the restricted Pod
Security settings, a writable scratch volume, the user's ``spec.worker`` settings passed
through, labels and an owner reference the reconciler and the garbage collector rely on,
and the job document in a ConfigMap (``build_job_configmap``) mounted at ``/etc/gisjob``,
which the worker re-parses to the same model (issue 17 #5: an environment variable over
128 KiB fails ``exec`` with E2BIG). With
object storage: the storage Secret as every pod's ``envFrom`` and, for an object-store
output, ``ephemeral-storage`` for the local scratch an upload is built in.
"""

from __future__ import annotations

import copy
import itertools
import json
import re
from typing import Any

import pytest
from planbuilders import raster_file, raster_sizing, vector_file, vector_sizing

from gisjob_operator.pods import (
    ANNOTATION_CHUNK_SCALE,
    ANNOTATION_DIGEST,
    ANNOTATION_HISTORY,
    ANNOTATION_STRATEGY,
    JOB_DOCUMENT_DIR,
    JOB_DOCUMENT_FILE,
    JOB_VOLUME,
    LABEL_ATTEMPT,
    LABEL_JOB,
    LABEL_TILE,
    MAX_JOB_DOCUMENT_BYTES,
    MAX_NAME,
    METRICS_PORT,
    ROLE_SCRATCH_BYTES,
    RUN_AS_USER,
    SCRATCH,
    SCRATCH_ENV,
    JobDocumentTooLarge,
    PodLaunch,
    build_finalizer_pod,
    build_job_configmap,
    build_planner_pod,
    build_worker_pod,
    dtype_bytes,
    job_configmap_name,
    job_document,
    job_labels,
    owner_reference,
    pod_name,
    tile_scratch_bytes,
)
from gisjob_operator.podview import pod_view
from gisjob_worker.plan import Plan, RasterFile, RasterOutput, file_tiles
from gisjob_worker.quantity import parse_quantity
from gisjob_worker.spec import GisJob, load_job_text, parse_job

UID = "0f8e2a9c-3b1d-4c55-9e0f-1234567890ab"
NAMESPACE = "gis"
DIGEST = "0123456789abcdef"
SOURCE = f"{NAMESPACE}/s2-ndvi"
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")

WORKER: dict[str, Any] = {
    "image": "registry.example/gisjob:1.2.3",
    "imagePullPolicy": "IfNotPresent",
    "serviceAccountName": "gis-reader",
    "volumes": [
        {"name": "data", "persistentVolumeClaim": {"claimName": "gisjob-data"}},
        {"name": "creds", "secret": {"secretName": "s3", "defaultMode": 0o400}},
    ],
    "volumeMounts": [
        {"name": "data", "mountPath": "/data"},
        {"name": "creds", "mountPath": "/creds", "readOnly": True},
    ],
    "env": [
        {"name": "AWS_REGION", "value": "eu-west-1"},
        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s3", "key": "token"}}},
    ],
    "nodeSelector": {"node.kubernetes.io/instance-type": "m5.large", "disk": "ssd"},
    "tolerations": [{"key": "gis", "operator": "Exists", "effect": "NoSchedule"}],
}

DOC: dict[str, Any] = {
    "apiVersion": "gisjob.dev/v1alpha1",
    "kind": "GisJob",
    "metadata": {
        "name": "s2-ndvi",
        "namespace": NAMESPACE,
        "labels": {"team": "eo"},
        "annotations": {"note": "unit"},
    },
    "spec": {
        "input": {"uri": "/data/s2/T32TQM.tif"},
        "operation": {"name": "scale", "params": {}},
        "output": {"uri": "/data/out/s2", "format": "GTiff"},
        "tiling": {"tileSize": 2048},
        "resources": {
            "memory": "1Gi",
            "maxMemory": "8Gi",
            "memoryHeadroom": 0.25,
            "gdalCacheMax": "64Mi",
            "cpu": "500m",
        },
        "parallelism": 8,
        "retry": {"backoffLimit": 2, "onOutOfMemory": ["split", "grow"]},
        "worker": WORKER,
        "ttlSecondsAfterFinished": 600,
    },
}

LAUNCH = PodLaunch(
    tile="r0001c0002",
    attempt=2,
    memory=1_610_612_736,  # 1.5Gi: grown from the planned 1Gi
    chunk_scale=0.5,
    strategy="grow",
    history=(
        {"n": 0, "m": 1073741824, "c": 1.0, "s": "initial", "x": 3, "o": False},
        {"n": 1, "m": 1073741824, "c": 0.5, "s": "shrinkChunks", "x": 137, "o": True},
    ),
)


def make_job(**spec: Any) -> GisJob:
    doc = copy.deepcopy(DOC)
    doc["spec"].update(copy.deepcopy(spec))
    return parse_job(doc, SOURCE)


@pytest.fixture(scope="module")
def job() -> GisJob:
    return make_job()


@pytest.fixture(scope="module")
def pod(job: GisJob) -> dict[str, Any]:
    return build_worker_pod(job, UID, NAMESPACE, LAUNCH, DIGEST)


def container_of(pod: dict[str, Any]) -> dict[str, Any]:
    containers = pod["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]  # type: ignore[no-any-return]


def env_of(pod: dict[str, Any]) -> dict[str, dict[str, Any]]:
    env = container_of(pod)["env"]
    return {e["name"]: e for e in env}


def configmap_name(pod: dict[str, Any]) -> str:
    """The job-document ConfigMap a pod mounts."""
    (volume,) = [v for v in pod["spec"]["volumes"] if v["name"] == JOB_VOLUME]
    name = volume["configMap"]["name"]
    assert isinstance(name, str)
    return name


# ----------------------------------------------------------------------------- resources


def test_memory_request_equals_limit_equals_launch_memory(pod: dict[str, Any]) -> None:
    res = container_of(pod)["resources"]
    assert res["requests"]["memory"] == res["limits"]["memory"] == str(LAUNCH.memory)
    assert parse_quantity(res["limits"]["memory"]) == LAUNCH.memory


@pytest.mark.parametrize("memory", [1, 64 * 1024**2, 284_164_096, 3 * 1024**3 + 1])
def test_memory_is_exact_for_any_launch(job: GisJob, memory: int) -> None:
    launch = PodLaunch("r0000c0000", 0, memory, 1.0, "initial")
    res = container_of(build_worker_pod(job, UID, NAMESPACE, launch, DIGEST))["resources"]
    assert res["requests"]["memory"] == res["limits"]["memory"]
    assert parse_quantity(res["limits"]["memory"]) == memory


@pytest.mark.parametrize("cpu", ["1", "2", "250m", "1.5"])
def test_cpu_request_from_the_spec(cpu: str) -> None:
    job = make_job(resources={"cpu": cpu})
    res = container_of(build_worker_pod(job, UID, NAMESPACE, LAUNCH, DIGEST))["resources"]
    assert res["requests"]["cpu"] == cpu
    assert "cpu" not in res["limits"]  # no CPU limit: throttling would only slow tiles down


def test_default_cpu_is_one() -> None:
    doc = copy.deepcopy(DOC)
    del doc["spec"]["resources"]["cpu"]
    job = parse_job(doc, SOURCE)
    res = container_of(build_worker_pod(job, UID, NAMESPACE, LAUNCH, DIGEST))["resources"]
    assert res["requests"]["cpu"] == "1"


# ------------------------------------------------------------------------------ security


def test_restart_policy_never(pod: dict[str, Any]) -> None:
    assert pod["spec"]["restartPolicy"] == "Never"


def test_restricted_pod_security(pod: dict[str, Any]) -> None:
    psc = pod["spec"]["securityContext"]
    assert psc["runAsNonRoot"] is True
    assert psc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert psc["runAsUser"] == RUN_AS_USER != 0
    assert psc["runAsGroup"] == RUN_AS_USER
    csc = container_of(pod)["securityContext"]
    assert csc["allowPrivilegeEscalation"] is False
    assert csc["readOnlyRootFilesystem"] is True
    assert csc["capabilities"] == {"drop": ["ALL"]}
    assert "add" not in csc["capabilities"]
    assert csc.get("privileged") in (None, False)
    assert csc["runAsNonRoot"] is True
    assert csc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["spec"]["automountServiceAccountToken"] is False
    for forbidden in ("hostNetwork", "hostPID", "hostIPC"):
        assert not pod["spec"].get(forbidden)


def test_scratch_empty_dir_at_tmp(pod: dict[str, Any]) -> None:
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["scratch"] == {"name": "scratch", "emptyDir": {}}
    mounts = {m["mountPath"]: m for m in container_of(pod)["volumeMounts"]}
    assert SCRATCH == "/tmp"
    assert mounts["/tmp"]["name"] == "scratch"
    assert not mounts["/tmp"].get("readOnly")
    assert env_of(pod)["HOME"]["value"] == "/tmp"  # caches land on the writable volume


# -------------------------------------------------------------------------- pass-through


def test_user_worker_settings_pass_through(pod: dict[str, Any]) -> None:
    c = container_of(pod)
    spec = pod["spec"]
    assert c["image"] == WORKER["image"]
    assert c["imagePullPolicy"] == "IfNotPresent"
    assert spec["serviceAccountName"] == "gis-reader"
    assert spec["volumes"][2:] == WORKER["volumes"]  # after scratch and the job document
    assert c["volumeMounts"][2:] == WORKER["volumeMounts"]
    assert spec["nodeSelector"] == WORKER["nodeSelector"]
    assert spec["tolerations"] == WORKER["tolerations"]
    env = c["env"]
    assert env[-len(WORKER["env"]) :] == WORKER["env"]  # user env last, valueFrom intact


def test_pod_does_not_share_the_jobs_mutable_state(job: GisJob) -> None:
    pod = build_worker_pod(job, UID, NAMESPACE, LAUNCH, DIGEST)
    pod["spec"]["nodeSelector"]["disk"] = "hdd"
    pod["spec"]["tolerations"].append({"key": "x"})
    again = build_worker_pod(job, UID, NAMESPACE, LAUNCH, DIGEST)
    assert again["spec"]["nodeSelector"] == WORKER["nodeSelector"]
    assert again["spec"]["tolerations"] == WORKER["tolerations"]


def test_defaults_without_worker_settings() -> None:
    doc = copy.deepcopy(DOC)
    del doc["spec"]["worker"]
    job = parse_job(doc, SOURCE)
    pod = build_worker_pod(job, UID, NAMESPACE, LAUNCH, DIGEST)
    c, spec = container_of(pod), pod["spec"]
    assert c["image"] == "gisjob:0.1.0"
    assert "imagePullPolicy" not in c
    for key in ("serviceAccountName", "nodeSelector", "tolerations"):
        assert key not in spec
    cm = job_configmap_name(job.name, UID, job_document(job))
    assert spec["volumes"] == [
        {"name": "scratch", "emptyDir": {}},
        {"name": JOB_VOLUME, "configMap": {"name": cm, "defaultMode": 0o444}},
    ]
    assert c["volumeMounts"] == [
        {"name": "scratch", "mountPath": "/tmp"},
        {"name": JOB_VOLUME, "mountPath": "/etc/gisjob", "readOnly": True},
    ]


def test_container_command_ports_and_termination_message(pod: dict[str, Any]) -> None:
    c = container_of(pod)
    assert c["name"] == "worker"
    assert c["command"] == ["gisjob", "worker"]
    assert c["ports"] == [{"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"}]
    assert c["terminationMessagePath"] == "/dev/termination-log"
    assert c["terminationMessagePolicy"] == "FallbackToLogsOnError"


# ------------------------------------------------------------------ metadata and ownership


def test_labels(pod: dict[str, Any], job: GisJob) -> None:
    labels = pod["metadata"]["labels"]
    assert labels[LABEL_JOB] == "s2-ndvi"
    assert labels[LABEL_TILE] == "r0001c0002"
    assert labels[LABEL_ATTEMPT] == "2"
    assert (LABEL_JOB, LABEL_TILE, LABEL_ATTEMPT) == (
        "gisjob.dev/job",
        "gisjob.dev/tile",
        "gisjob.dev/attempt",
    )
    assert job_labels(job.name).items() <= labels.items()
    assert labels["app.kubernetes.io/managed-by"] == "gisjob-operator"
    for value in labels.values():
        assert len(value) <= 63 and LABEL_VALUE.match(value), value


def test_owner_reference_to_the_gisjob(pod: dict[str, Any], job: GisJob) -> None:
    refs = pod["metadata"]["ownerReferences"]
    assert refs == [
        {
            "apiVersion": "gisjob.dev/v1alpha1",
            "kind": "GisJob",
            "name": "s2-ndvi",
            "uid": UID,
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    assert owner_reference(job, UID) == refs[0]


def test_name_and_namespace(pod: dict[str, Any]) -> None:
    assert pod["apiVersion"] == "v1"
    assert pod["kind"] == "Pod"
    assert pod["metadata"]["name"] == pod_name("s2-ndvi", "r0001c0002", 2) == "s2-ndvi-r0001c0002-2"
    assert pod["metadata"]["namespace"] == NAMESPACE


def test_annotations(pod: dict[str, Any]) -> None:
    ann = pod["metadata"]["annotations"]
    assert ann[ANNOTATION_DIGEST] == DIGEST
    assert ann[ANNOTATION_STRATEGY] == "grow"
    assert float(ann[ANNOTATION_CHUNK_SCALE]) == 0.5
    assert all(isinstance(v, str) for v in ann.values())  # annotations are strings


def test_history_annotation_round_trips(pod: dict[str, Any]) -> None:
    text = pod["metadata"]["annotations"][ANNOTATION_HISTORY]
    assert json.loads(text) == list(LAUNCH.history)
    assert " " not in text  # compact: it grows with every attempt
    assert pod_view(pod) is not None
    assert pod_view(pod).history == LAUNCH.history  # type: ignore[union-attr]


def test_no_history_annotation_on_a_first_attempt(job: GisJob) -> None:
    launch = PodLaunch("r0000c0000", 0, 1024**3, 1.0, "initial")
    pod = build_worker_pod(job, UID, NAMESPACE, launch, DIGEST)
    assert ANNOTATION_HISTORY not in pod["metadata"]["annotations"]
    assert pod_view(pod).history == ()  # type: ignore[union-attr]


@pytest.mark.parametrize("scale", [1.0, 0.5, 0.25, 0.125, 1 / 3, 0.1])
def test_chunk_scale_round_trips_exactly(job: GisJob, scale: float) -> None:
    launch = PodLaunch("r0000c0000", 1, 1024**3, scale, "shrinkChunks")
    pod = build_worker_pod(job, UID, NAMESPACE, launch, DIGEST)
    assert float(pod["metadata"]["annotations"][ANNOTATION_CHUNK_SCALE]) == scale
    assert float(env_of(pod)["GISJOB_CHUNK_SCALE"]["value"]) == scale


def test_pod_view_reads_back_the_launch(pod: dict[str, Any]) -> None:
    """What the reconciler sees of a just-created pod is the launch it came from."""
    view = pod_view(pod)
    assert view is not None
    assert (view.name, view.tile, view.attempt) == ("s2-ndvi-r0001c0002-2", "r0001c0002", 2)
    assert view.memory == LAUNCH.memory
    assert view.chunk_scale == LAUNCH.chunk_scale
    assert view.strategy == LAUNCH.strategy
    assert view.phase == "Pending"
    assert view.alive and not view.finished


# ------------------------------------------------------------------------------ environment


def document_of(job: GisJob) -> str:
    text = build_job_configmap(job, UID, NAMESPACE)["data"]["job.yaml"]
    assert isinstance(text, str)
    return text


def test_job_document_reparses_to_an_equal_model(job: GisJob) -> None:
    text = document_of(job)
    again = load_job_text(text, SOURCE)
    assert again == job
    assert again.to_document() == job.to_document()
    # quantities keep the notation they were written in
    assert str(again.spec.resources.memory) == "1Gi"
    assert str(again.spec.resources.max_memory) == "8Gi"
    assert again.spec.worker.volumes == WORKER["volumes"]


def test_job_document_has_no_status_and_no_server_fields() -> None:
    doc = copy.deepcopy(DOC)
    doc["status"] = {"phase": "Running", "completedTiles": "0-9"}
    job = parse_job(doc, SOURCE)
    text = document_of(job)
    assert "status" not in load_job_text(text, SOURCE).model_dump(exclude_none=True)
    assert "completedTiles" not in text


def test_tile_memory_and_scale_env(pod: dict[str, Any]) -> None:
    env = env_of(pod)
    assert env["GISJOB_TILE"]["value"] == "r0001c0002"
    assert env["GISJOB_MEMORY"]["value"] == str(LAUNCH.memory)
    assert env["GISJOB_CHUNK_SCALE"]["value"] == "0.5"
    assert env["GISJOB_METRICS_PORT"]["value"] == str(METRICS_PORT)
    assert env["GISJOB_POD_NAME"] == {
        "name": "GISJOB_POD_NAME",
        "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
    }
    for e in container_of(pod)["env"]:
        assert ("value" in e) != ("valueFrom" in e), e  # exactly one source per variable
        if "value" in e:
            assert isinstance(e["value"], str), e  # env values must be strings


def test_manifest_is_json_serializable(pod: dict[str, Any]) -> None:
    assert json.loads(json.dumps(pod)) == pod


def test_build_is_deterministic(job: GisJob) -> None:
    a = build_worker_pod(job, UID, NAMESPACE, LAUNCH, DIGEST)
    b = build_worker_pod(job, UID, NAMESPACE, LAUNCH, DIGEST)
    assert a == b


# -------------------------------------------------------------------------------- pod_name


def test_pod_name_is_deterministic() -> None:
    name = pod_name("job", "r0000c0000", 0)
    assert name == pod_name("job", "r0000c0000", 0) == "job-r0000c0000-0"
    assert pod_name("job", "f000012-h1", 3) == "job-f000012-h1-3"


def test_pod_names_are_valid_and_unique_per_job_tile_attempt() -> None:
    jobs = ["a", "s2-ndvi", "x" * 63, "team.a-job"]
    tiles = [
        "r0000c0000",
        "r0000c0001",
        "r0001c0000",
        "r0000c0000-q0",
        "r0000c0000-q0-q3",
        "i0001-r0000c0000",
        "i0001-r0000c0000-q2",
        "f000000",
        "f000000-h0",
        "f000000-h0-h1",
        "i0002-f000001",
    ]
    names: dict[str, tuple[str, str, int]] = {}
    for job, tile, attempt in itertools.product(jobs, tiles, range(12)):
        name = pod_name(job, tile, attempt)
        assert len(name) <= MAX_NAME
        assert DNS_SUBDOMAIN.match(name), name
        assert name not in names, f"{name}: {names.get(name)} and {(job, tile, attempt)}"
        names[name] = (job, tile, attempt)


def test_long_names_are_hash_shortened_and_stay_unique() -> None:
    job = "j" * 63
    deep = "i0001-r0000c0000" + "-q1" * 70  # a tile split far beyond practice
    names = set()
    for suffix, attempt in itertools.product(["-q0", "-q1", "-q2", "-q3"], range(5)):
        name = pod_name(job, deep + suffix, attempt)
        assert len(name) == MAX_NAME == 253
        assert DNS_SUBDOMAIN.match(name), name
        assert re.search(r"-[0-9a-f]{10}$", name), name
        names.add(name)
    assert len(names) == 20  # the digest tells apart names that share the kept prefix
    assert pod_name(job, deep, 1) == pod_name(job, deep, 1)


def test_names_at_the_limit_are_not_shortened() -> None:
    job = "a" * 63
    tile = "r0000c0000"
    attempt_len = len(f"-{tile}-1")
    fitting = "b" * (MAX_NAME - attempt_len)
    assert pod_name(fitting, tile, 1) == f"{fitting}-{tile}-1"
    assert len(pod_name(fitting, tile, 1)) == MAX_NAME
    assert len(pod_name(fitting + "b", tile, 1)) == MAX_NAME
    assert pod_name(fitting + "b", tile, 1) != f"{fitting}b-{tile}-1"
    assert pod_name(job, tile, 0) == f"{job}-{tile}-0"


def test_pod_names_do_not_collide_across_jobs() -> None:
    assert pod_name("a", "i0001-r0000c0000", 0) != pod_name("a-i0001", "r0000c0000", 0)


# --------------------------------------------------------------------------- object storage

MIB = 1024**2
STORAGE_SECRET = "s3-credentials"
REMOTE_OUTPUT = {"uri": "s3://bucket/out/s2", "format": "COG"}


def raster_plan(output: RasterOutput | None = None) -> Plan:
    """A 2500x1200 raster in tiles of 1024 (edge tiles smaller), ``output`` per pixel."""
    f = raster_file(2500, 1200, block=256, uri="s3://bucket/in.tif")
    if output is not None:
        f = RasterFile(**{**f.__dict__, "output": output})
    sizing = raster_sizing()
    tiles = tuple(file_tiles(sizing, f, 1024, 1000, multi=False))
    return Plan("s2-ndvi", "raster", "scale", "COG", DIGEST, sizing, (f,), tiles)


def vector_plan(features: int = 2500) -> Plan:
    f = vector_file(features)
    sizing = vector_sizing()
    tiles = tuple(file_tiles(sizing, f, 1024, 1000, multi=False))
    return Plan("s2-ndvi", "vector", "filter", "GeoParquet", DIGEST, sizing, (f,), tiles)


def all_pods(job: GisJob, plan: Plan | None = None) -> dict[str, dict[str, Any]]:
    """One pod of each kind the operator builds for ``job``."""
    launch = PodLaunch("r0000c0001", 0, 512 * MIB, 1.0, "initial")
    return {
        "worker": build_worker_pod(
            job, UID, NAMESPACE, launch, DIGEST, ("raster", 1), plan=plan or raster_plan()
        ),
        "planner": build_planner_pod(job, UID, NAMESPACE, "abc", 0, 256 * MIB, 1000),
        "finalizer": build_finalizer_pod(job, UID, NAMESPACE, DIGEST, 0, 256 * MIB, "0-5", ""),
    }


def test_storage_secret_is_every_pods_env_from() -> None:
    job = make_job(storage={"secretName": STORAGE_SECRET})
    for kind, built in all_pods(job).items():
        c = container_of(built)
        assert c["envFrom"] == [{"secretRef": {"name": STORAGE_SECRET}}], kind
        # the Secret is named, never copied: no value of it is in the pod
        assert not [v for v in built["spec"]["volumes"] if "secret" in v and v["name"] != "creds"]


def test_no_env_from_without_a_storage_secret() -> None:
    for plain in (make_job(), make_job(storage={"requesterPays": True})):
        for kind, built in all_pods(plain).items():
            assert "envFrom" not in container_of(built), kind


def test_explicit_env_stays_beside_the_storage_secret() -> None:
    """Kubernetes gives an ``env`` entry precedence over an ``envFrom`` key of the same name:
    the operator's own variables and the user's env are all still there, unchanged."""
    with_secret = make_job(storage={"secretName": STORAGE_SECRET})
    without = make_job()
    for kind in ("worker", "planner", "finalizer"):
        a = container_of(all_pods(with_secret)[kind])
        b = container_of(all_pods(without)[kind])
        names = [e["name"] for e in a["env"]]
        assert a["env"][-len(WORKER["env"]) :] == WORKER["env"], kind
        assert {"GISJOB_JOB_FILE", "GISJOB_OWNER", "GISJOB_POD_NAME", "HOME"} <= set(names), kind
        assert len(names) == len(set(names)), kind
        assert a["env"] == b["env"], kind
    # the job document (it holds spec.storage) differs, and so does its ConfigMap's name
    assert STORAGE_SECRET in document_of(with_secret)
    assert STORAGE_SECRET not in document_of(without)
    names = {configmap_name(all_pods(j)["worker"]) for j in (with_secret, without)}
    assert len(names) == 2


def test_remote_output_asks_for_ephemeral_storage() -> None:
    job = make_job(output=REMOTE_OUTPUT, storage={"secretName": STORAGE_SECRET})
    plan = raster_plan()
    pods = all_pods(job, plan)
    for kind, built in pods.items():
        c = container_of(built)
        res = c["resources"]
        want = tile_scratch_bytes(plan, "r0000c0001") if kind == "worker" else ROLE_SCRATCH_BYTES
        assert res["requests"]["ephemeral-storage"] == str(want), kind
        assert res["limits"]["ephemeral-storage"] == str(want), kind
        assert res["requests"]["memory"] == res["limits"]["memory"], kind
        assert env_of(built)[SCRATCH_ENV]["value"] == SCRATCH, kind  # in the scratch volume
    assert ROLE_SCRATCH_BYTES == 1024**3


@pytest.mark.parametrize("uri", ["/data/out/s2", "relative/out"])
def test_local_output_asks_for_no_ephemeral_storage(uri: str) -> None:
    job = make_job(output={"uri": uri}, storage={"secretName": STORAGE_SECRET})
    for kind, built in all_pods(job).items():
        res = container_of(built)["resources"]
        assert "ephemeral-storage" not in res["requests"], kind
        assert "ephemeral-storage" not in res["limits"], kind
        assert SCRATCH_ENV not in env_of(built), kind


def test_worker_without_the_plan_asks_for_no_ephemeral_storage() -> None:
    job = make_job(output=REMOTE_OUTPUT)
    res = container_of(build_worker_pod(job, UID, NAMESPACE, LAUNCH, DIGEST))["resources"]
    assert "ephemeral-storage" not in res["requests"]


@pytest.mark.parametrize(
    ("tile", "width", "height"),
    [("r0000c0000", 1024, 1024), ("r0000c0002", 452, 1024), ("r0001c0002", 452, 176)],
)
@pytest.mark.parametrize(
    "output",
    [
        RasterOutput(1, "float32", -9999.0),
        RasterOutput(4, "uint16", 0.0),
        RasterOutput(3, "float64", 0.0),
    ],
)
def test_raster_tile_scratch_is_two_uncompressed_copies_and_a_margin(
    tile: str, width: int, height: int, output: RasterOutput
) -> None:
    plan = raster_plan(output)
    body = width * height * output.count * dtype_bytes(output.dtype)
    expected = -(-(2 * body + 64 * MIB) // MIB) * MIB
    assert tile_scratch_bytes(plan, tile) == expected
    assert expected % MIB == 0 and expected >= 2 * body + 64 * MIB


def test_sub_tile_scratch_is_sized_as_the_plan_lays_it() -> None:
    plan = raster_plan()
    whole = tile_scratch_bytes(plan, "r0000c0000")
    quarter = tile_scratch_bytes(plan, "r0000c0000-q0")
    assert quarter == -(-(2 * 512 * 512 * 4 + 64 * MIB) // MIB) * MIB
    assert quarter < whole


def test_vector_tile_scratch_follows_features_and_bytes_per_feature() -> None:
    plan = vector_plan(2500)
    f = plan.files[0]
    assert not isinstance(f, RasterFile)
    for tile in plan.tiles:
        assert tile.fids is not None
        body = tile.fids.features * f.bytes_per_feature
        expected = -(-(int(2 * body) + 64 * MIB) // MIB) * MIB
        assert tile_scratch_bytes(plan, tile.id) == expected
    # the short last tile needs less
    assert tile_scratch_bytes(plan, plan.tiles[-1].id) <= tile_scratch_bytes(plan, plan.tiles[0].id)


def test_worker_pod_scratch_follows_its_tile_and_kind() -> None:
    job = make_job(
        operation={"name": "filter", "params": {}},
        output={"uri": "s3://bucket/out/parcels", "format": "GeoParquet"},
    )
    plan = vector_plan(2500)
    for tile in plan.tiles:
        launch = PodLaunch(tile.id, 0, 512 * MIB, 1.0, "initial")
        built = build_worker_pod(job, UID, NAMESPACE, launch, DIGEST, plan=plan)
        res = container_of(built)["resources"]
        assert res["limits"]["ephemeral-storage"] == str(tile_scratch_bytes(plan, tile.id))


@pytest.mark.parametrize(
    ("dtype", "size"),
    [("uint8", 1), ("int16", 2), ("uint16", 2), ("float32", 4), ("int32", 4), ("float64", 8)],
)
def test_dtype_bytes(dtype: str, size: int) -> None:
    assert dtype_bytes(dtype) == size
    assert dtype_bytes("something-new") == 8  # unknown: the larger guess


# ------------------------------------------------------------- the job document's ConfigMap


def test_job_configmap_carries_the_document_owned_by_the_job(job: GisJob) -> None:
    """Issue 17 #5: one immutable ConfigMap per job and document, ``<job>-spec-<hash>``,
    owned by the GisJob (it goes with it), labelled like the pods, holding exactly the
    document the pods parse."""
    cm = build_job_configmap(job, UID, NAMESPACE)
    meta = cm["metadata"]
    assert (cm["apiVersion"], cm["kind"]) == ("v1", "ConfigMap")
    assert re.fullmatch(r"s2-ndvi-spec-[0-9a-f]{10}", meta["name"]), meta["name"]
    assert meta["name"] == job_configmap_name(job.name, UID, job_document(job))
    assert meta["namespace"] == NAMESPACE
    assert job_labels(job.name).items() <= meta["labels"].items()
    assert meta["labels"][LABEL_JOB] == "s2-ndvi"
    (owner,) = meta["ownerReferences"]
    assert owner == owner_reference(job, UID)
    assert owner["controller"] is True and owner["blockOwnerDeletion"] is True
    assert owner["uid"] == UID and owner["kind"] == "GisJob"
    assert cm["immutable"] is True
    assert cm["data"] == {"job.yaml": job_document(job)}
    assert "binaryData" not in cm
    assert load_job_text(cm["data"]["job.yaml"], SOURCE) == job
    assert json.loads(json.dumps(cm)) == cm
    assert build_job_configmap(job, UID, NAMESPACE) == cm  # deterministic


def test_job_configmap_name_follows_the_document_and_the_job() -> None:
    """Another document (any change, spec or metadata) or another job of the same name (a
    new uid) is another ConfigMap: an immutable one never holds a stale document."""
    base = make_job()
    names = {
        build_job_configmap(j, uid, NAMESPACE)["metadata"]["name"]
        for j, uid in [
            (base, UID),
            (base, "another-uid"),
            (make_job(parallelism=3), UID),
            (make_job(input={"uri": "/data/s2/other.tif"}), UID),
        ]
    }
    assert len(names) == 4
    long = job_configmap_name("a" * 300, UID, "doc")
    assert len(long) <= MAX_NAME and DNS_SUBDOMAIN.match(long)
    assert re.search(r"-spec-[0-9a-f]{10}$", long)


def test_job_document_over_the_limit_is_refused_with_its_size() -> None:
    """A document a ConfigMap cannot carry: an error with the size and the limit."""
    job = make_job()
    at_limit = "x" * MAX_JOB_DOCUMENT_BYTES
    assert build_job_configmap(job, UID, NAMESPACE, at_limit)["data"]["job.yaml"] == at_limit
    with pytest.raises(JobDocumentTooLarge) as err:
        build_job_configmap(job, UID, NAMESPACE, at_limit + "é")  # bytes, not characters
    assert err.value.size == MAX_JOB_DOCUMENT_BYTES + 2
    assert err.value.limit == MAX_JOB_DOCUMENT_BYTES == 900 * 1024
    uris = [
        f"/data/s2/scenes/{i:06d}/S2A_MSIL2A_20240101T101010_T32TQM_B08.tif" for i in range(15_000)
    ]
    big = make_job(input={"uris": uris})
    with pytest.raises(JobDocumentTooLarge) as err:
        build_job_configmap(big, UID, NAMESPACE)
    message = str(err.value)
    assert "\n" not in message
    assert f"({err.value.size:,} bytes)" in message and "(921,600 bytes)" in message
    assert "900.0 KiB" in message and "spec.input.uris" in message


def test_every_pod_mounts_the_job_document_and_none_carries_it_in_env() -> None:
    """Planner, worker and finalizer pods: the ConfigMap as a read-only volume at
    /etc/gisjob, ``GISJOB_JOB_FILE`` naming the file in it, no ``GISJOB_JOB``."""
    job = make_job()
    want = build_job_configmap(job, UID, NAMESPACE)["metadata"]["name"]
    for kind, built in all_pods(job).items():
        c = container_of(built)
        env = env_of(built)
        assert "GISJOB_JOB" not in env, kind
        assert env["GISJOB_JOB_FILE"] == {"name": "GISJOB_JOB_FILE", "value": JOB_DOCUMENT_FILE}
        assert JOB_DOCUMENT_FILE == "/etc/gisjob/job.yaml"
        volumes = {v["name"]: v for v in built["spec"]["volumes"]}
        assert volumes[JOB_VOLUME] == {
            "name": JOB_VOLUME,
            "configMap": {"name": want, "defaultMode": 0o444},
        }, kind
        mounts = [m for m in c["volumeMounts"] if m["name"] == JOB_VOLUME]
        assert mounts == [{"name": JOB_VOLUME, "mountPath": JOB_DOCUMENT_DIR, "readOnly": True}]
    # the controller passes the name it created (no document built per pod)
    launch = PodLaunch("r0000c0001", 0, 512 * MIB, 1.0, "initial")
    for built in (
        build_worker_pod(job, UID, NAMESPACE, launch, DIGEST, configmap="given"),
        build_planner_pod(job, UID, NAMESPACE, "abc", 0, 256 * MIB, configmap="given"),
        build_finalizer_pod(job, UID, NAMESPACE, DIGEST, 0, 256 * MIB, "0", "", "given"),
    ):
        assert configmap_name(built) == "given"


def test_a_3000_file_job_makes_small_pods() -> None:
    """The document of 3,000 listed files passes 128 KiB (what one environment variable may
    hold); the pods stay small, the document goes through the ConfigMap."""
    uris = [
        f"/data/s2/scenes/{i:06d}/S2A_MSIL2A_20240101T101010_T32TQM_B08.tif" for i in range(3000)
    ]
    job = make_job(input={"uris": uris})
    cm = build_job_configmap(job, UID, NAMESPACE)
    size = len(cm["data"]["job.yaml"].encode())
    assert 128 * 1024 < size <= MAX_JOB_DOCUMENT_BYTES
    for kind, built in all_pods(job).items():
        assert len(json.dumps(built)) < 8 * 1024, kind
        assert configmap_name(built) == cm["metadata"]["name"], kind
