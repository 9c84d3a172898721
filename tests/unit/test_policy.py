"""The retry / split / out-of-memory policy (pure): every rule and edge of ``decide()``.

Plans are built here from the planner's dataclasses (no file I/O, no GDAL): a 2048x2048
raster with 512x512 blocks and a 1000-feature vector layer. ``decide()`` is then driven
through histories of :class:`Attempt` s exactly as an executor would feed it.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import replace

import pytest
from planbuilders import raster_file, raster_sizing, vector_file, vector_sizing

from gisjob_worker import policy
from gisjob_worker.errors import EXIT_INPUT, EXIT_MEMORY, EXIT_OK
from gisjob_worker.plan import (
    Plan,
    Tile,
    make_raster_tile,
    make_vector_tile,
    resize_tile,
)
from gisjob_worker.policy import (
    Attempt,
    Decision,
    Done,
    Fail,
    Launch,
    PolicyConfig,
    Split,
    backoff,
    decide,
    grow_cap,
    job_outcome,
)
from gisjob_worker.quantity import round_up_mib
from gisjob_worker.tiles import FeatureRange, Window

MIB = 1024**2
DEFAULT_ORDER = ("shrinkChunks", "split", "grow")
BLOCK = 512

# bytes per pixel → the chunk of a 2048x2048 tile without resources.memory (64 MiB chunks):
#   16 → the whole tile (2048x2048); halving gives 2048x1024, 2048x512, 1024x512, …
#   64 → one 2048x512 strip; halving gives 1024x512, then one block (512x512)
#  512 → a single 512x512 block already (nothing to shrink)
BPP_WHOLE_TILE = 16
BPP_STRIP = 64
BPP_ONE_BLOCK = 512


# ----------------------------------------------------------------------------- builders


def raster_plan(
    window: Window | None = None,
    *,
    bpp: int = BPP_WHOLE_TILE,
    memory: int | None = None,
    tile_id: str = "r0000c0000",
) -> tuple[Plan, Tile]:
    """A one-tile raster plan; the default tile is the whole 2048x2048 raster (16 blocks)."""
    sizing = raster_sizing(memory)
    f = raster_file(2048, block=BLOCK, bytes_per_pixel=bpp)
    win = window or Window(0, 0, f.width, f.height)
    tile = make_raster_tile(sizing, f, tile_id, win)
    plan = Plan("unit-job", "raster", "ndvi", "COG", "d1g3st", sizing, (f,), (tile,))
    return plan, tile


def single_block_raster(bpp: int = BPP_WHOLE_TILE) -> tuple[Plan, Tile]:
    """A tile that is one 512x512 block: it can neither shrink nor split."""
    return raster_plan(Window(1536, 1536, BLOCK, BLOCK), bpp=bpp, tile_id="r0003c0003")


def vector_plan(
    features: int = 1000, *, memory: int | None = None, tile_id: str = "f000000"
) -> tuple[Plan, Tile]:
    """A one-tile vector plan holding ``features`` features (FIDs from 1, open-ended)."""
    sizing = vector_sizing(memory)
    f = vector_file(features)
    tile = make_vector_tile(sizing, f, tile_id, FeatureRange(1, None, features))
    plan = Plan("unit-job", "vector", "filter", "GeoParquet", "d1g3st", sizing, (f,), (tile,))
    return plan, tile


def config(
    *,
    backoff_limit: int = 3,
    strategies: Sequence[str] = DEFAULT_ORDER,
    max_memory: int | None = None,
    memory_cap: int | None = None,
    backoff_base: float = 1.0,
    backoff_max: float = 60.0,
) -> PolicyConfig:
    return PolicyConfig(
        backoff_limit=backoff_limit,
        strategies=tuple(strategies),
        max_memory=max_memory,
        memory_cap=memory_cap,
        backoff_base=backoff_base,
        backoff_max=backoff_max,
    )


def ran(
    launch: Launch, exit_code: int | None, oom_killed: bool = False, disrupted: bool = False
) -> Attempt:
    """The attempt an executor records after carrying out ``launch``."""
    return Attempt(
        tile=launch.tile.id,
        number=launch.number,
        memory=launch.memory,
        chunk_scale=launch.chunk_scale,
        strategy=launch.strategy,
        exit_code=exit_code,
        oom_killed=oom_killed,
        disrupted=disrupted,
    )


Outcome = tuple[int | None, bool]  # (exit code, OOM killed)
OK: Outcome = (EXIT_OK, False)
MEM: Outcome = (EXIT_MEMORY, False)
OOM: Outcome = (137, True)
ERR: Outcome = (1, False)
BAD: Outcome = (EXIT_INPUT, False)


def drive(
    plan: Plan, tile: Tile, cfg: PolicyConfig, outcomes: Sequence[Outcome]
) -> tuple[list[Decision], list[Attempt]]:
    """Launch, observe each outcome in turn, and return every decision (the last one after
    the last outcome) and the attempts. Fails the test if a Launch is not offered when an
    outcome is still to be fed."""
    attempts: list[Attempt] = []
    decisions: list[Decision] = [decide(plan, tile, attempts, cfg)]
    for exit_code, oom in outcomes:
        launch = decisions[-1]
        assert isinstance(launch, Launch), f"expected a Launch before {exit_code}, got {launch}"
        attempts.append(ran(launch, exit_code, oom))
        decisions.append(decide(plan, tile, attempts, cfg))
    return decisions, attempts


def final(plan: Plan, tile: Tile, cfg: PolicyConfig, outcomes: Sequence[Outcome]) -> Decision:
    return drive(plan, tile, cfg, outcomes)[0][-1]


def launch_of(decision: Decision) -> Launch:
    assert isinstance(decision, Launch), decision
    return decision


def grown(memory: int) -> int:
    return round_up_mib(int(memory * policy.GROW_FACTOR))


PLANS: dict[str, Callable[[], tuple[Plan, Tile]]] = {
    "raster": raster_plan,
    "vector": vector_plan,
}


@pytest.fixture(params=sorted(PLANS))
def plan_tile(request: pytest.FixtureRequest) -> tuple[Plan, Tile]:
    """Each test using it runs on the 2048x2048 raster tile and the 1000-feature vector tile."""
    return PLANS[request.param]()


# --------------------------------------------------------------------- fixtures themselves


def test_built_plans_have_the_shapes_these_tests_rely_on() -> None:
    _, whole = raster_plan()
    assert whole.window == Window(0, 0, 2048, 2048)
    assert whole.chunk is not None and (whole.chunk.width, whole.chunk.height) == (2048, 2048)
    _, strip = raster_plan(bpp=BPP_STRIP)
    assert strip.chunk is not None and (strip.chunk.width, strip.chunk.height) == (2048, 512)
    _, blocky = raster_plan(bpp=BPP_ONE_BLOCK)
    assert blocky.chunk is not None and blocky.chunk.pixels == BLOCK * BLOCK
    _, single = single_block_raster()
    assert single.window == Window(1536, 1536, BLOCK, BLOCK)
    _, vec = vector_plan()
    assert vec.fids == FeatureRange(1, None, 1000)
    assert vec.batch_rows == 1000
    for t in (whole, strip, blocky, single, vec):
        assert t.memory_request_bytes % MIB == 0
        assert t.memory_request_bytes > t.estimated_peak_bytes


# ------------------------------------------------------------------------------ Attempt


@pytest.mark.parametrize(
    ("exit_code", "oom_killed", "expected"),
    [
        (0, False, None),
        (EXIT_MEMORY, False, "memory"),
        (137, False, "disruption"),
        (0, True, "memory"),
        (1, True, "memory"),
        (EXIT_INPUT, True, "memory"),
        (None, True, "memory"),
        (137, True, "memory"),
        (EXIT_INPUT, False, "input"),
        (1, False, "error"),
        (143, False, "error"),
        (None, False, "error"),
        (4, False, "error"),
        (255, False, "error"),
        (-9, False, "error"),
        (130, False, "error"),
    ],
)
def test_attempt_failure_kind(
    exit_code: int | None, oom_killed: bool, expected: str | None
) -> None:
    a = Attempt("r0000c0000", 0, 256 * MIB, 1.0, "initial", exit_code, oom_killed)
    assert a.failure == expected


@pytest.mark.parametrize(
    ("exit_code", "oom_killed", "expected"),
    [
        (0, False, None),  # it finished its work before it was evicted
        (EXIT_MEMORY, False, "memory"),  # the worker's own verdicts win: exit 3 ...
        (EXIT_INPUT, False, "input"),  # ... and exit 2 (never retried)
        (137, True, "memory"),  # OOMKilled (the runtime) is a memory failure, always
        (None, True, "memory"),
        (137, False, "disruption"),
        (143, False, "disruption"),  # SIGTERM from a drain or a deletion
        (1, False, "disruption"),
        (None, False, "disruption"),  # evicted: no container state at all
    ],
)
def test_attempt_failure_kind_of_a_disrupted_attempt(
    exit_code: int | None, oom_killed: bool, expected: str | None
) -> None:
    """A disruption mark (eviction, DisruptionTarget, node loss) explains an ambiguous end —
    a signal, no exit code, a generic error — but not the worker's own exit 0, 2 or 3."""
    a = Attempt("r0000c0000", 0, 256 * MIB, 1.0, "initial", exit_code, oom_killed, True)
    assert a.failure == expected


def test_oom_exit_code_constant() -> None:
    assert policy.EXIT_OOM_KILLED == 137


# ------------------------------------------------------------------------- first launch


def test_no_attempts_launches_initial(plan_tile: tuple[Plan, Tile]) -> None:
    plan, tile = plan_tile
    d = decide(plan, tile, [], config())
    assert d == Launch(tile, 0, tile.memory_request_bytes, 1.0, "initial", 0.0)


def test_initial_launch_uses_resources_memory_when_given() -> None:
    plan, tile = raster_plan(memory=1024 * MIB)
    assert tile.memory_request_bytes == 1024 * MIB
    d = launch_of(decide(plan, tile, [], config()))
    assert (d.memory, d.chunk_scale, d.number, d.delay_seconds) == (1024 * MIB, 1.0, 0, 0.0)


def test_initial_launch_ignores_config() -> None:
    """Whatever the retry settings, the first launch is the same."""
    plan, tile = raster_plan()
    expected = decide(plan, tile, [], config())
    for cfg in (
        config(backoff_limit=0, strategies=()),
        config(strategies=("grow",), max_memory=tile.memory_request_bytes),
        config(backoff_base=9.0, backoff_max=9.0),
    ):
        assert decide(plan, tile, [], cfg) == expected


# ------------------------------------------------------------------------------ success


def test_exit_0_is_done(plan_tile: tuple[Plan, Tile]) -> None:
    plan, tile = plan_tile
    assert final(plan, tile, config(), [OK]) == Done(tile)


def test_exit_0_after_retries_and_memory_strategies_is_done(plan_tile: tuple[Plan, Tile]) -> None:
    plan, tile = plan_tile
    cfg = config(strategies=("shrinkChunks", "grow"))
    assert final(plan, tile, cfg, [ERR, MEM, ERR, MEM, OK]) == Done(tile)


# ---------------------------------------------------------------------- input error: 2


def test_exit_2_fails_at_once(plan_tile: tuple[Plan, Tile]) -> None:
    plan, tile = plan_tile
    d = final(plan, tile, config(backoff_limit=100), [BAD])
    assert isinstance(d, Fail)
    assert d.tile == tile
    assert "input error" in d.reason
    assert "exit 2" in d.reason
    assert "not retried" in d.reason


@pytest.mark.parametrize(
    "history",
    [
        [ERR],
        [ERR, ERR],
        [MEM],
        [OOM, ERR],
        [(None, False), (143, False)],
    ],
    ids=["after-1-retry", "after-2-retries", "after-shrink", "after-shrink-and-retry", "signals"],
)
def test_exit_2_fails_at_once_after_earlier_attempts(history: list[Outcome]) -> None:
    plan, tile = raster_plan()
    decisions, _ = drive(plan, tile, config(backoff_limit=10), [*history, BAD])
    assert all(isinstance(d, Launch) for d in decisions[:-1])
    assert isinstance(decisions[-1], Fail)
    assert "input error" in decisions[-1].reason


def test_exit_2_with_oom_kill_is_a_memory_failure_not_an_input_error() -> None:
    plan, tile = raster_plan()
    d = launch_of(final(plan, tile, config(), [(EXIT_INPUT, True)]))
    assert d.strategy == "shrinkChunks"


# --------------------------------------------------------------- retryable errors: backoff


@pytest.mark.parametrize("exit_code", [1, 143, None, 4, 255])
def test_other_exit_codes_are_retried_with_same_memory_and_scale(
    plan_tile: tuple[Plan, Tile], exit_code: int | None
) -> None:
    plan, tile = plan_tile
    d = final(plan, tile, config(backoff_base=2.5), [(exit_code, False)])
    assert d == Launch(tile, 1, tile.memory_request_bytes, 1.0, "retry", 2.5)


def test_retry_keeps_memory_and_chunk_scale_of_the_last_attempt() -> None:
    plan, tile = raster_plan()
    cfg = config(strategies=("shrinkChunks", "grow"))
    # shrink, then grow, then a plain error: the retry keeps both
    decisions, _ = drive(plan, tile, cfg, [MEM, MEM, ERR])
    shrink, grow, retry = (launch_of(d) for d in decisions[1:])
    assert shrink.chunk_scale == 0.5 and shrink.memory == tile.memory_request_bytes
    assert grow.chunk_scale == 0.5 and grow.memory == grown(tile.memory_request_bytes)
    assert retry.strategy == "retry"
    assert (retry.memory, retry.chunk_scale, retry.number) == (grow.memory, 0.5, 3)


def test_retry_of_arbitrary_attempt_copies_its_memory_and_scale() -> None:
    plan, tile = raster_plan()
    last = Attempt(tile.id, 7, 777 * MIB, 0.125, "retry", 1)
    d = launch_of(decide(plan, tile, [last], config(backoff_limit=5)))
    assert (d.number, d.memory, d.chunk_scale, d.strategy) == (8, 777 * MIB, 0.125, "retry")


def test_backoff_delays_double_and_cap() -> None:
    plan, tile = raster_plan()
    cfg = config(backoff_limit=8, backoff_base=0.5, backoff_max=5.0)
    decisions, _ = drive(plan, tile, cfg, [ERR] * 8)
    delays = [launch_of(d).delay_seconds for d in decisions[1:]]
    assert delays == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0, 5.0]
    assert [launch_of(d).number for d in decisions] == list(range(9))
    assert all(launch_of(d).strategy == "retry" for d in decisions[1:])


@pytest.mark.parametrize(
    ("retry", "base", "cap", "expected"),
    [
        (1, 1.0, 60.0, 1.0),
        (2, 1.0, 60.0, 2.0),
        (3, 1.0, 60.0, 4.0),
        (6, 1.0, 60.0, 32.0),
        (7, 1.0, 60.0, 60.0),
        (50, 1.0, 60.0, 60.0),
        (1, 10.0, 5.0, 5.0),
        (4, 0.25, 60.0, 2.0),
        (0, 3.0, 60.0, 3.0),
        (-1, 3.0, 60.0, 3.0),
        (5, 0.0, 60.0, 0.0),
    ],
)
def test_backoff_function(retry: int, base: float, cap: float, expected: float) -> None:
    result = backoff(retry, base, cap)
    assert result == expected
    assert isinstance(result, float)


def test_backoff_of_integer_arguments_is_a_float() -> None:
    assert backoff(3, 1, 60) == 4.0
    assert isinstance(backoff(3, 1, 60), float)


def test_backoff_with_a_very_high_retry_count_is_capped_not_an_overflow() -> None:
    assert backoff(1100, 1.0, 60.0) == 60.0
    plan, tile = raster_plan()
    last = Attempt(tile.id, 1099, tile.memory_request_bytes, 1.0, "retry", 1)
    history = [replace(last, number=i, strategy="retry") for i in range(1100)]
    d = launch_of(decide(plan, tile, history, config(backoff_limit=5000)))
    assert d.delay_seconds == 60.0


@pytest.mark.parametrize("limit", [0, 1, 2, 3, 6])
def test_backoff_limit_counts_retries(plan_tile: tuple[Plan, Tile], limit: int) -> None:
    plan, tile = plan_tile
    cfg = config(backoff_limit=limit)
    decisions, _ = drive(plan, tile, cfg, [ERR] * (limit + 1))
    retries = [d for d in decisions if isinstance(d, Launch) and d.strategy == "retry"]
    assert len(retries) == limit
    last = decisions[-1]
    assert isinstance(last, Fail)
    assert last.tile == tile
    assert "backoffLimit" in last.reason
    assert f"backoffLimit is {limit}" in last.reason
    assert f"failed {limit + 1} times" in last.reason


def test_backoff_limit_0_fails_on_first_error() -> None:
    plan, tile = raster_plan()
    d = final(plan, tile, config(backoff_limit=0), [(143, False)])
    assert isinstance(d, Fail)
    assert "backoffLimit is 0" in d.reason
    assert "exit 143" in d.reason


def test_backoff_limit_fail_reason_names_a_signal_exit() -> None:
    plan, tile = raster_plan()
    d = final(plan, tile, config(backoff_limit=0), [(None, False)])
    assert isinstance(d, Fail)
    assert "exit None" in d.reason


def test_memory_failures_do_not_count_toward_backoff_limit() -> None:
    plan, tile = raster_plan()
    cfg = config(backoff_limit=1, strategies=("grow", "grow", "grow"))
    # memory, memory, error: the error is the first retry, with the first delay
    decisions, _ = drive(plan, tile, cfg, [MEM, MEM, ERR])
    retry = launch_of(decisions[-1])
    assert retry.strategy == "retry"
    assert retry.delay_seconds == cfg.backoff_base
    assert retry.number == 3
    # then memory again still works, and the second error is over the limit
    decisions, _ = drive(plan, tile, cfg, [MEM, MEM, ERR, OOM])
    assert launch_of(decisions[-1]).strategy == "grow"
    d = final(plan, tile, cfg, [MEM, MEM, ERR, OOM, ERR])
    assert isinstance(d, Fail)
    assert "failed 2 times" in d.reason


def test_errors_before_and_after_memory_failures_add_up() -> None:
    plan, tile = raster_plan()
    cfg = config(backoff_limit=2, strategies=("grow", "grow"), backoff_base=1.0)
    decisions, _ = drive(plan, tile, cfg, [ERR, MEM, ERR])
    retry = launch_of(decisions[-1])
    assert retry.delay_seconds == 2.0  # the second retry
    assert isinstance(final(plan, tile, cfg, [ERR, MEM, ERR, ERR]), Fail)


def test_backoff_limit_exhausted_is_independent_of_memory_strategies_left() -> None:
    plan, tile = raster_plan()
    cfg = config(backoff_limit=0, strategies=DEFAULT_ORDER)
    d = final(plan, tile, cfg, [MEM, ERR])
    assert isinstance(d, Fail)
    assert "backoffLimit" in d.reason


# ------------------------------------------------------------------- memory: first step


@pytest.mark.parametrize(
    "outcome",
    [MEM, OOM, (0, True), (1, True), (None, True), (EXIT_INPUT, True)],
    ids=[
        "exit3",
        "oomkilled-137",
        "oomkilled-0",
        "oomkilled-1",
        "oomkilled-none",
        "oomkilled-2",
    ],
)
def test_memory_failure_first_shrinks_chunks(
    plan_tile: tuple[Plan, Tile], outcome: Outcome
) -> None:
    plan, tile = plan_tile
    d = final(plan, tile, config(), [outcome])
    assert d == Launch(tile, 1, tile.memory_request_bytes, policy.SHRINK_FACTOR, "shrinkChunks")
    assert d.delay_seconds == 0.0


def test_shrunk_scale_really_makes_a_smaller_chunk(plan_tile: tuple[Plan, Tile]) -> None:
    plan, tile = plan_tile
    d = launch_of(final(plan, tile, config(), [MEM]))
    smaller = resize_tile(plan, tile, d.chunk_scale)
    if tile.chunk is not None:
        assert smaller.chunk is not None
        assert smaller.chunk.pixels < tile.chunk.pixels
        assert smaller.chunk.width % BLOCK == 0 and smaller.chunk.height % BLOCK == 0
    else:
        assert smaller.batch_rows is not None and tile.batch_rows is not None
        assert smaller.batch_rows < tile.batch_rows
    assert smaller.estimated_peak_bytes < tile.estimated_peak_bytes


# ------------------------------------------------------------------- memory: split step


def test_second_memory_failure_splits_a_raster_into_block_aligned_quadrants() -> None:
    plan, tile = raster_plan()
    d = final(plan, tile, config(), [MEM, OOM])
    assert isinstance(d, Split)
    assert d.tile == tile
    assert [c.id for c in d.children] == [f"r0000c0000-q{i}" for i in range(4)]
    windows = [c.window for c in d.children]
    assert windows == [
        Window(0, 0, 1024, 1024),
        Window(1024, 0, 1024, 1024),
        Window(0, 1024, 1024, 1024),
        Window(1024, 1024, 1024, 1024),
    ]
    assert_covers(tile, d.children)


def assert_covers(parent: Tile, children: Sequence[Tile]) -> None:
    """The children's windows are block-aligned, disjoint and cover the parent exactly."""
    assert parent.window is not None
    pw = parent.window
    covered: set[tuple[int, int]] = set()
    total = 0
    for c in children:
        w = c.window
        assert w is not None
        assert c.fids is None
        assert c.file_index == parent.file_index
        assert w.col_off % BLOCK == 0 and w.row_off % BLOCK == 0
        assert pw.col_off <= w.col_off and w.col_off + w.width <= pw.col_off + pw.width
        assert pw.row_off <= w.row_off and w.row_off + w.height <= pw.row_off + pw.height
        # corners (in blocks) to check disjointness cheaply
        for r in range(w.row_off, w.row_off + w.height, BLOCK):
            for col in range(w.col_off, w.col_off + w.width, BLOCK):
                assert (r, col) not in covered
                covered.add((r, col))
        total += w.pixels
    assert total == pw.pixels


def test_split_children_are_sized_as_tiles_of_their_own() -> None:
    plan, tile = raster_plan()
    d = final(plan, tile, config(), [MEM, MEM])
    assert isinstance(d, Split)
    for c in d.children:
        assert c.chunk is not None and c.window is not None
        assert c.chunk.width <= c.window.width and c.chunk.height <= c.window.height
        assert c.estimated_peak_bytes <= tile.estimated_peak_bytes
        assert c.memory_request_bytes <= tile.memory_request_bytes
        assert c.chunks >= 1


def test_second_memory_failure_splits_a_vector_into_halves() -> None:
    plan, tile = vector_plan()
    d = final(plan, tile, config(), [MEM, (137, True)])
    assert isinstance(d, Split)
    assert [c.id for c in d.children] == ["f000000-h0", "f000000-h1"]
    h0, h1 = (c.fids for c in d.children)
    assert h0 == FeatureRange(1, 501, 500)
    assert h1 == FeatureRange(501, None, 500)
    assert_halves_cover(tile, d.children)


def assert_halves_cover(parent: Tile, children: Sequence[Tile]) -> None:
    assert parent.fids is not None
    h0, h1 = (c.fids for c in children)
    assert h0 is not None and h1 is not None
    assert h0.start == parent.fids.start
    assert h0.stop == h1.start
    assert h1.stop == parent.fids.stop
    assert h0.features + h1.features == parent.fids.features
    assert h0.features >= 1 and h1.features >= 1
    assert all(c.window is None and c.batch_rows is not None for c in children)


def test_vector_split_of_an_odd_bounded_range() -> None:
    sizing = vector_sizing()
    f = vector_file()
    tile = make_vector_tile(sizing, f, "f000001", FeatureRange(101, 202, 101))
    plan = Plan("j", "vector", "filter", "GeoParquet", "d", sizing, (f,), (tile,))
    d = final(plan, tile, config(strategies=("split",)), [MEM])
    assert isinstance(d, Split)
    assert [c.fids for c in d.children] == [
        FeatureRange(101, 151, 50),
        FeatureRange(151, 202, 51),
    ]
    assert_halves_cover(tile, d.children)


@pytest.mark.parametrize(
    ("window", "ids"),
    [
        (Window(0, 0, 2048, 2048), ["q0", "q1", "q2", "q3"]),
        (Window(0, 0, 1536, 1536), ["q0", "q1", "q2", "q3"]),  # three blocks: 1024 + 512
        (Window(512, 1024, 1024, 512), ["q0", "q1"]),  # one block high: left/right only
        (Window(1024, 0, 512, 1024), ["q0", "q2"]),  # one block wide: top/bottom only
        (Window(0, 1536, 2048, 300), ["q0", "q1"]),  # a partial-block edge row
        (Window(1536, 0, 512, 2048), ["q0", "q2"]),
    ],
)
def test_raster_split_shapes_cover_the_parent(window: Window, ids: list[str]) -> None:
    plan, tile = raster_plan(window, tile_id="r0001c0002")
    d = final(plan, tile, config(strategies=("split",)), [MEM])
    assert isinstance(d, Split)
    assert [c.id for c in d.children] == [f"r0001c0002-{q}" for q in ids]
    assert_covers(tile, d.children)


def test_split_child_memory_failures_start_their_own_strategy_sequence() -> None:
    plan, tile = raster_plan(bpp=BPP_STRIP)  # children's 1024x1024 chunks can halve
    cfg = config()
    split = final(plan, tile, cfg, [MEM, MEM])
    assert isinstance(split, Split)
    child = split.children[1]
    # a child starts afresh: initial launch, then its own shrinkChunks, split, grow
    decisions, _ = drive(plan, child, cfg, [MEM])
    first, second = decisions
    assert first == Launch(child, 0, child.memory_request_bytes, 1.0, "initial")
    assert second == Launch(child, 1, child.memory_request_bytes, 0.5, "shrinkChunks")
    grandchildren = final(plan, child, cfg, [MEM, MEM])
    assert isinstance(grandchildren, Split)
    assert [c.id for c in grandchildren.children] == [f"r0000c0000-q1-q{i}" for i in range(4)]
    assert_covers(child, grandchildren.children)


def test_split_child_of_a_vector_starts_its_own_sequence() -> None:
    plan, tile = vector_plan()
    split = final(plan, tile, config(), [MEM, MEM])
    assert isinstance(split, Split)
    child = split.children[0]
    assert launch_of(final(plan, child, config(), [OOM])).strategy == "shrinkChunks"
    again = final(plan, child, config(), [OOM, OOM])
    assert isinstance(again, Split)
    assert [c.id for c in again.children] == ["f000000-h0-h0", "f000000-h0-h1"]


def test_split_is_chosen_first_when_the_chunk_is_already_one_block() -> None:
    plan, tile = raster_plan(bpp=BPP_ONE_BLOCK)
    d = final(plan, tile, config(), [MEM])
    assert isinstance(d, Split)
    assert len(d.children) == 4


def test_split_children_resolve_through_the_plan() -> None:
    """An executor (or the worker) finds a child again by its id."""
    plan, tile = raster_plan()
    d = final(plan, tile, config(), [MEM, MEM])
    assert isinstance(d, Split)
    for c in d.children:
        assert plan.tile(c.id) == c


# -------------------------------------------------------------------- memory: grow step


def test_single_block_tile_skips_shrink_and_split_and_grows() -> None:
    plan, tile = single_block_raster()
    d = final(plan, tile, config(), [MEM])
    assert d == Launch(tile, 1, grown(tile.memory_request_bytes), 1.0, "grow")


def test_single_feature_vector_skips_shrink_and_split_and_grows() -> None:
    plan, tile = vector_plan(features=1)
    assert tile.batch_rows == 1
    d = final(plan, tile, config(), [OOM])
    assert d == Launch(tile, 1, grown(tile.memory_request_bytes), 1.0, "grow")


def test_default_order_on_a_single_block_tile_ends_in_fail_naming_strategies() -> None:
    plan, tile = single_block_raster()
    d = final(plan, tile, config(), [MEM, MEM])
    assert isinstance(d, Fail)
    assert d.tile == tile
    assert "shrinkChunks, split, grow" in d.reason
    assert "out of memory" in d.reason
    assert str(grown(tile.memory_request_bytes)) in d.reason  # the memory of the last run


def test_default_order_full_sequence_on_a_splittable_tile() -> None:
    """shrinkChunks → split for the tile; after the split the parent has no more attempts."""
    plan, tile = raster_plan()
    decisions, _ = drive(plan, tile, config(), [MEM, MEM])
    assert [type(d).__name__ for d in decisions] == ["Launch", "Launch", "Split"]
    assert launch_of(decisions[1]).strategy == "shrinkChunks"


def test_grow_multiplies_by_1_5_rounded_up_to_a_mib() -> None:
    plan, tile = single_block_raster()
    last = Attempt(tile.id, 0, 100 * MIB + 1, 1.0, "initial", EXIT_MEMORY)
    d = launch_of(decide(plan, tile, [last], config(strategies=("grow",), max_memory=10**12)))
    assert d.memory == 151 * MIB  # 150 MiB + 1.5 B → rounded up
    assert d.memory % MIB == 0
    last = replace(last, memory=100 * MIB)
    d = launch_of(decide(plan, tile, [last], config(strategies=("grow",), max_memory=10**12)))
    assert d.memory == 150 * MIB


def test_grow_keeps_the_chunk_scale() -> None:
    plan, tile = raster_plan()
    cfg = config(strategies=("shrinkChunks", "grow"))
    decisions, _ = drive(plan, tile, cfg, [MEM, MEM])
    g = launch_of(decisions[-1])
    assert (g.strategy, g.chunk_scale, g.number) == ("grow", 0.5, 2)


def test_grow_is_capped_at_max_memory() -> None:
    plan, tile = single_block_raster()
    req = tile.memory_request_bytes
    cap = req + 10 * MIB  # less than 1.5x
    cfg = config(strategies=("grow", "grow"), max_memory=cap)
    decisions, _ = drive(plan, tile, cfg, [MEM, MEM])
    assert launch_of(decisions[1]).memory == cap
    last = decisions[2]
    assert isinstance(last, Fail)  # at the cap: the second grow is skipped
    assert "grow, grow" in last.reason


def test_grow_without_max_memory_is_capped_at_4x_the_planned_request() -> None:
    plan, tile = single_block_raster()
    req = tile.memory_request_bytes
    cfg = config(strategies=("grow",) * 10)
    decisions, _ = drive(plan, tile, cfg, [MEM] * 5)
    memories = [launch_of(d).memory for d in decisions[:5]]
    expected = [req]
    while len(expected) < 5:
        expected.append(min(policy.DEFAULT_GROW_CAP * req, grown(expected[-1])))
    assert memories == expected
    assert memories[-1] == 4 * req
    assert isinstance(decisions[-1], Fail)  # the sixth grow would not grow


def test_grow_cap_is_relative_to_the_tile_request_not_the_last_attempt() -> None:
    plan, tile = single_block_raster()
    last = Attempt(tile.id, 3, 4 * tile.memory_request_bytes, 1.0, "grow", EXIT_MEMORY)
    assert isinstance(decide(plan, tile, [last], config(strategies=("grow",))), Fail)


def test_grow_is_capped_at_the_executor_memory_cap() -> None:
    plan, tile = single_block_raster()
    req = tile.memory_request_bytes
    cap = req + 3 * MIB
    d = launch_of(
        final(plan, tile, config(strategies=("grow",), max_memory=10 * req, memory_cap=cap), [MEM])
    )
    assert d.memory == cap
    d = launch_of(final(plan, tile, config(strategies=("grow",), memory_cap=cap), [MEM]))
    assert d.memory == cap


def test_max_memory_below_memory_cap_wins() -> None:
    plan, tile = single_block_raster()
    req = tile.memory_request_bytes
    cfg = config(strategies=("grow",), max_memory=req + MIB, memory_cap=10 * req)
    assert launch_of(final(plan, tile, cfg, [MEM])).memory == req + MIB


@pytest.mark.parametrize(
    ("max_memory", "memory_cap", "expected"),
    [
        (None, None, 4 * 300 * MIB),
        (1000 * MIB, None, 1000 * MIB),
        (None, 500 * MIB, 500 * MIB),
        (None, 5000 * MIB, 4 * 300 * MIB),
        (1000 * MIB, 700 * MIB, 700 * MIB),
        (700 * MIB, 1000 * MIB, 700 * MIB),
        (100 * MIB, None, 100 * MIB),  # maxMemory below the request: no growth at all
    ],
)
def test_grow_cap(max_memory: int | None, memory_cap: int | None, expected: int) -> None:
    _, tile = single_block_raster()
    tile = replace(tile, memory_request_bytes=300 * MIB)
    cfg = config(max_memory=max_memory, memory_cap=memory_cap)
    assert grow_cap(tile, cfg) == expected


def test_grow_at_the_cap_is_skipped_for_the_next_strategy() -> None:
    plan, tile = raster_plan()
    cfg = config(strategies=("grow", "shrinkChunks"), memory_cap=tile.memory_request_bytes)
    d = launch_of(final(plan, tile, cfg, [MEM]))
    assert (d.strategy, d.memory, d.chunk_scale) == ("shrinkChunks", tile.memory_request_bytes, 0.5)
    assert isinstance(final(plan, tile, cfg, [MEM, MEM]), Fail)


def test_grow_with_max_memory_below_the_derived_request_is_skipped() -> None:
    plan, tile = single_block_raster()
    cfg = config(strategies=("grow",), max_memory=tile.memory_request_bytes // 2)
    d = final(plan, tile, cfg, [OOM])
    assert isinstance(d, Fail)
    assert "tried: grow" in d.reason


def test_grow_never_shrinks_memory_when_last_attempt_is_above_the_cap() -> None:
    plan, tile = single_block_raster()
    last = Attempt(tile.id, 0, 10 * tile.memory_request_bytes, 1.0, "initial", EXIT_MEMORY)
    assert isinstance(decide(plan, tile, [last], config(strategies=("grow",))), Fail)


# --------------------------------------------------------------- memory: shrink step


def test_shrink_is_skipped_when_the_chunk_is_one_block() -> None:
    plan, tile = raster_plan(bpp=BPP_ONE_BLOCK)
    d = launch_of(final(plan, tile, config(strategies=("shrinkChunks", "grow")), [MEM]))
    assert d.strategy == "grow"
    assert d.chunk_scale == 1.0


def test_shrink_only_fails_when_the_chunk_is_one_block() -> None:
    plan, tile = single_block_raster()
    d = final(plan, tile, config(strategies=("shrinkChunks",)), [MEM])
    assert isinstance(d, Fail)
    assert "tried: shrinkChunks" in d.reason


def test_repeated_shrink_halves_the_scale_each_time() -> None:
    plan, tile = raster_plan()  # a 2048x2048 chunk: 2048x1024, 2048x512, 1024x512, …
    cfg = config(strategies=("shrinkChunks",) * 3)
    decisions, _ = drive(plan, tile, cfg, [MEM, MEM, MEM])
    scales = [launch_of(d).chunk_scale for d in decisions[1:]]
    assert scales == [0.5, 0.25, 0.125]
    chunks = [resize_tile(plan, tile, s).chunk for s in [1.0, *scales]]
    pixels = [c.pixels for c in chunks if c is not None]
    assert pixels == sorted(pixels, reverse=True) and len(set(pixels)) == 4
    assert all(launch_of(d).memory == tile.memory_request_bytes for d in decisions)


def test_repeated_vector_shrink_halves_batch_rows() -> None:
    plan, tile = vector_plan()
    cfg = config(strategies=("shrinkChunks",) * 3)
    decisions, _ = drive(plan, tile, cfg, [MEM, MEM, MEM])
    rows = [resize_tile(plan, tile, launch_of(d).chunk_scale).batch_rows for d in decisions]
    assert rows == [1000, 500, 250, 125]


def test_repeated_shrink_is_skipped_once_the_chunk_stops_shrinking() -> None:
    plan, tile = raster_plan(bpp=BPP_STRIP)  # 2048x512 → 1024x512 → 512x512 → 512x512
    cfg = config(strategies=("shrinkChunks", "shrinkChunks", "shrinkChunks", "grow"))
    decisions, _ = drive(plan, tile, cfg, [MEM, MEM, MEM])
    assert launch_of(decisions[1]).chunk_scale == 0.5
    assert launch_of(decisions[2]).chunk_scale == 0.25
    third = launch_of(decisions[3])
    assert third.strategy == "grow"  # the 0.125 chunk would be the same 512x512 block
    assert third.chunk_scale == 0.25


def test_repeated_vector_shrink_is_skipped_once_batch_rows_stop_shrinking() -> None:
    plan, tile = vector_plan(features=2)  # batch rows 2 → 1 → 1
    cfg = config(strategies=("shrinkChunks", "shrinkChunks"))
    d = final(plan, tile, cfg, [MEM, MEM])
    assert isinstance(d, Fail)


@pytest.mark.parametrize(
    "window",
    [Window(0, 0, 1024, 1024), Window(1024, 1536, 1024, 512)],
    ids=["child-sized-tile", "edge-tile"],
)
def test_shrink_halves_a_chunk_smaller_than_its_budget(window: Window) -> None:
    plan, tile = raster_plan(window)  # 64 MiB budget at 16 B/px: 4 Mpx, more than the tile
    assert tile.chunk is not None and tile.window is not None
    assert tile.chunk.pixels == tile.window.pixels > BLOCK * BLOCK  # one chunk, 2+ blocks
    d = launch_of(final(plan, tile, config(), [MEM]))
    assert d.strategy == "shrinkChunks"
    smaller = resize_tile(plan, tile, d.chunk_scale).chunk
    assert smaller is not None and smaller.pixels < tile.chunk.pixels


def test_shrink_after_a_grow_starts_from_the_last_scale() -> None:
    plan, tile = raster_plan()
    cfg = config(strategies=("shrinkChunks", "grow", "shrinkChunks"))
    decisions, _ = drive(plan, tile, cfg, [MEM, MEM, MEM])
    assert [launch_of(d).chunk_scale for d in decisions] == [1.0, 0.5, 0.5, 0.25]
    assert [launch_of(d).strategy for d in decisions] == [
        "initial",
        "shrinkChunks",
        "grow",
        "shrinkChunks",
    ]


# ----------------------------------------------------------- strategy order and lists


def test_empty_strategy_list_fails_at_once_on_memory(plan_tile: tuple[Plan, Tile]) -> None:
    plan, tile = plan_tile
    for outcome in (MEM, OOM):
        d = final(plan, tile, config(strategies=()), [outcome])
        assert isinstance(d, Fail)
        assert "tried: none" in d.reason
        assert "out of memory" in d.reason


@pytest.mark.parametrize("exit_code", [137, -9, None, 143])
def test_disruption_relaunches_as_it_was_without_memory_strategy_or_backoff(
    exit_code: int | None,
) -> None:
    """A kill that is not a confirmed OOM (eviction, preemption, SIGKILL, node loss): the
    same memory and chunk again, never shrink/split/grow, not counted against backoffLimit."""
    plan, tile = raster_plan()
    cfg = config(backoff_limit=0, strategies=DEFAULT_ORDER)
    attempts = [
        Attempt(
            tile.id,
            n,
            tile.memory_request_bytes,
            1.0,
            "initial" if n == 0 else "disrupted",
            exit_code,
            oom_killed=False,
            disrupted=True,
        )
        for n in range(3)
    ]
    d = policy.decide(plan, tile, attempts, cfg)
    assert d == Launch(tile, 3, tile.memory_request_bytes, 1.0, "disrupted")
    assert attempts[-1].failure == "disruption"
    # bounded: a tile that is disrupted every time ends
    many = [
        Attempt(tile.id, n, tile.memory_request_bytes, 1.0, "disrupted", 137, disrupted=True)
        for n in range(policy.MAX_DISRUPTIONS + 1)
    ]
    assert isinstance(policy.decide(plan, tile, many, cfg), Fail)


def test_empty_strategy_list_still_retries_errors() -> None:
    plan, tile = raster_plan()
    assert launch_of(final(plan, tile, config(strategies=()), [ERR])).strategy == "retry"


def test_repeated_grow_applies_once_each_in_order() -> None:
    plan, tile = single_block_raster()
    req = tile.memory_request_bytes
    cfg = config(strategies=("grow", "grow", "grow"), max_memory=100 * req)
    decisions, _ = drive(plan, tile, cfg, [MEM, MEM, MEM])
    growths = [launch_of(d) for d in decisions[1:]]
    assert [g.strategy for g in growths] == ["grow"] * 3
    assert [g.number for g in growths] == [1, 2, 3]
    assert [g.memory for g in growths] == [grown(req), grown(grown(req)), grown(grown(grown(req)))]
    last = final(plan, tile, cfg, [MEM, MEM, MEM, MEM])
    assert isinstance(last, Fail)
    assert "grow, grow, grow" in last.reason


def test_custom_order_grow_then_shrink() -> None:
    plan, tile = raster_plan()
    cfg = config(strategies=("grow", "shrinkChunks"))
    decisions, _ = drive(plan, tile, cfg, [OOM, MEM])
    g, s = (launch_of(d) for d in decisions[1:])
    assert (g.strategy, g.memory, g.chunk_scale) == ("grow", grown(tile.memory_request_bytes), 1.0)
    assert (s.strategy, s.memory, s.chunk_scale) == ("shrinkChunks", g.memory, 0.5)
    assert isinstance(final(plan, tile, cfg, [OOM, MEM, MEM]), Fail)


def test_custom_order_split_first() -> None:
    plan, tile = raster_plan()
    d = final(plan, tile, config(strategies=("split", "grow")), [MEM])
    assert isinstance(d, Split)


def test_custom_order_grow_then_split() -> None:
    plan, tile = raster_plan()
    cfg = config(strategies=("grow", "split"))
    assert launch_of(final(plan, tile, cfg, [MEM])).strategy == "grow"
    assert isinstance(final(plan, tile, cfg, [MEM, MEM]), Split)


def test_skipped_strategy_is_not_retried_later() -> None:
    """[split, grow] on a single-block tile: grow, then fail — never grow again."""
    plan, tile = single_block_raster()
    cfg = config(strategies=("split", "grow"), max_memory=100 * tile.memory_request_bytes)
    decisions, _ = drive(plan, tile, cfg, [MEM, MEM])
    assert launch_of(decisions[1]).strategy == "grow"
    last = decisions[2]
    assert isinstance(last, Fail)
    assert "split, grow" in last.reason


def test_skipped_shrink_is_not_retried_after_a_grow() -> None:
    plan, tile = single_block_raster()
    cfg = config(strategies=("shrinkChunks", "grow", "shrinkChunks"), max_memory=10**12)
    decisions, _ = drive(plan, tile, cfg, [MEM, MEM])
    assert launch_of(decisions[1]).strategy == "grow"
    assert isinstance(decisions[2], Fail)


def test_retry_attempts_do_not_move_the_strategy_position() -> None:
    plan, tile = raster_plan()
    cfg = config(backoff_limit=5)
    decisions, _ = drive(plan, tile, cfg, [MEM, ERR, ERR, MEM])
    assert [type(d).__name__ for d in decisions] == ["Launch"] * 4 + ["Split"]
    assert [launch_of(d).strategy for d in decisions[:4]] == [
        "initial",
        "shrinkChunks",
        "retry",
        "retry",
    ]
    # retries after the shrink keep the shrunk chunk
    assert launch_of(decisions[3]).chunk_scale == 0.5


def test_memory_failure_during_a_retry_runs_the_first_strategy() -> None:
    plan, tile = raster_plan()
    decisions, _ = drive(plan, tile, config(), [ERR, MEM])
    d = launch_of(decisions[-1])
    assert (d.strategy, d.number, d.chunk_scale, d.delay_seconds) == ("shrinkChunks", 2, 0.5, 0)


def test_strategy_of_an_earlier_attempt_not_in_the_list_ends_the_sequence() -> None:
    """A history from another configuration (e.g. the spec was edited) does not crash."""
    plan, tile = raster_plan()
    history = [
        Attempt(tile.id, 0, tile.memory_request_bytes, 1.0, "initial", EXIT_MEMORY),
        Attempt(tile.id, 1, grown(tile.memory_request_bytes), 1.0, "grow", EXIT_MEMORY),
    ]
    d = decide(plan, tile, history, config(strategies=("shrinkChunks", "split")))
    assert isinstance(d, Fail)


def test_decide_does_not_mutate_the_history() -> None:
    plan, tile = raster_plan()
    history = [Attempt(tile.id, 0, tile.memory_request_bytes, 1.0, "initial", EXIT_MEMORY)]
    snapshot = list(history)
    decide(plan, tile, history, config())
    decide(plan, tile, tuple(history), config())
    assert history == snapshot


# ----------------------------------------------------------------------- PolicyConfig


def test_policy_config_from_spec() -> None:
    from gisjob_worker.spec import GisJobSpec

    spec = GisJobSpec.model_validate(
        {
            "input": {"uri": "/data/in.tif"},
            "operation": {"name": "scale", "params": {}},
            "output": {"uri": "/data/out"},
            "resources": {"maxMemory": "2Gi"},
            "retry": {"backoffLimit": 5, "onOutOfMemory": ["grow", "split"]},
        }
    )
    cfg = PolicyConfig.from_spec(spec, memory_cap=3 * 1024 * MIB, backoff_base=0.1, backoff_max=2)
    assert cfg == PolicyConfig(5, ("grow", "split"), 2 * 1024 * MIB, 3 * 1024 * MIB, 0.1, 2)


def test_policy_config_from_spec_defaults() -> None:
    from gisjob_worker.spec import GisJobSpec

    spec = GisJobSpec.model_validate(
        {
            "input": {"uri": "/data/in.tif"},
            "operation": {"name": "scale", "params": {}},
            "output": {"uri": "/data/out"},
        }
    )
    cfg = PolicyConfig.from_spec(spec)
    assert cfg == PolicyConfig(3, DEFAULT_ORDER, None, None, 1.0, 60.0)


# ------------------------------------------------------------------------- job_outcome


@pytest.mark.parametrize(
    ("states", "fail_fast", "finished", "succeeded", "failed"),
    [
        ([], False, True, True, ()),
        ([("a", "succeeded"), ("b", "succeeded")], False, True, True, ()),
        ([("a", "succeeded"), ("b", "pending")], False, False, False, ()),
        ([("a", "succeeded"), ("b", "running")], False, False, False, ()),
        ([("a", "failed"), ("b", "running")], False, False, False, ("a",)),
        ([("a", "failed"), ("b", "pending")], False, False, False, ("a",)),
        ([("a", "failed"), ("b", "succeeded"), ("c", "failed")], False, True, False, ("a", "c")),
        # a split tile counts through its children
        ([("a", "split"), ("a-q0", "succeeded"), ("a-q1", "succeeded")], False, True, True, ()),
        ([("a", "split"), ("a-q0", "succeeded"), ("a-q1", "running")], False, False, False, ()),
        ([("a", "split"), ("a-q0", "failed")], False, True, False, ("a-q0",)),
        # fail fast: finished as soon as nothing runs, pending tiles notwithstanding
        ([("a", "failed"), ("b", "pending")], True, True, False, ("a",)),
        ([("a", "failed"), ("b", "running")], True, False, False, ("a",)),
        ([("a", "failed"), ("b", "succeeded")], True, True, False, ("a",)),
        # fail fast without a failure changes nothing
        ([("a", "succeeded"), ("b", "pending")], True, False, False, ()),
        ([("a", "succeeded")], True, True, True, ()),
    ],
)
def test_job_outcome(
    states: list[tuple[str, str]],
    fail_fast: bool,
    finished: bool,
    succeeded: bool,
    failed: tuple[str, ...],
) -> None:
    out = job_outcome(states, fail_fast=fail_fast)
    assert out == policy.JobOutcome(finished, succeeded, failed)


def test_job_outcome_accepts_a_generator() -> None:
    out = job_outcome((f"t{i}", "succeeded") for i in range(3))
    assert out.finished and out.succeeded


# ------------------------------------------------------------- property-style histories


def random_case(rng: random.Random) -> tuple[Plan, Tile, PolicyConfig]:
    kind = rng.choice(["raster", "raster-strip", "raster-block", "single", "vector", "vec2"])
    if kind == "raster":
        plan, tile = raster_plan(memory=rng.choice([None, 1024 * MIB, 2048 * MIB]))
    elif kind == "raster-strip":
        plan, tile = raster_plan(bpp=BPP_STRIP)
    elif kind == "raster-block":
        plan, tile = raster_plan(bpp=BPP_ONE_BLOCK)
    elif kind == "single":
        plan, tile = single_block_raster(rng.choice([BPP_WHOLE_TILE, BPP_ONE_BLOCK]))
    elif kind == "vector":
        plan, tile = vector_plan(rng.choice([1000, 7, 1]))
    else:
        plan, tile = vector_plan(2, memory=rng.choice([None, 1024 * MIB]))
    names = ["shrinkChunks", "split", "grow"]
    strategies = tuple(rng.choice(names) for _ in range(rng.randint(0, 5)))
    req = tile.memory_request_bytes
    cfg = config(
        backoff_limit=rng.randint(0, 4),
        strategies=strategies,
        max_memory=rng.choice([None, req // 2, req, req + 7 * MIB, 3 * req, 10 * req]),
        memory_cap=rng.choice([None, req, 2 * req + 5 * MIB, 5 * req]),
        backoff_base=rng.choice([0.0, 0.5, 1.0, 10.0]),
        backoff_max=rng.choice([1.0, 60.0, 300.0]),
    )
    return plan, tile, cfg


def random_outcome(rng: random.Random) -> tuple[int | None, bool, bool]:
    """(exit code, OOM killed, disrupted): disruptions as the operator sees them (evicted
    with no exit code, SIGTERM from a drain, 137 without OOMKilled) among the rest, and an
    OOM kill that also carries a disruption mark (the OOM wins)."""
    plain: list[Outcome] = [OK, MEM, MEM, OOM, (0, True), ERR, ERR, (143, False), BAD]
    disrupted = [(137, False), (None, False), (143, False), (137, True)]
    if rng.random() < 0.25:
        exit_code, oom = rng.choice(disrupted)
        return exit_code, oom, exit_code != 137 or not oom or rng.random() < 0.5
    exit_code, oom = rng.choice([*plain, (137, False), (None, False)])
    return exit_code, oom, False


def check_history(rng: random.Random, seen: set[str] | None = None) -> int:
    """Run one tile (and, after a split, one random child) to the end, checking invariants.
    Returns how many decisions were made; ``seen`` collects the launch strategies and the
    failure kinds that ended tiles."""
    seen = set() if seen is None else seen
    plan, tile, cfg = random_case(rng)
    made = 0
    for _generation in range(4):
        attempts: list[Attempt] = []
        cap = grow_cap(tile, cfg)
        for _ in range(60):
            d = decide(plan, tile, attempts, cfg)
            made += 1
            assert d.tile == tile
            last = attempts[-1] if attempts else None
            if last is not None and last.exit_code == EXIT_INPUT and not last.oom_killed:
                assert isinstance(d, Fail), "launched again after an input error"
            if isinstance(d, Launch):
                expected_number = 0 if last is None else last.number + 1
                assert d.number == expected_number
                assert 0.0 < d.chunk_scale <= 1.0
                assert d.memory <= max(tile.memory_request_bytes, cap)
                assert d.memory % MIB == 0 or d.memory in (cfg.max_memory, cfg.memory_cap)
                assert 0.0 <= d.delay_seconds <= max(cfg.backoff_max, 0.0)
                if last is None:
                    assert d.strategy == "initial"
                    assert d.memory == tile.memory_request_bytes
                else:
                    assert last.failure in ("memory", "error", "disruption")
                    assert d.chunk_scale <= last.chunk_scale
                    assert d.memory >= last.memory
                    if last.oom_killed:  # a confirmed OOM is never a disruption
                        assert last.failure == "memory"
                    if d.strategy == "disrupted":
                        # relaunched as it was: no memory strategy, no backoff
                        assert last.failure == "disruption"
                        assert (d.memory, d.chunk_scale) == (last.memory, last.chunk_scale)
                        assert d.delay_seconds == 0.0
                    elif d.strategy == "retry":
                        assert last.failure == "error"
                        assert (d.memory, d.chunk_scale) == (last.memory, last.chunk_scale)
                    else:
                        assert last.failure == "memory"
                        assert d.strategy in cfg.strategies
                        assert d.delay_seconds == 0.0
                    if d.strategy == "grow":
                        assert last.memory < d.memory <= cap
                    if d.strategy == "shrinkChunks":
                        assert d.chunk_scale == last.chunk_scale * policy.SHRINK_FACTOR
                # disruptions never count against backoffLimit (they have their own bound)
                retries = [a for a in attempts if a.failure == "error"]
                assert len(retries) <= cfg.backoff_limit
                disruptions = [a for a in attempts if a.failure == "disruption"]
                assert len(disruptions) <= policy.MAX_DISRUPTIONS
                # every strategy entry is used at most once
                applied = [a.strategy for a in attempts if a.strategy in ("shrinkChunks", "grow")]
                if d.strategy in ("shrinkChunks", "grow"):
                    applied.append(d.strategy)
                for s in set(applied):
                    assert applied.count(s) <= cfg.strategies.count(s)
                seen.add(d.strategy)
                exit_code, oom, disrupted = random_outcome(rng)
                attempts.append(ran(d, exit_code, oom, disrupted))
                continue
            if isinstance(d, Done):
                assert last is not None and last.failure is None
                return made
            if isinstance(d, Fail):
                assert last is not None and last.failure is not None
                assert d.reason
                if last.failure == "disruption":
                    assert sum(a.failure == "disruption" for a in attempts) > (
                        policy.MAX_DISRUPTIONS
                    )
                seen.add(f"fail:{last.failure}")
                return made
            assert isinstance(d, Split)
            assert last is not None and last.failure == "memory"
            assert "split" in cfg.strategies
            assert d.children
            if tile.window is not None:
                assert_covers(tile, d.children)
            else:
                assert_halves_cover(tile, d.children)
            tile = rng.choice(d.children)
            break
        else:
            pytest.fail(f"no end after 60 decisions for {tile.id} with {cfg}")
    return made


def test_random_histories_keep_the_invariants() -> None:
    rng = random.Random(20240611)
    seen: set[str] = set()
    total = sum(check_history(rng, seen) for _ in range(400))
    assert total > 1000  # the loop really explored something
    assert {"initial", "retry", "disrupted", "shrinkChunks", "grow"} <= seen, seen
    assert {"fail:input", "fail:error", "fail:memory"} <= seen, seen


def test_random_arbitrary_histories_never_raise() -> None:
    """Histories no executor would produce (numbers, memories, scales out of order) still
    get a decision, never an exception."""
    rng = random.Random(7)
    strategies: list[policy.Strategy] = [
        "initial",
        "retry",
        "disrupted",
        "shrinkChunks",
        "split",
        "grow",
    ]
    for _ in range(300):
        plan, tile, cfg = random_case(rng)
        history = [
            Attempt(
                tile=tile.id,
                number=rng.randint(0, 50),
                memory=rng.randint(1, 8 * tile.memory_request_bytes),
                chunk_scale=rng.choice([1.0, 0.5, 0.25, 1 / 1024, 1e-9]),
                strategy=rng.choice(strategies),
                exit_code=rng.choice([0, 1, 2, 3, 137, 143, None, -9]),
                oom_killed=rng.random() < 0.2,
                disrupted=rng.random() < 0.2,
            )
            for _ in range(rng.randint(1, 12))
        ]
        d = decide(plan, tile, history, cfg)
        assert isinstance(d, Launch | Split | Done | Fail)
        if isinstance(d, Launch):
            assert d.number == history[-1].number + 1
            assert d.memory <= max(history[-1].memory, grow_cap(tile, cfg))
        if history[-1].exit_code == EXIT_INPUT and not history[-1].oom_killed:
            assert isinstance(d, Fail)


def test_backoff_is_monotonic_and_bounded() -> None:
    rng = random.Random(3)
    for _ in range(200):
        base = rng.choice([0.0, 0.1, 1.0, 3.0])
        cap = rng.choice([0.5, 10.0, 60.0])
        delays = [backoff(n, base, cap) for n in range(1, 40)]
        assert delays == sorted(delays)
        assert all(0.0 <= x <= cap for x in delays)
        assert delays[0] == min(base, cap)
        assert all(math.isfinite(x) for x in delays)
