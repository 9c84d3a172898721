"""Worker outputs: equal to a full-read reference, atomic, observable (record, metrics)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from worker_helpers import (
    GISJOB,
    budget_mib,
    free_port,
    job_doc,
    make_raster,
    run_cli,
    run_worker,
    write_job,
)

pytestmark = pytest.mark.slow


def _read(path: Path) -> tuple[np.ndarray, Any]:
    import rasterio

    with rasterio.open(path) as ds:
        return ds.read(), ds.profile


def test_ndvi_tile_equals_full_read_reference(tmp_path: Path) -> None:
    import rasterio

    src = make_raster(tmp_path / "in.tif", 700, 600, count=4)
    job = write_job(
        tmp_path / "job.yaml",
        job_doc(
            "eq",
            {"uri": str(src)},
            {"name": "ndvi", "params": {"nir": 4, "red": 3}},
            {"uri": str(tmp_path / "out"), "format": "COG"},
            tiling={"tileSize": 512},
            resources={"memory": budget_mib("raster", 4, 8), "gdalCacheMax": "4Mi"},
        ),
    )
    run = run_worker(job, "r0001c0001")  # the edge tile: 188 x 88 pixels
    assert run.code == 0, run.stderr
    out, profile = _read(Path(run.record["output"]))  # type: ignore[index]
    with rasterio.open(src) as ds:
        full = ds.read()  # the plain reference: everything in memory
        nd = ds.nodata
    nir = full[3, 512:, 512:].astype(np.float32)
    red = full[2, 512:, 512:].astype(np.float32)
    valid = (full[3, 512:, 512:] != nd) & (full[2, 512:, 512:] != nd) & (nir + red != 0)
    expected = np.full(nir.shape, -9999.0, dtype=np.float32)
    expected[valid] = (nir[valid] - red[valid]) / (nir[valid] + red[valid])
    assert out.shape == (1, 88, 188)
    np.testing.assert_array_equal(out[0], expected)
    assert profile["nodata"] == -9999.0
    assert profile["driver"] == "GTiff"  # COGs are GeoTIFFs
    with rasterio.open(run.record["output"]) as ds:  # type: ignore[index]
        assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        with rasterio.open(src) as s:
            assert ds.crs == s.crs
            assert ds.transform.c == s.transform.c + 512 * s.transform.a


def test_scale_with_integer_output_streams_many_chunks_equal_reference(tmp_path: Path) -> None:
    import rasterio

    src = make_raster(tmp_path / "in.tif", 1024, 1024, count=3)
    params = {"scale": 0.02, "offset": 3, "clip": [0, 200], "dtype": "uint8", "bands": [3, 1]}
    job = write_job(
        tmp_path / "job.yaml",
        job_doc(
            "sc",
            {"uri": str(src)},
            {"name": "scale", "params": params},
            {"uri": str(tmp_path / "out"), "format": "GTiff"},
            tiling={"tileSize": 1024},
            resources={"memory": budget_mib("raster", 2, 4), "gdalCacheMax": "2Mi"},
        ),
    )
    run = run_worker(job, "r0000c0000")
    assert run.code == 0, run.stderr
    assert run.record["chunks"] >= 4  # type: ignore[index]
    out, profile = _read(Path(run.record["output"]))  # type: ignore[index]
    with rasterio.open(src) as ds:
        full = ds.read([3, 1]).astype(np.float32)
        nd = ds.nodata
        raw = ds.read([3, 1])
    valid = raw != nd  # per band: each output band keeps its own input band's nodata
    expected = np.clip(np.rint(np.clip(full * 0.02 + 3, 0, 200)), 0, 255).astype(np.uint8)
    expected[~valid] = 255
    np.testing.assert_array_equal(out, expected)
    assert profile["nodata"] == 255
    assert profile["count"] == 2


def test_filter_part_equals_geopandas_reference(tmp_path: Path) -> None:
    import geopandas as gpd

    from gisjob_worker.demo import write_parcels

    src = tmp_path / "p.gpkg"
    write_parcels(src, 3000)
    params = {
        "where": "population > 450 AND landuse = 'forest'",
        "columns": ["parcel_id", "population"],
        "area": True,
    }
    job = write_job(
        tmp_path / "job.yaml",
        job_doc(
            "f",
            {"uri": str(src), "layer": "parcels"},
            {"name": "filter", "params": params},
            {"uri": str(tmp_path / "out"), "format": "GeoParquet"},
            tiling={"featuresPerTile": 1000},
        ),
    )
    parts = []
    for tile in ("f000000", "f000001", "f000002"):
        run = run_worker(job, tile)
        assert run.code == 0, run.stderr
        parts.append(gpd.read_parquet(run.record["output"]))  # type: ignore[index]
    got = gpd.pd.concat(parts, ignore_index=True)
    ref = gpd.read_file(src, layer="parcels")
    ref = ref[(ref.population > 450) & (ref.landuse == "forest")].reset_index(drop=True)
    assert list(got.columns) == ["parcel_id", "population", "geometry", "area_km2"]
    assert got.crs == ref.crs
    np.testing.assert_array_equal(got.parcel_id.to_numpy(), ref.parcel_id.to_numpy())
    np.testing.assert_array_equal(got.population.to_numpy(), ref.population.to_numpy())
    assert got.geometry.geom_equals_exact(ref.geometry, tolerance=0).all()
    np.testing.assert_allclose(
        got.area_km2.to_numpy(), ref.to_crs("EPSG:6933").area.to_numpy() / 1e6, rtol=1e-9
    )


def test_sigkill_mid_write_leaves_no_final_file_and_rerun_completes(tmp_path: Path) -> None:
    src = make_raster(tmp_path / "in.tif", 3072, 3072, count=4)
    job = write_job(
        tmp_path / "job.yaml",
        job_doc(
            "k",
            {"uri": str(src)},
            {"name": "scale", "params": {"scale": 0.0001, "dtype": "float64"}},
            {"uri": str(tmp_path / "out"), "format": "GTiff"},
            tiling={"tileSize": 4096},
            resources={"memory": budget_mib("raster", 8, 24), "gdalCacheMax": "8Mi"},
        ),
    )
    tiles = tmp_path / "out" / "tiles"
    final = tiles / "r0000c0000.tif"
    proc = subprocess.Popen(
        [GISJOB, "worker", "--job", str(job), "--tile", "r0000c0000"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if tiles.is_dir() and any(p.name.startswith(".") for p in tiles.iterdir()):
            break
        time.sleep(0.02)
    time.sleep(0.3)  # well inside the chunk loop
    assert proc.poll() is None, "the worker finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not final.exists(), "a killed worker left a file under the final name"
    run = run_worker(job, "r0000c0000")
    assert run.code == 0, run.stderr
    out, _ = _read(final)
    import rasterio

    with rasterio.open(src) as ds:
        ref = ds.read()
        valid = ref != ds.nodata  # per band
    expected = np.where(valid, ref.astype(np.float64) * 0.0001, -9999.0)
    np.testing.assert_array_equal(out, expected)


def test_sigterm_removes_temporaries_and_exits_retryable(tmp_path: Path) -> None:
    src = make_raster(tmp_path / "in.tif", 3072, 3072, count=4)
    job = write_job(
        tmp_path / "job.yaml",
        job_doc(
            "t",
            {"uri": str(src)},
            {"name": "scale", "params": {"scale": 0.0001, "dtype": "float64"}},
            {"uri": str(tmp_path / "out"), "format": "GTiff"},
            tiling={"tileSize": 4096},
            resources={"memory": budget_mib("raster", 8, 24), "gdalCacheMax": "8Mi"},
        ),
    )
    tiles = tmp_path / "out" / "tiles"
    proc = subprocess.Popen(
        [GISJOB, "worker", "--job", str(job), "--tile", "r0000c0000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (tiles.is_dir() and any(tiles.iterdir())):
        time.sleep(0.02)
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode not in (0, 2, 3)
    record = json.loads(out.strip().splitlines()[-1])
    assert record["outcome"] == "error" and "SIGTERM" in record["error"]
    assert not any(tiles.iterdir()), "temporaries left behind"
    from gisjob_worker.ledgerstore import LocalLedgerStore

    (own,) = LocalLedgerStore(tmp_path / "out").records(record["digest"], "r0000c0000")
    assert (own.exit_code, own.outcome, own.output) == (143, "error", None)


def test_result_record_file_and_job_from_environment(tmp_path: Path) -> None:
    src = make_raster(tmp_path / "in.tif", 256, 256, count=2)
    doc = job_doc(
        "env",
        {"uri": str(src)},
        {"name": "ndvi", "params": {"nir": 2, "red": 1}},
        {"uri": str(tmp_path / "out"), "format": "GTiff"},
    )
    result = tmp_path / "termination-log"
    env = {
        "GISJOB_JOB": yaml.safe_dump(doc),
        "GISJOB_RESULT_PATH": str(result),
        "GISJOB_ATTEMPT": "4",
        "GISJOB_STRATEGY": "grow",
        "GISJOB_MEMORY": "300Mi",
        "GISJOB_POD_NAME": "env-r0000c0000-4",
    }
    run = run_cli("worker", "--tile", "r0000c0000", env=env)
    assert run.code == 0, run.stderr
    text = result.read_text()
    assert len(text.encode()) <= 4096
    rec = json.loads(text)
    assert rec["tile"] == "r0000c0000" and rec["outcome"] == "succeeded"
    for key in ("peakRssBytes", "chunks", "bytesRead", "bytesWritten", "seconds", "output"):
        assert key in rec
    assert rec["bytesRead"] == 256 * 256 * 2 * 2
    assert rec["bytesWritten"] == Path(rec["output"]).stat().st_size
    assert rec["job"] == "env" and len(rec["digest"]) == 16
    # the worker recorded its own outcome in the output location's ledger
    from gisjob_worker.ledgerstore import LocalLedgerStore

    store = LocalLedgerStore(tmp_path / "out")
    (own,) = store.records(rec["digest"])
    assert (own.tile, own.attempt, own.strategy, own.writer) == ("r0000c0000", 4, "grow", "worker")
    assert (own.pod, own.memory, own.exit_code) == ("env-r0000c0000-4", 300 * 2**20, 0)
    assert own.output == "tiles/r0000c0000.tif" and own.bytes == rec["bytesWritten"]
    assert store.output_ok(own)


def test_metrics_served_while_running_and_pushed_at_exit(tmp_path: Path) -> None:
    pushed: list[tuple[str, str]] = []

    class Gateway(BaseHTTPRequestHandler):
        def do_PUT(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"])).decode()
            pushed.append((self.path, body))
            self.send_response(200)
            self.end_headers()

        do_POST = do_PUT  # noqa: N815

        def log_message(self, *args: Any) -> None:
            pass

    gateway = HTTPServer(("127.0.0.1", 0), Gateway)
    threading.Thread(target=gateway.serve_forever, daemon=True).start()
    src = make_raster(tmp_path / "in.tif", 3072, 3072, count=4)
    job = write_job(
        tmp_path / "job.yaml",
        job_doc(
            "m",
            {"uri": str(src)},
            {"name": "scale", "params": {"scale": 0.0001, "dtype": "float64"}},
            {"uri": str(tmp_path / "out"), "format": "GTiff"},
            tiling={"tileSize": 4096},
            resources={"memory": budget_mib("raster", 8, 24), "gdalCacheMax": "8Mi"},
        ),
    )
    port = free_port()
    proc = subprocess.Popen(
        [
            GISJOB,
            "worker",
            "--job",
            str(job),
            "--tile",
            "r0000c0000",
            "--metrics-port",
            str(port),
            "--pushgateway",
            f"http://127.0.0.1:{gateway.server_port}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    scraped = ""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                scraped = r.read().decode()
            if (
                "gisjob_worker_chunks_total" in scraped
                and 'tile="r0000c0000"} 0.0'
                not in scraped.split("gisjob_worker_chunks_total", 1)[1][:80]
            ):
                break
        except OSError:
            pass
        time.sleep(0.05)
    proc.communicate(timeout=120)
    gateway.shutdown()
    assert proc.returncode == 0
    for name in (
        "gisjob_worker_resident_memory_bytes",
        "gisjob_worker_peak_resident_memory_bytes",
        "gisjob_worker_cgroup_memory_limit_bytes",
        "gisjob_worker_gdal_cache_max_bytes",
        "gisjob_worker_gdal_cache_used_bytes",
        "gisjob_worker_chunks_total",
        "gisjob_worker_read_bytes_total",
        "gisjob_worker_chunk_duration_seconds_bucket",
        "gisjob_worker_memory_budget_bytes",
    ):
        assert name in scraped, name
    assert len(pushed) == 1
    path, body = pushed[0]
    cache_max = next(
        float(line.rsplit(" ", 1)[1])
        for line in body.splitlines()
        if line.startswith("gisjob_worker_gdal_cache_max_bytes{")
    )
    assert cache_max == 8 * 1024**2, "GDAL_CACHEMAX must mean bytes, set before GDAL loaded"
    assert path == "/metrics/job/gisjob_worker/gisjob/m/tile/r0000c0000"
    chunks = next(
        line for line in body.splitlines() if line.startswith("gisjob_worker_chunks_total{")
    )
    assert float(chunks.rsplit(" ", 1)[1]) >= 2
    assert os.path.exists(tmp_path / "out" / "tiles" / "r0000c0000.tif")


def _metric(body: str, name: str) -> float:
    line = next(ln for ln in body.splitlines() if ln.startswith(name + "{"))
    return float(line.rsplit(" ", 1)[1])


def _scale_job(tmp_path: Path, name: str, size: int) -> Path:
    """A one-tile scale job on a ``size``² 2-band raster."""
    src = make_raster(tmp_path / "in.tif", size, size, count=2)
    return write_job(
        tmp_path / "job.yaml",
        job_doc(
            name,
            {"uri": str(src)},
            {"name": "scale", "params": {"scale": 2.0}},
            {"uri": str(tmp_path / "out"), "format": "GTiff"},
            resources={"memory": budget_mib("raster", 8, 24), "gdalCacheMax": "8Mi"},
        ),
    )


def test_metrics_linger_waits_for_the_final_scrape(tmp_path: Path) -> None:
    """With --metrics-linger, a finished worker keeps serving until it is scraped once more,
    and that scrape carries the final values; then it exits at once."""
    job = _scale_job(tmp_path, "lg", 1024)
    port = free_port()
    result = tmp_path / "result.json"
    proc = subprocess.Popen(
        [
            GISJOB,
            "worker",
            "--job",
            str(job),
            "--tile",
            "r0000c0000",
            "--result",
            str(result),
            "--metrics-port",
            str(port),
            "--metrics-linger",
            "120",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not result.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert result.exists(), "the worker must write its result before lingering"
        time.sleep(0.5)
        assert proc.poll() is None, "a finished worker lingers until its final scrape"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            body = r.read().decode()
        t0 = time.monotonic()
        proc.wait(timeout=10)
        assert time.monotonic() - t0 < 5, "the worker exits right after the final scrape"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
    record = json.loads(result.read_text())
    assert _metric(body, "gisjob_worker_chunks_total") >= 1
    assert _metric(body, "gisjob_worker_memory_budget_bytes") > 0
    assert _metric(body, "gisjob_worker_peak_resident_memory_bytes") >= record["peakRssBytes"]


def test_metrics_linger_is_bounded(tmp_path: Path) -> None:
    """Nobody scrapes: the worker gives up after --metrics-linger seconds and exits 0."""
    job = _scale_job(tmp_path, "lb", 512)
    common = [GISJOB, "worker", "--job", str(job), "--tile", "r0000c0000"]
    common += ["--result", str(tmp_path / "r.json"), "--metrics-port", str(free_port())]
    t0 = time.monotonic()
    subprocess.run(common, check=True, capture_output=True, timeout=120)
    plain = time.monotonic() - t0
    t0 = time.monotonic()
    subprocess.run([*common, "--metrics-linger", "2"], check=True, capture_output=True, timeout=120)
    lingered = time.monotonic() - t0
    assert lingered >= 2.0
    assert lingered < plain + 2.0 + 5.0
