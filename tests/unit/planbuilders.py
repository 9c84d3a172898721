"""Plan pieces for the pure tests (policy, reconcile, status): sizings and input files built
directly from the planner's dataclasses, no I/O."""

from __future__ import annotations

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
