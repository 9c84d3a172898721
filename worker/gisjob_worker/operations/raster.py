"""Raster operations: each a pure function over one chunk of explicitly read bands."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from pydantic import Field, ValidationInfo, field_validator, model_validator

from ..plan import RasterOutput
from ..registry import OutputDtype, Params, RasterOperation, RasterSource
from .expression import parse_expression

FLOAT_NODATA = -9999.0


def default_nodata(dtype: str) -> float:
    """Output nodata when the params do not give one: -9999 for floats, the max for integers."""
    dt = np.dtype(dtype)
    if dt.kind == "f":
        return FLOAT_NODATA
    return float(np.iinfo(dt).max)


def check_nodata_fits(nodata: float | None, dtype: str) -> None:
    """Raise ``ValueError`` unless ``nodata`` can be written as a pixel of ``dtype``.

    Integers: a whole number within the type's range. Floats: NaN, ±inf, or a finite value
    that stays finite and non-zero once rounded to the type (``1e300`` would be written as
    ``inf`` in float32, ``1e-50`` as ``0``: the pixels would not match the nodata tag).
    """
    if nodata is None:
        return
    dt = np.dtype(dtype)
    if dt.kind in "iu":
        info = np.iinfo(dt)
        if not (info.min <= nodata <= info.max) or float(nodata) != int(nodata):
            raise ValueError(f"nodata {nodata} does not fit the output dtype {dtype}")
    elif math.isfinite(nodata):
        info_f = np.finfo(dt)
        if abs(nodata) > float(info_f.max) or (nodata != 0 and abs(nodata) < float(info_f.tiny)):
            raise ValueError(
                f"nodata {nodata} does not fit the output dtype {dtype} "
                f"(finite values from {float(info_f.tiny):g} to {float(info_f.max):g} in "
                "magnitude, 0, nan, inf)"
            )


def _nodata_field(nodata: float | None, info: ValidationInfo, dtype: str | None = None) -> None:
    """Validate a params model's ``nodata`` field against its ``dtype`` (a field validator,
    so that errors name ``spec.operation.params.nodata``)."""
    dtype = dtype or info.data.get("dtype")
    if dtype is not None:  # an invalid dtype has its own error
        check_nodata_fits(nodata, dtype)


def cast_output(values: np.ndarray, dtype: str) -> np.ndarray:
    """Cast computed values to the output dtype: integers are rounded and clamped to range."""
    dt = np.dtype(dtype)
    if dt.kind in "iu":
        info = np.iinfo(dt)
        values = np.clip(np.rint(values), info.min, info.max)
    return values.astype(dt, copy=False)


# ---------------------------------------------------------------------------------- scale


class ScaleParams(Params):
    scale: float = 1.0
    offset: float = 0.0
    clip: tuple[float, float] | None = Field(None, description="[lo, hi] applied after scaling")
    dtype: OutputDtype = "float32"
    bands: list[int] | None = Field(None, description="1-based bands; default: every band")
    nodata: float | None = Field(None, description="Output nodata; default by dtype")

    @field_validator("bands")
    @classmethod
    def _positive_bands(cls, v: list[int] | None) -> list[int] | None:
        if v is not None:
            if not v:
                raise ValueError("must list at least one band")
            for b in v:
                if b < 1:
                    raise ValueError(f"band indexes start at 1 (got {b})")
        return v

    @field_validator("nodata")
    @classmethod
    def _nodata_fits(cls, v: float | None, info: ValidationInfo) -> float | None:
        _nodata_field(v, info)
        return v

    @model_validator(mode="after")
    def _check(self) -> ScaleParams:
        if self.clip is not None and self.clip[0] > self.clip[1]:
            raise ValueError(f"clip: lower bound above upper bound (got {list(self.clip)})")
        return self


class Scale(RasterOperation[ScaleParams]):
    """``out = clip(in × scale + offset, lo, hi)`` cast to ``dtype``, band by band; each
    output band is nodata where its own input band is (its nodata, or the dataset's mask)."""

    name = "scale"
    params_model = ScaleParams
    per_band_valid = True

    def bands(self, params: ScaleParams, src: RasterSource) -> list[int]:
        return list(params.bands) if params.bands else list(range(1, src.count + 1))

    def output(self, params: ScaleParams, src: RasterSource) -> RasterOutput:
        nodata = params.nodata if params.nodata is not None else default_nodata(params.dtype)
        return RasterOutput(len(self.bands(params, src)), params.dtype, nodata)

    def _compute_dtype(self, params: ScaleParams) -> np.dtype[Any]:
        return np.dtype("float64" if params.dtype in ("float64", "uint32", "int32") else "float32")

    @staticmethod
    def _direct(
        params: ScaleParams, in_dtype: np.dtype[Any], ctype: np.dtype[Any], out: RasterOutput
    ) -> bool:
        if params.clip is not None or np.dtype(out.dtype) != ctype or in_dtype.kind not in "iu":
            return False
        info = np.iinfo(in_dtype)
        bound = abs(params.scale) * max(-int(info.min), int(info.max)) + abs(params.offset)
        return bound < float(np.finfo(ctype).max)

    def temp_bytes_per_pixel(self, params: ScaleParams, src: RasterSource) -> int:
        # one band at a time: the float copy, plus clip/rint results for integer outputs
        return 2 * self._compute_dtype(params).itemsize

    def apply(
        self, params: ScaleParams, data: np.ndarray, valid: np.ndarray, out: RasterOutput
    ) -> np.ndarray:
        result = np.empty((data.shape[0], *data.shape[1:]), dtype=out.dtype)
        ctype = self._compute_dtype(params)
        direct = self._direct(params, data.dtype, ctype, out)
        for i in range(data.shape[0]):
            band_valid = valid[i]  # this band's own mask: nodata is per band
            if direct:
                # float output, no clip, integer input that cannot overflow: every result is
                # finite, so compute straight into the output (2 passes, no temporaries)
                np.multiply(data[i], ctype.type(params.scale), out=result[i], dtype=ctype)
                result[i] += ctype.type(params.offset)
                if not band_valid.all():
                    result[i][~band_valid] = out.nodata
                continue
            x = data[i].astype(ctype)
            x *= params.scale
            x += params.offset
            if params.clip is not None:
                np.clip(x, params.clip[0], params.clip[1], out=x)
            finite = np.isfinite(x)
            x[~finite] = 0
            result[i] = cast_output(x, out.dtype)
            result[i][~(band_valid & finite)] = out.nodata
            del x
        return result


# ----------------------------------------------------------------------------------- ndvi


class NdviParams(Params):
    nir: int = Field(ge=1, description="1-based near-infrared band")
    red: int = Field(ge=1, description="1-based red band")
    nodata: float = FLOAT_NODATA

    @field_validator("nodata")
    @classmethod
    def _nodata_fits(cls, v: float, info: ValidationInfo) -> float:
        _nodata_field(v, info, "float32")
        return v


class Ndvi(RasterOperation[NdviParams]):
    """``(nir − red) / (nir + red)`` as float32; nodata and zero denominators → nodata."""

    name = "ndvi"
    params_model = NdviParams
    per_band_valid = True

    def bands(self, params: NdviParams, src: RasterSource) -> list[int]:
        return [params.nir, params.red]

    def output(self, params: NdviParams, src: RasterSource) -> RasterOutput:
        return RasterOutput(1, "float32", params.nodata)

    def temp_bytes_per_pixel(self, params: NdviParams, src: RasterSource) -> int:
        # peak: nir, red, numerator, denominator as float32; the ok-mask is made after nir
        # and red are freed (and the per-band masks are counted with the masks)
        return 4 * 4

    def apply(
        self, params: NdviParams, data: np.ndarray, valid: np.ndarray, out: RasterOutput
    ) -> np.ndarray:
        nir = data[0].astype(np.float32)
        red = data[1].astype(np.float32)
        num = nir - red
        den = nir + red
        del nir, red
        ok = np.not_equal(den, 0)
        ok &= valid[0]  # a pixel needs both bands
        ok &= valid[1]
        result = np.full((1, *num.shape), out.nodata, dtype=np.float32)
        np.divide(num, den, out=result[0], where=ok)
        return result


# ----------------------------------------------------------------------------- expression


class ExpressionParams(Params):
    expr: str = Field(min_length=1, description="Band math over b1..bN, e.g. (b4-b3)/(b4+b3)")
    dtype: OutputDtype = "float32"
    nodata: float | None = None

    @field_validator("expr")
    @classmethod
    def _safe(cls, v: str) -> str:
        parse_expression(v)  # raises ValueError with what is not allowed
        return v

    @field_validator("nodata")
    @classmethod
    def _nodata_fits(cls, v: float | None, info: ValidationInfo) -> float | None:
        _nodata_field(v, info)
        return v


class BandExpression(RasterOperation[ExpressionParams]):
    """Band math evaluated in float32 (float64 for 32-bit integer or float64 outputs).

    Pixels where any referenced band is nodata, or where the result is not finite (a
    division by zero, the log of a negative number), are written as the output nodata.
    """

    name = "expression"
    params_model = ExpressionParams
    per_band_valid = True

    def bands(self, params: ExpressionParams, src: RasterSource) -> list[int]:
        return list(parse_expression(params.expr).bands)

    def output(self, params: ExpressionParams, src: RasterSource) -> RasterOutput:
        nodata = params.nodata if params.nodata is not None else default_nodata(params.dtype)
        return RasterOutput(1, params.dtype, nodata)

    def _compute_dtype(self, params: ExpressionParams) -> np.dtype[Any]:
        return np.dtype("float64" if params.dtype in ("float64", "uint32", "int32") else "float32")

    def temp_bytes_per_pixel(self, params: ExpressionParams, src: RasterSource) -> int:
        expr = parse_expression(params.expr)
        isz = self._compute_dtype(params).itemsize
        # float copies of the bands, one array per operation (upper bound), the finite mask
        return (len(expr.bands) + expr.operations + 1) * isz + 1

    def apply(
        self, params: ExpressionParams, data: np.ndarray, valid: np.ndarray, out: RasterOutput
    ) -> np.ndarray:
        expr = parse_expression(params.expr)
        ctype = self._compute_dtype(params)
        shape = data.shape[1:]
        arrays = {b: data[i].astype(ctype) for i, b in enumerate(expr.bands)}
        values = np.asarray(expr.evaluate(arrays), dtype=ctype)
        del arrays
        if values.shape != shape:
            values = np.broadcast_to(values, shape)
        ok = np.isfinite(values)
        for i in range(data.shape[0]):  # a pixel needs every band the expression reads
            ok &= valid[i]
        result = np.full((1, *shape), out.nodata, dtype=out.dtype)
        result[0][ok] = cast_output(values[ok], out.dtype)
        return result


SCALE = Scale()
NDVI = Ndvi()
EXPRESSION = BandExpression()
