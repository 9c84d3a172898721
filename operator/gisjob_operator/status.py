"""GisJob status (pure): bounded in size however many tiles the plan has."""

from __future__ import annotations

from typing import Any

from gisjob_worker.plan import Plan
from gisjob_worker.quantity import round_up_mib, to_quantity
from gisjob_worker.ranges import encode

from .progress import Progress, encode_subtiles
from .reconcile import Actions

TERMINAL = ("Succeeded", "Failed")


def set_condition(
    conditions: list[dict[str, Any]],
    type_: str,
    status: str,
    reason: str,
    message: str,
    now: str,
    generation: int | None,
) -> list[dict[str, Any]]:
    """Conditions with ``type_`` set; lastTransitionTime kept when the status is unchanged."""
    out = [dict(c) for c in conditions if c.get("type") != type_]
    previous = next((c for c in conditions if c.get("type") == type_), None)
    since = now
    if previous is not None and previous.get("status") == status:
        since = previous.get("lastTransitionTime", now)
    out.append(
        {
            "type": type_,
            "status": status,
            "reason": reason,
            "message": message[:1024],
            "lastTransitionTime": since,
            "observedGeneration": generation,
        }
    )
    order = {"Planned": 0, "Running": 1, "Complete": 2, "Failed": 3, "Suspended": 4}
    return sorted(out, key=lambda c: (order.get(c["type"], 9), c["type"]))


def plan_status(plan: Plan) -> dict[str, Any]:
    return {
        "tiles": len(plan.tiles),
        "estimatedPeakBytes": plan.max_estimate,
        "memoryRequestBytes": plan.max_request,
        "memoryRequest": str(to_quantity(round_up_mib(plan.max_request))),
        "sumMemoryRequestBytes": plan.sum_requests,
        "digest": plan.digest,
    }


def progress_status(plan: Plan, p: Progress, actions: Actions | None) -> dict[str, Any]:
    total = len(plan.tiles)
    succeeded, failed = len(p.completed), len(p.failed)
    running = actions.running if actions else 0
    out: dict[str, Any] = {
        "tiles": {
            "total": total,
            "pending": max(0, total - succeeded - failed - running),
            "running": running,
            "succeeded": succeeded,
            "failed": failed,
        },
        "progress": f"{succeeded}/{total}",
        "completedTiles": encode(p.completed),
        "failedTiles": encode(p.failed),
        "retries": {
            "memory": p.memory_retries,
            "other": p.other_retries,
            "disruptions": p.disruptions,
        },
        "memory": {
            "peakObservedBytes": p.peak_observed,
            "peakObserved": f"{p.peak_observed / 1024**2:.0f}Mi" if p.peak_observed else "",
            "requestMaxBytes": plan.max_request,
        },
        # open splits, grouped by planned tile and compressed when long (see
        # progress.encode_subtiles); a string replaces any earlier form under merge-patch,
        # and null removes the key when no split is in progress
        "subtiles": encode_subtiles(p.split, p.sub_done, p.sub_failed) or None,
    }
    return out
