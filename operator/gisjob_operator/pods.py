"""Pod manifests (pure): the planner pod, one worker pod per tile attempt, the finalizer pod.

``requests.memory == limits.memory`` = the tile's memory request (headroom included), CPU
from the spec, ``restartPolicy: Never``, the restricted Pod Security settings, an owner
reference to the GisJob, the job document in an environment variable, and the user's
``spec.worker`` settings. Names are deterministic so a restarted operator creates no
duplicates.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

import yaml

from gisjob_worker.spec import API_VERSION, KIND, GisJob

LABEL_JOB = "gisjob.dev/job"
LABEL_TILE = "gisjob.dev/tile"
LABEL_ATTEMPT = "gisjob.dev/attempt"
ANNOTATION_DIGEST = "gisjob.dev/plan-digest"
ANNOTATION_STRATEGY = "gisjob.dev/strategy"
ANNOTATION_CHUNK_SCALE = "gisjob.dev/chunk-scale"
ANNOTATION_HISTORY = "gisjob.dev/history"
ANNOTATION_SPEC = "gisjob.dev/spec-hash"
METRICS_PORT = 9090
SCRATCH = "/tmp"
SCRATCH_VOLUME = "scratch"
TERMINATION_LOG = "/dev/termination-log"
RUN_AS_USER = 65532
MAX_NAME = 253


@dataclass(frozen=True)
class PodLaunch:
    """One attempt of one tile, as the policy decided it."""

    tile: str
    attempt: int
    memory: int
    chunk_scale: float
    strategy: str
    history: tuple[dict[str, Any], ...] = ()


def pod_name(job: str, tile: str, attempt: int) -> str:
    # "a" + "i0001-r0000c0000" must not read like "a-i0001" + "r0000c0000": a job name that
    # ends like a file prefix is separated from the tile by a dot (tile ids have none)
    sep = "." if re.search(r"-i[0-9]{4,}$", job) else "-"
    name = f"{job}{sep}{tile}-{attempt}"
    if len(name) <= MAX_NAME:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:10]
    return f"{name[: MAX_NAME - 11]}-{digest}"


def job_labels(job: str) -> dict[str, str]:
    return {
        LABEL_JOB: job,
        "app.kubernetes.io/name": "gisjob-worker",
        "app.kubernetes.io/managed-by": "gisjob-operator",
    }


def owner_reference(job: GisJob, uid: str) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": job.name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _cpu(job: GisJob) -> str:
    return job.spec.resources.cpu


LABEL_ROLE = "gisjob.dev/role"
ROLE_WORKER = "worker"
ROLE_PLANNER = "planner"
ROLE_FINALIZER = "finalizer"


def _job_pod(
    job: GisJob,
    uid: str,
    namespace: str,
    *,
    name: str,
    role: str,
    command: list[str],
    env: list[dict[str, Any]],
    memory: int,
    labels: dict[str, str],
    annotations: dict[str, str],
    ports: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A pod of the worker image for this job: planner, worker or finalizer. The data it
    needs comes from the user's ``spec.worker`` (volumes, env, service account); the
    operator itself mounts and reads none of it."""
    worker = job.spec.worker
    document = yaml.safe_dump(job.to_document(), sort_keys=False)
    container: dict[str, Any] = {
        "name": role,
        "image": worker.image,
        "command": command,
        "env": [
            {"name": "GISJOB_JOB", "value": document},
            # whose output location this is (gisjob_worker.ownership): claimed by the planner
            {"name": "GISJOB_OWNER", "value": f"{namespace}/{job.name}/{uid}"},
            {"name": "GISJOB_POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "HOME", "value": SCRATCH},
            *env,
            *worker.env,
        ],
        "resources": {
            "requests": {"memory": str(memory), "cpu": _cpu(job)},
            "limits": {"memory": str(memory)},
        },
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [{"name": SCRATCH_VOLUME, "mountPath": SCRATCH}, *worker.volume_mounts],
    }
    if ports:
        container["ports"] = ports
    if worker.image_pull_policy:
        container["imagePullPolicy"] = worker.image_pull_policy
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": 30,
        "automountServiceAccountToken": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS_USER,
            "runAsGroup": RUN_AS_USER,
            "fsGroup": RUN_AS_USER,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [{"name": SCRATCH_VOLUME, "emptyDir": {}}, *worker.volumes],
    }
    if worker.service_account_name:
        spec["serviceAccountName"] = worker.service_account_name
    if worker.node_selector:
        spec["nodeSelector"] = dict(worker.node_selector)
    if worker.tolerations:
        spec["tolerations"] = list(worker.tolerations)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {**job_labels(job.name), LABEL_ROLE: role, **labels},
            "annotations": annotations,
            "ownerReferences": [owner_reference(job, uid)],
        },
        "spec": spec,
    }


def build_worker_pod(
    job: GisJob,
    uid: str,
    namespace: str,
    launch: PodLaunch,
    digest: str,
    baseline: tuple[str, int] | None = None,
) -> dict[str, Any]:
    """The pod for one tile attempt. ``baseline`` (kind, bytes): the import baseline the
    plan used, passed on so the worker sizes its chunks exactly as planned (and does not
    re-measure it in every pod)."""
    memory = str(launch.memory)
    annotations = {
        ANNOTATION_DIGEST: digest,
        ANNOTATION_STRATEGY: launch.strategy,
        ANNOTATION_CHUNK_SCALE: repr(launch.chunk_scale),
    }
    if launch.history:
        annotations[ANNOTATION_HISTORY] = json.dumps(list(launch.history), separators=(",", ":"))
    env = [
        {"name": "GISJOB_TILE", "value": launch.tile},
        {"name": "GISJOB_MEMORY", "value": memory},
        {"name": "GISJOB_CHUNK_SCALE", "value": repr(launch.chunk_scale)},
        {"name": "GISJOB_METRICS_PORT", "value": str(METRICS_PORT)},
        {"name": "GISJOB_PLAN_DIGEST", "value": digest},
        {"name": "GISJOB_ATTEMPT", "value": str(launch.attempt)},
        {"name": "GISJOB_STRATEGY", "value": launch.strategy},
        *(
            [{"name": "GISJOB_HISTORY", "value": annotations[ANNOTATION_HISTORY]}]
            if launch.history
            else []
        ),
        *(
            [{"name": f"GISJOB_BASELINE_{baseline[0].upper()}", "value": str(baseline[1])}]
            if baseline is not None
            else []
        ),
    ]
    return _job_pod(
        job,
        uid,
        namespace,
        name=pod_name(job.name, launch.tile, launch.attempt),
        role=ROLE_WORKER,
        command=["gisjob", "worker"],
        env=env,
        memory=launch.memory,
        labels={LABEL_TILE: launch.tile, LABEL_ATTEMPT: str(launch.attempt)},
        annotations=annotations,
        ports=[{"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"}],
    )


def spec_hash(job: GisJob) -> str:
    """What a plan depends on in the spec (input, operation, output, tiling, resources): a
    change here needs a new planner pod; parallelism, retry, suspend or TTL do not."""
    spec = job.spec
    payload = {
        k: getattr(spec, k).model_dump(mode="json", by_alias=True)
        for k in ("input", "operation", "output", "tiling", "resources")
    }
    blob = json.dumps(payload, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:10]


def _role_pod_name(job: str, role: str, key: str, attempt: int) -> str:
    name = f"{job}-{role}-{key}-{attempt}"
    if len(name) <= MAX_NAME:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:10]
    return f"{name[: MAX_NAME - 11]}-{digest}"


def planner_pod_name(job: str, spec_key: str, attempt: int) -> str:
    return _role_pod_name(job, "plan", spec_key, attempt)


def finalizer_pod_name(job: str, digest: str, attempt: int) -> str:
    return _role_pod_name(job, "finalize", digest[:10], attempt)


def build_planner_pod(
    job: GisJob,
    uid: str,
    namespace: str,
    spec_key: str,
    attempt: int,
    memory: int,
    max_tiles: int | None = None,
) -> dict[str, Any]:
    """The planner pod: metadata reads of the input, a plan descriptor in its termination
    message (small plans) or its log (large ones)."""
    return _job_pod(
        job,
        uid,
        namespace,
        name=planner_pod_name(job.name, spec_key, attempt),
        role=ROLE_PLANNER,
        command=["gisjob", "planner"],
        env=[{"name": "GISJOB_MAX_TILES", "value": str(max_tiles)}] if max_tiles else [],
        memory=memory,
        labels={LABEL_ATTEMPT: str(attempt)},
        annotations={ANNOTATION_SPEC: spec_key},
    )


def build_finalizer_pod(
    job: GisJob,
    uid: str,
    namespace: str,
    digest: str,
    attempt: int,
    memory: int,
    completed: str,
    failed: str,
) -> dict[str, Any]:
    """The finalizer pod: manifest, mosaic VRT or GeoParquet dataset from the ledger in the
    output location, cross-checked against what the operator saw complete and fail
    (compressed index ranges)."""
    return _job_pod(
        job,
        uid,
        namespace,
        name=finalizer_pod_name(job.name, digest, attempt),
        role=ROLE_FINALIZER,
        command=["gisjob", "finalize", "--completed", completed, "--failed", failed],
        env=[],
        memory=memory,
        labels={LABEL_ATTEMPT: str(attempt)},
        annotations={ANNOTATION_DIGEST: digest},
    )
