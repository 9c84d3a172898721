"""Read this process's memory cgroup (v2 or v1): limit, usage, peak and OOM kills.

The limit is the effective one: the smallest along the cgroup's path, since an ancestor's
limit binds every cgroup under it (a pod's cgroup above its container's, a user slice above
a session scope). cgroup v1 reports it as ``hierarchical_memory_limit`` in ``memory.stat``;
on v2 each ``memory.max`` from the cgroup up to the root visible here (the cgroup
namespace's root, mounted at the hierarchy's mount point) is read.
"""

from __future__ import annotations

import errno
import secrets
from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
# v1 reports "no limit" as a huge page-aligned number
V1_UNLIMITED = 1 << 60


@dataclass(frozen=True)
class CgroupMemory:
    version: int
    path: Path
    limit: int | None  # effective: the smallest limit of the cgroup and its ancestors
    usage: int | None
    peak: int | None
    oom_kills: int | None


def _read_int(p: Path) -> int | None:
    try:
        text = p.read_text().strip()
    except OSError:
        return None
    if text == "max":
        return None
    try:
        return int(text)
    except ValueError:
        return None


def _read_kv(p: Path, key: str) -> int | None:
    try:
        for line in p.read_text().splitlines():
            k, _, v = line.partition(" ")
            if k == key:
                return int(v)
    except (OSError, ValueError):
        return None
    return None


def _smallest(limits: list[int | None], unlimited: int | None = None) -> int | None:
    real = [x for x in limits if x is not None and (unlimited is None or x < unlimited)]
    return min(real) if real else None


def read_v1(d: Path) -> CgroupMemory:
    """A v1 memory cgroup. Its limit is the smaller of its own and the hierarchy's
    (``hierarchical_memory_limit``: the smallest limit of its ancestors, itself included)."""
    limit = _smallest(
        [
            _read_int(d / "memory.limit_in_bytes"),
            _read_kv(d / "memory.stat", "hierarchical_memory_limit"),
        ],
        V1_UNLIMITED,
    )
    return CgroupMemory(
        version=1,
        path=d,
        limit=limit,
        usage=_read_int(d / "memory.usage_in_bytes"),
        peak=_read_int(d / "memory.max_usage_in_bytes"),
        oom_kills=_read_kv(d / "memory.oom_control", "oom_kill"),
    )


def _v2_path_limits(d: Path, top: Path | None) -> list[int | None]:
    """``memory.max`` of ``d`` and of every ancestor up to ``top`` (inclusive; only ``d``
    when ``top`` is None or not an ancestor). The root cgroup has no memory.max."""
    limits = [_read_int(d / "memory.max")]
    if top is None or not d.is_relative_to(top):
        return limits
    node = d
    while node != top:
        node = node.parent
        limits.append(_read_int(node / "memory.max"))
    return limits


def read_v2(d: Path, top: Path | None = None) -> CgroupMemory:
    """A v2 memory cgroup. Its limit is the smallest ``memory.max`` from it up to ``top``
    (the mount point of the hierarchy: the root this process can see)."""
    return CgroupMemory(
        version=2,
        path=d,
        limit=_smallest(_v2_path_limits(d, top)),
        usage=_read_int(d / "memory.current"),
        peak=_read_int(d / "memory.peak"),
        oom_kills=_read_kv(d / "memory.events", "oom_kill"),
    )


def parse_proc_cgroup(text: str) -> tuple[str | None, str | None]:
    """(v2 path, v1 memory path) from the text of ``/proc/self/cgroup`` (pure)."""
    v2: str | None = None
    v1: str | None = None
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hid, controllers, path = parts
        if hid == "0" and controllers == "":
            v2 = path
        elif "memory" in controllers.split(","):
            v1 = path
    return v2, v1


def current(
    root: Path = CGROUP_ROOT, proc_cgroup: Path = Path("/proc/self/cgroup")
) -> CgroupMemory | None:
    """The memory cgroup of this process, or None when there is none to read."""
    try:
        v2, v1 = parse_proc_cgroup(proc_cgroup.read_text())
    except OSError:
        return None
    if v1 is not None:
        base = root / "memory"
        d = base / v1.lstrip("/")
        if not d.exists():
            d = base  # inside a container the cgroup namespace root is mounted directly
        if (d / "memory.limit_in_bytes").exists():
            return read_v1(d)
    if v2 is not None:
        for base in (root, root / "unified"):
            d = base / v2.lstrip("/")
            if (d / "memory.current").exists():
                return read_v2(d, top=base)
    return None


# ------------------------------------------------------------------ child cgroups (local)


@dataclass
class ChildCgroup:
    """A memory cgroup made for one worker process: a real, kernel-enforced limit."""

    version: int
    path: Path
    top: Path | None = None  # v2: the hierarchy's visible root (for the effective limit)

    def add(self, pid: int) -> None:
        (self.path / "cgroup.procs").write_text(str(pid))

    def stats(self) -> CgroupMemory:
        return read_v1(self.path) if self.version == 1 else read_v2(self.path, self.top)

    def remove(self) -> None:
        try:
            self.path.rmdir()
        except OSError:
            pass


def _own_dirs(root: Path, proc_cgroup: str | None = None) -> list[tuple[int, Path, Path]]:
    """(version, this process's cgroup directory, the hierarchy's mount point)."""
    try:
        text = proc_cgroup if proc_cgroup is not None else Path("/proc/self/cgroup").read_text()
    except OSError:
        return []
    v2, v1 = parse_proc_cgroup(text)
    dirs: list[tuple[int, Path, Path]] = []
    if v1 is not None:
        dirs.append((1, root / "memory" / v1.lstrip("/"), root / "memory"))
    if v2 is not None:
        for base in (root, root / "unified"):
            if (base / "cgroup.controllers").exists():
                dirs.append((2, base / v2.lstrip("/"), base))
    return dirs


def _is_empty_cgroup(d: Path) -> bool:
    """No process in it and no cgroup under it: the kernel lets it be removed."""
    try:
        if (d / "cgroup.procs").read_text().strip():
            return False
    except FileNotFoundError:
        pass
    except OSError:
        return False
    try:
        return not any(p.is_dir() for p in d.iterdir())
    except OSError:
        return False


def _new_dir(parent: Path, name: str) -> Path:
    """Create the child cgroup directory ``parent/name``, fresh. One left over by an earlier
    run with the same name (a runner killed before it cleaned up) is never reused: its
    limit, peak and OOM counters belong to that run, and processes may still be in it.
    Removed and created again when empty; otherwise a new, unique name is used."""
    d = parent / name
    try:
        d.mkdir()
        return d
    except FileExistsError:
        pass
    if _is_empty_cgroup(d):
        try:
            d.rmdir()
            d.mkdir()
            return d
        except OSError:
            pass
    for _ in range(16):
        d = parent / f"{name}-{secrets.token_hex(4)}"
        try:
            d.mkdir()
            return d
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free child cgroup name", str(parent / name))


def create_child(
    name: str, limit: int, root: Path = CGROUP_ROOT, proc_cgroup: str | None = None
) -> ChildCgroup | None:
    """A child memory cgroup with ``limit`` bytes, or None where none can be made here.

    Tries cgroup v1 (``memory.limit_in_bytes``; swap capped too) and v2 (``memory.max``,
    ``memory.swap.max``) under this process's own cgroup (``proc_cgroup``: the text of
    ``/proc/self/cgroup``, read when not given).
    """
    for version, parent, top in _own_dirs(root, proc_cgroup):
        d: Path | None = None
        try:
            if version == 1:
                if not (parent / "memory.limit_in_bytes").exists():
                    continue
                d = _new_dir(parent, name)
                (d / "memory.limit_in_bytes").write_text(str(limit))
                memsw = d / "memory.memsw.limit_in_bytes"
                if memsw.exists():
                    try:
                        memsw.write_text(str(limit))
                    except OSError:
                        pass
            else:
                controllers = (parent / "cgroup.subtree_control").read_text().split()
                if "memory" not in controllers:
                    continue
                d = _new_dir(parent, name)
                (d / "memory.max").write_text(str(limit))
                if (d / "memory.swap.max").exists():
                    (d / "memory.swap.max").write_text("0")
            return ChildCgroup(version, d, top if version == 2 else None)
        except OSError:
            if d is not None:
                try:
                    d.rmdir()
                except OSError:
                    pass
            continue
    return None
