"""Finalize a job's output folder from the ledger: ``manifest.json``, the mosaic VRT(s)
(rasters) or the GeoParquet dataset folder (vectors), and removal of superseded outputs.

Shared by the local executor (in-process) and the finalizer pod (``gisjob finalize``).
What the job owns: the files its ledger records say a gisjob worker wrote (tiles in
``tiles/``, parts in ``parts/``), ``manifest.json``, the mosaic VRTs and ``.gisjob/``. An
output is deleted only when the ledger marks it superseded — recorded as written in this
output folder, not a succeeded output of the final manifest, and still the very file the
record describes. Files nobody recorded (a user's own files in ``tiles/`` or ``parts/``,
outputs written by versions before the ledger) are never touched; stale temporaries are
removed only when their names match the writers' unique-temporary pattern. Everything is
written atomically.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from . import ledger, outputs, policy
from .ledger import LedgerError, LedgerRecord, LedgerView, TileEntry
from .ledgerstore import LedgerStore, list_all
from .location import TMP_DIR, LocalLocation, Location
from .plan import Plan, RasterFile, Tile
from .spec import GisJob

__all__ = ["MANIFEST", "LedgerError", "TileEntry", "finalize_job", "finalize_outputs"]

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
SHOWN_TILES = 10  # tile ids named in a one-line error
GDAL_TYPES = {
    "uint8": "Byte",
    "int8": "Int8",
    "uint16": "UInt16",
    "int16": "Int16",
    "uint32": "UInt32",
    "int32": "Int32",
    "float32": "Float32",
    "float64": "Float64",
}


def write_json(loc: Location, key: str, data: dict[str, Any]) -> None:
    loc.write_bytes(key, json.dumps(data, indent=1, sort_keys=False).encode())


# ----------------------------------------------------------------------------- mosaic VRT


def mosaic_vrt(
    plan: Plan,
    f: RasterFile,
    crs_wkt: str,
    transform: tuple[float, ...],
    tiles: list[tuple[Tile, str]],
) -> str:
    """VRT XML placing each tile output (relative path) at its window on the input's grid."""
    out = f.output
    gdal_type = GDAL_TYPES[out.dtype]
    lines = [
        f'<VRTDataset rasterXSize="{f.width}" rasterYSize="{f.height}">',
        f"  <SRS>{escape(crs_wkt)}</SRS>",
        "  <GeoTransform>" + ", ".join(repr(float(v)) for v in transform) + "</GeoTransform>",
    ]
    for band in range(1, out.count + 1):
        lines.append(f'  <VRTRasterBand dataType="{gdal_type}" band="{band}">')
        lines.append(f"    <NoDataValue>{out.nodata!r}</NoDataValue>")
        for tile, rel in tiles:
            w = tile.window
            assert w is not None
            lines += [
                "    <ComplexSource>",
                f'      <SourceFilename relativeToVRT="1">{escape(rel)}</SourceFilename>',
                f"      <SourceBand>{band}</SourceBand>",
                f'      <SrcRect xOff="0" yOff="0" xSize="{w.width}" ySize="{w.height}"/>',
                f'      <DstRect xOff="{w.col_off}" yOff="{w.row_off}" xSize="{w.width}" '
                f'ySize="{w.height}"/>',
                f"      <NODATA>{out.nodata!r}</NODATA>",
                "    </ComplexSource>",
            ]
        lines.append("  </VRTRasterBand>")
    lines.append("</VRTDataset>")
    return "\n".join(lines) + "\n"


def write_mosaics(plan: Plan, loc: Location, succeeded: dict[str, tuple[Tile, str]]) -> list[str]:
    """One mosaic VRT per input file (``mosaic.vrt``; ``mosaic-i0002.vrt`` for many files)."""
    from .inputs import open_raster_source

    written: list[str] = []
    multi = len(plan.files) > 1
    for f in plan.files:
        if not isinstance(f, RasterFile):
            continue
        tiles = [(t, rel) for t, rel in succeeded.values() if t.file_index == f.index]
        tiles.sort(key=lambda x: x[0].id)
        with open_raster_source(f.uri) as ds:
            crs_wkt = ds.crs.to_wkt() if ds.crs else ""
            transform = ds.transform.to_gdal()
        name = f"mosaic-i{f.index:04d}.vrt" if multi else "mosaic.vrt"
        loc.write_bytes(name, mosaic_vrt(plan, f, crs_wkt, transform, tiles).encode())
        written.append(name)
    return written


def remove_superseded(
    loc: Location,
    store: LedgerStore,
    records: Iterable[LedgerRecord],
    entries: Iterable[TileEntry],
) -> list[str]:
    """Delete the outputs the ledger marks superseded (see the module docstring); returns
    their relative paths."""
    removed: list[str] = []
    for rel, claims in ledger.superseded_outputs(records, entries).items():
        if not any(store.output_ok(r) for r in claims):
            continue  # gone already, or rewritten by someone the ledger does not know
        loc.delete(rel)
        removed.append(rel)
    return removed


def remove_stale_temporaries(loc: Location) -> list[str]:
    """Temporaries of killed writers: in ``tiles/`` and ``parts/`` (our pattern only) of a
    folder, under ``.gisjob/tmp/`` of an object-store prefix (uploads never copied into
    place)."""
    removed: list[str] = []
    if not isinstance(loc, LocalLocation):
        for key in loc.list(TMP_DIR):
            loc.delete(key)
            removed.append(key)
        return removed
    out_dir = loc.root
    for sub in (outputs.TILES_DIR, outputs.PARTS_DIR):
        for stale in outputs.stale_temporaries(out_dir / sub):
            outputs.remove_quietly(stale)
            removed.append(f"{sub}/{stale.name}")
    return removed


def finalize_outputs(
    job_name: str,
    plan: Plan,
    loc: Location,
    entries: list[tuple[Tile, TileEntry]],
    store: LedgerStore,
    records: Iterable[LedgerRecord],
    *,
    interrupted: bool = False,
) -> dict[str, Any]:
    """Write the mosaic(s) or name the dataset, write ``manifest.json``, then delete the
    outputs the ledger marks superseded (``records``: every record of the output folder)."""
    succeeded = {
        tile.id: (tile, entry.output)
        for tile, entry in entries
        if entry.outcome == "succeeded" and entry.output
    }
    failed = sorted(e.id for _, e in entries if e.outcome == "failed")
    pending = sorted(e.id for _, e in entries if e.outcome == "pending")
    complete = not failed and not pending and not interrupted
    extra: dict[str, Any] = {}
    if plan.kind == "raster":
        extra["mosaics"] = write_mosaics(plan, loc, succeeded)
    else:
        extra["dataset"] = outputs.PARTS_DIR
        if plan.output_format == "GPKG" and complete and succeeded:
            from .gpkgmerge import merge_gpkg_parts

            ordered = sorted(succeeded.values(), key=lambda tr: tr[0].id)
            parts = [loc.gdal_path(rel) for _, rel in ordered]
            name = f"{job_name}.gpkg"
            merged = merge_gpkg_parts(loc.scratch(name).parent, parts, job=job_name)
            loc.publish(Path(merged), name)
            extra["geopackage"] = name
    manifest = {
        "apiVersion": "gisjob.dev/v1alpha1",
        "kind": "GisJobManifest",
        "version": MANIFEST_VERSION,
        "job": job_name,
        "digest": plan.digest,
        "operation": plan.operation,
        "outputFormat": plan.output_format,
        "outcome": "succeeded" if complete else ("interrupted" if interrupted else "failed"),
        "tiles": [e.to_json() for _, e in entries],
        "failedTiles": failed,
        "pendingTiles": pending,
        **extra,
    }
    write_json(loc, MANIFEST, manifest)
    remove_superseded(loc, store, records, (e for _, e in entries))
    remove_stale_temporaries(loc)
    return manifest


def _named(ids: list[str]) -> str:
    shown = ", ".join(ids[:SHOWN_TILES])
    return shown + (f" (and {len(ids) - SHOWN_TILES} more)" if len(ids) > SHOWN_TILES else "")


def cross_check(plan: Plan, view: LedgerView, completed: set[int], failed: set[int]) -> None:
    """Every tile the operator counts as completed has a succeeded record whose output is
    the recorded file (for a split tile: every leaf); else :class:`LedgerError`."""
    n = len(plan.tiles)
    outside = sorted(i for i in completed | failed if i < 0 or i >= n)
    if outside:
        raise LedgerError(
            f"the operator's view names tile index {outside[0]} but plan {plan.digest} has "
            f"{n} tiles: it is a view of another plan"
        )
    missing = [
        plan.tiles[i].id
        for i in sorted(completed)
        if not view.subtree_complete(plan, plan.tiles[i])
    ]
    if missing:
        raise LedgerError(
            f"{len(missing)} tile(s) the operator counts as completed have no succeeded "
            f"record with their output in the ledger of plan {plan.digest}: {_named(missing)}"
        )


def finalize_job(
    job: GisJob,
    plan: Plan,
    loc: Location,
    store: LedgerStore,
    operator_view: tuple[set[int], set[int]] | None = None,
) -> dict[str, Any]:
    """Finalize from the ledger alone (the finalizer pod, ``gisjob finalize``).

    ``operator_view``: (completed, failed) planned tile indexes as the operator's status
    says. Any completed tile without a complete record raises :class:`LedgerError` before
    anything is written or deleted. Without a view, tile states come from replaying the
    policy over the recorded attempts.
    """
    records = list_all(store)
    view = LedgerView.of(plan.digest, records, store.output_ok)
    if operator_view is not None:
        completed, failed = operator_view
        cross_check(plan, view, completed, failed)
        resolve = ledger.operator_resolver(completed, failed)
    else:
        config = policy.PolicyConfig.from_spec(job.spec)
        resolve = ledger.policy_resolver(plan, view, config)
    entries = ledger.manifest_entries(plan, view, resolve)
    return finalize_outputs(job.name, plan, loc, entries, store, records)
