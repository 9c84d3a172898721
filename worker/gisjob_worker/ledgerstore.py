"""Where ledger records live: the I/O edge of :mod:`ledger`.

One object per record (object storage has no append), under the output location::

    <out>/.gisjob/ledger/<digest>/<tile>.<attempt>.<unique>.json

Each record is written whole — a unique temporary name, fsync, rename — so a reader sees a
record complete or not at all, and two writers (pods with the same pid on a shared volume,
a runner and its worker) never touch each other's files. A record that cannot be parsed
(torn by a crash on a file system without atomic rename, edited by hand) is skipped with a
warning; a record a newer gisjob wrote stops the reader with a clear error. ``journal.jsonl``
files of earlier versions in ``.gisjob/`` are not read.

:class:`LedgerStore` is the interface the executors and the finalizer use;
:class:`LocalLedgerStore` implements it for a folder (a local disk or a shared volume).
"""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path
from typing import Protocol

from .errors import GisJobError
from .ledger import LedgerError, LedgerRecord, LedgerVersionError
from .location import LocalLocation, Location, Stat, open_location
from .logs import get_logger

STATE_DIR = ".gisjob"
LEDGER_DIR = "ledger"
SUFFIX = ".json"
_NAME_PART = re.compile(r"[A-Za-z0-9_-]+")
_RECORD_NAME = re.compile(r"([A-Za-z0-9_-]+)\.([0-9]+)\.[0-9a-f]{32}\.json")


class LedgerStore(Protocol):
    """The ledger of one output location."""

    @property
    def location(self) -> str:
        """Where the records are (for messages)."""
        ...

    def put(self, record: LedgerRecord) -> str:
        """Write one record whole; returns where it went. Raises :class:`LedgerError`."""
        ...

    def records(
        self, digest: str, tile: str | None = None, attempt: int | None = None
    ) -> list[LedgerRecord]:
        """The records of one plan digest (optionally of one tile, one attempt)."""
        ...

    def read(self, where: str) -> LedgerRecord:
        """The record :meth:`put` wrote at ``where``. Raises :class:`LedgerError`."""
        ...

    def digests(self) -> list[str]:
        """Every plan digest with records here."""
        ...

    def output_ok(self, record: LedgerRecord) -> bool:
        """The output the record names is still the one it describes."""
        ...


def list_all(store: LedgerStore) -> list[LedgerRecord]:
    """Every record of every digest in the store."""
    return [r for d in store.digests() for r in store.records(d)]


def _checked_part(what: str, value: str) -> str:
    if not _NAME_PART.fullmatch(value):
        raise LedgerError(f"ledger: {what} {value!r} cannot name a record")
    return value


class LocationLedgerStore:
    """Records as files or objects under ``.gisjob/ledger/`` of an output location."""

    def __init__(self, location: Location) -> None:
        self.loc = location
        self.log = get_logger(ledger=location.describe(f"{STATE_DIR}/{LEDGER_DIR}"))

    @property
    def location(self) -> str:
        return self.loc.describe(f"{STATE_DIR}/{LEDGER_DIR}")

    def record_key(self, record: LedgerRecord) -> str:
        """A new, unique key for ``record``."""
        digest = _checked_part("digest", record.digest)
        tile = _checked_part("tile", record.tile)
        return (
            f"{STATE_DIR}/{LEDGER_DIR}/{digest}/{tile}.{record.attempt}.{uuid.uuid4().hex}{SUFFIX}"
        )

    def put(self, record: LedgerRecord) -> str:
        key = self.record_key(record)
        try:
            self.loc.write_bytes(key, (record.dumps() + "\n").encode())
        except (OSError, GisJobError) as exc:
            reason = getattr(exc, "strerror", None) or " ".join(str(exc).split())
            folder = self.loc.describe(key.rsplit("/", 1)[0])
            raise LedgerError(f"could not record the outcome in {folder}: {reason}") from None
        return self.loc.describe(key)

    def records(
        self, digest: str, tile: str | None = None, attempt: int | None = None
    ) -> list[LedgerRecord]:
        folder = f"{STATE_DIR}/{LEDGER_DIR}/{_checked_part('digest', digest)}"
        start = "" if tile is None else f"{_checked_part('tile', tile)}."
        if tile is not None and attempt is not None:
            start += f"{attempt}."
        try:
            keys = self.loc.list(folder)
        except (OSError, GisJobError) as exc:
            reason = getattr(exc, "strerror", None) or " ".join(str(exc).split())
            raise LedgerError(
                f"cannot read the ledger in {self.loc.describe(folder)}: {reason}"
            ) from None
        records: list[LedgerRecord] = []
        for key in keys:
            name = key[len(folder) + 1 :]
            if "/" in name or name.startswith(".") or not name.startswith(start):
                continue
            if not name.endswith(SUFFIX):
                continue
            where = self.loc.describe(key)
            named = _RECORD_NAME.fullmatch(name)
            if named is None:
                self.log.warning("ledger.skipped", path=where, reason="not a record's name")
                continue
            try:
                raw = self.loc.read_bytes(key)
                if raw is None:
                    continue  # removed since the listing
                record = LedgerRecord.loads(raw.decode("utf-8"))
            except LedgerVersionError as exc:
                raise LedgerVersionError(f"{where}: {exc}") from None
            except (OSError, UnicodeDecodeError, LedgerError) as exc:
                self.log.warning("ledger.skipped", path=where, reason=str(exc))
                continue
            if (record.digest, record.tile, str(record.attempt)) != (digest, *named.groups()):
                self.log.warning("ledger.skipped", path=where, reason="not where it belongs")
                continue
            records.append(record)
        return records

    def read(self, where: str) -> LedgerRecord:
        key = self.loc.key_of(where)
        parts = (key or "").split("/")
        if (
            key is None
            or len(parts) != 4
            or "/".join(parts[:2]) != f"{STATE_DIR}/{LEDGER_DIR}"
            or not _RECORD_NAME.fullmatch(parts[-1])
        ):
            raise LedgerError(f"{where} is not a record of the ledger in {self.location}")
        try:
            raw = self.loc.read_bytes(key)
            if raw is None:
                raise FileNotFoundError("no such record")
            return LedgerRecord.loads(raw.decode("utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise LedgerError(f"cannot read the ledger record {where}: {exc}") from None

    def digests(self) -> list[str]:
        folder = f"{STATE_DIR}/{LEDGER_DIR}"
        try:
            keys = self.loc.list(folder)
        except (OSError, GisJobError) as exc:
            reason = getattr(exc, "strerror", None) or " ".join(str(exc).split())
            raise LedgerError(f"cannot read the ledger in {self.location}: {reason}") from None
        found = {k[len(folder) + 1 :].split("/", 1)[0] for k in keys if k.count("/") == 3}
        return sorted(d for d in found if _NAME_PART.fullmatch(d))

    def output_key(self, record: LedgerRecord) -> str | None:
        """The record's output as a key inside the location (None if it names none or
        points outside)."""
        if not record.output:
            return None
        parts = record.output.split("/")
        if record.output.startswith("/") or any(p in ("", ".", "..") for p in parts):
            return None
        return record.output

    def output_ok(self, record: LedgerRecord) -> bool:
        key = self.output_key(record)
        if key is None or record.bytes is None:
            return False
        if record.mtime_ns is None and record.etag is None:
            return False
        try:
            st = self.loc.stat(key)
        except (OSError, GisJobError):
            return False
        if st is None or st.size != record.bytes:
            return False
        if record.etag is not None:
            return st.etag == record.etag
        return st.mtime_ns == record.mtime_ns


class LocalLedgerStore(LocationLedgerStore):
    """Records as files in ``<out_dir>/.gisjob/ledger/``."""

    def __init__(self, out_dir: str | os.PathLike[str]) -> None:
        super().__init__(LocalLocation(out_dir))
        self.out_dir = Path(out_dir)
        self.root = self.out_dir / STATE_DIR / LEDGER_DIR


def output_identity(out_uri: str, where: str) -> tuple[str, Stat]:
    """(key inside the output location, size and mtime or ETag) of an output a worker
    reported at ``where``; raises ``OSError`` when it is not there (or not inside)."""
    loc = open_location(out_uri)
    key = loc.key_of(where)
    if key is None:
        raise OSError(f"{where} is not inside the output location {out_uri}")
    try:
        st = loc.stat(key)
    except GisJobError as exc:
        raise OSError(str(exc)) from None
    if st is None:
        raise FileNotFoundError(f"{where}: no such output")
    return key, st
