"""The planner: metadata-only reads of the input, then tiles with a predicted memory footprint.

``build_plan(job)`` opens each input file for its metadata (rasterio for rasters, pyogrio for
vectors — a vector sample batch of a few hundred features measures bytes per feature), lays
block-aligned tiles or feature ranges, sizes every tile with the memory model and returns a
:class:`Plan` whose digest changes when anything that determines the outputs changes.
"""

from __future__ import annotations

import glob as globmod
import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

from . import memory
from .errors import InputError, SpecError
from .memory import ChunkShape, Kind
from .quantity import format_bytes
from .registry import (
    RasterOperation,
    RasterOutput,
    RasterSource,
    VectorOperation,
    get_operation,
    output_format,
)
from .spec import GisJob
from .tiles import (
    FeatureRange,
    Window,
    chunk_count,
    feature_ranges,
    parse_tile_id,
    raster_grid,
    raster_tile_id,
    split_range,
    split_window,
    vector_tile_id,
)

PLANNER_VERSION = 1
VECTOR_SAMPLE_ROWS = 500
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
    index: int
    uri: str
    layer: str | None
    features: int
    first_fid: int
    bytes_per_feature: float
    crs: str | None


@dataclass(frozen=True)
class Sizing:
    """What the memory model needs, kept in the plan so policy and workers reuse it."""

    kind: Kind
    baseline_bytes: int
    cache_bytes: int
    headroom: float
    memory: int | None  # resources.memory, when the user gave it
    memory_factor: float = 1.0  # vectors: working bytes per batch byte


@dataclass(frozen=True)
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
    tiles: tuple[Tile, ...]
    _by_id: dict[str, Tile] = field(default_factory=dict, compare=False, repr=False)

    def tile(self, tile_id: str) -> Tile:
        if not self._by_id:
            self._by_id.update({t.id: t for t in self.tiles})
        try:
            return self._by_id[tile_id]
        except KeyError:
            return resolve_subtile(self, tile_id)

    @property
    def max_estimate(self) -> int:
        return max((t.estimated_peak_bytes for t in self.tiles), default=0)

    @property
    def max_request(self) -> int:
        return max((t.memory_request_bytes for t in self.tiles), default=0)

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
            "gdalCacheBytes": self.sizing.cache_bytes,
            "memoryHeadroom": self.sizing.headroom,
            "files": files,
            "tiles": [t.to_json() for t in self.tiles],
            "totals": {
                "tiles": len(self.tiles),
                "estimatedPeakBytes": self.max_estimate,
                "memoryRequestBytes": self.max_request,
                "sumMemoryRequestBytes": sum(t.memory_request_bytes for t in self.tiles),
            },
        }


# ------------------------------------------------------------------------------ inputs


def input_files(job: GisJob) -> list[str]:
    inp = job.spec.input
    if inp.uri:
        return [inp.uri]
    if inp.uris:
        return list(inp.uris)
    assert inp.glob is not None
    files = sorted(globmod.glob(inp.glob))
    if not files:
        raise InputError(f"{inp.glob}: spec.input.glob matches no file")
    return files


def _fingerprint(uri: str) -> dict[str, Any]:
    try:
        st = os.stat(uri)
    except OSError:
        return {"uri": uri}
    return {"uri": uri, "size": st.st_size, "mtime": st.st_mtime_ns}


def plan_digest(job: GisJob, files: list[str]) -> str:
    """Changes when anything that determines the outputs changes: input, operation, tiling,
    output format — not parallelism or memory sizing, which change how, not what."""
    spec = job.spec
    payload = {
        "planner": PLANNER_VERSION,
        "input": spec.input.model_dump(mode="json", by_alias=True),
        "files": [_fingerprint(f) for f in files],
        "operation": spec.operation.model_dump(mode="json", by_alias=True),
        "format": output_format(job),
        "tiling": spec.tiling.model_dump(mode="json", by_alias=True),
    }
    blob = json.dumps(payload, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def open_raster_source(uri: str) -> Any:
    import rasterio
    from rasterio.errors import RasterioIOError

    if "://" not in uri and not uri.startswith("/vsi") and not os.path.exists(uri):
        raise InputError(f"{uri}: input file not found")
    try:
        return rasterio.open(uri)
    except RasterioIOError as exc:
        raise InputError(f"{uri}: not a raster GDAL can read ({_one_line(str(exc))})") from None


def _raster_file(index: int, uri: str, op: RasterOperation[Any], params: Any) -> RasterFile:
    with open_raster_source(uri) as ds:
        src = RasterSource(
            path=uri,
            count=ds.count,
            dtypes=tuple(ds.dtypes),
            nodata=ds.nodata,
            width=ds.width,
            height=ds.height,
        )
        try:
            op.check(params, src)
        except ValueError as exc:
            raise InputError(f"{uri}: spec.operation.params: {exc}") from None
        bands = op.bands(params, src)
        shapes = {ds.block_shapes[b - 1] for b in bands}
        block_h = math.lcm(*(s[0] for s in shapes))
        block_w = math.lcm(*(s[1] for s in shapes))
        import numpy as np

        read_bpp = sum(np.dtype(ds.dtypes[b - 1]).itemsize for b in bands)
        out = op.output(params, src)
        out_bpp = out.count * np.dtype(out.dtype).itemsize
        bpp = read_bpp + op.temp_bytes_per_pixel(params, src) + MASK_BYTES_PER_PIXEL + out_bpp
        return RasterFile(
            index=index,
            uri=uri,
            width=ds.width,
            height=ds.height,
            count=ds.count,
            block_width=block_w,
            block_height=block_h,
            bands=tuple(bands),
            read_bytes_per_pixel=read_bpp,
            bytes_per_pixel=bpp,
            output=out,
        )


def _vector_file(
    index: int, uri: str, layer: str | None, op: VectorOperation[Any], params: Any
) -> VectorFile:
    import pyogrio
    from pyogrio import raw
    from pyogrio.errors import DataLayerError, DataSourceError, FieldError

    if "://" not in uri and not uri.startswith("/vsi") and not os.path.exists(uri):
        raise InputError(f"{uri}: input file not found")
    try:
        info = pyogrio.read_info(uri, layer=layer, force_feature_count=True)
    except (DataSourceError, DataLayerError) as exc:
        raise InputError(
            f"{uri}: not a vector layer GDAL can read ({_one_line(str(exc))})"
        ) from None
    opts = op.read_options(params)
    fields = list(info["fields"])
    for col in opts.columns or []:
        if col not in fields:
            raise InputError(
                f"{uri}: spec.operation.params.columns: no column {col!r} "
                f"(the layer has {', '.join(fields) or 'no attribute columns'})"
            )
    try:
        _, sample = raw.read_arrow(
            uri,
            layer=layer,
            columns=opts.columns,
            where=opts.where,
            max_features=VECTOR_SAMPLE_ROWS,
            return_fids=False,
        )
        if sample.num_rows == 0:  # a selective filter: size by the unfiltered rows
            _meta, sample = raw.read_arrow(
                uri, layer=layer, columns=opts.columns, max_features=VECTOR_SAMPLE_ROWS
            )
        _, first = raw.read_arrow(
            uri, layer=layer, columns=[], read_geometry=False, max_features=1, return_fids=True
        )
    except (DataSourceError, DataLayerError, FieldError, OSError) as exc:
        # GDAL errors raised while streaming arrive as a plain OSError from pyarrow
        raise InputError(f"{uri}: spec.operation.params.where: {_one_line(str(exc))}") from None
    bpf = sample.nbytes / sample.num_rows if sample.num_rows else 1024.0
    fid_col = first.column_names[0] if first.num_columns else None
    first_fid = int(first.column(0)[0].as_py()) if first.num_rows and fid_col else 0
    crs = info.get("crs")
    return VectorFile(
        index=index,
        uri=uri,
        layer=layer,
        features=int(info["features"]),
        first_fid=first_fid,
        bytes_per_feature=max(bpf, 64.0),
        crs=crs,
    )


# ------------------------------------------------------------------------------ sizing


def size_raster(
    sizing: Sizing, f: RasterFile, window: Window, chunk_scale: float = 1.0
) -> tuple[ChunkShape, int, int]:
    """(chunk, estimate, request) for a raster tile; raises SpecError if nothing fits."""
    bpp = f.bytes_per_pixel
    if sizing.memory is not None:
        budget = memory.usable_for(sizing.memory, sizing.headroom)
        max_px = memory.chunk_pixel_budget(budget, sizing.baseline_bytes, sizing.cache_bytes, bpp)
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
            memory.raster_estimate(sizing.baseline_bytes, sizing.cache_bytes, one_block, bpp),
            sizing.headroom,
        )
        raise SpecError(
            f"spec.resources.memory: {format_bytes(sizing.memory or 0)} is below this job's "
            f"minimum of {format_bytes(needed)} (import baseline "
            f"{format_bytes(sizing.baseline_bytes)} + GDAL cache {format_bytes(sizing.cache_bytes)}"
            f" + one {f.block_width}x{f.block_height} block at {bpp} B/pixel, + headroom)"
        )
    estimate = memory.raster_estimate(sizing.baseline_bytes, sizing.cache_bytes, chunk.pixels, bpp)
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
        rows = memory.batch_rows_for(budget, sizing.baseline_bytes, sizing.cache_bytes, bpf, factor)
        if rows < memory.MIN_BATCH_ROWS:
            need = memory.request_for(
                memory.vector_estimate(
                    sizing.baseline_bytes, sizing.cache_bytes, memory.MIN_BATCH_ROWS, bpf, factor
                ),
                sizing.headroom,
            )
            raise SpecError(
                f"spec.resources.memory: {format_bytes(sizing.memory)} is below this job's "
                f"minimum of {format_bytes(need)} (import baseline "
                f"{format_bytes(sizing.baseline_bytes)} + GDAL cache "
                f"{format_bytes(sizing.cache_bytes)} + {memory.MIN_BATCH_ROWS} features, "
                f"+ headroom)"
            )
    else:
        rows = int(memory.DEFAULT_CHUNK_BYTES / (bpf * factor))
    rows = max(1, min(rows, memory.MAX_BATCH_ROWS, max(1, rng.features)))
    if chunk_scale < 1.0:
        rows = max(1, int(rows * chunk_scale))
    estimate = memory.vector_estimate(sizing.baseline_bytes, sizing.cache_bytes, rows, bpf, factor)
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
    halves = split_range(tile.fids)
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


# -------------------------------------------------------------------------------- plan


def build_plan(job: GisJob, *, file_indexes: list[int] | None = None) -> Plan:
    """Plan the job. ``file_indexes`` limits metadata reads to some files (a worker needs one)."""
    try:
        return _build_plan(job, file_indexes)
    except SpecError as exc:
        msg = str(exc)
        raise SpecError(f"{job.source}: {msg}" if msg.startswith("spec.") else msg) from None


def _build_plan(job: GisJob, file_indexes: list[int] | None) -> Plan:
    op = get_operation(job.spec.operation.name)
    params = op.parse_params(job.spec.operation.params)
    uris = input_files(job)
    res = job.spec.resources
    multi = len(uris) > 1
    sizing = Sizing(
        kind=op.kind,
        baseline_bytes=memory.measured_baseline(op.kind),
        cache_bytes=int(res.gdal_cache_max),
        headroom=res.memory_headroom,
        memory=int(res.memory) if res.memory is not None else None,
        memory_factor=op.memory_factor(params) if isinstance(op, VectorOperation) else 1.0,
    )
    files: list[RasterFile | VectorFile] = []
    tiles: list[Tile] = []
    wanted = set(range(len(uris))) if file_indexes is None else set(file_indexes)
    for i, uri in enumerate(uris):
        if i not in wanted:
            files.append(_placeholder(i, uri, op.kind))
            continue
        fi = i if multi else None
        if isinstance(op, RasterOperation):
            rf = _raster_file(i, uri, op, params)
            files.append(rf)
            for r, c, win in raster_grid(
                rf.width, rf.height, job.spec.tiling.tile_size, rf.block_width, rf.block_height
            ):
                tiles.append(make_raster_tile(sizing, rf, raster_tile_id(fi, r, c), win))
        else:
            vf = _vector_file(i, uri, job.spec.input.layer, op, params)
            files.append(vf)
            for k, rng in enumerate(
                feature_ranges(vf.first_fid, vf.features, job.spec.tiling.features_per_tile)
            ):
                tiles.append(make_vector_tile(sizing, vf, vector_tile_id(fi, k), rng))
    return Plan(
        job=job.name,
        kind=op.kind,
        operation=op.name,
        output_format=output_format(job),
        digest=plan_digest(job, uris),
        sizing=sizing,
        files=tuple(files),
        tiles=tuple(tiles),
    )


def _placeholder(index: int, uri: str, kind: Kind) -> RasterFile | VectorFile:
    if kind == "raster":
        return RasterFile(index, uri, 0, 0, 0, 1, 1, (), 0, 1, RasterOutput(1, "float32", 0.0))
    return VectorFile(index, uri, None, 0, 0, 1.0, None)


def plan_for_tile(job: GisJob, tile_id: str) -> tuple[Plan, Tile]:
    """What a worker needs: the plan of its tile's file only, and the tile."""
    try:
        tid = parse_tile_id(tile_id)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    plan = build_plan(job, file_indexes=[tid.file_index or 0])
    return plan, plan.tile(tile_id)
