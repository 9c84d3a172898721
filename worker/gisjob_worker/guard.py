"""The memory guard: a soft ceiling below the hard limit, checked before and after each chunk.

The hard limit is the smaller of the worker's budget and its cgroup's limit. The soft ceiling
sits a margin below it; a chunk whose predicted working set would cross it raises
:class:`MemoryCeilingError` (exit 3) instead of letting the kernel OOM-kill the process.
``RLIMIT_AS`` is never used: it caps reserved address space, not use, and breaks GDAL threads.
"""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass

from .cgroup import CgroupMemory
from .errors import MemoryCeilingError
from .quantity import format_bytes

MARGIN_FRACTION = 0.05
MIN_MARGIN = 8 * 1024**2
_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    """Resident set size of this process (cheap: one read of /proc/self/statm)."""
    with open("/proc/self/statm", encoding="ascii") as fh:
        return int(fh.read().split()[1]) * _PAGE


def peak_rss_bytes() -> int:
    """High-water mark of this process's RSS: ``VmHWM`` of its own address space.

    ``ru_maxrss`` is not used where VmHWM exists: Linux carries it over from the forked copy
    of the parent across ``exec``, so a worker started by a 400 MB parent would report 400 MB.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def soft_ceiling(hard: int) -> int:
    return hard - max(int(hard * MARGIN_FRACTION), MIN_MARGIN)


@dataclass
class MemoryGuard:
    budget: int
    cgroup: CgroupMemory | None = None

    def __post_init__(self) -> None:
        limit = self.cgroup.limit if self.cgroup is not None else None
        self.hard = min(self.budget, limit) if limit else self.budget
        self.soft = soft_ceiling(self.hard)

    def check_before(self, needed: int, what: str, rss: int | None = None) -> int:
        """Raise if ``needed`` more bytes on top of the current RSS would cross the ceiling."""
        now = rss_bytes() if rss is None else rss
        if now + needed > self.soft:
            raise MemoryCeilingError(
                f"{what} needs {format_bytes(needed)} on top of {format_bytes(now)} resident: "
                f"over the soft ceiling of {format_bytes(self.soft)} "
                f"(limit {format_bytes(self.hard)})",
                needed=now + needed,
                ceiling=self.soft,
            )
        return now

    def check_after(self, what: str, rss: int | None = None) -> int:
        now = rss_bytes() if rss is None else rss
        if now > self.soft:
            raise MemoryCeilingError(
                f"{what} left {format_bytes(now)} resident: over the soft ceiling of "
                f"{format_bytes(self.soft)} (limit {format_bytes(self.hard)})",
                needed=now,
                ceiling=self.soft,
            )
        return now


M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 1024**2


def tune_allocator(threshold: int = MMAP_THRESHOLD) -> bool:
    """Serve allocations above ``threshold`` (chunk arrays) with their own mappings.

    glibc otherwise raises its mmap threshold after the first large free, so later chunk
    arrays come from the heap and stay resident after ``del``: RSS then carries the previous
    chunk into the guard's check of the next one. A fixed threshold returns each chunk's
    arrays to the OS when they are freed. Call once, early; a no-op off glibc.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        return bool(ctypes.CDLL(name).mallopt(M_MMAP_THRESHOLD, threshold))
    except (OSError, AttributeError):
        return False


def malloc_trim() -> bool:
    """Return freed heap to the OS (glibc); a no-op elsewhere."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.malloc_trim(0))
    except (OSError, AttributeError):
        return False
