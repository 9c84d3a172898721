"""What one tile's run carries through its chunk loop (shared by the raster and vector
paths): the plan and tile, the memory guard, metrics, the logger and progress counters."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import GisJobError
from .guard import MemoryGuard
from .metrics import WorkerMetrics
from .plan import Plan, Tile
from .spec import GisJob
from .tiles import Window


class Terminated(GisJobError):
    """SIGTERM (pod deletion, runner shutdown): clean up and exit retryably."""

    exit_code = 143


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


# ------------------------------------------------------------------------------ common


def chunk_done(
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


def cache_growth() -> int:
    from . import gdalenv

    cache = gdalenv.rasterio_cache()
    return max(0, cache.max - cache.used) if cache is not None else 0
