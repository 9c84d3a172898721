"""The fork server of ``gisjob run``: workers forked from one warmed-up process are real,
separate worker processes — same outputs as spawned workers, own cgroup, own exit code,
killable — and nothing outlives the server or the runner."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from worker_helpers import GISJOB, budget_mib, free_port, ndvi_job, run_cli

from gisjob_worker.attempt import AttemptRequest
from gisjob_worker.cgroup import create_child
from gisjob_worker.forkserver import ForkServer, ForkServerError
from gisjob_worker.ledgerstore import LocalLedgerStore

MIB = 1024**2


def _job(tmp_path: Path, width: int = 2048, tile: int = 1024, name: str = "fs") -> Path:
    return ndvi_job(
        tmp_path,
        name,
        tmp_path / f"out-{name}",
        width=width,
        tile=tile,
        resources={"memory": budget_mib("raster", 8, 48), "gdalCacheMax": "8Mi"},
    )


def budget_bytes() -> int:
    return int(budget_mib("raster", 8, 48).removesuffix("Mi")) * MIB


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _wait_gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


def _tiles(out: Path) -> dict[str, np.ndarray]:
    import rasterio

    arrays = {}
    for p in sorted((out / "tiles").glob("*.tif")):
        with rasterio.open(p) as ds:
            arrays[p.name] = ds.read()
    return arrays


def test_forked_and_spawned_workers_write_identical_tiles(tmp_path: Path) -> None:
    job = _job(tmp_path)
    forked = run_cli("run", str(job), "--workers", "2", "--report", str(tmp_path / "r1"))
    assert forked.code == 0, forked.stderr[-2000:]
    first = _tiles(tmp_path / "out-fs")
    assert len(first) == 4
    spawned = run_cli(
        "run", str(job), "--workers", "2", "--no-resume", "--no-fork-server",
        "--report", str(tmp_path / "r2"),
    )  # fmt: skip
    assert spawned.code == 0, spawned.stderr[-2000:]
    second = _tiles(tmp_path / "out-fs")
    assert first.keys() == second.keys()
    for name, arr in first.items():
        np.testing.assert_array_equal(arr, second[name], err_msg=name)
    for rep in ("r1", "r2"):
        summary = json.loads((tmp_path / rep / "summary.json").read_text())
        assert summary["succeeded"] == 4, summary


def test_a_forked_worker_runs_a_tile_records_it_and_reports_its_exit(tmp_path: Path) -> None:
    """The child runs the worker's attempt function (no CLI): the tile, its ledger record
    (attempt and strategy as asked), its result record, its exit code."""
    job = _job(tmp_path)
    server = ForkServer(job, tmp_path / "server.log")
    try:
        result = tmp_path / "result.json"
        request = AttemptRequest(
            tile="r0000c0001",
            job_file=str(job),
            result_path=str(result),
            attempt=3,
            strategy="grow",
            memory=budget_bytes(),
        )
        w = server.spawn(request, tmp_path / "w.log")
        assert w.wait(120) == 0, (tmp_path / "w.log").read_text()[-2000:]
        record = json.loads(result.read_text())
        assert record["outcome"] == "succeeded" and record["tile"] == "r0000c0001"
        assert Path(record["output"]).exists()
        assert '"tile.end"' in (tmp_path / "w.log").read_text()  # its stderr went to its log
        store = LocalLedgerStore(tmp_path / "out-fs")
        (own,) = store.records(record["digest"], "r0000c0001")
        assert (own.attempt, own.strategy, own.writer) == (3, "grow", "worker")
        assert own.memory == budget_bytes() and store.output_ok(own)
        # a bad tile id: the worker's own one-line error and exit code 2, the server lives on
        bad = server.spawn(AttemptRequest(tile="nope", job_file=str(job)), tmp_path / "b.log")
        assert bad.wait(60) == 2
        assert "nope" in (tmp_path / "b.log").read_text()
        assert server.proc.poll() is None
    finally:
        server.close()
    assert server.proc.returncode is not None


def test_a_forked_worker_can_be_killed_and_dies_with_the_server(tmp_path: Path) -> None:
    job = _job(tmp_path)
    server = ForkServer(job, tmp_path / "server.log")
    # a worker that stays alive: after its tile it waits up to 120 s for a metrics scrape
    request = AttemptRequest(tile="r0000c0000", job_file=str(job), metrics_linger=120)
    try:
        w = server.spawn(replace(request, metrics_port=free_port()), tmp_path / "w1.log")
        time.sleep(0.3)
        assert w.poll() is None
        w.kill()
        assert w.wait(30) == -signal.SIGKILL
        orphan = server.spawn(replace(request, metrics_port=free_port()), tmp_path / "w2.log")
        time.sleep(3.0)
        assert orphan.poll() is None and _alive(orphan.pid)
        os.kill(server.proc.pid, signal.SIGKILL)
        assert _wait_gone(orphan.pid, 5.0), "a worker outlived its fork server (PDEATHSIG)"
        with pytest.raises(ForkServerError, match="fork server exited") as info:
            for _ in range(100):
                server.pump(0.1)
        Path(str(info.value).rsplit("its log: ", 1)[1]).unlink()  # saved for the error
    finally:
        server.close()


@pytest.mark.cgroup
def test_a_forked_worker_joins_its_cgroup_before_it_runs(tmp_path: Path) -> None:
    """--memory says 1Gi, the worker's cgroup allows 48Mi: the forked worker's guard reads
    the cgroup it joined and exits 3 (as a spawned worker does)."""
    job = _job(tmp_path)
    cg = create_child(f"gisjob-test-fork-{os.getpid()}", 48 * MIB)
    if cg is None:
        pytest.skip("no writable cgroup memory controller (v1 or v2) on this machine")
    server = ForkServer(job, tmp_path / "server.log")
    try:
        result = tmp_path / "result.json"
        w = server.spawn(
            AttemptRequest(
                tile="r0000c0000", job_file=str(job), memory=1024 * MIB, result_path=str(result)
            ),
            tmp_path / "w.log",
            cgroup_procs=cg.path / "cgroup.procs",
        )
        assert w.wait(60) == 3, (tmp_path / "w.log").read_text()[-2000:]
        record = json.loads(result.read_text())
        assert record["outcome"] == "memory"
        assert record["memoryBudgetBytes"] == 48 * MIB
    finally:
        server.close()
        cg.remove()


def test_a_server_that_cannot_start_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    with pytest.raises(ForkServerError, match=r"fork server exited .*server\.log"):
        ForkServer(missing, tmp_path / "server.log")
    assert "missing.yaml" in (tmp_path / "server.log").read_text()
    # without a log path: an anonymous log, saved (and named) when the server failed...
    with pytest.raises(ForkServerError, match=r"its log: (\S+)") as info:
        ForkServer(missing)
    kept = Path(info.value.args[0].rsplit("its log: ", 1)[1])
    assert "missing.yaml" in kept.read_text()
    kept.unlink()
    # ...and nothing on disk otherwise, not even while it runs
    before = set(Path(tempfile.gettempdir()).glob("gisjob-forkserver-*"))
    server = ForkServer(_job(tmp_path))
    assert set(Path(tempfile.gettempdir()).glob("gisjob-forkserver-*")) == before
    server.close()


def test_a_run_whose_fork_server_dies_falls_back_to_spawning_and_completes(
    tmp_path: Path,
) -> None:
    """SIGKILL the fork server mid-run: the runner says so, the workers it had forked are
    retried as failed attempts, the rest run as fresh interpreters, the job succeeds with
    the same tiles as a clean run."""
    job = _job(tmp_path, width=4096, tile=512, name="lost")  # 64 tiles
    out = tmp_path / "out-lost"
    proc = subprocess.Popen(
        [GISJOB, "run", str(job), "--workers", "2"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        server = None
        while server is None and time.monotonic() < deadline:
            done = list((out / "tiles").glob("r*.tif")) if (out / "tiles").exists() else []
            if len(done) >= 3:
                server = _server_of(proc.pid)
            time.sleep(0.05)
        assert server is not None, "no fork server under the runner"
        os.kill(server, signal.SIGKILL)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err[-3000:]
    events = [json.loads(ln) for ln in err.splitlines() if ln.startswith("{")]
    lost = [e for e in events if e.get("event") == "forkserver-lost"]
    assert len(lost) == 1 and "fork server exited" in lost[0]["error"], lost
    Path(lost[0]["error"].rsplit("its log: ", 1)[1]).unlink()  # saved for the report
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["outcome"] == "succeeded"
    assert len([t for t in manifest["tiles"] if t["outcome"] == "succeeded"]) == 64
    lost_tiles = _tiles(out)
    clean = run_cli("run", str(_job(tmp_path, 4096, 512, "clean")), "--no-fork-server")
    assert clean.code == 0, clean.stderr[-2000:]
    clean_tiles = _tiles(tmp_path / "out-clean")
    assert lost_tiles.keys() == clean_tiles.keys() and len(clean_tiles) == 64
    for name, arr in clean_tiles.items():
        np.testing.assert_array_equal(lost_tiles[name], arr, err_msg=name)


def _server_of(runner: int) -> int | None:
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == runner and b"gisjob_worker.forkserver" in cmd:
            return int(pid)
    return None
