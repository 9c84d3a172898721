"""Planner and finalizer pods (pure): which exist for a key, what their termination
messages say, and what to do next — wait, take the result, fail, or retry after a backoff.

The controller carries the decision out (creates and deletes pods, posts the event); nothing
here talks to the API.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

from gisjob_worker import policy

from .pods import LABEL_ATTEMPT, LABEL_ROLE
from .podview import FINISHED, parse_time

FINISHED_PHASES = FINISHED
StepState = Literal["running", "done", "failed"]


@dataclass(frozen=True)
class RoleStep:
    """What to do with a job's planner (or finalizer) pods this tick."""

    state: StepState
    record: dict[str, Any] | None = None  # the pod's result (done, failed)
    message: str = ""  # why (running, failed)
    create: int | None = None  # an attempt to create now
    delete: list[str] = field(default_factory=list)  # pods to delete first (older attempts)
    retry: bool = False  # the create replaces a failed attempt (an event says so)


def role_pods(
    pods: list[dict[str, Any]], role: str, key_annotation: str, key: str
) -> list[dict[str, Any]]:
    """This job's pods of one role for one spec/plan key, oldest attempt first."""
    out = []
    for pod in pods:
        meta = pod.get("metadata") or {}
        if (meta.get("labels") or {}).get(LABEL_ROLE) != role:
            continue
        if (meta.get("annotations") or {}).get(key_annotation) != key:
            continue
        out.append(pod)
    return sorted(out, key=attempt_of)


def attempt_of(pod: dict[str, Any]) -> int:
    try:
        return int(((pod.get("metadata") or {}).get("labels") or {}).get(LABEL_ATTEMPT, 0))
    except ValueError:
        return 0


def termination_record(pod: dict[str, Any]) -> dict[str, Any] | None:
    """The JSON result a planner/finalizer pod left in its termination message."""
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        term = (cs.get("state") or {}).get("terminated") or {}
        message = term.get("message")
        if message:
            try:
                data = json.loads(message)
            except ValueError:
                return None
            return data if isinstance(data, dict) else None
    return None


def failure_text(pod: dict[str, Any], record: dict[str, Any] | None) -> str:
    """Why a planner/finalizer pod failed, in one line: its own error, else what Kubernetes
    says (evicted, OOMKilled, exit code)."""
    if record and record.get("error"):
        return " ".join(str(record["error"]).split())
    status = pod.get("status") or {}
    for cs in status.get("containerStatuses") or []:
        term = (cs.get("state") or {}).get("terminated") or {}
        if term:
            text = f"exit {term.get('exitCode')}, {term.get('reason') or 'Error'}"
            message = " ".join(str(term.get("message") or "").split())
            return f"{text}: {message[:300]}" if message else text
    reason = status.get("reason") or "Failed"
    message = " ".join(str(status.get("message") or "").split())
    return f"{reason}: {message[:300]}" if message else reason


def finished_at(pod: dict[str, Any]) -> float | None:
    """The container's finishedAt, when the pod has one (evicted or lost pods do not)."""
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        at = parse_time(((cs.get("state") or {}).get("terminated") or {}).get("finishedAt"))
        if at is not None:
            return at
    return None


def role_step(
    pods: list[dict[str, Any]],
    what: str,
    now: float,
    first_seen_finished: float,
    retries: int,
    backoff_base: float,
    backoff_max: float,
) -> RoleStep:
    """Drive one planner/finalizer pod to a result. ``first_seen_finished``: when this
    process first saw the newest pod finished (used when the pod has no finishedAt).
    Failures other than input errors (exit 2) are retried with backoff up to ``retries``
    attempts; the attempt number is in the pod's name."""
    newest = pods[-1] if pods else None
    if newest is None:
        return RoleStep("running", message=f"{what} pod started", create=0)
    phase = (newest.get("status") or {}).get("phase")
    if phase not in FINISHED_PHASES or (newest.get("metadata") or {}).get("deletionTimestamp"):
        return RoleStep("running", message=f"{what} pod {newest['metadata']['name']} is {phase}")
    record = termination_record(newest)
    if phase == "Succeeded" and record is not None and record.get("exitCode", 0) == 0:
        return RoleStep("done", record=record)
    attempt = attempt_of(newest)
    why = failure_text(newest, record)
    if record is not None and record.get("exitCode") == 2:
        return RoleStep("failed", record=record, message=why)
    if (newest.get("status") or {}).get("reason") == "DeadlineExceeded":
        # activeDeadlineSeconds: the same input would take as long again
        limit = (newest.get("spec") or {}).get("activeDeadlineSeconds")
        took = f"longer than its {limit} s deadline" if limit else "past its deadline"
        return RoleStep("failed", record=record, message=f"{what} pod ran {took}: {why}")
    if attempt + 1 >= retries:
        return RoleStep("failed", record=record, message=f"{why} ({attempt + 1} attempts)")
    message = f"{what} pod failed ({why}); retrying"
    delay = policy.backoff(attempt + 1, backoff_base, backoff_max)
    since = finished_at(newest)
    if now < (since if since is not None else first_seen_finished) + delay:
        return RoleStep("running", message=message)
    return RoleStep(
        "running",
        message=message,
        create=attempt + 1,
        delete=[p["metadata"]["name"] for p in pods],
        retry=True,
    )
