"""The planner: metadata-only reads of the input (:mod:`inputs`), then tiles with a
predicted memory footprint (:mod:`plan`).

``build_plan(job)`` opens each input file for its metadata (rasterio for rasters, pyogrio for
vectors — a vector sample batch of a few hundred features measures bytes per feature), lays
block-aligned tiles or feature ranges, sizes every tile with the memory model and returns a
:class:`Plan` whose digest changes when anything that determines the outputs changes.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from . import memory, storage
from .errors import InputError, SpecError
from .inputs import input_files, raster_file, vector_file
from .plan import (
    MAX_TILES_ENV,
    LaidTiles,
    Plan,
    RasterFile,
    Sizing,
    Tile,
    VectorFile,
    file_tile_count,
    file_tiles,
    laid_tiles,
    max_tiles,
    placeholder_file,
)
from .registry import RasterOperation, VectorOperation, get_operation, output_format
from .spec import GisJob
from .tiles import parse_tile_id

PLANNER_VERSION = 2  # 2: vector tiles from the real FIDs (sparse ids), raster masks


def _fingerprint(uri: str) -> dict[str, Any]:
    try:
        st = os.stat(uri)
    except OSError:
        return {"uri": uri}
    return {"uri": uri, "size": st.st_size, "mtime": st.st_mtime_ns}


def plan_digest(job: GisJob, files: list[str]) -> str:
    """Changes when anything that determines the outputs changes: input, operation, tiling,
    output format — not parallelism or memory sizing, which change how, not what."""
    spec = job.spec
    payload = {
        "planner": PLANNER_VERSION,
        "input": spec.input.model_dump(mode="json", by_alias=True),
        "files": [_fingerprint(f) for f in files],
        "operation": spec.operation.model_dump(mode="json", by_alias=True),
        "format": output_format(job),
        "tiling": spec.tiling.model_dump(mode="json", by_alias=True),
    }
    blob = json.dumps(payload, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def build_plan(job: GisJob, *, file_indexes: list[int] | None = None) -> Plan:
    """Plan the job. ``file_indexes`` limits metadata reads to some files (a worker needs one)."""
    try:
        return _build_plan(job, file_indexes)
    except SpecError as exc:
        msg = str(exc)
        raise SpecError(f"{job.source}: {msg}" if msg.startswith("spec.") else msg) from None


def _build_plan(job: GisJob, file_indexes: list[int] | None) -> Plan:
    op = get_operation(job.spec.operation.name)
    params = op.parse_params(job.spec.operation.params)
    uris = input_files(job)
    res = job.spec.resources
    multi = len(uris) > 1
    sizing = Sizing(
        kind=op.kind,
        baseline_bytes=memory.measured_baseline(op.kind),
        cache_bytes=int(res.gdal_cache_max),
        headroom=res.memory_headroom,
        memory=int(res.memory) if res.memory is not None else None,
        memory_factor=op.memory_factor(params) if isinstance(op, VectorOperation) else 1.0,
        network_bytes=memory.network_bytes(
            op.kind,
            remote_input=any(storage.is_network(u) for u in uris),
            remote_output=not storage.is_local(job.spec.output.uri),
        ),
    )
    files: list[RasterFile | VectorFile] = []
    tiles: list[LaidTiles] = []
    tile_size, per_tile = job.spec.tiling.tile_size, job.spec.tiling.features_per_tile
    limit, count = max_tiles(), 0
    wanted = set(range(len(uris))) if file_indexes is None else set(file_indexes)
    for i, uri in enumerate(uris):
        if i not in wanted:
            files.append(placeholder_file(i, uri, op.kind))
            continue
        f: RasterFile | VectorFile
        if isinstance(op, RasterOperation):
            f = raster_file(i, uri, op, params)
        else:
            f = vector_file(i, uri, job.spec.input.layer, op, params, per_tile)
        files.append(f)
        count += file_tile_count(f, tile_size, per_tile)
        if count > limit:  # counted before laying them: the planner's memory stays bounded
            raise InputError(
                f"{uri}: the plan would have {count:,} tiles or more, above the limit of "
                f"{limit:,} (${MAX_TILES_ENV}); raise spec.tiling.tileSize or "
                "featuresPerTile, or split the input"
            )
        tiles.append(file_tiles(sizing, f, tile_size, per_tile, multi=multi))
    return Plan(
        job=job.name,
        kind=op.kind,
        operation=op.name,
        output_format=output_format(job),
        digest=plan_digest(job, uris),
        sizing=sizing,
        files=tuple(files),
        tiles=laid_tiles(tiles),
    )


def plan_for_tile(job: GisJob, tile_id: str) -> tuple[Plan, Tile]:
    """What a worker needs: the plan of its tile's file only, and the tile."""
    try:
        tid = parse_tile_id(tile_id)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    plan = build_plan(job, file_indexes=[tid.file_index or 0])
    return plan, plan.tile(tile_id)
