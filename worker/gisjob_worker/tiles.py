"""Tile geometry (pure): block-aligned raster grids, feature ranges, ids and splits.

Tile ids are readable and deterministic: ``r0003c0007`` (raster row/column of tiles),
``f000012`` (vector feature range), prefixed ``i0002-`` for the third file of a multi-file
input. A split appends ``-q0..q3`` (raster quadrants: top-left, top-right, bottom-left,
bottom-right) or ``-h0``/``-h1`` (vector halves), so a sub-tile's id names its parent.
Ids are valid Kubernetes label values and DNS labels.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .memory import ChunkShape

if TYPE_CHECKING:
    import numpy as np

_ID_RE = re.compile(r"(?:i([0-9]{4,})-)?(?:r([0-9]{4,})c([0-9]{4,})|f([0-9]{6,}))((?:-[qh][0-9])*)")


@dataclass(frozen=True, slots=True)
class Window:
    """Pixel window: column/row offsets and size (like ``rasterio.windows.Window``)."""

    col_off: int
    row_off: int
    width: int
    height: int

    @property
    def pixels(self) -> int:
        return self.width * self.height


@dataclass(frozen=True)
class TileId:
    file_index: int | None
    row: int | None
    col: int | None
    feature_tile: int | None
    splits: tuple[str, ...]

    @property
    def parent(self) -> TileId | None:
        if not self.splits:
            return None
        return TileId(self.file_index, self.row, self.col, self.feature_tile, self.splits[:-1])

    def __str__(self) -> str:
        prefix = f"i{self.file_index:04d}-" if self.file_index is not None else ""
        if self.feature_tile is not None:
            base = f"f{self.feature_tile:06d}"
        else:
            base = f"r{self.row:04d}c{self.col:04d}"
        return prefix + base + "".join(f"-{s}" for s in self.splits)


def parse_tile_id(text: str) -> TileId:
    m = _ID_RE.fullmatch(text)
    if not m:
        raise ValueError(
            f"not a tile id: {text!r} (expected e.g. r0003c0007, f000012, i0001-r0000c0002-q1)"
        )
    fi, row, col, ft, splits = m.groups()
    tid = TileId(
        file_index=int(fi) if fi is not None else None,
        row=int(row) if row is not None else None,
        col=int(col) if col is not None else None,
        feature_tile=int(ft) if ft is not None else None,
        splits=tuple(s for s in splits.split("-") if s),
    )
    allowed = ("h0", "h1") if ft is not None else ("q0", "q1", "q2", "q3")
    if str(tid) != text or any(s not in allowed for s in tid.splits):
        raise ValueError(f"not a tile id: {text!r} (not in canonical form)")
    return tid


def raster_tile_id(file_index: int | None, row: int, col: int) -> str:
    return str(TileId(file_index, row, col, None, ()))


def vector_tile_id(file_index: int | None, index: int) -> str:
    return str(TileId(file_index, None, None, index, ()))


def tile_edge(tile_size: int, block: int) -> int:
    """``tileSize`` rounded to the nearest multiple of the block edge (at least one block)."""
    return max(1, round(tile_size / block)) * block


def grid_window(width: int, height: int, tw: int, th: int, row: int, col: int) -> Window:
    """The window of grid tile (``row``, ``col``) of ``tw`` x ``th`` tiles; edge tiles are
    smaller."""
    col_off, row_off = col * tw, row * th
    return Window(col_off, row_off, min(tw, width - col_off), min(th, height - row_off))


def raster_grid(
    width: int, height: int, tile_size: int, block_width: int, block_height: int
) -> Iterator[tuple[int, int, Window]]:
    """(row, col, window) for every tile of a raster, row-major (as a plan lays them)."""
    tw = tile_edge(tile_size, block_width)
    th = tile_edge(tile_size, block_height)
    for r in range(math.ceil(height / th)):
        for c in range(math.ceil(width / tw)):
            yield r, c, grid_window(width, height, tw, th, r, c)


def chunk_windows(tile: Window, chunk: ChunkShape) -> Iterator[Window]:
    """Chunk windows (absolute) covering a tile, row-major; block-aligned if the tile is."""
    for r in range(0, tile.height, chunk.height):
        for c in range(0, tile.width, chunk.width):
            yield Window(
                tile.col_off + c,
                tile.row_off + r,
                min(chunk.width, tile.width - c),
                min(chunk.height, tile.height - r),
            )


def chunk_count(tile: Window, chunk: ChunkShape) -> int:
    return math.ceil(tile.width / chunk.width) * math.ceil(tile.height / chunk.height)


def _half(length: int, block: int) -> int | None:
    """Where to cut ``length`` in two on a block boundary, or None if it is one block."""
    if length <= block:
        return None
    return max(block, round(length / 2 / block) * block) if length > block else None


def split_window(
    window: Window, block_width: int, block_height: int
) -> list[tuple[str, Window]] | None:
    """Quadrants of a raster tile cut on block boundaries; None when it is a single block."""
    cw = _half(window.width, block_width)
    ch = _half(window.height, block_height)
    if cw is None and ch is None:
        return None
    cols = [(0, cw), (cw, window.width - cw)] if cw is not None else [(0, window.width)]
    rows = [(0, ch), (ch, window.height - ch)] if ch is not None else [(0, window.height)]
    out: list[tuple[str, Window]] = []
    for ri, (r0, rh) in enumerate(rows):
        for ci, (c0, cw_) in enumerate(cols):
            if rh <= 0 or cw_ <= 0:
                continue
            q = ri * 2 + ci
            out.append((f"q{q}", Window(window.col_off + c0, window.row_off + r0, cw_, rh)))
    return out


@dataclass(frozen=True, slots=True)
class FeatureRange:
    """Features with ``start <= FID < stop`` (``stop`` None: to the end of the layer).

    ``features`` is how many the range holds: exact for planned tiles laid on the layer's
    real FIDs (:func:`feature_ranges` with boundaries), an estimate for halves of a split
    (:func:`split_range`) and for layers planned without boundaries (contiguous FIDs).
    """

    start: int
    stop: int | None
    features: int

    def where(self, extra: str | None = None) -> str:
        """The attribute filter of this range, AND-ed with ``extra`` (the user's filter),
        which is parenthesised on lines of its own: ``a = 1 OR b = 2`` stays inside the
        range, and a trailing ``-- comment`` cannot swallow the closing parenthesis."""
        clause = f"FID >= {self.start}"
        if self.stop is not None:
            clause = f"{clause} AND FID < {self.stop}"
        return clause if extra is None else f"{clause} AND (\n{extra}\n)"


def feature_tile_count(count: int, per_tile: int, bounds: Sequence[int] = ()) -> int:
    """How many tiles :func:`feature_ranges` lays."""
    return len(bounds) if bounds else max(1, math.ceil(count / per_tile))


def feature_range_at(
    i: int, first_fid: int, count: int, per_tile: int, bounds: Sequence[int] = ()
) -> FeatureRange:
    """Tile ``i`` of :func:`feature_ranges` (laid alone)."""
    n = feature_tile_count(count, per_tile, bounds)
    last = i == n - 1
    if bounds:
        return FeatureRange(
            start=bounds[i],
            stop=None if last else bounds[i + 1],
            features=max(0, count - (n - 1) * per_tile) if last else per_tile,
        )
    start = first_fid + i * per_tile
    return FeatureRange(
        start=start,
        stop=None if last else start + per_tile,
        features=count - i * per_tile if last else per_tile,
    )


def feature_ranges(
    first_fid: int, count: int, per_tile: int, bounds: Sequence[int] = ()
) -> list[FeatureRange]:
    """Tiles of ``per_tile`` features; the last one is open-ended so nothing is lost.

    ``bounds`` (the start FID of each tile, from :class:`FidBoundaries`) lays them on the
    layer's real FIDs, so sparse ids (OSM ids, GeoPackages after deletes) still make tiles
    of ``per_tile`` features. Without it FIDs are taken as contiguous from ``first_fid``.
    """
    n = feature_tile_count(count, per_tile, bounds)
    return [feature_range_at(i, first_fid, count, per_tile, bounds) for i in range(n)]


def split_range(rng: FeatureRange, end: int | None = None) -> list[tuple[str, FeatureRange]] | None:
    """Halves of a feature range at the numeric midpoint of its FIDs, each estimated to
    hold half its features; None when it holds a single feature or a single FID.

    ``end`` (one past the layer's largest FID) closes an open-ended range for the midpoint;
    without it the range's FIDs are taken as contiguous. With sparse FIDs the halves may
    hold unequal counts (the plan keeps no FIDs inside a tile): a half's estimate only caps
    its batch size, and a half that is still too big splits again.
    """
    hi = rng.stop if rng.stop is not None else end
    if hi is None:
        hi = rng.start + rng.features
    if rng.features <= 1 or hi - rng.start <= 1:
        return None
    half = rng.features // 2
    mid = rng.start + (hi - rng.start) // 2
    return [
        ("h0", FeatureRange(rng.start, mid, half)),
        ("h1", FeatureRange(mid, rng.stop, rng.features - half)),
    ]


# ------------------------------------------------------------------------ FID boundaries

FID_SAMPLE_CAP = 1 << 17  # FIDs kept by the sampled pass (1 MiB of int64)
_MIX1, _MIX2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB  # splitmix64 finaliser


@dataclass(frozen=True)
class FidPass:
    """What one pass over a layer's FIDs found: the feature count, the start FID of each
    tile, the largest FID, and whether the boundaries are exact (FIDs streamed in
    ascending order) or quantiles of a hash sample (any other order)."""

    count: int
    bounds: tuple[int, ...]
    last_fid: int | None
    exact: bool


class FidBoundaries:
    """Every ``per_tile``-th FID of an ascending stream of FID batches: O(tiles) memory.

    :meth:`add` returns False at the first FID not above its predecessor; the caller then
    streams again into :class:`SampledFidBoundaries`.
    """

    def __init__(self, per_tile: int) -> None:
        self.per_tile = per_tile
        self.count = 0
        self.bounds: list[int] = []
        self.last: int | None = None

    def add(self, fids: np.ndarray) -> bool:
        if not len(fids):
            return True
        if (self.last is not None and fids[0] <= self.last) or bool((fids[1:] <= fids[:-1]).any()):
            return False
        first = -self.count % self.per_tile  # index in this batch of the next tile start
        self.bounds.extend(int(f) for f in fids[first :: self.per_tile])
        self.count += len(fids)
        self.last = int(fids[-1])
        return True

    def result(self) -> FidPass:
        return FidPass(self.count, tuple(self.bounds), self.last, exact=True)


class SampledFidBoundaries:
    """Tile boundaries of FIDs in any order, in bounded memory: FIDs whose hash has its top
    ``level`` bits zero are kept (a deterministic 2^-level sample: every worker re-planning
    the file gets the same boundaries); the level rises whenever more than ``cap`` are
    kept. Boundaries are the sample's quantiles, so a tile holds about ``per_tile``
    features (± the sampling error: ~1/sqrt(sampled FIDs per tile))."""

    def __init__(self, per_tile: int, cap: int = FID_SAMPLE_CAP) -> None:
        self.per_tile, self.cap = per_tile, cap
        self.count, self.level = 0, 0
        self.kept: list[np.ndarray] = []
        self.kept_n = 0
        self.lo: int | None = None
        self.hi: int | None = None

    def _keep(self, fids: np.ndarray) -> np.ndarray:
        import numpy as np

        if self.level == 0:
            return fids
        z = fids.astype(np.uint64)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(_MIX1)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(_MIX2)
        z = z ^ (z >> np.uint64(31))
        kept: np.ndarray = fids[(z >> np.uint64(64 - self.level)) == 0]
        return kept

    def add(self, fids: np.ndarray) -> None:
        if not len(fids):
            return
        self.count += len(fids)
        lo, hi = int(fids.min()), int(fids.max())
        self.lo = lo if self.lo is None else min(self.lo, lo)
        self.hi = hi if self.hi is None else max(self.hi, hi)
        kept = self._keep(fids)
        self.kept.append(kept.copy())
        self.kept_n += len(kept)
        while self.kept_n > self.cap:
            self.level += 1
            self.kept = [self._keep(k) for k in self.kept]
            self.kept_n = sum(len(k) for k in self.kept)

    def result(self) -> FidPass:
        import numpy as np

        if self.lo is None:
            return FidPass(0, (), None, exact=False)
        sample = np.sort(np.concatenate(self.kept)) if self.kept else np.empty(0, np.int64)
        tiles = max(1, math.ceil(self.count / self.per_tile))
        bounds = [self.lo]
        for i in range(1, tiles):
            j = min(len(sample) - 1, (i * self.per_tile * len(sample)) // self.count)
            b = int(sample[j]) if len(sample) else bounds[-1]
            if b > bounds[-1]:
                bounds.append(b)
        return FidPass(self.count, tuple(bounds), self.hi, exact=self.level == 0)
