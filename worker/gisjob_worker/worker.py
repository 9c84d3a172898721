"""Process one tile inside its memory budget.

``run_tile`` is the whole life of a worker: configure GDAL before it loads, plan the tile,
stream block-aligned chunks (rasters) or Arrow batches (vectors) through the operation under
the memory guard, write the output atomically, and return a :class:`ResultRecord`.
"""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass
from types import FrameType

import numpy as np

from . import outputs
from .cgroup import CgroupMemory
from .cgroup import current as current_cgroup
from .errors import EXIT_OK, GisJobError
from .guard import MemoryGuard, peak_rss_bytes, rss_bytes
from .inputs import input_files
from .location import Location, open_location
from .logs import get_logger
from .memory import UPLOAD_BYTES
from .metrics import WorkerMetrics
from .plan import resize_tile
from .planner import plan_digest, plan_for_tile
from .raster_tile import run_raster
from .registry import RasterOperation, get_operation
from .result import ResultRecord
from .spec import GisJob
from .tilecontext import Progress, Terminated, TileContext
from .vector_tile import run_vector


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


def _digest_or_none(job: GisJob) -> str | None:
    try:
        return plan_digest(job, input_files(job))
    except Exception:  # the input cannot even be listed: no plan to record under
        return None


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise Terminated("terminated by SIGTERM")


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
    record = ResultRecord(
        tile=opts.tile, outcome="succeeded", exitCode=EXIT_OK, peakRssBytes=0, job=job.name
    )
    progress = Progress()
    location: Location | None = None
    cg = cgroup if cgroup is not None else current_cgroup()
    try:
        plan, tile = plan_for_tile(job, opts.tile)
        record.digest = plan.digest  # the ledger's key: the plan this worker built
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
        location = open_location(job.spec.output.uri)
        key = outputs.tile_output_key(plan.output_format, tile.id)
        final = location.scratch(key)  # the output itself, or local scratch for an object
        op = get_operation(job.spec.operation.name)
        if isinstance(op, RasterOperation):
            run_raster(ctx, op, final)
        else:
            run_vector(ctx, op, final)
        if location.remote:
            guard.check_before(UPLOAD_BYTES, "upload")
        location.publish(final, key)
        record.output = location.describe(key)
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
        if location is not None:
            location.close()
    if record.digest is None:  # planning failed: the digest needs no metadata reads
        record.digest = _digest_or_none(job)
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
