"""The operator as a pure control plane: the plan comes from a planner pod, the manifest from
a finalizer pod; the operator process never loads the data stack.

The planner's output here is the real ``gisjob planner`` command's (run on a real raster);
the controller ticks against an in-memory API (tests/unit/opsim.py) where pods finish the
ways real nodes finish them — including without ``finishedAt`` or an exit code.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from opsim import UID, Stage

from conftest import write_raster
from gisjob_worker import plandesc
from gisjob_worker.plan import Plan
from gisjob_worker.planner import build_plan
from gisjob_worker.spec import parse_job

HERE = Path(__file__).parent


def _spec(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    src = tmp_path / "in.tif"
    if not src.exists():
        write_raster(src, width=512, height=384, count=2, block=64)
    spec: dict[str, Any] = {
        "input": {"uri": str(src)},
        "operation": {"name": "ndvi", "params": {"nir": 2, "red": 1}},
        "output": {"uri": str(tmp_path / "out"), "format": "GTiff"},
        "tiling": {"tileSize": 128},
        "parallelism": 4,
        "worker": {"image": "gisjob:test"},
    }
    spec.update(extra)
    return spec


def run_planner(spec: dict[str, Any], tmp_path: Path) -> tuple[dict[str, Any], str, int]:
    """The real planner command on this spec, in a process of its own as in its pod:
    (termination record, stdout log, exit code)."""
    doc = {"apiVersion": "gisjob.dev/v1alpha1", "kind": "GisJob", "metadata": {"name": "j"}}
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({**doc, "spec": spec}))
    result = tmp_path / "planner-result.json"
    gisjob = Path(sys.executable).parent / "gisjob"
    run = subprocess.run(
        [str(gisjob), "planner", "--job", str(job), "--result", str(result)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    return json.loads(result.read_text()), run.stdout, run.returncode


def planned_stage(tmp_path: Path, **settings: Any) -> tuple[Stage, dict[str, Any]]:
    spec = _spec(tmp_path)
    stage = Stage(spec, **settings)
    assert stage.tick() == "Planning"
    (planner,) = stage.pods("planner")
    assert planner["spec"]["containers"][0]["command"] == ["gisjob", "planner"]
    record, _log, code = run_planner(spec, tmp_path)
    assert code == 0
    stage.finish(planner["metadata"]["name"], exit_code=0, message=json.dumps(record))
    return stage, record


def _plan_of(spec: dict[str, Any]) -> Plan:
    doc = {"apiVersion": "gisjob.dev/v1alpha1", "kind": "GisJob", "metadata": {"name": "j"}}
    return build_plan(parse_job({**doc, "spec": spec}))


def test_descriptor_round_trip_lays_the_planners_tiles(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    plan = _plan_of(spec)
    desc = plandesc.descriptor(plan, 128, 100_000)
    text, sha = plandesc.encode(desc)
    again = plandesc.from_descriptor(plandesc.decode(text, sha))
    assert again.tiles == plan.tiles
    assert again.files == plan.files
    assert again.sizing == plan.sizing
    assert again.digest == plan.digest
    with pytest.raises(plandesc.DescriptorError, match="checksum"):
        plandesc.decode(text[:-4], sha)
    with pytest.raises(plandesc.DescriptorError, match="version"):
        plandesc.from_descriptor({**desc, "v": 99})
    with pytest.raises(plandesc.DescriptorError, match="tiles"):
        plandesc.from_descriptor({**desc, "tiles": 3})


def test_a_100k_tile_plan_fits_inline_in_a_termination_message(tmp_path: Path) -> None:
    """One large raster: 100,000 tiles from a descriptor of a few hundred bytes."""
    spec = _spec(tmp_path)
    plan = _plan_of(spec)
    desc = plandesc.descriptor(plan, 128, 100_000)
    (f,) = desc["files"]
    f.update(width=128 * 400, height=128 * 250)
    desc["tiles"] = 100_000
    text, sha = plandesc.encode(desc)
    assert len(text) < 1000
    big = plandesc.from_descriptor(plandesc.decode(text, sha))
    assert len(big.tiles) == 100_000
    assert big.tiles[-1].id == "r0249c0399"


def test_planner_pod_then_workers_then_finalizer_pod(tmp_path: Path) -> None:
    stage, record = planned_stage(tmp_path)
    assert "descriptor" in record  # small plan: inline, no log read
    assert stage.status["phase"] == "Planning"
    stage.tick()
    assert stage.status["phase"] == "Running"
    assert stage.status["plan"]["tiles"] == 12
    assert stage.status["plan"]["digest"] == record["digest"]
    assert stage.kube.log_reads == []
    for _ in range(20):
        stage.tick()
        stage.succeed_workers()
        if stage.pods("finalizer"):
            break
    (fin,) = stage.pods("finalizer")
    cmd = fin["spec"]["containers"][0]["command"]
    assert cmd[:2] == ["gisjob", "finalize"]
    assert cmd[cmd.index("--completed") + 1] == "0-11"
    assert cmd[cmd.index("--failed") + 1] == ""
    stage.tick()
    assert stage.status["phase"] == "Running"  # not Succeeded before the finalizer is done
    assert any(c["reason"] == "Finalizing" for c in stage.status["conditions"])
    manifest = str(tmp_path / "out" / "manifest.json")
    stage.finish(
        fin["metadata"]["name"],
        exit_code=0,
        message=json.dumps({"exitCode": 0, "manifest": manifest}),
    )
    stage.tick()
    assert stage.status["phase"] == "Succeeded"
    assert stage.status["outputs"] == {"manifest": manifest}
    # the operator itself wrote nothing into the output location
    assert not (tmp_path / "out").exists()
    stage.tick()  # finished: succeeded pods cleaned up
    assert not stage.pods("finalizer") and not stage.pods("planner")


def test_large_descriptor_comes_from_the_planner_pods_log(tmp_path: Path) -> None:
    stage, record = planned_stage(tmp_path)
    (planner,) = stage.pods("planner")
    name = planner["metadata"]["name"]
    _, log, _ = run_planner(_spec(tmp_path), tmp_path)
    inline = record.pop("descriptor")
    stage.finish(name, exit_code=0, message=json.dumps(record))
    stage.kube.logs[name] = "some log line\n" + log
    stage.tick()
    assert stage.kube.log_reads == [name]
    assert stage.status["plan"]["digest"] == record["digest"]
    assert plandesc.find_in_log(log) == inline


def test_truncated_log_descriptor_is_a_clear_failure_not_a_wrong_plan(tmp_path: Path) -> None:
    stage, record = planned_stage(tmp_path)
    (planner,) = stage.pods("planner")
    name = planner["metadata"]["name"]
    _, log, _ = run_planner(_spec(tmp_path), tmp_path)
    record.pop("descriptor")
    stage.finish(name, exit_code=0, message=json.dumps(record))
    stage.kube.logs[name] = log[: len(log) // 2]
    stage.tick()
    assert stage.status["phase"] == "Failed"
    assert "checksum" in stage.status["message"] or "decoded" in stage.status["message"]
    assert stage.pods("worker") == []


def test_planner_input_error_fails_the_job_once_with_the_planners_message(
    tmp_path: Path,
) -> None:
    spec = _spec(tmp_path, input={"uri": str(tmp_path / "missing.tif")})
    stage = Stage(spec)
    stage.tick()
    (planner,) = stage.pods("planner")
    record, _, code = run_planner(spec, tmp_path)
    assert code == 2 and "input file not found" in record["error"]
    stage.finish(
        planner["metadata"]["name"], exit_code=2, message=json.dumps(record), reason="Error"
    )
    stage.tick()
    assert stage.status["phase"] == "Failed"
    assert "missing.tif" in stage.status["message"]
    writes = stage.kube.status_writes
    for _ in range(3):
        stage.tick()
    assert stage.kube.status_writes == writes  # once, no retry loop
    assert len(stage.pods("planner")) == 1


def test_evicted_planner_pod_without_finished_at_is_retried_with_a_reason(
    tmp_path: Path,
) -> None:
    """Defect 7 (transient plan-time errors become Failed) and the pod shape of defect 1."""
    spec = _spec(tmp_path)
    stage = Stage(spec, backoff_base=0.0)
    stage.tick()
    (first,) = stage.pods("planner")
    stage.finish(first["metadata"]["name"], exit_code=None, evicted=True)
    stage.tick()
    assert stage.status["phase"] == "Planning"
    (second,) = stage.pods("planner")
    assert second["metadata"]["name"].endswith("-1")
    assert any(e[1] == "PlannerRetry" and "Evicted" in e[2] for e in stage.kube.events)
    record, _, _ = run_planner(spec, tmp_path)
    stage.finish(second["metadata"]["name"], exit_code=0, message=json.dumps(record))
    stage.tick()
    assert stage.status["phase"] == "Running"


def test_transient_planner_failures_are_bounded(tmp_path: Path) -> None:
    stage = Stage(_spec(tmp_path), role_pod_retries=3)
    for _ in range(3):
        stage.tick()
        (pod,) = stage.pods("planner")
        stage.finish(
            pod["metadata"]["name"],
            exit_code=1,
            message=json.dumps({"exitCode": 1, "error": "OSError: timeout"}),
        )
    stage.tick()
    assert stage.status["phase"] == "Failed"
    assert "OSError: timeout" in stage.status["message"]
    assert "3 attempts" in stage.status["message"]


def test_finalizer_failure_to_verify_the_ledger_never_reports_success(tmp_path: Path) -> None:
    stage, _ = planned_stage(tmp_path)
    for _ in range(20):
        stage.tick()
        stage.succeed_workers()
        if stage.pods("finalizer"):
            break
    stage.ctx.settings.role_pod_retries = 1
    (fin,) = stage.pods("finalizer")
    error = "tiles r0000c0001 completed per the operator have no ledger record"
    stage.finish(
        fin["metadata"]["name"],
        exit_code=1,
        message=json.dumps({"exitCode": 1, "error": error}),
        reason="Error",
    )
    stage.tick()
    assert stage.status["phase"] == "Failed"
    assert error in stage.status["message"]
    assert any(e[1] == "FinalizeFailed" for e in stage.kube.events)


def test_spec_change_of_parallelism_needs_no_new_planner(tmp_path: Path) -> None:
    stage, _ = planned_stage(tmp_path)
    stage.tick()
    stage.kube.body["spec"]["parallelism"] = 2
    stage.kube.body["metadata"]["generation"] = 2
    stage.tick()
    assert len(stage.pods("planner")) == 1
    stage.kube.body["spec"]["tiling"] = {"tileSize": 256}
    stage.kube.body["metadata"]["generation"] = 3
    stage.tick()
    assert len(stage.pods("planner")) == 2  # a new spec: a new planner pod


def test_operator_process_never_loads_the_data_stack(tmp_path: Path) -> None:
    """Load the ``gisjob-operator`` entry point and take a job from planning to finished in
    a fresh interpreter (the planner's output precomputed): no GDAL, Arrow or NumPy."""
    stage_spec = _spec(tmp_path)
    record, _, _ = run_planner(stage_spec, tmp_path)
    script = textwrap.dedent(
        f"""
        import json, sys
        from importlib.metadata import entry_points
        sys.path.insert(0, {str(HERE)!r})
        (ep,) = [e for e in entry_points(group="console_scripts") if e.name == "gisjob-operator"]
        ep.load()
        import gisjob_operator.handlers  # kopf handlers, as `gisjob-operator run` loads them
        from opsim import Stage
        stage = Stage(json.loads({json.dumps(json.dumps(stage_spec))}))
        stage.tick()
        (planner,) = stage.pods("planner")
        stage.finish(planner["metadata"]["name"], exit_code=0,
                     message={json.dumps(json.dumps(record))})
        for _ in range(30):
            stage.tick()
            stage.succeed_workers()
            fins = stage.pods("finalizer")
            if fins:
                stage.finish(fins[0]["metadata"]["name"], exit_code=0,
                             message=json.dumps({{"exitCode": 0, "manifest": "/m.json"}}))
        assert stage.status["phase"] == "Succeeded", stage.status
        heavy = ("rasterio", "pyogrio", "pyarrow", "numpy", "geopandas", "pandas", "osgeo",
                 "shapely", "pyproj")
        print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in heavy)))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_operator_resumes_an_output_location_a_local_run_wrote(tmp_path: Path) -> None:
    """Tiles whose outputs another run (local or a cluster's workers) completed for the same
    plan are reported by the planner pod and never run again by the operator."""
    spec = _spec(tmp_path)
    doc = {"apiVersion": "gisjob.dev/v1alpha1", "kind": "GisJob", "metadata": {"name": "j"}}
    job_file = tmp_path / "job.yaml"
    job_file.write_text(yaml.safe_dump({**doc, "spec": spec}))
    gisjob = Path(sys.executable).parent / "gisjob"
    for tile in ("r0000c0000", "r0001c0002"):  # what a worker (pod or local) leaves behind
        run = subprocess.run(
            [str(gisjob), "worker", "--job", str(job_file), "--tile", tile,
             "--result", str(tmp_path / f"{tile}.json")],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr[-2000:]
    stage = Stage(spec)
    stage.tick()
    (planner,) = stage.pods("planner")
    record, _, code = run_planner(spec, tmp_path)
    assert code == 0 and record["complete"] == 2
    stage.finish(planner["metadata"]["name"], exit_code=0, message=json.dumps(record))
    stage.tick()
    assert stage.status["completedTiles"] == "0,6"
    assert any(e[1] == "Resumed" and "2 of 12" in e[2] for e in stage.kube.events)
    launched: set[str] = set()
    for _ in range(20):
        stage.tick()
        launched |= {p["metadata"]["labels"]["gisjob.dev/tile"] for p in stage.pods("worker")}
        stage.succeed_workers()
        if stage.pods("finalizer"):
            break
    assert len(launched) == 10 and not launched & {"r0000c0000", "r0001c0002"}


def _role_pod(attempt: int, phase: str, **term: Any) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": phase}
    if term:
        status["containerStatuses"] = [{"name": "planner", "state": {"terminated": term}}]
    return {
        "metadata": {
            "name": f"j-plan-k-{attempt}",
            "labels": {"gisjob.dev/role": "planner", "gisjob.dev/attempt": str(attempt)},
            "annotations": {"gisjob.dev/spec-hash": "k"},
        },
        "status": status,
    }


def test_role_step_decisions_are_pure_and_bounded() -> None:
    from gisjob_operator.rolepods import role_step

    def step(pods: list[dict[str, Any]], now: float = 100.0, seen: float = 100.0) -> Any:
        return role_step(pods, "planner", now, seen, 3, 10.0, 60.0)

    assert step([]).create == 0
    assert step([_role_pod(0, "Running")]).state == "running"
    ok = json.dumps({"exitCode": 0, "digest": "d"})
    done = step([_role_pod(0, "Succeeded", exitCode=0, message=ok)])
    assert done.state == "done" and done.record == {"exitCode": 0, "digest": "d"}
    bad = json.dumps({"exitCode": 2, "error": "x.tif: input file not found"})
    failed = step([_role_pod(0, "Failed", exitCode=2, message=bad)])
    assert failed.state == "failed" and failed.message == "x.tif: input file not found"
    # transient, with a finishedAt: wait out the backoff (10 s), then the next attempt
    t = "2026-12-04T10:00:00Z"
    flaky = [_role_pod(0, "Failed", exitCode=1, finishedAt=t)]
    from gisjob_operator.podview import parse_time

    at = parse_time(t)
    assert at is not None
    waiting = step(flaky, now=at + 5)
    assert waiting.state == "running" and waiting.create is None
    again = step(flaky, now=at + 11)
    assert again.create == 1 and again.delete == ["j-plan-k-0"] and again.retry
    # an evicted pod has no finishedAt: the backoff counts from when it was first seen
    evicted = [{**_role_pod(1, "Failed"), "status": {"phase": "Failed", "reason": "Evicted"}}]
    assert step(evicted, now=105.0, seen=100.0).create is None
    assert step(evicted, now=200.0, seen=100.0).create == 2
    # bounded: the third failure is final
    last = step([_role_pod(2, "Failed", exitCode=137, reason="OOMKilled")])
    assert last.state == "failed" and "OOMKilled" in last.message and "3 attempts" in last.message
    # past activeDeadlineSeconds (kubelet: phase Failed, reason DeadlineExceeded, no exit
    # code): the same input would take as long again — failed at once, saying so
    late = {
        **_role_pod(0, "Failed"),
        "spec": {"activeDeadlineSeconds": 900},
        "status": {"phase": "Failed", "reason": "DeadlineExceeded", "message": "Pod was active "
                   "on the node longer than the specified deadline"},
    }  # fmt: skip
    over = step([late])
    assert over.state == "failed" and over.create is None
    assert over.message.startswith("planner pod ran longer than its 900 s deadline: ")


def test_a_pod_the_api_server_rejects_fails_the_job_once_with_its_message(
    tmp_path: Path,
) -> None:
    """A 4xx on create (an invalid or forbidden pod the CRD schema let through): Failed with
    the API's message and an event — no traceback every tick, no retry loop."""
    from gisjob_operator.kube import PodRejected

    stage, _ = planned_stage(tmp_path)
    stage.tick()  # planned
    message = (
        'Pod "cp-job-r0000c0000-0" is invalid: spec.volumes[1].name: Invalid value: "Data": '
        "a lowercase RFC 1123 label must consist of lower case alphanumeric characters"
    )

    def refuse(namespace: str, body: dict[str, Any]) -> bool:
        raise PodRejected(body["metadata"]["name"], 422, message)

    stage.kube.create_pod = refuse  # type: ignore[method-assign]
    stage.tick()
    assert stage.status["phase"] == "Failed"
    assert "rejected pod cp-job-r0000c0000-0 (422)" in stage.status["message"]
    assert "spec.volumes[1].name" in stage.status["message"]
    assert any(e[1] == "PodRejected" for e in stage.kube.events)
    writes = stage.kube.status_writes
    for _ in range(3):
        stage.tick()
    assert stage.kube.status_writes == writes


def test_server_errors_on_create_back_off_then_fail(tmp_path: Path) -> None:
    from gisjob_operator.kube import PodRejected

    stage, _ = planned_stage(tmp_path, create_retries=3, backoff_base=1000.0, backoff_max=1e4)
    stage.tick()
    calls = []

    def busy(namespace: str, body: dict[str, Any]) -> bool:
        calls.append(body["metadata"]["name"])
        raise PodRejected(body["metadata"]["name"], 500, "etcdserver: request timed out")

    stage.kube.create_pod = busy  # type: ignore[method-assign]
    stage.tick()
    assert stage.status["phase"] == "Running" and len(calls) == 1
    assert any(e[1] == "PodCreateRetry" for e in stage.kube.events)
    stage.tick()  # backing off: no call
    assert len(calls) == 1
    memo = next(iter(stage.ctx.jobs.values()))
    for _ in range(2):
        memo.create_retry_at = 0.0  # the backoff has passed
        stage.tick()
    assert len(calls) == 3
    assert stage.status["phase"] == "Failed"
    assert "(500)" in stage.status["message"] and "3 tries" in stage.status["message"]


def test_a_full_resource_quota_is_waited_for_not_failed(tmp_path: Path) -> None:
    """403 "exceeded quota" is the namespace being full, not the pod being wrong: the job
    waits (events, backoff capped at a few ticks), counted as reconcile errors, never Failed."""
    from gisjob_operator.kube import PodRejected

    stage, _ = planned_stage(tmp_path, create_retries=2, backoff_base=0.0)
    stage.tick()
    quota = (
        'pods "cp-job-r0000c0000-0" is forbidden: exceeded quota: no-pods, requested: pods=1, '
        "used: pods=0, limited: pods=0"
    )

    def full(namespace: str, body: dict[str, Any]) -> bool:
        raise PodRejected(body["metadata"]["name"], 403, quota)

    real = stage.kube.create_pod
    stage.kube.create_pod = full  # type: ignore[method-assign]
    assert [stage.tick() for _ in range(5)] == ["error"] * 5
    assert stage.status["phase"] == "Running"
    stage.kube.create_pod = real  # type: ignore[method-assign]
    stage.tick()
    assert stage.pods("worker")
    # and a 403 that is not a quota (a policy forbids the pod) fails at once
    assert PodRejected("p", 403, "violates PodSecurity restricted").permanent
    assert not PodRejected("p", 403, quota).permanent


def test_a_job_asking_for_a_forbidden_pod_fails_before_any_pod_exists(tmp_path: Path) -> None:
    """Issue 17 #2: "create GisJob" is not "create any pod" — a hostPath volume (refused by
    the default policy) fails the job with reason Forbidden, before any pod; a running job
    edited to ask for one fails at its next tick, without new pods."""
    spec = _spec(tmp_path)
    spec["worker"] = {
        "image": "gisjob:test",
        "volumes": [{"name": "root", "hostPath": {"path": "/"}}],
        "volumeMounts": [{"name": "root", "mountPath": "/host"}],
    }
    stage = Stage(spec)
    stage.tick()
    assert stage.status["phase"] == "Failed"
    assert stage.status["message"].startswith("spec.worker.volumes[0].hostPath")
    assert any(c.get("reason") == "Forbidden" for c in stage.status["conditions"])
    assert stage.kube.pods == {}

    running, _ = planned_stage(tmp_path)
    running.tick()
    before = set(running.kube.pods)
    running.kube.body["spec"]["worker"]["env"] = [{"name": "GISJOB_JOB", "value": "x"}]
    running.kube.body["metadata"]["generation"] = 2
    running.tick()
    assert running.status["phase"] == "Failed"
    assert "GISJOB_JOB" in running.status["message"]
    assert set(running.kube.pods) == before


def test_unschedulable_tiles_are_said_at_once_and_fail_after_the_wait(tmp_path: Path) -> None:
    """Issue 17 #6: a worker pod no node can hold is a condition and an Event naming the tile
    and its request at the first tick that sees it, and the tile fails after the operator's
    wait (``unschedulable_seconds``) instead of Running 0/1 for ever."""
    import time as time_mod

    from gisjob_operator.reconcile import now_iso

    stage, _ = planned_stage(tmp_path, unschedulable_seconds=60.0)
    stage.tick()
    stage.tick()
    workers = stage.pods("worker")
    assert workers
    pod = workers[0]
    tile = pod["metadata"]["labels"]["gisjob.dev/tile"]

    def unschedulable(since: float) -> None:
        pod["status"] = {
            "phase": "Pending",
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": "0/1 nodes are available: 1 Insufficient memory.",
                    "lastTransitionTime": now_iso(since),
                }
            ],
        }

    unschedulable(time_mod.time() - 5)
    stage.tick()
    cond = next(c for c in stage.status["conditions"] if c["type"] == "Unschedulable")
    assert cond["status"] == "True" and f"tile {tile} requests" in cond["message"]
    assert "Insufficient memory" in cond["message"]
    said = [e for e in stage.kube.events if e[1] == "Unschedulable"]
    assert len(said) == 1 and tile in said[0][2]
    stage.tick()
    assert len([e for e in stage.kube.events if e[1] == "Unschedulable"]) == 1  # once
    unschedulable(time_mod.time() - 120)
    stage.tick()
    assert pod["metadata"]["name"] not in stage.kube.pods  # the tile failed, its pod went
    assert stage.status["tiles"]["failed"] == 1
    assert any(e[1] == "TileFailed" and "unschedulable for" in e[2] for e in stage.kube.events)


def test_a_tiny_input_declaring_a_huge_raster_is_refused_before_any_tile(
    tmp_path: Path,
) -> None:
    """Issue 17 #3: a 300-byte VRT declaring 2³¹×2³¹ pixels. The planner counts tiles before
    laying them and refuses past the limit (exit 2, the numbers in the message), quickly and
    in little memory; the operator refuses a descriptor over its limit before laying a tile,
    and tells its planner pods the limit."""
    import time as time_mod

    vrt = tmp_path / "huge.vrt"
    vrt.write_text(
        '<VRTDataset rasterXSize="2147483647" rasterYSize="2147483647">'
        '<VRTRasterBand dataType="UInt16" band="1"/></VRTDataset>'
    )
    spec = _spec(tmp_path, input={"uri": str(vrt)})
    spec["operation"] = {"name": "scale", "params": {"scale": 0.5}}
    started = time_mod.monotonic()
    record, _, code = run_planner(spec, tmp_path)
    assert code == 2, record
    assert time_mod.monotonic() - started < 30
    assert "tiles or more, above the limit of 1,000,000" in record["error"]
    assert "huge.vrt" in record["error"]

    stage = Stage(_spec(tmp_path), max_tiles=5)
    stage.tick()
    (planner,) = stage.pods("planner")
    env = {e["name"]: e.get("value") for e in planner["spec"]["containers"][0]["env"]}
    assert env["GISJOB_MAX_TILES"] == "5"
    ok, _, _ = run_planner(_spec(tmp_path), tmp_path)  # 12 tiles, planned without the limit
    stage.finish(planner["metadata"]["name"], exit_code=0, message=json.dumps(ok))
    stage.tick()
    assert stage.status["phase"] == "Failed"
    assert "12 tiles, above the operator's limit of 5" in stage.status["message"]


# ------------------------------------------- issue 17 #5: the job document as a ConfigMap


def _mounted(pod: dict[str, Any]) -> str:
    from gisjob_operator.pods import configmap_of

    name = configmap_of(pod)
    assert name is not None
    return name


def test_the_job_document_configmap_is_created_once_before_the_first_pod(
    tmp_path: Path,
) -> None:
    """The document reaches every pod through one ConfigMap, created before the planner pod
    that mounts it and not again for the workers and the finalizer; a restarted operator
    meets it as AlreadyExists (409), which is fine."""
    from gisjob_operator.pods import JOB_DOCUMENT_KEY

    spec = _spec(tmp_path)
    stage = Stage(spec)
    real = stage.kube.create_pod

    def create_pod(namespace: str, body: dict[str, Any]) -> bool:
        assert _mounted(body) in stage.kube.configmaps, "a pod before its ConfigMap"
        return real(namespace, body)

    stage.kube.create_pod = create_pod  # type: ignore[method-assign]
    assert stage.tick() == "Planning"
    (name,) = stage.kube.configmaps
    cm = stage.kube.configmaps[name]
    assert cm["immutable"] is True and cm["metadata"]["ownerReferences"][0]["uid"] == UID
    assert parse_job(yaml.safe_load(cm["data"][JOB_DOCUMENT_KEY])).spec.input.uri == str(
        tmp_path / "in.tif"
    )
    (planner,) = stage.pods("planner")
    assert _mounted(planner) == name
    record, _log, code = run_planner(spec, tmp_path)
    assert code == 0
    stage.finish(planner["metadata"]["name"], exit_code=0, message=json.dumps(record))
    for _ in range(4):
        stage.tick()
    workers = stage.pods("worker")
    assert workers and {_mounted(w) for w in workers} == {name}
    assert stage.kube.configmap_creates == [name]  # once, however many pods
    # a restarted operator (nothing remembered): 409 AlreadyExists, and on it goes
    stage.ctx.jobs.clear()
    stage.succeed_workers()
    stage.tick()
    stage.tick()
    assert stage.kube.configmap_creates == [name, name]
    assert stage.status["phase"] == "Running"
    assert {_mounted(w) for w in stage.pods("worker")} == {name}
    assert stage.kube.configmaps_deleted == []


def test_a_changed_document_gets_a_new_configmap_and_the_old_one_goes_when_unused(
    tmp_path: Path,
) -> None:
    """Any change of the document (here parallelism: no new plan) is a new ConfigMap for the
    pods created from then on; the old one is deleted (once) when no pod of the job needs it
    any more — finished pods do not — and a finished job's go too."""
    stage, _ = planned_stage(tmp_path, created_grace_seconds=0.0)
    stage.tick()
    stage.tick()
    (old,) = stage.kube.configmaps
    assert {_mounted(w) for w in stage.pods("worker")} == {old}
    stage.kube.body["spec"]["parallelism"] = 2
    stage.kube.body["metadata"]["generation"] = 2
    stage.tick()
    assert len(stage.kube.configmaps) == 2 and old in stage.kube.configmaps  # still mounted
    (new,) = set(stage.kube.configmaps) - {old}
    mounted: dict[str, str] = {}
    for _ in range(12):
        stage.succeed_workers()
        stage.tick()
        mounted.update({w["metadata"]["name"]: _mounted(w) for w in stage.pods("worker")})
        if stage.pods("finalizer"):
            break
    assert new in mounted.values()
    assert stage.kube.configmaps_deleted == [old] and list(stage.kube.configmaps) == [new]
    (fin,) = stage.pods("finalizer")
    assert _mounted(fin) == new
    stage.finish(fin["metadata"]["name"], exit_code=0, message=json.dumps({"exitCode": 0}))
    stage.tick()
    assert stage.status["phase"] == "Succeeded"
    stage.tick()
    stage.tick()
    assert stage.kube.configmaps == {} and stage.kube.configmaps_deleted == [old, new]


def test_a_configmap_the_api_server_rejects_fails_the_job_once(tmp_path: Path) -> None:
    """A 4xx on the ConfigMap's create fails the job with the API's message, no pod, no
    retry loop; server errors back off and fail after a bounded number of tries."""
    from gisjob_operator.kube import ConfigMapRejected

    stage = Stage(_spec(tmp_path))
    calls: list[str] = []
    message = 'ConfigMap "cp-job-spec-0123456789" is invalid: data: Too long: must have at most'

    def refuse(namespace: str, body: dict[str, Any]) -> bool:
        calls.append(body["metadata"]["name"])
        raise ConfigMapRejected(body["metadata"]["name"], 422, message)

    stage.kube.create_configmap = refuse  # type: ignore[method-assign]
    assert stage.tick() == "error"
    assert stage.status["phase"] == "Failed"
    assert f"rejected ConfigMap {calls[0]} (422)" in stage.status["message"]
    assert "Too long" in stage.status["message"]
    assert any(c.get("reason") == "ConfigMapRejected" for c in stage.status["conditions"])
    assert any(e[1] == "ConfigMapRejected" for e in stage.kube.events)
    writes = stage.kube.status_writes
    for _ in range(3):
        stage.tick()
    assert stage.kube.status_writes == writes and len(calls) == 1
    assert stage.kube.pods == {}

    busy = Stage(_spec(tmp_path), create_retries=3, backoff_base=1000.0, backoff_max=1e4)
    tries: list[str] = []

    def unavailable(namespace: str, body: dict[str, Any]) -> bool:
        tries.append(body["metadata"]["name"])
        raise ConfigMapRejected(body["metadata"]["name"], 503, "etcdserver: leader changed")

    busy.kube.create_configmap = unavailable  # type: ignore[method-assign]
    assert busy.tick() == "error"
    assert any(e[1] == "ConfigMapCreateRetry" for e in busy.kube.events)
    assert busy.status.get("phase") != "Failed"
    busy.tick()  # backing off: no call, no pod
    assert len(tries) == 1 and busy.kube.pods == {}
    memo = next(iter(busy.ctx.jobs.values()))
    for _ in range(2):
        memo.create_retry_at = 0.0
        busy.tick()
    assert len(tries) == 3 and busy.status["phase"] == "Failed"
    assert "(503)" in busy.status["message"] and "3 tries" in busy.status["message"]
    assert any(c.get("reason") == "ConfigMapCreateFailed" for c in busy.status["conditions"])
    assert busy.kube.pods == {}


def test_a_document_too_large_for_a_configmap_fails_the_job_before_any_pod(
    tmp_path: Path,
) -> None:
    """Past the ConfigMap limit: Failed, reason SpecTooLarge, one line with the size and the
    limit, no ConfigMap, no pod, no retry loop."""
    uris = [f"{tmp_path}/scenes/{i:06d}/S2A_MSIL2A_20240101T101010_B08.tif" for i in range(15_000)]
    stage = Stage(_spec(tmp_path, input={"uris": uris}))
    assert stage.tick() == "failed"
    status = stage.status
    assert status["phase"] == "Failed"
    assert any(c.get("reason") == "SpecTooLarge" for c in status["conditions"])
    assert "\n" not in status["message"] and "(921,600 bytes)" in status["message"]
    assert "the job document is " in status["message"]
    assert any(e[1] == "SpecTooLarge" for e in stage.kube.events)
    assert stage.kube.pods == {} and stage.kube.configmap_creates == []
    writes = stage.kube.status_writes
    for _ in range(3):
        stage.tick()
    assert stage.kube.status_writes == writes
