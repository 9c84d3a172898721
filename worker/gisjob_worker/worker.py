"""Process one tile inside its memory budget.

``run_tile`` is the whole life of a worker: configure GDAL before it loads, plan the tile,
stream block-aligned chunks (rasters) or Arrow batches (vectors) through the operation under
the memory guard, write the output atomically, and return a :class:`ResultRecord`.
"""

from __future__ import annotations

import json
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np

from . import outputs
from .cgroup import CgroupMemory
from .cgroup import current as current_cgroup
from .errors import EXIT_OK, GisJobError, InputError
from .guard import MemoryGuard, malloc_trim, peak_rss_bytes, rss_bytes
from .logs import get_logger
from .memory import CHUNK_SLACK, VECTOR_STREAM_BATCHES
from .metrics import WorkerMetrics
from .planner import Plan, RasterFile, Tile, VectorFile, plan_for_tile, resize_tile
from .registry import RasterOperation, VectorOperation, get_operation
from .result import ResultRecord
from .spec import GisJob
from .tiles import Window, chunk_windows

COG_BLOCK = 512


def import_raster_stack() -> None:
    """Everything a raster worker imports before its first chunk (the memory baseline)."""
    import rasterio
    import rasterio.shutil

    from . import gdalenv

    with (
        rasterio.MemoryFile() as mem,
        mem.open(driver="GTiff", width=16, height=16, count=1, dtype="uint8") as ds,
    ):
        ds.write(np.zeros((1, 16, 16), dtype="uint8"))
    gdalenv.rasterio_cache()


def import_vector_stack() -> None:
    """Everything a vector worker imports before its first batch (the memory baseline)."""
    import pyarrow.parquet  # noqa: F401

    from . import gdalenv

    gdalenv.import_pyogrio()
    import pyogrio.raw  # noqa: F401
    import pyproj  # noqa: F401
    import shapely  # noqa: F401


class Terminated(GisJobError):
    """SIGTERM (pod deletion, runner shutdown): clean up and exit retryably."""

    exit_code = 143


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise Terminated("terminated by SIGTERM")


@dataclass
class Progress:
    chunks: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    temps: list[Path] = field(default_factory=list)


@dataclass
class TileContext:
    job: GisJob
    plan: Plan
    tile: Tile
    guard: MemoryGuard
    metrics: WorkerMetrics | None
    log: Any
    progress: Progress = field(default_factory=Progress)


# ------------------------------------------------------------------------------ raster


def _valid_mask(data: np.ndarray, nodatas: list[float | None]) -> np.ndarray:
    valid = np.ones(data.shape[1:], dtype=bool)
    for i, nd in enumerate(nodatas):
        if nd is None:
            continue
        if np.isnan(nd):
            valid &= ~np.isnan(data[i])
        else:
            valid &= data[i] != nd
    return valid


def _profile(ds: Any, f: RasterFile, window: Window, fmt: str) -> dict[str, Any]:
    from rasterio.windows import Window as RioWindow

    out = f.output
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "width": window.width,
        "height": window.height,
        "count": out.count,
        "dtype": out.dtype,
        "nodata": out.nodata,
        "crs": ds.crs,
        "transform": ds.window_transform(
            RioWindow(window.col_off, window.row_off, window.width, window.height)
        ),
        "compress": "deflate",
        "BIGTIFF": "IF_SAFER",
    }
    bw, bh = f.block_width, f.block_height
    if bw % 16 == 0 and bh % 16 == 0 and bw <= 4096 and bh <= 4096:
        profile.update(tiled=True, blockxsize=bw, blockysize=bh)
    else:
        profile.update(tiled=False, blockysize=min(bh, window.height))
    return profile


def _run_raster(ctx: TileContext, op: RasterOperation[Any], final: Path) -> None:
    import rasterio
    import rasterio.shutil
    from rasterio.windows import Window as RioWindow

    f = ctx.plan.files[ctx.tile.file_index]
    assert isinstance(f, RasterFile) and ctx.tile.window is not None and ctx.tile.chunk
    params = op.parse_params(ctx.job.spec.operation.params)
    fmt = ctx.plan.output_format
    work = outputs.temp_path(final, "-work" if fmt == "COG" else "")
    ctx.progress.temps.append(work)
    from .planner import open_raster_source

    with open_raster_source(f.uri) as ds:
        nodatas = [ds.nodatavals[b - 1] for b in f.bands]
        per_chunk = int(ctx.tile.chunk.pixels * f.bytes_per_pixel * (1 + CHUNK_SLACK))
        with rasterio.open(work, "w", **_profile(ds, f, ctx.tile.window, fmt)) as dst:
            for win in chunk_windows(ctx.tile.window, ctx.tile.chunk):
                started = time.perf_counter()
                rss0 = ctx.guard.check_before(per_chunk + _cache_growth(), f"chunk {win}")
                data = ds.read(
                    list(f.bands),
                    window=RioWindow(win.col_off, win.row_off, win.width, win.height),
                )
                valid = _valid_mask(data, nodatas)
                result = op.apply(params, data, valid, f.output)
                dst.write(
                    result,
                    window=RioWindow(
                        win.col_off - ctx.tile.window.col_off,
                        win.row_off - ctx.tile.window.row_off,
                        win.width,
                        win.height,
                    ),
                )
                nbytes = data.nbytes
                del data, valid, result
                rss1 = ctx.guard.check_after(f"chunk {win}")
                _chunk_done(ctx, started, nbytes, rss0, rss1, win)
    malloc_trim()
    if fmt == "COG":
        tmp = outputs.temp_path(final)
        ctx.progress.temps.append(tmp)
        ctx.guard.check_before(_cache_growth(), "COG conversion")
        rasterio.shutil.copy(
            str(work),
            str(tmp),
            driver="COG",
            compress="DEFLATE",
            blocksize=COG_BLOCK,
            overview_resampling="nearest",
            num_threads=1,
        )
        outputs.remove_quietly(work)
        ctx.guard.check_after("COG conversion")
    else:
        tmp = work
    ctx.progress.bytes_written = outputs.commit(tmp, final)


def _cache_growth() -> int:
    from . import gdalenv

    cache = gdalenv.rasterio_cache()
    return max(0, cache.max - cache.used) if cache is not None else 0


# ------------------------------------------------------------------------------ vector


def _geo_metadata(crs: str | None, geometry_type: str | None) -> bytes:
    column: dict[str, Any] = {"encoding": "WKB", "geometry_types": []}
    if geometry_type and geometry_type not in ("Unknown", "Geometry"):
        column["geometry_types"] = [geometry_type.replace(" ", "")]
    if crs:
        from pyproj import CRS

        column["crs"] = CRS.from_user_input(crs).to_json_dict()
    meta = {"version": "1.0.0", "primary_column": "geometry", "columns": {"geometry": column}}
    return json.dumps(meta).encode()


def _run_vector(ctx: TileContext, op: VectorOperation[Any], final: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from pyogrio import raw
    from pyogrio.errors import DataLayerError, DataSourceError, FieldError

    f = ctx.plan.files[ctx.tile.file_index]
    assert isinstance(f, VectorFile) and ctx.tile.fids is not None and ctx.tile.batch_rows
    params = op.parse_params(ctx.job.spec.operation.params)
    opts = op.read_options(params)
    where = ctx.tile.fids.where() + (f" AND ({opts.where})" if opts.where else "")
    tmp = outputs.temp_path(final)
    ctx.progress.temps.append(tmp)
    per_batch = int(
        ctx.tile.batch_rows
        * f.bytes_per_feature
        * (ctx.plan.sizing.memory_factor + VECTOR_STREAM_BATCHES - 1)
        * (1 + CHUNK_SLACK)
    )
    fmt = ctx.plan.output_format
    writer: Any = None
    try:
        with raw.open_arrow(
            f.uri,
            layer=f.layer,
            columns=opts.columns,
            where=where,
            batch_size=ctx.tile.batch_rows,
            use_pyarrow=True,
        ) as (meta, reader):
            geom_name = meta.get("geometry_name") or "wkb_geometry"
            crs = meta.get("crs")
            batches = iter(reader)
            index = 0
            while True:
                started = time.perf_counter()
                rss0 = ctx.guard.check_before(per_batch, f"batch {index}")
                batch = next(batches, None)
                if batch is None:
                    break
                table = pa.Table.from_batches([batch])
                del batch
                names = ["geometry" if n == geom_name else n for n in table.column_names]
                table = table.rename_columns(names)
                table = _plain_geometry(table)
                result = op.apply(params, table, crs)
                nbytes = table.nbytes
                if fmt == "GPKG":
                    _write_gpkg(result, tmp, meta, append=writer is not None)
                    writer = True
                else:
                    if writer is None:
                        schema = result.schema.with_metadata(
                            {b"geo": _geo_metadata(crs, meta.get("geometry_type"))}
                        )
                        writer = pq.ParquetWriter(str(tmp), schema, compression="zstd")
                    writer.write_table(result.replace_schema_metadata(writer.schema.metadata))
                del table, result
                rss1 = ctx.guard.check_after(f"batch {index}")
                _chunk_done(ctx, started, nbytes, rss0, rss1, None)
                index += 1
            if writer is None:  # no feature matched: an empty part that still has the schema
                empty = _plain_geometry(
                    reader.schema.empty_table().rename_columns(
                        ["geometry" if n == geom_name else n for n in reader.schema.names]
                    )
                )
                empty = (
                    op.apply(params, empty, crs)
                    if crs or not getattr(params, "area", False)
                    else empty
                )
                if fmt == "GPKG":
                    _write_gpkg(empty, tmp, meta, append=False)
                else:
                    schema = empty.schema.with_metadata(
                        {b"geo": _geo_metadata(crs, meta.get("geometry_type"))}
                    )
                    writer = pq.ParquetWriter(str(tmp), schema, compression="zstd")
    except (DataSourceError, DataLayerError, FieldError) as exc:
        raise InputError(f"{f.uri}: {' '.join(str(exc).split())}") from None
    except ValueError as exc:
        raise InputError(f"{f.uri}: {exc}") from None
    finally:
        if writer is not None and writer is not True:
            writer.close()
    malloc_trim()
    ctx.progress.bytes_written = outputs.commit(tmp, final)


def _plain_geometry(table: Any) -> Any:
    """Geometry as plain binary WKB (drop Arrow extension metadata GDAL attaches)."""
    import pyarrow as pa

    if "geometry" not in table.column_names:
        return table
    i = table.column_names.index("geometry")
    col = table.column(i)
    if not pa.types.is_binary(col.type) and not pa.types.is_large_binary(col.type):
        col = col.cast(pa.binary())
    return table.set_column(i, pa.field("geometry", pa.binary()), col)


def _write_gpkg(table: Any, path: Path, meta: dict[str, Any], *, append: bool) -> None:
    from pyogrio.raw import write_arrow

    write_arrow(
        table,
        str(path),
        layer=final_layer_name(path),
        driver="GPKG",
        geometry_name="geometry",
        geometry_type=meta.get("geometry_type") or "Unknown",
        crs=meta.get("crs"),
        append=append,
    )


def final_layer_name(path: Path) -> str:
    name = path.name.split(outputs.TMP_MARK)[0].lstrip(".")
    return name.removesuffix(".gpkg")


# ------------------------------------------------------------------------------ common


def _chunk_done(
    ctx: TileContext, started: float, nbytes: int, rss0: int, rss1: int, win: Window | None
) -> None:
    elapsed = time.perf_counter() - started
    ctx.progress.chunks += 1
    ctx.progress.bytes_read += nbytes
    if ctx.metrics is not None:
        ctx.metrics.chunks.inc()
        ctx.metrics.bytes_read.inc(nbytes)
        ctx.metrics.chunk_seconds.observe(elapsed)
    ctx.log.info(
        "chunk",
        n=ctx.progress.chunks,
        of=ctx.tile.chunks,
        window=[win.col_off, win.row_off, win.width, win.height] if win else None,
        seconds=round(elapsed, 4),
        rss=rss1,
        rss_delta=rss1 - rss0,
        bytes_read=nbytes,
    )


@dataclass(frozen=True)
class WorkerOptions:
    tile: str
    memory: int | None = None  # budget override (policy: grow); default the tile's request
    chunk_scale: float = 1.0  # policy: shrinkChunks
    metrics: WorkerMetrics | None = None


def run_tile(job: GisJob, opts: WorkerOptions, cgroup: CgroupMemory | None = None) -> ResultRecord:
    """Run one tile; never raises for tile failures — they become the record's outcome."""
    started = time.monotonic()
    log = get_logger(job=job.name, tile=opts.tile)
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    record = ResultRecord(tile=opts.tile, outcome="succeeded", exitCode=EXIT_OK, peakRssBytes=0)
    progress = Progress()
    cg = cgroup if cgroup is not None else current_cgroup()
    try:
        plan, tile = plan_for_tile(job, opts.tile)
        if opts.chunk_scale < 1.0:
            tile = resize_tile(plan, tile, opts.chunk_scale)
        budget = opts.memory or tile.memory_request_bytes
        guard = MemoryGuard(budget, cg)
        record.memoryBudgetBytes = guard.hard
        record.estimatedPeakBytes = tile.estimated_peak_bytes
        if opts.metrics is not None:
            opts.metrics.budget.set(guard.hard)
            opts.metrics.ceiling.set(guard.soft)
            opts.metrics.estimate.set(tile.estimated_peak_bytes)
        log.info(
            "tile.start",
            chunks=tile.chunks,
            estimate=tile.estimated_peak_bytes,
            budget=guard.hard,
            soft_ceiling=guard.soft,
            rss=rss_bytes(),
            chunk=[tile.chunk.width, tile.chunk.height] if tile.chunk else tile.batch_rows,
        )
        ctx = TileContext(job, plan, tile, guard, opts.metrics, log, progress)
        final = outputs.tile_output_path(job.spec.output.uri, plan.output_format, tile.id)
        final.parent.mkdir(parents=True, exist_ok=True)
        op = get_operation(job.spec.operation.name)
        if isinstance(op, RasterOperation):
            _run_raster(ctx, op, final)
        else:
            _run_vector(ctx, op, final)
        record.output = str(final)
    except GisJobError as exc:
        record.outcome = exc.outcome  # type: ignore[assignment]
        record.exitCode = exc.exit_code
        record.error = " ".join(str(exc).split())
        if opts.metrics is not None and exc.outcome == "memory":
            opts.metrics.memory_failures.inc()
    except MemoryError as exc:
        record.outcome, record.exitCode = "memory", 3
        record.error = f"MemoryError: {exc}"
    except Exception as exc:  # retryable: an I/O hiccup, a bug — the record says which
        record.outcome, record.exitCode = "error", 1
        record.error = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
        log.exception("tile.error")
    finally:
        signal.signal(signal.SIGTERM, previous)
        outputs.remove_quietly(*progress.temps)
    record.chunks = progress.chunks
    record.bytesRead = progress.bytes_read
    record.bytesWritten = progress.bytes_written
    record.seconds = round(time.monotonic() - started, 3)
    record.peakRssBytes = peak_rss_bytes()
    cg_after = current_cgroup() if cg is not None else None
    if cg_after is not None and cg_after.limit is not None and cg_after.peak is not None:
        record.cgroupPeakBytes = cg_after.peak
    if opts.metrics is not None:
        opts.metrics.bytes_written.inc(progress.bytes_written)
    log.info(
        "tile.end",
        outcome=record.outcome,
        peak_rss=record.peakRssBytes,
        seconds=record.seconds,
        error=record.error,
    )
    return record
