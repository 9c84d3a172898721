"""Built-in operations called directly on small arrays/tables, against plain references."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import shapely
from pydantic import ValidationError
from shapely.geometry import MultiPolygon, Polygon, box

from gisjob_worker.operations.raster import (
    EXPRESSION,
    FLOAT_NODATA,
    NDVI,
    SCALE,
    cast_output,
    check_nodata_fits,
    default_nodata,
)
from gisjob_worker.operations.vector import FILTER, FilterParams
from gisjob_worker.plan import RasterOutput
from gisjob_worker.raster_tile import (
    BandMask,
    band_masks,
    chunk_valid,
    corrupt_data_reason,
    mask_bytes_per_pixel,
    merged_valid,
)
from gisjob_worker.registry import RasterSource, VectorRead


def src(count: int = 3, dtype: str = "uint16", nodata: float | None = None) -> RasterSource:
    return RasterSource(
        path="/data/in.tif",
        count=count,
        dtypes=(dtype,) * count,
        nodata=nodata,
        width=100,
        height=80,
    )


def run(op: Any, params: dict[str, Any], data: np.ndarray, valid: np.ndarray, count: int = 3):
    """Apply ``op``; a 2-D ``valid`` is the same mask for every band, a 3-D one per band."""
    p = op.parse_params(params)
    s = src(count, str(data.dtype))
    out = op.output(p, s)
    assert op.per_band_valid  # built-ins take (bands, h, w) masks
    if valid.ndim == 2:
        valid = np.broadcast_to(valid, data.shape)  # read-only, as the worker may pass it
    result = op.apply(p, data, valid, out)
    return result, out


RNG = np.random.default_rng(7)


def uint16_data(bands: int, h: int = 6, w: int = 5) -> np.ndarray:
    return RNG.integers(0, 10_000, size=(bands, h, w)).astype(np.uint16)


def mask(h: int = 6, w: int = 5) -> np.ndarray:
    valid = np.ones((h, w), dtype=bool)
    valid[0, 0] = False
    valid[3, 2] = False
    return valid


# ------------------------------------------------------------------------- helpers


def test_default_nodata() -> None:
    assert default_nodata("float32") == -9999.0
    assert default_nodata("float64") == -9999.0
    assert default_nodata("uint8") == 255.0
    assert default_nodata("uint16") == 65535.0
    assert default_nodata("int16") == 32767.0
    assert default_nodata("uint32") == 4294967295.0
    assert default_nodata("int32") == 2147483647.0


def test_check_nodata_fits() -> None:
    check_nodata_fits(None, "uint8")
    check_nodata_fits(0, "uint8")
    check_nodata_fits(255, "uint8")
    check_nodata_fits(-32768, "int16")
    check_nodata_fits(1e30, "float32")
    for bad, dtype in [(256, "uint8"), (-1, "uint16"), (1.5, "int16"), (float("nan"), "uint8")]:
        with pytest.raises(ValueError, match=f"does not fit the output dtype {dtype}"):
            check_nodata_fits(bad, dtype)


def test_check_nodata_fits_floats_must_survive_the_cast() -> None:
    for ok, dtype in [
        (float("nan"), "float32"),
        (float("-inf"), "float32"),
        (-3.4e38, "float32"),
        (0.0, "float32"),
        (-9999.0, "float32"),
        (1e-30, "float32"),
        (1e300, "float64"),
    ]:
        check_nodata_fits(ok, dtype)
        if np.isfinite(ok):  # what the check guarantees: the written pixel is that value
            written = np.array([ok], dtype=dtype)[0]
            assert np.isfinite(written) and (written != 0) == (ok != 0)
    for bad, dtype in [(1e300, "float32"), (-3.5e38, "float32"), (1e-50, "float32")]:
        with pytest.raises(ValueError, match=f"does not fit the output dtype {dtype}"):
            check_nodata_fits(bad, dtype)
        with np.errstate(over="ignore"):
            written = np.array([bad], dtype=dtype)[0]
        assert not np.isfinite(written) or written == 0  # what it would have written


def test_cast_output_rounds_half_to_even_and_clamps() -> None:
    values = np.array([-3.0, -0.5, 0.4, 0.5, 1.5, 2.5, 254.6, 255.5, 1e9])
    np.testing.assert_array_equal(
        cast_output(values, "uint8"), np.array([0, 0, 0, 0, 2, 2, 255, 255, 255], np.uint8)
    )
    np.testing.assert_array_equal(
        cast_output(np.array([-1e9, -32768.4, 32767.4, 1e9]), "int16"),
        np.array([-32768, -32768, 32767, 32767], np.int16),
    )
    f = cast_output(np.array([1.25], np.float64), "float32")
    assert f.dtype == np.float32
    assert f[0] == np.float32(1.25)


# --------------------------------------------------------------------------- scale


def test_scale_reflectance_float32_matches_numpy() -> None:
    data = uint16_data(2)
    valid = mask()
    result, out = run(
        SCALE, {"scale": 0.0001, "offset": -0.1, "clip": [0, 1]}, data, valid, count=2
    )
    assert out == RasterOutput(2, "float32", FLOAT_NODATA)
    ref = np.clip(data.astype(np.float32) * 0.0001 + -0.1, 0, 1).astype(np.float32)
    ref[:, ~valid] = -9999.0
    assert result.dtype == np.float32
    assert result.shape == (2, 6, 5)
    np.testing.assert_array_equal(result, ref)
    assert result[0, 0, 0] == -9999.0
    assert result[1, 3, 2] == -9999.0
    ok = result[:, valid]
    assert ok.min() >= 0.0
    assert ok.max() <= 1.0


def test_scale_identity_defaults() -> None:
    data = uint16_data(3)
    valid = np.ones(data.shape[1:], bool)
    result, out = run(SCALE, {}, data, valid)
    assert out.count == 3
    np.testing.assert_array_equal(result, data.astype(np.float32))


def test_scale_integer_output_rounds_and_clamps() -> None:
    data = np.array([[[-10, 0, 1, 3, 100, 171, 200]]], dtype=np.int16)
    valid = np.ones((1, 7), bool)
    result, out = run(SCALE, {"scale": 1.5, "dtype": "uint8", "nodata": 0}, data, valid, 1)
    assert out == RasterOutput(1, "uint8", 0.0)
    assert result.dtype == np.uint8
    # -15 -> 0, 1.5 -> 2, 4.5 -> 4 (half to even), 256.5 -> 255, 300 -> 255
    np.testing.assert_array_equal(result[0, 0], [0, 0, 2, 4, 150, 255, 255])


def test_scale_int16_negative_offset_and_clamp() -> None:
    data = np.array([[[0, 1000, 65535]]], dtype=np.uint16)
    valid = np.array([[True, True, False]])
    result, out = run(SCALE, {"scale": 1.0, "offset": -40000, "dtype": "int16"}, data, valid, 1)
    assert out.nodata == 32767.0
    np.testing.assert_array_equal(result[0, 0], np.array([-32768, -32768, 32767], np.int16))


def test_scale_custom_nodata_and_reference_uint16() -> None:
    data = uint16_data(1)
    valid = mask()
    result, out = run(
        SCALE, {"scale": 2.5, "offset": 3, "dtype": "uint16", "nodata": 7}, data, valid, 1
    )
    assert out.nodata == 7.0
    x = data.astype(np.float32) * 2.5 + 3
    ref = np.clip(np.rint(x), 0, 65535).astype(np.uint16)
    ref[:, ~valid] = 7
    np.testing.assert_array_equal(result, ref)


def test_scale_32bit_integer_output_is_computed_in_float64() -> None:
    # 16777217 is not representable in float32
    data = np.array([[[16_777_217, 4_000_000_001]]], dtype=np.uint32)
    valid = np.ones((1, 2), bool)
    result, _ = run(SCALE, {"dtype": "uint32"}, data, valid, 1)
    np.testing.assert_array_equal(result[0, 0], np.array([16_777_217, 4_000_000_001], np.uint32))


def test_scale_bands_explicit() -> None:
    p = SCALE.parse_params({})
    assert SCALE.bands(p, src(3)) == [1, 2, 3]
    p = SCALE.parse_params({"bands": [3, 1]})
    assert SCALE.bands(p, src(3)) == [3, 1]
    assert SCALE.output(p, src(3)).count == 2


def test_scale_multiband_order_follows_bands_param() -> None:
    data = uint16_data(2)  # planes already read in the order bands=[3, 1]
    valid = np.ones(data.shape[1:], bool)
    result, out = run(SCALE, {"bands": [3, 1], "scale": 2}, data, valid)
    assert out.count == 2
    np.testing.assert_array_equal(result[0], data[0].astype(np.float32) * 2)
    np.testing.assert_array_equal(result[1], data[1].astype(np.float32) * 2)


def per_band_masks(bands: int, h: int = 6, w: int = 5) -> np.ndarray:
    """A different invalid pixel set in every band."""
    valid = np.ones((bands, h, w), dtype=bool)
    for b in range(bands):
        valid[b, b, :] = False  # row b
        valid[b, :, (b + 2) % w] = False  # and a column
    return valid


@pytest.mark.parametrize(
    "params",
    [
        {"bands": [3, 1], "scale": 2},  # float32 straight from integers
        {"bands": [3, 1], "scale": 2, "clip": [0, 15_000]},  # through a float copy
        {"bands": [3, 1], "scale": 0.01, "dtype": "uint8", "nodata": 0},  # integer output
    ],
)
def test_scale_each_output_band_keeps_its_own_mask(params: dict[str, Any]) -> None:
    data = uint16_data(2)
    valid = per_band_masks(2)
    result, out = run(SCALE, params, data, valid)
    for b in range(2):
        ref, _ = run(SCALE, params, data[b : b + 1], valid[b], count=3)
        np.testing.assert_array_equal(result[b], ref[0])
        assert np.all(result[b][~valid[b]] == out.nodata)
        # valid in this band, invalid in the other: data, not nodata (the merged-mask bug)
        only_other = valid[b] & ~valid[1 - b]
        assert only_other.any()
        assert np.all(result[b][only_other] != out.nodata)


def test_scale_check_band_out_of_range() -> None:
    p = SCALE.parse_params({"bands": [1, 5]})
    with pytest.raises(ValueError) as info:
        SCALE.check(p, src(3))
    assert str(info.value) == "band 5 is out of range (the dataset has 3 bands)"
    with pytest.raises(ValueError, match=r"band 2 is out of range \(the dataset has 1 band\)"):
        SCALE.check(SCALE.parse_params({"bands": [2]}), src(1))
    SCALE.check(SCALE.parse_params({"bands": [3]}), src(3))  # in range: no error


def test_scale_temp_bytes() -> None:
    assert SCALE.temp_bytes_per_pixel(SCALE.parse_params({}), src()) == 8
    assert SCALE.temp_bytes_per_pixel(SCALE.parse_params({"dtype": "int32"}), src()) == 16
    assert SCALE.temp_bytes_per_pixel(SCALE.parse_params({"dtype": "float64"}), src()) == 16


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"clip": [1, 0]}, "lower bound above upper bound"),
        ({"dtype": "uint8", "nodata": 256}, "does not fit the output dtype uint8"),
        ({"bands": []}, "at least one band"),
        ({"bands": [0]}, "start at 1"),
        ({"scal": 1}, "Extra inputs are not permitted"),
        ({"dtype": "complex64"}, "dtype"),
    ],
)
def test_scale_params_rejected(params: dict[str, Any], match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        SCALE.parse_params(params)


@pytest.mark.parametrize(
    ("op", "params"),
    [
        (SCALE, {"nodata": 1e300}),  # float32 by default: would be written as inf
        (SCALE, {"dtype": "float32", "nodata": -1e39}),
        (SCALE, {"dtype": "uint8", "nodata": -1}),
        (SCALE, {"dtype": "int16", "nodata": 40000}),
        (NDVI, {"nir": 2, "red": 1, "nodata": 1e300}),  # ndvi writes float32
        (EXPRESSION, {"expr": "b1", "nodata": 1e300}),
        (EXPRESSION, {"expr": "b1", "dtype": "uint16", "nodata": 65536}),
    ],
)
def test_unrepresentable_nodata_is_rejected_on_the_nodata_field(
    op: Any, params: dict[str, Any]
) -> None:
    with pytest.raises(ValidationError) as info:
        op.parse_params(params)
    errors = info.value.errors()
    assert len(errors) == 1
    assert errors[0]["loc"] == ("nodata",)
    assert "does not fit the output dtype" in errors[0]["msg"]


def test_representable_nodata_is_accepted() -> None:
    nan = SCALE.parse_params({"nodata": float("nan")}).nodata
    assert nan is not None and np.isnan(nan)
    assert SCALE.parse_params({"dtype": "float64", "nodata": 1e300}).nodata == 1e300
    assert NDVI.parse_params({"nir": 2, "red": 1, "nodata": -2}).nodata == -2
    assert EXPRESSION.parse_params({"expr": "b1", "dtype": "uint8", "nodata": 0}).nodata == 0
    # an invalid dtype is reported as such, not as a nodata error
    with pytest.raises(ValidationError) as info:
        SCALE.parse_params({"dtype": "complex64", "nodata": 1e300})
    assert [e["loc"] for e in info.value.errors()] == [("dtype",)]


def test_scale_non_finite_to_integer_is_nodata() -> None:
    data = np.array([[[1.0, np.nan, np.inf]]], dtype=np.float32)
    valid = np.ones((1, 3), bool)
    with np.errstate(invalid="ignore"):
        result, out = run(SCALE, {"dtype": "uint8", "nodata": 7}, data, valid, 1)
    assert out.nodata == 7.0
    np.testing.assert_array_equal(result[0, 0], [1, 7, 7])


# ---------------------------------------------------------------------------- ndvi


def ndvi_reference(nir: np.ndarray, red: np.ndarray, valid: np.ndarray, nodata: float):
    n = nir.astype(np.float32)
    r = red.astype(np.float32)
    den = n + r
    ok = valid & (den != 0)
    out = np.full(n.shape, nodata, np.float32)
    out[ok] = (n - r)[ok] / den[ok]
    return out


def test_ndvi_matches_numpy_with_zero_denominators_and_nodata() -> None:
    data = uint16_data(2)
    data[:, 1, 1] = 0  # 0/0
    data[:, 2, 4] = 0
    data[0, 5, 0] = 0  # nir 0, red > 0 -> -1
    valid = mask()
    result, out = run(NDVI, {"nir": 4, "red": 3}, data, valid, 4)
    assert out == RasterOutput(1, "float32", -9999.0)
    assert result.shape == (1, 6, 5)
    assert result.dtype == np.float32
    np.testing.assert_array_equal(result[0], ndvi_reference(data[0], data[1], valid, -9999.0))
    assert result[0, 1, 1] == -9999.0
    assert result[0, 2, 4] == -9999.0
    assert result[0, 0, 0] == -9999.0
    assert result[0, 5, 0] == -1.0
    good = result[0][valid & ((data[0].astype(int) + data[1]) != 0)]
    assert np.all((good >= -1) & (good <= 1))


def test_ndvi_needs_both_bands_valid() -> None:
    data = uint16_data(2) + 1  # no zero denominators
    valid = per_band_masks(2)
    result, _ = run(NDVI, {"nir": 1, "red": 2}, data, valid, 2)
    both = valid[0] & valid[1]
    np.testing.assert_array_equal(result[0], ndvi_reference(data[0], data[1], both, -9999.0))
    assert np.all(result[0][~valid[0] | ~valid[1]] == -9999.0)
    assert np.all(result[0][both] != -9999.0)


def test_ndvi_known_values_and_custom_nodata() -> None:
    data = np.array([[[80, 50, 0, 10]], [[20, 50, 0, 30]]], dtype=np.uint16)
    valid = np.array([[True, True, True, False]])
    result, out = run(NDVI, {"nir": 1, "red": 2, "nodata": -2}, data, valid, 2)
    assert out.nodata == -2.0
    np.testing.assert_allclose(result[0, 0], [0.6, 0.0, -2.0, -2.0], rtol=1e-7)


def test_ndvi_signed_input_zero_sum_is_nodata() -> None:
    data = np.array([[[5, -3]], [[-5, 1]]], dtype=np.int16)  # 5 + -5 == 0
    valid = np.ones((1, 2), bool)
    result, _ = run(NDVI, {"nir": 1, "red": 2}, data, valid, 2)
    assert result[0, 0, 0] == -9999.0
    assert result[0, 0, 1] == np.float32(-4) / np.float32(-2)


def test_ndvi_bands_check_and_params() -> None:
    p = NDVI.parse_params({"nir": 8, "red": 4})
    assert NDVI.bands(p, src(8)) == [8, 4]
    NDVI.check(p, src(8))
    with pytest.raises(ValueError) as info:
        NDVI.check(p, src(4))
    assert str(info.value) == "band 8 is out of range (the dataset has 4 bands)"
    assert NDVI.temp_bytes_per_pixel(p, src(8)) == 16
    with pytest.raises(ValidationError, match="nir"):
        NDVI.parse_params({"red": 4})
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        NDVI.parse_params({"nir": 0, "red": 4})


# ---------------------------------------------------------------------- expression


def test_expression_matches_numpy_and_non_finite_is_nodata() -> None:
    data = uint16_data(2)
    data[:, 0, 3] = 0  # 0/0 -> nan
    data[0, 4, 4] = 0
    data[1, 4, 4] = 0
    valid = mask()
    result, out = run(EXPRESSION, {"expr": "(b3 - b1) / (b3 + b1)"}, data, valid, 3)
    assert out == RasterOutput(1, "float32", -9999.0)
    b1 = data[0].astype(np.float32)
    b3 = data[1].astype(np.float32)
    with np.errstate(all="ignore"):
        values = (b3 - b1) / (b3 + b1)
    ref = np.full((6, 5), -9999.0, np.float32)
    ok = valid & np.isfinite(values)
    ref[ok] = values[ok]
    np.testing.assert_array_equal(result[0], ref)
    assert result[0, 0, 3] == -9999.0
    assert result[0, 4, 4] == -9999.0


def test_expression_needs_every_band_it_reads_valid() -> None:
    data = uint16_data(3) + 1
    valid = per_band_masks(3)
    p = {"expr": "b1 + b2 * 2 + b4"}  # planes: b1, b2, b4
    result, out = run(EXPRESSION, p, data, valid, 4)
    every = valid.all(axis=0)
    ref = data[0].astype(np.float32) + data[1].astype(np.float32) * 2 + data[2]
    np.testing.assert_array_equal(result[0], np.where(every, ref, out.nodata))
    assert (~every).sum() > (~valid[0]).sum()


def test_expression_division_by_zero_and_log_of_negative() -> None:
    data = np.array([[[4.0, 0.0, -1.0, 2.0]]], dtype=np.float32)
    valid = np.ones((1, 4), bool)
    result, _ = run(EXPRESSION, {"expr": "1 / b1"}, data, valid, 1)
    np.testing.assert_array_equal(result[0, 0], np.array([0.25, -9999, -1, 0.5], np.float32))
    result, _ = run(EXPRESSION, {"expr": "log(b1)", "nodata": -1}, data, valid, 1)
    np.testing.assert_allclose(
        result[0, 0], np.array([np.log(4), -1, -1, np.log(2)], np.float32), rtol=1e-7
    )


def test_expression_integer_output_rounds_clamps() -> None:
    data = np.array([[[0, 10, 100, 200]], [[1, 1, 1, 1]]], dtype=np.uint8)
    valid = np.array([[True, True, True, False]])
    result, out = run(EXPRESSION, {"expr": "b1 * 1.25 + b2", "dtype": "uint8"}, data, valid, 2)
    assert out.nodata == 255.0
    assert result.dtype == np.uint8
    # 1, 13.5 -> 14 (half to even), 126, invalid -> 255
    np.testing.assert_array_equal(result[0, 0], [1, 14, 126, 255])


def test_expression_int32_computed_in_float64() -> None:
    data = np.array([[[16_777_217, 5]]], dtype=np.int32)
    valid = np.ones((1, 2), bool)
    result, out = run(EXPRESSION, {"expr": "b1 + 0", "dtype": "int32"}, data, valid, 1)
    assert out.nodata == float(np.iinfo(np.int32).max)
    np.testing.assert_array_equal(result[0, 0], [16_777_217, 5])


def test_expression_boolean_result_becomes_numbers() -> None:
    data = np.array([[[1, 200, 50]]], dtype=np.uint16)
    valid = np.ones((1, 3), bool)
    result, _ = run(EXPRESSION, {"expr": "b1 > 100", "dtype": "uint8"}, data, valid, 1)
    np.testing.assert_array_equal(result[0, 0], [0, 1, 0])


def test_expression_bands_are_sorted_unique_and_planes_follow_them() -> None:
    p = EXPRESSION.parse_params({"expr": "b4 - b2 * 2 + b4"})
    assert EXPRESSION.bands(p, src(4)) == [2, 4]
    data = np.array([[[10]], [[100]]], dtype=np.uint16)  # plane 0 = b2, plane 1 = b4
    valid = np.ones((2, 1, 1), bool)
    result = EXPRESSION.apply(p, data, valid, EXPRESSION.output(p, src(4)))
    assert result[0, 0, 0] == 100 - 20 + 100


def test_expression_check_and_temp_bytes() -> None:
    p = EXPRESSION.parse_params({"expr": "(b2 - b1) / (b2 + b1)"})
    assert EXPRESSION.temp_bytes_per_pixel(p, src()) == (2 + 3 + 1) * 4 + 1
    p64 = EXPRESSION.parse_params({"expr": "(b2 - b1) / (b2 + b1)", "dtype": "float64"})
    assert EXPRESSION.temp_bytes_per_pixel(p64, src()) == (2 + 3 + 1) * 8 + 1
    bad = EXPRESSION.parse_params({"expr": "b7 + b1"})
    with pytest.raises(ValueError, match=r"^band 7 is out of range \(the dataset has 3 bands\)$"):
        EXPRESSION.check(bad, src(3))


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"expr": "os.system('x')"}, "attribute access"),
        ({"expr": ""}, "at least 1 character"),
        ({"expr": "b1", "dtype": "uint16", "nodata": -1}, "does not fit"),
        ({"expr": "b1", "extra": 1}, "Extra inputs"),
    ],
)
def test_expression_params_rejected(params: dict[str, Any], match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        EXPRESSION.parse_params(params)


def test_output_nodata_defaults_per_dtype() -> None:
    s = src(2)
    for dtype, nd in [("float32", -9999.0), ("float64", -9999.0), ("uint8", 255.0)]:
        assert SCALE.output(SCALE.parse_params({"dtype": dtype}), s).nodata == nd
        assert EXPRESSION.output(EXPRESSION.parse_params({"expr": "b1", "dtype": dtype}), s) == (
            RasterOutput(1, dtype, nd)
        )
    assert SCALE.output(SCALE.parse_params({"dtype": "int16"}), s).nodata == 32767.0
    assert SCALE.output(SCALE.parse_params({"dtype": "uint16", "nodata": 0}), s).nodata == 0.0


# --------------------------------------------------- masks and read errors (worker side)


def test_band_masks_follow_gdal_mask_flags() -> None:
    from rasterio.enums import MaskFlags

    class FakeDataset:  # what band_masks reads of a rasterio dataset
        mask_flag_enums = (
            [MaskFlags.all_valid],
            [MaskFlags.nodata],
            [MaskFlags.per_dataset, MaskFlags.alpha],
            [MaskFlags.per_dataset],
            [],  # a mask band of the band's own
            [MaskFlags.per_dataset, MaskFlags.nodata],  # GDAL_METADATA NODATA_VALUES
        )
        nodatavals = (None, 0.0, None, 7.0, None, None)

    masks = band_masks(FakeDataset(), [6, 5, 4, 3, 2, 1])
    assert masks == [
        BandMask(None, "dataset"),  # GDAL computes the all-bands-nodata mask
        BandMask(None, "band"),
        BandMask(7.0, "dataset"),  # a mask band and nodata: both apply
        BandMask(None, "dataset"),
        BandMask(0.0, None),  # nodata alone: compared on the values read
        BandMask(None, None),
    ]


def test_chunk_valid_is_per_band_and_reads_a_dataset_mask_once() -> None:
    data = np.array(
        [
            [[0, 1, 2], [3, 0, 5]],  # band 1: nodata 0
            [[0, 1, 7], [7, 0, 5]],  # band 2: nodata 7 and the dataset mask
            [[9, 9, 9], [9, 9, 9]],  # band 3: the dataset mask only
            [[1, 2, 3], [4, 5, 6]],  # band 4: nothing
        ],
        dtype=np.uint16,
    )
    gdal_mask = np.array([[255, 0, 128], [255, 255, 0]], np.uint8)  # alpha values: >0 shown
    reads: list[int] = []

    def read_mask(band: int) -> np.ndarray:
        reads.append(band)
        return gdal_mask.copy()

    masks = [
        BandMask(0.0, None),
        BandMask(7.0, "dataset"),
        BandMask(None, "dataset"),
        BandMask(None, None),
    ]
    valid = chunk_valid((1, 2, 3, 4), masks, data, read_mask)
    assert reads == [2]  # one read of the per-dataset mask for both bands that share it
    shown = gdal_mask != 0
    np.testing.assert_array_equal(valid[0], data[0] != 0)
    np.testing.assert_array_equal(valid[1], shown & (data[1] != 7))
    np.testing.assert_array_equal(valid[2], shown)
    assert valid[3].all()
    np.testing.assert_array_equal(merged_valid(valid), valid.all(axis=0))


def test_chunk_valid_nodata_in_the_bands_own_type() -> None:
    f = np.array([[[np.nan, 1.0, np.float32(0.1)]]], np.float32)
    u = np.array([[[0, 255, 1]]], np.uint8)
    never = lambda band: pytest.fail("no mask band to read")  # noqa: E731
    # NaN nodata on floats; 0.1 compared as float32, as GDAL does
    assert chunk_valid((1,), [BandMask(float("nan"), None)], f, never).tolist() == [
        [[False, True, True]]
    ]
    assert chunk_valid((1,), [BandMask(0.1, None)], f, never).tolist() == [[[True, True, False]]]
    # a nodata no pixel of the type can hold masks nothing (and does not overflow)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert chunk_valid((1,), [BandMask(1e300, None)], f, never).all()
    for nd in (-1.0, 256.0, 0.5, float("nan")):
        assert chunk_valid((1,), [BandMask(nd, None)], u, never).all()
    assert chunk_valid((1,), [BandMask(255.0, None)], u, never).tolist() == [[[True, False, True]]]


def test_chunk_valid_without_masks_costs_no_memory() -> None:
    data = uint16_data(3)
    valid = chunk_valid((1, 2, 3), [BandMask(None, None)] * 3, data, lambda b: pytest.fail())
    assert valid.shape == data.shape and valid.all()
    assert valid.strides == (0, 0, 0) and not valid.flags.writeable


def test_mask_bytes_per_pixel() -> None:
    assert mask_bytes_per_pixel(1, True) == 2  # the mask and one read/comparison plane
    assert mask_bytes_per_pixel(4, True) == 5
    assert mask_bytes_per_pixel(4, False) == 6  # plus the merged (h, w) mask


def _gdal_chain(*errors: BaseException) -> Exception:
    """A RasterioIOError chained to GDAL errors the way rasterio raises it (outermost first)."""
    from rasterio.errors import RasterioIOError

    exc = RasterioIOError("Read failed. See previous exception for details.")
    cur: BaseException = exc
    for e in errors:
        cur.__cause__ = e
        cur = e
    return exc


def test_corrupt_data_reason_for_truncated_and_undecodable_tiles() -> None:
    from rasterio._err import CPLE_AppDefinedError

    truncated = _gdal_chain(
        CPLE_AppDefinedError(
            3,
            1,
            "/d/in.tif, band 1: IReadBlock failed at X offset 3, Y offset 2: "
            "TIFFReadEncodedTile() failed.",
        ),
        CPLE_AppDefinedError(3, 1, "TIFFReadEncodedTile() failed."),
        CPLE_AppDefinedError(3, 1, "TIFFFillTile:Read error at row 512; got 10 bytes"),
    )
    assert corrupt_data_reason("/d/in.tif", truncated) == (
        "band 1: IReadBlock failed at X offset 3, Y offset 2: TIFFReadEncodedTile() failed.; "
        "TIFFFillTile:Read error at row 512; got 10 bytes"
    )
    # over a network a short read may be an interrupted transfer: retried
    assert corrupt_data_reason("/vsis3/b/in.tif", truncated) is None
    assert corrupt_data_reason("https://h/in.tif", truncated) is None
    undecodable = _gdal_chain(
        CPLE_AppDefinedError(3, 1, "/vsis3/http-bucket/in.tif, band 2: IReadBlock failed"),
        CPLE_AppDefinedError(3, 1, "ZIPDecode:Decoding error at scanline 0"),
    )
    for uri in ("/d/in.tif", "/vsis3/http-bucket/in.tif"):  # bad bytes are bad anywhere
        assert corrupt_data_reason(uri, undecodable) == (
            "band 2: IReadBlock failed; ZIPDecode:Decoding error at scanline 0"
        )


def test_transient_read_errors_are_not_corrupt_data() -> None:
    from rasterio._err import (
        CPLE_AppDefinedError,
        CPLE_HttpResponseError,
        CPLE_OutOfMemoryError,
    )
    from rasterio.errors import RasterioIOError

    block = CPLE_AppDefinedError(3, 1, "/d/in.tif, band 1: IReadBlock failed")
    for cause in (
        CPLE_HttpResponseError(3, 11, "HTTP response code: 503"),
        CPLE_OutOfMemoryError(3, 2, "cannot allocate 1000000 bytes"),
        CPLE_AppDefinedError(3, 1, "Curl error: Connection timed out"),
    ):
        assert corrupt_data_reason("/d/in.tif", _gdal_chain(block, cause)) is None
    assert corrupt_data_reason("/d/in.tif", RasterioIOError("no GDAL error behind")) is None


# -------------------------------------------------------------------------- filter


UTM = "EPSG:32633"


def polygons() -> list[Any]:
    return [
        box(500_000, 5_000_000, 501_000, 5_002_000),
        Polygon([(400_000, 6_000_000), (420_000, 6_000_000), (410_000, 6_030_000)]),
        box(600_000, 4_000_000, 600_010, 4_000_010),
        Polygon(
            [
                (300_000, 7_000_000),
                (310_000, 7_000_000),
                (310_000, 7_010_000),
                (300_000, 7_010_000),
            ],
            holes=[[(302_000, 7_002_000), (304_000, 7_002_000), (304_000, 7_004_000)]],
        ),
        MultiPolygon([box(0, 0, 1, 1).buffer(0), box(700_000, 1_000_000, 705_000, 1_003_000)]),
    ]


def wkb_table(geoms: list[Any], **columns: list[Any]) -> pa.Table:
    wkb = shapely.to_wkb(np.array(geoms, dtype=object))
    data: dict[str, Any] = {"id": list(range(len(geoms))), **columns}
    data["geometry"] = pa.array(list(wkb), pa.binary())
    return pa.table(data)


def test_filter_area_matches_geopandas() -> None:
    import geopandas as gpd

    geoms = polygons()
    table = wkb_table(geoms)
    p = FILTER.parse_params({"area": True})
    out = FILTER.apply(p, table, UTM)
    assert out.column_names == ["id", "geometry", "area_km2"]
    assert out.column("area_km2").type == pa.float64()
    ref = gpd.GeoSeries(geoms, crs=UTM).to_crs("EPSG:6933").area.to_numpy() / 1e6
    got = out.column("area_km2").to_numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-9)
    # sanity: a 1 km x 2 km box in UTM is about 2 km² in an equal-area CRS too
    assert 1.99 < got[0] < 2.01
    # the input columns are untouched
    assert out.column("id").to_pylist() == [0, 1, 2, 3, 4]
    assert out.column("geometry").equals(table.column("geometry"))


def test_filter_area_custom_column_and_crs() -> None:
    import geopandas as gpd

    geoms = polygons()[:3]
    p = FILTER.parse_params({"area": True, "areaColumn": "km2", "equalAreaCrs": "EPSG:3035"})
    out = FILTER.apply(p, wkb_table(geoms), UTM)
    ref = gpd.GeoSeries(geoms, crs=UTM).to_crs("EPSG:3035").area.to_numpy() / 1e6
    np.testing.assert_allclose(out.column("km2").to_numpy(), ref, rtol=1e-9)


def test_filter_area_on_chunked_geometry_column() -> None:
    geoms = polygons()
    t1, t2 = wkb_table(geoms[:2]), wkb_table(geoms[2:])
    table = pa.concat_tables([t1, t2])
    assert table.column("geometry").num_chunks == 2
    out = FILTER.apply(FILTER.parse_params({"area": True}), table, UTM)
    whole = FILTER.apply(FILTER.parse_params({"area": True}), wkb_table(geoms), UTM)
    np.testing.assert_array_equal(
        out.column("area_km2").to_numpy(), whole.column("area_km2").to_numpy()
    )


def test_filter_area_empty_table() -> None:
    table = wkb_table(polygons()).slice(0, 0)
    out = FILTER.apply(FILTER.parse_params({"area": True}), table, UTM)
    assert out.num_rows == 0
    assert out.column_names[-1] == "area_km2"


def test_filter_without_area_returns_table_unchanged() -> None:
    table = wkb_table(polygons())
    out = FILTER.apply(FILTER.parse_params({"where": "id > 1", "columns": ["id"]}), table, None)
    assert out is table


def test_filter_area_without_crs_raises() -> None:
    with pytest.raises(ValueError, match="has no CRS: cannot compute areas"):
        FILTER.apply(FILTER.parse_params({"area": True}), wkb_table(polygons()), None)


def test_filter_read_options_and_memory_factor() -> None:
    p = FILTER.parse_params({"where": "pop > 10 AND name LIKE 'A%'", "columns": ["name", "pop"]})
    assert FILTER.read_options(p) == VectorRead(
        where="pop > 10 AND name LIKE 'A%'", columns=["name", "pop"]
    )
    assert FILTER.read_options(FILTER.parse_params({})) == VectorRead(where=None, columns=None)
    assert FILTER.memory_factor(p) == 2.0
    assert FILTER.memory_factor(FILTER.parse_params({"area": True})) == 7.0


def test_filter_params_by_alias_and_name() -> None:
    a = FilterParams.model_validate({"areaColumn": "km2", "equalAreaCrs": "EPSG:3035"})
    b = FilterParams.model_validate({"area_column": "km2", "equal_area_crs": "EPSG:3035"})
    assert a == b
    assert a.area_column == "km2"


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"areaColumn": "area km2"}, r"must be a plain column name \(got 'area km2'\)"),
        ({"areaColumn": "1st"}, "must be a plain column name"),
        ({"areaColumn": "a;b"}, "must be a plain column name"),
        ({"areaColumn": ""}, "must be a plain column name"),
        ({"equalAreaCrs": "EPSG:4326"}, "must be a projected equal-area CRS .got geographic"),
        ({"equalAreaCrs": "OGC:CRS84"}, "got geographic"),
        ({"equalAreaCrs": "not-a-crs"}, "not a CRS pyproj knows"),
        ({"where": "a = 1; DROP TABLE t"}, r"no ';'"),
        ({"where": "   "}, "single non-empty attribute filter"),
        ({"bogus": 1}, "Extra inputs"),
    ],
)
def test_filter_params_rejected(params: dict[str, Any], match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        FILTER.parse_params(params)


def test_filter_rejects_projected_crs_that_is_not_equal_area() -> None:
    with pytest.raises(ValidationError, match="equal-area"):
        FILTER.parse_params({"area": True, "equalAreaCrs": "EPSG:3857"})


def test_filter_area_column_replaces_existing_column() -> None:
    table = wkb_table(polygons(), area_km2=[0.0] * 5)
    out = FILTER.apply(FILTER.parse_params({"area": True}), table, UTM)
    assert out.column_names.count("area_km2") == 1
    assert out.column("area_km2").to_numpy()[0] > 1.9
