"""One vector tile: Arrow batches of its feature range (``pyogrio.raw.open_arrow``) through
the operation into GeoParquet or GeoPackage, written under a temporary name and renamed.

Curved geometries are linearised by GDAL as each batch is read (the operation and the
output only ever see linear WKB), and what the data itself gets wrong — a read error of a
local file, an unreadable geometry — is an :class:`InputError` naming the file (exit 2,
never retried).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from . import outputs
from .errors import InputError
from .guard import malloc_trim
from .memory import CHUNK_SLACK, VECTOR_STREAM_BATCHES
from .operations.vector import linearize_wkb
from .plan import VectorFile
from .registry import VectorOperation
from .storage import is_network
from .tilecontext import TileContext, chunk_done
from .tiles import FeatureRange


def _geo_metadata(crs: str | None, geometry_type: str | None) -> bytes:
    column: dict[str, Any] = {"encoding": "WKB", "geometry_types": []}
    if geometry_type and geometry_type not in ("Unknown", "Geometry"):
        column["geometry_types"] = [geometry_type.replace(" ", "")]
    if crs:
        from pyproj import CRS

        column["crs"] = CRS.from_user_input(crs).to_json_dict()
    meta = {"version": "1.0.0", "primary_column": "geometry", "columns": {"geometry": column}}
    return json.dumps(meta).encode()


def run_vector(ctx: TileContext, op: VectorOperation[Any], final: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from pyogrio import raw
    from pyogrio.errors import DataLayerError, DataSourceError, FieldError

    f = ctx.plan.files[ctx.tile.file_index]
    assert isinstance(f, VectorFile) and ctx.tile.fids is not None and ctx.tile.batch_rows
    params = op.parse_params(ctx.job.spec.operation.params)
    opts = op.read_options(params)
    where = ctx.tile.fids.where(opts.where)  # the user's filter parenthesised, as planned
    tmp = outputs.temp_path(final)
    ctx.progress.temps.append(tmp)
    per_batch = int(
        ctx.tile.batch_rows
        * f.bytes_per_feature
        * (ctx.plan.sizing.memory_factor + VECTOR_STREAM_BATCHES - 1)
        * (1 + CHUNK_SLACK)
    )
    fmt = ctx.plan.output_format
    writer: Any = None
    try:
        with raw.open_arrow(
            f.uri,
            layer=f.layer,
            columns=opts.columns,
            where=where,
            batch_size=ctx.tile.batch_rows,
            use_pyarrow=True,
        ) as (meta, reader):
            geom_name = meta.get("geometry_name") or "wkb_geometry"
            crs = meta.get("crs")
            batches = iter(reader)
            index = 0
            while True:
                started = time.perf_counter()
                rss0 = ctx.guard.check_before(per_batch, f"batch {index}")
                try:
                    batch = next(batches, None)
                except OSError as exc:  # GDAL's read error, raised through the Arrow stream
                    if is_network(f.uri):
                        raise  # a network read may succeed on retry
                    raise InputError(
                        f"{f.uri}: cannot read features {_fid_span(ctx.tile.fids)} "
                        f"({' '.join(str(exc).split())})"
                    ) from None
                if batch is None:
                    break
                table = pa.Table.from_batches([batch])
                del batch
                names = ["geometry" if n == geom_name else n for n in table.column_names]
                table = table.rename_columns(names)
                table = _linear_geometry(_plain_geometry(table))
                result = op.apply(params, table, crs)
                nbytes = table.nbytes
                if fmt == "GPKG":
                    _write_gpkg(result, tmp, meta, append=writer is not None)
                    writer = True
                else:
                    if writer is None:
                        schema = result.schema.with_metadata(
                            {b"geo": _geo_metadata(crs, meta.get("geometry_type"))}
                        )
                        writer = pq.ParquetWriter(str(tmp), schema, compression="zstd")
                    writer.write_table(result.replace_schema_metadata(writer.schema.metadata))
                del table, result
                rss1 = ctx.guard.check_after(f"batch {index}")
                chunk_done(ctx, started, nbytes, rss0, rss1, None)
                index += 1
            if writer is None:  # no feature matched: an empty part that still has the schema
                empty = _plain_geometry(
                    reader.schema.empty_table().rename_columns(
                        ["geometry" if n == geom_name else n for n in reader.schema.names]
                    )
                )
                empty = (
                    op.apply(params, empty, crs)
                    if crs or not getattr(params, "area", False)
                    else empty
                )
                if fmt == "GPKG":
                    _write_gpkg(empty, tmp, meta, append=False)
                else:
                    schema = empty.schema.with_metadata(
                        {b"geo": _geo_metadata(crs, meta.get("geometry_type"))}
                    )
                    writer = pq.ParquetWriter(str(tmp), schema, compression="zstd")
    except (DataSourceError, DataLayerError, FieldError) as exc:
        raise InputError(f"{f.uri}: {' '.join(str(exc).split())}") from None
    except ValueError as exc:  # ArrowInvalid, unreadable geometry, no CRS for an area
        raise InputError(f"{f.uri}: features {_fid_span(ctx.tile.fids)}: {exc}") from None
    finally:
        if writer is not None and writer is not True:
            writer.close()
    malloc_trim()
    ctx.progress.bytes_written = outputs.commit(tmp, final)


def _fid_span(rng: FeatureRange) -> str:
    return f"FID {rng.start}.." + ("end" if rng.stop is None else str(rng.stop - 1))


def _linear_geometry(table: Any) -> Any:
    """The batch with its curved geometries linearised (the same table when it has none)."""
    if "geometry" not in table.column_names:
        return table
    i = table.column_names.index("geometry")
    col = table.column(i)
    linear = linearize_wkb(col)
    return table if linear is col else table.set_column(i, table.schema.field(i), linear)


def _plain_geometry(table: Any) -> Any:
    """Geometry as plain binary WKB (drop Arrow extension metadata GDAL attaches)."""
    import pyarrow as pa

    if "geometry" not in table.column_names:
        return table
    i = table.column_names.index("geometry")
    col = table.column(i)
    if not pa.types.is_binary(col.type) and not pa.types.is_large_binary(col.type):
        col = col.cast(pa.binary())
    return table.set_column(i, pa.field("geometry", pa.binary()), col)


def _write_gpkg(table: Any, path: Path, meta: dict[str, Any], *, append: bool) -> None:
    from pyogrio.raw import write_arrow

    write_arrow(
        table,
        str(path),
        layer=final_layer_name(path),
        driver="GPKG",
        geometry_name="geometry",
        geometry_type=meta.get("geometry_type") or "Unknown",
        crs=meta.get("crs"),
        append=append,
    )


def final_layer_name(path: Path) -> str:
    name = path.name.split(outputs.TMP_MARK)[0].lstrip(".")
    return name.removesuffix(".gpkg")
