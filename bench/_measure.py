"""Run a command as a child process and measure its wall time and peak resident memory.

Each command runs under a tiny launcher process that spawns it, ``wait4``s for that one pid
and reports its ``ru_maxrss`` — what ``/usr/bin/time -v`` prints as "Maximum resident set
size" — not a ``RUSAGE_CHILDREN`` delta, which would mix in every other child reaped. On
Linux the figure is the high-water mark of the command *or* of any descendant it reaped
(the largest one, not a sum). Page cache is not counted; file pages mapped and touched
are. Wall time is taken inside the launcher, around spawn and wait.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

KIB = 1024


@dataclass(frozen=True)
class Measurement:
    argv: tuple[str, ...]
    returncode: int
    wall_seconds: float
    peak_rss_bytes: int
    user_seconds: float
    sys_seconds: float
    stdout: str
    stderr: str
    timed_out: bool = False

    @property
    def cpu_seconds(self) -> float:
        return self.user_seconds + self.sys_seconds

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out


# The launcher: a tiny fresh interpreter that spawns the command and reports *its* rusage.
# Measuring straight from the benchmark process would be wrong: at exec() Linux records the
# RSS of the pre-exec image — a copy of the (large) benchmark process — into the child's
# ru_maxrss, so every tool would show at least the benchmark's own RSS. The launcher is
# ~10 MB, far below anything measured.
_LAUNCHER = r"""
import json, os, sys, time
out, argv = sys.argv[1], sys.argv[2:]
t0 = time.perf_counter()
pid = os.posix_spawnp(argv[0], argv, os.environ)
_, status, ru = os.wait4(pid, 0)
wall = time.perf_counter() - t0
code = os.waitstatus_to_exitcode(status)
with open(out, "w") as fh:
    json.dump({"wall": wall, "maxrss_kib": ru.ru_maxrss, "utime": ru.ru_utime,
               "stime": ru.ru_stime, "code": code}, fh)
sys.exit(code if code >= 0 else 128 - code)
"""


def launcher_argv(argv: Sequence[str], report: str) -> list[str]:
    """``argv`` run under the launcher, which writes its measurement to ``report``."""
    return [sys.executable, "-S", "-c", _LAUNCHER, report, *argv]


def run_measured(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    timeout: float | None = None,
) -> Measurement:
    """Run ``argv`` to completion under the launcher; output goes to temporary files."""
    with (
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
        tempfile.TemporaryDirectory(prefix="gisjob-bench-") as tmp,
    ):
        report = os.path.join(tmp, "rusage.json")
        proc = subprocess.Popen(
            launcher_argv(argv, report),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,  # its own process group: a timeout kills the command too
        )
        timed_out = False
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode(errors="replace")
        stderr = err.read().decode(errors="replace")
        try:
            with open(report, encoding="utf-8") as fh:
                usage = json.load(fh)
        except (OSError, ValueError):
            usage = {"wall": 0.0, "maxrss_kib": 0, "utime": 0.0, "stime": 0.0}
        return Measurement(
            argv=tuple(argv),
            returncode=proc.returncode,
            wall_seconds=float(usage["wall"]),
            peak_rss_bytes=int(usage["maxrss_kib"]) * KIB,  # KiB on Linux
            user_seconds=float(usage["utime"]),
            sys_seconds=float(usage["stime"]),
            stdout=stdout,
            stderr=stderr,
            timed_out=timed_out,
        )


def warm_page_cache(path: str | os.PathLike[str], block: int = 8 * 1024**2) -> int:
    """Read a file once so every tool starts from the same (warm) page cache."""
    total = 0
    with open(path, "rb", buffering=0) as fh:
        while chunk := fh.read(block):
            total += len(chunk)
    return total


def report_targets(report: dict[str, Any], json_path: Path | None) -> None:
    """Print the PASS/MISS lines of ``report["targets"]``; save the report as JSON if asked."""
    print("\nTargets (reported, not asserted)")
    for t in report["targets"]:
        print(f"  [{t['status']}] {t['target']}\n         {t['detail']}")
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report, indent=2, default=str))
        print(f"\nsaved {json_path}")
