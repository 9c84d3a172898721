"""Worker pod manifests (pure): ``build_worker_pod`` and ``pod_name``.

A pod per tile attempt: memory request = limit = the launch's memory, the restricted Pod
Security settings, a writable scratch volume, the user's ``spec.worker`` settings passed
through, labels and an owner reference the reconciler and the garbage collector rely on,
and the job document in ``GISJOB_JOB`` that the worker re-parses to the same model.
"""

from __future__ import annotations

import copy
import itertools
import json
import re
from typing import Any

import pytest

from gisjob_operator.pods import (
    ANNOTATION_CHUNK_SCALE,
    ANNOTATION_DIGEST,
    ANNOTATION_HISTORY,
    ANNOTATION_STRATEGY,
    LABEL_ATTEMPT,
    LABEL_JOB,
    LABEL_TILE,
    MAX_NAME,
    METRICS_PORT,
    RUN_AS_USER,
    SCRATCH,
    PodLaunch,
    build_worker_pod,
    job_labels,
    owner_reference,
    pod_name,
)
from gisjob_operator.podview import pod_view
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
    assert spec["volumes"][1:] == WORKER["volumes"]
    assert c["volumeMounts"][1:] == WORKER["volumeMounts"]
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
    assert spec["volumes"] == [{"name": "scratch", "emptyDir": {}}]
    assert c["volumeMounts"] == [{"name": "scratch", "mountPath": "/tmp"}]


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


def test_job_document_reparses_to_an_equal_model(pod: dict[str, Any], job: GisJob) -> None:
    text = env_of(pod)["GISJOB_JOB"]["value"]
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
    text = env_of(build_worker_pod(job, UID, NAMESPACE, LAUNCH, DIGEST))["GISJOB_JOB"]["value"]
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
