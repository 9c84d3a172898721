"""The operator's manifest entries: planned tiles, their splits (from the journal), outcomes,
and sub-tiles found through their recorded descendants."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from test_reconcile import RASTER, vector_plan

from gisjob_operator.controller import manifest_entries
from gisjob_operator.reconcile import Progress


def _record(out: Path | None, tile: str, attempt: int = 0, code: int = 0) -> dict[str, Any]:
    r: dict[str, Any] = {"tile": tile, "attempt": attempt, "exitCode": code, "peakRssBytes": 7}
    if out is not None and code == 0:
        path = out / "tiles" / f"{tile}.tif"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * 10)
        r["output"] = str(path)
    if code:
        r["error"] = f"exit {code}"
    return r


def test_outcomes_of_planned_tiles(tmp_path: Path) -> None:
    t0, t1, t2, t3 = (t.id for t in RASTER.tiles)
    records = [_record(tmp_path, t0), _record(tmp_path, t1), _record(None, t2, code=1)]
    entries = manifest_entries(RASTER, Progress(completed={0, 1}, failed={2}), records, tmp_path)
    got = {e.id: (e.outcome, e.parent, e.output, e.bytes) for _, e in entries}
    assert got == {
        t0: ("succeeded", None, f"tiles/{t0}.tif", 10),
        t1: ("succeeded", None, f"tiles/{t1}.tif", 10),
        t2: ("failed", None, None, None),
        t3: ("pending", None, None, None),
    }
    by_id = {e.id: e for _, e in entries}
    assert by_id[t2].error == "exit 1"
    assert by_id[t0].peak_rss_bytes == 7
    assert by_id[t0].attempts == [records[0]]


def test_a_missing_output_is_a_failed_tile_naming_the_file(tmp_path: Path) -> None:
    t0 = RASTER.tiles[0].id
    record = _record(tmp_path, t0)
    Path(record["output"]).unlink()
    entries = manifest_entries(RASTER, Progress(completed={0}), [record], tmp_path)
    entry = next(e for _, e in entries if e.id == t0)
    assert entry.outcome == "failed"
    assert entry.error == f"output {record['output']} is missing"


def test_a_split_raster_tile_lists_its_quadrants_under_it(tmp_path: Path) -> None:
    t0 = RASTER.tiles[0].id
    quads = [f"{t0}-q{k}" for k in range(4)]
    records = [_record(None, t0, code=3)] + [_record(tmp_path, q) for q in quads]
    entries = manifest_entries(RASTER, Progress(completed={0}), records, tmp_path)
    ids = [e.id for _, e in entries]
    assert ids[:5] == [t0, *quads]  # children right after their parent
    by_id = {e.id: e for _, e in entries}
    assert by_id[t0].outcome == "split"
    assert all(by_id[q].outcome == "succeeded" and by_id[q].parent == t0 for q in quads)
    assert len(entries) == len(RASTER.tiles) + 4


def test_nested_vector_splits_and_a_failed_leaf(tmp_path: Path) -> None:
    plan = vector_plan(1000, 500)
    f0 = plan.tiles[0].id
    records = [
        _record(None, f0, code=3),
        _record(None, f"{f0}-h0", code=3),
        _record(tmp_path, f"{f0}-h0-h0"),
        _record(None, f"{f0}-h0-h1", code=3),
        _record(tmp_path, f"{f0}-h1"),
    ]
    entries = manifest_entries(plan, Progress(failed={0}), records, tmp_path)
    got = {e.id: (e.outcome, e.parent) for _, e in entries}
    assert got[f0] == ("split", None)
    assert got[f"{f0}-h0"] == ("split", f0)
    assert got[f"{f0}-h0-h0"] == ("succeeded", f"{f0}-h0")
    assert got[f"{f0}-h0-h1"] == ("failed", f"{f0}-h0")  # its root failed: the leaf failed
    assert got[f"{f0}-h1"] == ("succeeded", f0)
    assert got[plan.tiles[1].id] == ("pending", None)


def test_a_tile_whose_retry_succeeded_after_a_split_record_is_not_split(tmp_path: Path) -> None:
    """A journal may hold a sub-tile's record although the parent's own last attempt
    succeeded (a restarted operator saw both): the parent's success wins."""
    t0 = RASTER.tiles[0].id
    records = [_record(tmp_path, t0, attempt=1), _record(tmp_path, f"{t0}-q0")]
    entries = manifest_entries(RASTER, Progress(completed={0}), records, tmp_path)
    assert [e.outcome for _, e in entries if e.id == t0] == ["succeeded"]
    assert f"{t0}-q0" not in {e.id for _, e in entries}
