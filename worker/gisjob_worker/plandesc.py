"""The compact plan descriptor (pure): how a plan travels from the planner pod to the operator.

A plan of 100,000 tiles is mostly repetition: every tile of a file follows from the file's
grid (raster: size, block shape, bytes per pixel; vector: feature ranges) and the sizing. The
descriptor keeps only the files, the sizing, the tiling and the digest; :func:`from_descriptor`
lays the same tiles again with the same pure functions the planner used, so the operator
(which reads no dataset and loads no GDAL) derives exactly the planner's tiles, sub-tiles and
memory requests. The wire form is JSON, zlib-compressed and base64-encoded, with a SHA-256
so a truncated channel is detected instead of trusted.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import json
import zlib
from typing import Any

from .errors import GisJobError
from .plan import (
    LaidTiles,
    Plan,
    RasterFile,
    RasterOutput,
    Sizing,
    VectorFile,
    file_tiles,
    laid_tiles,
)

DESCRIPTOR_VERSION = 1
LOG_MARKER = "gisjob-plan-descriptor:"


class DescriptorError(GisJobError):
    """A descriptor that is missing, truncated, of another version or inconsistent."""


def _fields(obj: Any) -> dict[str, Any]:
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}


def _file_json(f: RasterFile | VectorFile) -> dict[str, Any]:
    d = _fields(f)
    if isinstance(f, RasterFile):
        d["output"] = _fields(f.output)
        return {"kind": "raster", **d}
    return {"kind": "vector", **d}


def _build(cls: type[Any], d: dict[str, Any]) -> Any:
    """A frozen dataclass from its fields; lists become tuples where the field is a tuple."""
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name not in d:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise DescriptorError(f"plan descriptor: {cls.__name__}.{f.name} is missing")
            continue
        value = d[f.name]
        if isinstance(value, list) and "tuple" in str(f.type):
            value = tuple(value)
        kwargs[f.name] = value
    return cls(**kwargs)


def _file_from(d: dict[str, Any]) -> RasterFile | VectorFile:
    d = dict(d)
    kind = d.pop("kind", None)
    if kind == "raster":
        d["output"] = _build(RasterOutput, d["output"])
        built: RasterFile | VectorFile = _build(RasterFile, d)
        return built
    if kind == "vector":
        built = _build(VectorFile, d)
        return built
    raise DescriptorError(f"plan descriptor: unknown file kind {kind!r}")


def descriptor(plan: Plan, tile_size: int, features_per_tile: int) -> dict[str, Any]:
    """The plan without its tiles (they follow from files, sizing and tiling)."""
    return {
        "v": DESCRIPTOR_VERSION,
        "job": plan.job,
        "kind": plan.kind,
        "operation": plan.operation,
        "outputFormat": plan.output_format,
        "digest": plan.digest,
        "sizing": _fields(plan.sizing),
        "tiling": {"tileSize": tile_size, "featuresPerTile": features_per_tile},
        "multiFile": len(plan.files) > 1,
        "files": [_file_json(f) for f in plan.files],
        "tiles": len(plan.tiles),
    }


def from_descriptor(d: dict[str, Any], max_tiles: int | None = None) -> Plan:
    """The plan again, tiles laid by the planner's own pure functions; checked against the
    tile count the planner reported. ``max_tiles``: refuse (before laying a single tile) a
    plan larger than that — the operator's memory must not grow with a hostile input."""
    declared = d.get("tiles") if isinstance(d, dict) else None
    if max_tiles is not None and isinstance(declared, int) and declared > max_tiles:
        raise DescriptorError(
            f"the plan has {declared:,} tiles, above the operator's limit of {max_tiles:,}"
        )
    if not isinstance(d, dict) or d.get("v") != DESCRIPTOR_VERSION:
        got = d.get("v") if isinstance(d, dict) else type(d).__name__
        raise DescriptorError(
            f"plan descriptor version {got!r} is not {DESCRIPTOR_VERSION} (planner and "
            "operator images differ?)"
        )
    try:
        sizing: Sizing = _build(Sizing, d["sizing"])
        files = tuple(_file_from(f) for f in d["files"])
        tiling = d["tiling"]
        tiles: list[LaidTiles] = []
        for f in files:
            tiles.append(
                file_tiles(
                    sizing,
                    f,
                    int(tiling["tileSize"]),
                    int(tiling["featuresPerTile"]),
                    multi=bool(d["multiFile"]),
                )
            )
        plan = Plan(
            job=d["job"],
            kind=d["kind"],
            operation=d["operation"],
            output_format=d["outputFormat"],
            digest=d["digest"],
            sizing=sizing,
            files=files,
            tiles=laid_tiles(tiles),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise DescriptorError(f"plan descriptor is malformed: {exc!r}") from None
    if len(plan.tiles) != int(d.get("tiles", -1)):
        raise DescriptorError(
            f"plan descriptor lays {len(plan.tiles)} tiles but the planner counted "
            f"{d.get('tiles')} (planner and operator versions differ?)"
        )
    return plan


def encode(d: dict[str, Any]) -> tuple[str, str]:
    """(wire text, sha256 of it): compact JSON → zlib → base64."""
    raw = json.dumps(d, separators=(",", ":"), sort_keys=True).encode()
    text = base64.b64encode(zlib.compress(raw, 9)).decode("ascii")
    return text, hashlib.sha256(text.encode("ascii")).hexdigest()


def decode(text: str, sha256: str | None = None) -> dict[str, Any]:
    text = text.strip()
    if sha256 is not None and hashlib.sha256(text.encode("ascii")).hexdigest() != sha256:
        raise DescriptorError("plan descriptor checksum mismatch (truncated or altered)")
    try:
        data = json.loads(zlib.decompress(base64.b64decode(text, validate=True)))
    except (binascii.Error, zlib.error, ValueError) as exc:
        raise DescriptorError(f"plan descriptor cannot be decoded: {exc}") from None
    if not isinstance(data, dict):
        raise DescriptorError("plan descriptor is not an object")
    return data


def find_in_log(log: str) -> str | None:
    """The descriptor text from a planner pod's log (the last marked line)."""
    found = None
    for line in log.splitlines():
        at = line.find(LOG_MARKER)
        if at >= 0:
            found = line[at + len(LOG_MARKER) :].strip()
    return found
