"""Tile geometry: block-aligned grids and chunks, splits, feature ranges, tile ids."""

from __future__ import annotations

import itertools
import math
import re

import numpy as np
import pytest

from gisjob_worker.memory import ChunkShape
from gisjob_worker.tiles import (
    FeatureRange,
    FidBoundaries,
    SampledFidBoundaries,
    TileId,
    Window,
    chunk_count,
    chunk_windows,
    feature_ranges,
    parse_tile_id,
    raster_tile_id,
    split_range,
    split_window,
    tile_edge,
    vector_tile_id,
)

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def raster_grid(
    width: int, height: int, tile_size: int, bw: int, bh: int
) -> list[tuple[int, int, Window]]:
    """(row, col, window) of every planned tile, as the plan lays them (RasterTiles)."""
    from planbuilders import raster_sizing

    from gisjob_worker.plan import RasterFile, RasterOutput, RasterTiles

    f = RasterFile(0, "/x.tif", width, height, 1, bw, bh, (1,), 2, 8, RasterOutput(1, "uint8", 0))
    laid = RasterTiles(raster_sizing(), f, tile_size, None)
    out = []
    for t in laid:
        tid = parse_tile_id(t.id)
        assert t.window is not None and tid.row is not None and tid.col is not None
        assert laid.index_of(t.id) == tid.row * laid.cols + tid.col
        out.append((tid.row, tid.col, t.window))
    return out


def coverage(shape: tuple[int, int], windows: list[Window]) -> np.ndarray:
    """How many windows cover each pixel of a (height, width) area."""
    counts = np.zeros(shape, dtype=np.int32)
    for w in windows:
        assert w.width > 0
        assert w.height > 0
        counts[w.row_off : w.row_off + w.height, w.col_off : w.col_off + w.width] += 1
    return counts


# ---------------------------------------------------------------------------- grids


@pytest.mark.parametrize(
    ("tile_size", "block", "edge"),
    [
        (1000, 512, 1024),
        (4096, 512, 4096),
        (4096, 256, 4096),
        (1300, 512, 1536),
        (700, 512, 512),
        (100, 512, 512),
        (1, 256, 256),
        (256, 256, 256),
        (4096, 10_000, 10_000),  # a strip-organised file: one block is the whole width
        (50, 1, 50),
    ],
)
def test_tile_edge_rounds_to_nearest_block_multiple(tile_size: int, block: int, edge: int) -> None:
    assert tile_edge(tile_size, block) == edge


def test_tile_size_1000_block_512_gives_1024_tiles() -> None:
    tiles = raster_grid(3000, 2100, 1000, 512, 512)
    assert [(r, c) for r, c, _ in tiles][:4] == [(0, 0), (0, 1), (0, 2), (1, 0)]
    assert len(tiles) == 3 * 3
    assert tiles[0][2] == Window(0, 0, 1024, 1024)
    assert tiles[1][2] == Window(1024, 0, 1024, 1024)
    assert tiles[2][2] == Window(2048, 0, 3000 - 2048, 1024)  # edge tile
    assert tiles[-1][2] == Window(2048, 2048, 952, 52)


GRID_CASES = list(
    itertools.product(
        [(1, 1), (64, 64), (100, 37), (512, 512), (513, 1025), (1000, 999), (1500, 300)],
        [1, 64, 100, 256, 1000],
        [(16, 16), (64, 64), (256, 256), (128, 64), (512, 16)],
    )
)


@pytest.mark.parametrize(("size", "tile_size", "block"), GRID_CASES)
def test_raster_grid_covers_once_block_aligned(
    size: tuple[int, int], tile_size: int, block: tuple[int, int]
) -> None:
    width, height = size
    bw, bh = block
    tiles = raster_grid(width, height, tile_size, bw, bh)
    tw, th = tile_edge(tile_size, bw), tile_edge(tile_size, bh)
    assert len(tiles) == math.ceil(width / tw) * math.ceil(height / th)
    windows = [w for _, _, w in tiles]
    assert np.all(coverage((height, width), windows) == 1)
    ids = set()
    for r, c, w in tiles:
        assert w.col_off % bw == 0
        assert w.row_off % bh == 0
        assert (w.col_off, w.row_off) == (c * tw, r * th)
        # interior tiles are full; only the last row/column may be smaller
        assert w.width == tw or w.col_off + w.width == width
        assert w.height == th or w.row_off + w.height == height
        assert w.width <= tw
        assert w.height <= th
        ids.add(raster_tile_id(None, r, c))
    assert len(ids) == len(tiles)


# --------------------------------------------------------------------------- chunks


CHUNK_CASES = [
    (Window(0, 0, 1024, 1024), ChunkShape(1024, 128)),
    (Window(1024, 2048, 1024, 1024), ChunkShape(256, 64)),
    (Window(2048, 0, 952, 52), ChunkShape(512, 64)),
    (Window(0, 0, 100, 37), ChunkShape(100, 37)),
    (Window(512, 512, 1000, 999), ChunkShape(384, 128)),
    (Window(64, 0, 1, 1), ChunkShape(64, 64)),
]


@pytest.mark.parametrize(("tile", "chunk"), CHUNK_CASES)
def test_chunk_windows_cover_tile_once(tile: Window, chunk: ChunkShape) -> None:
    wins = list(chunk_windows(tile, chunk))
    assert len(wins) == chunk_count(tile, chunk)
    shifted = [
        Window(w.col_off - tile.col_off, w.row_off - tile.row_off, w.width, w.height) for w in wins
    ]
    assert np.all(coverage((tile.height, tile.width), shifted) == 1)
    for w in wins:
        assert (w.col_off - tile.col_off) % chunk.width == 0
        assert (w.row_off - tile.row_off) % chunk.height == 0
        assert w.width <= chunk.width
        assert w.height <= chunk.height
    # row-major
    offsets = [(w.row_off, w.col_off) for w in wins]
    assert offsets == sorted(offsets)


def test_chunk_windows_block_aligned_when_tile_is() -> None:
    tile = Window(1024, 512, 1000, 700)
    for w in chunk_windows(tile, ChunkShape(256, 128)):
        assert w.col_off % 128 == 0
        assert w.row_off % 128 == 0


def test_chunk_count_examples() -> None:
    assert chunk_count(Window(0, 0, 1024, 1024), ChunkShape(1024, 128)) == 8
    assert chunk_count(Window(0, 0, 1000, 999), ChunkShape(384, 128)) == 3 * 8
    assert chunk_count(Window(0, 0, 5, 5), ChunkShape(512, 512)) == 1


# --------------------------------------------------------------------------- splits


SPLIT_CASES = list(
    itertools.product(
        [(0, 0), (1024, 2048)],
        [(1024, 1024), (1000, 700), (513, 512), (512, 2048), (2048, 300), (100, 100), (768, 768)],
        [(256, 256), (512, 512), (512, 128)],
    )
)


@pytest.mark.parametrize(("offset", "size", "block"), SPLIT_CASES)
def test_split_window_quadrants(
    offset: tuple[int, int], size: tuple[int, int], block: tuple[int, int]
) -> None:
    parent = Window(offset[0], offset[1], size[0], size[1])
    bw, bh = block
    parts = split_window(parent, bw, bh)
    if parent.width <= bw and parent.height <= bh:
        assert parts is None
        return
    assert parts is not None
    names = [n for n, _ in parts]
    assert len(set(names)) == len(names)
    assert set(names) <= {"q0", "q1", "q2", "q3"}
    expected = (2 if parent.width > bw else 1) * (2 if parent.height > bh else 1)
    assert len(parts) == expected
    rel = [
        Window(w.col_off - parent.col_off, w.row_off - parent.row_off, w.width, w.height)
        for _, w in parts
    ]
    assert np.all(coverage((parent.height, parent.width), rel) == 1)
    for name, w in parts:
        assert w.col_off % bw == 0
        assert w.row_off % bh == 0
        right = w.col_off > parent.col_off
        bottom = w.row_off > parent.row_off
        assert name == f"q{2 * bottom + right}"
        assert w.pixels < parent.pixels


def test_split_window_halves_on_block_boundaries() -> None:
    parts = dict(split_window(Window(0, 0, 1024, 1024), 256, 256) or [])
    assert parts == {
        "q0": Window(0, 0, 512, 512),
        "q1": Window(512, 0, 512, 512),
        "q2": Window(0, 512, 512, 512),
        "q3": Window(512, 512, 512, 512),
    }
    # odd block count: the cut stays on a block boundary
    parts = dict(split_window(Window(0, 0, 768, 256), 256, 256) or [])
    assert parts == {"q0": Window(0, 0, 512, 256), "q1": Window(512, 0, 256, 256)}
    # only rows to split: top and bottom halves are q0 and q2
    parts = dict(split_window(Window(0, 0, 256, 1024), 256, 256) or [])
    assert parts == {"q0": Window(0, 0, 256, 512), "q2": Window(0, 512, 256, 512)}


def test_split_window_single_block_is_none() -> None:
    assert split_window(Window(0, 0, 256, 256), 256, 256) is None
    assert split_window(Window(512, 512, 100, 30), 256, 256) is None


def test_repeated_splits_reach_single_blocks() -> None:
    todo = [Window(0, 0, 1000, 700)]
    leaves = []
    while todo:
        w = todo.pop()
        parts = split_window(w, 128, 128)
        if parts is None:
            leaves.append(w)
        else:
            todo.extend(p for _, p in parts)
    assert np.all(coverage((700, 1000), leaves) == 1)
    assert all(w.width <= 128 and w.height <= 128 for w in leaves)
    assert len(leaves) == math.ceil(1000 / 128) * math.ceil(700 / 128)


# ------------------------------------------------------------------- feature ranges


@pytest.mark.parametrize(
    ("first", "count", "per_tile"),
    [(0, 25, 10), (1, 25, 10), (1, 30, 10), (0, 1, 100), (5, 100_000, 100_000), (0, 7, 1)],
)
def test_feature_ranges_cover_and_last_is_open(first: int, count: int, per_tile: int) -> None:
    ranges = feature_ranges(first, count, per_tile)
    assert len(ranges) == math.ceil(count / per_tile)
    assert ranges[0].start == first
    for a, b in itertools.pairwise(ranges):
        assert a.stop == b.start
        assert a.stop is not None
        assert a.stop - a.start == per_tile
        assert a.features == per_tile
    assert ranges[-1].stop is None
    assert sum(r.features for r in ranges) == count
    # every FID in [first, first + count) falls in exactly one range
    for fid in range(first, first + count):
        hits = [r for r in ranges if r.start <= fid and (r.stop is None or fid < r.stop)]
        assert len(hits) == 1
    # FIDs beyond the expected count (gaps) still land in the last range
    assert ranges[-1].start <= first + count + 1000


def test_feature_ranges_empty_layer_has_one_open_range() -> None:
    assert feature_ranges(1, 0, 10) == [FeatureRange(1, None, 0)]


def test_feature_range_where() -> None:
    assert FeatureRange(10, 20, 10).where() == "FID >= 10 AND FID < 20"
    assert FeatureRange(20, None, 5).where() == "FID >= 20"


def test_feature_range_where_parenthesises_the_users_filter_on_lines_of_its_own() -> None:
    # OR stays inside the range; a trailing SQL comment cannot eat the closing parenthesis
    assert FeatureRange(10, 20, 10).where("a = 1 OR b = 2") == (
        "FID >= 10 AND FID < 20 AND (\na = 1 OR b = 2\n)"
    )
    assert FeatureRange(20, None, 5).where("a > 1 -- big") == "FID >= 20 AND (\na > 1 -- big\n)"


def _tiles_of(fids: np.ndarray, per_tile: int, batch: int) -> FidBoundaries:
    acc = FidBoundaries(per_tile)
    for i in range(0, len(fids), batch):
        assert acc.add(fids[i : i + batch])
    return acc


@pytest.mark.parametrize(("per_tile", "batch"), [(10, 7), (10, 10), (10, 1000), (1, 3), (7, 64)])
def test_fid_boundaries_are_every_per_tile_th_fid_whatever_the_batches(
    per_tile: int, batch: int
) -> None:
    rng = np.random.default_rng(5)
    fids = np.sort(rng.choice(10**9, size=95, replace=False)).astype(np.int64)
    got = _tiles_of(fids, per_tile, batch).result()
    assert got.count == 95
    assert got.exact
    assert got.bounds == tuple(int(f) for f in fids[::per_tile])
    assert got.last_fid == int(fids[-1])
    # tiles laid on these bounds hold exactly per_tile features (the last the rest)
    ranges = feature_ranges(got.bounds[0], got.count, per_tile, got.bounds)
    for r in ranges:
        inside = np.count_nonzero((fids >= r.start) & ((r.stop is None) | (fids < (r.stop or 0))))
        assert inside == r.features
    assert sum(r.features for r in ranges) == 95
    assert ranges[-1].stop is None


def test_fid_boundaries_decline_a_stream_that_is_not_ascending() -> None:
    acc = FidBoundaries(10)
    assert acc.add(np.array([1, 5, 9], dtype=np.int64))
    assert not acc.add(np.array([9, 12], dtype=np.int64))  # not above its predecessor
    acc = FidBoundaries(10)
    assert not acc.add(np.array([1, 7, 3], dtype=np.int64))
    assert FidBoundaries(10).result().bounds == ()


def test_feature_ranges_on_bounds_hold_per_tile_features_however_sparse() -> None:
    bounds = (3, 1_000, 10**9)
    assert feature_ranges(3, 25, 10, bounds) == [
        FeatureRange(3, 1_000, 10),
        FeatureRange(1_000, 10**9, 10),
        FeatureRange(10**9, None, 5),
    ]
    # without bounds: contiguous FIDs, as before
    assert feature_ranges(3, 25, 10)[1] == FeatureRange(13, 23, 10)


@pytest.mark.parametrize("cap", [1024, 1 << 17])
def test_sampled_fid_boundaries_balance_tiles_of_shuffled_fids(cap: int) -> None:
    rng = np.random.default_rng(11)
    fids = rng.choice(10**9, size=20_000, replace=False).astype(np.int64)  # any order
    per_tile = 2_000
    acc = SampledFidBoundaries(per_tile, cap=cap)
    for i in range(0, len(fids), 999):
        acc.add(fids[i : i + 999])
    got = acc.result()
    assert got.count == 20_000
    assert got.last_fid == int(fids.max())
    assert got.bounds[0] == int(fids.min())
    assert list(got.bounds) == sorted(set(got.bounds))
    assert got.exact == (cap >= 20_000)
    assert sum(len(k) for k in acc.kept) <= cap
    ranges = feature_ranges(got.bounds[0], got.count, per_tile, got.bounds)
    counts = [
        int(np.count_nonzero((fids >= r.start) & (fids < (r.stop if r.stop else 2**62))))
        for r in ranges
    ]
    assert sum(counts) == 20_000
    if got.exact:
        assert counts == [r.features for r in ranges] == [per_tile] * 10
    else:  # a sample of 512-1024 FIDs: each tile within a third of per_tile
        assert all(abs(c - per_tile) <= per_tile // 3 for c in counts), counts
    # deterministic: every worker re-planning the file lays the same tiles
    again = SampledFidBoundaries(per_tile, cap=cap)
    again.add(fids)
    assert again.result() == got


def test_split_range_halves() -> None:
    assert split_range(FeatureRange(10, 20, 10)) == [
        ("h0", FeatureRange(10, 15, 5)),
        ("h1", FeatureRange(15, 20, 5)),
    ]
    assert split_range(FeatureRange(21, None, 5)) == [
        ("h0", FeatureRange(21, 23, 2)),
        ("h1", FeatureRange(23, None, 3)),
    ]
    assert split_range(FeatureRange(7, 8, 1)) is None
    assert split_range(FeatureRange(7, None, 0)) is None


def test_split_range_of_sparse_fids_halves_the_fid_span_and_estimates_half() -> None:
    # a closed range of sparse FIDs: numeric midpoint, features estimated as half
    assert split_range(FeatureRange(1_000, 9_000, 5)) == [
        ("h0", FeatureRange(1_000, 5_000, 2)),
        ("h1", FeatureRange(5_000, 9_000, 3)),
    ]
    # the open last range: halved up to the layer's end (one past its largest FID)
    assert split_range(FeatureRange(1_000, None, 4), end=10**9 + 1) == [
        ("h0", FeatureRange(1_000, 500_000_500, 2)),
        ("h1", FeatureRange(500_000_500, None, 2)),
    ]
    # a span of one FID holds one feature at most: nothing to split
    assert split_range(FeatureRange(41, 42, 3)) is None


def test_split_range_repeatedly_covers_parent() -> None:
    todo = [FeatureRange(1, 101, 100)]
    leaves = []
    while todo:
        r = todo.pop()
        halves = split_range(r)
        if halves is None:
            leaves.append(r)
        else:
            todo.extend(h for _, h in halves)
    assert sorted(r.start for r in leaves) == list(range(1, 101))
    assert all(r.features == 1 for r in leaves)


# ------------------------------------------------------------------------- tile ids


def test_id_format() -> None:
    assert raster_tile_id(None, 3, 7) == "r0003c0007"
    assert raster_tile_id(2, 1, 3) == "i0002-r0001c0003"
    assert raster_tile_id(None, 12345, 0) == "r12345c0000"
    assert vector_tile_id(None, 12) == "f000012"
    assert vector_tile_id(1, 0) == "i0001-f000000"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("r0003c0007", TileId(None, 3, 7, None, ())),
        ("i0002-r0001c0003-q1-q2", TileId(2, 1, 3, None, ("q1", "q2"))),
        ("f000012", TileId(None, None, None, 12, ())),
        ("i0000-f000003-h1-h0", TileId(0, None, None, 3, ("h1", "h0"))),
        ("r12345c0000", TileId(None, 12345, 0, None, ())),
    ],
)
def test_parse_and_round_trip(text: str, expected: TileId) -> None:
    tid = parse_tile_id(text)
    assert tid == expected
    assert str(tid) == text


def test_parent_chain() -> None:
    tid = parse_tile_id("i0002-r0001c0003-q1-q2")
    parent = tid.parent
    assert parent is not None
    assert str(parent) == "i0002-r0001c0003-q1"
    assert parent.parent is not None
    assert str(parent.parent) == "i0002-r0001c0003"
    assert parent.parent.parent is None


@pytest.mark.parametrize(
    "garbage",
    [
        "",
        "r1c1",
        "r0000c000",
        "x0000c0000",
        "R0000C0000",
        "r0000c0000-",
        "r0000c0000-q",
        "r0000c0000-q10",
        "r0000c0000-x1",
        "i02-r0000c0000",
        "i0002",
        "f00001",
        "r0000c0000 ",
        " r0000c0000",
        "-r0000c0000",
        "r0000c0000/../x",
        "r0000c0000;rm -rf",
        "i0001-",
        "r-001c0000",
    ],
)
def test_parse_rejects_garbage(garbage: str) -> None:
    with pytest.raises(ValueError, match="not a tile id"):
        parse_tile_id(garbage)


@pytest.mark.parametrize("text", ["r0000c0000\n", "r\u0660\u0660\u0660\u0660c0000", "r00001c0000"])
def test_parse_rejects_non_canonical_ids(text: str) -> None:
    with pytest.raises(ValueError):
        parse_tile_id(text)


@pytest.mark.parametrize("text", ["r0000c0000-q4", "r0000c0000-h0", "f000001-q1", "f000001-h2"])
def test_parse_rejects_impossible_splits(text: str) -> None:
    with pytest.raises(ValueError):
        parse_tile_id(text)


def test_ids_are_dns_labels() -> None:
    samples = [
        raster_tile_id(None, 0, 0),
        raster_tile_id(9999, 9999, 9999),
        vector_tile_id(None, 999_999),
        vector_tile_id(3, 5),
        str(TileId(12, 3, 4, None, ("q0", "q3", "q1", "q2", "q0", "q3", "q1", "q2"))),
        str(TileId(None, None, None, 4, tuple(f"h{i % 2}" for i in range(12)))),
    ]
    for tid in samples:
        assert DNS_LABEL.match(tid), tid
        assert len(tid) <= 63, tid
        assert str(parse_tile_id(tid)) == tid


@pytest.mark.parametrize("file_index", [10_000, 12_345])
def test_ids_round_trip_for_many_files(file_index: int) -> None:
    for tid in (raster_tile_id(file_index, 0, 1), vector_tile_id(file_index, 2)):
        assert parse_tile_id(tid).file_index == file_index
        assert str(parse_tile_id(tid)) == tid
