"""Process supervision for the local executor: start worker processes, each in its own
memory cgroup where the machine allows one (else under an ``RLIMIT_DATA`` backstop), forked
from the run's :mod:`forkserver` or spawned as fresh interpreters; reap them; tell a
confirmed out-of-memory kill from any other kill; stop them all on Ctrl-C.

It knows processes, not tiles: each worker carries an opaque key, and :meth:`Supervisor.reap`
returns what was observed of the ones that exited (:class:`Exited`). Deciding what that
means for the tile is :mod:`tilestate`'s job.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any

from .attempt import AttemptRequest
from .cgroup import ChildCgroup, create_child
from .forkserver import ForkedWorker, ForkServer, ForkServerError, die_with_parent
from .result import ResultRecord

TERM_GRACE_SECONDS = 10.0
BACKSTOP_FACTOR = 2.0
BACKSTOP_EXTRA = 1024**3
DEFAULT_WORKER_COMMAND = (sys.executable, "-m", "gisjob_worker")
VMSTAT = Path("/proc/vmstat")


@dataclass(frozen=True)
class Kill:
    """How a worker's end is recorded: the exit code, and whether it was a confirmed
    out-of-memory kill or another kill (a disruption: not the tile's fault)."""

    exit_code: int
    oom_killed: bool = False
    disrupted: bool = False


def classify_exit(
    code: int,
    *,
    cgroup_oom_kills: int | None,
    vmstat_before: int | None,
    vmstat_after: int | None,
) -> Kill:
    """Pure: ``code`` as ``Popen.returncode`` (negative: killed by that signal).

    Only an out-of-memory kill that something confirms is a memory failure: the worker's own
    cgroup's ``oom_kill`` counter (``cgroup_oom_kills``, None without a cgroup or without
    the counter) or, without it, an increase of the kernel's ``oom_kill`` counter in
    ``/proc/vmstat`` during the worker's life. Any other SIGKILL is a disruption.
    """
    if code >= 0:
        return Kill(code)
    sig = -code
    exit_code = 128 + sig
    if sig != signal.SIGKILL:
        return Kill(exit_code)
    if cgroup_oom_kills is not None:
        confirmed = cgroup_oom_kills > 0
    else:
        confirmed = (
            vmstat_before is not None and vmstat_after is not None and vmstat_after > vmstat_before
        )
    return Kill(exit_code, oom_killed=confirmed, disrupted=not confirmed)


def read_vmstat_oom_kills(path: Path = VMSTAT) -> int | None:
    """The kernel's count of OOM kills since boot (``oom_kill`` in ``/proc/vmstat``)."""
    try:
        for line in path.read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
    except (OSError, ValueError):
        return None
    return None


def backstop_for(memory: int) -> int:
    """``RLIMIT_DATA`` backstop where no cgroup is available: coarse on purpose — it caps
    private writable mappings (reserved, not used), so it must sit well above the budget."""
    return int(memory * BACKSTOP_FACTOR) + BACKSTOP_EXTRA


def _preexec(cgroup: ChildCgroup | None, backstop: int | None) -> Callable[[], None]:
    def setup() -> None:
        die_with_parent()  # a SIGKILLed runner must not leave workers writing
        if cgroup is not None:
            cgroup.add(os.getpid())
        if backstop is not None:
            resource.setrlimit(resource.RLIMIT_DATA, (backstop, backstop))

    return setup


@dataclass
class Worker:
    key: str
    request: AttemptRequest
    proc: subprocess.Popen[bytes] | ForkedWorker
    cgroup: ChildCgroup | None
    result_path: Path
    started: float
    started_wall: float
    log: IO[bytes]
    slot: int
    vmstat_before: int | None


@dataclass(frozen=True)
class Exited:
    """What was observed of a worker process that exited."""

    key: str
    request: AttemptRequest
    code: int  # Popen.returncode: negative for a signal
    kill: Kill
    result: ResultRecord | None  # its result file (the termination-message analogue)
    cgroup_peak: int | None
    seconds: float
    started_wall: float  # time.time() at launch


@dataclass
class SupervisorOptions:
    job_file: Path
    job_name: str
    state_dir: Path  # results and logs go here
    workers: int
    use_cgroups: bool = True
    fork_server: bool = True
    worker_command: tuple[str, ...] = DEFAULT_WORKER_COMMAND
    metrics_port_base: int | None = None  # the worker in slot k serves on base + k
    metrics_linger: float = 0.0


class Supervisor:
    def __init__(
        self,
        options: SupervisorOptions,
        on_event: Callable[[str, dict[str, Any]], None],
        fork_server: ForkServer | None = None,
    ) -> None:
        self.opts = options
        self.on_event = on_event
        self.workers: dict[str, Worker] = {}
        self._server = fork_server
        self._server_lost = False

    def __len__(self) -> int:
        return len(self.workers)

    # ---------------------------------------------------------------------------- start

    def start(self, key: str, request: AttemptRequest, memory: int) -> bool:
        """Start a worker for ``request`` with ``memory`` bytes; returns whether it runs in
        a cgroup of its own."""
        opts = self.opts
        result_path = opts.state_dir / f"result-{key}.json"
        result_path.unlink(missing_ok=True)
        used = {w.slot for w in self.workers.values()}
        slot = next(k for k in range(opts.workers + len(used) + 1) if k not in used)
        request = replace(
            request,
            job_file=str(opts.job_file),
            result_path=str(result_path),
            metrics_port=(
                opts.metrics_port_base + slot if opts.metrics_port_base is not None else None
            ),
            metrics_linger=opts.metrics_linger if opts.metrics_port_base is not None else 0.0,
        )
        cg = None
        if opts.use_cgroups:
            cg = create_child(f"gisjob-{os.getpid()}-{opts.job_name}-{key}", memory)
        backstop = None if cg is not None else backstop_for(memory)
        log_path = opts.state_dir / "logs" / f"{key}.log"
        log = open(log_path, "wb")  # noqa: SIM115 - closed when the worker is reaped
        vmstat_before = read_vmstat_oom_kills()
        proc: subprocess.Popen[bytes] | ForkedWorker | None = None
        server = self._fork_server()
        if server is not None:
            try:
                proc = server.spawn(
                    request,
                    log_path,
                    cg.path / "cgroup.procs" if cg is not None else None,
                    backstop,
                )
            except ForkServerError as exc:
                self._lose_fork_server(str(exc))
        if proc is None:
            proc = subprocess.Popen(
                [*opts.worker_command, *request.to_argv()],
                stdout=subprocess.DEVNULL,
                stderr=log,
                stdin=subprocess.DEVNULL,
                # the runner has no threads, so preexec_fn is safe here; it is the only way
                # to join the cgroup and set PDEATHSIG before the worker runs any own code
                preexec_fn=_preexec(cg, backstop),  # noqa: PLW1509
                start_new_session=True,
            )
        self.workers[key] = Worker(
            key,
            request,
            proc,
            cg,
            result_path,
            time.monotonic(),
            time.time(),
            log,
            slot,
            vmstat_before,
        )
        return cg is not None

    def _fork_server(self) -> ForkServer | None:
        """The run's fork server, started at the first launch (None: spawn workers)."""
        if self._server_lost:
            return None
        if not self.opts.fork_server or self.opts.worker_command != DEFAULT_WORKER_COMMAND:
            return None
        if self._server is None:
            try:
                self._server = ForkServer(self.opts.job_file)
            except ForkServerError as exc:
                self._lose_fork_server(str(exc))
                return None
        if self._server.lost is not None:
            self._lose_fork_server(self._server.lost)
            return None
        return self._server

    def _lose_fork_server(self, reason: str) -> None:
        """The fork server failed or died: say so, spawn fresh interpreters from now on.
        Workers it had forked died with it; they come back as failed attempts (exit 1)."""
        self._server_lost = True
        if self._server is not None:
            self._server.close()
            self._server = None
        self.on_event("forkserver-lost", {"error": reason, "fallback": "spawn"})

    # ----------------------------------------------------------------------------- reap

    def reap(self) -> list[Exited]:
        """The workers that exited since the last call."""
        out: list[Exited] = []
        for key, w in list(self.workers.items()):
            code = w.proc.poll()
            if code is None:
                continue
            del self.workers[key]
            w.log.close()
            oom_kills: int | None = None
            cgroup_peak = None
            if w.cgroup is not None:
                stats = w.cgroup.stats()
                oom_kills = stats.oom_kills
                cgroup_peak = stats.peak
                w.cgroup.remove()
            try:
                result: ResultRecord | None = ResultRecord.from_json(w.result_path.read_text())
            except (OSError, ValueError, TypeError):
                result = None
            w.result_path.unlink(missing_ok=True)
            kill = classify_exit(
                code,
                cgroup_oom_kills=oom_kills,
                vmstat_before=w.vmstat_before,
                vmstat_after=read_vmstat_oom_kills() if oom_kills is None else None,
            )
            out.append(
                Exited(
                    key,
                    w.request,
                    code,
                    kill,
                    result,
                    cgroup_peak,
                    round(time.monotonic() - w.started, 3),
                    w.started_wall,
                )
            )
        return out

    # ----------------------------------------------------------------------- stop, close

    def terminate_all(self) -> list[Exited]:
        """SIGTERM every worker, SIGKILL those still alive after the grace period; reap."""
        if not self.workers:
            return []
        for w in self.workers.values():
            if w.proc.poll() is None:
                w.proc.terminate()
        deadline = time.monotonic() + TERM_GRACE_SECONDS
        while time.monotonic() < deadline and any(
            w.proc.poll() is None for w in self.workers.values()
        ):
            time.sleep(0.02)
        for w in self.workers.values():
            if w.proc.poll() is None:
                w.proc.kill()
                w.proc.wait()
        return self.reap()

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    def rss(self) -> list[tuple[str, int]]:
        """(key, resident bytes) of every running worker."""
        out = []
        page = os.sysconf("SC_PAGE_SIZE")
        for key, w in self.workers.items():
            try:
                with open(f"/proc/{w.proc.pid}/statm", encoding="ascii") as fh:
                    out.append((key, int(fh.read().split()[1]) * page))
            except (OSError, ValueError, IndexError):
                continue
        return out
