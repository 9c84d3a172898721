"""The tile ledger (pure): the record schema, tile states from records, complete tiles,
manifest entries (planned tiles, their splits, outcomes) and which outputs are owned or
superseded. Outputs are checked through an injected ``output_ok``: no files here."""

from __future__ import annotations

import json
import signal
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from planbuilders import raster_file, raster_sizing, vector_file, vector_sizing

from gisjob_worker import ledger, policy
from gisjob_worker.ledger import (
    LEDGER_VERSION,
    LedgerError,
    LedgerRecord,
    LedgerVersionError,
    LedgerView,
    Resolution,
    TileEntry,
    complete_tile_indexes,
    manifest_entries,
    operator_resolver,
    owned_outputs,
    policy_resolver,
    superseded_outputs,
)
from gisjob_worker.plan import Plan, Tile, make_raster_tile, make_vector_tile
from gisjob_worker.supervisor import Kill, classify_exit, read_vmstat_oom_kills
from gisjob_worker.tiles import feature_ranges, raster_grid

DIGEST = "d1g3st0000000001"


def raster_plan(digest: str = DIGEST) -> Plan:
    """2048² pixels, 512² blocks, four 1024² tiles (each splits into four quadrants)."""
    sizing = raster_sizing()
    f = raster_file(2048, block=512)
    tiles = tuple(
        make_raster_tile(sizing, f, f"r{r:04d}c{c:04d}", w)
        for r, c, w in raster_grid(2048, 2048, 1024, 512, 512)
    )
    return Plan("job", "raster", "scale", "COG", digest, sizing, (f,), tiles)


def vector_plan() -> Plan:
    sizing = vector_sizing()
    f = vector_file(1000)
    tiles = tuple(
        make_vector_tile(sizing, f, f"f{k:06d}", rng)
        for k, rng in enumerate(feature_ranges(f.first_fid, 1000, 500))
    )
    return Plan("job", "vector", "filter", "GeoParquet", DIGEST, sizing, (f,), tiles)


RASTER = raster_plan()
T0, T1, T2, T3 = (t.id for t in RASTER.tiles)


def rec(tile: str, attempt: int = 0, code: int = 0, **kw: Any) -> LedgerRecord:
    """A record as a worker writes it: a success names its output (10 bytes, mtime 1)."""
    outcome = {0: "succeeded", 2: "input", 3: "memory"}.get(code, "error")
    base: dict[str, Any] = {
        "job": "job",
        "digest": DIGEST,
        "tile": tile,
        "attempt": attempt,
        "outcome": outcome,
        "writer": "worker",
        "exit_code": code,
        "memory": 100,
        "peak_rss_bytes": 7,
    }
    if code == 0:
        base.update(output=f"tiles/{tile}.tif", bytes=10, mtime_ns=1)
    else:
        base["error"] = f"exit {code}"
    base.update(kw)
    return LedgerRecord(**base)


def on_disk(*present: str) -> Any:
    """An output check: these outputs exist as recorded (10 bytes, mtime 1)."""
    files = set(present)
    return lambda r: r.output in files and r.bytes == 10 and r.mtime_ns == 1


def all_there(r: LedgerRecord) -> bool:
    return True


def view_of(*records: LedgerRecord, ok: Any = all_there, digest: str = DIGEST) -> LedgerView:
    return LedgerView.of(digest, records, ok)


# ------------------------------------------------------------------------------ records


def test_record_round_trip_through_its_wire_form() -> None:
    r = rec(
        T0,
        attempt=2,
        strategy="grow",
        chunk_scale=0.5,
        cgroup_peak_bytes=9,
        chunks=4,
        seconds=1.25,
        pod="job-r0000c0000-2",
        recorded_at=1_700_000_000.5,
    )
    wire = r.to_json()
    assert wire["v"] == LEDGER_VERSION == 1
    assert wire["chunkScale"] == 0.5 and wire["exitCode"] == 0 and wire["mtimeNs"] == 1
    assert "etag" not in wire  # None is left out
    text = r.dumps()
    assert "\n" not in text
    assert LedgerRecord.loads(text) == r
    assert LedgerRecord.from_json(json.loads(text)) == r


def test_unknown_keys_are_ignored() -> None:
    wire = {**rec(T0).to_json(), "futureField": {"x": 1}, "etag": '"abc"'}
    assert LedgerRecord.from_json(wire) == replace(rec(T0), etag='"abc"')


def test_a_newer_major_version_is_rejected_with_one_clear_line() -> None:
    wire = {**rec(T0).to_json(), "v": 2}
    with pytest.raises(LedgerVersionError) as info:
        LedgerRecord.from_json(wire)
    message = str(info.value)
    assert "\n" not in message
    assert "version 2" in message and "newer gisjob" in message and "upgrade" in message


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"v": None}, "version"),
        ({"v": "1"}, "version"),
        ({"tile": None}, "without tile"),
        ({"attempt": "0"}, "'attempt'"),
        ({"attempt": True}, "'attempt'"),
        ({"oomKilled": 1}, "'oom_killed'"),
        ({"seconds": float("nan")}, "'seconds'"),
        ({"writer": "someone"}, "unknown writer"),
        ({"outcome": "maybe"}, "unknown outcome"),
    ],
)
def test_malformed_records_are_errors(change: dict[str, Any], match: str) -> None:
    wire = {**rec(T0).to_json(), **change}
    wire = {k: v for k, v in wire.items() if v is not None}
    with pytest.raises(LedgerError, match=match):
        LedgerRecord.from_json(wire)


def test_not_json_and_not_an_object_are_errors() -> None:
    with pytest.raises(LedgerError, match="not JSON"):
        LedgerRecord.loads('{"v": 1, "job"')
    with pytest.raises(LedgerError, match="JSON object"):
        LedgerRecord.loads("[1]")


def test_record_as_policy_attempt() -> None:
    r = rec(T0, attempt=3, code=137, strategy="disrupted", disrupted=True, chunk_scale=0.5)
    a = r.to_attempt()
    assert a == policy.Attempt(T0, 3, 100, 0.5, "disrupted", 137, False, True)
    assert a.failure == "disruption"
    assert rec(T0, strategy="somethingNew").to_attempt().strategy == "retry"


# ------------------------------------------------------------------------ tile states


def test_history_is_ordered_by_attempt_and_new_attempts_come_after() -> None:
    view = view_of(rec(T0, 1, code=3), rec(T0, 0, code=1), rec(T0, 2), rec(T1, 0, code=1))
    assert [r.attempt for r in view.records(T0)] == [0, 1, 2]
    assert [a.exit_code for a in view.attempts(T0)] == [1, 3, 0]
    assert view.next_attempt(T0) == 3 and view.next_attempt(T2) == 0
    assert view.last(T1) is not None and view.last(T2) is None


def test_records_of_another_digest_are_not_in_the_view() -> None:
    view = view_of(rec(T0), replace(rec(T1), digest="other"))
    assert view.tiles() == [T0]


def test_complete_needs_a_success_whose_output_is_still_the_recorded_one() -> None:
    ok = on_disk(f"tiles/{T0}.tif")
    view = view_of(rec(T0), rec(T1), rec(T2, code=1), ok=ok)
    assert view.complete(T0) == rec(T0)
    assert view.complete(T1) is None  # its output is gone or changed
    assert view.complete(T2) is None


def test_an_earlier_success_still_on_disk_completes_the_tile() -> None:
    """Recorded, then killed before it could report: the relaunch failed, but the first
    attempt's output is intact and recorded."""
    view = view_of(rec(T0, 0), rec(T0, 1, code=137, disrupted=True), rec(T0, 2, code=1))
    assert view.complete(T0) == rec(T0, 0)


def test_complete_tile_indexes_follow_splits_to_every_leaf() -> None:
    quads = [f"{T0}-q{k}" for k in range(4)]
    records = [rec(T0, code=3), *(rec(q) for q in quads), rec(T1)]
    records += [rec(T2, code=3), rec(f"{T2}-q0"), rec(f"{T2}-q1")]  # half its leaves
    assert complete_tile_indexes(RASTER, records, all_there) == {0, 1}
    missing_leaf = on_disk(*(f"tiles/{q}.tif" for q in quads[:3]), f"tiles/{T1}.tif")
    assert complete_tile_indexes(RASTER, records, missing_leaf) == {1}


def test_complete_tile_indexes_of_nested_vector_splits() -> None:
    plan = vector_plan()
    f0, f1 = (t.id for t in plan.tiles)
    records = [
        rec(f0, code=3),
        rec(f"{f0}-h0", code=3),
        rec(f"{f0}-h0-h0"),
        rec(f"{f0}-h0-h1"),
        rec(f"{f0}-h1"),
        rec(f1, code=1),
    ]
    records = [
        replace(r, output=r.output and r.output.replace("tiles/", "parts/")) for r in records
    ]
    assert complete_tile_indexes(plan, records, all_there) == {0}


def test_policy_resolver_replays_the_recorded_attempts() -> None:
    config = policy.PolicyConfig(
        backoff_limit=1, strategies=("shrinkChunks",), max_memory=None, backoff_base=0.0
    )
    view = view_of(
        rec(T0, 0, code=1),
        rec(T0, 1, code=1),  # backoffLimit 1: given up
        rec(T1, 0, code=1),  # one retry left
        rec(T2, 0, code=2),  # input error: never retried
    )
    resolve = policy_resolver(RASTER, view, config)
    tiles = dict(zip((T0, T1, T2, T3), RASTER.tiles, strict=True))
    assert resolve(tiles[T0], 0).state == "failed"
    assert "backoffLimit is 1" in (resolve(tiles[T0], 0).reason or "")
    assert resolve(tiles[T1], 1) == Resolution("pending")
    assert resolve(tiles[T2], 2).state == "failed"
    assert resolve(tiles[T3], 3) == Resolution("pending")  # never ran


# ------------------------------------------------------------------- manifest entries


def _entries(
    plan: Plan, records: list[LedgerRecord], completed: set[int], failed: set[int], ok: Any
) -> list[tuple[Tile, TileEntry]]:
    view = LedgerView.of(plan.digest, records, ok)
    return manifest_entries(plan, view, operator_resolver(completed, failed))


def test_outcomes_of_planned_tiles() -> None:
    records = [rec(T0), rec(T1), rec(T2, code=1)]
    entries = _entries(RASTER, records, {0, 1}, {2}, all_there)
    got = {e.id: (e.outcome, e.parent, e.output, e.bytes) for _, e in entries}
    assert got == {
        T0: ("succeeded", None, f"tiles/{T0}.tif", 10),
        T1: ("succeeded", None, f"tiles/{T1}.tif", 10),
        T2: ("failed", None, None, None),
        T3: ("pending", None, None, None),
    }
    by_id = {e.id: e for _, e in entries}
    assert by_id[T2].error == "exit 1"
    assert by_id[T0].peak_rss_bytes == 7
    assert by_id[T0].mtime_ns == 1
    assert by_id[T0].attempts == [records[0].attempt_json()]
    assert "digest" not in by_id[T0].attempts[0] and by_id[T0].attempts[0]["exitCode"] == 0
    assert [t.id for t, _ in entries] == [e.id for _, e in entries]


def test_a_completed_tile_whose_output_changed_is_failed_naming_the_file() -> None:
    entries = _entries(RASTER, [rec(T0)], {0}, set(), on_disk())
    entry = next(e for _, e in entries if e.id == T0)
    assert entry.outcome == "failed"
    assert entry.error == (
        f"output tiles/{T0}.tif is missing or is not the file recorded in the ledger"
    )


def test_a_completed_tile_without_any_record_is_failed_saying_so() -> None:
    entry = next(e for _, e in _entries(RASTER, [], {0}, set(), all_there) if e.id == T0)
    assert entry.outcome == "failed"
    assert entry.error == "no succeeded attempt with its output in the ledger"


def test_a_split_raster_tile_lists_its_quadrants_under_it() -> None:
    quads = [f"{T0}-q{k}" for k in range(4)]
    records = [rec(T0, code=3)] + [rec(q) for q in quads]
    entries = _entries(RASTER, records, {0}, set(), all_there)
    ids = [e.id for _, e in entries]
    assert ids[:5] == [T0, *quads]  # children right after their parent
    by_id = {e.id: e for _, e in entries}
    assert by_id[T0].outcome == "split"
    assert all(by_id[q].outcome == "succeeded" and by_id[q].parent == T0 for q in quads)
    assert len(entries) == len(RASTER.tiles) + 4


def test_nested_vector_splits_and_a_failed_leaf() -> None:
    plan = vector_plan()
    f0 = plan.tiles[0].id
    records = [
        rec(f0, code=3),
        rec(f"{f0}-h0", code=3),
        rec(f"{f0}-h0-h0"),
        rec(f"{f0}-h0-h1", code=3),
        rec(f"{f0}-h1"),
    ]
    entries = _entries(plan, records, set(), {0}, all_there)
    got = {e.id: (e.outcome, e.parent) for _, e in entries}
    assert got[f0] == ("split", None)
    assert got[f"{f0}-h0"] == ("split", f0)
    assert got[f"{f0}-h0-h0"] == ("succeeded", f"{f0}-h0")
    assert got[f"{f0}-h0-h1"] == ("failed", f"{f0}-h0")  # its root failed: the leaf failed
    assert got[f"{f0}-h1"] == ("succeeded", f0)
    assert got[plan.tiles[1].id] == ("pending", None)


def test_a_tile_whose_retry_succeeded_after_a_split_record_is_not_split() -> None:
    """A ledger may hold a sub-tile's record although the parent's own last attempt
    succeeded (a restarted operator saw both): the parent's success wins."""
    records = [rec(T0, attempt=1), rec(f"{T0}-q0")]
    entries = _entries(RASTER, records, {0}, set(), all_there)
    assert [e.outcome for _, e in entries if e.id == T0] == ["succeeded"]
    assert f"{T0}-q0" not in {e.id for _, e in entries}


def test_an_executor_that_split_lists_children_without_records_as_its_states_say() -> None:
    """The local executor split a tile and was interrupted before any child ran."""
    states = {T0: "split", f"{T0}-q0": "running"}

    def resolve(tile: Tile, root: int) -> Resolution:
        return Resolution(states.get(tile.id, "pending"))  # type: ignore[arg-type]

    entries = manifest_entries(RASTER, view_of(rec(T0, code=3)), resolve)
    got = {e.id: e.outcome for _, e in entries}
    assert got[T0] == "split" and got[f"{T0}-q0"] == "pending" and got[f"{T0}-q3"] == "pending"


def test_manifest_entries_stay_linear_at_100000_tiles() -> None:
    """Finalizing used to scan the records once per tile; one pass over 100,000 planned
    tiles, each with a record and one in a hundred of them split, takes a few seconds."""
    sizing = raster_sizing()
    f = raster_file(317 * 1024, block=512)
    grid = list(raster_grid(317 * 1024, 317 * 1024, 1024, 512, 512))[:100_000]
    like = make_raster_tile(sizing, f, "r0000c0000", grid[0][2])  # all tiles are 1024²
    tiles = tuple(replace(like, id=f"r{r:04d}c{c:04d}", window=w) for r, c, w in grid)
    plan = Plan("job", "raster", "scale", "COG", DIGEST, sizing, (f,), tiles)
    records = []
    for i, t in enumerate(tiles):
        if i % 100:
            records.append(rec(t.id))
        else:
            records += [rec(t.id, code=3), *(rec(f"{t.id}-q{k}") for k in range(4))]
    started = time.perf_counter()
    entries = _entries(plan, records, set(range(100_000)), set(), all_there)
    elapsed = time.perf_counter() - started
    assert len(entries) == 100_000 + 1_000 * 4
    assert sum(e.outcome == "split" for _, e in entries) == 1_000
    assert elapsed < 5.0, f"{elapsed:.2f} s for 100,000 tiles"


# ------------------------------------------------------------------------ ownership


def test_owned_outputs_are_what_any_record_of_any_digest_names() -> None:
    records = [rec(T0), replace(rec(T1), digest="old"), rec(T2, code=1)]
    assert owned_outputs(records) == {f"tiles/{T0}.tif", f"tiles/{T1}.tif"}


def test_superseded_outputs_are_owned_ones_the_final_manifest_does_not_list() -> None:
    old = replace(rec("r0009c0009"), digest="old")  # a tile of an older plan
    records = [rec(T0), old, replace(rec(T0), digest="old", mtime_ns=5), rec(T1, code=1)]
    final = [
        TileEntry(T0, "succeeded", output=f"tiles/{T0}.tif"),
        TileEntry(T1, "failed"),
    ]
    gone = superseded_outputs(records, final)
    assert list(gone) == ["tiles/r0009c0009.tif"]
    assert gone["tiles/r0009c0009.tif"] == [old]
    # a failed tile's old output is superseded too; a user's file (no record) never is
    final[0] = TileEntry(T0, "failed")
    assert set(superseded_outputs(records, final)) == {"tiles/r0009c0009.tif", f"tiles/{T0}.tif"}


def test_tile_counts() -> None:
    entries = [TileEntry("a", "succeeded"), TileEntry("b", "split"), TileEntry("c", "failed")]
    assert ledger.tile_counts(entries) == {"succeeded": 1, "failed": 1, "pending": 0, "split": 1}


# ---------------------------------------------------------------- kills, as recorded


@pytest.mark.parametrize(
    ("code", "cgroup", "before", "after", "expected"),
    [
        (0, None, None, None, Kill(0)),
        (3, 0, 5, 5, Kill(3)),
        (-signal.SIGKILL, 1, None, None, Kill(137, oom_killed=True)),
        (-signal.SIGKILL, 0, 5, 9, Kill(137, disrupted=True)),  # the cgroup's word wins
        (-signal.SIGKILL, None, 5, 6, Kill(137, oom_killed=True)),  # no cgroup: the kernel's
        (-signal.SIGKILL, None, 5, 5, Kill(137, disrupted=True)),
        (-signal.SIGKILL, None, None, None, Kill(137, disrupted=True)),  # nothing confirms
        (-signal.SIGSEGV, 1, None, None, Kill(139)),  # a crash is an error, not an OOM
    ],
)
def test_only_a_confirmed_oom_kill_is_a_memory_failure(
    code: int, cgroup: int | None, before: int | None, after: int | None, expected: Kill
) -> None:
    kill = classify_exit(code, cgroup_oom_kills=cgroup, vmstat_before=before, vmstat_after=after)
    assert kill == expected
    attempt = policy.Attempt(
        "t", 0, 100, 1.0, "initial", kill.exit_code, kill.oom_killed, kill.disrupted
    )
    if kill.oom_killed:
        assert attempt.failure == "memory"
    elif kill.disrupted:
        assert attempt.failure == "disruption"


def test_a_disrupted_attempt_relaunches_as_it_was() -> None:
    config = policy.PolicyConfig(backoff_limit=0, strategies=("grow",), max_memory=None)
    tile = RASTER.tiles[0]
    first = policy.Launch(tile, 0, 1000 * 2**20, 1.0, "initial")
    kill = classify_exit(-signal.SIGKILL, cgroup_oom_kills=0, vmstat_before=0, vmstat_after=0)
    attempt = policy.Attempt(
        tile.id, 0, first.memory, 1.0, "initial", kill.exit_code, kill.oom_killed, kill.disrupted
    )
    decision = policy.decide(RASTER, tile, [attempt], config)
    assert decision == policy.Launch(tile, 1, first.memory, 1.0, "disrupted")


def test_vmstat_oom_kill_counter(tmp_path: Path) -> None:
    vmstat = tmp_path / "vmstat"
    vmstat.write_text("nr_free_pages 1\noom_kill 42\nnr_foo 3\n")
    assert read_vmstat_oom_kills(vmstat) == 42
    vmstat.write_text("nr_free_pages 1\n")
    assert read_vmstat_oom_kills(vmstat) is None
    assert read_vmstat_oom_kills(tmp_path / "missing") is None


def test_the_ledger_is_pure_enough_for_the_operator() -> None:
    """The operator imports the ledger: it must not load the data stack."""
    import subprocess
    import sys

    heavy = ("numpy", "rasterio", "pyogrio", "pyarrow", "geopandas", "pandas", "shapely")
    code = (
        "import sys, gisjob_worker.ledger; "
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {heavy!r}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
