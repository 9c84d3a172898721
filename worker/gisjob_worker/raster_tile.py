"""One raster tile: block-aligned chunk windows through the operation into a GeoTIFF/COG
written under a temporary name and renamed into place.

Each band read carries its own validity mask (its nodata value, and the dataset's GDAL mask
band: alpha, internal or ``.msk``); a read that fails on corrupt or truncated data is an
:class:`InputError` (exit 2, never retried) naming the file, the window and GDAL's reason."""

from __future__ import annotations

import functools
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from . import outputs
from .errors import InputError
from .guard import malloc_trim
from .memory import CHUNK_SLACK
from .plan import RasterFile
from .registry import RasterOperation
from .storage import is_network
from .tilecontext import TileContext, cache_growth, chunk_done
from .tiles import Window, chunk_windows

COG_BLOCK = 512


@dataclass(frozen=True)
class BandMask:
    """Where the validity of one band read comes from (GDAL's mask flags, RFC 15).

    ``nodata``: the band's own nodata value, compared in NumPy on the values already read (what
    GDAL's nodata mask band computes, without reading the band twice). ``read``: the GDAL
    mask band to read with ``read_masks`` — ``"dataset"`` for a mask shared by all bands (an
    alpha band, an internal mask, an external ``.msk``), ``"band"`` for the band's own mask
    band — or None. Both may apply: a pixel is data only where its value is not the band's
    nodata *and* the mask band shows it (GDAL gives the mask band precedence over nodata in
    its flags; a value tagged nodata is still no data).
    """

    nodata: float | None
    read: Literal["dataset", "band"] | None


def band_masks(ds: Any, bands: list[int] | tuple[int, ...]) -> list[BandMask]:
    """The masks of ``bands`` (1-based) of an open rasterio dataset."""
    from rasterio.enums import MaskFlags

    masks = []
    for b in bands:
        flags = set(ds.mask_flag_enums[b - 1])
        nodata = ds.nodatavals[b - 1]
        read: Literal["dataset", "band"] | None
        if MaskFlags.all_valid in flags:
            read = None
        elif MaskFlags.per_dataset in flags:  # alpha, internal mask, .msk, NODATA_VALUES
            read = "dataset"
        elif MaskFlags.nodata in flags:
            read = None  # exactly the nodata comparison, done on the values read
        else:  # a mask band of its own
            read = "band"
        masks.append(BandMask(None if nodata is None else float(nodata), read))
    return masks


def mask_bytes_per_pixel(bands: int, per_band_valid: bool) -> int:
    """Bytes per pixel of the masks while a chunk is processed: the (bands, h, w) validity
    mask, one plane for a mask band read through GDAL or a nodata comparison, and, for an
    operation that takes one merged (h, w) mask, that plane."""
    return bands + 1 + (0 if per_band_valid else 1)


def _not_nodata(values: np.ndarray, nodata: float, out: np.ndarray) -> None:
    """``out[...] = values != nodata``, compared in the band's own type as GDAL does."""
    dt = values.dtype
    if math.isnan(nodata):
        if dt.kind == "f":
            np.isnan(values, out=out)
            np.logical_not(out, out=out)
        else:
            out.fill(True)
        return
    if dt.kind in "iu":
        info = np.iinfo(dt)
        if not (info.min <= nodata <= info.max) or nodata != int(nodata):
            out.fill(True)  # no pixel of this type can hold it
            return
        np.not_equal(values, dt.type(int(nodata)), out=out)
        return
    if math.isfinite(nodata) and abs(nodata) > float(np.finfo(dt).max):
        out.fill(True)  # beyond the type's range: no pixel holds it (GDAL's rule too)
        return
    np.not_equal(values, dt.type(nodata), out=out)


def chunk_valid(
    bands: tuple[int, ...],
    masks: list[BandMask],
    data: np.ndarray,
    read_mask: Callable[[int], np.ndarray],
) -> np.ndarray:
    """(bands, h, w) bool: each band's own validity over the chunk ``data``.

    ``read_mask(band)`` reads the GDAL mask band of ``band`` over the chunk's window. When
    no band has a mask, the result is a read-only broadcast of True (no memory)."""
    if all(m.nodata is None and m.read is None for m in masks):
        return np.broadcast_to(np.True_, data.shape)
    valid = np.empty(data.shape, dtype=bool)
    dataset_row: int | None = None
    for i, (b, m) in enumerate(zip(bands, masks, strict=True)):
        if m.read == "dataset" and dataset_row is not None:
            np.copyto(valid[i], valid[dataset_row])  # one per-dataset mask read per chunk
        elif m.read is not None:
            gdal_mask = read_mask(b)  # uint8: 0 hidden; 255 (or an alpha value > 0) shown
            np.not_equal(gdal_mask, 0, out=valid[i])
            del gdal_mask
            if m.read == "dataset":
                dataset_row = i
        elif m.nodata is None:
            valid[i].fill(True)
    scratch: np.ndarray | None = None
    for i, m in enumerate(masks):
        if m.nodata is None:
            continue
        if m.read is None:
            _not_nodata(data[i], m.nodata, out=valid[i])
            continue
        if scratch is None:
            scratch = np.empty(data.shape[1:], dtype=bool)
        _not_nodata(data[i], m.nodata, out=scratch)
        valid[i] &= scratch
    return valid


def merged_valid(valid: np.ndarray) -> np.ndarray:
    """(h, w) bool, a new array: valid in every band (operations without per-band masks)."""
    merged: np.ndarray = np.logical_and.reduce(valid, axis=0)
    return merged


# --------------------------------------------------------------------------- read errors

# GDAL errors saying the bytes could not be fetched — not that they are bad: network, memory,
# interruption. A read that fails with one of them stays retryable.
TRANSIENT_GDAL_ERRORS = frozenset(
    {
        "CPLE_HttpResponseError",
        "CPLE_AWSError",
        "CPLE_AWSAccessDeniedError",
        "CPLE_AWSBucketNotFoundError",
        "CPLE_AWSInvalidCredentialsError",
        "CPLE_AWSObjectNotFoundError",
        "CPLE_AWSSignatureDoesNotMatchError",
        "CPLE_FileIOError",
        "CPLE_OutOfMemoryError",
        "CPLE_UserInterruptError",
    }
)
_TRANSPORT_WORDS = ("curl", "http", "timed out", "timeout", "connection", "ssl", "network")
# what a decoder says about bytes it received whole but cannot decode
_DECODE_WORDS = ("decod", "corrupt", "invalid", "incorrect", "unexpected end", "bad ")
_BAND_PREFIX = re.compile(r"^.*?, (band \d+: )")
MAX_REASON = 400


def _gdal_errors(exc: BaseException) -> list[tuple[str, str]]:
    """(class name, message) of the GDAL errors behind ``exc``, outermost first."""
    found: list[tuple[str, str]] = []
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        name = type(cur).__name__
        if name.startswith("CPLE_"):
            found.append((name, " ".join(str(cur).split())))
        cur = cur.__cause__ or cur.__context__
    return found


def corrupt_data_reason(uri: str, exc: BaseException) -> str | None:
    """Why a failed read means the input's bytes are bad — permanently — or None when the
    failure may be transient (and the tile should be retried).

    rasterio raises ``RasterioIOError("Read failed…")`` chained to the GDAL errors: for a
    truncated TIFF ``IReadBlock failed … TIFFFillTile:Read error at row …; got N bytes,
    expected M``, for a corrupt tile ``… ZIPDecode:Decoding error at scanline 0``. A local
    file that is short or undecodable stays so; over a network a short read may be an
    interrupted transfer, so there only decoder errors are permanent. Errors of transport,
    memory or interruption are never permanent."""
    # without the "<path>, " prefix of GDAL's block errors: a path may contain any word
    errors = [(name, _BAND_PREFIX.sub(r"\1", msg)) for name, msg in _gdal_errors(exc)]
    if not errors:
        return None
    for name, msg in errors:
        text = msg.lower()
        if name in TRANSIENT_GDAL_ERRORS or any(w in text for w in _TRANSPORT_WORDS):
            return None
    if is_network(uri) and not any(w in m.lower() for _, m in errors for w in _DECODE_WORDS):
        return None
    parts: list[str] = []
    for _, msg in errors:
        if not any(msg in p for p in parts):
            parts.append(msg)
    reason = "; ".join(parts)
    return reason if len(reason) <= MAX_REASON else reason[: MAX_REASON - 3] + "..."


class _Reader:
    """Reads of one input dataset; a read failing on corrupt data raises :class:`InputError`
    (exit 2: retrying cannot help) naming the file, the window and GDAL's reason."""

    def __init__(self, ds: Any, uri: str) -> None:
        self.ds = ds
        self.uri = uri

    def _failed(self, exc: Exception, window: Window, what: str) -> None:
        reason = corrupt_data_reason(self.uri, exc)
        if reason is not None:
            w = window
            raise InputError(
                f"{self.uri}: corrupt or truncated data: cannot read {what} of rows "
                f"{w.row_off}-{w.row_off + w.height - 1}, columns "
                f"{w.col_off}-{w.col_off + w.width - 1} ({reason})"
            ) from None

    def data(self, bands: tuple[int, ...], window: Window) -> np.ndarray:
        from rasterio.errors import RasterioIOError

        try:
            return np.asarray(self.ds.read(list(bands), window=_rio(window)))
        except RasterioIOError as exc:
            self._failed(exc, window, "the pixels")
            raise

    def mask(self, band: int, window: Window) -> np.ndarray:
        from rasterio.errors import RasterioIOError

        try:
            return np.asarray(self.ds.read_masks(band, window=_rio(window)))
        except RasterioIOError as exc:
            self._failed(exc, window, f"the mask of band {band}")
            raise


def _rio(window: Window) -> Any:
    from rasterio.windows import Window as RioWindow

    return RioWindow(window.col_off, window.row_off, window.width, window.height)


def _profile(ds: Any, f: RasterFile, window: Window) -> dict[str, Any]:
    out = f.output
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "width": window.width,
        "height": window.height,
        "count": out.count,
        "dtype": out.dtype,
        "nodata": out.nodata,
        "crs": ds.crs,
        "transform": ds.window_transform(_rio(window)),
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

    f = ctx.plan.files[ctx.tile.file_index]
    assert isinstance(f, RasterFile) and ctx.tile.window is not None and ctx.tile.chunk
    params = op.parse_params(ctx.job.spec.operation.params)
    fmt = ctx.plan.output_format
    work = outputs.temp_path(final, "-work" if fmt == "COG" else "")
    ctx.progress.temps.append(work)
    from .inputs import open_raster_source

    with open_raster_source(f.uri) as ds:
        masks = band_masks(ds, f.bands)
        reader = _Reader(ds, f.uri)
        per_chunk = int(ctx.tile.chunk.pixels * f.bytes_per_pixel * (1 + CHUNK_SLACK))
        with rasterio.open(work, "w", **_profile(ds, f, ctx.tile.window)) as dst:
            for win in chunk_windows(ctx.tile.window, ctx.tile.chunk):
                started = time.perf_counter()
                rss0 = ctx.guard.check_before(per_chunk + cache_growth(), f"chunk {win}")
                data = reader.data(f.bands, win)
                valid = chunk_valid(
                    f.bands, masks, data, functools.partial(reader.mask, window=win)
                )
                if not op.per_band_valid:
                    valid = merged_valid(valid)
                result = op.apply(params, data, valid, f.output)
                tile_win = ctx.tile.window
                dst.write(
                    result,
                    window=_rio(
                        Window(
                            win.col_off - tile_win.col_off,
                            win.row_off - tile_win.row_off,
                            win.width,
                            win.height,
                        )
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
