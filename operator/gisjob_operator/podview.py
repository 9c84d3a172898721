"""What the reconciler needs of one worker pod (pure): :class:`PodView` from a pod as the
API returns it — including pods that tell little (no ``finishedAt``, no exit code: evicted,
lost, rejected) — and which endings are disruptions rather than the tile's own failures.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from gisjob_worker import policy
from gisjob_worker.quantity import parse_quantity

from .pods import (
    ANNOTATION_CHUNK_SCALE,
    ANNOTATION_DIGEST,
    ANNOTATION_HISTORY,
    ANNOTATION_STRATEGY,
    LABEL_ATTEMPT,
    LABEL_TILE,
)

FINISHED = ("Succeeded", "Failed")
# pod ``status.reason`` values Kubernetes gives pods it ended for reasons not their own:
# kubelet evictions (node pressure), kubelet preemption of a critical pod, (graceful) node
# shutdown, the node controller's lost node
DISRUPTION_REASONS = frozenset(
    {"Evicted", "Preempting", "Shutdown", "NodeShutdown", "Terminated", "NodeLost"}
)
# the container's ``state.terminated.reason`` when the kubelet lost the container (node or
# runtime gone): nothing says how the worker ended
CONTAINER_UNKNOWN = "ContainerStatusUnknown"
OOM_KILLED = "OOMKilled"
SIGKILL_EXIT = 137


@dataclass(frozen=True)
class PodView:
    """What the reconciler needs of one worker pod."""

    name: str
    tile: str
    attempt: int
    phase: str  # Pending | Running | Succeeded | Failed | Unknown
    memory: int
    chunk_scale: float
    strategy: str
    history: tuple[dict[str, Any], ...]
    exit_code: int | None = None
    oom_killed: bool = False
    record: dict[str, Any] | None = None
    # when the pod finished (epoch seconds), as well as anyone can tell: the container's
    # finishedAt, else the pod's latest condition transition, deletion, start, when this
    # operator first saw it finished, creation (see pod_view); None only when none is known
    finished_at: float | None = None
    deleting: bool = False
    message: str | None = None  # the container's termination message
    disrupted: bool = False  # ended by something other than the tile (eviction, node loss…)
    cause: str | None = None  # why Kubernetes says it ended (reason: message), if it says
    digest: str | None = None  # the plan digest the pod was made for (None: not known)
    # Pending and not schedulable (PodScheduled=False, Unschedulable): since when, and why
    unschedulable_since: float | None = None
    unschedulable: str | None = None

    @property
    def finished(self) -> bool:
        return self.phase in FINISHED

    @property
    def alive(self) -> bool:
        return not self.finished and not self.deleting

    def attempt_record(self) -> dict[str, Any]:
        """The compact form kept in the successor's history annotation."""
        return {
            "n": self.attempt,
            "m": self.memory,
            "c": self.chunk_scale,
            "s": self.strategy,
            "x": self.exit_code,
            "o": self.oom_killed,
            "d": self.disrupted,
        }


def parse_time(text: Any) -> float | None:
    if not text or not isinstance(text, str):
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _terminated(status: dict[str, Any]) -> dict[str, Any] | None:
    """The worker container's terminated state (the last one listed), if it has one."""
    term = None
    for cs in status.get("containerStatuses") or []:
        t = (cs.get("state") or {}).get("terminated")
        if t:
            term = t
    return term


def _deletion_requested(meta: dict[str, Any]) -> float | None:
    """When the pod's deletion was asked for: ``deletionTimestamp`` is that time plus the
    grace period."""
    at = parse_time(meta.get("deletionTimestamp"))
    if at is None:
        return None
    grace = meta.get("deletionGracePeriodSeconds")
    return at - float(grace) if isinstance(grace, int | float) else at


def _disruption(
    meta: dict[str, Any], status: dict[str, Any], term: dict[str, Any] | None
) -> str | None:
    """Why the pod was ended by something other than its tile, or None when it was not (as
    far as the pod tells)."""
    if term is not None and term.get("reason") == OOM_KILLED:
        return None  # the runtime confirms an OOM kill: the tile's own memory failure
    for c in status.get("conditions") or []:
        if c.get("type") == "DisruptionTarget" and c.get("status") == "True":
            return f"DisruptionTarget: {c.get('reason') or 'unknown'}"
    if status.get("reason") in DISRUPTION_REASONS:
        return str(status["reason"])
    if term is not None and term.get("reason") == CONTAINER_UNKNOWN:
        return CONTAINER_UNKNOWN
    requested = _deletion_requested(meta)
    if requested is not None:
        # the operator deletes only pods that already finished (or, suspended, all): a pod
        # that was still running when its deletion was asked for was ended by the deletion
        finished = parse_time(term.get("finishedAt")) if term is not None else None
        if term is None or finished is None or finished >= requested:
            return "deleted while running"
    if term is not None and term.get("exitCode") == SIGKILL_EXIT:
        return f"exit {SIGKILL_EXIT} (SIGKILL) without {OOM_KILLED}"
    return None


def _finish_time(
    meta: dict[str, Any],
    status: dict[str, Any],
    term: dict[str, Any] | None,
    seen_finished: float | None,
) -> float | None:
    """The best known time a finished pod finished. Evicted, lost and rejected pods often
    have no terminated container, or one without ``finishedAt``: then the latest of what
    the pod does tell (its conditions' transitions — Ready → False, DisruptionTarget —, the
    deletion request, its start), else the time the operator first saw it finished, else
    its creation."""
    at = parse_time(term.get("finishedAt")) if term is not None else None
    if at is not None:
        return at
    told = [parse_time(c.get("lastTransitionTime")) for c in status.get("conditions") or []]
    told += [_deletion_requested(meta), parse_time(status.get("startTime"))]
    known = [t for t in told if t is not None]
    if known:
        return max(known)
    if seen_finished is not None:
        return seen_finished
    return parse_time(meta.get("creationTimestamp"))


def pod_view(pod: dict[str, Any], seen_finished: float | None = None) -> PodView | None:
    """Parse a pod object (as a dict, API field names); None if it is not a worker pod.

    ``seen_finished``: when this operator (process) first saw the pod in a finished phase —
    the time a retry's backoff counts from when the pod itself tells no time at all.
    """
    meta = pod.get("metadata") or {}
    labels = meta.get("labels") or {}
    annotations = meta.get("annotations") or {}
    if LABEL_TILE not in labels or LABEL_ATTEMPT not in labels:
        return None
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    phase = status.get("phase") or "Pending"
    containers = spec.get("containers") or [{}]
    limits = ((containers[0].get("resources") or {}).get("limits")) or {}
    try:
        memory = parse_quantity(str(limits.get("memory", "0")))
    except ValueError:
        memory = 0
    term = _terminated(status)
    exit_code: int | None = None
    oom = False
    message = None
    record = None
    if term is not None:
        code = term.get("exitCode")
        exit_code = code if isinstance(code, int) else None
        oom = term.get("reason") == OOM_KILLED
        message = term.get("message")
    elif phase == "Succeeded":
        exit_code = 0  # every container exited 0, whatever the statuses still show
    if message:
        try:
            parsed = json.loads(message)
            record = parsed if isinstance(parsed, dict) else None
        except ValueError:
            record = None
    try:
        history = tuple(json.loads(annotations.get(ANNOTATION_HISTORY, "[]")))
    except ValueError:
        history = ()
    finished = phase in FINISHED
    why = _disruption(meta, status, term) if finished else None
    said = " ".join(str(status.get("message") or "").split())[:300]
    reason = status.get("reason") or (term.get("reason") if term is not None else None)
    told = ": ".join(str(x) for x in (reason, said) if x)
    cause = told if why is None or told.startswith(why) else "; ".join(x for x in (why, told) if x)
    return PodView(
        name=meta.get("name", ""),
        tile=labels[LABEL_TILE],
        attempt=int(labels[LABEL_ATTEMPT]),
        phase=phase,
        memory=memory,
        chunk_scale=float(annotations.get(ANNOTATION_CHUNK_SCALE, "1.0")),
        strategy=annotations.get(ANNOTATION_STRATEGY, "initial"),
        history=history,
        exit_code=exit_code,
        oom_killed=oom,
        record=record,
        finished_at=_finish_time(meta, status, term, seen_finished) if finished else None,
        deleting=bool(meta.get("deletionTimestamp")),
        message=message,
        disrupted=why is not None,
        cause=(cause or None) if finished else None,
        digest=annotations.get(ANNOTATION_DIGEST),
        **_unschedulable(status) if phase == "Pending" else {},
    )


def _unschedulable(status: dict[str, Any]) -> dict[str, Any]:
    """A Pending pod the scheduler cannot place: ``PodScheduled=False`` with reason
    ``Unschedulable`` (its message says why: memory, taints, selectors)."""
    for cond in status.get("conditions") or []:
        if (
            cond.get("type") == "PodScheduled"
            and cond.get("status") == "False"
            and cond.get("reason") == "Unschedulable"
        ):
            return {
                "unschedulable_since": parse_time(cond.get("lastTransitionTime")),
                "unschedulable": " ".join(str(cond.get("message") or "").split())[:300]
                or "Unschedulable",
            }
    return {}


def to_attempt(tile: str, h: dict[str, Any]) -> policy.Attempt:
    return policy.attempt_from_history(tile, h)
