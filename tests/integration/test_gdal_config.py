"""``spec.gdalConfig`` reaches every process that opens the data — the runner's planning, the
fork server and its workers, a worker started on its own — before GDAL loads.

The observable: ``GTIFF_IGNORE_READ_ERRORS`` turns a corrupt tile's decoding error into a
warning (GDAL then returns the block as zeros), so the same damaged file fails one tile
without the option and runs through with it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import test_raster_corrupt as corrupt
from worker_helpers import job_doc, run_cli, run_worker, write_job

pytestmark = pytest.mark.slow


def _damaged(folder: Path) -> Path:
    intact = corrupt._intact(folder)
    offset, size = corrupt._block_spans(intact)[(1, 3)]  # a block of tile r0000c0001
    data = bytearray(intact.read_bytes())
    start = offset + size // 3
    data[start : start + size // 3] = np.random.default_rng(0).bytes(size // 3)
    src = folder / "in.tif"
    src.write_bytes(bytes(data))
    return src


def _job(folder: Path, src: Path, gdal_config: dict[str, str] | None, name: str) -> Path:
    extra = {"gdalConfig": gdal_config} if gdal_config is not None else {}
    return write_job(
        folder / f"{name}.yaml",
        job_doc(
            name,
            {"uri": str(src)},
            corrupt.SCALE,
            {"uri": str(folder / name), "format": "GTiff"},
            tiling={"tileSize": corrupt.TILE},
            **extra,
        ),
    )


@pytest.mark.parametrize("fork_server", [True, False], ids=["forked", "spawned"])
def test_gdal_config_reaches_the_workers(tmp_path: Path, fork_server: bool) -> None:
    src = _damaged(tmp_path)
    flags = [] if fork_server else ["--no-fork-server"]
    plain = run_cli("run", str(_job(tmp_path, src, None, "plain")), *flags)
    assert plain.code != 0 and "1 tile(s) failed" in plain.stderr, plain.stderr[-2000:]
    job = _job(tmp_path, src, {"GTIFF_IGNORE_READ_ERRORS": "YES"}, "lenient")
    run = run_cli("run", str(job), *flags)
    assert run.code == 0, run.stderr[-2000:]
    manifest = json.loads((tmp_path / "lenient" / "manifest.json").read_text())
    assert manifest["outcome"] == "succeeded"
    # and a worker on its own (as in a pod) applies it too
    assert run_worker(job, "r0000c0001").code == 0


def test_gdal_config_cannot_override_what_the_memory_model_owns(tmp_path: Path) -> None:
    src = _damaged(tmp_path)
    job = _job(tmp_path, src, {"GDAL_CACHEMAX": "4096"}, "owned")
    run = run_cli("plan", str(job))
    assert run.code == 2
    assert "spec.gdalConfig" in run.stderr and "spec.resources.gdalCacheMax" in run.stderr
    job = _job(tmp_path, src, {"not an option": "1"}, "badname")
    run = run_cli("plan", str(job))
    assert run.code == 2 and "not a GDAL configuration option name" in run.stderr
