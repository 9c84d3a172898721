"""``gisjob run`` with data in object storage: a real S3 server (SeaweedFS on loopback), s3://
in and out, equal to the same job on local files and to an independent reference; faults a
real store produces (SlowDown, a restart, wrong credentials, missing buckets and keys); no
partial object ever under a final key; credentials never written anywhere."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from worker_helpers import job_doc, make_raster, run_cli, write_job

from s3server import FaultProxy, SeaweedS3

pytestmark = pytest.mark.slow
NDVI = {"name": "ndvi", "params": {"nir": 4, "red": 3}}


def _ndvi_reference(src: Path) -> np.ndarray:
    """NDVI of bands 4 and 3 by one full read with NumPy (nodata where either is nodata or
    the sum is zero)."""
    import rasterio

    with rasterio.open(src) as ds:
        nir, red = (ds.read(b).astype(np.float32) for b in (4, 3))
        valid = (ds.read(4) != ds.nodata) & (ds.read(3) != ds.nodata) & (nir + red != 0)
    out = np.full((1, *nir.shape), -9999.0, dtype=np.float32)
    out[0][valid] = (nir[valid] - red[valid]) / (nir[valid] + red[valid])
    return out


def _read_vsis3(server: SeaweedS3, path: str, monkeypatch: pytest.MonkeyPatch) -> np.ndarray:
    import rasterio

    for k, v in server.gdal_env().items():
        monkeypatch.setenv(k, v)
    with rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR"), rasterio.open(path) as ds:
        return np.asarray(ds.read())


def _manifest(server: SeaweedS3, prefix: str) -> dict[str, Any]:
    return dict(json.loads(server.get_bytes(f"{prefix}/manifest.json")))


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("src")
    return make_raster(folder / "in.tif", 1536, 1280, count=4, block=256)


def _raster_job(folder: Path, name: str, src: str, out: str, **spec: Any) -> Path:
    return write_job(
        folder / f"{name}.yaml",
        job_doc(
            name,
            {"uri": src},
            NDVI,
            {"uri": out, "format": "COG"},
            tiling={"tileSize": 512},
            parallelism=2,
            **spec,
        ),
    )


def _records(server: SeaweedS3, prefix: str) -> list[dict[str, Any]]:
    keys = [k for k in server.list_keys(f"{prefix}/.gisjob/ledger") if k.endswith(".json")]
    return [json.loads(server.get_bytes(k)) for k in keys]


def test_raster_job_s3_to_s3_equals_local_run_and_reference(
    s3_server: SeaweedS3,
    s3_bucket: str,
    source: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    s3_server.put_file(source, f"{s3_bucket}/in/scene.tif")
    remote = _raster_job(
        tmp_path, "s3-ndvi", f"s3://{s3_bucket}/in/scene.tif", f"s3://{s3_bucket}/out/ndvi"
    )
    run = run_cli("run", str(remote), env=s3_server.env())
    assert run.code == 0, run.stderr[-3000:]
    local = _raster_job(tmp_path, "local-ndvi", str(source), str(tmp_path / "out"))
    assert run_cli("run", str(local)).code == 0

    manifest = _manifest(s3_server, f"{s3_bucket}/out/ndvi")
    assert manifest["outcome"] == "succeeded" and manifest["mosaics"] == ["mosaic.vrt"]
    assert len(manifest["tiles"]) == 9  # 3 x 3 tiles of 512: the data crosses tile seams
    tiles = s3_server.list_keys(f"{s3_bucket}/out/ndvi/tiles")
    assert len(tiles) == 9 and all(k.endswith(".tif") for k in tiles)
    # nothing left of the uploads' temporary keys
    assert s3_server.list_keys(f"{s3_bucket}/out/ndvi/.gisjob/tmp") == []

    got = _read_vsis3(s3_server, f"/vsis3/{s3_bucket}/out/ndvi/mosaic.vrt", monkeypatch)
    np.testing.assert_array_equal(got, _ndvi_reference(source))
    import rasterio

    with rasterio.open(tmp_path / "out" / "mosaic.vrt") as ds:
        np.testing.assert_array_equal(got, ds.read())

    records = _records(s3_server, f"{s3_bucket}/out/ndvi")
    assert len(records) == 9 and all(r["outcome"] == "succeeded" for r in records)
    for r in records:  # object storage: size and ETag identify the output
        assert r["etag"] and r["bytes"] > 0 and r.get("mtimeNs") is None
        # peak within the estimate, the network stack counted in it
        assert r["peakRssBytes"] <= r["estimatedPeakBytes"], r


def test_vector_job_s3_to_s3_equals_reference(
    s3_server: SeaweedS3, s3_bucket: str, tmp_path: Path
) -> None:
    import geopandas as gpd
    import pyarrow.parquet as pq

    from gisjob_worker.demo import write_parcels

    write_parcels(tmp_path / "parcels.gpkg", 30_000)
    s3_server.put_file(tmp_path / "parcels.gpkg", f"{s3_bucket}/in/parcels.gpkg")
    job = write_job(
        tmp_path / "filter.yaml",
        job_doc(
            "s3-filter",
            {"uri": f"s3://{s3_bucket}/in/parcels.gpkg", "layer": "parcels"},
            {"name": "filter", "params": {"where": "population > 500"}},
            {"uri": f"s3://{s3_bucket}/out/filter", "format": "GeoParquet"},
            tiling={"featuresPerTile": 8000},
        ),
    )
    run = run_cli("run", str(job), env=s3_server.env())
    assert run.code == 0, run.stderr[-3000:]
    manifest = _manifest(s3_server, f"{s3_bucket}/out/filter")
    assert manifest["outcome"] == "succeeded" and manifest["dataset"] == "parts"
    fs = s3_server.filesystem()
    table = pq.read_table(f"{s3_bucket}/out/filter/parts", filesystem=fs)
    got = table.to_pandas().sort_values("parcel_id").reset_index(drop=True)
    ref = gpd.read_file(tmp_path / "parcels.gpkg", layer="parcels")
    ref = ref[ref.population > 500].sort_values("parcel_id").reset_index(drop=True)
    assert len(got) == len(ref) > 0
    np.testing.assert_array_equal(got.parcel_id, ref.parcel_id)
    np.testing.assert_array_equal(got.population, ref.population)
    for r in _records(s3_server, f"{s3_bucket}/out/filter"):
        assert r["peakRssBytes"] <= r["estimatedPeakBytes"], r


def test_planning_reads_headers_only(
    s3_server: SeaweedS3, s3_faults: FaultProxy, s3_bucket: str, tmp_path: Path
) -> None:
    """The planner reads metadata over the network, never the data: planning a ~100 MB
    scene moves a few hundred KB."""
    big = make_raster(tmp_path / "big.tif", 5120, 5120, count=4, block=512)
    size = big.stat().st_size
    assert size > 80 * 2**20
    s3_server.put_file(big, f"{s3_bucket}/in/big.tif")
    job = _raster_job(tmp_path, "hdr", f"s3://{s3_bucket}/in/big.tif", f"s3://{s3_bucket}/o")
    run = run_cli("plan", str(job), "--json", env=s3_faults.env())
    assert run.code == 0, run.stderr[-2000:]
    assert json.loads(run.stdout)["totals"]["tiles"] == 100
    assert 0 < s3_faults.bytes_to_clients < 2 * 2**20, s3_faults.bytes_to_clients


def test_glob_over_a_prefix_and_a_glob_matching_nothing(
    s3_server: SeaweedS3, s3_bucket: str, source: Path, tmp_path: Path
) -> None:
    for name in ("a.tif", "b.tif"):
        s3_server.put_file(source, f"{s3_bucket}/scenes/{name}")
    s3_server.put_file(source, f"{s3_bucket}/scenes/deeper/c.tif")  # * never crosses a /
    plan = run_cli(
        "plan",
        str(
            write_job(
                tmp_path / "g.yaml",
                job_doc(
                    "g",
                    {"glob": f"s3://{s3_bucket}/scenes/*.tif"},
                    NDVI,
                    {"uri": f"s3://{s3_bucket}/out/g"},
                    tiling={"tileSize": 1024},
                ),
            )
        ),
        "--json",
        env=s3_server.env(),
    )
    assert plan.code == 0, plan.stderr
    files = [f["uri"] for f in json.loads(plan.stdout)["files"]]
    assert files == [f"/vsis3/{s3_bucket}/scenes/a.tif", f"/vsis3/{s3_bucket}/scenes/b.tif"]

    none = write_job(
        tmp_path / "n.yaml",
        job_doc("n", {"glob": f"s3://{s3_bucket}/nothing/*.tif"}, NDVI, {"uri": str(tmp_path)}),
    )
    run = run_cli("run", str(none), env=s3_server.env())
    assert run.code == 2
    assert f"s3://{s3_bucket}/nothing/*.tif: spec.input.glob matches no file" in run.stderr


def _one_error_line(stderr: str) -> str:
    lines = [ln for ln in stderr.strip().splitlines() if ln.startswith("gisjob: error:")]
    assert len(lines) == 1, stderr
    return lines[0]


def test_wrong_credentials_missing_bucket_and_key_exit_2_naming_them(
    s3_server: SeaweedS3, s3_bucket: str, source: Path, tmp_path: Path
) -> None:
    s3_server.put_file(source, f"{s3_bucket}/in/scene.tif")
    out = f"s3://{s3_bucket}/out/x"
    bad = {**s3_server.env(), "AWS_SECRET_ACCESS_KEY": "not-the-secret-0123456789"}
    job = _raster_job(tmp_path, "creds", f"s3://{s3_bucket}/in/scene.tif", out)
    run = run_cli("run", str(job), env=bad)
    assert run.code == 2, run.stderr[-2000:]
    line = _one_error_line(run.stderr)
    assert f"bucket '{s3_bucket}'" in line and "access denied" in line
    assert "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY from the environment" in line
    assert "not-the-secret-0123456789" not in run.stderr + run.stdout

    job = _raster_job(tmp_path, "nobucket", "s3://no-such-bucket-x1/in/scene.tif", out)
    run = run_cli("run", str(job), env=s3_server.env())
    assert run.code == 2 and "bucket 'no-such-bucket-x1' does not exist" in _one_error_line(
        run.stderr
    )

    job = _raster_job(tmp_path, "nokey", f"s3://{s3_bucket}/in/missing.tif", out)
    run = run_cli("run", str(job), env=s3_server.env())
    assert run.code == 2
    assert f"/vsis3/{s3_bucket}/in/missing.tif: no such object" in _one_error_line(run.stderr)
    # nothing was written for jobs that never started
    assert s3_server.list_keys(f"{s3_bucket}/out") == []


def test_an_unreachable_endpoint_is_a_retryable_failure(
    s3_server: SeaweedS3, s3_bucket: str, tmp_path: Path
) -> None:
    from worker_helpers import free_port

    job = _raster_job(tmp_path, "down", f"s3://{s3_bucket}/in/x.tif", f"s3://{s3_bucket}/o")
    env = {
        **s3_server.env(),
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}",
        "GDAL_HTTP_MAX_RETRY": "1",
        "GDAL_HTTP_RETRY_DELAY": "0.1",
    }
    run = run_cli("run", str(job), env=env)
    assert run.code == 1, run.stderr  # not 2: nothing is wrong with the job
    line = _one_error_line(run.stderr)
    assert "object storage failed" in line and "transient" in line


def test_slowdown_and_5xx_are_retried(
    s3_server: SeaweedS3,
    s3_bucket: str,
    s3_faults: FaultProxy,
    source: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    s3_server.put_file(source, f"{s3_bucket}/in/scene.tif")
    job = _raster_job(
        tmp_path, "throttled", f"s3://{s3_bucket}/in/scene.tif", f"s3://{s3_bucket}/out/t"
    )
    s3_faults.inject("slowdown", 6)
    s3_faults.inject("internal", 2, method="PUT")
    s3_faults.inject("slowdown", 3, method="GET", path_contains=".gisjob/ledger")
    run = run_cli("run", str(job), env=s3_faults.env())
    assert run.code == 0, run.stderr[-3000:]
    assert s3_faults.faults_injected == 11
    got = _read_vsis3(s3_server, f"/vsis3/{s3_bucket}/out/t/mosaic.vrt", monkeypatch)
    np.testing.assert_array_equal(got, _ndvi_reference(source))


def test_a_store_restarted_mid_job_completes_every_tile_exactly_once(
    s3_server: SeaweedS3,
    s3_bucket: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    src = make_raster(tmp_path / "big.tif", 3072, 2048, count=4, block=256, seed=5)
    s3_server.put_file(src, f"{s3_bucket}/in/big.tif")
    job = _raster_job(
        tmp_path,
        "restart",
        f"s3://{s3_bucket}/in/big.tif",
        f"s3://{s3_bucket}/out/r",
        retry={"backoffLimit": 6},
    )
    doc = yaml.safe_load(job.read_text())
    doc["spec"]["parallelism"] = 1  # tiles one by one: the restart falls mid-job
    write_job(job, doc)
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "gisjob"), "run", str(job)],
        env={**os.environ, **s3_server.env()},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # restart once the first tiles are in
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if len(s3_server.list_keys(f"{s3_bucket}/out/r/tiles")) >= 3:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the job finished before the store could be restarted"
    restarter = threading.Thread(target=s3_server.restart)
    restarter.start()
    _, err = proc.communicate(timeout=600)
    restarter.join()
    assert proc.returncode == 0, err[-3000:]
    manifest = _manifest(s3_server, f"{s3_bucket}/out/r")
    assert manifest["outcome"] == "succeeded"
    ids = [t["id"] for t in manifest["tiles"]]
    assert len(ids) == len(set(ids)) == 24
    assert len(s3_server.list_keys(f"{s3_bucket}/out/r/tiles")) == 24
    got = _read_vsis3(s3_server, f"/vsis3/{s3_bucket}/out/r/mosaic.vrt", monkeypatch)
    np.testing.assert_array_equal(got, _ndvi_reference(src))


def test_resume_checks_objects_and_never_deletes_what_the_job_did_not_write(
    s3_server: SeaweedS3, s3_bucket: str, source: Path, tmp_path: Path
) -> None:
    s3_server.put_file(source, f"{s3_bucket}/in/scene.tif")
    prefix = f"{s3_bucket}/out/resume"
    job = _raster_job(tmp_path, "resume", f"s3://{s3_bucket}/in/scene.tif", f"s3://{prefix}")
    foreign = tmp_path / "notes.txt"
    foreign.write_text("a user's own file")
    s3_server.put_file(foreign, f"{prefix}/tiles/notes.txt")
    s3_server.put_file(foreign, f"{prefix}/readme.txt")
    assert run_cli("run", str(job), env=s3_server.env()).code == 0
    first = _records(s3_server, prefix)
    # a tile object replaced behind the job's back: its ETag no longer matches the ledger
    s3_server.put_file(foreign, f"{prefix}/tiles/r0000c0000.tif")
    run = run_cli("run", str(job), "--resume", env=s3_server.env())
    assert run.code == 0, run.stderr[-2000:]
    again = _records(s3_server, prefix)
    new = [r for r in again if r not in first]
    assert [r["tile"] for r in new] == ["r0000c0000"]  # only the replaced tile ran again
    assert s3_server.get_bytes(f"{prefix}/tiles/notes.txt") == b"a user's own file"
    assert s3_server.get_bytes(f"{prefix}/readme.txt") == b"a user's own file"


def test_no_credential_is_written_anywhere(
    s3_server: SeaweedS3, s3_bucket: str, source: Path, tmp_path: Path
) -> None:
    s3_server.put_file(source, f"{s3_bucket}/in/scene.tif")
    prefix = f"{s3_bucket}/out/secret"
    job = _raster_job(tmp_path, "secret", f"s3://{s3_bucket}/in/scene.tif", f"s3://{prefix}")
    run = run_cli("run", str(job), env=s3_server.env())
    assert run.code == 0, run.stderr[-2000:]
    secrets = (s3_server.secret_key, s3_server.access_key)
    for key in s3_server.list_keys(prefix):
        if key.endswith((".json", ".vrt")):
            text = s3_server.get_bytes(key).decode()
            assert not any(s in text for s in secrets), key
    assert not any(s in run.stdout + run.stderr for s in secrets)


UPLOAD_SCRIPT = """
import sys
from pathlib import Path
from gisjob_worker.location import open_location
loc = open_location(sys.argv[1])
local = Path(sys.argv[2])
print("uploading", flush=True)
loc.publish(local, "tiles/big.tif")
"""


def test_a_writer_killed_mid_upload_leaves_nothing_under_the_final_key(
    s3_server: SeaweedS3, s3_bucket: str, s3_faults: FaultProxy, tmp_path: Path
) -> None:
    big = tmp_path / "big.tif"
    big.write_bytes(np.random.default_rng(0).bytes(120 * 1024**2))
    out = f"s3://{s3_bucket}/out/kill"
    proc = subprocess.Popen(
        [sys.executable, "-c", UPLOAD_SCRIPT, out, str(big)],
        env={**os.environ, **s3_faults.env()},
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "uploading"
    seen = s3_faults.requests_seen
    deadline = time.monotonic() + 30
    while s3_faults.requests_seen < seen + 3 and time.monotonic() < deadline:
        time.sleep(0.01)  # a few parts of the multipart upload are in
    proc.kill()
    proc.wait()
    assert s3_server.list_keys(f"{s3_bucket}/out/kill/tiles") == []


def test_a_failing_upload_leaves_nothing_under_the_final_key(
    s3_server: SeaweedS3, s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gisjob_worker import location as location_mod

    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    loc = location_mod.open_location(f"s3://{s3_bucket}/out/fail")
    local = tmp_path / "tile.tif"
    local.write_bytes(b"x" * (3 * location_mod.UPLOAD_BLOCK))
    real_open = open
    reads = {"n": 0}

    class Failing:
        def __init__(self, fh: Any) -> None:
            self.fh = fh

        def __enter__(self) -> Failing:
            return self

        def __exit__(self, *exc: object) -> None:
            self.fh.close()

        def read(self, n: int) -> bytes:
            reads["n"] += 1
            if reads["n"] == 2:
                raise OSError(5, "Input/output error")  # the local disk fails mid-copy
            return bytes(self.fh.read(n))

    monkeypatch.setattr(
        location_mod, "open", lambda p, m="r": Failing(real_open(p, m)), raising=False
    )
    with pytest.raises(location_mod.GisJobError, match="cannot upload"):
        loc.publish(local, "tiles/t.tif")
    # pyarrow completed the stream it was given, but only under the temporary key, since removed
    assert s3_server.list_keys(f"{s3_bucket}/out/fail") == []
