"""Pod manifests (pure): the planner pod, one worker pod per tile attempt, the finalizer pod.

``requests.memory == limits.memory`` = the tile's memory request (headroom included), CPU
from the spec, ``restartPolicy: Never``, the restricted Pod Security settings, an owner
reference to the GisJob, the job document mounted from a ConfigMap, and the user's
``spec.worker`` settings. Names are deterministic so a restarted operator creates no
duplicates.

The job document (the GisJob as the pods parse it) reaches every pod as a file: one
immutable ConfigMap per job and document (:func:`build_job_configmap`, named
``<job>-spec-<hash>``, owned by the GisJob so it goes with it), mounted read-only at
``/etc/gisjob`` with ``GISJOB_JOB_FILE`` naming ``/etc/gisjob/job.yaml``. An environment
variable could not carry it: ``exec`` fails with ``E2BIG`` past 128 KiB (a ``uris:`` list
of ~2,000 files). A document over :data:`MAX_JOB_DOCUMENT_BYTES` cannot be mounted and
raises :class:`JobDocumentTooLarge`.

Object storage: with ``spec.storage.secretName`` every pod takes its environment from that
Secret (``envFrom``; the variables the operator sets explicitly win, as Kubernetes defines) —
the operator names the Secret and never reads it. When ``spec.output.uri`` is an object
store, a worker builds its tile as a local file in the scratch volume before uploading it, so
worker pods request (and are limited to) the ``ephemeral-storage`` that file takes
(:func:`tile_scratch_bytes`), and planner and finalizer pods a fixed
:data:`ROLE_SCRATCH_BYTES`.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from typing import Any

import yaml

from gisjob_worker.plan import Plan, RasterFile
from gisjob_worker.quantity import format_bytes, round_up_mib
from gisjob_worker.spec import API_VERSION, KIND, GisJob
from gisjob_worker.storage import is_local

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
JOB_DOCUMENT_DIR = "/etc/gisjob"  # gisjob_worker.attempt.MOUNTED_JOB's directory
JOB_DOCUMENT_KEY = "job.yaml"
JOB_DOCUMENT_FILE = f"{JOB_DOCUMENT_DIR}/{JOB_DOCUMENT_KEY}"
JOB_DOCUMENT_ENV = "GISJOB_JOB_FILE"
JOB_VOLUME = "gisjob-job"  # the ConfigMap volume holding the job document
# The most job document a ConfigMap carries: the API server refuses ConfigMaps whose data
# passes 1 MiB; the rest of that is left to metadata and the YAML's growth on a round trip.
MAX_JOB_DOCUMENT_BYTES = 900 * 1024
ANNOTATION_DOCUMENT = "gisjob.dev/document-sha256"
RUN_AS_USER = 65532
MAX_NAME = 253
MIB = 1024**2
SCRATCH_ENV = "GISJOB_SCRATCH"  # where a worker builds outputs bound for object storage
# ephemeral-storage of planner and finalizer pods when the output is an object store: the
# finalizer may merge a GeoPackage's parts locally before uploading it
ROLE_SCRATCH_BYTES = 1024**3
SCRATCH_MARGIN = 64 * MIB  # on top of a worker's scratch files: GDAL's side files, logs
SCRATCH_COPIES = 2  # the tile's work file and its COG copy (or a GeoParquet part and its copy)
# bytes per pixel of the output dtypes operations declare (gisjob_worker.registry.OutputDtype
# and the rest of GDAL's; the operator loads no NumPy to ask it)
DTYPE_BYTES = {
    "uint8": 1,
    "int8": 1,
    "uint16": 2,
    "int16": 2,
    "float16": 2,
    "uint32": 4,
    "int32": 4,
    "float32": 4,
    "uint64": 8,
    "int64": 8,
    "float64": 8,
    "complex64": 8,
    "complex128": 16,
}


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


class JobDocumentTooLarge(ValueError):
    """The job document is larger than a ConfigMap can carry to the pods."""

    def __init__(self, size: int, limit: int = MAX_JOB_DOCUMENT_BYTES) -> None:
        super().__init__(
            f"the job document is {format_bytes(size)} ({size:,} bytes), above the "
            f"{format_bytes(limit)} ({limit:,} bytes) its pods can be given (a ConfigMap); "
            "name the files with spec.input.glob instead of listing them in spec.input.uris, "
            "or split the job"
        )
        self.size = size
        self.limit = limit


def job_document(job: GisJob) -> str:
    """The job as its pods read it (``gisjob_worker.attempt.load_job``): YAML of the whole
    document, status left out."""
    return yaml.safe_dump(job.to_document(), sort_keys=False)


def job_configmap_name(job: str, uid: str, document: str) -> str:
    """``<job>-spec-<hash>``: one name per job (its uid) and document, so an immutable
    ConfigMap of that name always holds that document, and a job deleted and created again
    under its name does not meet its predecessor's ConfigMap."""
    digest = hashlib.sha256(f"{uid}\n{document}".encode()).hexdigest()[:10]
    suffix = f"-spec-{digest}"
    return f"{job[: MAX_NAME - len(suffix)]}{suffix}"


def build_job_configmap(
    job: GisJob, uid: str, namespace: str, document: str | None = None
) -> dict[str, Any]:
    """The ConfigMap that carries the job document (``document``, default
    :func:`job_document`) to the job's pods: immutable, owned by the GisJob (it goes when the
    job goes), labelled like the pods. Raises :class:`JobDocumentTooLarge` past
    :data:`MAX_JOB_DOCUMENT_BYTES`."""
    text = job_document(job) if document is None else document
    size = len(text.encode())
    if size > MAX_JOB_DOCUMENT_BYTES:
        raise JobDocumentTooLarge(size)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": job_configmap_name(job.name, uid, text),
            "namespace": namespace,
            "labels": {**job_labels(job.name), LABEL_ROLE: ROLE_DOCUMENT},
            "annotations": {ANNOTATION_DOCUMENT: hashlib.sha256(text.encode()).hexdigest()},
            "ownerReferences": [owner_reference(job, uid)],
        },
        "immutable": True,
        "data": {JOB_DOCUMENT_KEY: text},
    }


def configmap_of(pod: dict[str, Any]) -> str | None:
    """The job-document ConfigMap a pod of this operator mounts (None: another pod)."""
    for volume in (pod.get("spec") or {}).get("volumes") or []:
        if volume.get("name") == JOB_VOLUME and isinstance(volume.get("configMap"), dict):
            name = volume["configMap"].get("name")
            return str(name) if name else None
    return None


def _cpu(job: GisJob) -> str:
    return job.spec.resources.cpu


def output_is_remote(job: GisJob) -> bool:
    """The job writes to an object store (``s3://…``, ``/vsis3/…``): outputs are built in
    local scratch first, then uploaded."""
    return not is_local(job.spec.output.uri)


def dtype_bytes(dtype: str) -> int:
    """Bytes per pixel of one band of ``dtype`` (8 for a name this table does not know:
    scratch is better too large than too small)."""
    return DTYPE_BYTES.get(dtype.lower(), 8)


def tile_scratch_bytes(plan: Plan, tile_id: str) -> int:
    """Local disk a worker needs for one tile whose output goes to object storage, rounded up
    to a MiB: the output built whole before the upload, twice (the work file and the COG
    copy made from it), plus :data:`SCRATCH_MARGIN`. Rasters: window pixels × output bands ×
    bytes per pixel (uncompressed: the upper bound); vectors: features × the file's bytes
    per feature. Sub-tiles (``-qN``/``-hN``) are sized as the plan lays them."""
    tile = plan.tile(tile_id)
    f = plan.files[tile.file_index]
    if isinstance(f, RasterFile):
        assert tile.window is not None
        w = tile.window
        body = w.width * w.height * f.output.count * dtype_bytes(f.output.dtype)
    else:
        assert tile.fids is not None
        body = math.ceil(tile.fids.features * f.bytes_per_feature)
    return round_up_mib(SCRATCH_COPIES * body + SCRATCH_MARGIN)


LABEL_ROLE = "gisjob.dev/role"
ROLE_WORKER = "worker"
ROLE_PLANNER = "planner"
ROLE_FINALIZER = "finalizer"
ROLE_DOCUMENT = "document"  # the job-document ConfigMap


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
    scratch: int | None = None,
    configmap: str | None = None,
) -> dict[str, Any]:
    """A pod of the worker image for this job: planner, worker or finalizer. The data it
    needs comes from the user's ``spec.worker`` (volumes, env, service account) and the
    storage Secret (``spec.storage.secretName``, as ``envFrom``); the operator itself
    mounts and reads none of it. ``scratch``: the ``ephemeral-storage`` request and limit
    (bytes). For an object-store output ``GISJOB_SCRATCH`` puts the files built before an
    upload into the scratch volume, which that request is for. ``configmap``: the name of
    the job's document ConfigMap (:func:`build_job_configmap`; default: the one of this job
    and uid), mounted at :data:`JOB_DOCUMENT_DIR`."""
    worker = job.spec.worker
    if configmap is None:
        configmap = job_configmap_name(job.name, uid, job_document(job))
    requests: dict[str, str] = {"memory": str(memory), "cpu": _cpu(job)}
    limits: dict[str, str] = {"memory": str(memory)}
    if scratch is not None:
        requests["ephemeral-storage"] = limits["ephemeral-storage"] = str(scratch)
    remote = output_is_remote(job)
    scratch_env = [{"name": SCRATCH_ENV, "value": SCRATCH}] if remote else []
    container: dict[str, Any] = {
        "name": role,
        "image": worker.image,
        "command": command,
        "env": [
            {"name": JOB_DOCUMENT_ENV, "value": JOB_DOCUMENT_FILE},
            # whose output location this is (gisjob_worker.ownership): claimed by the planner
            {"name": "GISJOB_OWNER", "value": f"{namespace}/{job.name}/{uid}"},
            {"name": "GISJOB_POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "HOME", "value": SCRATCH},
            *scratch_env,
            *env,
            *worker.env,
        ],
        "resources": {"requests": requests, "limits": limits},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [
            {"name": SCRATCH_VOLUME, "mountPath": SCRATCH},
            {"name": JOB_VOLUME, "mountPath": JOB_DOCUMENT_DIR, "readOnly": True},
            *worker.volume_mounts,
        ],
    }
    secret = job.spec.storage.secret_name
    if secret:
        # every key of the storage Secret becomes a variable; an explicit env entry of the
        # same name (the operator's own or the user's) wins, as Kubernetes defines
        container["envFrom"] = [{"secretRef": {"name": secret}}]
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
        "volumes": [
            {"name": SCRATCH_VOLUME, "emptyDir": {}},
            {"name": JOB_VOLUME, "configMap": {"name": configmap, "defaultMode": 0o444}},
            *worker.volumes,
        ],
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
    plan: Plan | None = None,
    configmap: str | None = None,
) -> dict[str, Any]:
    """The pod for one tile attempt. ``baseline`` (kind, bytes): the import baseline the
    plan used, passed on so the worker sizes its chunks exactly as planned (and does not
    re-measure it in every pod). ``plan``: the job's plan, which sizes the tile's local
    scratch (``ephemeral-storage``, :func:`tile_scratch_bytes`) when the output is an object
    store; without it the pod asks for none. ``configmap``: the job document's ConfigMap
    (default: this job's, from its document)."""
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
        scratch=(
            tile_scratch_bytes(plan, launch.tile)
            if plan is not None and output_is_remote(job)
            else None
        ),
        configmap=configmap,
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
    configmap: str | None = None,
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
        scratch=ROLE_SCRATCH_BYTES if output_is_remote(job) else None,
        configmap=configmap,
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
    configmap: str | None = None,
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
        scratch=ROLE_SCRATCH_BYTES if output_is_remote(job) else None,
        configmap=configmap,
    )
