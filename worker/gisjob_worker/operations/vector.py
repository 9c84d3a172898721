"""Vector operations on Arrow batches (geometry as WKB), streamed from GDAL.

Also what every vector read needs before an operation sees a batch: curved geometries
(CircularString, CompoundCurve, CurvePolygon, MultiCurve, MultiSurface — common in
GeoPackage and GML from surveying) linearised by GDAL's own ``OGR_G_GetLinearGeometry``
(:func:`linearize_wkb`), because GDAL's Arrow stream passes them through as they are stored
and neither GEOS (shapely) nor GeoParquet readers accept them.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import glob
import os
import re
from typing import TYPE_CHECKING, Any

from pydantic import Field, field_validator

from ..registry import Params, VectorOperation, VectorRead

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

GEOMETRY = "geometry"
_EQUAL_AREA_METHODS = (
    "equal area",
    "mollweide",
    "sinusoidal",
    "equal earth",
    "eckert iv",
    "eckert vi",
    "goode",
)
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class FilterParams(Params):
    where: str | None = Field(None, description="OGR SQL attribute filter, pushed down to GDAL")
    columns: list[str] | None = Field(None, description="Attribute columns to keep")
    area: bool = Field(False, description="Add an area column in km² (equal-area CRS)")
    area_column: str = Field("area_km2", alias="areaColumn")
    equal_area_crs: str = Field("EPSG:6933", alias="equalAreaCrs")

    @field_validator("where")
    @classmethod
    def _no_statement(cls, v: str | None) -> str | None:
        if v is not None and (";" in v or not v.strip()):
            raise ValueError("must be a single non-empty attribute filter (no ';')")
        return v

    @field_validator("area_column")
    @classmethod
    def _ident(cls, v: str) -> str:
        if not _IDENT.match(v):
            raise ValueError(f"must be a plain column name (got {v!r})")
        return v

    @field_validator("equal_area_crs")
    @classmethod
    def _crs(cls, v: str) -> str:
        from pyproj import CRS
        from pyproj.exceptions import CRSError

        try:
            crs = CRS.from_user_input(v)
        except CRSError:
            raise ValueError(f"not a CRS pyproj knows (got {v!r})") from None
        if crs.is_geographic:
            raise ValueError(f"must be a projected equal-area CRS (got geographic {v!r})")
        op = crs.coordinate_operation
        method = op.method_name if op is not None else ""
        if not any(k in method.lower() for k in _EQUAL_AREA_METHODS):
            raise ValueError(f"must be an equal-area projection (got {v!r}: {method})")
        return v


# ISO WKB geometry type codes (modulo 1000: +1000 Z, +2000 M, +3000 ZM) GEOS cannot read:
# CircularString, CompoundCurve, CurvePolygon, MultiCurve, MultiSurface, Curve, Surface.
# A GeometryCollection (7) may hold curves: GDAL decides for those.
_CURVED = frozenset(range(8, 15))
_COLLECTION = 7
_WKB_NDR = 1  # little-endian, what GDAL's Arrow stream and ISO export write


@functools.cache
def _libgdal() -> Any:
    """The libgdal pyogrio loaded (the one whose Arrow stream produced the WKB), with the
    prototypes of the OGR geometry functions used here."""
    import pyogrio

    paths: list[str] = []
    try:
        with open("/proc/self/maps", encoding="utf-8") as fh:
            mapped = {ln.split()[-1] for ln in fh if "libgdal" in ln and "/" in ln}
        paths = sorted(p for p in mapped if "pyogrio" in p) or sorted(mapped)
    except OSError:
        pass
    if not paths:
        root = os.path.dirname(os.path.dirname(pyogrio.__file__))
        paths = sorted(glob.glob(os.path.join(root, "pyogrio*libs", "libgdal*")))
        paths += sorted(
            glob.glob(os.path.join(os.path.dirname(pyogrio.__file__), ".dylibs", "libgdal*"))
        )
    if not paths:
        found = ctypes.util.find_library("gdal")
        if found is None:
            raise RuntimeError("cannot find the libgdal pyogrio uses (needed to linearise curves)")
        paths = [found]
    lib = ctypes.CDLL(paths[0])
    vp = ctypes.c_void_p
    lib.OGR_G_CreateFromWkbEx.argtypes = [ctypes.c_char_p, vp, ctypes.POINTER(vp), ctypes.c_size_t]
    lib.OGR_G_CreateFromWkbEx.restype = ctypes.c_int
    lib.OGR_G_HasCurveGeometry.argtypes = [vp, ctypes.c_int]
    lib.OGR_G_HasCurveGeometry.restype = ctypes.c_int
    lib.OGR_G_GetLinearGeometry.argtypes = [vp, ctypes.c_double, vp]
    lib.OGR_G_GetLinearGeometry.restype = vp
    lib.OGR_G_WkbSizeEx.argtypes = [vp]
    lib.OGR_G_WkbSizeEx.restype = ctypes.c_size_t
    lib.OGR_G_ExportToIsoWkb.argtypes = [vp, ctypes.c_int, ctypes.c_char_p]
    lib.OGR_G_ExportToIsoWkb.restype = ctypes.c_int
    lib.OGR_G_DestroyGeometry.argtypes = [vp]
    lib.OGR_G_DestroyGeometry.restype = None
    return lib


def _gdal_linear(wkb: bytes) -> bytes | None:
    """``wkb`` with every curve replaced by GDAL's default linearisation (arcs stroked every
    4°, ``OGR_ARC_STEPSIZE``); None when it holds no curve. Raises ValueError when GDAL
    cannot parse it."""
    lib = _libgdal()
    geom = ctypes.c_void_p()
    err = lib.OGR_G_CreateFromWkbEx(wkb, None, ctypes.byref(geom), len(wkb))
    if err != 0 or not geom.value:
        raise ValueError(f"unreadable WKB geometry (OGR error {err})")
    try:
        if not lib.OGR_G_HasCurveGeometry(geom, 0):  # curve types, even if straight
            return None
        linear = lib.OGR_G_GetLinearGeometry(geom, 0.0, None)
        if not linear:
            raise ValueError("GDAL could not linearise a curved geometry")
        try:
            out = ctypes.create_string_buffer(lib.OGR_G_WkbSizeEx(linear))
            if lib.OGR_G_ExportToIsoWkb(linear, _WKB_NDR, out) != 0:
                raise ValueError("GDAL could not export a linearised geometry")
            return out.raw
        finally:
            lib.OGR_G_DestroyGeometry(linear)
    finally:
        lib.OGR_G_DestroyGeometry(geom)


def _wkb_type_codes(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(indexes, ISO type code modulo 1000) of the non-null WKB values of a binary array,
    read from each value's 5-byte header without parsing the geometry."""
    import numpy as np
    import pyarrow as pa

    n = len(arr)
    bufs = arr.buffers()
    if n == 0 or bufs[2] is None:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    off_type = np.int64 if pa.types.is_large_binary(arr.type) else np.int32
    offsets = np.frombuffer(
        bufs[1], dtype=off_type, count=n + 1, offset=arr.offset * off_type().itemsize
    )
    data = np.frombuffer(bufs[2], dtype=np.uint8)
    starts = offsets[:-1].astype(np.int64)
    has_header = np.diff(offsets) >= 5
    if arr.null_count and bufs[0] is not None:  # unpack the validity bitmap (no pandas)
        bits = np.unpackbits(np.frombuffer(bufs[0], dtype=np.uint8), bitorder="little")
        has_header &= bits[arr.offset : arr.offset + n].astype(bool)
    idx = np.flatnonzero(has_header)
    head = data[starts[idx, None] + np.arange(5)].astype(np.uint64)
    little = head[:, 0] == _WKB_NDR
    code_le = head[:, 1] | head[:, 2] << 8 | head[:, 3] << 16 | head[:, 4] << 24
    code_be = head[:, 4] | head[:, 3] << 8 | head[:, 2] << 16 | head[:, 1] << 24
    code = np.where(little, code_le, code_be) & np.uint64(0x0FFFFFFF)  # drop EWKB Z/M flags
    return idx.astype(np.int64), (code % np.uint64(1000)).astype(np.int64)


def linearize_wkb(column: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """The WKB column with curved geometries linearised by GDAL; the very same column when
    it holds none (a header scan, no geometry is parsed for linear values)."""
    import numpy as np
    import pyarrow as pa

    if isinstance(column, pa.ChunkedArray):
        given = column.chunks  # a fresh list of wrappers on each access: keep this one
        chunks = [linearize_wkb(c) for c in given]
        if all(a is b for a, b in zip(chunks, given, strict=True)):
            return column
        return pa.chunked_array(chunks, type=column.type)
    idx, codes = _wkb_type_codes(column)
    maybe = idx[np.isin(codes, (*_CURVED, _COLLECTION))]
    if not len(maybe):
        return column
    replaced: list[int] = []
    values: list[bytes] = []
    for i in maybe.tolist():
        linear = _gdal_linear(column[i].as_py())
        if linear is not None:
            replaced.append(i)
            values.append(linear)
    if not replaced:
        return column
    # Arrow arrays from buffers: pa.array() imports pandas (even for a list), ~45 MiB
    mask = np.zeros(len(column), dtype=bool)
    mask[replaced] = True
    bits = pa.py_buffer(np.packbits(mask, bitorder="little").tobytes())
    mask_array = pa.Array.from_buffers(pa.bool_(), len(column), [None, bits])
    off_type = np.int64 if pa.types.is_large_binary(column.type) else np.int32
    offsets = np.zeros(len(values) + 1, dtype=off_type)
    np.cumsum([len(v) for v in values], out=offsets[1:])
    data = pa.py_buffer(b"".join(values))
    value_array = pa.Array.from_buffers(
        column.type, len(values), [None, pa.py_buffer(offsets.tobytes()), data]
    )
    import pyarrow.compute as pc  # only now: importing it costs ~9 MiB in every worker

    return pc.replace_with_mask(column, mask_array, value_array)


@functools.cache
def _transformer(src_crs: str, dst_crs: str) -> Any:
    from pyproj import Transformer

    return Transformer.from_crs(src_crs, dst_crs, always_xy=True)


def area_km2(wkb: pa.Array | pa.ChunkedArray, crs: str, equal_area_crs: str) -> Any:
    """Area of WKB geometries in km², computed in ``equal_area_crs``."""
    import numpy as np
    import shapely

    # to_pylist, not to_numpy(zero_copy_only=False): pyarrow imports pandas for the latter
    objs = np.empty(len(wkb), dtype=object)
    objs[:] = wkb.to_pylist()
    try:
        geoms = shapely.from_wkb(objs)
    except (shapely.errors.ShapelyError, NotImplementedError) as exc:
        # corrupt WKB, or a geometry type GEOS cannot read: a property of the data
        raise ValueError(f"unreadable geometry ({' '.join(str(exc).split())})") from None
    del objs
    tr = _transformer(crs, equal_area_crs)
    projected = shapely.transform(
        geoms, lambda xy: np.column_stack(tr.transform(xy[:, 0], xy[:, 1]))
    )
    del geoms
    areas = shapely.area(projected) / 1e6
    del projected
    return areas


class Filter(VectorOperation[FilterParams]):
    """Attribute filter pushed down to GDAL, column selection, optional area in km²."""

    name = "filter"
    params_model = FilterParams

    def read_options(self, params: FilterParams) -> VectorRead:
        return VectorRead(where=params.where, columns=params.columns)

    def memory_factor(self, params: FilterParams) -> float:
        # Arrow batch + its output copy; with area: shapely objects of the batch, twice
        # (source and projected), measured at ~2.5x their WKB size each.
        return 7.0 if params.area else 2.0

    def apply(self, params: FilterParams, table: pa.Table, crs: str | None) -> pa.Table:
        import pyarrow as pa

        if not params.area:
            return table
        if crs is None:
            raise ValueError("the input layer has no CRS: cannot compute areas")
        import numpy as np

        areas = np.ascontiguousarray(
            area_km2(table.column(GEOMETRY), crs, params.equal_area_crs), dtype=np.float64
        )
        # from_buffers, not pa.array(ndarray): pyarrow's pandas shim would import pandas
        column = pa.Array.from_buffers(pa.float64(), len(areas), [None, pa.py_buffer(areas)])
        index = table.schema.get_field_index(params.area_column)
        if index >= 0:
            return table.set_column(index, params.area_column, column)
        return table.append_column(params.area_column, column)


FILTER = Filter()
