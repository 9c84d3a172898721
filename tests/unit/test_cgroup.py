"""Reading the memory cgroup (v1, v2, hybrid) from fake roots."""

from __future__ import annotations

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


def test_create_child_v2_sets_memory_max_and_no_swap(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    parent = _v2_parent(root)
    (parent / "w1").mkdir()
    (parent / "w1" / "memory.swap.max").write_text("max\n")  # the kernel creates it
    cg = create_child("w1", 300 * 2**20, root, V2_TEXT)
    assert cg == ChildCgroup(2, parent / "w1")
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


def test_create_child_v1_sets_limit_and_memsw(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    parent = root / "memory" / "kubepods" / "burstable" / "pod1" / "abc"
    parent.mkdir(parents=True)
    (parent / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    (parent / "w1").mkdir()
    (parent / "w1" / "memory.memsw.limit_in_bytes").write_text("9223372036854771712\n")
    cg = create_child("w1", 2**28, root, V1_TEXT)
    assert cg == ChildCgroup(1, parent / "w1")
    assert (parent / "w1" / "memory.limit_in_bytes").read_text() == str(2**28)
    assert (parent / "w1" / "memory.memsw.limit_in_bytes").read_text() == str(2**28)
    cg.remove()  # a real cgroup directory is removed with rmdir; here it still has files
    assert (parent / "w1").exists()


def test_create_child_without_any_memory_hierarchy_is_none(tmp_path: Path) -> None:
    assert create_child("w", 2**28, tmp_path / "cg", V1_TEXT) is None
    assert create_child("w", 2**28, tmp_path / "cg", V2_TEXT) is None
    assert create_child("w", 2**28, tmp_path / "cg", "") is None
