"""The GisJob document (DESIGN §2): one pydantic model, the single source of truth.

The same document is a local job file and a Kubernetes manifest. ``load_job`` reads a YAML
file and turns every problem into a one-line :class:`SpecError` naming the file and the field
path, e.g. ``job.yaml: spec.resources.memoryHeadroom: must be between 0.05 and 1.0 (got 1.5)``.
"""

from __future__ import annotations

import glob as globmod
import os
import re
import stat
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
from .storage import is_local

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

    uri: str | None = Field(
        None,
        description="One path or URL GDAL can open: a local path, s3://bucket/key, gs://, "
        "az://, https:// (read through /vsicurl/) or a GDAL /vsi path.",
    )
    uris: list[str] | None = Field(None, min_length=1, description="Several files, planned each.")
    glob: str | None = Field(
        None,
        description="A glob pattern (local, or s3://bucket/prefix/*.tif: the prefix is "
        "listed), each match planned.",
    )
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
    uri: str = Field(
        min_length=1, description="Output directory, or an s3://bucket/prefix for object storage."
    )
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


GDAL_OPTION = re.compile(r"[A-Z][A-Z0-9_]*")
# options gisjob sets itself (the memory model counts them): not overridable per job
GDAL_OWNED = {
    "GDAL_CACHEMAX": "spec.resources.gdalCacheMax",
    "GDAL_NUM_THREADS": "spec.resources.cpu",
    "VSI_CACHE": "the memory model (off)",
    "CPL_VSIL_CURL_CACHE_SIZE": "the memory model",
}


class StorageSpec(_Model):
    """Object-storage access for the job's pods (credentials never pass through the spec)."""

    secret_name: str | None = Field(
        None,
        pattern=DNS1123_NAME,
        max_length=253,
        description="A Secret in the job's namespace whose keys (AWS_ACCESS_KEY_ID, "
        "AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, ...) become the environment of the "
        "planner, worker and finalizer pods. The operator never reads it.",
    )
    requester_pays: bool = Field(
        False, description="Requests to requester-pays buckets are billed to the requester."
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
    storage: StorageSpec = Field(default_factory=StorageSpec)
    ttl_seconds_after_finished: int | None = Field(None, ge=0)
    suspend: bool = False
    gdal_config: dict[str, str] = Field(
        default_factory=dict,
        description="GDAL configuration options (e.g. OSM_USE_CUSTOM_INDEXING: 'NO') for "
        "every process that opens the data: planner, workers, finalizer; set as environment "
        "variables before GDAL loads.",
    )

    @field_validator("gdal_config")
    @classmethod
    def _gdal_config_keys(cls, v: dict[str, str]) -> dict[str, str]:
        for key in v:
            if not GDAL_OPTION.fullmatch(key):
                raise ValueError(f"{key!r} is not a GDAL configuration option name")
            if key in GDAL_OWNED:
                raise ValueError(f"{key} is set from {GDAL_OWNED[key]}; set that instead")
        return v


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
    if not is_local(path) or os.path.isabs(path):
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


# Limits on a job document (a hostile or broken file fails at once, with one line): the size
# of the text, its nesting and its values with YAML aliases expanded (an "alias bomb" is a few
# hundred bytes that validation would expand to billions of values).
MAX_JOB_BYTES = 1024**2
MAX_JOB_DEPTH = 64
MAX_JOB_VALUES = 100_000


class _TooDeep(Exception):
    def __init__(self, line: int) -> None:
        super().__init__(line)
        self.line = line


class _JobLoader(yaml.SafeLoader):
    """``yaml.safe_load`` with a nesting limit (the composer recurses once per level)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_JOB_DEPTH:
                raise _TooDeep(parent.start_mark.line + 1 if parent is not None else 1)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _check_values(data: Any, source: str) -> None:
    """Refuse documents whose values, aliases expanded, pass :data:`MAX_JOB_VALUES`."""
    stack = [data]
    count = 0
    while stack:
        value = stack.pop()
        count += 1
        if count > MAX_JOB_VALUES:
            raise SpecError(
                f"{source}: more than {MAX_JOB_VALUES:,} values once YAML aliases are expanded: "
                "not a job document"
            )
        if isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)


def load_job_text(text: str, source: str, base: Path | None = None) -> GisJob:
    """Parse and validate a job document; with ``base``, relative local paths are resolved
    against it. Local inputs that are FIFOs, sockets or devices are refused (see
    :func:`check_local_inputs`)."""
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_JOB_BYTES:
        raise SpecError(_too_large(source, size))
    try:
        data = yaml.load(text, Loader=_JobLoader)  # a SafeLoader: plain data only
    except _TooDeep as exc:
        raise SpecError(
            f"{source}: malformed YAML at line {exc.line}: nested deeper than "
            f"{MAX_JOB_DEPTH} levels"
        ) from None
    except RecursionError:  # pragma: no cover - the depth limit comes first
        raise SpecError(f"{source}: malformed YAML: nested too deeply") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise SpecError(f"{source}: malformed YAML{where}: {problem}") from None
    _check_values(data, source)
    job = parse_job(data, source)
    if base is not None:
        job = resolve_paths(job, base)
    check_local_inputs(job)
    return job


def _too_large(source: str, size: int) -> str:
    return (
        f"{source}: a job document of {size:,} bytes is over the limit of "
        f"{MAX_JOB_BYTES // 1024**2} MiB ({MAX_JOB_BYTES:,} bytes); for many inputs use "
        "spec.input.glob"
    )


def _file_kind(mode: int) -> str | None:
    """What a non-regular, non-directory file is, or None for files and folders."""
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    return None


def check_local_inputs(job: GisJob) -> None:
    """Refuse local inputs that are FIFOs, sockets or devices: opening one would block until a
    writer appears (or read forever). Missing paths are left to the planner (it names them);
    folders are allowed (some vector formats are folders)."""
    inp = job.spec.input
    paths: list[tuple[str, str]] = []
    if inp.uri:
        paths.append(("spec.input.uri", inp.uri))
    for i, uri in enumerate(inp.uris or ()):
        paths.append((f"spec.input.uris[{i}]", uri))
    if inp.glob and is_local(inp.glob):
        paths.extend(("spec.input.glob", match) for match in globmod.glob(inp.glob))
    for field, path in paths:
        if not is_local(path):
            continue
        try:
            mode = os.stat(path).st_mode
        except (OSError, ValueError):
            continue
        kind = _file_kind(mode)
        if kind is not None:
            raise SpecError(f"{job.source}: {field}: {path} is {kind}, not a file GDAL can read")


def _read_job_file(p: Path) -> str:
    """The text of a job file: a regular file of at most :data:`MAX_JOB_BYTES` (a FIFO or
    device is refused at once instead of blocking or reading forever)."""
    try:
        # O_NONBLOCK: opening a FIFO without a writer returns at once (to be refused below)
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise SpecError(f"{p}: job file not found") from None
    except IsADirectoryError:
        raise SpecError(f"{p}: is a directory, not a job file") from None
    except OSError as exc:
        raise SpecError(f"{p}: cannot read job file: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise SpecError(f"{p}: is a directory, not a job file")
        kind = _file_kind(st.st_mode)
        if kind is not None:
            raise SpecError(f"{p}: is {kind}, not a job file (give a regular file)")
        if st.st_size > MAX_JOB_BYTES:
            raise SpecError(_too_large(str(p), st.st_size))
        with open(fd, "rb", closefd=False) as fh:
            data = fh.read(MAX_JOB_BYTES + 1)
    except OSError as exc:
        raise SpecError(f"{p}: cannot read job file: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if len(data) > MAX_JOB_BYTES:  # grew since fstat, or a /proc-like file of size 0
        raise SpecError(_too_large(str(p), len(data)))
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(f"{p}: cannot read job file: not UTF-8 text (byte {exc.start})") from None


def load_job(path: str | os.PathLike[str]) -> GisJob:
    """Read and validate a job file; relative paths in it are relative to the file's folder."""
    p = Path(path)
    return load_job_text(_read_job_file(p), str(p), base=p.resolve().parent)
