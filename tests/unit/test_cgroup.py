"""Reading the memory cgroup (v1, v2, hybrid) from fake roots."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from gisjob_worker.cgroup import (
    CgroupMemory,
    ChildCgroup,
    create_child,
    current,
    parse_proc_cgroup,
)

V1_TEXT = """\
12:pids:/kubepods/burstable/pod1/abc
11:memory:/kubepods/burstable/pod1/abc
10:cpu,cpuacct:/kubepods/burstable/pod1/abc
1:name=systemd:/kubepods/burstable/pod1/abc
"""
V2_TEXT = "0::/kubepods.slice/pod1.slice/cri-abc.scope\n"
HYBRID_TEXT = """\
12:memory:/user.slice/user-1000.slice
11:cpu,cpuacct:/user.slice
1:name=systemd:/user.slice/user-1000.slice/session-2.scope
0::/user.slice/user-1000.slice/session-2.scope
"""


def test_parse_v1() -> None:
    assert parse_proc_cgroup(V1_TEXT) == (None, "/kubepods/burstable/pod1/abc")


def test_parse_v2() -> None:
    assert parse_proc_cgroup(V2_TEXT) == ("/kubepods.slice/pod1.slice/cri-abc.scope", None)


def test_parse_hybrid() -> None:
    assert parse_proc_cgroup(HYBRID_TEXT) == (
        "/user.slice/user-1000.slice/session-2.scope",
        "/user.slice/user-1000.slice",
    )


def test_parse_memory_in_a_combined_controller_list() -> None:
    assert parse_proc_cgroup("4:cpu,memory:/x\n") == (None, "/x")
    # "memory" must be a whole controller name
    assert parse_proc_cgroup("4:memoryless:/x\n") == (None, None)


@pytest.mark.parametrize("text", ["", "garbage\n", "0:/only-two-fields\n", "\n\n"])
def test_parse_nothing(text: str) -> None:
    assert parse_proc_cgroup(text) == (None, None)


def test_parse_path_with_colons() -> None:
    assert parse_proc_cgroup("0::/a:b:c\n") == ("/a:b:c", None)


# ------------------------------------------------------------------------------ v1


def _proc(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "proc-self-cgroup"
    p.write_text(text)
    return p


def _v1_files(d: Path, limit: str = "536870912", oom_kill: int = 2) -> None:
    d.mkdir(parents=True, exist_ok=True)
    (d / "memory.limit_in_bytes").write_text(f"{limit}\n")
    (d / "memory.usage_in_bytes").write_text("123456789\n")
    (d / "memory.max_usage_in_bytes").write_text("234567890\n")
    (d / "memory.oom_control").write_text(f"oom_kill_disable 0\nunder_oom 0\noom_kill {oom_kill}\n")


def test_current_v1(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    d = root / "memory" / "kubepods" / "burstable" / "pod1" / "abc"
    _v1_files(d)
    got = current(root, _proc(tmp_path, V1_TEXT))
    assert got == CgroupMemory(
        version=1, path=d, limit=536870912, usage=123456789, peak=234567890, oom_kills=2
    )


def test_current_v1_unlimited_is_none(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    d = root / "memory" / "kubepods" / "burstable" / "pod1" / "abc"
    _v1_files(d, limit="9223372036854771712", oom_kill=0)
    got = current(root, _proc(tmp_path, V1_TEXT))
    assert got is not None
    assert got.version == 1
    assert got.limit is None
    assert got.usage == 123456789
    assert got.oom_kills == 0


def test_current_v1_namespace_root_mounted_directly(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    _v1_files(root / "memory")  # the container sees its own cgroup at the mount root
    got = current(root, _proc(tmp_path, V1_TEXT))
    assert got is not None
    assert got.path == root / "memory"
    assert got.limit == 536870912


def test_current_v1_missing_optional_files(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    d = root / "memory" / "kubepods" / "burstable" / "pod1" / "abc"
    d.mkdir(parents=True)
    (d / "memory.limit_in_bytes").write_text("1073741824\n")
    got = current(root, _proc(tmp_path, V1_TEXT))
    assert got == CgroupMemory(1, d, 1073741824, None, None, None)


# ------------------------------------------------------------------------------ v2


def _v2_files(d: Path, limit: str = "max", peak: str | None = "345678901") -> None:
    d.mkdir(parents=True, exist_ok=True)
    (d / "memory.max").write_text(f"{limit}\n")
    (d / "memory.current").write_text("222222222\n")
    if peak is not None:
        (d / "memory.peak").write_text(f"{peak}\n")
    (d / "memory.events").write_text("low 0\nhigh 0\nmax 17\noom 4\noom_kill 3\n")


def test_current_v2_unlimited(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    d = root / "kubepods.slice" / "pod1.slice" / "cri-abc.scope"
    _v2_files(d)
    got = current(root, _proc(tmp_path, V2_TEXT))
    assert got == CgroupMemory(
        version=2, path=d, limit=None, usage=222222222, peak=345678901, oom_kills=3
    )


def test_current_v2_limited_without_peak(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    d = root / "kubepods.slice" / "pod1.slice" / "cri-abc.scope"
    _v2_files(d, limit="1073741824", peak=None)  # memory.peak needs Linux 5.19
    got = current(root, _proc(tmp_path, V2_TEXT))
    assert got is not None
    assert got.limit == 1073741824
    assert got.peak is None
    assert got.usage == 222222222


def test_current_v2_container_root(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    _v2_files(root, limit="268435456")
    got = current(root, _proc(tmp_path, "0::/\n"))
    assert got is not None
    assert got.path == root
    assert got.limit == 268435456


def test_current_v2_under_unified(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    d = root / "unified" / "user.slice"
    _v2_files(d)
    got = current(root, _proc(tmp_path, "0::/user.slice\n"))
    assert got is not None
    assert got.version == 2
    assert got.path == d


def test_current_v2_garbage_values_are_none(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    root.mkdir()
    (root / "memory.current").write_text("not-a-number\n")
    (root / "memory.events").write_text("oom_kill x\n")
    got = current(root, _proc(tmp_path, "0::/\n"))
    assert got == CgroupMemory(2, root, None, None, None, None)


# -------------------------------------------------------------------------- hybrid


def test_current_hybrid_prefers_v1_memory(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    v1 = root / "memory" / "user.slice" / "user-1000.slice"
    _v1_files(v1, limit="999999488")
    _v2_files(root / "unified" / "user.slice" / "user-1000.slice" / "session-2.scope")
    got = current(root, _proc(tmp_path, HYBRID_TEXT))
    assert got is not None
    assert got.version == 1
    assert got.limit == 999999488


def test_current_hybrid_without_v1_memory_uses_v2(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    d = root / "unified" / "user.slice" / "user-1000.slice" / "session-2.scope"
    _v2_files(d, limit="4294967296")
    got = current(root, _proc(tmp_path, HYBRID_TEXT))
    assert got is not None
    assert got.version == 2
    assert got.limit == 4294967296
    assert got.oom_kills == 3


def test_current_none_without_files(tmp_path: Path) -> None:
    root = tmp_path / "empty"
    root.mkdir()
    assert current(root, _proc(tmp_path, V2_TEXT)) is None
    assert current(root, _proc(tmp_path, V1_TEXT)) is None
    assert current(root, tmp_path / "no-such-proc-file") is None


# ------------------------------------------------------------------ child cgroups (fake fs)
# The kernel's enforcement is tested on this machine's real cgroup v1 (integration tests);
# these check what create_child writes for each version, and when it declines.


def _v2_parent(root: Path, subtree: str = "cpu memory pids") -> Path:
    (root).mkdir(parents=True, exist_ok=True)
    (root / "cgroup.controllers").write_text("cpu memory pids\n")
    parent = root / "kubepods.slice" / "pod1.slice" / "cri-abc.scope"
    parent.mkdir(parents=True)
    (parent / "cgroup.subtree_control").write_text(subtree + "\n")
    return parent


def test_create_child_v2_sets_memory_max_and_no_swap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "cg"
    parent = _v2_parent(root)
    FakeCgroupFs(root, 2, monkeypatch)  # the kernel makes memory.swap.max (set to "max")
    cg = create_child("w1", 300 * 2**20, root, V2_TEXT)
    assert cg == ChildCgroup(2, parent / "w1", root)
    assert (parent / "w1" / "memory.max").read_text() == str(300 * 2**20)
    assert (parent / "w1" / "memory.swap.max").read_text() == "0"
    cg.add(4242)
    assert (parent / "w1" / "cgroup.procs").read_text() == "4242"


def test_create_child_v2_declines_without_the_memory_controller_delegated(
    tmp_path: Path,
) -> None:
    root = tmp_path / "cg"
    parent = _v2_parent(root, subtree="cpu pids")
    assert create_child("w1", 2**28, root, V2_TEXT) is None
    assert not (parent / "w1").exists()


def test_create_child_v2_under_unified_mount(tmp_path: Path) -> None:
    """Hybrid hosts mount v2 at <root>/unified; with no v1 memory hierarchy there, v2 is used."""
    root = tmp_path / "cg"
    parent = _v2_parent(root / "unified")
    cg = create_child("w2", 2**28, root, V2_TEXT)
    assert cg is not None and cg.version == 2 and cg.path == parent / "w2"


def test_create_child_v1_sets_limit_and_memsw(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "cg"
    parent = root / "memory" / "kubepods" / "burstable" / "pod1" / "abc"
    parent.mkdir(parents=True)
    (parent / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    FakeCgroupFs(root, 1, monkeypatch)  # the kernel makes memory.memsw.limit_in_bytes
    cg = create_child("w1", 2**28, root, V1_TEXT)
    assert cg == ChildCgroup(1, parent / "w1")
    assert (parent / "w1" / "memory.limit_in_bytes").read_text() == str(2**28)
    assert (parent / "w1" / "memory.memsw.limit_in_bytes").read_text() == str(2**28)
    cg.add(4242)
    cg.remove()  # a process is still in it: the kernel refuses, remove() does not raise
    assert (parent / "w1").exists()
    (parent / "w1" / "cgroup.procs").write_text("")  # the process exited
    cg.remove()
    assert not (parent / "w1").exists()


def test_create_child_without_any_memory_hierarchy_is_none(tmp_path: Path) -> None:
    assert create_child("w", 2**28, tmp_path / "cg", V1_TEXT) is None
    assert create_child("w", 2**28, tmp_path / "cg", V2_TEXT) is None
    assert create_child("w", 2**28, tmp_path / "cg", "") is None


# --------------------------------------------------------------- effective (ancestor) limit
# An ancestor's limit binds every cgroup under it: a pod's limit above a container cgroup
# with none, a user slice above a session scope.

GIB = 2**30
V1_NO_LIMIT = "9223372036854771712"


def _v1_stat(d: Path, hierarchical: str) -> None:
    (d / "memory.stat").write_text(
        f"cache 1234\nrss 5678\nhierarchical_memory_limit {hierarchical}\n"
        "hierarchical_memsw_limit 9223372036854771712\ntotal_rss 5678\n"
    )


def test_current_v1_limit_is_the_hierarchical_one(tmp_path: Path) -> None:
    """The container's cgroup has no limit of its own; the pod's cgroup above it does, and
    v1 reports the smallest along the path in memory.stat."""
    root = tmp_path / "cg"
    d = root / "memory" / "kubepods" / "burstable" / "pod1" / "abc"
    _v1_files(d, limit=V1_NO_LIMIT)
    _v1_stat(d, str(GIB))
    got = current(root, _proc(tmp_path, V1_TEXT))
    assert got is not None and got.limit == GIB


@pytest.mark.parametrize(
    ("own", "hierarchical", "expected"),
    [
        (str(2 * GIB), str(GIB), GIB),  # an ancestor's is smaller
        (str(GIB), str(GIB), GIB),  # its own is the smallest (the kernel reports it too)
        (str(GIB), V1_NO_LIMIT, GIB),  # hierarchy unlimited (never less than its own really)
        (V1_NO_LIMIT, V1_NO_LIMIT, None),
        (str(GIB), None, GIB),  # no memory.stat
    ],
)
def test_read_v1_takes_the_smaller_of_own_and_hierarchical_limits(
    tmp_path: Path, own: str, hierarchical: str | None, expected: int | None
) -> None:
    d = tmp_path / "memory" / "x"
    _v1_files(d, limit=own)
    if hierarchical is not None:
        _v1_stat(d, hierarchical)
    assert current(tmp_path, _proc(tmp_path, "5:memory:/x\n")) == CgroupMemory(
        1, d, expected, 123456789, 234567890, 2
    )


def _v2_tree(root: Path, limits: dict[str, str]) -> Path:
    """The kubepods-like path under ``root`` with ``memory.max`` per level ("max" or bytes);
    returns the leaf (this process's cgroup)."""
    (root).mkdir(parents=True, exist_ok=True)
    (root / "cgroup.controllers").write_text("cpu memory pids\n")
    node = root
    for part in ("kubepods.slice", "pod1.slice", "cri-abc.scope"):
        node = node / part
        node.mkdir(exist_ok=True)
        (node / "memory.max").write_text(limits.get(part, "max") + "\n")
    _v2_files(node, limit=limits.get("cri-abc.scope", "max"))
    return node


@pytest.mark.parametrize(
    ("limits", "expected"),
    [
        ({"pod1.slice": str(GIB)}, GIB),  # the pod's limit, the container has none
        ({"kubepods.slice": str(3 * GIB), "pod1.slice": str(2 * GIB)}, 2 * GIB),
        ({"kubepods.slice": str(GIB), "cri-abc.scope": str(2 * GIB)}, GIB),
        ({"cri-abc.scope": str(GIB), "kubepods.slice": str(3 * GIB)}, GIB),
        ({}, None),
    ],
)
def test_current_v2_limit_is_the_smallest_up_the_path(
    tmp_path: Path, limits: dict[str, str], expected: int | None
) -> None:
    root = tmp_path / "cg"
    leaf = _v2_tree(root, limits)
    got = current(root, _proc(tmp_path, V2_TEXT))
    assert got is not None and got.path == leaf
    assert got.limit == expected


def test_current_v2_walk_stops_at_the_visible_root(tmp_path: Path) -> None:
    """Above the mount point is not this cgroup's hierarchy (a file there is not read), and
    under a hybrid's ``unified`` mount the walk ends at that mount."""
    (tmp_path / "memory.max").write_text("1\n")  # outside the hierarchy: never read
    root = tmp_path / "cg"
    (root / "unified").mkdir(parents=True)
    (root / "memory.max").write_text("2\n")  # above the unified mount: never read
    leaf = _v2_tree(root / "unified", {"pod1.slice": str(GIB)})
    got = current(root, _proc(tmp_path, V2_TEXT))
    assert got is not None and got.path == leaf and got.limit == GIB


# ------------------------------------------------------------- a fake kernel for mkdir/rmdir
# cgroupfs makes a directory's interface files itself and removes a cgroup with rmdir
# only when no process and no child cgroup is left in it; a plain tmp_path does neither.


class FakeCgroupFs:
    """``mkdir``/``rmdir`` under ``root`` behave as on cgroupfs (v1 or v2)."""

    def __init__(self, root: Path, version: int, monkeypatch: pytest.MonkeyPatch) -> None:
        self.root = root
        self.version = version
        real_mkdir, real_rmdir = Path.mkdir, Path.rmdir
        fake = self

        def mkdir(
            self: Path, mode: int = 0o777, parents: bool = False, exist_ok: bool = False
        ) -> None:
            real_mkdir(self, mode, parents, exist_ok)
            if self.is_relative_to(fake.root) and not (self / "cgroup.procs").exists():
                fake.populate(self)

        def rmdir(self: Path) -> None:
            if not self.is_relative_to(fake.root):
                return real_rmdir(self)
            busy = (self / "cgroup.procs").exists() and (self / "cgroup.procs").read_text().strip()
            if busy or any(p.is_dir() for p in self.iterdir()):
                raise OSError(errno.EBUSY, "Device or resource busy", str(self))
            for f in self.iterdir():
                f.unlink()
            return real_rmdir(self)

        monkeypatch.setattr(Path, "mkdir", mkdir)
        monkeypatch.setattr(Path, "rmdir", rmdir)

    def populate(self, d: Path) -> None:
        files = (
            {
                "cgroup.procs": "",
                "memory.max": "max\n",
                "memory.swap.max": "max\n",
                "memory.current": "0\n",
                "memory.peak": "0\n",
                "memory.events": "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n",
            }
            if self.version == 2
            else {
                "cgroup.procs": "",
                "memory.limit_in_bytes": V1_NO_LIMIT + "\n",
                "memory.memsw.limit_in_bytes": V1_NO_LIMIT + "\n",
                "memory.usage_in_bytes": "0\n",
                "memory.max_usage_in_bytes": "0\n",
                "memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n",
            }
        )
        for name, text in files.items():
            (d / name).write_text(text)


def _leftover(d: Path, *, procs: str = "", oom_kill: int = 5) -> None:
    """What a runner killed mid-run leaves: its worker's cgroup with that run's counters
    (and, when the worker outlived it, a process)."""
    d.mkdir()
    (d / "memory.events").write_text(f"low 0\nhigh 0\nmax 9\noom 5\noom_kill {oom_kill}\n")
    (d / "memory.peak").write_text("999999999\n")
    (d / "memory.oom_control").write_text(f"oom_kill_disable 0\nunder_oom 0\noom_kill {oom_kill}\n")
    (d / "memory.max_usage_in_bytes").write_text("999999999\n")
    (d / "cgroup.procs").write_text(procs)


def _unlimited_parent(root: Path, version: int) -> tuple[Path, str]:
    """The runner's own cgroup (no limit) in a fake cgroupfs, and its /proc/self/cgroup."""
    if version == 2:
        return _v2_parent(root), V2_TEXT
    parent = root / "memory" / "kubepods" / "burstable" / "pod1" / "abc"
    _v1_files(parent, limit=V1_NO_LIMIT)
    return parent, V1_TEXT


@pytest.mark.parametrize("version", [1, 2])
def test_create_child_makes_a_fresh_cgroup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, version: int
) -> None:
    root = tmp_path / "cg"
    parent, text = _unlimited_parent(root, version)
    FakeCgroupFs(root, version, monkeypatch)
    cg = create_child("w1", 300 * 2**20, root, text)
    assert cg is not None and cg.path == parent / "w1" and cg.version == version
    stats = cg.stats()
    assert (stats.limit, stats.peak, stats.oom_kills) == (300 * 2**20, 0, 0)
    cg.remove()
    assert not cg.path.exists()


@pytest.mark.parametrize("version", [1, 2])
def test_a_leftover_empty_child_is_removed_and_made_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, version: int
) -> None:
    """An earlier run with the same name was killed and left its child cgroup, empty: it is
    made afresh — not reused with that run's peak and OOM kills (a stale oom_kill would
    make a clean exit look like an OOM kill)."""
    root = tmp_path / "cg"
    parent, text = _unlimited_parent(root, version)
    FakeCgroupFs(root, version, monkeypatch)
    _leftover(parent / "w1")
    cg = create_child("w1", 2**28, root, text)
    assert cg is not None and cg.path == parent / "w1"
    stats = cg.stats()
    assert (stats.limit, stats.peak, stats.oom_kills) == (2**28, 0, 0)


@pytest.mark.parametrize("version", [1, 2])
def test_a_leftover_child_in_use_is_left_alone_and_a_new_name_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, version: int
) -> None:
    """The leftover still holds a process (a worker that outlived its runner), or a cgroup
    of its own: it cannot be removed and must not be shared; a fresh name is used."""
    root = tmp_path / "cg"
    parent, text = _unlimited_parent(root, version)
    FakeCgroupFs(root, version, monkeypatch)
    _leftover(parent / "w1", procs="4242\n")
    _leftover(parent / "w2")
    (parent / "w2" / "nested").mkdir()
    for name in ("w1", "w2"):
        cg = create_child(name, 2**28, root, text)
        assert cg is not None and cg.path.parent == parent
        assert cg.path.name.startswith(f"{name}-") and cg.path.name != name
        stats = cg.stats()
        assert (stats.limit, stats.peak, stats.oom_kills) == (2**28, 0, 0)
    assert (parent / "w1" / "cgroup.procs").read_text() == "4242\n"  # untouched
    assert (parent / "w2" / "nested").is_dir()


def test_child_stats_report_the_parents_smaller_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A child asked for more than its parent allows is bound by the parent: its stats say
    so (v2 walks up to the mount; v1 reports the hierarchy's limit)."""
    root = tmp_path / "cg"
    parent = _v2_parent(root)
    (parent / "memory.max").write_text(f"{GIB}\n")
    FakeCgroupFs(root, 2, monkeypatch)
    cg = create_child("big", 4 * GIB, root, V2_TEXT)
    assert cg is not None and cg.stats().limit == GIB
