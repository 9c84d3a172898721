"""How much memory and how many workers a local run may use on this machine."""

from __future__ import annotations

import os

from .cgroup import current as current_cgroup

DEFAULT_SHARE = 0.8


def default_allowance(share: float = DEFAULT_SHARE) -> int:
    """``share`` of available memory, or of the cgroup limit when the runner is inside one."""
    import psutil

    available = int(psutil.virtual_memory().available)
    cg = current_cgroup()
    if cg is not None and cg.limit is not None:
        in_cgroup = cg.limit - (cg.usage or 0)
        available = min(available, max(0, in_cgroup))
    return int(available * share)


def default_workers(parallelism: int) -> int:
    """``auto``: the spec's parallelism, at most one worker per CPU this process may use."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(parallelism, cpus))
