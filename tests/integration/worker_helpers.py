"""Helpers for integration tests: real files, real worker subprocesses."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

BIN = Path(sys.executable).parent
GISJOB = str(BIN / "gisjob")


def make_raster(
    path: Path,
    width: int,
    height: int,
    count: int = 2,
    block: int = 256,
    dtype: str = "uint16",
    nodata: float | None = 0,
    seed: int = 1,
) -> Path:
    """A tiled, deflate GeoTIFF written strip by strip, with some nodata pixels."""
    import rasterio
    from rasterio.transform import from_origin

    rng = np.random.default_rng(seed)
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": count,
        "dtype": dtype,
        "crs": "EPSG:32632",
        "transform": from_origin(500_000, 5_000_000, 10, 10),
        "tiled": True,
        "blockxsize": block,
        "blockysize": block,
        "compress": "deflate",
    }
    if nodata is not None:
        profile["nodata"] = nodata
    with rasterio.open(path, "w", **profile) as dst:
        for r0 in range(0, height, block):
            h = min(block, height - r0)
            data = rng.integers(1, 10_000, size=(count, h, width)).astype(dtype)
            if nodata is not None:
                data[:, :, :3] = nodata  # a nodata stripe on the left edge
                data[0, :, 5] = nodata  # nodata in one band only
            dst.write(data, window=((r0, r0 + h), (0, width)))
    return path


def job_doc(
    name: str,
    input_: dict[str, Any],
    operation: dict[str, Any],
    output: dict[str, Any],
    **spec: Any,
) -> dict[str, Any]:
    return {
        "apiVersion": "gisjob.dev/v1alpha1",
        "kind": "GisJob",
        "metadata": {"name": name},
        "spec": {"input": input_, "operation": operation, "output": output, **spec},
    }


def write_job(path: Path, doc: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@dataclass
class WorkerRun:
    code: int
    record: dict[str, Any] | None
    stdout: str
    stderr: str


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> WorkerRun:
    proc = subprocess.run(
        [GISJOB, *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    record = None
    for line in reversed(proc.stdout.strip().splitlines()):
        if line.startswith("{") and '"tile"' in line:
            record = json.loads(line)
            break
    return WorkerRun(proc.returncode, record, proc.stdout, proc.stderr)


def run_worker(job: Path, tile: str, *extra: str, **kw: Any) -> WorkerRun:
    return run_cli("worker", "--job", str(job), "--tile", tile, *extra, **kw)


def budget_mib(kind: str, cache_mib: int, working_mib: float, headroom: float = 0.2) -> str:
    """A memory quantity leaving ``working_mib`` for chunks on this machine's real baseline."""
    from gisjob_worker import memory

    baseline = memory.measured_baseline(kind)  # type: ignore[arg-type]
    estimate = baseline + cache_mib * 2**20 + memory.FIXED_SLACK + working_mib * 2**20
    return f"{int(estimate * (1 + headroom) / 2**20) + 1}Mi"


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ndvi_job(
    folder: Path,
    name: str,
    out: Path,
    *,
    width: int = 2048,
    tile: int = 1024,
    fmt: str = "GTiff",
    resources: dict[str, Any] | None = None,
) -> Path:
    """``folder/NAME.yaml``: ndvi (bands 4 and 3) over ``folder/in.tif``, a ``width``² 4-band
    raster written on first use, cut in ``tile`` tiles, output to ``out``."""
    src = folder / "in.tif"
    if not src.exists():
        make_raster(src, width, width, count=4, block=256)
    return write_job(
        folder / f"{name}.yaml",
        job_doc(
            name,
            {"uri": str(src)},
            {"name": "ndvi", "params": {"nir": 4, "red": 3}},
            {"uri": str(out), "format": fmt},
            tiling={"tileSize": tile},
            resources=resources or {},
        ),
    )
