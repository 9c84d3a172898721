"""Who owns an output location: one GisJob, recorded the first time it is claimed.

On a cluster many teams share volumes, and a GisJob names its output folder itself; without
an owner a job in one namespace could point ``spec.output.uri`` at another job's folder and
write, supersede or finalize its tiles. The owner record::

    <out>/.gisjob/owner.json  =  {"v": 1, "namespace": ..., "name": ..., "uid": ...,
                                  "claimedAt": "2026-12-04T18:22:54Z"}

is created by the job's planner pod (:func:`claim`, once the plan is built) and is never
rewritten or deleted by gisjob. Its worker and finalizer pods :func:`check` it before they
write anything. The identity comes from ``$GISJOB_OWNER`` = ``<namespace>/<name>/<uid>``,
which the operator sets on every pod of a job (:func:`owner_from_env`).

The same job is the same **namespace and name**: a GisJob deleted and re-created under the
same name (a new uid) owns the outputs of the one before — it resumes and supersedes them,
exactly as re-running a job locally does; the record keeps the first uid and time. A job
with another name, or the same name in another namespace, is refused with an
:class:`OwnershipError` (exit 2: choosing another ``spec.output.uri`` is the fix).

Creation is atomic and exclusive: the record is written whole under a unique temporary name
and hard-linked to ``owner.json`` (``link`` fails if the name exists), so two planners racing
for a location see exactly one winner and nobody ever reads a half-written record. Where the
file system has no hard links, ``O_CREAT | O_EXCL`` on ``owner.json`` decides instead and a
reader gives a record that is still empty a moment to appear. A record that cannot be read
as one (edited, truncated) is never overwritten: it refuses every job until a person looks.

On object storage (``s3://``) the record is one object, written whole in one request; the
claim is check-then-write and read back, so two planners racing within the same moment could
both see their own record (S3's ``If-None-Match`` would close that window; pyarrow's client
cannot send it).

``gisjob run`` neither claims nor checks: on one machine the user owns the file system
(and it ignores an inherited ``$GISJOB_OWNER``).
"""

from __future__ import annotations

import errno
import json
import os
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import GisJobError, InputError

if TYPE_CHECKING:
    from .location import ObjectLocation
from .outputs import fsync_dir, remove_quietly, temp_name, write_fd

OWNER_ENV = "GISJOB_OWNER"
STATE_DIR = ".gisjob"  # the same folder as the ledger's (ledgerstore.STATE_DIR)
OWNER_NAME = "owner.json"
VERSION = 1
# an empty record may be one a racing claimer (without hard links) has not written yet
READ_TRIES = 20
READ_PAUSE = 0.05  # seconds between tries: one second in all

# Kubernetes names: a namespace is a DNS label, a GisJob name a DNS subdomain; uids are UUIDs
_NAMESPACE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
_UID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
# file systems without hard links answer link() with one of these
_NO_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EXDEV}


class OwnershipError(InputError):
    """The output location belongs to another GisJob, or its owner record is unreadable."""


@dataclass(frozen=True)
class Owner:
    """A GisJob's identity: whose pods these are."""

    namespace: str
    name: str
    uid: str

    def __post_init__(self) -> None:
        for what, value, pattern in (
            ("namespace", self.namespace, _NAMESPACE),
            ("name", self.name, _NAME),
            ("uid", self.uid, _UID),
        ):
            if not isinstance(value, str) or not pattern.fullmatch(value):
                raise ValueError(f"not a GisJob {what}: {value!r}")

    @classmethod
    def parse(cls, text: str) -> Owner:
        """``<namespace>/<name>/<uid>`` (``$GISJOB_OWNER``). Raises :class:`ValueError`."""
        parts = text.split("/")
        if len(parts) != 3:
            raise ValueError(f"expected <namespace>/<name>/<uid>, got {text!r}")
        return cls(*parts)

    def same_job(self, other: Owner) -> bool:
        """The same job for its outputs: namespace and name (the uid may differ)."""
        return (self.namespace, self.name) == (other.namespace, other.name)

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class Claim:
    """An owner record: who claimed the location, and when (ISO 8601, UTC)."""

    owner: Owner
    claimed_at: str

    def to_json(self) -> dict[str, object]:
        o = self.owner
        return {
            "v": VERSION,
            "namespace": o.namespace,
            "name": o.name,
            "uid": o.uid,
            "claimedAt": self.claimed_at,
        }


def owner_path(out_dir: str | os.PathLike[str]) -> Path:
    return Path(out_dir) / STATE_DIR / OWNER_NAME


def owner_from_env() -> Owner | None:
    """The identity the operator gave this pod (``$GISJOB_OWNER``); ``None`` when unset or
    empty (``gisjob run``, or a command run by hand). A malformed value is an
    :class:`OwnershipError`: a check must never be skipped because the identity is garbled."""
    text = os.environ.get(OWNER_ENV, "")
    if not text:
        return None
    try:
        return Owner.parse(text)
    except ValueError as exc:
        raise OwnershipError(f"${OWNER_ENV}: {exc}") from None


def _refused(out_dir: str | os.PathLike[str], claim: Claim) -> OwnershipError:
    o = claim.owner
    return OwnershipError(
        f"{out_dir}: the output location belongs to GisJob {o.namespace}/{o.name} "
        f"(uid {o.uid}, since {claim.claimed_at}); choose another spec.output.uri"
    )


def _corrupt(out_dir: str | os.PathLike[str], path: Path, reason: str) -> OwnershipError:
    return OwnershipError(
        f"{out_dir}: the owner record {path} is unreadable ({reason}) and gisjob never "
        "overwrites it; choose another spec.output.uri, or, if the location is this job's, "
        "repair or remove that file"
    )


def _parse(out_dir: str | os.PathLike[str], path: Path, raw: bytes) -> Claim:
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise _corrupt(out_dir, path, f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise _corrupt(out_dir, path, "not a JSON object")
    if data.get("v") != VERSION:
        raise _corrupt(out_dir, path, f"version {data.get('v')!r}, this gisjob reads {VERSION}")
    claimed_at = data.get("claimedAt")
    if not isinstance(claimed_at, str) or not claimed_at:
        raise _corrupt(out_dir, path, "no claimedAt")
    ids = [data.get(key) for key in ("namespace", "name", "uid")]
    if not all(isinstance(v, str) for v in ids):
        raise _corrupt(out_dir, path, "namespace, name and uid must be strings")
    try:
        owner = Owner(*(str(v) for v in ids))
    except ValueError as exc:
        raise _corrupt(out_dir, path, str(exc)) from None
    return Claim(owner, claimed_at)


def _object_location(out_dir: str | os.PathLike[str]) -> ObjectLocation | None:
    from .location import ObjectLocation, open_location

    loc = open_location(str(out_dir))
    return loc if isinstance(loc, ObjectLocation) else None


def _read_object_claim(out_dir: str | os.PathLike[str], loc: ObjectLocation) -> Claim | None:
    key = f"{STATE_DIR}/{OWNER_NAME}"
    raw = loc.read_bytes(key)  # whole or absent: objects are never half-written
    if raw is None:
        return None
    if not raw.strip():
        raise _corrupt(out_dir, Path(loc.describe(key)), "empty")
    return _parse(out_dir, Path(loc.describe(key)), raw)


def read_claim(out_dir: str | os.PathLike[str]) -> Claim | None:
    """The location's owner record, ``None`` when it has none. Raises
    :class:`OwnershipError` for an unreadable record, :class:`GisJobError` (retryable) when
    the file system fails."""
    loc = _object_location(out_dir)
    if loc is not None:
        return _read_object_claim(out_dir, loc)
    path = owner_path(out_dir)
    for tries in range(1, READ_TRIES + 1):
        try:
            raw = path.read_bytes()
        except (FileNotFoundError, NotADirectoryError):  # no record can be there
            return None
        except IsADirectoryError:
            raise _corrupt(out_dir, path, "a folder, not a file") from None
        except OSError as exc:
            raise GisJobError(
                f"{out_dir}: cannot read the owner record {path}: {exc.strerror or exc}"
            ) from None
        if raw.strip() or tries == READ_TRIES:
            break
        time.sleep(READ_PAUSE)  # created, not written yet (a claimer without hard links)
    if not raw.strip():
        raise _corrupt(out_dir, path, "empty")
    return _parse(out_dir, path, raw)


def check(out_dir: str | os.PathLike[str], owner: Owner, *, claimed: bool = False) -> None:
    """Refuse (:class:`OwnershipError`) when the location belongs to another job. A location
    nobody claimed is fine, unless ``claimed``: a worker or finalizer pod runs only after its
    planner claimed the location, so one that finds no record does not see that location (a
    volume missing from ``spec.worker``, or a path in the pod's own file system such as its
    ``/tmp`` scratch) and would write where nobody reads. Claims nothing, writes nothing."""
    claim = read_claim(out_dir)
    if claim is None and claimed:
        raise OwnershipError(
            f"{out_dir}: no owner record, though this job's planner claimed the location: this "
            "pod does not see it (a volume missing from spec.worker.volumeMounts, or a path in "
            "the pod's own file system such as /tmp) and its outputs would be lost"
        )
    if claim is not None and not claim.owner.same_job(owner):
        raise _refused(out_dir, claim)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _write_new(path: Path, data: bytes) -> None:
    write_fd(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644), data)


def _create(path: Path, data: bytes) -> bool:
    """Create ``path`` holding ``data`` unless it exists; ``True`` if this call created it."""
    tmp = temp_name(path)
    try:
        _write_new(tmp, data)
        try:
            os.link(tmp, path)  # atomic, exclusive, and the record is whole when it appears
        except FileExistsError:
            return False
        except OSError as exc:
            if exc.errno not in _NO_LINKS:
                raise
            return _create_exclusive(path, data)
    finally:
        remove_quietly(tmp)
    fsync_dir(path.parent)
    return True


def _create_exclusive(path: Path, data: bytes) -> bool:
    """Without hard links: ``O_CREAT | O_EXCL`` decides, then the record is written."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    try:
        write_fd(fd, data)
    except OSError:
        remove_quietly(path)  # ours, and empty or partial: let the next claim try again
        raise
    fsync_dir(path.parent)
    return True


def claim(out_dir: str | os.PathLike[str], owner: Owner) -> None:
    """Make ``owner`` the location's owner (creating the folder), or confirm it already is
    (same namespace and name); another job's location raises :class:`OwnershipError`.
    Exactly one of several jobs claiming at once wins."""
    existing = read_claim(out_dir)  # claimed before (a replan): nothing to write
    loc = _object_location(out_dir) if existing is None else None
    if existing is None and loc is not None:
        # object stores: check-then-write (pyarrow cannot send If-None-Match); a racing
        # claimer is caught by reading the record back
        record = Claim(owner, _now()).to_json()
        loc.create_bytes(f"{STATE_DIR}/{OWNER_NAME}", json.dumps(record).encode() + b"\n")
        existing = read_claim(out_dir)
        if existing is None:
            raise GisJobError(f"{out_dir}: the owner record vanished while claiming")
    if existing is None:
        path = owner_path(out_dir)
        record = Claim(owner, _now()).to_json()
        data = (json.dumps(record, separators=(",", ":")) + "\n").encode()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if _create(path, data):
                return
        except OSError as exc:
            raise GisJobError(
                f"{out_dir}: cannot claim the output location ({path}): {exc.strerror or exc}"
            ) from None
        existing = read_claim(out_dir)  # another claimer won the race: whose is it?
        if existing is None:
            raise GisJobError(f"{out_dir}: the owner record {path} vanished while claiming")
    if not existing.owner.same_job(owner):
        raise _refused(out_dir, existing)
