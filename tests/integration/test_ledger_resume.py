"""One tile ledger for both executors, on real workers: ``gisjob run`` resumes what pods
recorded and the finalizer finishes what ``gisjob run`` started; torn records; outputs are
deleted only when the ledger marks them superseded (user files never); a failure to record
leaves every finished output in place; a SIGKILL is an out-of-memory failure only when the
cgroup (or kernel) confirms it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from worker_helpers import GISJOB, ndvi_job, run_cli, run_worker, write_job

from gisjob_worker.ledger import LedgerRecord
from gisjob_worker.ledgerstore import LocalLedgerStore, list_all

pytestmark = pytest.mark.slow
TILES = ["r0000c0000", "r0000c0001", "r0001c0000", "r0001c0001"]


def _job(tmp_path: Path, name: str = "lg", tile: int = 1024, **spec: Any) -> Path:
    job = ndvi_job(tmp_path, name, tmp_path / "out", tile=tile)
    if spec:
        doc = yaml.safe_load(job.read_text())
        doc["spec"].update(spec)
        write_job(job, doc)
    return job


def _manifest(out: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((out / "manifest.json").read_text())
    return data


def _records(out: Path) -> list[LedgerRecord]:
    return list_all(LocalLedgerStore(out))


def _arrays(out: Path) -> dict[str, np.ndarray]:
    import rasterio

    got = {}
    for p in sorted((out / "tiles").glob("r*.tif")):
        with rasterio.open(p) as ds:
            got[p.name] = ds.read()
    return got


def _mosaic(out: Path) -> np.ndarray:
    import rasterio

    with rasterio.open(out / "mosaic.vrt") as ds:
        data: np.ndarray = ds.read()
    return data


def _summary(report: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((report / "summary.json").read_text())
    return data


def _as_pod(job: Path, tile: str, attempt: int = 0) -> None:
    """What a worker pod does: the same ``gisjob worker``, told its attempt by env."""
    env = {"GISJOB_ATTEMPT": str(attempt), "GISJOB_POD_NAME": f"lg-{tile}-{attempt}"}
    run = run_worker(job, tile, env=env)
    assert run.code == 0, run.stderr[-2000:]


# ---------------------------------------------------------------- both executors, one ledger


def test_run_resumes_the_tiles_the_operators_workers_recorded(tmp_path: Path) -> None:
    job = _job(tmp_path)
    out = tmp_path / "out"
    for tile in TILES[:2]:
        _as_pod(job, tile)
    before = {t: (out / "tiles" / f"{t}.tif").stat().st_mtime_ns for t in TILES[:2]}
    run = run_cli("run", str(job), "--workers", "2", "--report", str(tmp_path / "rep"))
    assert run.code == 0, run.stderr[-2000:]
    assert _summary(tmp_path / "rep")["resumed"] == 2
    for t in TILES[:2]:  # not redone: the pods' outputs are the run's
        assert (out / "tiles" / f"{t}.tif").stat().st_mtime_ns == before[t]
    records = _records(out)
    by_tile = {r.tile: r for r in records}
    assert {t: by_tile[t].pod for t in TILES} == {
        TILES[0]: f"lg-{TILES[0]}-0",
        TILES[1]: f"lg-{TILES[1]}-0",
        TILES[2]: None,
        TILES[3]: None,
    }
    assert len(records) == 4 and all(r.writer == "worker" for r in records)
    manifest = _manifest(out)
    assert manifest["outcome"] == "succeeded"
    assert [t["id"] for t in manifest["tiles"]] == TILES
    assert manifest["tiles"][0]["attempts"][0]["pod"] == f"lg-{TILES[0]}-0"
    clean = ndvi_job(tmp_path, "clean", tmp_path / "clean")
    assert run_cli("run", str(clean)).code == 0
    np.testing.assert_array_equal(_mosaic(out), _mosaic(tmp_path / "clean"))


def test_the_finalizer_finishes_an_interrupted_run_with_the_operators_view(
    tmp_path: Path,
) -> None:
    """``gisjob run`` is interrupted; pods run the rest; ``gisjob finalize`` with the
    operator's view writes the manifest and mosaic of all tiles. Before the pods ran, the
    same view is refused (tiles without records), and nothing is written or deleted."""
    job = _job(tmp_path, tile=512)  # 16 tiles
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [GISJOB, "run", str(job), "--workers", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    ledger = out / ".gisjob" / "ledger"
    deadline = time.monotonic() + 120
    while not (ledger.is_dir() and len(list(ledger.glob("*/*.json"))) >= 3):
        assert proc.poll() is None, "the run ended before it could be interrupted"
        assert time.monotonic() < deadline, "no tile finished in 120 s"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(60) == 130
    manifest = _manifest(out)
    assert manifest["outcome"] == "interrupted"
    done = {t["id"] for t in manifest["tiles"] if t["outcome"] == "succeeded"}
    rest = [t["id"] for t in manifest["tiles"] if t["outcome"] != "succeeded"]
    assert len(done) >= 3 and rest
    snapshot = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    result = tmp_path / "finalize.json"
    refused = run_cli("finalize", "--job", str(job), "--completed", "0-15", "--result", str(result))
    assert refused.code == 1
    (line,) = refused.stderr.strip().splitlines()
    assert line.startswith("gisjob: error: ") and "operator counts as completed" in line
    assert rest[0] in line and next(iter(done)) not in line
    assert json.loads(result.read_text())["exitCode"] == 1
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == snapshot
    # without a view (by hand): states from the recorded attempts; the rest is pending
    by_hand = run_cli("finalize", "--job", str(job))
    assert by_hand.code == 0, by_hand.stderr[-2000:]
    assert json.loads(by_hand.stdout)["tiles"]["pending"] == len(rest)
    assert _manifest(out)["pendingTiles"] == sorted(rest)
    for tile in rest:  # the operator's pods: attempts numbered from 0 by the operator
        _as_pod(job, tile)
    ok = run_cli("finalize", "--job", str(job), "--completed", "0-15", "--failed", "")
    assert ok.code == 0, ok.stderr[-2000:]
    res = json.loads(ok.stdout.strip().splitlines()[-1])
    assert res["exitCode"] == 0 and res["outcome"] == "succeeded"
    assert res["tiles"] == {"planned": 16, "succeeded": 16, "failed": 0, "pending": 0, "split": 0}
    assert res["manifest"] == str(out / "manifest.json")
    assert len(json.dumps(res)) <= 4096
    assert _manifest(out)["outcome"] == "succeeded"
    clean = ndvi_job(tmp_path, "clean", tmp_path / "clean", tile=512)
    assert run_cli("run", str(clean)).code == 0
    np.testing.assert_array_equal(_mosaic(out), _mosaic(tmp_path / "clean"))
    assert _arrays(out).keys() == _arrays(tmp_path / "clean").keys()


def test_a_torn_record_is_skipped_and_its_tile_redone(tmp_path: Path) -> None:
    job = _job(tmp_path)
    out = tmp_path / "out"
    assert run_cli("run", str(job)).code == 0
    (victim,) = (out / ".gisjob" / "ledger").glob(f"*/{TILES[1]}.*.json")
    victim.write_text(victim.read_text()[:30])  # torn: cut mid-record
    run = run_cli("run", str(job), "--report", str(tmp_path / "rep"))
    assert run.code == 0, run.stderr[-2000:]
    assert _summary(tmp_path / "rep")["resumed"] == 3
    assert '"ledger.skipped"' in run.stderr and str(victim) in run.stderr
    assert _manifest(out)["outcome"] == "succeeded"


def test_old_journal_files_are_ignored(tmp_path: Path) -> None:
    """A journal of an earlier version that claims every tile complete — in both old line
    forms, for this very plan and its outputs as they are — is not read: without ledger
    records the tiles run again (an old journal can neither crash nor skip a resume)."""
    import shutil

    job = _job(tmp_path)
    out = tmp_path / "out"
    first = run_cli("run", str(job))
    assert first.code == 0, first.stderr[-2000:]
    manifest = _manifest(out)
    lines = []
    for tile in manifest["tiles"]:
        st = (out / tile["output"]).stat()
        entry = {**tile, "bytes": st.st_size, "mtimeNs": st.st_mtime_ns}
        lines.append({"digest": manifest["digest"], "tile": entry})  # the local runner's
        lines.append({"digest": manifest["digest"], "record": {"tile": tile["id"]}})  # operator
    shutil.rmtree(out / ".gisjob" / "ledger")
    (out / ".gisjob" / "journal.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    before = {t["id"]: (out / t["output"]).stat().st_mtime_ns for t in manifest["tiles"]}
    run = run_cli("run", str(job))
    assert run.code == 0, run.stderr[-2000:]
    again = _manifest(out)
    assert again["outcome"] == "succeeded"
    after = {t["id"]: (out / t["output"]).stat().st_mtime_ns for t in again["tiles"]}
    assert all(after[k] != before[k] for k in before), "a tile was skipped on an old journal"


# ------------------------------------------------------------------ what a job may delete


def test_user_files_survive_and_old_digest_outputs_are_superseded_on_replan(
    tmp_path: Path,
) -> None:
    job = _job(tmp_path, tile=512)  # 16 tiles: r0000c0000 .. r0003c0003
    out = tmp_path / "out"
    for sub in ("tiles", "parts"):
        (out / sub).mkdir(parents=True)
    user = {
        "tiles/notes.txt": b"my notes",
        "tiles/r0009c0009.tif": b"looks like ours, but nobody recorded it",
        "tiles/.r0000c0000.tmp-mine.tif": b"a hidden file of mine",
        "parts/data.parquet": b"not ours",
    }
    for rel, data in user.items():
        (out / rel).write_bytes(data)
    assert run_cli("run", str(job)).code == 0
    assert all((out / rel).read_bytes() == data for rel, data in user.items())
    old = {p.name for p in (out / "tiles").glob("r000[0-3]c000[0-3].tif")}
    assert len(old) == 16
    # a changed plan (1024-pixel tiles): 4 tiles; 12 outputs of the old plan are superseded
    doc = yaml.safe_load(job.read_text())
    doc["spec"]["tiling"]["tileSize"] = 1024
    write_job(job, doc)
    assert run_cli("run", str(job)).code == 0
    assert all((out / rel).read_bytes() == data for rel, data in user.items())
    now = sorted(p.name for p in (out / "tiles").glob("r000[0-3]c000[0-3].tif"))
    assert now == [f"{t}.tif" for t in TILES]
    assert _manifest(out)["outcome"] == "succeeded"
    # a file at an old output's path that is not the file its record describes (someone
    # wrote it since): nobody's to delete either
    stranger = out / "tiles" / "r0003c0003.tif"
    stranger.write_bytes(b"someone rewrote an old output")
    assert run_cli("run", str(job)).code == 0
    assert stranger.read_bytes() == b"someone rewrote an old output"


READ_ONLY_LEDGER = """
set -e
mkdir -p "$LEDGER"
mount --bind "$LEDGER" "$LEDGER"
mount -o remount,ro,bind "$LEDGER"
exec "$@"
"""


def _with_read_only_ledger(out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``gisjob ARGS`` in a mount namespace of its own where the ledger folder is
    read-only (root ignores file modes; a read-only mount stops even root)."""
    return subprocess.run(
        ["unshare", "--mount", "sh", "-c", READ_ONLY_LEDGER, "sh", GISJOB, *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "LEDGER": str(out / ".gisjob" / "ledger")},
        check=False,
    )


@pytest.fixture(scope="module")
def can_unshare() -> None:
    probe = subprocess.run(
        ["unshare", "--mount", "true"], capture_output=True, text=True, check=False
    )
    if probe.returncode != 0:
        pytest.skip(f"no mount namespace here: {probe.stderr.strip()}")


@pytest.mark.usefixtures("can_unshare")
def test_a_failure_to_record_fails_the_tiles_and_deletes_no_finished_output(
    tmp_path: Path,
) -> None:
    """Defect 9.2: finished tiles without a record became failed and their outputs were
    deleted. Now: every worker writes its output, cannot record it, exits 1 saying so; the
    tiles are retried and fail; every output stays; the finalizer refuses a view that calls
    them completed, before anything is written or deleted."""
    job = _job(tmp_path, retry={"backoffLimit": 1})
    out = tmp_path / "out"
    assert run_cli("run", str(job)).code == 0  # recorded under this digest
    recorded = {p.name: p.stat().st_mtime_ns for p in (out / "tiles").iterdir()}
    run = _with_read_only_ledger(out, "run", str(job), "--no-resume", "--no-fork-server")
    assert run.returncode == 1, run.stderr[-3000:]
    tiles = {p.name: p.stat().st_mtime_ns for p in (out / "tiles").iterdir()}
    assert tiles.keys() == recorded.keys()  # all there ...
    assert all(tiles[k] != recorded[k] for k in tiles)  # ... as rewritten by the new run
    arrays = _arrays(out)
    assert len(arrays) == 4  # every rewritten output is whole
    manifest = _manifest(out)
    assert manifest["outcome"] == "failed" and manifest["failedTiles"] == TILES
    for tile in manifest["tiles"]:
        attempts = tile["attempts"]
        assert len(attempts) == 2  # retried once (backoffLimit 1), then failed
        assert all("could not record the outcome in" in a["error"] for a in attempts)
        assert "Read-only file system" in attempts[-1]["error"]
    events = [json.loads(x) for x in run.stderr.splitlines() if x.startswith("{")]
    assert any(e.get("event") == "ledger-error" for e in events)
    # the operator (wrongly) counts them completed: refused, nothing touched
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    refused = run_cli("finalize", "--job", str(job), "--completed", "0-3")
    assert refused.code == 1 and "r0000c0000, r0000c0001" in refused.stderr
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


@pytest.mark.usefixtures("can_unshare")
def test_a_worker_that_cannot_record_exits_1_saying_where_and_why(tmp_path: Path) -> None:
    job = _job(tmp_path)
    out = tmp_path / "out"
    result = tmp_path / "result.json"
    run = _with_read_only_ledger(
        out, "worker", "--job", str(job), "--tile", TILES[0], "--result", str(result)
    )
    assert run.returncode == 1
    record = json.loads(result.read_text())
    ledger = out / ".gisjob" / "ledger"
    assert record["outcome"] == "error" and record["exitCode"] == 1
    assert record["error"].startswith(f"could not record the outcome in {ledger}/")
    assert (
        "Read-only file system" in record["error"] and "own outcome: succeeded" in record["error"]
    )
    assert run.stderr.strip().splitlines()[-1] == f"gisjob: error: {record['error']}"
    assert (out / "tiles" / f"{TILES[0]}.tif").exists()  # written, kept, unrecorded


# ------------------------------------------------------------------------------- kills

KILLED_ONCE = """
import os, signal, sys
from pathlib import Path

marker = Path(sys.argv[1])
if not marker.exists():
    marker.write_text("x")
    if sys.argv[2] == "oom":  # touch memory until the cgroup's limit kills us
        hog = []
        while True:
            hog.append(b"x" * (32 * 2**20))
    os.kill(os.getpid(), signal.SIGKILL)
from gisjob_worker.cli.main import main

sys.argv = ["gisjob", *sys.argv[3:]]
main()
"""


def _run_in_process(tmp_path: Path, how: str, cgroups: bool) -> dict[str, Any]:
    """One-tile job; its first worker dies (SIGKILL, or an OOM kill in its cgroup)."""
    from gisjob_worker.executor import LocalExecutor, RunOptions
    from gisjob_worker.planner import build_plan
    from gisjob_worker.spec import load_job

    job_file = ndvi_job(tmp_path, "kill", tmp_path / "out", width=512, tile=512)
    script = tmp_path / "killed_once.py"
    script.write_text(KILLED_ONCE)
    job = load_job(job_file)
    options = RunOptions(
        job_file=job_file,
        workers=1,
        allowance=8 * 2**30,
        use_cgroups=cgroups,
        backoff_base=0.0,
        worker_command=(sys.executable, str(script), str(tmp_path / "marker"), how),
    )
    result = LocalExecutor(job, build_plan(job), options).run()
    assert result.succeeded
    (tile,) = result.manifest["tiles"]
    return tile  # type: ignore[no-any-return]


@pytest.mark.parametrize("cgroups", [True, False], ids=["cgroup", "no-cgroup"])
def test_a_sigkill_without_a_confirmed_oom_is_a_disruption(tmp_path: Path, cgroups: bool) -> None:
    """Issue 15 #11: a SIGKILLed worker was recorded as out of memory and grown x1.5."""
    tile = _run_in_process(tmp_path, "kill", cgroups)
    first, second = tile["attempts"]
    assert first["exitCode"] == 137 and first["writer"] == "runner"
    assert first["oomKilled"] is False and first["disrupted"] is True
    assert first["outcome"] == "disruption"
    assert "without an out-of-memory kill" in first["error"]
    assert second["strategy"] == "disrupted" and second["writer"] == "worker"
    assert second["memory"] == first["memory"] and second["chunkScale"] == first["chunkScale"]
    assert tile["outcome"] == "succeeded"


@pytest.mark.cgroup
def test_an_oom_kill_its_cgroup_counted_is_a_memory_failure(tmp_path: Path) -> None:
    from gisjob_worker.cgroup import create_child

    probe = create_child(f"gisjob-test-probe-{os.getpid()}", 64 * 2**20)
    if probe is None:
        pytest.skip("no writable cgroup memory controller (v1 or v2) on this machine")
    probe.remove()
    tile = _run_in_process(tmp_path, "oom", True)
    first, second = tile["attempts"]
    assert first["exitCode"] == 137 and first["oomKilled"] is True
    assert first["disrupted"] is False and first["outcome"] == "memory"
    assert second["strategy"] == "shrinkChunks" and second["chunkScale"] == 0.5
    assert second["memory"] == first["memory"]


def test_finalize_input_errors_exit_2_with_a_result(tmp_path: Path) -> None:
    result = tmp_path / "result.json"
    missing = run_cli("finalize", "--job", str(tmp_path / "nope.yaml"), "--result", str(result))
    assert missing.code == 2
    (line,) = missing.stderr.strip().splitlines()
    assert line.startswith("gisjob: error: ") and "nope.yaml" in line
    assert json.loads(result.read_text())["exitCode"] == 2
    job = _job(tmp_path)
    bad = run_cli("finalize", "--job", str(job), "--completed", "0-x")
    assert bad.code == 2 and "--completed" in bad.stderr
    assert not (tmp_path / "out").exists()
