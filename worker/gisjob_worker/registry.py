"""Operation registry: each operation declares its kind, its params model and its memory factors.

Built-in operations live in :mod:`gisjob_worker.operations`; third parties register more
through the entry-point group ``gisjob.operations`` (the entry point names an instance of
:class:`RasterOperation` or :class:`VectorOperation`).
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Literal, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from .errors import SpecError
from .plan import RasterOutput

if TYPE_CHECKING:
    import pyarrow as pa

    from .spec import GisJob

ENTRY_POINT_GROUP = "gisjob.operations"
P = TypeVar("P", bound=BaseModel)
OutputDtype = Literal["uint8", "uint16", "int16", "uint32", "int32", "float32", "float64"]


class Params(BaseModel):
    """Base for operation params models: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


@dataclass(frozen=True)
class RasterSource:
    """What an operation may know about its input raster (metadata only)."""

    path: str
    count: int
    dtypes: tuple[str, ...]
    nodata: float | None
    width: int
    height: int


class Operation(ABC, Generic[P]):
    name: ClassVar[str]
    kind: ClassVar[Literal["raster", "vector"]]
    params_model: type[P]

    def parse_params(self, params: dict[str, Any]) -> P:
        return self.params_model.model_validate(params)


class RasterOperation(Operation[P]):
    """A pure function on one chunk of bands, plus what it costs per pixel."""

    kind: ClassVar[Literal["raster", "vector"]] = "raster"
    #: The shape of the ``valid`` mask that :meth:`apply` receives. ``True``: (bands, h, w),
    #: every band read with its own mask — GDAL's nodata is per band, and a pixel that is
    #: nodata in one band is still data in the others. ``False`` (the default, so operations
    #: written for the first interface keep working): (h, w), valid only where every band
    #: read is valid. The built-in operations take per-band masks.
    per_band_valid: ClassVar[bool] = False

    @abstractmethod
    def bands(self, params: P, src: RasterSource) -> list[int]:
        """1-based band indexes to read (explicit: never 'all bands' implicitly)."""

    @abstractmethod
    def output(self, params: P, src: RasterSource) -> RasterOutput:
        """Output band count, dtype and nodata."""

    @abstractmethod
    def temp_bytes_per_pixel(self, params: P, src: RasterSource) -> int:
        """Bytes of temporaries per pixel while ``apply`` runs (beyond input and output)."""

    @abstractmethod
    def apply(
        self, params: P, data: np.ndarray, valid: np.ndarray, out: RasterOutput
    ) -> np.ndarray:
        """``data``: (bands, h, w) in the input dtype, the bands of :meth:`bands` in order.

        ``valid``: bool, True where a pixel is data: (bands, h, w) — each band's own mask —
        when :attr:`per_band_valid` is set, else (h, w), the pixels valid in every band. A
        pixel is invalid where it equals its band's nodata value or where the dataset's mask
        band (an alpha band, an internal or external ``.msk`` mask) hides it. A per-band
        ``valid`` may be a read-only broadcast view (when nothing is masked): do not write
        to it.

        Returns (out.count, h, w) in ``out.dtype`` with ``out.nodata`` where invalid.
        """

    def check(self, params: P, src: RasterSource) -> None:
        """Raise ``ValueError`` if the params do not fit this input (e.g. band out of range)."""
        for b in self.bands(params, src):
            if not 1 <= b <= src.count:
                raise ValueError(
                    f"band {b} is out of range (the dataset has {src.count} band"
                    f"{'s' if src.count != 1 else ''})"
                )


@dataclass(frozen=True)
class VectorRead:
    """What to ask GDAL for: pushed down, never filtered in Python."""

    where: str | None
    columns: list[str] | None


class VectorOperation(Operation[P]):
    kind: ClassVar[Literal["raster", "vector"]] = "vector"

    @abstractmethod
    def read_options(self, params: P) -> VectorRead:
        """The attribute filter and columns pushed down to GDAL."""

    @abstractmethod
    def memory_factor(self, params: P) -> float:
        """Peak working bytes per byte of Arrow batch while ``apply`` runs."""

    @abstractmethod
    def apply(self, params: P, table: pa.Table, crs: str | None) -> pa.Table:
        """Transform one batch (geometry as WKB in column ``geometry``)."""


AnyOperation = RasterOperation[Any] | VectorOperation[Any]


def _builtins() -> dict[str, AnyOperation]:
    from .operations.raster import EXPRESSION, NDVI, SCALE
    from .operations.vector import FILTER

    return {op.name: op for op in (SCALE, NDVI, EXPRESSION, FILTER)}


@functools.cache
def registry() -> dict[str, AnyOperation]:
    """Built-ins plus every operation registered under the entry-point group."""
    ops = _builtins()
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in ops:
            continue
        obj = ep.load()
        if not isinstance(obj, RasterOperation | VectorOperation):
            raise TypeError(
                f"entry point {ep.name} = {ep.value} is not a RasterOperation or VectorOperation"
            )
        ops[ep.name] = obj
    return ops


def get_operation(name: str) -> AnyOperation:
    ops = registry()
    try:
        return ops[name]
    except KeyError:
        known = ", ".join(sorted(ops))
        raise KeyError(f"unknown operation {name!r} (known: {known})") from None


def validate_operation(job: GisJob, source: str) -> None:
    """Check the operation exists, fits the output format, and its params validate."""
    from .spec import RASTER_FORMATS, VECTOR_FORMATS

    spec = job.spec
    try:
        op = get_operation(spec.operation.name)
    except KeyError as exc:
        raise SpecError(f"{source}: spec.operation.name: {exc.args[0]}") from None
    fmt = spec.output.format
    allowed = RASTER_FORMATS if op.kind == "raster" else VECTOR_FORMATS
    if fmt is not None and fmt not in allowed:
        raise SpecError(
            f"{source}: spec.output.format: {fmt} is not a {op.kind} format "
            f"(use {' or '.join(allowed)})"
        )
    if op.kind == "raster" and spec.input.layer:
        raise SpecError(f"{source}: spec.input.layer: only vector operations read layers")
    try:
        op.parse_params(spec.operation.params)
    except ValidationError as exc:
        from .spec import _format_loc, format_validation_error

        has_loc = bool(_format_loc(tuple(exc.errors()[0].get("loc", ()))))
        prefix = f"{source}: spec.operation.params" + ("." if has_loc else ": ")
        raise SpecError(format_validation_error(exc, prefix)) from None
    except ValueError as exc:
        raise SpecError(f"{source}: spec.operation.params: {exc}") from None


def output_format(job: GisJob) -> str:
    op = get_operation(job.spec.operation.name)
    if job.spec.output.format:
        return job.spec.output.format
    return "COG" if op.kind == "raster" else "GeoParquet"
