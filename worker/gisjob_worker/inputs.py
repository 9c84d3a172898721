"""Input metadata (I/O): which files a job reads, and what the planner needs of each.

Metadata only — headers through rasterio, layer info and a small sample batch through
pyogrio — never a full read.
"""

from __future__ import annotations

import glob as globmod
import math
import os
from typing import Any

from .errors import InputError
from .plan import MASK_BYTES_PER_PIXEL, RasterFile, VectorFile
from .registry import RasterOperation, RasterSource, VectorOperation
from .spec import GisJob

VECTOR_SAMPLE_ROWS = 500


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


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def open_raster_source(uri: str) -> Any:
    import rasterio
    from rasterio.errors import RasterioIOError

    local = "://" not in uri and not uri.startswith("/vsi")
    if local and not os.path.exists(uri):
        raise InputError(f"{uri}: input file not found")
    try:
        if local and (os.path.exists(f"{uri}.msk") or os.path.exists(f"{uri}.MSK")):
            # GDAL_DISABLE_READDIR_ON_OPEN=EMPTY_DIR (gdalenv) hides sibling files, the
            # external mask among them: let GDAL probe for this file's siblings
            with rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="TRUE"):
                return rasterio.open(uri)
        return rasterio.open(uri)
    except RasterioIOError as exc:
        raise InputError(f"{uri}: not a raster GDAL can read ({one_line(str(exc))})") from None


def raster_file(index: int, uri: str, op: RasterOperation[Any], params: Any) -> RasterFile:
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
        from .raster_tile import mask_bytes_per_pixel

        # per-band validity masks (at least MASK_BYTES_PER_PIXEL: one mask and a temporary)
        mask_bpp = max(MASK_BYTES_PER_PIXEL, mask_bytes_per_pixel(len(bands), op.per_band_valid))
        bpp = read_bpp + op.temp_bytes_per_pixel(params, src) + mask_bpp + out_bpp
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


def vector_file(
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
            f"{uri}: not a vector layer GDAL can read ({one_line(str(exc))})"
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
        raise InputError(f"{uri}: spec.operation.params.where: {one_line(str(exc))}") from None
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
