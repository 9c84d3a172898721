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
from collections.abc import Iterator
from dataclasses import dataclass

from .memory import ChunkShape

_ID_RE = re.compile(r"(?:i([0-9]{4,})-)?(?:r([0-9]{4,})c([0-9]{4,})|f([0-9]{6,}))((?:-[qh][0-9])*)")


@dataclass(frozen=True)
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


def raster_grid(
    width: int, height: int, tile_size: int, block_width: int, block_height: int
) -> Iterator[tuple[int, int, Window]]:
    """(row, col, window) for every tile of a raster; edge tiles are smaller."""
    tw = tile_edge(tile_size, block_width)
    th = tile_edge(tile_size, block_height)
    for r in range(math.ceil(height / th)):
        for c in range(math.ceil(width / tw)):
            col_off, row_off = c * tw, r * th
            yield (
                r,
                c,
                Window(col_off, row_off, min(tw, width - col_off), min(th, height - row_off)),
            )


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


@dataclass(frozen=True)
class FeatureRange:
    """Features with ``start <= FID < stop`` (``stop`` None: to the end of the layer).

    ``features`` is how many the range holds when FIDs are contiguous (for sizing/splits).
    """

    start: int
    stop: int | None
    features: int

    def where(self) -> str:
        clause = f"FID >= {self.start}"
        return clause if self.stop is None else f"{clause} AND FID < {self.stop}"


def feature_ranges(first_fid: int, count: int, per_tile: int) -> list[FeatureRange]:
    """Ranges of ``per_tile`` FIDs; the last one is open-ended so FID gaps lose nothing."""
    n = max(1, math.ceil(count / per_tile))
    out = []
    for i in range(n):
        start = first_fid + i * per_tile
        last = i == n - 1
        out.append(
            FeatureRange(
                start=start,
                stop=None if last else start + per_tile,
                features=count - i * per_tile if last else per_tile,
            )
        )
    return out


def split_range(rng: FeatureRange) -> list[tuple[str, FeatureRange]] | None:
    """Halves of a feature range; None when it holds a single feature."""
    if rng.features <= 1:
        return None
    half = rng.features // 2
    mid = rng.start + half
    return [
        ("h0", FeatureRange(rng.start, mid, half)),
        ("h1", FeatureRange(mid, rng.stop, rng.features - half)),
    ]
