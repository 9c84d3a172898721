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

from .ledger import LedgerError, LedgerRecord, LedgerVersionError
from .logs import get_logger
from .outputs import fsync_dir, temp_name, write_fd

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


class LocalLedgerStore:
    """Records as files in ``<out_dir>/.gisjob/ledger/``."""

    def __init__(self, out_dir: str | os.PathLike[str]) -> None:
        self.out_dir = Path(out_dir)
        self.root = self.out_dir / STATE_DIR / LEDGER_DIR
        self.log = get_logger(ledger=str(self.root))

    @property
    def location(self) -> str:
        return str(self.root)

    def record_path(self, record: LedgerRecord) -> Path:
        """A new, unique file name for ``record``."""
        digest = _checked_part("digest", record.digest)
        tile = _checked_part("tile", record.tile)
        return self.root / digest / f"{tile}.{record.attempt}.{uuid.uuid4().hex}{SUFFIX}"

    def put(self, record: LedgerRecord) -> str:
        final = self.record_path(record)
        tmp = temp_name(final)
        data = (record.dumps() + "\n").encode()
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            write_fd(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644), data)
            os.replace(tmp, final)
            fsync_dir(final.parent)
        except OSError as exc:
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass
            reason = exc.strerror or str(exc)
            raise LedgerError(f"could not record the outcome in {final.parent}: {reason}") from None
        return str(final)

    def records(
        self, digest: str, tile: str | None = None, attempt: int | None = None
    ) -> list[LedgerRecord]:
        folder = self.root / _checked_part("digest", digest)
        if tile is None:
            pattern = f"*{SUFFIX}"
        else:
            pattern = f"{_checked_part('tile', tile)}.{'*' if attempt is None else attempt}.*"
            pattern += SUFFIX
        try:
            if not folder.exists():
                return []
            paths = sorted(p for p in folder.glob(pattern) if not p.name.startswith("."))
        except OSError as exc:
            raise LedgerError(
                f"cannot read the ledger in {folder}: {exc.strerror or exc}"
            ) from None
        records: list[LedgerRecord] = []
        for p in paths:
            named = _RECORD_NAME.fullmatch(p.name)
            if named is None:
                self.log.warning("ledger.skipped", path=str(p), reason="not a record's name")
                continue
            try:
                record = LedgerRecord.loads(p.read_text(encoding="utf-8"))
            except LedgerVersionError as exc:
                raise LedgerVersionError(f"{p}: {exc}") from None
            except (OSError, UnicodeDecodeError, LedgerError) as exc:
                self.log.warning("ledger.skipped", path=str(p), reason=str(exc))
                continue
            if (record.digest, record.tile, str(record.attempt)) != (digest, *named.groups()):
                self.log.warning("ledger.skipped", path=str(p), reason="not where it belongs")
                continue
            records.append(record)
        return records

    def read(self, where: str) -> LedgerRecord:
        path = Path(where)
        if path.parent.parent != self.root or not _RECORD_NAME.fullmatch(path.name):
            raise LedgerError(f"{where} is not a record of the ledger in {self.root}")
        try:
            return LedgerRecord.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise LedgerError(f"cannot read the ledger record {where}: {exc}") from None

    def digests(self) -> list[str]:
        try:
            if not self.root.exists():
                return []
            return sorted(
                p.name for p in self.root.iterdir() if p.is_dir() and _NAME_PART.fullmatch(p.name)
            )
        except OSError as exc:
            raise LedgerError(
                f"cannot read the ledger in {self.root}: {exc.strerror or exc}"
            ) from None

    def output_path(self, record: LedgerRecord) -> Path | None:
        """The record's output as a path inside the output folder (None if it names none or
        points outside)."""
        if not record.output:
            return None
        rel = Path(record.output)
        if rel.is_absolute() or ".." in rel.parts:
            return None
        return self.out_dir / rel

    def output_ok(self, record: LedgerRecord) -> bool:
        path = self.output_path(record)
        if path is None or record.bytes is None or record.mtime_ns is None:
            return False
        try:
            st = path.stat()
        except OSError:
            return False
        return st.st_size == record.bytes and st.st_mtime_ns == record.mtime_ns


def relative_output(out_dir: str | os.PathLike[str], path: str | os.PathLike[str]) -> str:
    """``path`` relative to the output folder (as records and manifests name outputs)."""
    p = Path(path)
    try:
        return p.resolve().relative_to(Path(out_dir).resolve()).as_posix()
    except ValueError:
        return p.as_posix()


def stat_output(
    out_dir: str | os.PathLike[str], path: str | os.PathLike[str]
) -> tuple[str, int, int]:
    """(relative path, size, mtime in ns) of an output file; raises ``OSError``."""
    st = Path(path).stat()
    return relative_output(out_dir, path), st.st_size, st.st_mtime_ns
