"""Input metadata (I/O): which files a job reads, and what the planner needs of each.

Metadata only — headers through rasterio, layer info and a small sample batch through
pyogrio — never a full read.
"""

from __future__ import annotations

import glob as globmod
import math
import os
import time
from collections.abc import Callable
from typing import Any

from . import storage
from .errors import GisJobError, InputError, one_line
from .plan import MASK_BYTES_PER_PIXEL, RasterFile, VectorFile
from .registry import RasterOperation, RasterSource, VectorOperation, VectorRead
from .spec import GisJob
from .tiles import FeatureRange, FidBoundaries, FidPass, SampledFidBoundaries, feature_ranges

VECTOR_SAMPLE_ROWS = 500


def _gdal_path(uri: str, field: str) -> str:
    try:
        return storage.gdal_path(uri)
    except storage.StorageUriError as exc:
        raise InputError(f"{field}: {exc}") from None


def input_files(job: GisJob) -> list[str]:
    """The job's input files as GDAL opens them (``s3://b/k`` → ``/vsis3/b/k``)."""
    inp = job.spec.input
    if inp.uri:
        return [_gdal_path(inp.uri, "spec.input.uri")]
    if inp.uris:
        return [_gdal_path(u, f"spec.input.uris[{i}]") for i, u in enumerate(inp.uris)]
    assert inp.glob is not None
    local = storage.is_local(inp.glob)
    files = sorted(globmod.glob(inp.glob)) if local else _object_glob(inp.glob)
    if not files:
        raise InputError(f"{inp.glob}: spec.input.glob matches no file")
    return files


def _object_glob(pattern: str) -> list[str]:
    """Objects matching ``pattern`` (``s3://bucket/prefix/*.tif``): one listing of the prefix
    before the first wildcard, matched segment by segment like ``glob.glob``."""
    path = _gdal_path(pattern, "spec.input.glob")
    obj = storage.parse_object_uri(path)
    if obj is None or storage.has_wildcard(obj.bucket):
        raise InputError(
            f"{pattern}: spec.input.glob: only keys may hold wildcards, in s3://, gs:// or "
            "az:// (or their /vsi paths)"
        )
    root = storage.glob_root(obj.key)
    if obj.scheme == "s3":
        import pyarrow.fs as pafs

        from .location import s3_filesystem

        base = f"{obj.bucket}/{root}".rstrip("/")
        try:
            infos = s3_filesystem().get_file_info(pafs.FileSelector(base, recursive=True))
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise _storage_error(pattern, str(exc)) from None
        keys = [i.path.split("/", 1)[1] for i in infos if i.type == pafs.FileType.File]
    else:
        from . import gdalenv

        pyogrio = gdalenv.import_pyogrio()
        base = storage.ObjectUri(obj.scheme, obj.bucket, root).gdal
        try:
            listed = pyogrio.vsi_listtree(base)
        except (FileNotFoundError, OSError):
            return []
        head = f"{storage.OBJECT_SCHEMES[obj.scheme]}{obj.bucket}/"
        keys = [p[len(head) :] for p in listed if not p.endswith("/")]
    return sorted(
        storage.ObjectUri(obj.scheme, obj.bucket, k).gdal
        for k in keys
        if storage.glob_matches(obj.key, k)
    )


TRANSIENT_WORDS = (
    "curl",
    "http response code: 5",
    "http error 5",
    "slowdown",
    "timed out",
    "timeout",
    "connection",
    "could not connect",
    "reduce your request rate",
    "throttl",
)


def _looks_transient(message: str) -> bool:
    text = message.lower()
    return any(w in text for w in TRANSIENT_WORDS)


def _storage_error(uri: str, message: str) -> GisJobError:
    """An object store's failure: exit 2 when no retry can help (wrong credentials, a
    missing bucket or key), else retryable (throttling, 5xx, the network)."""
    text = storage.redact(one_line(message))
    permanent = storage.permanent_failure(uri, text)
    if permanent is not None:
        return InputError(permanent)
    return GisJobError(f"{uri}: object storage failed ({text}); transient: a retry may succeed")


def open_raster_source(uri: str) -> Any:
    import rasterio
    from rasterio.errors import RasterioIOError

    local = storage.is_local(uri)
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
        if storage.is_network(uri):
            failure = _storage_error(uri, str(exc))
            if not isinstance(failure, InputError) and not _looks_transient(str(exc)):
                failure = InputError(f"{uri}: not a raster GDAL can read ({one_line(str(exc))})")
            raise failure from None
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
    index: int,
    uri: str,
    layer: str | None,
    op: VectorOperation[Any],
    params: Any,
    features_per_tile: int,
) -> VectorFile:
    """Layer info, one FID-only pass for the tile boundaries, and a time-bounded sample
    read that sizes features and checks the operation's ``where`` as the worker runs it."""
    import pyogrio
    from pyogrio.errors import DataLayerError, DataSourceError

    if storage.is_local(uri) and not os.path.exists(uri):
        raise InputError(f"{uri}: input file not found")
    try:
        info = pyogrio.read_info(uri, layer=layer)
    except (DataSourceError, DataLayerError) as exc:
        if storage.is_network(uri):
            failure = _storage_error(uri, str(exc))
            if isinstance(failure, InputError) or _looks_transient(str(exc)):
                raise failure from None
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
    fids = fid_pass(uri, layer, features_per_tile)
    first_fid = fids.bounds[0] if fids.bounds else 0
    first = feature_ranges(first_fid, fids.count, features_per_tile, fids.bounds)[0]
    nbytes, rows = _bounded_sample(uri, layer, opts, first)
    bpf = nbytes / rows if rows else 1024.0
    return VectorFile(
        index=index,
        uri=uri,
        layer=layer,
        features=fids.count,
        first_fid=first_fid,
        bytes_per_feature=max(bpf, 64.0),
        crs=info.get("crs"),
        fid_bounds=fids.bounds,
        last_fid=fids.last_fid,
    )


FID_PASS_BATCH = 65_536  # FIDs per Arrow batch of the FID pass (512 KiB of int64)
# How long the planner's sample read (with the user's where) may take; env override.
WHERE_PROBE_SECONDS = 60.0
WHERE_PROBE_ENV = "GISJOB_WHERE_PROBE_SECONDS"


def _stream_fids(uri: str, layer: str | None, add: Callable[[Any], bool]) -> bool:
    """Feed ``add`` the layer's FIDs batch by batch (FID column only: no attribute, no
    geometry is read); False as soon as ``add`` declines a batch."""
    from pyogrio import raw
    from pyogrio.errors import DataLayerError, DataSourceError

    try:
        with raw.open_arrow(
            uri,
            layer=layer,
            columns=[],
            read_geometry=False,
            return_fids=True,
            batch_size=FID_PASS_BATCH,
            use_pyarrow=True,
        ) as (_meta, reader):
            for batch in reader:
                if batch.num_columns == 0:
                    raise InputError(f"{uri}: the layer has no feature ids GDAL can read")
                if not add(_int64_values(batch.column(0))):
                    return False
    except (DataSourceError, DataLayerError, OSError, ValueError) as exc:
        # GDAL errors raised while streaming arrive as a plain OSError from pyarrow
        raise InputError(
            f"{uri}: cannot read the layer's feature ids ({one_line(str(exc))})"
        ) from None
    return True


def _int64_values(column: Any) -> Any:
    """An int64 Arrow array's values as a NumPy view. Not ``to_numpy()``: pyarrow imports
    pandas for it (~45 MiB and ~0.5 s in a worker that never needs pandas)."""
    import numpy as np
    import pyarrow as pa

    if column.type != pa.int64():
        column = column.cast(pa.int64())
    if column.null_count:
        raise ValueError("null feature ids")
    if not len(column):
        return np.empty(0, dtype=np.int64)
    return np.frombuffer(
        column.buffers()[1], dtype=np.int64, count=len(column), offset=column.offset * 8
    )


def fid_pass(uri: str, layer: str | None, per_tile: int) -> FidPass:
    """The layer's feature count and tile boundaries from its real FIDs (bounded memory:
    every ``per_tile``-th FID of an ascending stream; a hash sample when the driver streams
    FIDs in another order)."""
    exact = FidBoundaries(per_tile)
    if _stream_fids(uri, layer, exact.add):
        return exact.result()
    sampled = SampledFidBoundaries(per_tile)

    def add(fids: Any) -> bool:
        sampled.add(fids)
        return True

    _stream_fids(uri, layer, add)
    return sampled.result()


def _sample(uri: str, layer: str | None, opts: VectorRead, first: FeatureRange) -> dict[str, Any]:
    """Bytes and rows of a sample batch (curves linearised, as the worker holds them), with
    the where checked alone and as the worker runs it (combined with a tile's FID range).
    Runs in the probe child: returns what happened as JSON-able data, never raises."""
    from pyogrio import raw
    from pyogrio.errors import DataLayerError, DataSourceError, FieldError

    from .operations.vector import linearize_wkb

    step = "where"
    try:
        _meta, sample = raw.read_arrow(
            uri,
            layer=layer,
            columns=opts.columns,
            where=opts.where,
            max_features=VECTOR_SAMPLE_ROWS,
            return_fids=False,
        )
        if opts.where:
            step = "combined"
            raw.read_arrow(
                uri,
                layer=layer,
                columns=[],
                read_geometry=False,
                return_fids=True,
                where=first.where(opts.where),
                max_features=1,
            )
        step = "read"
        if sample.num_rows == 0:  # a selective filter: size by the unfiltered rows
            _meta, sample = raw.read_arrow(
                uri, layer=layer, columns=opts.columns, max_features=VECTOR_SAMPLE_ROWS
            )
        nbytes = sample.nbytes
        name = _meta.get("geometry_name") or "wkb_geometry"
        if name in sample.column_names:
            import pyarrow as pa

            geom = sample.column(name)
            if not pa.types.is_binary(geom.type):
                geom = geom.cast(pa.binary())
            nbytes += linearize_wkb(geom).nbytes - geom.nbytes
        return {"nbytes": int(nbytes), "rows": int(sample.num_rows)}
    except (DataSourceError, DataLayerError, FieldError, OSError, ValueError) as exc:
        if step == "where" and opts.where:  # the filter, or the data? read without it
            try:
                raw.read_arrow(uri, layer=layer, max_features=VECTOR_SAMPLE_ROWS)
            except (DataSourceError, DataLayerError, FieldError, OSError, ValueError):
                step = "read"
        return {"step": step, "error": one_line(str(exc))}


def _bounded_sample(
    uri: str, layer: str | None, opts: VectorRead, first: FeatureRange
) -> tuple[int, int]:
    """:func:`_sample` in a forked child killed after :data:`WHERE_PROBE_SECONDS`: a where
    with a cartesian subquery fails the plan (exit 2) instead of planning for minutes."""
    limit = float(os.environ.get(WHERE_PROBE_ENV) or WHERE_PROBE_SECONDS)
    out = run_with_deadline(lambda: _sample(uri, layer, opts, first), limit)
    if out is None:
        what = "spec.operation.params.where: " if opts.where else ""
        raise InputError(
            f"{uri}: {what}the planner's sample read of {VECTOR_SAMPLE_ROWS} features did "
            f"not finish within {limit:g} s (the limit, ${WHERE_PROBE_ENV})"
            + ("; simplify the filter (no subquery over the whole layer)" if opts.where else "")
        )
    if "error" in out:
        field = "spec.operation.params.where"
        if out["step"] == "combined":
            raise InputError(
                f"{uri}: {field}: valid alone but not as the workers run it, AND-ed with a "
                f"tile's feature-id range ({one_line(first.where('<where>'))}): "
                f"{out['error']} (give one "
                "boolean expression: no ORDER BY, LIMIT or unbalanced parentheses)"
            )
        if out["step"] == "read" or not opts.where:
            raise InputError(f"{uri}: cannot read a sample of the layer ({out['error']})")
        raise InputError(f"{uri}: {field}: {out['error']}")
    return int(out["nbytes"]), int(out["rows"])


def run_with_deadline(fn: Callable[[], dict[str, Any]], seconds: float) -> dict[str, Any] | None:
    """``fn()`` in a forked child (it inherits the imported GDAL: ~10 ms, not an
    interpreter start), its JSON result read back over a pipe; None when it did not finish
    within ``seconds`` — the child is then killed (a thread could not be). The child also
    dies on its own (SIGALRM, parent-death signal) if this process is killed meanwhile."""
    if not hasattr(os, "fork"):
        return fn()
    import json
    import select
    import signal

    from .forkserver import die_with_parent

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 0
        try:
            os.close(r)
            die_with_parent()
            for sig in (signal.SIGALRM, signal.SIGTERM, signal.SIGCHLD):
                signal.signal(sig, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides
            signal.alarm(math.ceil(seconds) + 5)
            try:
                result = fn()
            except BaseException as exc:
                result = {"step": "read", "error": f"{type(exc).__name__}: {exc}"}
            data = json.dumps(result).encode()
            while data:
                data = data[os.write(w, data) :]
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    chunks: list[bytes] = []
    done = False
    deadline = time.monotonic() + seconds
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            ready, _, _ = select.select([r], [], [], left)
            if not ready:
                continue
            data = os.read(r, 65536)
            if not data:
                done = True
                break
            chunks.append(data)
    finally:
        os.close(r)
        if not done:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:  # reaped by someone else's SIGCHLD handler
            pass
    if not done:
        return None
    try:
        out = json.loads(b"".join(chunks) or b"null")
    except ValueError:
        out = None
    if not isinstance(out, dict):
        return {"step": "read", "error": "the sample read's process died"}
    return out
