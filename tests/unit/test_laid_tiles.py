"""A plan's tiles are laid on demand: equal to laying them all, and flat in memory whatever
their number (the operator keeps a plan per job it runs)."""

from __future__ import annotations

import dataclasses
import tracemalloc

import pytest
from planbuilders import raster_file, raster_sizing, vector_file, vector_sizing

from gisjob_worker import plandesc
from gisjob_worker.plan import ChainedTiles, Plan, file_tiles, make_raster_tile, make_vector_tile
from gisjob_worker.tiles import feature_ranges, raster_grid


def test_raster_tiles_equal_laying_every_tile() -> None:
    sizing, f = raster_sizing(), raster_file(3000, 2100, block=512)
    laid = file_tiles(sizing, f, 1000, 1, multi=False)
    eager = [
        make_raster_tile(sizing, f, f"r{r:04d}c{c:04d}", w)
        for r, c, w in raster_grid(3000, 2100, 1000, 512, 512)
    ]
    assert len(laid) == len(eager) == 9
    assert list(laid) == eager and laid == eager and laid == tuple(eager)
    assert laid[-1] == eager[-1] and laid[2:4] == eager[2:4]
    with pytest.raises(IndexError):
        laid[9]
    for i, t in enumerate(eager):
        assert laid.index_of(t.id) == i
    assert laid.index_of("r0009c0000") is None and laid.index_of("r0000c0000-q1") is None
    assert laid.index_of("i0001-r0000c0000") is None and laid.index_of("nonsense") is None


def test_vector_and_multi_file_tiles() -> None:
    sizing = vector_sizing()
    f = vector_file(2500)
    laid = file_tiles(sizing, f, 1, 1000, multi=False)
    eager = [
        make_vector_tile(sizing, f, f"f{k:06d}", rng)
        for k, rng in enumerate(feature_ranges(f.first_fid, 2500, 1000))
    ]
    assert laid == eager and [t.chunks for t in laid] == [t.chunks for t in eager]
    # two files: ids carry the file index; indexes run on across files
    g = dataclasses.replace(f, index=1, features=1200)
    both = ChainedTiles(
        [file_tiles(sizing, f, 1, 1000, multi=True), file_tiles(sizing, g, 1, 1000, multi=True)]
    )
    assert [t.id for t in both] == [
        "i0000-f000000", "i0000-f000001", "i0000-f000002", "i0001-f000000", "i0001-f000001",
    ]  # fmt: skip
    assert both.index_of("i0001-f000001") == 4
    assert both[4].fids == feature_ranges(g.first_fid, 1200, 1000)[1]
    assert both.index_of("f000001") is None


def test_a_million_tile_plan_costs_no_memory_per_tile() -> None:
    """From a descriptor to a tile tree, a few lookups and the first open leaves: the Python
    heap grows by kilobytes, not by the ~300 bytes a tile object costs (300 MB here)."""
    from gisjob_operator.progress import Progress
    from gisjob_operator.reconcile import TileTree, open_leaves

    sizing, f = raster_sizing(), raster_file(1000 * 512, block=512)
    plan = Plan("j", "raster", "scale", "COG", "d" * 16, sizing, (f,),
                file_tiles(sizing, f, 512, 1, multi=False))  # fmt: skip
    text, sha = plandesc.encode(plandesc.descriptor(plan, 512, 1))
    tracemalloc.start()
    try:
        got = plandesc.from_descriptor(plandesc.decode(text, sha), 2_000_000)
        tree = TileTree(got)
        progress = Progress(completed=set(range(0, 1000, 2)))
        first = [t.id for _, t in zip(range(3), open_leaves(tree, progress), strict=False)]
        middle = got.tile("r0500c0500")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(got.tiles) == 1_000_000
    assert first == ["r0000c0001", "r0000c0003", "r0000c0005"]
    assert middle.window is not None and middle.window.col_off == 500 * 512
    assert got.index_of("r0999c0999") == 999_999
    assert peak < 16 * 1024**2, peak  # laid eagerly: ~300 MB


@pytest.mark.parametrize(
    ("width", "height", "tile"), [(3000, 2100, 1000), (2048, 2048, 1024), (512, 100, 1024)]
)
def test_aggregates_by_size_equal_every_tile(width: int, height: int, tile: int) -> None:
    """max/sum of requests come from one tile of each size, times how many share it."""
    sizing, f = raster_sizing(), raster_file(width, height, block=512)
    plan = Plan("j", "raster", "scale", "COG", "d" * 16, sizing, (f,),
                file_tiles(sizing, f, tile, 1, multi=False))  # fmt: skip
    every = list(plan.tiles)
    assert sum(n for _, n in plan.by_size()) == len(every)
    assert plan.max_request == max(t.memory_request_bytes for t in every)
    assert plan.max_estimate == max(t.estimated_peak_bytes for t in every)
    assert plan.sum_requests == sum(t.memory_request_bytes for t in every)
    vs, vf = vector_sizing(), vector_file(2500)
    vplan = Plan("j", "vector", "filter", "GeoParquet", "d" * 16, vs, (vf,),
                 file_tiles(vs, vf, 1, 1000, multi=False))  # fmt: skip
    assert vplan.sum_requests == sum(t.memory_request_bytes for t in vplan.tiles)
    assert sum(n for _, n in vplan.by_size()) == len(vplan.tiles) == 3


def test_open_count_and_membership_equal_walking_the_open_leaves() -> None:
    """The reconcile counts and tests open leaves without laying them: both agree with
    walking :func:`open_leaves`, with splits (nested too), done and failed sub-tiles."""
    import random

    from gisjob_operator.progress import Progress
    from gisjob_operator.reconcile import OpenTiles, TileTree, open_count, open_leaves

    sizing, f = raster_sizing(), raster_file(40 * 512, 30 * 512, block=256)
    plan = Plan("j", "raster", "scale", "COG", "d" * 16, sizing, (f,),
                file_tiles(sizing, f, 512, 1, multi=False))  # fmt: skip
    rng = random.Random(7)
    for _ in range(20):
        tree = TileTree(plan)
        n = len(plan.tiles)
        p = Progress(
            completed=set(rng.sample(range(n), rng.randrange(n))),
        )
        p.failed = set(rng.sample(sorted(set(range(n)) - p.completed), 5))
        unresolved = sorted(set(range(n)) - p.completed - p.failed)
        for i in rng.sample(unresolved, 3):
            parent = plan.tiles[i]
            p.split.add(parent.id)
            kids = tree.children(parent)
            p.sub_done.add(kids[0].id)
            p.sub_failed.add(kids[1].id)
            p.split.add(kids[2].id)  # a nested split: its quadrants are open leaves
            tree.children(kids[2])
        walked = [t.id for t in open_leaves(tree, p)]
        assert open_count(tree, p) == len(walked)
        members = OpenTiles(tree, p)
        assert all(t in members for t in walked)
        closed = {plan.tiles[i].id for i in p.completed | p.failed} | p.split | p.sub_done
        assert not any(t in members for t in closed)
