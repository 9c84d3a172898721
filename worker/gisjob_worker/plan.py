"""The plan (pure): files, tiles and their sizing, and how tiles split or shrink.

Everything here is computed from what a :class:`Plan` holds — no dataset is opened — so the
operator, the policy and the workers derive the same tiles, sub-tiles and memory requests
from one plan. Reading the input's metadata is :mod:`inputs`; building a plan is
:mod:`planner`.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, overload

from . import memory
from .errors import InputError, SpecError
from .memory import ChunkShape, Kind
from .quantity import format_bytes
from .tiles import (
    FeatureRange,
    Window,
    chunk_count,
    feature_range_at,
    feature_tile_count,
    grid_window,
    parse_tile_id,
    raster_tile_id,
    split_range,
    split_window,
    tile_edge,
    vector_tile_id,
)


@dataclass(frozen=True)
class RasterOutput:
    """Output band count, dtype and nodata of a raster operation."""

    count: int
    dtype: str
    nodata: float


MASK_BYTES_PER_PIXEL = 2  # the validity mask and one comparison temporary


@dataclass(frozen=True)
class RasterFile:
    index: int
    uri: str
    width: int
    height: int
    count: int
    block_width: int
    block_height: int
    bands: tuple[int, ...]
    read_bytes_per_pixel: int
    bytes_per_pixel: int
    output: RasterOutput


@dataclass(frozen=True)
class VectorFile:
    """One vector layer. Its tiles are ``feature_ranges(first_fid, features, featuresPerTile,
    fid_bounds)``: with ``fid_bounds`` (the start FID of each tile, from one FID-only pass
    over the layer) every tile holds ``featuresPerTile`` features however sparse the FIDs
    are; empty (placeholders, plans of older planners) means contiguous FIDs."""

    index: int
    uri: str
    layer: str | None
    features: int
    first_fid: int
    bytes_per_feature: float
    crs: str | None
    fid_bounds: tuple[int, ...] = ()
    last_fid: int | None = None  # the largest FID: where a split halves the open last tile


@dataclass(frozen=True)
class Sizing:
    """What the memory model needs, kept in the plan so policy and workers reuse it."""

    kind: Kind
    baseline_bytes: int
    cache_bytes: int
    headroom: float
    memory: int | None  # resources.memory, when the user gave it
    memory_factor: float = 1.0  # vectors: working bytes per batch byte
    network_bytes: int = 0  # object storage: GDAL's network cache, the S3 client, uploads

    @property
    def fixed_bytes(self) -> int:
        """What a worker holds whatever its chunk: imports and object-storage buffers."""
        return self.baseline_bytes + self.network_bytes


@dataclass(frozen=True, slots=True)
class Tile:
    id: str
    file_index: int
    window: Window | None
    fids: FeatureRange | None
    chunk: ChunkShape | None
    batch_rows: int | None
    chunks: int
    estimated_peak_bytes: int
    memory_request_bytes: int

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"id": self.id, "file": self.file_index}
        if self.window is not None:
            w = self.window
            d["window"] = {
                "colOff": w.col_off,
                "rowOff": w.row_off,
                "width": w.width,
                "height": w.height,
            }
        if self.fids is not None:
            d["fids"] = {
                "start": self.fids.start,
                "stop": self.fids.stop,
                "features": self.fids.features,
            }
        if self.chunk is not None:
            d["chunk"] = {"width": self.chunk.width, "height": self.chunk.height}
        if self.batch_rows is not None:
            d["batchRows"] = self.batch_rows
        d["chunks"] = self.chunks
        d["estimatedPeakBytes"] = self.estimated_peak_bytes
        d["memoryRequestBytes"] = self.memory_request_bytes
        return d


@dataclass(frozen=True)
class Plan:
    job: str
    kind: Kind
    operation: str
    output_format: str
    digest: str
    sizing: Sizing
    files: tuple[RasterFile | VectorFile, ...]
    tiles: Sequence[Tile]  # LaidTiles from the planner; any sequence in tests
    _by_id: dict[str, int] = field(default_factory=dict, compare=False, repr=False)

    def index_of(self, tile_id: str) -> int | None:
        """The planned index of a planned tile's id (None for sub-tiles and strangers)."""
        if isinstance(self.tiles, LaidTiles):
            return self.tiles.index_of(tile_id)
        if not self._by_id:
            self._by_id.update({t.id: i for i, t in enumerate(self.tiles)})
        return self._by_id.get(tile_id)

    def tile(self, tile_id: str) -> Tile:
        i = self.index_of(tile_id)
        return self.tiles[i] if i is not None else resolve_subtile(self, tile_id)

    def by_size(self) -> list[tuple[Tile, int]]:
        """One tile of each size and how many tiles have it (every tile, when the tiles are
        not :class:`LaidTiles`): aggregates without laying a million tiles."""
        if isinstance(self.tiles, LaidTiles):
            return self.tiles.by_size()
        return [(t, 1) for t in self.tiles]

    @property
    def max_estimate(self) -> int:
        return max((t.estimated_peak_bytes for t, _ in self.by_size()), default=0)

    @property
    def max_request(self) -> int:
        return max((t.memory_request_bytes for t, _ in self.by_size()), default=0)

    @property
    def sum_requests(self) -> int:
        return sum(t.memory_request_bytes * n for t, n in self.by_size())

    def to_json(self) -> dict[str, Any]:
        files: list[dict[str, Any]] = []
        for f in self.files:
            if isinstance(f, RasterFile):
                files.append(
                    {
                        "index": f.index,
                        "uri": f.uri,
                        "width": f.width,
                        "height": f.height,
                        "blockWidth": f.block_width,
                        "blockHeight": f.block_height,
                        "bands": list(f.bands),
                        "bytesPerPixel": f.bytes_per_pixel,
                    }
                )
            else:
                files.append(
                    {
                        "index": f.index,
                        "uri": f.uri,
                        "layer": f.layer,
                        "features": f.features,
                        "bytesPerFeature": round(f.bytes_per_feature, 1),
                    }
                )
        return {
            "job": self.job,
            "kind": self.kind,
            "operation": self.operation,
            "outputFormat": self.output_format,
            "digest": self.digest,
            "baselineBytes": self.sizing.baseline_bytes,
            "networkBytes": self.sizing.network_bytes,
            "gdalCacheBytes": self.sizing.cache_bytes,
            "memoryHeadroom": self.sizing.headroom,
            "files": files,
            "tiles": [t.to_json() for t in self.tiles],
            "totals": {
                "tiles": len(self.tiles),
                "estimatedPeakBytes": self.max_estimate,
                "memoryRequestBytes": self.max_request,
                "sumMemoryRequestBytes": self.sum_requests,
            },
        }


# ------------------------------------------------------------------------------ sizing


def size_raster(
    sizing: Sizing, f: RasterFile, window: Window, chunk_scale: float = 1.0
) -> tuple[ChunkShape, int, int]:
    """(chunk, estimate, request) for a raster tile; raises SpecError if nothing fits."""
    bpp = f.bytes_per_pixel
    if sizing.memory is not None:
        budget = memory.usable_for(sizing.memory, sizing.headroom)
        max_px = memory.chunk_pixel_budget(budget, sizing.fixed_bytes, sizing.cache_bytes, bpp)
    else:
        max_px = memory.DEFAULT_CHUNK_BYTES // bpp
    if chunk_scale < 1.0:  # half the chunk, not half a budget larger than the tile
        max_px = int(min(max_px, window.pixels) * chunk_scale)
    one_block = min(f.block_width, window.width) * min(f.block_height, window.height)
    if sizing.memory is None or chunk_scale < 1.0:
        max_px = max(max_px, one_block)
    chunk = memory.fit_chunk(max_px, window.width, window.height, f.block_width, f.block_height)
    if chunk is None:
        needed = memory.request_for(
            memory.raster_estimate(sizing.fixed_bytes, sizing.cache_bytes, one_block, bpp),
            sizing.headroom,
        )
        raise SpecError(
            f"spec.resources.memory: {format_bytes(sizing.memory or 0)} is below this job's "
            f"minimum of {format_bytes(needed)} (import baseline "
            f"{format_bytes(sizing.fixed_bytes)} + GDAL cache {format_bytes(sizing.cache_bytes)}"
            f" + one {f.block_width}x{f.block_height} block at {bpp} B/pixel, + headroom)"
        )
    estimate = memory.raster_estimate(sizing.fixed_bytes, sizing.cache_bytes, chunk.pixels, bpp)
    request = (
        sizing.memory
        if sizing.memory is not None
        else memory.request_for(estimate, sizing.headroom)
    )
    return chunk, estimate, request


def size_vector(
    sizing: Sizing, f: VectorFile, rng: FeatureRange, chunk_scale: float = 1.0
) -> tuple[int, int, int]:
    """(batch rows, estimate, request) for a vector tile."""
    bpf, factor = f.bytes_per_feature, sizing.memory_factor
    if sizing.memory is not None:
        budget = memory.usable_for(sizing.memory, sizing.headroom)
        rows = memory.batch_rows_for(budget, sizing.fixed_bytes, sizing.cache_bytes, bpf, factor)
        if rows < memory.MIN_BATCH_ROWS:
            need = memory.request_for(
                memory.vector_estimate(
                    sizing.fixed_bytes, sizing.cache_bytes, memory.MIN_BATCH_ROWS, bpf, factor
                ),
                sizing.headroom,
            )
            raise SpecError(
                f"spec.resources.memory: {format_bytes(sizing.memory)} is below this job's "
                f"minimum of {format_bytes(need)} (import baseline "
                f"{format_bytes(sizing.fixed_bytes)} + GDAL cache "
                f"{format_bytes(sizing.cache_bytes)} + {memory.MIN_BATCH_ROWS} features, "
                f"+ headroom)"
            )
    else:
        rows = int(memory.DEFAULT_CHUNK_BYTES / (bpf * factor))
    rows = max(1, min(rows, memory.MAX_BATCH_ROWS, max(1, rng.features)))
    if chunk_scale < 1.0:
        rows = max(1, int(rows * chunk_scale))
    estimate = memory.vector_estimate(sizing.fixed_bytes, sizing.cache_bytes, rows, bpf, factor)
    request = (
        sizing.memory
        if sizing.memory is not None
        else memory.request_for(estimate, sizing.headroom)
    )
    return rows, estimate, request


def make_raster_tile(
    sizing: Sizing, f: RasterFile, tile_id: str, window: Window, chunk_scale: float = 1.0
) -> Tile:
    chunk, est, req = size_raster(sizing, f, window, chunk_scale)
    return Tile(
        id=tile_id,
        file_index=f.index,
        window=window,
        fids=None,
        chunk=chunk,
        batch_rows=None,
        chunks=chunk_count(window, chunk),
        estimated_peak_bytes=est,
        memory_request_bytes=req,
    )


def make_vector_tile(
    sizing: Sizing, f: VectorFile, tile_id: str, rng: FeatureRange, chunk_scale: float = 1.0
) -> Tile:
    rows, est, req = size_vector(sizing, f, rng, chunk_scale)
    return Tile(
        id=tile_id,
        file_index=f.index,
        window=None,
        fids=rng,
        chunk=None,
        batch_rows=rows,
        chunks=max(1, math.ceil(rng.features / rows)),
        estimated_peak_bytes=est,
        memory_request_bytes=req,
    )


# ------------------------------------------------------------------------ sub-tiles


def split_tile(plan: Plan, tile: Tile) -> list[Tile] | None:
    """The sub-tiles of ``tile`` (4 block-aligned quadrants or 2 feature halves), or None
    when it cannot be split further. Pure: uses only what the plan holds."""
    f = plan.files[tile.file_index]
    if isinstance(f, RasterFile):
        assert tile.window is not None
        parts = split_window(tile.window, f.block_width, f.block_height)
        if parts is None:
            return None
        return [make_raster_tile(plan.sizing, f, f"{tile.id}-{s}", w) for s, w in parts]
    assert tile.fids is not None
    halves = split_range(tile.fids, None if f.last_fid is None else f.last_fid + 1)
    if halves is None:
        return None
    return [make_vector_tile(plan.sizing, f, f"{tile.id}-{s}", r) for s, r in halves]


def resize_tile(plan: Plan, tile: Tile, chunk_scale: float) -> Tile:
    """The same tile with its chunk scaled down (shrinkChunks), estimate recomputed."""
    f = plan.files[tile.file_index]
    if isinstance(f, RasterFile):
        assert tile.window is not None
        return make_raster_tile(plan.sizing, f, tile.id, tile.window, chunk_scale)
    assert tile.fids is not None
    return make_vector_tile(plan.sizing, f, tile.id, tile.fids, chunk_scale)


def resolve_subtile(plan: Plan, tile_id: str) -> Tile:
    """A tile by id, following ``-qN``/``-hN`` split suffixes from its planned parent."""
    try:
        tid = parse_tile_id(tile_id)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    if not tid.splits:
        raise InputError(f"tile {tile_id!r} is not in the plan ({len(plan.tiles)} tiles)")
    parent = plan.tile(str(tid.parent))
    children = split_tile(plan, parent) or []
    for child in children:
        if child.id == tile_id:
            return child
    raise InputError(f"tile {tile_id!r}: its parent {parent.id} has no such part")


def can_shrink(plan: Plan, tile: Tile, chunk_scale: float) -> bool:
    """Whether halving the chunk again still makes it smaller."""
    smaller = resize_tile(plan, tile, chunk_scale)
    if tile.chunk is not None and smaller.chunk is not None:
        return smaller.chunk.pixels < tile.chunk.pixels
    return (
        smaller.batch_rows is not None
        and tile.batch_rows is not None
        and (smaller.batch_rows < tile.batch_rows)
    )


def placeholder_file(index: int, uri: str, kind: Kind) -> RasterFile | VectorFile:
    if kind == "raster":
        return RasterFile(index, uri, 0, 0, 0, 1, 1, (), 0, 1, RasterOutput(1, "float32", 0.0))
    return VectorFile(index, uri, None, 0, 0, 1.0, None)


DEFAULT_MAX_TILES = 1_000_000
MAX_TILES_ENV = "GISJOB_MAX_TILES"


def max_tiles(environ: dict[str, str] | None = None) -> int:
    """The most tiles one plan may have (``$GISJOB_MAX_TILES``; the operator sets its
    admin's limit on planner pods): a 300-byte VRT can declare 2³¹×2³¹ pixels."""
    import os

    text = (environ if environ is not None else dict(os.environ)).get(MAX_TILES_ENV, "")
    try:
        value = int(text) if text else DEFAULT_MAX_TILES
    except ValueError:
        raise SpecError(f"${MAX_TILES_ENV}: {text!r} is not a whole number") from None
    return max(1, value)


def file_tile_count(f: RasterFile | VectorFile, tile_size: int, features_per_tile: int) -> int:
    """How many tiles :func:`file_tiles` lays for a file, without laying them."""
    from .tiles import tile_edge

    if isinstance(f, RasterFile):
        tw, th = tile_edge(tile_size, f.block_width), tile_edge(tile_size, f.block_height)
        return math.ceil(f.width / tw) * math.ceil(f.height / th)
    if f.fid_bounds:
        return len(f.fid_bounds)
    return max(1, math.ceil(f.features / features_per_tile))


class LaidTiles(Sequence[Tile]):
    """The planned tiles of a plan, laid on demand from the files' geometry (pure): a plan
    of a million tiles holds a few numbers per file, not a million objects — the operator
    keeps plans of every job it runs. Equal to any sequence of the same tiles."""

    def index_of(self, tile_id: str) -> int | None:
        """The planned index of ``tile_id`` (None: not a planned tile of this plan)."""
        raise NotImplementedError

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence) or len(other) != len(self):
            return False
        return all(a == b for a, b in zip(self, other, strict=True))

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: {len(self)} tiles>"

    def _at(self, i: int) -> Tile:
        raise NotImplementedError

    def sizes(self) -> list[tuple[int, int]]:
        """(index of one tile, how many tiles) for each tile size: a tile's sizing depends
        on its size only, so these answer questions about every tile at once."""
        raise NotImplementedError

    def shapes(self) -> list[int]:
        """Indexes of one tile of each size."""
        return [i for i, _ in self.sizes()]

    def by_size(self) -> list[tuple[Tile, int]]:
        """One tile of each size, and how many tiles have it."""
        return [(self._at(i), n) for i, n in self.sizes()]

    def sized(self) -> LaidTiles:
        """Self, once every tile size has been sized: a budget no tile fits raises
        :class:`SpecError` here, at planning, not when a tile is first laid."""
        for i in self.shapes():
            self._at(i)
        return self

    @overload
    def __getitem__(self, i: int) -> Tile: ...

    @overload
    def __getitem__(self, i: slice) -> list[Tile]: ...

    def __getitem__(self, i: int | slice) -> Tile | list[Tile]:
        n = len(self)
        if isinstance(i, slice):
            return [self._at(k) for k in range(*i.indices(n))]
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"tile index {i} out of range ({n} tiles)")
        return self._at(i)


class RasterTiles(LaidTiles):
    """A raster's grid of tiles, row-major; each tile shape is sized once."""

    def __init__(self, sizing: Sizing, f: RasterFile, tile_size: int, fi: int | None) -> None:
        self.sizing, self.f, self.fi = sizing, f, fi
        self.tw = tile_edge(tile_size, f.block_width)
        self.th = tile_edge(tile_size, f.block_height)
        self.cols = math.ceil(f.width / self.tw)
        self.rows = math.ceil(f.height / self.th)
        self._sized: dict[tuple[int, int], tuple[ChunkShape, int, int, int]] = {}

    def __len__(self) -> int:
        return self.rows * self.cols

    def sizes(self) -> list[tuple[int, int]]:
        # interior columns/rows share one width/height; the last may be narrower
        out: dict[tuple[int, int], tuple[int, int]] = {}
        for r, rn in ((0, self.rows - 1), (self.rows - 1, 1)):
            for c, cn in ((0, self.cols - 1), (self.cols - 1, 1)):
                if rn <= 0 or cn <= 0:
                    continue
                w = grid_window(self.f.width, self.f.height, self.tw, self.th, r, c)
                i, n = out.get((w.width, w.height), (r * self.cols + c, 0))
                out[w.width, w.height] = (i, n + rn * cn)
        return sorted(out.values())

    def _at(self, i: int) -> Tile:
        r, c = divmod(i, self.cols)
        win = grid_window(self.f.width, self.f.height, self.tw, self.th, r, c)
        shape = self._sized.get((win.width, win.height))
        if shape is None:
            chunk, est, req = size_raster(self.sizing, self.f, win)
            shape = self._sized[win.width, win.height] = (chunk, est, req, chunk_count(win, chunk))
        chunk, est, req, chunks = shape
        tid = raster_tile_id(self.fi, r, c)
        return Tile(tid, self.f.index, win, None, chunk, None, chunks, est, req)

    def index_of(self, tile_id: str) -> int | None:
        try:
            tid = parse_tile_id(tile_id)
        except ValueError:
            return None
        if tid.splits or tid.file_index != self.fi or tid.row is None or tid.col is None:
            return None
        if tid.row >= self.rows or tid.col >= self.cols:
            return None
        return tid.row * self.cols + tid.col


class VectorTiles(LaidTiles):
    """A layer's feature-range tiles; each feature count is sized once."""

    def __init__(self, sizing: Sizing, f: VectorFile, per_tile: int, fi: int | None) -> None:
        self.sizing, self.f, self.fi, self.per_tile = sizing, f, fi, per_tile
        self.n = feature_tile_count(f.features, per_tile, f.fid_bounds)
        self._sized: dict[int, tuple[int, int, int, int]] = {}

    def __len__(self) -> int:
        return self.n

    def sizes(self) -> list[tuple[int, int]]:
        if self.n == 1:
            return [(0, 1)]
        return [(0, self.n - 1), (self.n - 1, 1)]

    def _at(self, i: int) -> Tile:
        f = self.f
        rng = feature_range_at(i, f.first_fid, f.features, self.per_tile, f.fid_bounds)
        sized = self._sized.get(rng.features)
        if sized is None:
            rows, est, req = size_vector(self.sizing, f, rng)
            chunks = max(1, math.ceil(rng.features / rows))
            sized = self._sized[rng.features] = (rows, est, req, chunks)
        rows, est, req, chunks = sized
        return Tile(vector_tile_id(self.fi, i), f.index, None, rng, None, rows, chunks, est, req)

    def index_of(self, tile_id: str) -> int | None:
        try:
            tid = parse_tile_id(tile_id)
        except ValueError:
            return None
        k = tid.feature_tile
        if tid.splits or tid.file_index != self.fi or k is None or k >= self.n:
            return None
        return k


class ChainedTiles(LaidTiles):
    """The tiles of several files, file after file."""

    def __init__(self, parts: Sequence[LaidTiles]) -> None:
        self.parts = list(parts)
        self.starts: list[int] = []
        total = 0
        for part in self.parts:
            self.starts.append(total)
            total += len(part)
        self.total = total

    def __len__(self) -> int:
        return self.total

    def _at(self, i: int) -> Tile:
        k = bisect.bisect_right(self.starts, i) - 1
        while len(self.parts[k]) == 0:  # empty parts share a start with the next one
            k += 1
        return self.parts[k][i - self.starts[k]]

    def sizes(self) -> list[tuple[int, int]]:
        return [(start + i, n) for start, part in zip(self.starts, self.parts, strict=True)
                for i, n in part.sizes()]  # fmt: skip

    def index_of(self, tile_id: str) -> int | None:
        for start, part in zip(self.starts, self.parts, strict=True):
            i = part.index_of(tile_id)
            if i is not None:
                return start + i
        return None


def laid_tiles(parts: Sequence[LaidTiles]) -> LaidTiles:
    return parts[0] if len(parts) == 1 else ChainedTiles(parts)


def file_tiles(
    sizing: Sizing,
    f: RasterFile | VectorFile,
    tile_size: int,
    features_per_tile: int,
    *,
    multi: bool,
) -> LaidTiles:
    """Every planned tile of one input file, from what the plan holds of it (pure: the
    planner, the plan descriptor and the operator lay the same tiles)."""
    fi = f.index if multi else None
    if isinstance(f, RasterFile):
        return RasterTiles(sizing, f, tile_size, fi).sized()
    return VectorTiles(sizing, f, features_per_tile, fi).sized()
