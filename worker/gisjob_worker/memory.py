"""The memory model: what a tile will cost, and the largest chunk that fits a budget.

``estimate = import baseline (measured) + GDAL block cache (explicit) + per-chunk working set
× (1 + allocator slack) + fixed slack``; ``request = estimate × (1 + memoryHeadroom)``.

Everything here is pure arithmetic except :func:`measured_baseline`, which measures the
import baseline of a fresh worker interpreter once and caches it per environment.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
import uuid
from dataclasses import dataclass
from fractions import Fraction
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Literal

from .quantity import round_up_mib

MIB = 1024**2
# Allocator slack on the chunk's working set (NumPy temporaries come and go; glibc keeps
# some of what was freed) and a fixed allowance for GDAL driver state, thread stacks that
# are touched, the output writer and the metrics server. Calibrated by
# tests/integration/test_memory_model.py, which fails if the model ever under-predicts.
CHUNK_SLACK = 0.15
FIXED_SLACK = 48 * MIB
# Default working set of one chunk when resources.memory is not given.
DEFAULT_CHUNK_BYTES = 64 * MIB
# Vector batches: GDAL's Arrow stream keeps the next batch while we work on one.
VECTOR_STREAM_BATCHES = 2
# Smaller batches cost no time (measured: 7k-65k rows within noise on 500k polygons) and
# keep a filter+area worker at ~180 MiB instead of ~265 MiB.
MAX_BATCH_ROWS = 8_192
MIN_BATCH_ROWS = 64

# Object storage. Reading: GDAL's /vsicurl/ block cache (gdalenv sets its size; VSI_CACHE is
# off). Writing: pyarrow's S3 client (imported only for an object-store output) and the
# upload's buffers (the 8 MiB copy block, one multipart part in flight).
VSI_CURL_CACHE_BYTES = 16 * MIB
UPLOAD_BYTES = 32 * MIB
# measured: pyarrow.fs with a live S3 client adds 39 MiB to a raster worker (pyarrow itself
# is new there), 10 MiB to a vector worker (which imports pyarrow anyway)
S3_CLIENT_BYTES = {"raster": 44 * MIB, "vector": 14 * MIB}

# Bump when what a worker imports changes, so cached baselines are re-measured.
BASELINE_PROBE_VERSION = 2

Kind = Literal["raster", "vector"]


@dataclass(frozen=True, slots=True)
class ChunkShape:
    """A raster chunk: ``width`` × ``height`` pixels, both block multiples (or tile edges)."""

    width: int
    height: int

    @property
    def pixels(self) -> int:
        return self.width * self.height


def network_bytes(kind: Kind, *, remote_input: bool, remote_output: bool) -> int:
    """What object storage adds to every worker of a job (see the constants above)."""
    total = VSI_CURL_CACHE_BYTES if remote_input else 0
    if remote_output:
        total += S3_CLIENT_BYTES[kind] + UPLOAD_BYTES
    return total


def request_for(estimate: int, headroom: float) -> int:
    """Memory request (= limit) for an estimate: headroom added, rounded up to a MiB."""
    return round_up_mib(math.ceil(Fraction(estimate) * (1 + Fraction(str(headroom)))))


def usable_for(budget: int, headroom: float) -> int:
    """The largest estimate whose request fits ``budget`` (inverse of :func:`request_for`)."""
    return math.floor(Fraction(budget) / (1 + Fraction(str(headroom))))


def raster_estimate(baseline: int, cache: int, chunk_pixels: int, bytes_per_pixel: int) -> int:
    working = chunk_pixels * bytes_per_pixel
    return baseline + cache + math.ceil(working * (1.0 + CHUNK_SLACK)) + FIXED_SLACK


def vector_estimate(
    baseline: int, cache: int, batch_rows: int, bytes_per_feature: float, factor: float
) -> int:
    working = batch_rows * bytes_per_feature * (factor + VECTOR_STREAM_BATCHES - 1)
    return baseline + cache + math.ceil(working * (1.0 + CHUNK_SLACK)) + FIXED_SLACK


def chunk_pixel_budget(
    estimate_budget: int, baseline: int, cache: int, bytes_per_pixel: int
) -> int:
    """Pixels per chunk that keep :func:`raster_estimate` within ``estimate_budget``."""
    avail = estimate_budget - baseline - cache - FIXED_SLACK
    if avail <= 0:
        return 0
    return int(avail / (bytes_per_pixel * (1.0 + CHUNK_SLACK)))


def fit_chunk(
    max_pixels: int, tile_width: int, tile_height: int, block_width: int, block_height: int
) -> ChunkShape | None:
    """The largest block-aligned chunk of at most ``max_pixels`` inside a tile.

    Full-width strips of whole block rows are preferred (sequential reads, one write per
    strip); when even one block row is too much the strip narrows by whole blocks. None
    when a single block does not fit.
    """
    bw = min(block_width, tile_width)
    bh = min(block_height, tile_height)
    if max_pixels < bw * bh:
        return None
    strip = tile_width * bh
    if max_pixels >= strip:
        rows = (max_pixels // strip) * bh
        return ChunkShape(tile_width, min(rows, tile_height))
    cols = (max_pixels // (bh * bw)) * bw
    return ChunkShape(min(cols, tile_width), bh)


def scaled_chunk(
    chunk: ChunkShape,
    scale: float,
    tile_width: int,
    tile_height: int,
    block_width: int,
    block_height: int,
) -> ChunkShape | None:
    """The chunk for ``scale`` × its pixels (shrinkChunks), still block-aligned."""
    if scale >= 1.0:
        return chunk
    return fit_chunk(int(chunk.pixels * scale), tile_width, tile_height, block_width, block_height)


def batch_rows_for(
    estimate_budget: int, baseline: int, cache: int, bytes_per_feature: float, factor: float
) -> int:
    """Rows per Arrow batch that keep :func:`vector_estimate` within ``estimate_budget``."""
    avail = estimate_budget - baseline - cache - FIXED_SLACK
    per_row = bytes_per_feature * (factor + VECTOR_STREAM_BATCHES - 1) * (1.0 + CHUNK_SLACK)
    if avail <= 0 or per_row <= 0:
        return 0
    return min(MAX_BATCH_ROWS, int(avail / per_row))


# --------------------------------------------------------------------- measured baseline

_PROBE = r"""
import json, os, sys
kind = sys.argv[1]
from gisjob_worker import gdalenv
gdalenv.configure(int(sys.argv[2]), 1)
from gisjob_worker import worker  # what a worker imports before its first chunk
if kind == "raster":
    worker.import_raster_stack()
else:
    worker.import_vector_stack()
import psutil
print(json.dumps({"rss": psutil.Process().memory_info().rss}))
"""


def _env_key() -> str:
    parts = [sys.executable, sys.version, f"probe={BASELINE_PROBE_VERSION}"]
    for dist in ("gisjob", "rasterio", "pyogrio", "numpy", "pyarrow", "shapely", "pyproj"):
        try:
            parts.append(f"{dist}={version(dist)}")
        except PackageNotFoundError:
            parts.append(f"{dist}=?")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _cache_dir() -> Path:
    root = os.environ.get("GISJOB_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "gisjob"
    )
    return Path(root)


def measured_baseline(kind: Kind) -> int:
    """Resident bytes of a fresh worker interpreter after its imports (measured, cached).

    The probe runs in a subprocess so nothing this process has imported counts. The value
    is cached per interpreter and library versions; ``GISJOB_BASELINE_<KIND>`` overrides it.
    """
    override = os.environ.get(f"GISJOB_BASELINE_{kind.upper()}")
    if override:
        return int(override)
    path = _cache_dir() / f"baseline-{_env_key()}.json"
    try:
        cached = json.loads(path.read_text())
        if kind in cached:
            return int(cached[kind])
    except (OSError, ValueError):
        cached = {}
    samples = []
    for _ in range(2):
        proc = subprocess.run(
            [sys.executable, "-c", _PROBE, kind, str(64 * MIB)],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )
        if proc.returncode != 0:
            raise RuntimeError(f"baseline probe failed: {proc.stderr.strip()[-500:]}")
        samples.append(int(json.loads(proc.stdout.strip().splitlines()[-1])["rss"]))
    value = max(samples)
    cached[kind] = value
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{uuid.uuid4().hex}.tmp")  # unique: pid 1 in every pod
        tmp.write_text(json.dumps(cached))
        os.replace(tmp, path)
    except OSError:
        pass
    return value
