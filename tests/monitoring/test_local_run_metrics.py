"""End to end: a real Prometheus scrapes the real workers of a real ``gisjob run``, and every
worker panel of the dashboard returns data from it; the alert rules load and evaluate.

Tiles are made slow enough to be scraped (every 0.5 s): two 4096-pixel tiles, one per
worker slot, with a memory budget that forces 512x512 chunks (64 per tile), COG output.
The operator's panels are checked the same way against a real operator in
tests/cluster/test_monitoring_operator.py.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from promutil import (
    RULES,
    Prometheus,
    PrometheusError,
    finite,
    free_port_range,
    load_dashboard,
    samples,
    substitute,
    targets,
)

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
JOB = "mon-ndvi"
MIB = 1024**2
WORKERS = 2
# range queries step at half the scrape interval: a sample scraped between two steps and
# followed by a stale marker (the worker exited) is still seen by the next step
STEP = 0.25
TILE = 4096  # 2 tiles of 64 chunks (512x512, forced by the budget): ~4 s per worker


def _budget() -> str:
    """A budget that forces one-block (512x512) chunks on this machine's real baseline:
    room for one block's working set (27 B/pixel x 1.15) and not for two."""
    from gisjob_worker import memory

    baseline = memory.measured_baseline("raster")
    working = int(512 * 512 * 27 * 1.15 * 1.5)
    estimate = baseline + 8 * 2**20 + memory.FIXED_SLACK + working
    return str(int(estimate * 1.2) // MIB * MIB)


MEMORY = int(_budget())


def _raster(path: Path, width: int = 4096, height: int = 8192) -> None:
    """4-band uint16, tiled 512, zstd; a gradient field (1-2 s to write; content is irrelevant)."""
    import rasterio
    from rasterio.transform import Affine

    profile = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": 4,
        "dtype": "uint16",
        "nodata": 0,
        "crs": "EPSG:32632",
        "transform": Affine(10.0, 0.0, 600_000.0, 0.0, -10.0, 5_000_000.0),
        "tiled": True,
        "blockxsize": 512,
        "blockysize": 512,
        "compress": "zstd",
        "zstd_level": 1,
    }
    cols = np.arange(width, dtype=np.uint32)
    with rasterio.open(path, "w", **profile) as dst:
        for row0 in range(0, height, 512):
            rows = np.arange(row0, row0 + 512, dtype=np.uint32)[:, None]
            base = ((rows * 7 + cols[None, :] * 3) % 4000 + 1).astype(np.uint16)
            strip = np.stack([base, base // 2 + 1, base // 3 + 1, base + 500])
            dst.write(strip, window=((row0, row0 + 512), (0, width)))


def _job(folder: Path) -> Path:
    doc = {
        "apiVersion": "gisjob.dev/v1alpha1",
        "kind": "GisJob",
        "metadata": {"name": JOB},
        "spec": {
            "input": {"uri": "in.tif"},
            "operation": {"name": "ndvi", "params": {"nir": 4, "red": 3}},
            "output": {"uri": "out", "format": "COG"},
            "tiling": {"tileSize": TILE},
            "resources": {"memory": str(MEMORY), "gdalCacheMax": "8Mi", "memoryHeadroom": 0.2},
            "parallelism": WORKERS,
        },
    }
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


class _Run:
    """``gisjob run`` in a thread-watched subprocess, bounded in time."""

    def __init__(self, cmd: list[str], cwd: Path, timeout: float) -> None:
        self.proc = subprocess.Popen(
            cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.out = ""
        self.err = ""
        self._t = threading.Thread(target=self._collect, args=(timeout,), daemon=True)
        self._t.start()

    def _collect(self, timeout: float) -> None:
        try:
            self.out, self.err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.out, self.err = self.proc.communicate()

    def running(self) -> bool:
        return self._t.is_alive()

    def wait(self, timeout: float) -> int:
        self._t.join(timeout)
        if self._t.is_alive():
            self.proc.kill()
            self._t.join(10)
        return int(self.proc.returncode if self.proc.returncode is not None else -9)


def test_every_worker_panel_has_data_from_real_workers(
    prometheus_binaries: tuple[Path, Path], tmp_path: Path
) -> None:
    t_begin = time.monotonic()
    prometheus_bin, _ = prometheus_binaries
    base = free_port_range(WORKERS)
    scrape = [
        {
            "job_name": "gisjob-worker",
            # a worker serves for 2-3 s (less on a loaded machine): 1 s scrapes can miss the
            # 2 samples per series a rate() needs
            "scrape_interval": "500ms",
            "scrape_timeout": "450ms",
            "static_configs": [
                {"targets": [f"127.0.0.1:{base + k}" for k in range(WORKERS)]},
            ],
        }
    ]
    with Prometheus(
        prometheus_bin, tmp_path / "prometheus", scrape, rule_files=[RULES], max_lifetime=180
    ).start() as prom:
        data = tmp_path / "data"  # written while Prometheus sets up its scrape loops
        data.mkdir()
        _raster(data / "in.tif")
        job_file = _job(data)
        prom.wait_scraping("gisjob-worker", WORKERS)
        start = time.time()
        run = _Run(
            [
                str(BIN / "gisjob"),
                "run",
                str(job_file),
                "--metrics-port-base",
                str(base),
                "--workers",
                str(WORKERS),
                # a tile takes ~1 s on a quiet machine: each worker waits for its final scrape
                "--metrics-linger",
                "3",
            ],
            cwd=data,
            timeout=120,
        )
        try:
            # both worker slots are scraped while the run is going on
            seen = prom.wait_up("gisjob-worker", WORKERS, timeout=60, until=run.running)
        except PrometheusError as exc:
            run.wait(120)
            raise AssertionError(f"{exc}\ngisjob run stderr:\n{run.err[-3000:]}") from None
        finally:
            code = run.wait(120)
        assert seen == {f"http://127.0.0.1:{base + k}/metrics" for k in range(WORKERS)}
        assert code == 0, run.err[-3000:]
        time.sleep(1.5)  # the last scrape and rule evaluation
        end = time.time()

        launches = [
            json.loads(line)
            for line in run.err.splitlines()
            if line.startswith("{") and '"event": "launch"' in line
        ]
        assert len(launches) == 2, run.err[-2000:]
        cgroups = all(e.get("cgroup") for e in launches)

        # ---------------------------------------------------------- every worker panel target
        dashboard = load_dashboard()
        variables = {"namespace": ".*", "gisjob": ".*"}
        checked = []
        for t in targets(dashboard):
            expr = substitute(t.expr, variables)
            body = prom.query_range(expr, start, end, STEP)
            assert body.get("status") == "success", f"{t}: {expr}\n{body}"
            if t.source != "worker":
                continue  # the operator's panels: tests/cluster/test_monitoring_operator.py
            values = samples(body)
            assert values, f"{t} returned no data from the workers: {expr}"
            if "cgroup" not in expr or cgroups:
                assert finite(values), f"{t}: only NaN/Inf: {expr}"
            checked.append(t)
        assert len(checked) >= 15

        # ---------------------------------------------------------- the numbers make sense
        def values_by(expr: str, label: str) -> dict[str, list[float]]:
            body = prom.query_range(expr, start, end, STEP)
            assert body["status"] == "success", body
            return {
                s["metric"].get(label, ""): [float(v) for _, v in s["values"]]
                for s in body["data"]["result"]
            }

        budgets = values_by("gisjob_worker_memory_budget_bytes", "tile")
        assert set(budgets) == {"r0000c0000", "r0001c0000"}, budgets
        assert {v for vs in budgets.values() for v in vs} <= {0.0, float(MEMORY)}
        jobs = values_by("count by (gisjob) (gisjob_worker_resident_memory_bytes)", "gisjob")
        assert set(jobs) == {JOB}
        rss = values_by("gisjob_worker_resident_memory_bytes", "tile")
        peak = max(v for vs in rss.values() for v in vs)
        assert 30 * MIB < peak < MEMORY, peak  # within the budget, above an interpreter
        headroom = values_by(
            substitute(
                next(t.expr for t in targets(dashboard) if t.panel_title.startswith("Headroom")),
                variables,
            ),
            "tile",
        )
        left = finite(v for vs in headroom.values() for v in vs)
        assert left and all(0 < v < 1 for v in left), left
        if cgroups:
            limits = values_by("gisjob_worker_cgroup_memory_limit_bytes", "tile")
            assert {v for vs in limits.values() for v in vs if not math.isnan(v)} == {MEMORY}
        chunks = values_by("max by (tile) (gisjob_worker_chunks_total)", "tile")
        assert max(max(vs) for vs in chunks.values()) > 1  # scraped mid-tile
        assert all(max(vs) <= 64 for vs in chunks.values())  # 64 chunks of 512x512 per tile
        cache = values_by("max(gisjob_worker_gdal_cache_max_bytes)", "")
        assert max(cache[""]) == 8 * MIB

        # ---------------------------------------------------------- the rules evaluate cleanly
        rules = prom.rules()
        assert {r["name"] for r in rules} >= {"GisJobWorkerMemoryHigh", "GisJobOperatorDown"}
        bad = [(r["name"], r.get("lastError")) for r in rules if r.get("health") != "ok"]
        assert not bad, bad
        firing = [a for a in prom.alerts() if a["labels"]["alertname"] != "GisJobOperatorDown"]
        assert not [a for a in firing if a["state"] == "firing"], firing
    assert prom.proc is not None and prom.proc.poll() is not None
    assert time.monotonic() - t_begin < 90
