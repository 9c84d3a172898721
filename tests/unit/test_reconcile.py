"""The reconcile core (pure): plan + persisted status + worker pods → what to do.

Plans are built from the planner's dataclasses (no I/O): a 2048x2048 raster with 512x512
blocks cut into four 1024x1024 tiles (each can shrink its chunk and split into four
one-block quadrants), and a 1000-feature vector layer in two 500-feature ranges. Pods are
:class:`PodView` s, or real-shaped pod dicts (built by ``build_worker_pod``, given a status
as the kubelet reports it) read through ``pod_view``.

The last section drives many ticks against a simulated cluster in which status writes are
lost and deletions linger, and checks the restart-safety claims of the module docstring.
"""

from __future__ import annotations

import functools
import json
import random
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from planbuilders import NOW, raster_file, raster_sizing, vector_file, vector_sizing, worker_view

from gisjob_operator.pods import (
    ANNOTATION_HISTORY,
    LABEL_ATTEMPT,
    LABEL_TILE,
    PodLaunch,
    build_worker_pod,
    pod_name,
)
from gisjob_operator.podview import PodView, pod_view, to_attempt
from gisjob_operator.progress import Progress
from gisjob_operator.reconcile import Actions, TileTree, now_iso, open_leaves, reconcile
from gisjob_operator.status import progress_status
from gisjob_worker import policy
from gisjob_worker.plan import (
    Plan,
    Tile,
    make_raster_tile,
    make_vector_tile,
)
from gisjob_worker.quantity import round_up_mib
from gisjob_worker.ranges import expand
from gisjob_worker.spec import GisJob, parse_job
from gisjob_worker.tiles import FeatureRange, feature_ranges, raster_grid

MIB = 1024**2
JOB = "unit-job"
UID = "6c1a7f0e-0000-4000-8000-000000000001"
NS = "gis"
STRATEGIES = ("shrinkChunks", "split", "grow")

# ------------------------------------------------------------------------------ builders


def raster_plan(size: int = 2048, tile_size: int = 1024, block: int = 512) -> Plan:
    """A raster of ``size``² pixels cut in ``tile_size`` tiles of ``block`` blocks."""
    sizing = raster_sizing()
    f = raster_file(size, block=block)
    tiles = tuple(
        make_raster_tile(sizing, f, f"r{r:04d}c{c:04d}", w)
        for r, c, w in raster_grid(size, size, tile_size, block, block)
    )
    return Plan(JOB, "raster", "scale", "COG", "r4st3rd1g3st0000", sizing, (f,), tiles)


def vector_plan(features: int = 1000, per_tile: int = 500) -> Plan:
    sizing = vector_sizing()
    f = vector_file(features)
    tiles = tuple(
        make_vector_tile(sizing, f, f"f{k:06d}", rng)
        for k, rng in enumerate(feature_ranges(f.first_fid, features, per_tile))
    )
    return Plan(JOB, "vector", "filter", "GeoParquet", "v3ct0rd1g3st0000", sizing, (f,), tiles)


RASTER = raster_plan()
VECTOR = vector_plan()
T0, T1, T2, T3 = (t.id for t in RASTER.tiles)
CONFIG = policy.PolicyConfig(
    backoff_limit=2,
    strategies=STRATEGIES,
    max_memory=None,
    backoff_base=10.0,
    backoff_max=300.0,
)


def tile_of(plan: Plan, tile_id: str) -> Tile:
    return plan.tile(tile_id)


def view(
    tile: str,
    attempt: int = 0,
    phase: str = "Running",
    *,
    plan: Plan = RASTER,
    memory: int | None = None,
    **kw: Any,
) -> PodView:
    """A pod of ``tile`` (see ``planbuilders.worker_view``: ``exit_code=None`` and
    ``finished_at=None`` make a pod that reports neither)."""
    return worker_view(
        pod_name(JOB, tile, attempt),
        tile,
        memory if memory is not None else tile_of(plan, tile).memory_request_bytes,
        attempt,
        phase,
        **kw,
    )


def succeeded(tile: str, attempt: int = 0, *, plan: Plan = RASTER, **kw: Any) -> PodView:
    kw.setdefault("record", {"tile": tile, "outcome": "succeeded", "peakRssBytes": 50 * MIB})
    return view(tile, attempt, "Succeeded", plan=plan, **kw)


def failed(tile: str, attempt: int = 0, exit_code: int | None = 1, **kw: Any) -> PodView:
    return view(tile, attempt, "Failed", exit_code=exit_code, **kw)


def tick(
    pods: Iterable[PodView] = (),
    persisted: dict[str, Any] | None = None,
    *,
    plan: Plan = RASTER,
    parallelism: int = 2,
    now: float = NOW,
    config: policy.PolicyConfig = CONFIG,
    **kw: Any,
) -> Actions:
    return reconcile(plan, persisted, list(pods), config, parallelism, now, **kw)


def status_of(plan: Plan, actions: Actions) -> dict[str, Any]:
    """The status the controller writes (merge-patch nulls dropped)."""
    return {k: v for k, v in progress_status(plan, actions.progress, actions).items() if v}


def persisted(
    completed: Iterable[int] = (),
    failed_: Iterable[int] = (),
    *,
    split: Iterable[str] = (),
    sub_done: Iterable[str] = (),
    sub_failed: Iterable[str] = (),
    memory_retries: int = 0,
    other_retries: int = 0,
    peak: int = 0,
    plan: Plan = RASTER,
) -> dict[str, Any]:
    p = Progress(
        completed=set(completed),
        failed=set(failed_),
        split=set(split),
        sub_done=set(sub_done),
        sub_failed=set(sub_failed),
        memory_retries=memory_retries,
        other_retries=other_retries,
        peak_observed=peak,
    )
    return {k: v for k, v in progress_status(plan, p, None).items() if v is not None}


def created(actions: Actions) -> list[tuple[str, int, str]]:
    return [(c.tile, c.attempt, c.strategy) for c in actions.create]


JOB_DOC: dict[str, Any] = {
    "apiVersion": "gisjob.dev/v1alpha1",
    "kind": "GisJob",
    "metadata": {"name": JOB, "namespace": NS},
    "spec": {
        "input": {"uri": "/data/in.tif"},
        "operation": {"name": "scale", "params": {}},
        "output": {"uri": "/data/out"},
    },
}


def job_model() -> GisJob:
    return parse_job(JOB_DOC, f"{NS}/{JOB}")


def pod_object(
    launch: PodLaunch,
    phase: str = "Pending",
    *,
    exit_code: int | None = None,
    reason: str | None = None,
    message: str | None = None,
    finished_at: float | None = None,
    deleting: bool = False,
    job: GisJob | None = None,
    digest: str = RASTER.digest,
) -> dict[str, Any]:
    """A worker pod as the API returns it: built by the operator, status by the kubelet."""
    pod = build_worker_pod(job or job_model(), UID, NS, launch, digest)
    pod["metadata"]["uid"] = f"pod-{launch.tile}-{launch.attempt}"
    pod["metadata"]["creationTimestamp"] = now_iso(NOW - 600)
    status: dict[str, Any] = {"phase": phase}
    if phase == "Running":
        status["containerStatuses"] = [
            {"name": "worker", "ready": True, "state": {"running": {"startedAt": now_iso(NOW)}}}
        ]
    if exit_code is not None:
        term: dict[str, Any] = {
            "exitCode": exit_code,
            "reason": reason or ("Completed" if exit_code == 0 else "Error"),
            "startedAt": now_iso((finished_at or NOW) - 30),
            "finishedAt": now_iso(finished_at or NOW),
        }
        if message is not None:
            term["message"] = message
        status["containerStatuses"] = [
            {"name": "worker", "ready": False, "state": {"terminated": term}}
        ]
    pod["status"] = status
    if deleting:
        pod["metadata"]["deletionTimestamp"] = now_iso(NOW)
    return pod


def launch_of(tile: str, attempt: int = 0, *, plan: Plan = RASTER, **kw: Any) -> PodLaunch:
    kw.setdefault("memory", tile_of(plan, tile).memory_request_bytes)
    kw.setdefault("chunk_scale", 1.0)
    kw.setdefault("strategy", "initial")
    return PodLaunch(tile=tile, attempt=attempt, **kw)


# -------------------------------------------------------------------------- the fixtures


def test_plans_have_the_shapes_these_tests_rely_on() -> None:
    assert [t.id for t in RASTER.tiles] == ["r0000c0000", "r0000c0001", "r0001c0000", "r0001c0001"]
    for t in RASTER.tiles:
        assert t.window is not None and (t.window.width, t.window.height) == (1024, 1024)
        assert t.chunk is not None and t.chunk.pixels == 1024 * 1024  # one chunk: can shrink
    kids = TileTree(RASTER).children(RASTER.tiles[0])
    assert [k.id for k in kids] == [f"{T0}-q{i}" for i in range(4)]
    assert all(k.memory_request_bytes < RASTER.tiles[0].memory_request_bytes for k in kids)
    assert [t.id for t in VECTOR.tiles] == ["f000000", "f000001"]
    assert VECTOR.tiles[0].fids == FeatureRange(1, 501, 500)
    assert VECTOR.tiles[1].fids == FeatureRange(501, None, 500)


# ------------------------------------------------------------------------- pod_view parsing


def test_pod_view_of_a_non_worker_pod_is_none() -> None:
    assert pod_view({"metadata": {"name": "x", "labels": {"app": "other"}}}) is None
    assert pod_view({"metadata": {"name": "x", "labels": {LABEL_TILE: T0}}}) is None
    assert pod_view({"metadata": {"name": "x", "labels": {LABEL_ATTEMPT: "0"}}}) is None
    assert pod_view({}) is None


def test_pod_view_of_a_pending_pod() -> None:
    v = pod_view(pod_object(launch_of(T1, 0), "Pending"))
    assert v is not None
    assert (v.name, v.tile, v.attempt, v.phase) == (pod_name(JOB, T1, 0), T1, 0, "Pending")
    assert v.alive and not v.finished and not v.deleting
    assert v.exit_code is None and v.record is None and v.finished_at is None


def test_pod_view_without_status_is_pending() -> None:
    pod = pod_object(launch_of(T0))
    del pod["status"]
    v = pod_view(pod)
    assert v is not None and v.phase == "Pending" and v.alive


def test_pod_view_of_a_succeeded_pod_reads_the_result_record() -> None:
    record = '{"tile": "r0000c0000", "outcome": "succeeded", "cgroupPeakBytes": 123456789}'
    v = pod_view(
        pod_object(launch_of(T0), "Succeeded", exit_code=0, message=record, finished_at=NOW - 5)
    )
    assert v is not None
    assert v.finished and not v.alive
    assert v.exit_code == 0 and not v.oom_killed
    assert v.record == {"tile": T0, "outcome": "succeeded", "cgroupPeakBytes": 123456789}
    assert v.finished_at == NOW - 5


def test_pod_view_of_an_oom_killed_pod() -> None:
    v = pod_view(pod_object(launch_of(T0), "Failed", exit_code=137, reason="OOMKilled"))
    assert v is not None
    assert v.oom_killed and v.exit_code == 137 and v.record is None
    assert to_attempt(T0, v.attempt_record()).failure == "memory"


@pytest.mark.parametrize(
    "message", ["Traceback (most recent call last):\n  boom", "[1, 2]", "not json", ""]
)
def test_pod_view_tolerates_messages_that_are_not_records(message: str) -> None:
    """FallbackToLogsOnError puts log tails in the message: never a crash, never a record."""
    v = pod_view(pod_object(launch_of(T0), "Failed", exit_code=1, message=message))
    assert v is not None and v.record is None
    assert v.message == message


def test_pod_view_tolerates_bad_annotations_and_quantities() -> None:
    pod = pod_object(launch_of(T0, 1, strategy="retry", history=({"n": 0},)))
    pod["metadata"]["annotations"][ANNOTATION_HISTORY] = "{not json"
    pod["spec"]["containers"][0]["resources"]["limits"]["memory"] = "lots"
    v = pod_view(pod)
    assert v is not None and v.history == () and v.memory == 0


def test_pod_view_reads_deletion_and_quantities() -> None:
    pod = pod_object(launch_of(T0, memory=3 * 1024**3), "Running", deleting=True)
    pod["spec"]["containers"][0]["resources"]["limits"]["memory"] = "3Gi"
    v = pod_view(pod)
    assert v is not None and v.deleting and not v.alive and v.memory == 3 * 1024**3


def test_pod_view_bad_finish_time_falls_back_to_other_times() -> None:
    pod = pod_object(launch_of(T0), "Failed", exit_code=1)
    pod["status"]["containerStatuses"][0]["state"]["terminated"]["finishedAt"] = "yesterday"
    v = pod_view(pod)
    assert v is not None and v.finished_at == NOW - 600  # its creation: nothing later known
    assert pod_view(pod, seen_finished=NOW - 5) == replace(v, finished_at=NOW - 5)
    pod["status"]["startTime"] = now_iso(NOW - 90)
    v = pod_view(pod, seen_finished=NOW - 5)
    assert v is not None and v.finished_at == NOW - 90
    del pod["metadata"]["creationTimestamp"], pod["status"]["startTime"]
    v = pod_view(pod)
    assert v is not None and v.finished_at is None  # nothing at all: None, never "now"


def test_attempt_record_round_trips_through_to_attempt() -> None:
    v = failed(T0, 3, exit_code=137, oom=True, memory=512 * MIB, chunk_scale=0.25, strategy="grow")
    a = to_attempt(T0, v.attempt_record())
    assert a == policy.Attempt(T0, 3, 512 * MIB, 0.25, "grow", 137, True)
    d = failed(T0, 4, exit_code=None, disrupted=True, strategy="disrupted", memory=5 * MIB)
    assert d.attempt_record()["d"] is True
    assert to_attempt(T0, d.attempt_record()) == policy.Attempt(
        T0, 4, 5 * MIB, 1.0, "disrupted", None, False, True
    )


def test_history_written_before_disruptions_reads_as_not_disrupted() -> None:
    old = {"n": 0, "m": 1, "c": 1.0, "s": "initial", "x": 1, "o": False}  # no "d"
    assert to_attempt(T0, old) == policy.Attempt(T0, 0, 1, 1.0, "initial", 1, False, False)


# ------------------------------------------------------------------------ launching tiles


@pytest.mark.parametrize("parallelism", [1, 2, 3, 4, 10])
def test_no_pods_launches_parallelism_tiles_in_plan_order(parallelism: int) -> None:
    a = tick(parallelism=parallelism)
    expected = [t for t in RASTER.tiles][:parallelism]
    assert [c.tile for c in a.create] == [t.id for t in expected]
    for c, t in zip(a.create, expected, strict=True):
        assert c == PodLaunch(t.id, 0, t.memory_request_bytes, 1.0, "initial", ())
    assert a.delete == [] and a.events == [] and a.records == []
    assert not a.changed and not a.finished
    assert a.running == 0  # just created: the next tick sees them
    assert a.pending == 4


def test_vector_plan_launches_both_ranges() -> None:
    a = tick(plan=VECTOR, parallelism=4)
    assert [(c.tile, c.memory) for c in a.create] == [
        (t.id, t.memory_request_bytes) for t in VECTOR.tiles
    ]


def test_alive_pods_count_toward_parallelism() -> None:
    pods = [view(T0, phase="Running"), view(T2, phase="Pending")]
    a = tick(pods, parallelism=3)
    assert created(a) == [(T1, 0, "initial")]  # plan order, skipping tiles that have pods
    assert a.running == 2
    a = tick(pods, parallelism=2)
    assert a.create == []
    a = tick(pods, parallelism=1)  # over the limit (parallelism lowered): nothing new, no kill
    assert a.create == [] and a.delete == []


def test_unknown_phase_holds_its_slot() -> None:
    a = tick([view(T0, phase="Unknown")], parallelism=1)
    assert a.create == [] and a.running == 1 and not a.finished


def test_a_deleting_pod_holds_its_tile_but_not_a_slot() -> None:
    a = tick([view(T0, phase="Running", deleting=True)], parallelism=1)
    assert created(a) == [(T1, 0, "initial")]
    assert T0 not in [c.tile for c in tick([view(T0, deleting=True)], parallelism=4).create]


# --------------------------------------------------------------------------- succeeded pods


def test_a_succeeded_pod_completes_its_tile_and_is_deleted() -> None:
    pod = succeeded(T1)
    a = tick([pod], parallelism=1)
    assert a.progress.completed == {1}
    assert a.delete == [pod.name]
    assert a.changed
    assert created(a) == [(T0, 0, "initial")]  # its slot is free again
    st = status_of(RASTER, a)
    assert st["completedTiles"] == "1"
    assert st["progress"] == "1/4"
    assert [r["tile"] for r in a.records] == [T1]
    assert a.records[0]["exitCode"] == 0 and a.records[0]["outcome"] == "succeeded"


def test_succeeded_pods_from_real_pod_objects() -> None:
    pods = [
        pod_view(
            pod_object(
                launch_of(t.id), "Succeeded", exit_code=0, message='{"peakRssBytes": 1048576}'
            )
        )
        for t in RASTER.tiles
    ]
    a = tick([p for p in pods if p is not None], parallelism=4)
    assert a.progress.completed == {0, 1, 2, 3}
    assert sorted(a.delete) == sorted(pod_name(JOB, t.id, 0) for t in RASTER.tiles)
    assert a.finished and a.changed and a.create == []


def test_persisted_completion_is_kept_and_extended() -> None:
    a = tick([succeeded(T3)], persisted(completed=[0, 1]), parallelism=1)
    assert a.progress.completed == {0, 1, 3}
    assert created(a) == [(T2, 0, "initial")]
    assert status_of(RASTER, a)["completedTiles"] == "0-1,3"


def test_unchanged_status_is_not_changed() -> None:
    a = tick([view(T2)], persisted(completed=[0, 1]), parallelism=2)
    assert not a.changed
    assert created(a) == [(T3, 0, "initial")]


# ------------------------------------------------------------------ coalesced status writes


def test_unprocessed_finished_pods_hold_their_slot_and_wait() -> None:
    pods = [succeeded(T0), failed(T1, exit_code=3)]
    a = tick(pods, parallelism=3, process_finished=False)
    assert a.waiting == 2
    assert a.running == 2  # they hold their slots until decided
    assert created(a) == [(T2, 0, "initial")]  # only the free slot is used
    assert a.delete == [] and a.records == [] and a.events == []
    assert not a.changed
    assert a.progress.completed == set() and a.progress.memory_retries == 0
    assert not tick(pods, parallelism=2, process_finished=False).create


def test_unprocessed_finished_pods_are_decided_on_the_next_processed_tick() -> None:
    pods = [succeeded(T0), failed(T1, exit_code=3)]
    a = tick(pods, parallelism=2)
    assert a.waiting == 0
    assert a.progress.completed == {0}
    assert created(a) == [(T1, 1, "shrinkChunks"), (T2, 0, "initial")]


def test_unprocessed_tick_still_retires_resolved_and_superseded_pods() -> None:
    """Pods whose information is already persisted (or in a successor) need no decision."""
    old = succeeded(T0)
    superseded = failed(T1, 0, exit_code=3)
    successor = view(T1, 1, strategy="shrinkChunks", chunk_scale=0.5)
    a = tick(
        [old, superseded, successor],
        persisted(completed=[0]),
        process_finished=False,
        keep_failed=0,
    )
    assert sorted(a.delete) == sorted([old.name, superseded.name])
    assert not a.changed and a.waiting == 0


def test_process_finished_false_never_finishes_the_job() -> None:
    a = tick([succeeded(T3)], persisted(completed=[0, 1, 2]), process_finished=False)
    assert not a.finished and a.waiting == 1
    b = tick([succeeded(T3)], persisted(completed=[0, 1, 2]))
    assert b.finished and b.progress.completed == {0, 1, 2, 3}


# ---------------------------------------------------------------------- memory failures


def test_exit_3_launches_a_shrink_successor_with_history() -> None:
    pod = failed(T0, 0, exit_code=3, finished_at=NOW - 1)
    a = tick([pod], parallelism=1)
    (launch,) = a.create
    t = RASTER.tiles[0]
    assert launch == PodLaunch(
        tile=T0,
        attempt=1,
        memory=t.memory_request_bytes,
        chunk_scale=0.5,
        strategy="shrinkChunks",
        history=(
            {
                "n": 0,
                "m": t.memory_request_bytes,
                "c": 1.0,
                "s": "initial",
                "x": 3,
                "o": False,
                "d": False,
            },
        ),
    )
    assert pod.name not in a.delete  # kept until the successor exists (and for debugging)
    assert a.progress.memory_retries == 1 and a.progress.other_retries == 0
    assert a.changed
    (event,) = a.events
    assert (event.type, event.reason) == ("Warning", "OutOfMemory")
    assert T0 in event.message and "shrinkChunks" in event.message and "exit 3" in event.message
    assert a.running == 1  # the failed pod holds the slot its successor takes


def test_successors_do_not_take_extra_slots() -> None:
    pods = [failed(T0, exit_code=3), view(T1)]
    a = tick(pods, parallelism=2)
    assert created(a) == [(T0, 1, "shrinkChunks")]  # no initial launch of T2
    a = tick(pods, parallelism=3)
    assert created(a) == [(T0, 1, "shrinkChunks"), (T2, 0, "initial")]


def test_history_accumulates_over_attempts() -> None:
    first = {"n": 0, "m": 271 * MIB, "c": 1.0, "s": "initial", "x": 1, "o": False}
    pod = failed(T0, 1, exit_code=3, history=[first], strategy="retry", memory=271 * MIB)
    (launch,) = tick([pod, failed(T0, 0, exit_code=1)], parallelism=1).create
    assert launch.attempt == 2 and launch.strategy == "shrinkChunks"
    assert launch.history == (first, pod.attempt_record())


@pytest.mark.parametrize(
    ("exit_code", "reason"),
    [(137, "OOMKilled"), (137, "Error"), (3, "Error"), (0, "OOMKilled"), (1, "OOMKilled")],
)
def test_oom_kills_are_memory_failures(exit_code: int, reason: str) -> None:
    """OOMKilled (any exit code) and exit 3 are memory failures; exit 137 without
    OOMKilled is a SIGKILL from something else (a disruption): relaunched as it was."""
    pod = pod_view(pod_object(launch_of(T0), "Failed", exit_code=exit_code, reason=reason))
    assert pod is not None
    a = tick([pod], parallelism=1)
    (record,) = a.records
    if exit_code == 137 and reason != "OOMKilled":
        assert pod.disrupted and not pod.oom_killed
        assert created(a) == [(T0, 1, "disrupted")]
        (launch,) = a.create
        assert (launch.memory, launch.chunk_scale) == (pod.memory, 1.0)  # as it was
        assert launch.history[0]["o"] is False and launch.history[0]["d"] is True
        assert a.progress.memory_retries == 0 and a.memory_failures == 0
        assert a.progress.other_retries == 0
        assert a.progress.disruptions == 1 and a.disruptions == 1
        assert [e.reason for e in a.events] == ["TileDisrupted"]
        assert "137" in a.events[0].message and "OOMKilled" in a.events[0].message
        assert (record["outcome"], record["disrupted"]) == ("disruption", True)
        return
    assert not pod.disrupted
    assert created(a) == [(T0, 1, "shrinkChunks")]
    assert a.progress.memory_retries == 1 and a.progress.disruptions == 0
    assert a.create[0].history[0]["o"] is (reason == "OOMKilled")
    assert a.create[0].history[0]["d"] is False
    assert a.events[0].reason == "OutOfMemory"
    assert (record["outcome"], record["disrupted"]) == ("memory", False)
    if reason == "OOMKilled":
        assert "OOMKilled" in a.events[0].message


def test_grow_successor() -> None:
    cfg = replace(CONFIG, strategies=("grow",))
    t = RASTER.tiles[0]
    a = tick([failed(T0, exit_code=3)], parallelism=1, config=cfg)
    (launch,) = a.create
    assert launch.strategy == "grow"
    assert launch.memory == round_up_mib(int(t.memory_request_bytes * 1.5))
    assert launch.chunk_scale == 1.0


def test_no_memory_strategy_left_fails_the_tile() -> None:
    cfg = replace(CONFIG, strategies=())
    pod = failed(T0, exit_code=137, oom=True)
    a = tick([pod], parallelism=1, config=cfg, keep_failed=5)
    assert a.progress.failed == {0}
    assert a.progress.memory_retries == 1
    assert [e.reason for e in a.events] == ["TileFailed"]
    assert pod.name not in a.delete


# ----------------------------------------------------------------------- input failures


def test_exit_2_fails_the_tile_and_keeps_the_pod() -> None:
    pod = failed(T2, exit_code=2, message="input.tif: not a raster GDAL can read")
    a = tick([pod], parallelism=1)
    assert a.progress.failed == {2}
    assert a.changed
    assert pod.name not in a.delete  # kept for debugging
    (event,) = a.events
    assert (event.type, event.reason) == ("Warning", "TileFailed")
    assert T2 in event.message and "input error" in event.message
    assert created(a) == [(T0, 0, "initial")]  # a failed tile frees its slot
    assert status_of(RASTER, a)["failedTiles"] == "2"
    assert a.records[0]["error"] == "input.tif: not a raster GDAL can read"
    assert a.records[0]["outcome"] == "input"


@pytest.mark.parametrize("keep", [0, 1, 2, 3, 10])
def test_failed_pods_kept_up_to_keep_failed_newest(keep: int) -> None:
    pods = [
        failed(t.id, exit_code=2, finished_at=NOW - 100 + i) for i, t in enumerate(RASTER.tiles)
    ]
    a = tick(pods, parallelism=4, keep_failed=keep)
    assert a.progress.failed == {0, 1, 2, 3}
    oldest_first = [p.name for p in pods]
    assert sorted(a.delete) == sorted(oldest_first[: max(0, 4 - keep)])
    assert a.finished


def test_kept_failed_pods_are_pruned_across_tiles_and_ticks() -> None:
    """Old failed attempts of finished tiles count toward the same bound."""
    pods = [
        failed(T0, 0, exit_code=2, finished_at=NOW - 50),
        failed(T1, 0, exit_code=3, finished_at=NOW - 40),  # superseded by attempt 1
        succeeded(T1, 1, strategy="shrinkChunks", chunk_scale=0.5),
        failed(T2, 0, exit_code=2, finished_at=NOW - 30),
    ]
    a = tick(pods, persisted(failed_=[0, 2]), parallelism=4, keep_failed=1)
    assert a.progress.completed == {1}
    assert sorted(a.delete) == sorted(
        [pods[2].name, pods[0].name, pods[1].name]
    )  # the succeeded one, and all but the newest failed one
    assert pods[3].name not in a.delete


def test_failed_pods_being_deleted_do_not_count() -> None:
    pods = [
        failed(T0, exit_code=2, finished_at=NOW - 10, deleting=True),
        failed(T1, exit_code=2, finished_at=NOW - 5),
    ]
    a = tick(pods, persisted(failed_=[0, 1]), keep_failed=1)
    assert a.delete == []


# -------------------------------------------------------------------------- other failures


def test_exit_1_retries_after_backoff() -> None:
    pod = failed(T0, exit_code=1, finished_at=NOW - 5)
    a = tick([pod], parallelism=1)  # backoff_base 10 s: not yet
    assert a.create == []
    assert a.running == 1  # the failed pod holds the slot while it waits
    assert not a.finished
    a = tick([pod], parallelism=1, now=NOW + 5)  # finished_at + 10 s
    (launch,) = a.create
    assert (launch.tile, launch.attempt, launch.strategy) == (T0, 1, "retry")
    assert launch.memory == pod.memory and launch.chunk_scale == 1.0
    assert a.progress.other_retries == 1
    assert a.events == []  # retries are not OutOfMemory events


def test_backoff_doubles_per_retry() -> None:
    hist = [{"n": 0, "m": 1, "c": 1.0, "s": "initial", "x": 1, "o": False}]
    pod = failed(T0, 1, exit_code=1, strategy="retry", history=hist, finished_at=NOW)
    assert tick([pod], now=NOW + 19.9, parallelism=1).create == []
    assert created(tick([pod], now=NOW + 20, parallelism=1)) == [(T0, 2, "retry")]


def test_backoff_without_any_known_finish_time_does_not_wait_for_ever() -> None:
    """A pod that tells no time at all (``pod_view`` found no finishedAt, condition, start,
    creation, and the controller passed no first-seen time): counting the backoff from
    ``now`` would wait for ever; it is not waited for."""
    pod = failed(T0, exit_code=1, finished_at=None)
    assert created(tick([pod], parallelism=1)) == [(T0, 1, "retry")]


def test_backoff_counts_from_the_first_time_the_pod_was_seen_finished() -> None:
    """The controller passes when it first saw the pod finished; the backoff (10 s) counts
    from there, and a later tick launches the retry."""
    pod = pod_object(launch_of(T0), "Failed")  # no container state, no times
    pod["status"].update(reason="UnexpectedAdmissionError", message="Pod was rejected: …")
    del pod["metadata"]["creationTimestamp"]
    seen = NOW - 4
    v = pod_view(pod, seen_finished=seen)
    assert v is not None and v.finished_at == seen and v.exit_code is None
    assert tick([v], parallelism=1, now=NOW).create == []
    assert tick([v], parallelism=1, now=seen + 9.9).create == []
    assert created(tick([v], parallelism=1, now=seen + 10)) == [(T0, 1, "retry")]


def test_backoff_limit_exhausted_fails_the_tile() -> None:
    hist = [
        {"n": 0, "m": 1, "c": 1.0, "s": "initial", "x": 1, "o": False},
        {"n": 1, "m": 1, "c": 1.0, "s": "retry", "x": 1, "o": False},
    ]
    pod = failed(T0, 2, exit_code=1, strategy="retry", history=hist)
    a = tick([pod], parallelism=1)
    assert a.progress.failed == {0}
    assert "backoffLimit is 2" in a.events[0].message


def test_failed_with_no_exit_code_is_retried() -> None:
    """A pod that failed without a terminated state and no mark of a disruption (rejected
    at admission) is an 'error': retried after its backoff."""
    pod = view(T0, phase="Failed", exit_code=None, finished_at=NOW - 100)
    assert pod.exit_code is None
    a = tick([pod], parallelism=1)
    assert created(a) == [(T0, 1, "retry")]
    assert a.records[0]["exitCode"] is None and a.records[0]["outcome"] == "error"


# ------------------------------------------------- disruptions, and pods that tell little
# Pod statuses as the API returns them for pods that ended for reasons not their own, or
# that never ran: most have no terminated container state, hence no exit code and no
# finishedAt. Each must get a successor (a hang here is a tile that never ends).

EVICTION_MESSAGE = (
    "The node was low on resource: memory. Threshold quantity: 100Mi, available: 86432Ki. "
    "Container worker was using 1843204Ki, request is 1Gi, has larger consumption of "
    "memory. "
)


def api_pod(launch: PodLaunch, status: dict[str, Any], **metadata: Any) -> dict[str, Any]:
    """A worker pod built by the operator, with ``status`` as the API returns it."""
    pod = pod_object(launch)
    pod["status"] = status
    pod["metadata"].update(metadata)
    return pod


def condition(type_: str, status: str, at: float, reason: str | None = None) -> dict[str, Any]:
    c = {"type": type_, "status": status, "lastTransitionTime": now_iso(at)}
    if reason is not None:
        c["reason"] = reason
    return c


STARTED = NOW - 300

# (status, pod dict extras) per case; times are whole seconds (now_iso has no fraction)
TELL_LITTLE: dict[str, dict[str, Any]] = {
    # kubelet eviction before Kubernetes 1.26: the famous bare status
    "evicted": {
        "phase": "Failed",
        "reason": "Evicted",
        "message": EVICTION_MESSAGE,
        "startTime": now_iso(STARTED),
    },
    # kubelet eviction since 1.26: a DisruptionTarget condition; the container never got a
    # terminated state (it was still being created)
    "evicted-disruption-target": {
        "phase": "Failed",
        "reason": "Evicted",
        "message": EVICTION_MESSAGE,
        "startTime": now_iso(STARTED),
        "qosClass": "Guaranteed",
        "conditions": [
            condition("DisruptionTarget", "True", NOW - 42, "TerminationByKubelet"),
            condition("PodReadyToStartContainers", "False", NOW - 41),
            condition("Initialized", "True", STARTED),
            condition("Ready", "False", NOW - 41, "PodFailed"),
            condition("ContainersReady", "False", NOW - 41, "PodFailed"),
            condition("PodScheduled", "True", STARTED - 1),
        ],
        "containerStatuses": [
            {
                "name": "worker",
                "image": "ghcr.io/gisjob/worker:latest",
                "imageID": "",
                "ready": False,
                "restartCount": 0,
                "started": False,
                "state": {"waiting": {"reason": "ContainerCreating"}},
                "lastState": {},
            }
        ],
    },
    # the node (or its runtime) lost the container: a terminated state with 137 and no times
    "container-status-unknown": {
        "phase": "Failed",
        "startTime": now_iso(STARTED),
        "conditions": [
            condition("Initialized", "True", STARTED),
            condition("Ready", "False", NOW - 20, "PodFailed"),
            condition("PodScheduled", "True", STARTED - 1),
        ],
        "containerStatuses": [
            {
                "name": "worker",
                "ready": False,
                "restartCount": 0,
                "started": False,
                "state": {
                    "terminated": {
                        "exitCode": 137,
                        "reason": "ContainerStatusUnknown",
                        "message": "The container could not be located when the pod was terminated",
                        "startedAt": None,
                        "finishedAt": None,
                    }
                },
                "lastState": {},
            }
        ],
    },
    # rejected by the kubelet's admission (a scheduling race): never ran
    "admission-rejected": {
        "phase": "Failed",
        "reason": "OutOfmemory",
        "message": "Pod was rejected: Node didn't have enough resource: memory, requested: "
        "1073741824, used: 7449083904, capacity: 8340180992",
        "startTime": now_iso(NOW - 7),
        "conditions": [condition("PodScheduled", "True", NOW - 8)],
    },
    # rejected with nothing but a reason: the operator's first sight is the only time
    "admission-error-bare": {
        "phase": "Failed",
        "reason": "UnexpectedAdmissionError",
        "message": "Pod was rejected: Allocate failed due to no healthy devices present; "
        "cannot allocate unhealthy devices example.com/gpu, which is unexpected",
    },
}
# case: (disrupted, exit code, finished at, successor strategy)
SEEN = NOW - 3  # when the operator first saw the pod finished
TELL_LITTLE_EXPECTED: dict[str, tuple[bool, int | None, float, str]] = {
    "evicted": (True, None, STARTED, "disrupted"),
    "evicted-disruption-target": (True, None, NOW - 41, "disrupted"),
    "container-status-unknown": (True, 137, NOW - 20, "disrupted"),
    "admission-rejected": (False, None, NOW - 7, "retry"),
    "admission-error-bare": (False, None, SEEN, "retry"),
}


@pytest.mark.parametrize("case", sorted(TELL_LITTLE))
def test_pods_that_tell_little_still_get_a_successor(case: str) -> None:
    """Evicted, lost and rejected pods: read as disruptions (relaunched at once, as they
    were) or as errors (retried once their backoff, counted from the best time the pod or
    the operator knows, is over) — never waiting for a finishedAt that will not come."""
    disrupted, exit_code, since, strategy = TELL_LITTLE_EXPECTED[case]
    pod = api_pod(launch_of(T0), json.loads(json.dumps(TELL_LITTLE[case])))
    del pod["metadata"]["creationTimestamp"]  # the last resort is tested elsewhere
    v = pod_view(pod, seen_finished=SEEN)
    assert v is not None and v.finished and not v.deleting
    assert (v.disrupted, v.exit_code, v.oom_killed) == (disrupted, exit_code, False)
    assert v.finished_at == since
    assert v.cause is not None and (TELL_LITTLE[case].get("reason") or "") in v.cause
    delay = 0.0 if disrupted else policy.backoff(1, CONFIG.backoff_base, CONFIG.backoff_max)
    if delay:
        assert tick([v], parallelism=1, now=since + delay - 0.5).create == []
    a = tick([v], parallelism=1, now=max(NOW, since + delay))
    assert created(a) == [(T0, 1, strategy)]
    (launch,) = a.create
    assert (launch.memory, launch.chunk_scale) == (v.memory, 1.0)
    assert launch.history == (v.attempt_record(),)
    assert launch.history[0]["d"] is disrupted
    (record,) = a.records
    assert record["outcome"] == ("disruption" if disrupted else "error")
    assert record["disrupted"] is disrupted and record["exitCode"] == exit_code
    # the worker wrote no record: what Kubernetes said is the journal's error text
    assert record["error"] == (v.message or v.cause) and record["error"]
    assert a.progress.memory_retries == 0 and a.memory_failures == 0
    assert (a.progress.disruptions, a.progress.other_retries) == ((1, 0) if disrupted else (0, 1))
    assert [e.reason for e in a.events] == (["TileDisrupted"] if disrupted else [])


def test_an_evicted_pod_is_not_waited_for_even_without_any_time() -> None:
    """The bare eviction status with no start time and no operator memory at all: the
    disruption is relaunched on the very tick it is seen."""
    status = {k: v for k, v in TELL_LITTLE["evicted"].items() if k != "startTime"}
    pod = api_pod(launch_of(T2, 3, strategy="grow", memory=900 * MIB), status)
    del pod["metadata"]["creationTimestamp"]
    v = pod_view(pod)
    assert v is not None and v.finished_at is None and v.disrupted
    (launch,) = tick([v], parallelism=1).create
    assert (launch.tile, launch.attempt, launch.strategy) == (T2, 4, "disrupted")
    assert launch.memory == 900 * MIB  # the grown memory is kept: it was not the tile's fault


@pytest.mark.parametrize(
    ("change", "disrupted"),
    [
        ({"reason": "Evicted"}, True),
        ({"reason": "Preempting"}, True),
        ({"reason": "Shutdown"}, True),
        ({"reason": "NodeShutdown"}, True),
        ({"reason": "Terminated"}, True),
        (
            {"conditions": [condition("DisruptionTarget", "True", NOW, "PreemptionByScheduler")]},
            True,
        ),
        (
            {"conditions": [condition("DisruptionTarget", "True", NOW, "DeletionByTaintManager")]},
            True,
        ),
        ({"conditions": [condition("DisruptionTarget", "False", NOW, "X")]}, False),
        ({"reason": "OutOfcpu"}, False),
        ({"reason": "DeadlineExceeded"}, False),
        ({}, False),
    ],
)
def test_pod_view_reads_disruption_marks(change: dict[str, Any], disrupted: bool) -> None:
    pod = pod_object(launch_of(T0), "Failed", exit_code=143, finished_at=NOW - 10)
    pod["status"].update(change)
    v = pod_view(pod)
    assert v is not None and v.disrupted is disrupted
    assert to_attempt(T0, v.attempt_record()).failure == ("disruption" if disrupted else "error")
    if disrupted:
        assert v.cause and (change.get("reason") or "DisruptionTarget") in v.cause


def test_a_confirmed_oom_kill_is_never_a_disruption() -> None:
    """OOMKilled is the runtime's word for the tile's own memory failure, whatever else the
    pod carries (a DisruptionTarget added while it was being killed)."""
    pod = pod_object(launch_of(T0), "Failed", exit_code=137, reason="OOMKilled")
    pod["status"]["conditions"] = [
        condition("DisruptionTarget", "True", NOW, "EvictionByEvictionAPI")
    ]
    v = pod_view(pod)
    assert v is not None and v.oom_killed and not v.disrupted
    assert created(tick([v], parallelism=1)) == [(T0, 1, "shrinkChunks")]


def deleted(pod: dict[str, Any], requested: float, grace: int = 30) -> dict[str, Any]:
    """``pod`` with a deletion asked for at ``requested`` (the API adds the grace)."""
    pod["metadata"]["deletionTimestamp"] = now_iso(requested + grace)
    pod["metadata"]["deletionGracePeriodSeconds"] = grace
    return pod


def test_a_pod_killed_by_someone_elses_deletion_is_a_disruption_decided_while_it_lasts() -> None:
    """A drain or a user deletes a running worker: SIGTERM, exit 143 after the deletion was
    asked for. It is relaunched as it was (keeping its history), not retried as an error
    and not left to vanish (its tile would start over at attempt 0)."""
    first = {"n": 0, "m": 1, "c": 1.0, "s": "initial", "x": 3, "o": False, "d": False}
    launch = launch_of(T1, 1, strategy="shrinkChunks", chunk_scale=0.5, history=(first,))
    pod = deleted(pod_object(launch, "Failed", exit_code=143, finished_at=NOW - 5), NOW - 8)
    v = pod_view(pod)
    assert v is not None and v.deleting and v.disrupted and not v.alive
    a = tick([v], parallelism=1)
    assert created(a) == [(T1, 2, "disrupted")]
    assert a.create[0].chunk_scale == 0.5 and a.create[0].history == (first, v.attempt_record())
    assert a.progress.other_retries == 0 and a.progress.disruptions == 1
    # a pod of another plan (the operator deleted it when the spec changed): left alone
    old = pod_object(launch, "Failed", exit_code=143, digest="0ld0ld0ld")
    other = pod_view(deleted(old, NOW - 8))
    assert other is not None and other.disrupted and other.digest == "0ld0ld0ld"
    assert T1 not in [c.tile for c in tick([other], parallelism=4).create]
    # still terminating (not finished yet): it keeps its tile, undecided, as before
    r = pod_view(deleted(pod_object(launch, "Running"), NOW - 8))
    assert r is not None and r.deleting and not r.disrupted and not r.finished
    b = tick([r], parallelism=4)
    assert T1 not in [c.tile for c in b.create] and b.records == []


def test_the_operators_own_deletion_of_a_finished_pod_is_not_a_disruption() -> None:
    """A failed pod the operator retires (its outcome persisted) finished before its
    deletion was asked for: no disruption, no decision, no record."""
    pod = deleted(pod_object(launch_of(T2), "Failed", exit_code=2, finished_at=NOW - 30), NOW - 2)
    v = pod_view(pod)
    assert v is not None and v.deleting and not v.disrupted
    a = tick([v], persisted(failed_=[2]), parallelism=4)
    assert a.records == [] and a.events == [] and T2 not in [c.tile for c in a.create]
    # and a deleting pod of an open tile that is not a disruption is left alone, as before
    b = tick([v], parallelism=4)
    assert b.records == [] and T2 not in [c.tile for c in b.create]


def test_disruptions_never_count_against_backoff_limit() -> None:
    """backoffLimit 2: after two errors and six disruptions a disruption is still
    relaunched; the next error (the third) fails the tile; disruptions have their own bound."""
    err: dict[str, Any] = {"m": 1, "c": 1.0, "x": 1, "o": False, "d": False}
    dis: dict[str, Any] = {"m": 1, "c": 1.0, "x": None, "o": False, "d": True}
    hist = [
        {"n": 0, "s": "initial", **err},
        {"n": 1, "s": "retry", **err},
        {"n": 2, "s": "retry", **dis},
        *({"n": n, "s": "disrupted", **dis} for n in range(3, 8)),
    ]
    pod = failed(T0, 8, exit_code=None, disrupted=True, strategy="disrupted", history=hist)
    a = tick([pod], parallelism=1)
    assert created(a) == [(T0, 9, "disrupted")]
    after = failed(T0, 9, exit_code=1, strategy="disrupted", history=[*hist, pod.attempt_record()])
    b = tick([after], parallelism=1, keep_failed=5)
    assert b.progress.failed == {0} and "failed 3 times" in b.events[0].message
    assert "backoffLimit is 2" in b.events[0].message
    many = [{"n": n, "s": "disrupted", **dis} for n in range(policy.MAX_DISRUPTIONS)]
    last = failed(
        T0,
        policy.MAX_DISRUPTIONS,
        exit_code=137,
        disrupted=True,
        strategy="disrupted",
        history=many,
    )
    c = tick([last], parallelism=1)
    assert c.progress.failed == {0} and [e.reason for e in c.events] == ["TileFailed"]
    assert "disrupted" in c.events[0].message


def test_status_counts_disruptions_apart_from_retries() -> None:
    pods = [
        failed(T0, exit_code=None, disrupted=True, cause="Evicted: low on memory"),
        failed(T1, exit_code=137),  # 137 without OOMKilled, marked by pod_view too
        failed(T2, exit_code=137, oom=True),
        failed(T3, exit_code=1, finished_at=NOW - 3600),
    ]
    pods[1] = replace(pods[1], disrupted=True)
    a = tick(pods, persisted(memory_retries=1, other_retries=1), parallelism=4)
    assert status_of(RASTER, a)["retries"] == {"memory": 2, "other": 2, "disruptions": 2}
    assert a.memory_failures == 1 and a.disruptions == 2
    assert sorted(e.reason for e in a.events) == ["OutOfMemory", "TileDisrupted", "TileDisrupted"]
    assert "Evicted: low on memory" in next(e.message for e in a.events if T0 in e.message)
    back = Progress.from_status(status_of(RASTER, a))
    assert back.disruptions == 2 and back.key() == a.progress.key()


def test_suspended_holds_a_disrupted_pod_without_counting_it() -> None:
    """Suspending deletes running pods (a disruption by the operator itself): no successor
    while suspended, nothing counted; on resume it is relaunched as it was."""
    pod = deleted(pod_object(launch_of(T0), "Failed", exit_code=143, finished_at=NOW - 1), NOW - 2)
    v = pod_view(pod)
    assert v is not None and v.disrupted
    a = tick([v], parallelism=2, suspended=True)
    assert a.create == [] and a.records == [] and a.progress.disruptions == 0 and a.running == 1
    assert created(tick([v], parallelism=1)) == [(T0, 1, "disrupted")]


# ------------------------------------------------------------------------------- splitting


def split_ready(tile: str = T0, plan: Plan = RASTER) -> PodView:
    """Attempt 1 (shrinkChunks) of ``tile`` ran out of memory: the next strategy is split."""
    t = tile_of(plan, tile)
    first = {"n": 0, "m": t.memory_request_bytes, "c": 1.0, "s": "initial", "x": 3, "o": False}
    return failed(
        tile,
        1,
        exit_code=3,
        plan=plan,
        strategy="shrinkChunks",
        chunk_scale=0.5,
        history=[first],
        finished_at=NOW - 2,
    )


def test_split_decision_launches_children_in_the_same_tick() -> None:
    pod = split_ready()
    a = tick([pod], parallelism=4, keep_failed=3)
    assert a.progress.split == {T0}
    kids = TileTree(RASTER).children(RASTER.tiles[0])
    assert [(c.tile, c.attempt, c.strategy, c.memory) for c in a.create] == [
        (k.id, 0, "initial", k.memory_request_bytes) for k in kids
    ]
    assert [c.tile for c in a.create] == [f"{T0}-q{i}" for i in range(4)]
    assert a.changed and a.progress.memory_retries == 1
    (event,) = a.events
    assert event.reason == "OutOfMemory" and "split into" in event.message
    assert f"{T0}-q3" in event.message
    st = status_of(RASTER, a)
    assert st["subtiles"] == f"{T0}:s"  # T0 split, no child resolved yet
    assert pod.name not in a.delete  # a failed pod: kept for debugging
    assert a.pending == 7 and a.running == 0  # T1..T3 and the four quadrants are open


def test_split_children_respect_parallelism() -> None:
    a = tick([split_ready(), view(T1)], parallelism=3)
    assert [c.tile for c in a.create] == [f"{T0}-q0", f"{T0}-q1"]
    a = tick([split_ready(), view(T1)], parallelism=1)
    assert a.create == [] and a.progress.split == {T0}


def test_open_children_are_launched_from_persisted_split() -> None:
    st = persisted(split=[T0], sub_done=[f"{T0}-q0"])
    a = tick([view(f"{T0}-q1")], st, parallelism=3, keep_failed=0)
    assert [c.tile for c in a.create] == [f"{T0}-q2", f"{T0}-q3"]
    assert not a.changed


def test_children_succeeding_collapse_into_the_parent() -> None:
    st = persisted(split=[T0], memory_retries=2)
    kids = [succeeded(f"{T0}-q{i}") for i in range(4)]
    a = tick([*kids, split_ready()], st, parallelism=4, keep_failed=3)
    assert a.progress.completed == {0}
    assert a.progress.split == set() and a.progress.sub_done == set()
    assert sorted(a.delete) == sorted(k.name for k in kids)
    out = status_of(RASTER, a)
    assert out["completedTiles"] == "0"
    assert "subtiles" not in out
    assert progress_status(RASTER, a.progress, a)["subtiles"] is None  # merge-patch null
    assert [c.tile for c in a.create] == [T1, T2, T3]


def test_children_succeeding_over_several_ticks() -> None:
    st = persisted(split=[T0])
    a = tick([succeeded(f"{T0}-q0"), succeeded(f"{T0}-q1"), view(f"{T0}-q2")], st, parallelism=4)
    assert a.progress.sub_done == {f"{T0}-q0", f"{T0}-q1"}
    assert a.progress.completed == set()
    st2 = status_of(RASTER, a)
    assert st2["subtiles"] == f"{T0}:sdq0dq1"
    assert [c.tile for c in a.create] == [f"{T0}-q3", T1, T2]  # q2 holds the 4th slot
    b = tick([succeeded(f"{T0}-q2"), succeeded(f"{T0}-q3")], st2, parallelism=4)
    assert b.progress.completed == {0} and b.progress.split == set()
    assert b.progress.sub_done == set()


def test_a_failed_child_fails_the_parent_once_all_children_resolve() -> None:
    st = persisted(split=[T0], sub_done=[f"{T0}-q0", f"{T0}-q1"])
    a = tick([failed(f"{T0}-q2", exit_code=2), view(f"{T0}-q3")], st, parallelism=4)
    assert a.progress.sub_failed == {f"{T0}-q2"} and a.progress.failed == set()
    b = tick([succeeded(f"{T0}-q3")], status_of(RASTER, a), parallelism=4)
    assert b.progress.failed == {0} and b.progress.completed == set()
    assert b.progress.split == set() and b.progress.sub_failed == set()


def test_vector_split_and_nested_split_collapse() -> None:
    plan = VECTOR
    a = tick([split_ready("f000000", plan)], plan=plan, parallelism=4)
    assert a.progress.split == {"f000000"}
    assert [c.tile for c in a.create] == ["f000000-h0", "f000000-h1", "f000001"]
    # h0 splits again (its attempt 1 ran out of memory after shrinking); h1 runs
    st = status_of(plan, a)
    b = tick([split_ready("f000000-h0", plan), view("f000000-h1", plan=plan)], st, plan=plan)
    assert b.progress.split == {"f000000", "f000000-h0"}
    assert [c.tile for c in b.create] == ["f000000-h0-h0"]  # parallelism 2: h1 + one more
    c = tick(
        [view("f000000-h0-h0", plan=plan), view("f000000-h1", plan=plan)],
        status_of(plan, b),
        plan=plan,
        parallelism=3,
    )
    assert [x.tile for x in c.create] == ["f000000-h0-h1"]
    done = [succeeded(t, plan=plan) for t in ("f000000-h0-h0", "f000000-h0-h1", "f000000-h1")]
    d = tick(done, status_of(plan, c), plan=plan, parallelism=2)
    assert d.progress.completed == {0}
    assert d.progress.split == set() and d.progress.sub_done == set()
    assert [x.tile for x in d.create] == ["f000001"]


def test_unsplittable_tile_grows_instead() -> None:
    """A one-block quadrant can neither shrink nor split: grow is next."""
    kid = f"{T0}-q0"
    a = tick([failed(kid, exit_code=3)], persisted(split=[T0]), parallelism=1)
    (launch,) = a.create
    assert (launch.tile, launch.attempt, launch.strategy) == (kid, 1, "grow")
    assert launch.memory > tile_of(RASTER, kid).memory_request_bytes


# --------------------------------------------------------------------- superseded attempts


def test_superseded_failed_attempts_are_kept_bounded() -> None:
    old = failed(T0, 0, exit_code=3)
    new = view(T0, 1, strategy="shrinkChunks", chunk_scale=0.5)
    a = tick([old, new], parallelism=1, keep_failed=3)
    assert a.delete == [] and a.create == [] and a.records == []
    assert a.running == 1
    b = tick([old, new], parallelism=1, keep_failed=0)
    assert b.delete == [old.name]


def test_superseded_succeeded_attempts_are_deleted() -> None:
    old = succeeded(T0, 0)
    new = view(T0, 1, strategy="retry")
    a = tick([old, new], parallelism=1)
    assert a.delete == [old.name]
    assert a.progress.completed == set()  # the newest attempt decides the tile


def test_only_the_newest_attempt_is_decided() -> None:
    pods = [failed(T0, 0, exit_code=2), failed(T0, 1, exit_code=3, strategy="retry")]
    a = tick(list(reversed(pods)), parallelism=1)  # any order in, sorted by attempt
    assert created(a) == [(T0, 2, "shrinkChunks")]
    assert a.progress.failed == set()
    assert [r["attempt"] for r in a.records] == [1]


# ------------------------------------------------------------- tiles resolved in the status


def test_pods_of_completed_tiles_are_deleted_and_never_relaunched() -> None:
    st = persisted(completed=[0, 1])
    pods = [succeeded(T0), failed(T1, exit_code=3, finished_at=NOW - 1)]
    a = tick(pods, st, parallelism=4, keep_failed=0)
    assert sorted(a.delete) == sorted(p.name for p in pods)
    assert sorted(c.tile for c in a.create) == [T2, T3]
    assert all(c.attempt == 0 for c in a.create)
    assert a.records == [] and a.events == [] and not a.changed
    a = tick([], st, parallelism=4)
    assert T0 not in [c.tile for c in a.create] and T1 not in [c.tile for c in a.create]


def test_pods_of_failed_tiles_are_never_relaunched() -> None:
    st = persisted(failed_=[2])
    a = tick([failed(T2, exit_code=2)], st, parallelism=4)
    assert T2 not in [c.tile for c in a.create]
    assert a.delete == []  # kept (bounded)


def test_pods_of_collapsed_children_are_retired() -> None:
    st = persisted(completed=[0])
    kids = [succeeded(f"{T0}-q{i}") for i in range(4)]
    a = tick(kids, st, parallelism=4)
    assert sorted(a.delete) == sorted(k.name for k in kids)
    assert all(not c.tile.startswith(f"{T0}-") for c in a.create)


def test_pods_of_tiles_not_in_the_plan_are_retired() -> None:
    stray = [succeeded("r0009c0009", memory=1), failed("r0008c0008", exit_code=1, memory=1)]
    a = tick(stray, parallelism=4, keep_failed=0)
    assert sorted(a.delete) == sorted(p.name for p in stray)
    assert [c.tile for c in a.create] == [T0, T1, T2, T3]


# -------------------------------------------------------------------------------- finished


def test_finished_when_every_tile_is_resolved_and_no_pod_holds_a_slot() -> None:
    assert tick([], persisted(completed=[0, 1, 2, 3])).finished
    assert tick([], persisted(completed=[0, 1, 3], failed_=[2])).finished
    assert not tick([], persisted(completed=[0, 1, 2])).finished
    assert not tick([], persisted(completed=[1, 2, 3], split=[T0])).finished
    # every tile resolved, but an alive pod (a lingering one) still holds a slot
    assert not tick([view(T0, 1, strategy="retry")], persisted(completed=[0, 1, 2, 3])).finished
    a = tick([succeeded(T3)], persisted(completed=[0, 1, 2]))
    assert a.finished and a.running == 0 and a.pending == 0
    assert status_of(RASTER, a)["completedTiles"] == "0-3"


def test_finished_with_failed_pods_kept() -> None:
    a = tick([failed(T3, exit_code=2)], persisted(completed=[0, 1, 2]), keep_failed=3)
    assert a.finished and a.delete == [] and a.progress.failed == {3}


def test_not_finished_while_a_retry_waits_for_its_backoff() -> None:
    a = tick([failed(T3, exit_code=1, finished_at=NOW)], persisted(completed=[0, 1, 2]))
    assert not a.finished and a.create == []


def test_empty_plan_is_finished_at_once() -> None:
    empty = replace(RASTER, tiles=())
    a = tick(plan=empty)
    assert a.finished and a.create == []


# ------------------------------------------------------------------------------- suspend


def test_suspended_deletes_alive_pods_and_launches_nothing() -> None:
    pods = [view(T0, phase="Running"), view(T1, phase="Pending"), view(T2, deleting=True)]
    a = tick(pods, parallelism=4, suspended=True)
    assert sorted(a.delete) == sorted([pods[0].name, pods[1].name])
    assert a.create == []
    assert not a.finished  # pods are still terminating


def test_suspended_without_pods_launches_nothing() -> None:
    a = tick([], persisted(split=[T0]), parallelism=4, suspended=True)
    assert a.create == [] and a.delete == [] and not a.finished


def test_suspended_still_records_finished_pods() -> None:
    a = tick([succeeded(T0)], parallelism=4, suspended=True)
    assert a.progress.completed == {0} and a.create == []


@pytest.mark.parametrize("exit_code", [1, 3])
def test_suspended_launches_no_successor(exit_code: int) -> None:
    pod = failed(T0, exit_code=exit_code, finished_at=NOW - 3600)
    a = tick([pod], parallelism=4, suspended=True)
    assert a.create == []


# ----------------------------------------------------------------------- retry counters


def test_memory_and_other_retry_counters() -> None:
    st = persisted(memory_retries=2, other_retries=5)
    pods = [
        failed(T0, exit_code=3),
        failed(T1, exit_code=137, oom=True),
        failed(T2, exit_code=1, finished_at=NOW - 3600),
        failed(T3, exit_code=2),
    ]
    a = tick(pods, st, parallelism=4)
    assert a.progress.memory_retries == 4
    assert a.progress.other_retries == 6
    assert status_of(RASTER, a)["retries"] == {"memory": 4, "other": 6, "disruptions": 0}


def test_a_retry_waiting_for_backoff_is_counted_once() -> None:
    pod = failed(T0, exit_code=1, finished_at=NOW)  # backoff: 10 s
    st: dict[str, Any] | None = None
    for dt in (1, 3, 5, 7, 9, 11):
        a = tick([pod], st, parallelism=1, now=NOW + dt)
        st = status_of(RASTER, a)
    assert a.create and a.create[0].attempt == 1  # the retry did start, once
    assert a.progress.other_retries == 1


# ------------------------------------------------------------------------ peak and records


def test_peak_observed_prefers_cgroup_peak() -> None:
    pods = [
        succeeded(T0, record={"peakRssBytes": 900 * MIB, "cgroupPeakBytes": 300 * MIB}),
        succeeded(T1, record={"peakRssBytes": 200 * MIB}),
    ]
    a = tick(pods, parallelism=4)
    assert a.progress.peak_observed == 300 * MIB
    assert status_of(RASTER, a)["memory"]["peakObserved"] == "300Mi"


def test_peak_observed_never_decreases() -> None:
    st = persisted(peak=500 * MIB)
    a = tick([succeeded(T0, record={"cgroupPeakBytes": 100 * MIB})], st)
    assert a.progress.peak_observed == 500 * MIB
    b = tick([succeeded(T0, record={"cgroupPeakBytes": 700 * MIB})], st)
    assert b.progress.peak_observed == 700 * MIB


@pytest.mark.parametrize(
    "record",
    [None, {}, {"peakRssBytes": "a lot"}, {"cgroupPeakBytes": None, "peakRssBytes": None}],
)
def test_peak_observed_ignores_missing_or_bad_values(record: dict[str, Any] | None) -> None:
    a = tick([view(T0, phase="Succeeded", exit_code=0, record=record)], persisted(peak=7))
    assert a.progress.peak_observed == 7


def test_peak_from_failed_attempts_counts_too() -> None:
    a = tick([failed(T0, exit_code=3, record={"cgroupPeakBytes": 999 * MIB, "outcome": "memory"})])
    assert a.progress.peak_observed == 999 * MIB


def test_killed_worker_without_a_record_still_gets_a_journal_record() -> None:
    pod = pod_view(
        pod_object(launch_of(T1), "Failed", exit_code=137, reason="OOMKilled", finished_at=NOW)
    )
    assert pod is not None and pod.record is None
    a = tick([pod], parallelism=1)
    (rec,) = a.records
    assert rec == {
        "tile": T1,
        "outcome": "memory",
        "error": "OOMKilled by its cgroup",
        "attempt": 0,
        "strategy": "initial",
        "memory": RASTER.tiles[1].memory_request_bytes,
        "chunkScale": 1.0,
        "pod": pod_name(JOB, T1, 0),
        "exitCode": 137,
        "oomKilled": True,
        "disrupted": False,
    }


def test_journal_record_merges_the_workers_record() -> None:
    record = {
        "tile": "whatever-the-worker-said",
        "outcome": "succeeded",
        "peakRssBytes": 10,
        "output": "tiles/r0000c0000.tif",
        "attempt": 99,
    }
    a = tick([succeeded(T0, 2, record=record, strategy="grow", memory=5 * MIB)])
    (rec,) = a.records
    assert rec["output"] == "tiles/r0000c0000.tif" and rec["peakRssBytes"] == 10
    # the operator's own facts win over what the record claims
    assert (rec["tile"], rec["attempt"], rec["strategy"], rec["memory"]) == (T0, 2, "grow", 5 * MIB)
    assert rec["exitCode"] == 0 and rec["oomKilled"] is False


def test_journal_record_of_a_plain_failure_carries_the_message() -> None:
    a = tick([failed(T0, exit_code=1, message="boom", finished_at=NOW - 3600)])
    (rec,) = a.records
    assert rec["outcome"] == "error" and rec["error"] == "boom" and rec["exitCode"] == 1


# ------------------------------------------------------------------------- Progress / tree


def test_progress_from_status_round_trips_through_progress_status() -> None:
    p = Progress(
        completed={0, 1, 3},
        failed={2},
        sub_done={f"{T0}-q1"},
        sub_failed={f"{T0}-q2"},
        split={T0},
        memory_retries=3,
        other_retries=4,
        disruptions=5,
        peak_observed=12345,
    )
    assert Progress.from_status(progress_status(RASTER, p, None)).key() == p.key()
    assert Progress.from_status(None).key() == Progress().key()
    assert Progress.from_status({"subtiles": None, "retries": None}).key() == Progress().key()


def test_open_leaves_walks_nested_splits_in_plan_order() -> None:
    p = Progress(split={"f000000", "f000000-h0"}, sub_done={"f000000-h0-h0"})
    tree = TileTree(VECTOR)
    leaves = [t.id for t in open_leaves(tree, p)]
    assert leaves == ["f000000-h0-h1", "f000000-h1", "f000001"]
    assert tree.root("f000000-h0-h1") == 0 and tree.root("f000001") == 1
    assert tree.tile("f000000-h0-h1") is not None  # known by id once walked
    assert tree.tile("f000001-h0") is None  # never split: unknown


# ===================================================================== restart safety (sim)


@dataclass
class SimPod:
    obj: dict[str, Any]
    launch: PodLaunch
    deleting: bool = False


@dataclass
class Sim:
    """A cluster for the pure reconciler. Pods run scripted outcomes; status writes are lost,
    deletions are lost or linger, and finished pods wait for coalesced ticks, all at random
    (seeded). The controller's protocol is followed: create, then write the status, then
    delete only if the write landed or nothing changed. Nothing is remembered between ticks
    but the persisted status and the pods: every tick is a freshly restarted operator.

    Outcomes: a planned tile's first two attempts may fail (exit 1, exit 3, OOMKilled, an
    eviction — a bare ``Evicted`` status, no container state, no time — or a rejection at
    admission: Pending to Failed with nothing but a reason), so retries, disruptions, shrinks
    and splits happen; a sub-tile's first attempt may fail (then it grows, retries or is
    relaunched); everything after that succeeds, so every run ends with all tiles complete.
    Like the controller, the operator remembers when it first saw each pod finished (what
    ``pod_view`` falls back on when a pod tells no time); that memory is lost at random (a
    restarted process)."""

    plan: Plan
    seed: int
    parallelism: int = 3
    lose_write: float = 0.3
    lose_delete: float = 0.3
    skip_process: float = 0.3
    keep_failed: int = 2
    reuse_tree: bool = False  # one TileTree across ticks, as the controller keeps it
    tree: TileTree | None = None
    rng: random.Random = field(init=False)
    script_rng: random.Random = field(init=False)
    script: dict[tuple[str, int], str] = field(default_factory=dict)
    seen_finished: dict[str, float] = field(default_factory=dict)
    forget: float = 0.2
    pods: dict[str, SimPod] = field(default_factory=dict)
    status: dict[str, Any] | None = None
    now: float = NOW
    ticks: int = 0
    creates: list[PodLaunch] = field(default_factory=list)
    overruns: list[tuple[int, int]] = field(default_factory=list)  # (tick, pods alive)
    lost_writes: int = 0
    lost_deletes: int = 0
    job: GisJob = field(default_factory=job_model)
    config: policy.PolicyConfig = field(
        default_factory=lambda: replace(CONFIG, backoff_base=1.0, backoff_max=4.0)
    )

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.script_rng = random.Random(self.seed * 7919 + 1)

    def outcome(self, tile: str, attempt: int) -> str:
        """ok | error | memory | oomkilled | evicted | rejected"""
        key = (tile, attempt)
        if key not in self.script:
            r = self.script_rng.random()
            may_fail = attempt < (1 if "-" in tile else 2)
            if not may_fail or r < 0.5:
                out = "ok"
            elif r < 0.6:
                out = "error"
            elif r < 0.65:
                out = "rejected"
            elif r < 0.8:
                out = "memory"
            elif r < 0.9:
                out = "oomkilled"
            else:
                out = "evicted"
            self.script[key] = out
        return self.script[key]

    def kubelet(self) -> None:
        for name, sp in list(self.pods.items()):
            status = sp.obj["status"]
            if sp.deleting:
                if self.rng.random() < 0.6:  # terminated and gone (else: still terminating)
                    del self.pods[name]
                continue
            outcome = self.outcome(sp.launch.tile, sp.launch.attempt)
            if status["phase"] == "Pending" and self.rng.random() < 0.7:
                if outcome == "rejected":
                    status.update(phase="Failed", reason="OutOfmemory", message="Pod was rejected")
                else:
                    status["phase"] = "Running"
            elif status["phase"] == "Running" and self.rng.random() < 0.5:
                if outcome == "evicted":
                    status.update(phase="Failed", reason="Evicted", message=EVICTION_MESSAGE)
                    continue
                code, oom = {"ok": (0, False), "error": (1, False), "memory": (3, False)}.get(
                    outcome, (137, True)
                )
                term: dict[str, Any] = {
                    "exitCode": code,
                    "reason": "OOMKilled" if oom else ("Completed" if code == 0 else "Error"),
                    "finishedAt": now_iso(self.now),
                }
                if not oom:  # a killed worker writes no record
                    term["message"] = (
                        f'{{"tile": "{sp.launch.tile}", "cgroupPeakBytes": {1000 + self.ticks}}}'
                    )
                status["phase"] = "Succeeded" if code == 0 else "Failed"
                status["containerStatuses"] = [{"name": "worker", "state": {"terminated": term}}]

    def _tree(self) -> TileTree | None:
        if not self.reuse_tree:
            return None
        if self.tree is None:
            self.tree = TileTree(self.plan)
        return self.tree

    def resolved_in_status(self, tile: str) -> bool:
        """The persisted status says this tile (or an ancestor) is done or failed."""
        p = Progress.from_status(self.status)
        for i, t in enumerate(self.plan.tiles):
            if (tile == t.id or tile.startswith(f"{t.id}-")) and (i in p.completed | p.failed):
                return True
        return any(tile == s or tile.startswith(f"{s}-") for s in p.sub_done | p.sub_failed)

    def operator(self) -> Actions:
        if self.rng.random() < self.forget:
            self.seen_finished.clear()  # a restarted operator remembers nothing
        views = []
        for name, sp in self.pods.items():
            seen = None
            if sp.obj["status"]["phase"] in ("Succeeded", "Failed"):
                seen = self.seen_finished.setdefault(name, self.now)
            v = pod_view(sp.obj, seen_finished=seen)
            if v is not None:
                views.append(v)
        process = self.rng.random() >= self.skip_process
        before = Progress.from_status(self.status)
        actions = reconcile(
            self.plan,
            self.status,
            views,
            self.config,
            self.parallelism,
            self.now,
            process_finished=process,
            keep_failed=self.keep_failed,
            tree=self._tree(),
        )
        for launch in actions.create:
            name = pod_name(JOB, launch.tile, launch.attempt)
            assert name not in self.pods, f"tick {self.ticks}: asked to create existing {name}"
            if launch.attempt == 0:
                assert not self.resolved_in_status(launch.tile), (
                    f"tick {self.ticks}: {launch.tile} launched at attempt 0 although the "
                    f"persisted status resolved it: {self.status}"
                )
            obj = build_worker_pod(self.job, UID, NS, launch, self.plan.digest)
            obj["status"] = {"phase": "Pending"}
            self.pods[name] = SimPod(obj, launch)
            self.creates.append(launch)
        alive = sum(
            1
            for sp in self.pods.values()
            if not sp.deleting and sp.obj["status"]["phase"] in ("Pending", "Running")
        )
        if alive > self.parallelism:
            self.overruns.append((self.ticks, alive))
        wrote = False
        if process or actions.finished:
            if self.rng.random() >= self.lose_write:
                new = progress_status(self.plan, actions.progress, actions)
                merged = {**(self.status or {}), **new}
                self.status = {k: v for k, v in merged.items() if v is not None}
                wrote = True
            else:
                self.lost_writes += 1
        if wrote or not actions.changed:
            for name in actions.delete:
                if name not in self.pods:
                    continue
                if self.rng.random() < self.lose_delete:
                    self.lost_deletes += 1
                else:
                    self.pods[name].deleting = True
        after = Progress.from_status(self.status)
        assert before.completed <= after.completed, f"tick {self.ticks}: completed tiles lost"
        assert before.failed <= after.failed, f"tick {self.ticks}: failed tiles lost"
        return actions

    def run(self, max_ticks: int = 2000) -> Sim:
        while self.ticks < max_ticks:
            self.kubelet()
            actions = self.operator()
            self.ticks += 1
            self.now += 1.0
            p = Progress.from_status(self.status)
            if actions.finished and len(p.completed | p.failed) == len(self.plan.tiles):
                return self
        raise AssertionError(f"not finished after {max_ticks} ticks: {self.status}")


SIM_SEEDS = range(10)
SIM_PLAN = raster_plan(size=4096)  # 16 splittable 1024x1024 tiles


@functools.cache
def sim_run(seed: int) -> Sim:
    return Sim(SIM_PLAN, seed).run()


@pytest.mark.parametrize("seed", SIM_SEEDS)
def test_restart_safety_under_lost_writes_and_lingering_pods(seed: int) -> None:
    """Per tick (asserted inside the simulation): no tile resolved in the persisted status
    is launched at attempt 0 again, no existing pod is created again, at most
    ``parallelism`` pods are alive, and persisted completion never shrinks. At the end:
    every tile is complete and the split bookkeeping has left the status."""
    sim = sim_run(seed)
    assert sim.status is not None
    p = Progress.from_status(sim.status)
    assert p.completed == set(range(16)), sim.status
    assert p.failed == set()
    assert p.split == set() and p.sub_done == set() and p.sub_failed == set()
    assert expand(sim.status["completedTiles"]) == set(range(16))
    assert sim.status["progress"] == "16/16"
    assert "subtiles" not in sim.status
    assert sim.lost_writes > 0 and sim.lost_deletes > 0  # the faults did happen


@pytest.mark.parametrize("seed", SIM_SEEDS)
def test_every_planned_tile_starts_exactly_once(seed: int) -> None:
    sim = sim_run(seed)
    first = [c.tile for c in sim.creates if c.attempt == 0 and "-" not in c.tile]
    assert sorted(first) == sorted(t.id for t in SIM_PLAN.tiles)


@pytest.mark.parametrize("seed", SIM_SEEDS[:4])
def test_a_tile_tree_kept_across_ticks_changes_nothing(seed: int) -> None:
    """The controller keeps one TileTree per plan (a tick at 100,000 tiles was spending a
    third of its time rebuilding it): same creations, same final status as fresh trees."""
    fresh = sim_run(seed)
    kept = Sim(SIM_PLAN, seed, reuse_tree=True).run()
    assert kept.tree is not None and kept.tree.plan is SIM_PLAN
    assert kept.creates == fresh.creates
    assert kept.status == fresh.status
    other = raster_plan(size=2048)
    stale = TileTree(other)  # a tree of another plan is never used
    a = reconcile(SIM_PLAN, None, [], CONFIG, 3, NOW, tree=stale)
    b = reconcile(SIM_PLAN, None, [], CONFIG, 3, NOW)
    assert a.create == b.create and [c.tile for c in a.create] == [t.id for t in SIM_PLAN.tiles[:3]]


def test_simulation_exercises_every_strategy() -> None:
    seen: set[str] = set()
    for seed in SIM_SEEDS:
        sim = sim_run(seed)
        seen |= {c.strategy for c in sim.creates}
        if any("-q" in c.tile for c in sim.creates):
            seen.add("split")
    assert {"initial", "retry", "disrupted", "shrinkChunks", "split", "grow"} <= seen


def test_no_pod_is_created_twice_and_parallelism_holds_under_faults() -> None:
    problems = {}
    for seed in SIM_SEEDS:
        sim = sim_run(seed)
        names = [pod_name(JOB, c.tile, c.attempt) for c in sim.creates]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated or sim.overruns:
            problems[seed] = {"created twice": repeated, "(tick, pods alive)": sim.overruns}
    assert not problems


def test_a_clean_run_creates_each_pod_once() -> None:
    """No lost writes or deletions, no coalescing: exactly one pod per decided attempt."""
    sim = Sim(SIM_PLAN, 0, lose_write=0.0, lose_delete=0.0, skip_process=0.0).run()
    names = [pod_name(JOB, c.tile, c.attempt) for c in sim.creates]
    assert len(names) == len(set(names))
    assert sim.lost_writes == 0


def test_children_finishing_before_the_split_is_persisted_are_recorded() -> None:
    parent = split_ready()
    first = tick([parent], parallelism=4)  # the split tick ...
    assert first.progress.split == {T0} and len(first.create) == 4
    # ... whose status write is lost; meanwhile the children ran and succeeded
    kids = [succeeded(c.tile) for c in first.create]
    again = tick([parent, *kids], None, parallelism=4)  # the split is decided again
    assert again.progress.completed == {0}, f"children's success dropped: {again.delete}"
    assert [c.tile for c in again.create] == [T1, T2, T3]  # no child runs a second time


def test_children_of_an_unrecorded_split_are_kept_on_unprocessed_ticks() -> None:
    parent = split_ready()
    kid = succeeded(f"{T0}-q0")
    a = tick([parent, kid], None, parallelism=4, process_finished=False)
    assert kid.name not in a.delete, "the child's outcome is recorded nowhere yet"
