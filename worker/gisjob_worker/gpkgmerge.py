"""Merge the per-tile GeoPackages of a ``format: GPKG`` job into one (a finalize step).

A GPKG job's workers write one GeoPackage per tile under ``parts/`` (a tile's layer is named
after the tile). :func:`merge_gpkg_parts` appends them, in the order given, into one layer of
``<out>/<job>.gpkg``: streamed Arrow batch by batch (``pyogrio.raw.open_arrow`` →
``write_arrow(append=True)``), so its memory is one batch whatever the size of the job, and
written under a temporary name renamed into place, so a killed merge leaves no partial file
under the final name and a re-run replaces it atomically.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import outputs
from .errors import InputError

MERGE_BATCH_ROWS = 8_192  # features per batch: one batch is all the merge holds


def merge_gpkg_parts(
    out_dir: str | Path,
    parts: list[str],
    *,
    job: str | None = None,
    batch_rows: int = MERGE_BATCH_ROWS,
) -> str:
    """Append ``parts`` (GeoPackage paths, relative to ``out_dir`` or absolute) into the layer
    ``job`` of ``<out_dir>/<job>.gpkg`` and return that path. ``job`` defaults to the name of
    ``out_dir``. Every part must have the same columns (parts of one job do). FIDs are
    renumbered from 1 in part order."""
    import pyarrow as pa
    from pyogrio import raw
    from pyogrio.errors import DataLayerError, DataSourceError

    if not parts:
        raise ValueError("no GeoPackage parts to merge")
    out = Path(out_dir)
    name = job or out.resolve().name
    final = out / f"{name}.gpkg"
    tmp = outputs.temp_path(final)
    outputs.remove_quietly(tmp)
    created = False
    empty: tuple[dict[str, Any], Any] | None = None  # a part's metadata and empty table
    try:
        for part in parts:
            path = Path(part) if Path(part).is_absolute() else out / part
            try:
                with raw.open_arrow(str(path), batch_size=batch_rows, use_pyarrow=True) as (
                    meta,
                    reader,
                ):
                    empty = (meta, reader.schema.empty_table())
                    for batch in reader:
                        table = pa.Table.from_batches([batch])
                        _append(tmp, name, meta, table, append=created)
                        created = True
            except (DataSourceError, DataLayerError) as exc:
                raise InputError(f"{path}: not a GeoPackage part GDAL can read ({exc})") from None
        if not created and empty is not None:  # every part was empty: still make the layer
            _append(tmp, name, empty[0], empty[1], append=False)
        outputs.commit(tmp, final)
    finally:
        outputs.remove_quietly(tmp)
    return str(final)


def _append(tmp: Path, layer: str, meta: dict[str, Any], data: Any, *, append: bool) -> None:
    from pyogrio.raw import write_arrow

    write_arrow(
        data,
        str(tmp),
        layer=layer,
        driver="GPKG",
        geometry_name=meta.get("geometry_name") or "geometry",
        geometry_type=meta.get("geometry_type") or "Unknown",
        crs=meta.get("crs"),
        append=append,
    )
