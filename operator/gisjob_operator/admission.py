"""What a GisJob may put into its pods (pure): the cluster admin's :class:`PodPolicy`.

Every pod of a job (planner, workers, finalizer) is built from ``spec.worker``, so whoever
may create a GisJob in a namespace gets pods with that template. :func:`check_job` makes it
a cluster-admin decision: the image must be allowed (an exact name, or a registry/path
prefix ending in ``/``, or a repository ending in ``:`` for any of its tags and digests),
volumes only of the allowed types, the service account the namespace default or a listed
one, Secrets only the one storage Secret (through ``spec.storage.secretName``,
``env[].valueFrom.secretKeyRef``, a ``secret`` volume or a CSI volume's
``nodePublishSecretRef``), no user env named
``GISJOB_*`` or ``HOME`` (gisjob's own), no mount propagation and no mount over the paths
gisjob's pods rely on. Everything else fails the job with one line naming the field, e.g.
``spec.worker.volumes[1].hostPath: volume type hostPath is not allowed (allowed:
persistentVolumeClaim, configMap, emptyDir, ephemeral, csi)``.

The operator's own additions (the scratch ``emptyDir``, the restricted security context,
``automountServiceAccountToken: false``) are not the user's to change: ``spec.worker`` has
no field for them.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from gisjob_worker.errors import EXIT_INPUT, GisJobError
from gisjob_worker.spec import GisJob

from .pods import JOB_VOLUME, SCRATCH, SCRATCH_VOLUME, TERMINATION_LOG

REASON = "Forbidden"  # the reason of the job's Failed condition

DEFAULT_ALLOWED_IMAGES: tuple[str, ...] = ("gisjob:",)  # spec.worker.image's default, any tag
DEFAULT_ALLOWED_VOLUME_TYPES: tuple[str, ...] = (
    "persistentVolumeClaim",
    "configMap",
    "emptyDir",
    "ephemeral",  # generic ephemeral volumes: a claim made from a template, per pod
    "csi",  # inline CSI volumes (CSI ephemeral volumes) of drivers that allow them
)
# Every volume source of core/v1 Volume (Kubernetes 1.31): the types a policy may list.
KNOWN_VOLUME_TYPES = frozenset(
    {
        "awsElasticBlockStore",
        "azureDisk",
        "azureFile",
        "cephfs",
        "cinder",
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "fc",
        "flexVolume",
        "flocker",
        "gcePersistentDisk",
        "gitRepo",
        "glusterfs",
        "hostPath",
        "image",
        "iscsi",
        "nfs",
        "persistentVolumeClaim",
        "photonPersistentDisk",
        "portworxVolume",
        "projected",
        "quobyte",
        "rbd",
        "scaleIO",
        "secret",
        "storageos",
        "vsphereVolume",
    }
)
# Never listable: Secrets only through the storage Secret; projected volumes carry
# service-account tokens and any Secret of the namespace.
UNLISTABLE_VOLUME_TYPES = {
    "secret": "secret volumes are allowed for the storage secret only",
    "projected": "projected volumes can carry service account tokens and any secret",
}
# Paths of gisjob's pods a user volume must not cover or hide: the scratch volume (also
# HOME), the termination message (the result record) and the mounted job document.
JOB_DOCUMENT_DIR = "/etc/gisjob"  # gisjob_worker.attempt.MOUNTED_JOB's directory
RESERVED_PATHS: Mapping[str, str] = {
    SCRATCH: "gisjob's scratch volume",
    TERMINATION_LOG: "the termination message (the pod's result)",
    JOB_DOCUMENT_DIR: "the mounted job document",
}
PROTECTED_ENV_PREFIX = "GISJOB_"
PROTECTED_ENV = frozenset({"HOME"})
# EnvVarSource kinds a user env var may use (secretKeyRef: the storage secret only).
ENV_SOURCES = ("configMapKeyRef", "fieldRef", "resourceFieldRef", "secretKeyRef")
DEFAULT_SERVICE_ACCOUNT = "default"

# Image references (github.com/distribution/reference): [domain/]path[:tag][@digest].
_DOMAIN_PART = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"{_DOMAIN_PART}(?:\.{_DOMAIN_PART})*(?::[0-9]+)?"
_PATH_PART = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_NAME = rf"(?:{_DOMAIN}/)?{_PATH_PART}(?:/{_PATH_PART})*"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9A-Fa-f]{32,}"
IMAGE_REFERENCE = re.compile(rf"{_NAME}(?::{_TAG})?(?:@{_DIGEST})?")
_IMAGE_NAME = re.compile(_NAME)
_REGISTRY_OR_PATH = re.compile(rf"{_DOMAIN}|{_NAME}")
# DNS-1123 subdomain: names of Secrets and ServiceAccounts.
_OBJECT_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


class AdmissionError(GisJobError):
    """``spec.worker`` asks for something the operator's pod policy does not allow."""

    exit_code = EXIT_INPUT  # permanent: the same spec is refused again
    outcome = "forbidden"
    reason = REASON


class PolicyError(ValueError):
    """An invalid pod policy setting; ``setting`` names the :class:`PodPolicy` field."""

    def __init__(self, setting: str, message: str) -> None:
        super().__init__(message)
        self.setting = setting


@dataclass(frozen=True)
class PodPolicy:
    """What a GisJob's ``spec.worker`` may ask for (the operator's settings).

    ``allowed_images``: exact image references, or prefixes: ``registry.example/gis/``
    (anything below it) or ``registry.example/gis/worker:`` (any tag or digest of that
    repository). Names are compared as written (``gisjob:1`` is not ``docker.io/library/
    gisjob:1``). ``allowed_volume_types``: core/v1 volume source names (``secret`` and
    ``projected`` cannot be listed). ``allowed_service_accounts``: names a job may give as
    ``serviceAccountName`` besides the namespace default. ``storage_secret``: the one Secret
    (in the job's namespace) a job may reference; empty: none.
    """

    allowed_images: tuple[str, ...] = DEFAULT_ALLOWED_IMAGES
    allowed_volume_types: tuple[str, ...] = DEFAULT_ALLOWED_VOLUME_TYPES
    allowed_service_accounts: tuple[str, ...] = ()
    storage_secret: str = ""

    def __post_init__(self) -> None:
        if not self.allowed_images:
            raise PolicyError("allowed_images", "at least one image or prefix must be allowed")
        for entry in self.allowed_images:
            if not _valid_image_entry(entry):
                raise PolicyError(
                    "allowed_images",
                    f"{entry!r} is neither an image reference nor a prefix ending in '/' "
                    "(a registry or path) or ':' (a repository)",
                )
        for kind in self.allowed_volume_types:
            if kind in UNLISTABLE_VOLUME_TYPES:
                raise PolicyError(
                    "allowed_volume_types",
                    f"{kind} cannot be listed: {UNLISTABLE_VOLUME_TYPES[kind]}",
                )
            if kind not in KNOWN_VOLUME_TYPES:
                raise PolicyError(
                    "allowed_volume_types", f"{kind!r} is not a Kubernetes volume type"
                )
        for account in self.allowed_service_accounts:
            if not _OBJECT_NAME.fullmatch(account):
                raise PolicyError(
                    "allowed_service_accounts", f"{account!r} is not a service account name"
                )
        if self.storage_secret and not _OBJECT_NAME.fullmatch(self.storage_secret):
            raise PolicyError("storage_secret", f"{self.storage_secret!r} is not a Secret name")


def check_job(job: GisJob, policy: PodPolicy) -> None:
    """Raise :class:`AdmissionError` (one line: the first violation, its field path and how
    many more there are) unless ``job.spec.worker`` is within ``policy``."""
    found = violations(job, policy)
    if found:
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        raise AdmissionError(f"{found[0]}{more}")


def violations(job: GisJob, policy: PodPolicy) -> list[str]:
    """Every way ``job.spec.worker`` (and ``spec.storage.secretName``, whose Secret becomes
    every pod's environment) exceeds ``policy``, each ``<field path>: <why>``, in field
    order; empty when the job is admitted."""
    worker = job.spec.worker
    base = "spec.worker"
    found: list[str] = []
    if not image_allowed(worker.image, policy.allowed_images):
        allowed = ", ".join(_describe_image_entry(e) for e in policy.allowed_images)
        found.append(f"{base}.image: image {worker.image!r} is not allowed (allowed: {allowed})")
    account = worker.service_account_name
    if account not in (None, "", DEFAULT_SERVICE_ACCOUNT, *policy.allowed_service_accounts):
        listed = ", ".join(policy.allowed_service_accounts)
        allowed = f"the namespace default, {listed}" if listed else "the namespace default"
        found.append(
            f"{base}.serviceAccountName: service account {account!r} is not allowed "
            f"(allowed: {allowed})"
        )
    for i, volume in enumerate(worker.volumes):
        found.extend(_volume_violations(f"{base}.volumes[{i}]", volume, policy))
    for i, mount in enumerate(worker.volume_mounts):
        found.extend(_mount_violations(f"{base}.volumeMounts[{i}]", mount))
    for i, var in enumerate(worker.env):
        found.extend(_env_violations(f"{base}.env[{i}]", var, policy))
    storage_secret = job.spec.storage.secret_name
    if storage_secret is not None:  # every pod of the job takes its environment from it
        refused = _secret_violation("spec.storage.secretName", storage_secret, policy)
        if refused:
            found.append(refused)
    return found


def image_allowed(image: str, allowed: tuple[str, ...]) -> bool:
    """``image`` is a valid reference and matches one entry of ``allowed`` (exact, a
    ``/``-terminated registry or path prefix, or a ``:``-terminated repository)."""
    if not IMAGE_REFERENCE.fullmatch(image):
        return False
    for entry in allowed:
        if entry.endswith("/"):
            if image.startswith(entry):
                return True
        elif entry.endswith(":"):
            if image.startswith(entry) or image.startswith(f"{entry[:-1]}@"):
                return True
        elif image == entry:
            return True
    return False


def _valid_image_entry(entry: str) -> bool:
    if entry.endswith("/"):
        return bool(_REGISTRY_OR_PATH.fullmatch(entry[:-1]))
    if entry.endswith(":"):
        return bool(_IMAGE_NAME.fullmatch(entry[:-1]))
    return bool(IMAGE_REFERENCE.fullmatch(entry))


def _describe_image_entry(entry: str) -> str:
    return f"{entry}*" if entry.endswith(("/", ":")) else entry


def _secret_violation(path: str, name: Any, policy: PodPolicy) -> str | None:
    if policy.storage_secret and name == policy.storage_secret:
        return None
    only = (
        f"only the storage secret {policy.storage_secret!r} may be referenced"
        if policy.storage_secret
        else "no storage secret is configured"
    )
    return f"{path}: secret {name!r} is not allowed ({only})"


def _volume_types(volume: Mapping[str, Any]) -> list[str]:
    """The volume source keys of a core/v1 Volume (none: the API server's emptyDir)."""
    return sorted(k for k in volume if k != "name") or ["emptyDir"]


def _volume_violations(path: str, volume: Mapping[str, Any], policy: PodPolicy) -> Iterator[str]:
    name = volume.get("name")
    if name == SCRATCH_VOLUME:
        yield f"{path}.name: {name!r} is reserved for gisjob's scratch volume"
    elif name == JOB_VOLUME:
        yield f"{path}.name: {name!r} is reserved for gisjob's job document volume"
    kinds = _volume_types(volume)
    if len(kinds) > 1:
        yield f"{path}: more than one volume type ({', '.join(kinds)})"
        return
    (kind,) = kinds
    source = volume.get(kind)
    if kind == "secret":
        secret = source.get("secretName") if isinstance(source, Mapping) else None
        refused = _secret_violation(f"{path}.secret.secretName", secret, policy)
        if refused:
            yield refused
        return
    if kind not in policy.allowed_volume_types:
        allowed = ", ".join(policy.allowed_volume_types) or "none"
        yield f"{path}.{kind}: volume type {kind} is not allowed (allowed: {allowed})"
        return
    if kind == "csi" and isinstance(source, Mapping) and "nodePublishSecretRef" in source:
        ref = source["nodePublishSecretRef"]
        secret = ref.get("name") if isinstance(ref, Mapping) else None
        refused = _secret_violation(f"{path}.csi.nodePublishSecretRef.name", secret, policy)
        if refused:
            yield refused


def _mount_violations(path: str, mount: Mapping[str, Any]) -> Iterator[str]:
    propagation = mount.get("mountPropagation")
    if propagation not in (None, "None"):
        yield f"{path}.mountPropagation: {propagation} is not allowed (only None)"
    target = mount.get("mountPath")
    if not isinstance(target, str) or not target.startswith("/"):
        yield f"{path}.mountPath: {target!r} is not an absolute path"
        return
    normal = "/" + posixpath.normpath(target).lstrip("/")  # normpath keeps a leading "//"
    for reserved, what in RESERVED_PATHS.items():
        if _overlaps(normal, reserved):
            yield f"{path}.mountPath: {target} overlaps {reserved} ({what})"


def _overlaps(a: str, b: str) -> bool:
    """A mount at ``a`` would replace or hide ``b`` (normalised absolute paths): it is ``b``
    or one of its parents. A mount below a reserved folder (a data volume at /tmp/data inside
    the scratch volume) hides nothing gisjob needs and is allowed."""
    return a == b or b.startswith(f"{a.rstrip('/')}/")


def _env_violations(path: str, var: Mapping[str, Any], policy: PodPolicy) -> Iterator[str]:
    name = var.get("name")
    if not isinstance(name, str) or not name:
        yield f"{path}.name: an environment variable needs a name"
    elif name.startswith(PROTECTED_ENV_PREFIX) or name in PROTECTED_ENV:
        yield f"{path}.name: {name} is gisjob's own and cannot be set or overridden"
    source = var.get("valueFrom")
    if source is None:
        return
    if not isinstance(source, Mapping):
        yield f"{path}.valueFrom: not an EnvVarSource"
        return
    for kind in sorted(source):
        if kind not in ENV_SOURCES:
            yield (
                f"{path}.valueFrom.{kind}: not allowed (allowed: {', '.join(ENV_SOURCES)}, "
                "secretKeyRef for the storage secret only)"
            )
        elif kind == "secretKeyRef":
            ref = source[kind]
            secret = ref.get("name") if isinstance(ref, Mapping) else None
            refused = _secret_violation(f"{path}.valueFrom.secretKeyRef.name", secret, policy)
            if refused:
                yield refused
