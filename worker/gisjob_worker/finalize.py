"""Finalize a job's output folder: manifest.json, a mosaic VRT (rasters), the GeoParquet
dataset folder (vectors), and removal of tile files the manifest does not list.

Shared by the local executor and the operator. Everything is written atomically.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from . import outputs
from .plan import Plan, RasterFile, Tile

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
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


@dataclass
class TileEntry:
    """What the manifest says of one tile (planned or a sub-tile of a split)."""

    id: str
    outcome: str  # succeeded | failed | split | pending
    parent: str | None = None
    output: str | None = None  # relative to the output folder
    bytes: int | None = None
    mtime_ns: int | None = None
    peak_rss_bytes: int | None = None
    memory_request_bytes: int | None = None
    estimated_peak_bytes: int | None = None
    error: str | None = None
    attempts: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        d = {
            "id": self.id,
            "outcome": self.outcome,
            "parent": self.parent,
            "output": self.output,
            "bytes": self.bytes,
            "mtimeNs": self.mtime_ns,
            "peakRssBytes": self.peak_rss_bytes,
            "memoryRequestBytes": self.memory_request_bytes,
            "estimatedPeakBytes": self.estimated_peak_bytes,
            "error": self.error,
            "attempts": self.attempts,
        }
        return {k: v for k, v in d.items() if v is not None}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TileEntry:
        return cls(
            id=d["id"],
            outcome=d["outcome"],
            parent=d.get("parent"),
            output=d.get("output"),
            bytes=d.get("bytes"),
            mtime_ns=d.get("mtimeNs"),
            peak_rss_bytes=d.get("peakRssBytes"),
            memory_request_bytes=d.get("memoryRequestBytes"),
            estimated_peak_bytes=d.get("estimatedPeakBytes"),
            error=d.get("error"),
            attempts=list(d.get("attempts", [])),
        )


def output_is_complete(out_dir: Path, entry: TileEntry) -> bool:
    """The file the entry names exists with the size and mtime it had when it was recorded."""
    if entry.outcome != "succeeded" or not entry.output:
        return False
    try:
        st = (out_dir / entry.output).stat()
    except OSError:
        return False
    return st.st_size == entry.bytes and st.st_mtime_ns == entry.mtime_ns


def stat_output(out_dir: Path, path: str) -> tuple[str, int, int]:
    p = Path(path)
    st = p.stat()
    try:
        rel = str(p.resolve().relative_to(out_dir.resolve()))
    except ValueError:
        rel = str(p)
    return rel, st.st_size, st.st_mtime_ns


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}{outputs.TMP_MARK}{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=False))
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def read_manifest(out_dir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((out_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


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


def write_mosaics(plan: Plan, out_dir: Path, succeeded: dict[str, tuple[Tile, str]]) -> list[str]:
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
        target = out_dir / name
        tmp = target.with_name(f".{name}{outputs.TMP_MARK}{os.getpid()}")
        tmp.write_text(mosaic_vrt(plan, f, crs_wkt, transform, tiles))
        os.replace(tmp, target)
        written.append(name)
    return written


def remove_unlisted_outputs(out_dir: Path, keep: set[str]) -> list[str]:
    """Delete tile files and stale temporaries in tiles/ and parts/ that are not in ``keep``
    (relative paths): left by an earlier plan, a split, or a killed worker."""
    removed: list[str] = []
    for sub in (outputs.TILES_DIR, outputs.PARTS_DIR):
        folder = out_dir / sub
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            rel = f"{sub}/{p.name}"
            if p.is_file() and rel not in keep:
                p.unlink()
                removed.append(rel)
    return removed


def finalize_outputs(
    job_name: str,
    plan: Plan,
    out_dir: Path,
    entries: list[tuple[Tile, TileEntry]],
    *,
    interrupted: bool = False,
) -> dict[str, Any]:
    """Remove unlisted tile files, write the mosaic(s) or name the dataset, and write
    ``manifest.json``. Shared by the local executor and the operator."""
    succeeded = {
        tile.id: (tile, entry.output)
        for tile, entry in entries
        if entry.outcome == "succeeded" and entry.output
    }
    remove_unlisted_outputs(out_dir, {rel for _, rel in succeeded.values()})
    failed = sorted(e.id for _, e in entries if e.outcome == "failed")
    pending = sorted(e.id for _, e in entries if e.outcome == "pending")
    complete = not failed and not pending and not interrupted
    extra: dict[str, Any] = {}
    if plan.kind == "raster":
        extra["mosaics"] = write_mosaics(plan, out_dir, succeeded)
    else:
        extra["dataset"] = outputs.PARTS_DIR
    manifest = {
        "apiVersion": "gisjob.dev/v1alpha1",
        "kind": "GisJobManifest",
        "version": MANIFEST_VERSION,
        "job": job_name,
        "digest": plan.digest,
        "operation": plan.operation,
        "outputFormat": plan.output_format,
        "outcome": "succeeded" if complete else ("interrupted" if interrupted else "failed"),
        "tiles": [e.to_json() for _, e in sorted(entries, key=lambda te: te[1].id)],
        "failedTiles": failed,
        "pendingTiles": pending,
        **extra,
    }
    write_json_atomic(out_dir / MANIFEST, manifest)
    return manifest
