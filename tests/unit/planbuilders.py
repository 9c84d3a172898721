"""Plan pieces for the pure tests (policy, reconcile, status): sizings and input files built
directly from the planner's dataclasses, and worker pod views as the reconciler reads them;
no I/O."""

from __future__ import annotations

from collections.abc import Sequence
from types import EllipsisType
from typing import Any

from gisjob_operator.podview import PodView
from gisjob_worker.plan import RasterFile, RasterOutput, Sizing, VectorFile

MIB = 1024**2
BASELINE_RASTER = 100_000_000
BASELINE_VECTOR = 200_000_000


def raster_sizing(memory: int | None = None) -> Sizing:
    return Sizing(
        kind="raster",
        baseline_bytes=BASELINE_RASTER,
        cache_bytes=64 * MIB,
        headroom=0.2,
        memory=memory,
    )


def vector_sizing(memory: int | None = None) -> Sizing:
    return Sizing(
        kind="vector",
        baseline_bytes=BASELINE_VECTOR,
        cache_bytes=64 * MIB,
        headroom=0.2,
        memory=memory,
        memory_factor=3.0,
    )


def raster_file(
    width: int,
    height: int | None = None,
    *,
    block: int = 512,
    bands: tuple[int, ...] = (1, 2),
    read_bytes_per_pixel: int = 4,
    bytes_per_pixel: int = 16,
    uri: str = "/data/in.tif",
) -> RasterFile:
    """A tiled raster of ``width`` x ``height`` (square by default), float32 output."""
    return RasterFile(
        index=0,
        uri=uri,
        width=width,
        height=width if height is None else height,
        count=len(bands),
        block_width=block,
        block_height=block,
        bands=bands,
        read_bytes_per_pixel=read_bytes_per_pixel,
        bytes_per_pixel=bytes_per_pixel,
        output=RasterOutput(count=1, dtype="float32", nodata=-9999.0),
    )


def vector_file(features: int = 1000) -> VectorFile:
    return VectorFile(
        index=0,
        uri="/data/parcels.gpkg",
        layer="parcels",
        features=features,
        first_fid=1,
        bytes_per_feature=1000.0,
        crs="EPSG:32633",
    )


# ------------------------------------------------------------------------------ pod views

NOW = 1_700_000_000.0  # the reconcile tests' clock (epoch seconds)


def worker_view(
    name: str,
    tile: str,
    memory: int,
    attempt: int = 0,
    phase: str = "Running",
    *,
    exit_code: int | EllipsisType | None = ...,
    finished_at: float | EllipsisType | None = ...,
    now: float = NOW,
    oom: bool = False,
    disrupted: bool = False,
    cause: str | None = None,
    record: dict[str, Any] | None = None,
    chunk_scale: float = 1.0,
    strategy: str = "initial",
    history: Sequence[dict[str, Any]] = (),
    deleting: bool = False,
    message: str | None = None,
) -> PodView:
    """A worker pod as :func:`gisjob_operator.reconcile.pod_view` reads it.

    A finished pod reports, unless told otherwise, what an ordinary ending does: exit 0
    (Succeeded) or 1 (Failed) and a finish time a minute before ``now``. Pass
    ``exit_code=None`` and/or ``finished_at=None`` for pods that report neither (evicted,
    lost with their node, rejected at admission: no terminated container state)."""
    done = phase in ("Succeeded", "Failed")
    if exit_code is ...:
        exit_code = (0 if phase == "Succeeded" else 1) if done else None
    if finished_at is ...:
        finished_at = now - 60 if done else None
    return PodView(
        name=name,
        tile=tile,
        attempt=attempt,
        phase=phase,
        memory=memory,
        chunk_scale=chunk_scale,
        strategy=strategy,
        history=tuple(history),
        exit_code=exit_code,
        oom_killed=oom,
        record=record,
        finished_at=finished_at,
        deleting=deleting,
        message=message,
        disrupted=disrupted,
        cause=cause,
    )
