"""An output location belongs to one GisJob (issue 17 #1), on real commands: a job in
tenant-a plans, runs a tile and finalizes as its pods would (``$GISJOB_OWNER`` set as the
operator sets it); a job in tenant-b whose ``output.uri`` names the same folder is refused by
its planner, its workers and its finalizer, each exiting 2 with the owner in its result, and
not one file of the victim's location changes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from worker_helpers import WorkerRun, ndvi_job, run_cli, run_worker, write_job

from gisjob_worker.ownership import Owner, claim, owner_path
from gisjob_worker.plandesc import LOG_MARKER

pytestmark = pytest.mark.slow

VICTIM = {"GISJOB_OWNER": "tenant-a/victim/uid1"}
THIEF = {"GISJOB_OWNER": "tenant-b/thief/uid2"}
TILES = ["r0000c0000", "r0000c0001", "r0001c0000", "r0001c0001"]
Snapshot = dict[str, tuple[bytes, int]]


def _snapshot(out: Path) -> Snapshot:
    return {
        str(p.relative_to(out)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(out.rglob("*"))
        if p.is_file()
    }


def _result(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def _refusal(run: WorkerRun, out: Path, claimed_at: str) -> str:
    """The one-line error of a refused command, checked to name the victim."""
    assert run.code == 2, run.stderr[-2000:]
    (line,) = run.stderr.strip().splitlines()
    expected = (
        f"{out}: the output location belongs to GisJob tenant-a/victim (uid uid1, since "
        f"{claimed_at}); choose another spec.output.uri"
    )
    assert line == f"gisjob: error: {expected}"
    return expected


@pytest.fixture(scope="module")
def victim(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path, Snapshot]:
    """The victim's real location: planned (claimed), one tile run, finalized by hand —
    tiles, ledger and manifest in place. Returns (folder, victim job, thief job, snapshot)."""
    folder = tmp_path_factory.mktemp("owned")
    out = folder / "out"
    job = ndvi_job(folder, "victim", out, width=1024, tile=512)  # 4 tiles
    result = folder / "planner.json"
    planned = run_cli("planner", "--job", str(job), "--result", str(result), env=VICTIM)
    assert planned.code == 0, planned.stderr[-2000:]
    assert _result(result)["tiles"] == len(TILES)
    ran = run_worker(job, TILES[0], env={**VICTIM, "GISJOB_POD_NAME": "victim-0-0"})
    assert ran.code == 0, ran.stderr[-2000:]
    finalized = run_cli("finalize", "--job", str(job), env=VICTIM)
    assert finalized.code == 0, finalized.stderr[-2000:]
    assert (out / "tiles" / f"{TILES[0]}.tif").is_file() and (out / "manifest.json").is_file()
    assert len(list((out / ".gisjob" / "ledger").glob("*/*.json"))) == 1
    # the thief: another team's job, same image and data, and the victim's output folder
    thief = ndvi_job(folder, "thief", out, width=1024, tile=512)
    return folder, job, thief, _snapshot(out)


def _claimed_at(out: Path) -> str:
    record: dict[str, Any] = json.loads(owner_path(out).read_text())
    assert (record["namespace"], record["name"], record["uid"]) == ("tenant-a", "victim", "uid1")
    return str(record["claimedAt"])


def test_the_planner_claims_the_location_for_its_job(
    victim: tuple[Path, Path, Path, Snapshot],
) -> None:
    folder, job, _, snapshot = victim
    out = folder / "out"
    assert ".gisjob/owner.json" in snapshot
    _claimed_at(out)
    # the same job again — and re-created under the same name (a new uid): its own outputs
    for env in (VICTIM, {"GISJOB_OWNER": "tenant-a/victim/uid9"}):
        again = run_cli("planner", "--job", str(job), "--result", str(folder / "r.json"), env=env)
        assert again.code == 0, again.stderr[-2000:]
        assert _result(folder / "r.json")["complete"] == 1  # it resumes the tile it ran
    assert _snapshot(out) == snapshot


def test_another_jobs_planner_is_refused_and_changes_nothing(
    victim: tuple[Path, Path, Path, Snapshot],
) -> None:
    folder, job, thief, snapshot = victim
    out = folder / "out"
    claimed_at = _claimed_at(out)
    result = folder / "thief-planner.json"
    refused = run_cli("planner", "--job", str(thief), "--result", str(result), env=THIEF)
    expected = _refusal(refused, out, claimed_at)
    assert _result(result) == {"exitCode": 2, "error": expected}
    assert LOG_MARKER not in refused.stdout  # no descriptor for the operator
    # the victim's own name in another namespace is another job too
    same_name = run_cli(
        "planner", "--job", str(job), "--result", str(result),
        env={"GISJOB_OWNER": "tenant-b/victim/uid1"},
    )  # fmt: skip
    _refusal(same_name, out, claimed_at)
    assert _snapshot(out) == snapshot


def test_another_jobs_workers_write_nothing(victim: tuple[Path, Path, Path, Snapshot]) -> None:
    folder, _, thief, snapshot = victim
    out = folder / "out"
    claimed_at = _claimed_at(out)
    # a tile the victim finished (its output would be replaced) and one it has not run yet
    for tile in TILES[:2]:
        result = folder / f"thief-{tile}.json"
        run = run_worker(thief, tile, "--result", str(result), env=THIEF)
        expected = _refusal(run, out, claimed_at)
        record = _result(result)
        assert (record["tile"], record["outcome"], record["exitCode"]) == (tile, "input", 2)
        assert record["error"] == expected and record["job"] == "thief"
        assert "ledgerRecord" not in record and "output" not in record
        assert run.record == record
    assert _snapshot(out) == snapshot
    assert not (out / "tiles" / f"{TILES[1]}.tif").exists()


def test_another_jobs_finalizer_writes_and_deletes_nothing(
    victim: tuple[Path, Path, Path, Snapshot],
) -> None:
    folder, _, thief, snapshot = victim
    out = folder / "out"
    claimed_at = _claimed_at(out)
    result = folder / "thief-finalize.json"
    for view in (["--completed", "", "--failed", "0-3"], []):  # a view, and by hand
        refused = run_cli(
            "finalize", "--job", str(thief), *view, "--result", str(result), env=THIEF
        )
        expected = _refusal(refused, out, claimed_at)
        record = _result(result)
        assert (record["exitCode"], record["error"]) == (2, expected)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["job"] == "victim"
    assert _snapshot(out) == snapshot


def test_a_bad_input_is_reported_as_such_and_claims_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    job = ndvi_job(tmp_path, "broken", out, width=512, tile=256)
    doc = yaml.safe_load(job.read_text())
    doc["spec"]["input"]["uri"] = str(tmp_path / "missing.tif")
    write_job(job, doc)
    result = tmp_path / "planner.json"
    run = run_cli("planner", "--job", str(job), "--result", str(result), env=THIEF)
    assert run.code == 2
    assert "missing.tif" in _result(result)["error"]
    assert "belongs to" not in _result(result)["error"]
    assert not out.exists()


def test_a_garbled_identity_is_refused_not_ignored(tmp_path: Path) -> None:
    out = tmp_path / "out"
    job = ndvi_job(tmp_path, "garbled", out, width=512, tile=256)
    run = run_worker(job, "r0000c0000", env={"GISJOB_OWNER": "tenant-b/thief"})
    assert run.code == 2
    assert run.record is not None and "$GISJOB_OWNER: expected" in str(run.record["error"])
    assert not out.exists()


def test_a_local_run_neither_claims_nor_checks(tmp_path: Path) -> None:
    """``gisjob run``: the user owns the machine's file system — even with a pod's identity
    inherited in its environment, it writes where it is told and leaves no owner record."""
    owned, free = tmp_path / "owned", tmp_path / "free"
    claim(owned, Owner("tenant-a", "victim", "uid1"))
    record = owner_path(owned).read_bytes()
    for out in (owned, free):
        job = ndvi_job(tmp_path, f"local-{out.name}", out, width=512, tile=256)
        run = run_cli("run", str(job), "--workers", "1", env=THIEF)
        assert run.code == 0, run.stderr[-2000:]
        assert json.loads((out / "manifest.json").read_text())["outcome"] == "succeeded"
    assert owner_path(owned).read_bytes() == record
    assert not owner_path(free).exists()


def test_a_worker_that_does_not_see_the_claimed_location_writes_nothing(tmp_path: Path) -> None:
    """The planner claimed ``out`` on the shared volume; a worker pod without that volume
    sees an empty folder in its own file system — it refuses instead of writing a tile
    nobody will read."""
    job = ndvi_job(tmp_path, "victim", tmp_path / "pod-local", width=512, tile=512)
    run = run_worker(job, TILES[0], env={**VICTIM, "GISJOB_POD_NAME": "victim-0-0"})
    assert run.code == 2
    assert "this pod does not see it" in run.stderr
    assert not (tmp_path / "pod-local" / "tiles").exists()
