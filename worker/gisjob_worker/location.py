"""An output location — a local folder or an object-store prefix — as one small interface.

Keys are POSIX paths relative to the location (``tiles/r0c0.tif``, ``.gisjob/owner.json``).
Everything is written whole: a local file under a unique temporary name, fsynced and renamed;
an object in one request (small ones) or, for tile outputs, uploaded under a hidden
temporary key, checked, and copied to its final key server-side (``CopyObject``, atomic), so
a writer killed or failing mid-upload leaves nothing under the final key — an interrupted
multipart upload is never completed, and a failed copy loop (whose stream pyarrow would
complete on close) only ever reached the temporary key.

A worker builds each output as a local file first (GDAL cannot random-write an object):
:meth:`Location.scratch` says where, :meth:`Location.publish` makes it the key's content.
For a local folder that is a hidden sibling renamed into place; for object storage it is
local scratch disk (``$GISJOB_SCRATCH``, else the temporary folder), sized in the plan.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from . import outputs, storage
from .errors import GisJobError, InputError
from .storage import ObjectUri

READ_RETRY_PAUSES = (0.5, 1.0, 2.0, 4.0)  # seconds
UPLOAD_BLOCK = 8 * 1024**2  # bytes copied per write while uploading a file
TMP_DIR = ".gisjob/tmp"  # where object uploads wait before their server-side copy
T = TypeVar("T")


@dataclass(frozen=True)
class Stat:
    """What identifies one version of an output: its size, and its local mtime or ETag."""

    size: int
    mtime_ns: int | None = None
    etag: str | None = None


class StorageError(GisJobError):
    """The store failed (retryable: network, throttling, a restart)."""


class Location(Protocol):
    uri: str  # as the job names it
    remote: bool

    def describe(self, key: str = "") -> str:
        """The key as a user would name it (for messages)."""
        ...

    def gdal_path(self, key: str) -> str:
        """A path GDAL opens the key with."""
        ...

    def key_of(self, where: str) -> str | None:
        """The key of a path or URI :meth:`describe` gave (None if not inside)."""
        ...

    def stat(self, key: str) -> Stat | None: ...

    def read_bytes(self, key: str) -> bytes | None:
        """The object's content, None if there is none."""
        ...

    def write_bytes(self, key: str, data: bytes) -> None:
        """Write whole (replacing any)."""
        ...

    def create_bytes(self, key: str, data: bytes) -> bool:
        """Write whole unless the key exists; ``True`` if this call created it."""
        ...

    def list(self, folder: str) -> list[str]:
        """Keys under ``folder`` (recursive), relative to the location, sorted."""
        ...

    def delete(self, key: str) -> None:
        """Remove the key if it is there."""
        ...

    def scratch(self, key: str) -> Path:
        """The local path to build the key's content at before :meth:`publish`."""
        ...

    def publish(self, local: Path, key: str) -> Stat:
        """Make the finished local file ``local`` (from :meth:`scratch`) the key's content."""
        ...

    def close(self) -> None:
        """Remove local scratch."""
        ...


def _check_key(key: str) -> str:
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"not a key inside the output location: {key!r}")
    return key


class LocalLocation:
    """A folder on a local or mounted file system."""

    remote = False

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.uri = str(root)

    def path(self, key: str) -> Path:
        return self.root / _check_key(key)

    def describe(self, key: str = "") -> str:
        return str(self.path(key)) if key else str(self.root)

    def gdal_path(self, key: str) -> str:
        return str(self.path(key))

    def key_of(self, where: str) -> str | None:
        try:
            rel = Path(where).resolve().relative_to(self.root.resolve()).as_posix()
        except ValueError:
            return None
        return None if rel == "." else rel

    def stat(self, key: str) -> Stat | None:
        try:
            st = self.path(key).stat()
        except OSError:
            return None
        return Stat(st.st_size, mtime_ns=st.st_mtime_ns)

    def read_bytes(self, key: str) -> bytes | None:
        try:
            return self.path(key).read_bytes()
        except FileNotFoundError:
            return None

    def write_bytes(self, key: str, data: bytes) -> None:
        final = self.path(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = outputs.temp_name(final)
        try:
            outputs.write_fd(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644), data)
            os.replace(tmp, final)
            outputs.fsync_dir(final.parent)
        finally:
            outputs.remove_quietly(tmp)

    def create_bytes(self, key: str, data: bytes) -> bool:
        final = self.path(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = outputs.temp_name(final)
        try:
            outputs.write_fd(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644), data)
            try:
                os.link(tmp, final)  # atomic and exclusive; whole when it appears
            except FileExistsError:
                return False
        finally:
            outputs.remove_quietly(tmp)
        outputs.fsync_dir(final.parent)
        return True

    def list(self, folder: str) -> list[str]:
        base = self.path(folder)
        try:
            os.stat(base)
        except (FileNotFoundError, NotADirectoryError):  # nothing can be listed there
            return []
        if not base.is_dir():  # a file where the folder should be: an error, not "empty"
            raise NotADirectoryError(20, "Not a directory", str(base))
        keys: list[str] = []
        for dirpath, _, names in os.walk(base):
            rel = Path(dirpath).relative_to(self.root).as_posix()
            keys.extend(f"{rel}/{n}" for n in names)
        return sorted(keys)

    def delete(self, key: str) -> None:
        outputs.remove_quietly(self.path(key))

    def scratch(self, key: str) -> Path:
        final = self.path(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        return final  # writers use hidden temporaries beside it and rename

    def publish(self, local: Path, key: str) -> Stat:
        final = self.path(key)
        if local != final:
            outputs.commit(local, final)
        st = final.stat()
        return Stat(st.st_size, mtime_ns=st.st_mtime_ns)

    def close(self) -> None:
        pass


def _is_missing(exc: OSError) -> bool:
    return isinstance(exc, FileNotFoundError) or "NoSuchKey" in str(exc)


def _retrying(call: Callable[[], T]) -> T:
    """``call`` again after throttling, a 5xx or a dropped connection that pyarrow's own
    retries gave up on (it does not retry an error answer to a read shorter than the
    error's body: small objects under ``SlowDown``); missing objects and permanent failures
    (credentials, no bucket) are not retried. Only for idempotent requests."""
    for pause in (*READ_RETRY_PAUSES, None):
        try:
            return call()
        except OSError as exc:
            msg = str(exc)
            if pause is None or _is_missing(exc) or storage.classify_failure(msg) is not None:
                raise
            time.sleep(pause)
    raise AssertionError("unreachable")


class ObjectLocation:
    """A prefix in an S3 (or S3-compatible) bucket, through pyarrow's S3 client."""

    remote = True

    def __init__(self, obj: ObjectUri, fs: Any = None, scratch_root: str | None = None) -> None:
        if obj.scheme != "s3":
            raise InputError(
                f"{obj}: outputs to {obj.scheme}:// are not supported (s3:// and local "
                "folders are; gs:// and az:// inputs are read through GDAL)"
            )
        self.obj = obj
        self.uri = str(obj)
        self.fs = fs if fs is not None else s3_filesystem()
        self._scratch_root = scratch_root
        self._scratch: Path | None = None

    def _full(self, key: str) -> str:
        return f"{self.obj.bucket}/{self.obj.join(_check_key(key)).key}"

    def describe(self, key: str = "") -> str:
        return str(self.obj.join(key)) if key else self.uri

    def gdal_path(self, key: str) -> str:
        return self.obj.join(_check_key(key)).gdal

    def key_of(self, where: str) -> str | None:
        try:
            obj = storage.parse_object_uri(where)
        except storage.StorageUriError:
            return None
        if obj is None or (obj.scheme, obj.bucket) != (self.obj.scheme, self.obj.bucket):
            return None
        if not self.obj.key:
            return obj.key or None
        head = f"{self.obj.key}/"
        return obj.key[len(head) :] if obj.key.startswith(head) else None

    def _failed(self, what: str, key: str, exc: OSError) -> GisJobError:
        where = self.describe(key)
        msg = storage.redact(" ".join(str(exc).split()))
        permanent = storage.permanent_failure(where, msg)
        if permanent is not None:
            return InputError(permanent)
        return StorageError(f"{where}: cannot {what} ({msg})")

    def stat(self, key: str) -> Stat | None:
        def head() -> tuple[Any, int]:
            with self.fs.open_input_file(self._full(key)) as fh:
                return fh.metadata(), fh.size()

        try:
            meta, size = _retrying(head)
        except OSError as exc:
            if _is_missing(exc):
                return None
            raise self._failed("read", key, exc) from None
        etag = meta.get(b"ETag", meta.get("ETag"))
        if isinstance(etag, bytes):
            etag = etag.decode()
        return Stat(int(size), etag=etag.strip('"') if etag else None)

    def read_bytes(self, key: str) -> bytes | None:
        def get() -> bytes:
            with self.fs.open_input_stream(self._full(key)) as fh:
                return bytes(fh.readall())

        try:
            return _retrying(get)
        except OSError as exc:
            if _is_missing(exc):
                return None
            raise self._failed("read", key, exc) from None

    def write_bytes(self, key: str, data: bytes) -> None:
        # one write and a close: the object appears whole or, if the request fails, not at all
        try:
            with self.fs.open_output_stream(self._full(key)) as fh:
                fh.write(data)
        except OSError as exc:
            raise self._failed("write", key, exc) from None

    def create_bytes(self, key: str, data: bytes) -> bool:
        # S3 has conditional writes (If-None-Match) but pyarrow cannot send them: check,
        # write, and let the caller read back who won
        if self.stat(key) is not None:
            return False
        self.write_bytes(key, data)
        return True

    def list(self, folder: str) -> list[str]:
        import pyarrow.fs as pafs

        base = self._full(folder)
        prefix = f"{self.obj.bucket}/{self.obj.key}/" if self.obj.key else f"{self.obj.bucket}/"
        try:
            infos = _retrying(
                lambda: self.fs.get_file_info(pafs.FileSelector(base, recursive=True))
            )
        except OSError as exc:
            if _is_missing(exc):
                return []
            raise self._failed("list", folder, exc) from None
        return sorted(
            i.path[len(prefix) :]
            for i in infos
            if i.type == pafs.FileType.File and i.path.startswith(prefix)
        )

    def delete(self, key: str) -> None:
        try:
            _retrying(lambda: self.fs.delete_file(self._full(key)))
        except OSError as exc:
            if not _is_missing(exc):
                raise self._failed("delete", key, exc) from None

    def scratch(self, key: str) -> Path:
        if self._scratch is None:
            root = self._scratch_root or os.environ.get("GISJOB_SCRATCH") or None
            if root:
                Path(root).mkdir(parents=True, exist_ok=True)
            self._scratch = Path(tempfile.mkdtemp(prefix="gisjob-", dir=root))
        path = self._scratch / _check_key(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def publish(self, local: Path, key: str) -> Stat:
        size = local.stat().st_size
        tmp_key = f"{TMP_DIR}/{uuid.uuid4().hex}-{Path(key).name}"
        try:
            with open(local, "rb") as src, self.fs.open_output_stream(self._full(tmp_key)) as dst:
                while block := src.read(UPLOAD_BLOCK):
                    dst.write(block)
            uploaded = self.stat(tmp_key)
            if uploaded is None or uploaded.size != size:
                got = "nothing" if uploaded is None else f"{uploaded.size} bytes"
                raise StorageError(f"{self.describe(key)}: uploaded {got} of {size} bytes")
            self.fs.move(self._full(tmp_key), self._full(key))  # CopyObject, then delete
        except OSError as exc:
            with contextlib.suppress(OSError, GisJobError):
                self.delete(tmp_key)
            raise self._failed("upload", key, exc) from None
        except BaseException:
            with contextlib.suppress(OSError, GisJobError):
                self.delete(tmp_key)
            raise
        outputs.remove_quietly(local)
        stat = self.stat(key)
        if stat is None:
            raise StorageError(f"{self.describe(key)}: the object vanished after upload")
        return stat

    def close(self) -> None:
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None


def s3_filesystem(env: dict[str, str] | None = None) -> Any:
    """pyarrow's S3 client configured from the AWS environment (:func:`storage.arrow_s3_options`),
    retrying throttling, 5xx and dropped connections with backoff."""
    import pyarrow.fs as pafs

    opts = storage.arrow_s3_options(os.environ if env is None else env)
    return pafs.S3FileSystem(
        **opts,
        retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=8),
        connect_timeout=10,
        request_timeout=60,
        background_writes=False,  # one part buffered at a time: bounded memory
    )


def open_location(uri: str) -> Location:
    """The output location ``uri`` names (a folder, ``s3://bucket/prefix`` or
    ``/vsis3/bucket/prefix``). Raises :class:`InputError` for other schemes."""
    try:
        obj = storage.parse_object_uri(uri)
    except storage.StorageUriError as exc:
        raise InputError(f"spec.output.uri: {exc}") from None
    if obj is not None:
        return ObjectLocation(obj)
    if not storage.is_local(uri):
        raise InputError(f"spec.output.uri: {uri}: gisjob writes to local folders and s3://")
    return LocalLocation(uri)
