"""One raster tile: block-aligned chunk windows through the operation into a GeoTIFF/COG
written under a temporary name and renamed into place."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from . import outputs
from .guard import malloc_trim
from .memory import CHUNK_SLACK
from .plan import RasterFile
from .registry import RasterOperation
from .tilecontext import TileContext, cache_growth, chunk_done
from .tiles import Window, chunk_windows

COG_BLOCK = 512


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


def run_raster(ctx: TileContext, op: RasterOperation[Any], final: Path) -> None:
    import rasterio
    import rasterio.shutil
    from rasterio.windows import Window as RioWindow

    f = ctx.plan.files[ctx.tile.file_index]
    assert isinstance(f, RasterFile) and ctx.tile.window is not None and ctx.tile.chunk
    params = op.parse_params(ctx.job.spec.operation.params)
    fmt = ctx.plan.output_format
    work = outputs.temp_path(final, "-work" if fmt == "COG" else "")
    ctx.progress.temps.append(work)
    from .inputs import open_raster_source

    with open_raster_source(f.uri) as ds:
        nodatas = [ds.nodatavals[b - 1] for b in f.bands]
        per_chunk = int(ctx.tile.chunk.pixels * f.bytes_per_pixel * (1 + CHUNK_SLACK))
        with rasterio.open(work, "w", **_profile(ds, f, ctx.tile.window, fmt)) as dst:
            for win in chunk_windows(ctx.tile.window, ctx.tile.chunk):
                started = time.perf_counter()
                rss0 = ctx.guard.check_before(per_chunk + cache_growth(), f"chunk {win}")
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
                chunk_done(ctx, started, nbytes, rss0, rss1, win)
    malloc_trim()
    if fmt == "COG":
        tmp = outputs.temp_path(final)
        ctx.progress.temps.append(tmp)
        ctx.guard.check_before(cache_growth(), "COG conversion")
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
