"""GisJob status (pure): bounded in size however many tiles, conditions, plan summary.

The size tests build a 100,000-tile plan from the planner's dataclasses (no I/O) and
measure the status the operator writes — serialized as the JSON the API server stores —
at the end of a run and in a realistic mid-run state computed by the real reconciler.
"""

from __future__ import annotations

import json
import random
from dataclasses import replace
from typing import Any

import pytest
from planbuilders import NOW, raster_file, raster_sizing, worker_view

from gisjob_operator.crd import build_crd
from gisjob_operator.pods import pod_name
from gisjob_operator.podview import PodView
from gisjob_operator.progress import Progress, decode_subtiles, encode_subtiles
from gisjob_operator.reconcile import Actions, TileTree, reconcile
from gisjob_operator.status import TERMINAL, plan_status, progress_status, set_condition
from gisjob_worker import policy
from gisjob_worker.plan import Plan, RasterFile, Tile, make_raster_tile
from gisjob_worker.quantity import parse_quantity
from gisjob_worker.ranges import compress, expand
from gisjob_worker.tiles import Window, raster_grid

MIB = 1024**2
KIB = 1024
STATUS_BUDGET = 64 * KIB  # an order of magnitude below etcd's 1.5 MiB object limit
ETCD_LIMIT = 1536 * KIB
T0 = "2026-01-01T00:00:00Z"
T1 = "2026-01-01T00:05:00Z"

# ------------------------------------------------------------------------------- builders


def big_file(width: int, height: int, block: int) -> RasterFile:
    """One band of uint16 in, float32 out."""
    return raster_file(
        width,
        height,
        block=block,
        bands=(1,),
        read_bytes_per_pixel=2,
        bytes_per_pixel=12,
        uri="/data/big.tif",
    )


SIZING = raster_sizing()


def raster_plan(tiles: int = 4) -> Plan:
    """A 2x2-tile (or 1xN) plan, each tile computed by the planner's own sizing."""
    f = big_file(1024 * tiles, 1024, 512)
    ts = tuple(
        make_raster_tile(SIZING, f, f"r{r:04d}c{c:04d}", w)
        for r, c, w in raster_grid(f.width, f.height, 1024, 512, 512)
    )
    return Plan("small", "raster", "scale", "COG", "d1g3st", SIZING, (f,), ts)


def big_plan(rows: int = 250, cols: int = 400) -> Plan:
    """100,000 tiny 512x512 tiles (256-pixel blocks, so each can split into 4 quadrants).

    One tile is sized by the planner; the rest are copies with their own id and window (a
    real plan of a uniform raster is exactly that): no I/O, a fraction of a second."""
    edge, block = 512, 256
    f = big_file(cols * edge, rows * edge, block)
    proto = make_raster_tile(SIZING, f, "r0000c0000", Window(0, 0, edge, edge))
    tiles = tuple(
        Tile(
            f"r{r:04d}c{c:04d}",
            0,
            Window(c * edge, r * edge, edge, edge),
            None,
            proto.chunk,
            None,
            proto.chunks,
            proto.estimated_peak_bytes,
            proto.memory_request_bytes,
        )
        for r in range(rows)
        for c in range(cols)
    )
    return Plan("big-mosaic", "raster", "scale", "COG", "b1gd1g3st0000000", SIZING, (f,), tiles)


BIG = big_plan()
CONFIG = policy.PolicyConfig(
    backoff_limit=3, strategies=("shrinkChunks", "split", "grow"), max_memory=None
)


def wire_size(status: dict[str, Any]) -> int:
    """Bytes of the status as the API server stores it (compact JSON, nulls dropped)."""
    body = {k: v for k, v in status.items() if v is not None}
    return len(json.dumps(body, separators=(",", ":")).encode())


def full_status(plan: Plan, p: Progress, actions: Actions | None, phase: str) -> dict[str, Any]:
    """Everything the controller writes in one status (see controller._status/_finish)."""
    conditions: list[dict[str, Any]] = []
    for type_, reason in (("Planned", "Planned"), ("Running", "TilesRunning")):
        conditions = set_condition(
            conditions, type_, "True", reason, f"{len(plan.tiles)} tiles", T0, 1
        )
    return {
        **progress_status(plan, p, actions),
        "phase": phase,
        "plan": plan_status(plan),
        "conditions": conditions,
        "startTime": T0,
        "observedGeneration": 1,
        "reconcileSeq": 123456,
        "message": "",
        "outputs": {"manifest": "/data/out/big-mosaic/manifest.json"},
    }


# ---------------------------------------------------------------------------- the big plan


def test_big_plan_has_the_shape_these_tests_rely_on() -> None:
    assert len(BIG.tiles) == 100_000
    assert len({t.id for t in BIG.tiles}) == 100_000
    assert BIG.tiles[-1].id == "r0249c0399"
    assert [k.id for k in TileTree(BIG).children(BIG.tiles[60_007])] == [
        f"{BIG.tiles[60_007].id}-q{i}" for i in range(4)
    ]


def test_status_after_all_100k_tiles_complete_is_small(capsys: pytest.CaptureFixture[str]) -> None:
    p = Progress(
        completed=set(range(100_000)),
        memory_retries=1_234,
        other_retries=56,
        peak_observed=987 * MIB,
    )
    st = full_status(BIG, p, None, "Succeeded")
    size = wire_size(st)
    with capsys.disabled():
        print(f"\n[status size] 100,000 tiles, all complete: {size} bytes")
    assert st["completedTiles"] == "0-99999"
    assert st["failedTiles"] == ""
    assert st["progress"] == "100000/100000"
    assert st["tiles"] == {
        "total": 100_000,
        "pending": 0,
        "running": 0,
        "succeeded": 100_000,
        "failed": 0,
    }
    assert st["subtiles"] is None
    assert size < STATUS_BUDGET
    assert size < 4 * KIB  # nothing in it grows with the tile count


def mid_run() -> tuple[Progress, list[PodView], dict[str, Any]]:
    """First 60,000 complete; of the next 200 every other one complete; 50 running; a few
    failed; one split in progress (two quadrants done, one failed, one running)."""
    completed = set(range(60_000)) | set(range(60_000, 60_200, 2))
    failed = {60_001, 60_003, 60_099, 60_151}
    split_index = 60_007
    parent = BIG.tiles[split_index].id
    kids = [f"{parent}-q{i}" for i in range(4)]
    p = Progress(
        completed=completed,
        failed=failed,
        split={parent},
        sub_done={kids[0], kids[1]},
        sub_failed={kids[2]},
        memory_retries=17,
        other_retries=9,
        peak_observed=311 * MIB,
    )
    persisted = {k: v for k, v in progress_status(BIG, p, None).items() if v is not None}
    resolved = completed | failed | {split_index}
    holes = [i for i in range(60_000, 60_200) if i not in resolved]
    running_ids = [kids[3], *(BIG.tiles[i].id for i in holes[:49])]
    pods = [
        worker_view(pod_name(BIG.job, tid, 0), tid, BIG.tiles[0].memory_request_bytes)
        for tid in running_ids
    ]
    return p, pods, persisted


def test_status_mid_run_of_100k_tiles_is_small(capsys: pytest.CaptureFixture[str]) -> None:
    p, pods, persisted = mid_run()
    actions = reconcile(BIG, persisted, pods, CONFIG, 50, NOW)
    assert actions.running == 50
    assert actions.create == [] and actions.delete == [] and not actions.changed
    assert actions.progress.key() == p.key()
    st = full_status(BIG, actions.progress, actions, "Running")
    size = wire_size(st)
    with capsys.disabled():
        print(
            f"\n[status size] 100,000 tiles mid-run: {size} bytes "
            f"(completedTiles {len(st['completedTiles'])} chars, "
            f"failedTiles {len(st['failedTiles'])} chars)"
        )
    assert size < STATUS_BUDGET
    assert expand(st["completedTiles"]) == p.completed
    assert expand(st["failedTiles"]) == p.failed
    assert st["completedTiles"].startswith("0-60000,60002,60004,")
    assert st["tiles"] == {
        "total": 100_000,
        "pending": 100_000 - len(p.completed) - len(p.failed) - 50,
        "running": 50,
        "succeeded": len(p.completed),
        "failed": 4,
    }
    parent = BIG.tiles[60_007].id
    assert st["subtiles"] == f"{parent}:sdq0dq1fq2"  # split; q0, q1 succeeded; q2 failed
    assert st["progress"] == f"{len(p.completed)}/100000"


def test_status_with_scattered_failures_stays_under_the_budget(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A bad region of input failing tiles at random: the ranges would fragment (hundreds of
    KiB); the index sets switch to compressed bitmaps and the status stays < 64 KiB even for
    a coin flip per tile. The persisted form reads back to the same progress."""
    rng = random.Random(42)
    n = 100_000
    cases: dict[str, set[int]] = {
        "10% random failures": {i for i in range(n) if rng.random() < 0.1},
        "50% random failures": {i for i in range(n) if rng.random() < 0.5},
        "alternating": set(range(1, n, 2)),
    }
    sizes = {}
    for name, failed in cases.items():
        p = Progress(completed=set(range(n)) - failed, failed=failed)
        st = full_status(BIG, p, None, "Failed")
        sizes[name] = wire_size(st)
        assert len(compress(failed)) > 4 * STATUS_BUDGET // 10  # ranges alone would not fit
        assert sizes[name] < STATUS_BUDGET, (name, sizes[name])
        back = Progress.from_status(json.loads(json.dumps(st)))
        assert back.completed == p.completed and back.failed == p.failed
    with capsys.disabled():
        print(f"\n[status size] 100,000 tiles, scattered outcomes: {sizes}")


def legacy_subtiles_size(p: Progress) -> int:
    """What the sub-tile sets cost as the id lists status held before (issue 9 #8)."""
    lists = {
        "split": sorted(p.split),
        "succeeded": sorted(p.sub_done),
        "failed": sorted(p.sub_failed),
    }
    return len(json.dumps(lists, separators=(",", ":")).encode())


def test_status_with_thousands_of_concurrent_splits_stays_small(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An input every tile of which needs more memory than planned: at parallelism 4,000
    the running pods all run out of memory again after shrinking, and the real reconciler
    splits 4,000 tiles in one tick; then their quadrants run (4,000 at a time) and succeed,
    fail or keep running, tick after tick, while the splits stay open. As id lists the
    open splits would outgrow the budget; grouped and compressed they cost a few bytes each,
    and every tick's status reads back to the same progress."""
    rng = random.Random(8)
    parallelism, start = 4_000, 40_000
    memory = BIG.tiles[0].memory_request_bytes
    persisted = {
        k: v
        for k, v in progress_status(BIG, Progress(completed=set(range(start))), None).items()
        if v is not None
    }
    first = {"n": 0, "m": memory, "c": 1.0, "s": "initial", "x": 3, "o": False, "d": False}
    pods = {
        t.id: worker_view(
            pod_name(BIG.job, t.id, 1),
            t.id,
            memory,
            1,
            "Failed",
            exit_code=3,
            strategy="shrinkChunks",
            chunk_scale=0.5,
            history=[first],
        )
        for t in BIG.tiles[start : start + parallelism]
    }
    tree = TileTree(BIG)
    sizes: list[tuple[int, int, int, int]] = []  # open splits, subtiles, status, id lists
    for _tick in range(5):
        actions = reconcile(BIG, persisted, pods.values(), CONFIG, parallelism, NOW, tree=tree)
        p = actions.progress
        st = full_status(BIG, p, actions, "Running")
        open_splits = sum(1 for tid in p.split if tree.index(tid) is not None)
        subtiles = len(json.dumps(st["subtiles"], separators=(",", ":"))) if st["subtiles"] else 0
        sizes.append((open_splits, subtiles, wire_size(st), legacy_subtiles_size(p)))
        assert subtiles <= 6 * open_splits + 64, sizes  # a few bytes per open split
        assert wire_size(st) < STATUS_BUDGET // 2, sizes
        assert Progress.from_status(json.loads(json.dumps(st))).key() == p.key()
        persisted = {k: v for k, v in st.items() if v is not None}
        # the cluster: deleted pods go, created ones run; of the running quadrants 60 %
        # finish per tick (85 % of them succeed, 15 % fail with an input error)
        gone = set(actions.delete)
        pods = {tid: v for tid, v in pods.items() if v.name not in gone}
        for launch in actions.create:
            name = pod_name(BIG.job, launch.tile, launch.attempt)
            pods[launch.tile] = worker_view(name, launch.tile, launch.memory)
        for tid, v in pods.items():
            if v.phase == "Running" and rng.random() < 0.6:
                ok = rng.random() >= 0.15
                pods[tid] = replace(
                    v,
                    phase="Succeeded" if ok else "Failed",
                    exit_code=0 if ok else 2,
                    finished_at=NOW,
                )
    with capsys.disabled():
        print(
            "\n[status size] 100,000 tiles, 4,000 concurrent splits, per tick (open splits, "
            f"subtiles chars, status bytes, bytes the id lists would take): {sizes}"
        )
    assert sizes[0][0] == parallelism  # the splits were concurrent
    assert max(s[3] for s in sizes) > STATUS_BUDGET, "as id lists they would not fit"


def test_reconcile_of_the_big_plan_launches_in_order() -> None:
    p, pods, persisted = mid_run()
    actions = reconcile(BIG, persisted, pods, CONFIG, 60, NOW)
    # the 10 free slots go to the first open tiles in plan order without a pod
    running = {v.tile for v in pods}
    resolved = p.completed | p.failed | {60_007}
    open_tiles = [t.id for i, t in enumerate(BIG.tiles) if i not in resolved]
    expected = [t for t in open_tiles if t not in running][:10]
    assert [c.tile for c in actions.create] == expected
    assert all(c.attempt == 0 and c.strategy == "initial" for c in actions.create)


# ------------------------------------------------------------------------ progress_status


def test_progress_status_without_actions() -> None:
    plan = raster_plan(4)
    st = progress_status(plan, Progress(completed={0, 1}, failed={3}), None)
    assert st["tiles"] == {"total": 4, "pending": 1, "running": 0, "succeeded": 2, "failed": 1}
    assert st["progress"] == "2/4"
    assert st["completedTiles"] == "0-1"
    assert st["failedTiles"] == "3"
    assert st["retries"] == {"memory": 0, "other": 0, "disruptions": 0}
    assert st["memory"] == {
        "peakObservedBytes": 0,
        "peakObserved": "",
        "requestMaxBytes": plan.max_request,
    }
    assert st["subtiles"] is None


def test_progress_status_pending_never_negative() -> None:
    plan = raster_plan(4)
    actions = Actions(running=9)  # sub-tile pods can outnumber the open planned tiles
    st = progress_status(plan, Progress(completed={0, 1, 2}), actions)
    assert st["tiles"]["pending"] == 0 and st["tiles"]["running"] == 9


def test_printer_columns_read_fields_the_operator_writes() -> None:
    plan = raster_plan(4)
    st = progress_status(plan, Progress(completed={0, 1}, peak_observed=300 * MIB), None)
    version = build_crd()["spec"]["versions"][0]
    paths = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    body = {"status": {**st, "phase": "Running"}}

    def get(path: str) -> Any:
        node: Any = body
        for part in path.strip(".").split("."):
            node = node[part]
        return node

    assert get(paths["Phase"]) == "Running"
    assert get(paths["Done/Tiles"]) == "2/4"
    assert get(paths["Peak memory"]) == "300Mi"


@pytest.mark.parametrize(
    ("peak", "text"),
    [(0, ""), (1, "0Mi"), (MIB, "1Mi"), (300 * MIB, "300Mi"), (int(1.5 * MIB), "2Mi")],
)
def test_peak_observed_text(peak: int, text: str) -> None:
    st = progress_status(raster_plan(1), Progress(peak_observed=peak), None)
    assert st["memory"]["peakObserved"] == text
    assert st["memory"]["peakObservedBytes"] == peak


def test_subtiles_sorted_and_present_while_any_is_open() -> None:
    plan = raster_plan(4)
    p = Progress(split={"r0000c0001", "r0000c0000"}, sub_done={"r0000c0000-q3", "r0000c0000-q0"})
    sub = progress_status(plan, p, None)["subtiles"]
    assert sub == "r0000c0000:sdq0dq3,r0000c0001:s"
    assert json.loads(json.dumps(sub)) == sub


def test_progress_status_round_trips_through_progress() -> None:
    plan = raster_plan(4)
    p = Progress(
        completed={0, 2},
        failed={3},
        split={"r0000c0001"},
        sub_done={"r0000c0001-q0"},
        sub_failed={"r0000c0001-q1"},
        memory_retries=2,
        other_retries=1,
        disruptions=7,
        peak_observed=5,
    )
    again = Progress.from_status(json.loads(json.dumps(progress_status(plan, p, None))))
    assert again.key() == p.key()


def random_subtile_sets(rng: random.Random, roots: int) -> tuple[set[str], set[str], set[str]]:
    """Split/succeeded/failed sub-tile ids under ``roots`` planned tiles of every id form
    (raster, vector, multi-file), nested up to three splits deep."""
    forms = ["r{:04d}c{:04d}", "f{:06d}", "i0001-r{:04d}c{:04d}", "i0012-f{:06d}"]
    split: set[str] = set()
    done: set[str] = set()
    failed: set[str] = set()
    for k in range(roots):
        form = rng.choice(forms)
        root = form.format(k, k + 7) if "c" in form else form.format(k)
        letter = "h" if "f0" in root else "q"
        split.add(root)
        frontier = [root]
        for _depth in range(3):
            nxt = []
            for parent in frontier:
                for i in range(4 if letter == "q" else 2):
                    kid = f"{parent}-{letter}{i}"
                    r = rng.random()
                    if r < 0.4:
                        done.add(kid)
                    elif r < 0.55:
                        failed.add(kid)
                    elif r < 0.7:
                        split.add(kid)
                        nxt.append(kid)
            frontier = nxt
    return split, done, failed


@pytest.mark.parametrize("roots", [1, 3, 40, 2_000])
def test_subtiles_codec_round_trips(roots: int) -> None:
    rng = random.Random(roots)
    split, done, failed = random_subtile_sets(rng, roots)
    text = encode_subtiles(split, done, failed)
    assert text.startswith("z:") is (roots >= 40)  # compressed once long
    assert decode_subtiles(json.loads(json.dumps(text))) == {
        "split": split,
        "sub_done": done,
        "sub_failed": failed,
    }
    # an id in two sets (never written by the reconciler, still kept exactly)
    odd = decode_subtiles(encode_subtiles({"r0000c0000"}, {"r0000c0000"}, set()))
    assert odd["split"] == odd["sub_done"] == {"r0000c0000"}


def test_subtiles_plain_form_is_grouped_by_planned_tile() -> None:
    text = encode_subtiles(
        {"r0003c0008", "r0003c0007", "r0003c0008-q1"},
        {"r0003c0007-q1", "r0003c0007-q0", "r0003c0008-q1-q0"},
        {"r0003c0007-q2"},
    )
    assert text == "r0003c0007:sdq0dq1fq2,r0003c0008:ssq1dq1q0"
    assert encode_subtiles((), (), ()) == ""
    assert (
        decode_subtiles("")
        == decode_subtiles(None)
        == {
            "split": set(),
            "sub_done": set(),
            "sub_failed": set(),
        }
    )


def test_subtiles_written_as_lists_by_an_older_operator_still_read() -> None:
    old = {"split": ["f000001"], "succeeded": ["f000001-h0"], "failed": ["f000001-h1"]}
    p = Progress.from_status({"subtiles": old})
    assert (p.split, p.sub_done, p.sub_failed) == ({"f000001"}, {"f000001-h0"}, {"f000001-h1"})


@pytest.mark.parametrize("bad", ["r0000c0000", ":s", "r0000c0000:x", "r0:sq", "r0:sq9q", "z:!!"])
def test_malformed_subtiles_raise(bad: str) -> None:
    with pytest.raises(ValueError):
        decode_subtiles(bad)


# ------------------------------------------------------------------------------ plan_status


def test_plan_status_fields() -> None:
    plan = raster_plan(4)
    st = plan_status(plan)
    assert st == {
        "tiles": 4,
        "estimatedPeakBytes": plan.max_estimate,
        "memoryRequestBytes": plan.max_request,
        "memoryRequest": st["memoryRequest"],
        "sumMemoryRequestBytes": sum(t.memory_request_bytes for t in plan.tiles),
        "digest": "d1g3st",
    }
    assert st["estimatedPeakBytes"] < st["memoryRequestBytes"]  # headroom on top
    assert st["sumMemoryRequestBytes"] == 4 * st["memoryRequestBytes"]
    # a readable quantity, rounded up to whole MiB, never below the request
    q = parse_quantity(st["memoryRequest"])
    assert q >= plan.max_request and q - plan.max_request < MIB and q % MIB == 0
    assert st["memoryRequest"].endswith(("Mi", "Gi"))
    assert json.loads(json.dumps(st)) == st


def test_plan_status_of_uneven_tiles_reports_the_maximum() -> None:
    f = big_file(1536, 1024, 512)  # a 1024 tile and a 512-wide edge tile
    tiles = tuple(
        make_raster_tile(SIZING, f, f"r{r:04d}c{c:04d}", w)
        for r, c, w in raster_grid(1536, 1024, 1024, 512, 512)
    )
    plan = Plan("uneven", "raster", "scale", "COG", "u", SIZING, (f,), tiles)
    st = plan_status(plan)
    requests = [t.memory_request_bytes for t in tiles]
    assert len(set(requests)) == 2
    assert st["memoryRequestBytes"] == max(requests)
    assert st["sumMemoryRequestBytes"] == sum(requests)
    assert st["estimatedPeakBytes"] == max(t.estimated_peak_bytes for t in tiles)


def test_plan_status_of_an_empty_plan() -> None:
    plan = replace(raster_plan(1), tiles=())
    st = plan_status(plan)
    assert st["tiles"] == 0 and st["memoryRequestBytes"] == 0 and st["sumMemoryRequestBytes"] == 0
    assert parse_quantity(st["memoryRequest"]) == 0


def test_big_plan_status_is_tiny() -> None:
    st = plan_status(BIG)
    assert st["tiles"] == 100_000
    assert st["sumMemoryRequestBytes"] == 100_000 * BIG.tiles[0].memory_request_bytes
    assert wire_size(st) < 512


# ----------------------------------------------------------------------------- conditions


def test_set_condition_adds_a_condition() -> None:
    out = set_condition([], "Running", "True", "TilesRunning", "0/4 tiles done", T0, 3)
    assert out == [
        {
            "type": "Running",
            "status": "True",
            "reason": "TilesRunning",
            "message": "0/4 tiles done",
            "lastTransitionTime": T0,
            "observedGeneration": 3,
        }
    ]


def test_set_condition_keeps_transition_time_when_status_unchanged() -> None:
    first = set_condition([], "Running", "True", "TilesRunning", "1/4 tiles done", T0, 1)
    again = set_condition(first, "Running", "True", "TilesRunning", "3/4 tiles done", T1, 2)
    (c,) = again
    assert c["lastTransitionTime"] == T0  # still running since T0
    assert c["message"] == "3/4 tiles done"  # reason/message/generation do update
    assert c["observedGeneration"] == 2


def test_set_condition_updates_transition_time_when_status_changes() -> None:
    first = set_condition([], "Running", "True", "TilesRunning", "", T0, 1)
    changed = set_condition(first, "Running", "False", "Finished", "", T1, 1)
    (c,) = changed
    assert (c["status"], c["reason"], c["lastTransitionTime"]) == ("False", "Finished", T1)
    back = set_condition(changed, "Running", "True", "TilesRunning", "", "2026-01-02T00:00:00Z", 1)
    assert back[0]["lastTransitionTime"] == "2026-01-02T00:00:00Z"


def test_set_condition_without_a_previous_time_uses_now() -> None:
    legacy = [{"type": "Running", "status": "True", "reason": "x", "message": ""}]
    (c,) = set_condition(legacy, "Running", "True", "TilesRunning", "", T1, None)
    assert c["lastTransitionTime"] == T1


def test_set_condition_one_per_type_in_a_stable_order() -> None:
    conds: list[dict[str, Any]] = []
    for type_ in ("Failed", "Suspended", "Complete", "Running", "Planned", "Custom", "Another"):
        conds = set_condition(conds, type_, "True", "R", "", T0, 1)
    conds = set_condition(conds, "Running", "False", "Finished", "", T1, 1)
    types = [c["type"] for c in conds]
    assert types == [
        "Planned",
        "Running",
        "Complete",
        "Failed",
        "Suspended",
        "Another",
        "Custom",
    ]
    assert len(types) == len(set(types))


def test_set_condition_does_not_mutate_its_input() -> None:
    first = set_condition([], "Running", "True", "TilesRunning", "m", T0, 1)
    snapshot = json.loads(json.dumps(first))
    out = set_condition(first, "Running", "False", "Finished", "", T1, 1)
    out[0]["message"] = "changed"
    assert first == snapshot


def test_set_condition_truncates_long_messages() -> None:
    (c,) = set_condition([], "Failed", "True", "TilesFailed", "x" * 5000, T0, 1)
    assert len(c["message"]) == 1024


def test_failed_tiles_message_is_bounded_by_ranges() -> None:
    """The Failed condition quotes failedTiles; compressed ranges keep it short enough to
    fit the condition's 1024 characters in realistic failures (a contiguous bad region)."""
    failed = set(range(10_000, 20_000))
    text = compress(failed)
    message = f"{len(failed)} of 100000 tiles failed: {text}"
    (c,) = set_condition([], "Failed", "True", "TilesFailed", message, T0, 1)
    assert c["message"] == message


def test_terminal_phases() -> None:
    assert TERMINAL == ("Succeeded", "Failed")
