"""Raster masks on real files through ``gisjob run``: per-band nodata stays per band, and GDAL
mask bands (alpha, internal mask, external ``.msk``) are honoured.

Every job runs with a tile size smaller than the raster, so several tiles are written and the
masked areas cross tile seams; the output mosaic (``mosaic.vrt``) is read whole and compared
with a full-array NumPy computation over the input file and the mask the test wrote itself.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from worker_helpers import job_doc, run_cli, write_job

pytestmark = pytest.mark.slow

WIDTH, HEIGHT, BLOCK, TILE = 600, 520, 64, 256
NODATA_OUT = -9999.0


def _profile(count: int, dtype: str, **extra: Any) -> dict[str, Any]:
    from rasterio.transform import from_origin

    return {
        "driver": "GTiff",
        "width": WIDTH,
        "height": HEIGHT,
        "count": count,
        "dtype": dtype,
        "crs": "EPSG:32632",
        "transform": from_origin(500_000, 5_000_000, 10, 10),
        "tiled": True,
        "blockxsize": BLOCK,
        "blockysize": BLOCK,
        "compress": "deflate",
        **extra,
    }


def _values(count: int, dtype: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(1, 250, size=(count, HEIGHT, WIDTH)).astype(dtype)


def _seam_mask() -> np.ndarray:
    """Valid (True) except a disc centred on a tile corner and a band across a seam."""
    rows, cols = np.mgrid[0:HEIGHT, 0:WIDTH]
    hidden = (rows - TILE) ** 2 + (cols - TILE) ** 2 < 90**2
    hidden |= (cols >= 2 * TILE - 20) & (cols < 2 * TILE + 20) & (rows > 300)
    return ~hidden


def _run(tmp: Path, src: Path, operation: dict[str, Any], fmt: str = "GTiff") -> np.ndarray:
    import rasterio

    out = tmp / "out"
    job = write_job(
        tmp / "job.yaml",
        job_doc(
            "masks",
            {"uri": str(src)},
            operation,
            {"uri": str(out), "format": fmt},
            tiling={"tileSize": TILE},
        ),
    )
    run = run_cli("run", str(job), "--workers", "2")
    assert run.code == 0, run.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["tiles"]) == 9  # 3 × 3 tiles: the masks cross their seams
    with rasterio.open(out / "mosaic.vrt") as ds:
        assert ds.nodata == NODATA_OUT
        return ds.read()


def _scaled(values: np.ndarray, valid: np.ndarray, scale: float, offset: float) -> np.ndarray:
    out = values.astype(np.float32) * np.float32(scale) + np.float32(offset)
    out[~valid] = NODATA_OUT
    return out


# ----------------------------------------------------------------- per-band nodata


def test_scale_keeps_each_bands_own_nodata(tmp_path: Path) -> None:
    import rasterio

    values = _values(4, "uint16", seed=3)
    rng = np.random.default_rng(4)
    for b in range(4):  # scattered nodata, different in every band
        values[b][rng.random((HEIGHT, WIDTH)) < 0.05 * (b + 1)] = 0
    values[0][~_seam_mask()] = 0  # and a large hole in band 1 only, across seams
    src = tmp_path / "in.tif"
    with rasterio.open(src, "w", **_profile(4, "uint16", nodata=0)) as dst:
        dst.write(values)

    got = _run(tmp_path, src, {"name": "scale", "params": {"bands": [3, 1], "scale": 0.5}})

    picked = values[[2, 0]]
    expected = _scaled(picked, picked != 0, 0.5, 0.0)
    assert got.shape == expected.shape == (2, HEIGHT, WIDTH)
    np.testing.assert_array_equal(got, expected)
    # the pixels that the old merged mask blanked: nodata in band 1, data in band 3
    only_b1 = (values[0] == 0) & (values[2] != 0)
    assert only_b1.sum() > 10_000
    assert np.all(got[0][only_b1] != NODATA_OUT)


def test_ndvi_and_expression_still_combine_the_bands_they_read(tmp_path: Path) -> None:
    import rasterio

    values = _values(2, "uint16", seed=5)
    values[0][~_seam_mask()] = 0
    values[1][np.random.default_rng(6).random((HEIGHT, WIDTH)) < 0.1] = 0
    src = tmp_path / "in.tif"
    with rasterio.open(src, "w", **_profile(2, "uint16", nodata=0)) as dst:
        dst.write(values)

    got = _run(tmp_path, src, {"name": "ndvi", "params": {"nir": 2, "red": 1}})

    nir, red = values[1].astype(np.float32), values[0].astype(np.float32)
    ok = (values[0] != 0) & (values[1] != 0)
    expected = np.full((1, HEIGHT, WIDTH), NODATA_OUT, np.float32)
    expected[0][ok] = (nir[ok] - red[ok]) / (nir[ok] + red[ok])
    np.testing.assert_array_equal(got, expected)


# ---------------------------------------------------------------- GDAL mask bands


def _rgba(path: Path) -> np.ndarray:
    """RGBA uint8 with an alpha band and no nodata; returns the validity (alpha != 0)."""
    import rasterio

    values = _values(3, "uint8", seed=7)
    alpha = np.where(_seam_mask(), 255, 0).astype(np.uint8)
    alpha[::7, ::5] = np.where(alpha[::7, ::5] == 255, 128, 0)  # partial transparency is data
    prof = _profile(4, "uint8", photometric="RGB", alpha="YES")
    with rasterio.open(path, "w", **prof) as dst:
        dst.write(values, [1, 2, 3])
        dst.write(alpha, 4)
    with rasterio.open(path) as ds:  # precondition: GDAL sees an alpha band, no nodata
        assert ds.nodata is None
        assert [f.name for f in ds.mask_flag_enums[0]] == ["per_dataset", "alpha"]
    return alpha != 0


def _masked(path: Path, *, internal: bool, nodata: float | None = None) -> np.ndarray:
    """uint16 with a GDAL mask band (internal, or an external ``.msk``); returns the mask.

    With ``nodata``, rows 100-139 of band 1 are nodata too (inside and outside the mask)."""
    import rasterio

    values = _values(3, "uint16", seed=8)
    if nodata is not None:
        values[0, 100:140, :] = nodata
    valid = _seam_mask()
    extra = {} if nodata is None else {"nodata": nodata}
    with (
        rasterio.Env(GDAL_TIFF_INTERNAL_MASK=internal),
        rasterio.open(path, "w", **_profile(3, "uint16", **extra)) as dst,
    ):
        dst.write(values)
        dst.write_mask(np.where(valid, 255, 0).astype(np.uint8))
    assert Path(f"{path}.msk").exists() != internal
    with rasterio.open(path) as ds:  # precondition: GDAL sees the mask
        assert [f.name for f in ds.mask_flag_enums[0]] == ["per_dataset"]
    return valid


@pytest.mark.parametrize("fmt", ["GTiff", "COG"])
def test_rgba_alpha_band_masks_the_colour_bands(tmp_path: Path, fmt: str) -> None:
    import rasterio

    src = tmp_path / "rgba.tif"
    valid = _rgba(src)
    got = _run(tmp_path, src, {"name": "scale", "params": {"bands": [1, 2, 3]}}, fmt)

    with rasterio.open(src) as ds:
        rgb = ds.read([1, 2, 3])
    expected = _scaled(rgb, np.broadcast_to(valid, rgb.shape), 1.0, 0.0)
    np.testing.assert_array_equal(got, expected)
    assert (~valid).sum() > 20_000


def test_rgba_alpha_band_masks_an_expression(tmp_path: Path) -> None:
    import rasterio

    src = tmp_path / "rgba.tif"
    valid = _rgba(src)
    got = _run(tmp_path, src, {"name": "expression", "params": {"expr": "b1 * 2 - b3"}})

    with rasterio.open(src) as ds:
        b1, b3 = ds.read(1).astype(np.float32), ds.read(3).astype(np.float32)
    expected = np.where(valid, b1 * 2 - b3, NODATA_OUT).astype(np.float32)[None]
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("internal", [True, False], ids=["internal-mask", "external-msk"])
def test_gdal_mask_band_is_honoured(tmp_path: Path, internal: bool) -> None:
    import rasterio

    src = tmp_path / "masked.tif"
    valid = _masked(src, internal=internal)
    got = _run(tmp_path, src, {"name": "scale", "params": {"bands": [2, 3], "scale": 2}})

    with rasterio.open(src) as ds:
        values = ds.read([2, 3])
    np.testing.assert_array_equal(
        got, _scaled(values, np.broadcast_to(valid, values.shape), 2.0, 0.0)
    )


def test_mask_band_and_nodata_both_apply(tmp_path: Path) -> None:
    """A file with a nodata value and a mask band: a pixel is data only where both say so."""
    import rasterio

    src = tmp_path / "masked.tif"
    valid = _masked(src, internal=True, nodata=7)
    got = _run(tmp_path, src, {"name": "scale", "params": {"bands": [1, 2]}})

    with rasterio.open(src) as ds:
        values = ds.read([1, 2])
    expected = _scaled(values, valid[None] & (values != 7), 1.0, 0.0)
    np.testing.assert_array_equal(got, expected)
    assert np.all(got[0, 100:140] == NODATA_OUT)
    shown = valid[100:140] & (values[1, 100:140] != 7)  # band 2 is data there
    assert shown.sum() > 10_000
    assert np.all(got[1, 100:140][shown] != NODATA_OUT)


# ------------------------------------------------------------------------ memory


@pytest.mark.parametrize("kind", ["alpha", "internal-mask-and-nodata"])
def test_masked_reads_stay_within_the_estimate(tmp_path: Path, kind: str) -> None:
    """The mask planes are counted: a streamed tile of a masked file peaks below its estimate
    and its budget."""
    import rasterio
    from rasterio.transform import from_origin
    from worker_helpers import budget_mib, run_worker

    edge = 3072
    rng = np.random.default_rng(10)
    prof: dict[str, Any] = {
        "driver": "GTiff",
        "width": edge,
        "height": edge,
        "crs": "EPSG:32632",
        "transform": from_origin(500_000, 5_000_000, 10, 10),
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
        "compress": "deflate",
    }
    src = tmp_path / "in.tif"
    rows, cols = np.mgrid[0:256, 0:edge]
    if kind == "alpha":
        prof.update(count=4, dtype="uint8", photometric="RGB", alpha="YES")
    else:
        prof.update(count=3, dtype="uint16", nodata=0)
    with (
        rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True),
        rasterio.open(src, "w", **prof) as dst,
    ):
        for r0 in range(0, edge, 256):
            values = rng.integers(0, 250, size=(3, 256, edge)).astype(prof["dtype"])
            shown = ((rows + r0) // 97 + cols // 89) % 3 != 0
            window = ((r0, r0 + 256), (0, edge))
            dst.write(values, [1, 2, 3], window=window)
            if kind == "alpha":
                dst.write(np.where(shown, 255, 0).astype(np.uint8), 4, window=window)
            else:
                dst.write_mask(np.where(shown, 255, 0).astype(np.uint8), window=window)
    with rasterio.open(src) as ds:
        assert "per_dataset" in [f.name for f in ds.mask_flag_enums[0]]
    budget = budget_mib("raster", 4, 24)
    job = write_job(
        tmp_path / "job.yaml",
        job_doc(
            "mem",
            {"uri": str(src)},
            {"name": "scale", "params": {"bands": [1, 2, 3], "scale": 0.5}},
            {"uri": str(tmp_path / "out"), "format": "GTiff"},
            tiling={"tileSize": 8192},
            resources={"memory": budget, "gdalCacheMax": "4Mi"},
        ),
    )
    plan = run_cli("plan", str(job), "--json")
    assert plan.code == 0, plan.stderr
    (tile,) = json.loads(plan.stdout)["tiles"]
    assert tile["chunks"] >= 4
    run = run_worker(job, tile["id"])
    assert run.code == 0, run.stderr[-2000:]
    rec = run.record
    assert rec is not None and rec["chunks"] == tile["chunks"]
    assert rec["peakRssBytes"] <= tile["estimatedPeakBytes"], "the model under-predicted"
    assert rec["peakRssBytes"] <= int(budget.removesuffix("Mi")) * 2**20, "over the budget"


# ------------------------------------------------- third-party operations, first interface

LEGACY_OPERATION = '''
import numpy as np

from gisjob_worker.plan import RasterOutput
from gisjob_worker.registry import Params, RasterOperation


class SumParams(Params):
    pass


class BandSum(RasterOperation[SumParams]):
    """Written for the first interface: ``valid`` is (h, w), and it writes into it."""

    name = "bandsum"
    params_model = SumParams

    def bands(self, params, src):
        return list(range(1, src.count + 1))

    def output(self, params, src):
        return RasterOutput(1, "float32", -1.0)

    def temp_bytes_per_pixel(self, params, src):
        return 8

    def apply(self, params, data, valid, out):
        assert valid.shape == data.shape[1:]
        valid &= data.sum(axis=0) > 0
        result = data.sum(axis=0, dtype=np.float32)[None]
        result[0][~valid] = out.nodata
        return result


OP = BandSum()
'''


def test_third_party_operation_still_gets_one_merged_mask(tmp_path: Path) -> None:
    """An operation that does not set ``per_band_valid`` gets the (h, w) mask of pixels valid
    in every band it reads, writable, as before masks were per band."""
    import os

    import rasterio

    site = tmp_path / "site"
    site.mkdir()
    (site / "legacy_op.py").write_text(LEGACY_OPERATION)
    info = site / "legacy_op-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: legacy-op\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[gisjob.operations]\nbandsum = legacy_op:OP\n")

    values = _values(2, "uint16", seed=9)
    values[1][~_seam_mask()] = 0
    src = tmp_path / "in.tif"
    with rasterio.open(src, "w", **_profile(2, "uint16", nodata=0)) as dst:
        dst.write(values)
    out = tmp_path / "out"
    job = write_job(
        tmp_path / "job.yaml",
        job_doc(
            "legacy",
            {"uri": str(src)},
            {"name": "bandsum"},
            {"uri": str(out)},
            tiling={"tileSize": TILE},
        ),
    )
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH")) if p)
    run = run_cli("run", str(job), "--workers", "2", env={"PYTHONPATH": path})
    assert run.code == 0, run.stderr[-3000:]
    with rasterio.open(out / "mosaic.vrt") as ds:
        got = ds.read()
    valid = (values != 0).all(axis=0)
    expected = np.where(valid, values.sum(axis=0, dtype=np.float32), -1.0).astype(np.float32)
    np.testing.assert_array_equal(got, expected[None])
