"""Read this process's memory cgroup (v2 or v1): limit, usage, peak and OOM kills."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
# v1 reports "no limit" as a huge page-aligned number
V1_UNLIMITED = 1 << 60


@dataclass(frozen=True)
class CgroupMemory:
    version: int
    path: Path
    limit: int | None
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


def read_v1(d: Path) -> CgroupMemory:
    limit = _read_int(d / "memory.limit_in_bytes")
    return CgroupMemory(
        version=1,
        path=d,
        limit=None if limit is not None and limit >= V1_UNLIMITED else limit,
        usage=_read_int(d / "memory.usage_in_bytes"),
        peak=_read_int(d / "memory.max_usage_in_bytes"),
        oom_kills=_read_kv(d / "memory.oom_control", "oom_kill"),
    )


def read_v2(d: Path) -> CgroupMemory:
    return CgroupMemory(
        version=2,
        path=d,
        limit=_read_int(d / "memory.max"),
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
                return read_v2(d)
    return None


# ------------------------------------------------------------------ child cgroups (local)


@dataclass
class ChildCgroup:
    """A memory cgroup made for one worker process: a real, kernel-enforced limit."""

    version: int
    path: Path

    def add(self, pid: int) -> None:
        (self.path / "cgroup.procs").write_text(str(pid))

    def stats(self) -> CgroupMemory:
        return read_v1(self.path) if self.version == 1 else read_v2(self.path)

    def remove(self) -> None:
        try:
            self.path.rmdir()
        except OSError:
            pass


def _own_dirs(root: Path, proc_cgroup: str | None = None) -> list[tuple[int, Path]]:
    try:
        text = proc_cgroup if proc_cgroup is not None else Path("/proc/self/cgroup").read_text()
    except OSError:
        return []
    v2, v1 = parse_proc_cgroup(text)
    dirs: list[tuple[int, Path]] = []
    if v1 is not None:
        dirs.append((1, root / "memory" / v1.lstrip("/")))
    if v2 is not None:
        for base in (root, root / "unified"):
            if (base / "cgroup.controllers").exists():
                dirs.append((2, base / v2.lstrip("/")))
    return dirs


def create_child(
    name: str, limit: int, root: Path = CGROUP_ROOT, proc_cgroup: str | None = None
) -> ChildCgroup | None:
    """A child memory cgroup with ``limit`` bytes, or None where none can be made here.

    Tries cgroup v1 (``memory.limit_in_bytes``; swap capped too) and v2 (``memory.max``,
    ``memory.swap.max``) under this process's own cgroup (``proc_cgroup``: the text of
    ``/proc/self/cgroup``, read when not given).
    """
    for version, parent in _own_dirs(root, proc_cgroup):
        d = parent / name
        try:
            if version == 1:
                if not (parent / "memory.limit_in_bytes").exists():
                    continue
                d.mkdir(exist_ok=True)
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
                d.mkdir(exist_ok=True)
                (d / "memory.max").write_text(str(limit))
                if (d / "memory.swap.max").exists():
                    (d / "memory.swap.max").write_text("0")
            return ChildCgroup(version, d)
        except OSError:
            try:
                d.rmdir()
            except OSError:
                pass
            continue
    return None
