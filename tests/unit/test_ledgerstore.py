"""The local ledger store: one file per record, written whole, read back tolerant of torn
files and strict about records from a newer gisjob."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from gisjob_worker import outputs
from gisjob_worker.ledger import LedgerError, LedgerRecord, LedgerVersionError
from gisjob_worker.ledgerstore import LocalLedgerStore, list_all, output_identity

DIGEST = "d1g3st0000000001"


def rec(tile: str, attempt: int = 0, digest: str = DIGEST, **kw: object) -> LedgerRecord:
    base: dict[str, object] = {
        "job": "job",
        "digest": digest,
        "tile": tile,
        "attempt": attempt,
        "outcome": "succeeded",
        "writer": "worker",
        "exit_code": 0,
    }
    base.update(kw)
    return LedgerRecord(**base)  # type: ignore[arg-type]


def test_put_writes_one_file_per_record_under_digest_tile_attempt_unique(tmp_path: Path) -> None:
    store = LocalLedgerStore(tmp_path)
    a = store.put(rec("r0000c0000"))
    b = store.put(rec("r0000c0000"))  # the same attempt twice: two files, none replaced
    assert a != b
    folder = tmp_path / ".gisjob" / "ledger" / DIGEST
    names = sorted(p.name for p in folder.iterdir())
    assert len(names) == 2
    assert all(re.fullmatch(r"r0000c0000\.0\.[0-9a-f]{32}\.json", n) for n in names)
    assert store.records(DIGEST) == [rec("r0000c0000")] * 2
    assert store.location == str(tmp_path / ".gisjob" / "ledger")


def test_records_by_tile_and_attempt_do_not_match_sub_tiles(tmp_path: Path) -> None:
    store = LocalLedgerStore(tmp_path)
    for r in (rec("r0000c0000"), rec("r0000c0000", 1), rec("r0000c0000-q1"), rec("r0000c0001")):
        store.put(r)
    assert {(r.tile, r.attempt) for r in store.records(DIGEST, "r0000c0000")} == {
        ("r0000c0000", 0),
        ("r0000c0000", 1),
    }
    assert [r.attempt for r in store.records(DIGEST, "r0000c0000", 1)] == [1]
    assert [r.tile for r in store.records(DIGEST, "r0000c0000-q1")] == ["r0000c0000-q1"]
    assert store.records("0ther0000000000d") == []


def test_digests_and_list_all(tmp_path: Path) -> None:
    store = LocalLedgerStore(tmp_path)
    assert store.digests() == [] and list_all(store) == []
    store.put(rec("r0000c0000"))
    store.put(rec("r0000c0000", digest="aaaa000000000000"))
    assert store.digests() == ["aaaa000000000000", DIGEST]
    assert len(list_all(store)) == 2


def test_a_torn_record_is_skipped_with_a_warning(tmp_path: Path) -> None:
    store = LocalLedgerStore(tmp_path)
    store.put(rec("r0000c0000"))
    folder = tmp_path / ".gisjob" / "ledger" / DIGEST
    torn = folder / f"r0000c0001.0.{'0' * 32}.json"
    torn.write_text(rec("r0000c0001").dumps()[:40])  # cut mid-record
    empty = folder / f"r0000c0002.0.{'1' * 32}.json"
    empty.write_bytes(b"")
    binary = folder / f"r0000c0003.0.{'2' * 32}.json"
    binary.write_bytes(b"\xff\xfe\x00")
    misplaced = folder / f"r0000c0004.0.{'3' * 32}.json"
    misplaced.write_text(rec("r0000c0009").dumps())
    with capture_logs() as logs:
        got = store.records(DIGEST)
    assert got == [rec("r0000c0000")]
    skipped = {e["path"] for e in logs if e["event"] == "ledger.skipped"}
    assert skipped == {str(torn), str(empty), str(binary), str(misplaced)}
    assert all(e["log_level"] == "warning" for e in logs)


def test_a_record_from_a_newer_gisjob_stops_the_reader(tmp_path: Path) -> None:
    store = LocalLedgerStore(tmp_path)
    folder = tmp_path / ".gisjob" / "ledger" / DIGEST
    folder.mkdir(parents=True)
    path = folder / f"r0000c0000.0.{'0' * 32}.json"
    path.write_text('{"v": 7, "job": "job", "digest": "x"}')
    with pytest.raises(LedgerVersionError, match=r"version 7 .*newer gisjob") as info:
        store.records(DIGEST)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_temporaries_and_foreign_files_are_not_records(tmp_path: Path) -> None:
    store = LocalLedgerStore(tmp_path)
    store.put(rec("r0000c0000"))
    folder = tmp_path / ".gisjob" / "ledger" / DIGEST
    (folder / f".r0000c0000.0.{'a' * 32}.json.tmp-{'b' * 32}").write_text("{")
    (folder / "README").write_text("hello")
    (tmp_path / ".gisjob" / "ledger" / "not a digest").mkdir()
    assert store.records(DIGEST) == [rec("r0000c0000")]
    assert store.digests() == [DIGEST]


def test_put_leaves_no_temporary_behind(tmp_path: Path) -> None:
    store = LocalLedgerStore(tmp_path)
    for k in range(5):
        store.put(rec("r0000c0000", k))
    names = os.listdir(tmp_path / ".gisjob" / "ledger" / DIGEST)
    assert len(names) == 5 and not [n for n in names if n.startswith(".")]


def test_a_failed_put_is_an_error_naming_the_folder_and_reason(tmp_path: Path) -> None:
    (tmp_path / ".gisjob").mkdir()
    (tmp_path / ".gisjob" / "ledger").write_text("a file where the folder should be")
    store = LocalLedgerStore(tmp_path)
    with pytest.raises(LedgerError) as info:
        store.put(rec("r0000c0000"))
    message = str(info.value)
    assert message.startswith(f"could not record the outcome in {tmp_path}/.gisjob/ledger/")
    assert "Not a directory" in message
    with pytest.raises(LedgerError, match="cannot read the ledger"):
        store.digests()


def test_names_that_are_not_ids_cannot_become_paths(tmp_path: Path) -> None:
    store = LocalLedgerStore(tmp_path)
    with pytest.raises(LedgerError, match="cannot name a record"):
        store.put(rec("../../etc/passwd"))
    with pytest.raises(LedgerError, match="cannot name a record"):
        store.records("../x")


def test_output_ok_checks_size_and_mtime(tmp_path: Path) -> None:
    store = LocalLedgerStore(tmp_path)
    out = tmp_path / "tiles" / "r0000c0000.tif"
    out.parent.mkdir()
    out.write_bytes(b"x" * 10)
    rel, st = output_identity(str(tmp_path), str(out))
    size, mtime = st.size, st.mtime_ns
    assert (rel, size) == ("tiles/r0000c0000.tif", 10)
    assert mtime is not None
    good = rec("r0000c0000", output=rel, bytes=size, mtime_ns=mtime)
    assert store.output_ok(good)
    assert not store.output_ok(rec("r0000c0000", output=rel, bytes=11, mtime_ns=mtime))
    assert not store.output_ok(rec("r0000c0000", output=rel, bytes=10, mtime_ns=mtime + 1))
    assert not store.output_ok(rec("r0000c0000", output=rel))  # nothing to compare
    assert not store.output_ok(rec("r0000c0000", output="../x", bytes=10, mtime_ns=mtime))
    os.utime(out, ns=(mtime, mtime + 5))
    assert not store.output_ok(good)  # rewritten since it was recorded


def test_temp_names_are_unique_and_only_they_are_stale(tmp_path: Path) -> None:
    final = tmp_path / "tiles" / "r0000c0000.tif"
    final.parent.mkdir()
    a, b = outputs.temp_path(final), outputs.temp_path(final)
    assert a != b and a.suffix == ".tif" and a.name.startswith(".r0000c0000.tmp-")
    work = outputs.temp_path(final, "-work")
    meta = outputs.temp_name(tmp_path / "manifest.json")
    for p in (a, work, final.with_name(a.name + ".aux.xml")):
        p.write_text("x")
    user = [".r0000c0000.tmp-mine.tif", ".hidden", "notes.tmp-1234.txt", "r0000c0000.tif"]
    for name in user:
        (final.parent / name).write_text("keep")
    assert outputs.is_temp_name(meta.name)
    stale = {p.name for p in outputs.stale_temporaries(final.parent)}
    assert stale == {a.name, work.name, a.name + ".aux.xml"}
    with pytest.raises(ValueError):
        outputs.temp_path(final, "/../x")


def test_read_gets_the_record_put_wrote_and_nothing_else(tmp_path: Path) -> None:
    store = LocalLedgerStore(tmp_path)
    where = store.put(rec("r0000c0000", 2))
    assert store.read(where) == rec("r0000c0000", 2)
    elsewhere = tmp_path / f"r0000c0000.2.{'0' * 32}.json"
    elsewhere.write_text(rec("r0000c0000", 2).dumps())
    with pytest.raises(LedgerError, match="is not a record of the ledger"):
        store.read(str(elsewhere))
    Path(where).unlink()
    with pytest.raises(LedgerError, match="cannot read the ledger record"):
        store.read(where)
