"""The GisJob document (DESIGN §2): one pydantic model, the single source of truth.

The same document is a local job file and a Kubernetes manifest. ``load_job`` reads a YAML
file and turns every problem into a one-line :class:`SpecError` naming the file and the field
path, e.g. ``job.yaml: spec.resources.memoryHeadroom: must be between 0.05 and 1.0 (got 1.5)``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from .errors import SpecError
from .quantity import Quantity

API_VERSION = "gisjob.dev/v1alpha1"
KIND = "GisJob"
GROUP = "gisjob.dev"
VERSION = "v1alpha1"

HEADROOM_MIN = 0.05
HEADROOM_MAX = 1.0
MIN_GDAL_CACHE = 1024**2  # below 100000 GDAL would read the number as megabytes
DNS1123_NAME = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
CPU_PATTERN = r"^([0-9]+(\.[0-9]+)?|[0-9]+m)$"

OomStrategy = Literal["shrinkChunks", "split", "grow"]
DEFAULT_OOM_STRATEGIES: tuple[OomStrategy, ...] = ("shrinkChunks", "split", "grow")
RasterFormat = Literal["COG", "GTiff"]
VectorFormat = Literal["GeoParquet", "GPKG"]
RASTER_FORMATS: tuple[str, ...] = ("COG", "GTiff")
VECTOR_FORMATS: tuple[str, ...] = ("GeoParquet", "GPKG")


class _Model(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        populate_by_name=True,
        alias_generator=to_camel,
        frozen=True,
    )


class ObjectMeta(BaseModel):
    """Kubernetes object metadata; the API server adds fields we keep but do not use."""

    model_config = ConfigDict(extra="allow", frozen=True)

    name: str = Field(min_length=1, max_length=63, pattern=DNS1123_NAME)
    namespace: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class InputSpec(_Model):
    """Where the data is: exactly one of uri, uris or glob."""

    uri: str | None = Field(None, description="One path or URL GDAL can open.")
    uris: list[str] | None = Field(None, min_length=1, description="Several files, planned each.")
    glob: str | None = Field(None, description="A glob pattern of local files, planned each.")
    layer: str | None = Field(None, description="Vector layer name (vectors only).")

    @model_validator(mode="after")
    def _exactly_one_source(self) -> InputSpec:
        given = [k for k in ("uri", "uris", "glob") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of uri, uris or glob"
                + (f" (got {', '.join(given)})" if given else "")
            )
        return self


class OperationSpec(_Model):
    name: str = Field(min_length=1, description="A registered operation (gisjob operations).")
    params: dict[str, Any] = Field(
        default_factory=dict, description="Validated by the operation's own params model."
    )


class OutputSpec(_Model):
    uri: str = Field(min_length=1, description="Output directory.")
    format: Literal["COG", "GTiff", "GeoParquet", "GPKG"] | None = Field(
        None, description="Rasters: COG | GTiff (default COG); vectors: GeoParquet | GPKG."
    )


class TilingSpec(_Model):
    tile_size: int = Field(4096, ge=1, description="Raster tile edge in pixels (block-rounded).")
    features_per_tile: int = Field(100_000, ge=1, description="Vector features per tile.")


class ResourcesSpec(_Model):
    memory: Quantity | None = Field(
        None, description="Per-worker memory (request = limit); omitted: derived from the plan."
    )
    max_memory: Quantity | None = Field(
        None, description="Ceiling for growing after an out-of-memory failure."
    )
    memory_headroom: float = Field(
        0.2,
        description="Fraction added to the estimate for GDAL caches, interpreter, allocator.",
        json_schema_extra={"minimum": HEADROOM_MIN, "maximum": HEADROOM_MAX},
    )
    gdal_cache_max: Quantity = Field(
        Quantity("64Mi"), description="Explicit GDAL block cache, counted inside the budget."
    )
    cpu: str = Field("1", pattern=CPU_PATTERN, description="CPU per worker (Kubernetes quantity).")

    @field_validator("cpu", mode="before")
    @classmethod
    def _cpu_as_text(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int | float) and not isinstance(v, bool) else v

    @field_validator("memory_headroom")
    @classmethod
    def _headroom_range(cls, v: float) -> float:
        if not HEADROOM_MIN <= v <= HEADROOM_MAX:
            raise ValueError(f"must be between {HEADROOM_MIN} and {HEADROOM_MAX} (got {v})")
        return v

    @field_validator("memory", "max_memory")
    @classmethod
    def _positive(cls, v: Quantity | None) -> Quantity | None:
        if v is not None and int(v) <= 0:
            raise ValueError(f"must be greater than zero (got {v})")
        return v

    @field_validator("gdal_cache_max")
    @classmethod
    def _cache_min(cls, v: Quantity) -> Quantity:
        if int(v) < MIN_GDAL_CACHE:
            raise ValueError(f"must be at least 1Mi (got {v})")
        return v

    @model_validator(mode="after")
    def _max_at_least_memory(self) -> ResourcesSpec:
        if (
            self.memory is not None
            and self.max_memory is not None
            and int(self.max_memory) < int(self.memory)
        ):
            raise ValueError(
                f"maxMemory ({self.max_memory}) must not be below memory ({self.memory})"
            )
        return self

    @property
    def cpu_count(self) -> float:
        text = self.cpu
        return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


class RetrySpec(_Model):
    backoff_limit: int = Field(3, ge=0, description="Retries per tile for non-memory failures.")
    on_out_of_memory: list[OomStrategy] = Field(
        default_factory=lambda: list(DEFAULT_OOM_STRATEGIES),
        description="Strategies tried in order after an out-of-memory failure.",
    )


class WorkerSpec(_Model):
    image: str = Field("gisjob:0.1.0", min_length=1)
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = None
    service_account_name: str | None = None
    volumes: list[dict[str, Any]] = Field(default_factory=list)
    volume_mounts: list[dict[str, Any]] = Field(default_factory=list)
    env: list[dict[str, Any]] = Field(default_factory=list)
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[dict[str, Any]] = Field(default_factory=list)


class GisJobSpec(_Model):
    input: InputSpec
    operation: OperationSpec
    output: OutputSpec
    tiling: TilingSpec = Field(default_factory=TilingSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    parallelism: int = Field(4, ge=1, description="Workers alive at once.")
    retry: RetrySpec = Field(default_factory=RetrySpec)
    worker: WorkerSpec = Field(default_factory=WorkerSpec)
    ttl_seconds_after_finished: int | None = Field(None, ge=0)
    suspend: bool = False


class GisJob(BaseModel):
    """A whole GisJob document."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

    api_version: Literal["gisjob.dev/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["GisJob"]
    metadata: ObjectMeta
    spec: GisJobSpec
    status: dict[str, Any] | None = Field(None, description="Written by the operator only.")
    _source: str = PrivateAttr(default="job")

    @property
    def source(self) -> str:
        """Where the document came from (a file path), for error messages."""
        return self._source

    @property
    def name(self) -> str:
        return self.metadata.name

    def to_document(self) -> dict[str, Any]:
        """The document as YAML/JSON-ready data (camelCase, quantities as written)."""
        doc = self.model_dump(mode="json", by_alias=True, exclude_none=True)
        doc.pop("status", None)
        return doc


def _format_loc(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif item.startswith("function-") or item in ("function-after", "function-before"):
            continue
        else:
            parts.append(("." if parts else "") + item)
    return "".join(parts)


def _format_error(err: Any) -> str:
    msg: str = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    loc = _format_loc(tuple(err.get("loc", ())))
    kind = err.get("type", "")
    if kind == "missing":
        msg = "required field is missing"
    elif kind == "extra_forbidden":
        msg = "unknown field"
    elif "got" not in msg and "input" in err and kind not in ("missing",):
        given = err["input"]
        if not isinstance(given, dict | list):
            msg = f"{msg} (got {given!r})"
    return f"{loc}: {msg}" if loc else msg


def format_validation_error(exc: ValidationError, prefix: str = "") -> str:
    """One line: the first error with its field path, and how many more there are."""
    errors = exc.errors()
    first = _format_error(errors[0])
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    if prefix:
        return f"{prefix}{first}{more}"
    return f"{first}{more}"


def parse_job(data: Any, source: str = "job", *, check_operation: bool = True) -> GisJob:
    """Validate a GisJob document (already parsed from YAML/JSON), operation params included.

    ``check_operation=False`` validates the document's shape only: the operator uses it, so
    that it never loads the operations (and NumPy); its planner pod checks the operation."""
    if not isinstance(data, dict):
        raise SpecError(f"{source}: not a GisJob document (expected a mapping at the top level)")
    try:
        job = GisJob.model_validate(data)
    except ValidationError as exc:
        raise SpecError(format_validation_error(exc, f"{source}: ")) from None
    if check_operation:
        from .registry import validate_operation  # the registry imports operations lazily

        validate_operation(job, source)
    job._source = source
    return job


def _resolve_local(path: str, base: Path) -> str:
    if "://" in path or path.startswith("/vsi") or os.path.isabs(path):
        return path
    return str((base / path).resolve())


def resolve_paths(job: GisJob, base: Path) -> GisJob:
    """Make relative local input/output paths absolute against ``base`` (the job file's folder)."""
    spec = job.spec
    inp = spec.input
    new_input = inp.model_copy(
        update={
            "uri": _resolve_local(inp.uri, base) if inp.uri else None,
            "uris": [_resolve_local(u, base) for u in inp.uris] if inp.uris else None,
            "glob": _resolve_local(inp.glob, base) if inp.glob else None,
        }
    )
    new_output = spec.output.model_copy(update={"uri": _resolve_local(spec.output.uri, base)})
    new_spec = spec.model_copy(update={"input": new_input, "output": new_output})
    resolved = job.model_copy(update={"spec": new_spec})
    resolved._source = job.source
    return resolved


def load_job_text(text: str, source: str, base: Path | None = None) -> GisJob:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise SpecError(f"{source}: malformed YAML{where}: {problem}") from None
    job = parse_job(data, source)
    return resolve_paths(job, base) if base is not None else job


def load_job(path: str | os.PathLike[str]) -> GisJob:
    """Read and validate a job file; relative paths in it are relative to the file's folder."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"{p}: job file not found") from None
    except IsADirectoryError:
        raise SpecError(f"{p}: is a directory, not a job file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"{p}: cannot read job file: {exc}") from None
    return load_job_text(text, str(p), base=p.resolve().parent)
