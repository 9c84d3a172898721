"""The local executor: run a plan's tiles as memory-capped worker processes.

Tiles are packed by memory: the sum of the requests of running workers stays within the
allowance, and their count within the worker limit. Processes are :mod:`supervisor`'s (one
per tile attempt, forked from the run's fork server or spawned, each in its own memory
cgroup where the machine allows one); tile state is :mod:`tilestate`'s (the ledger and the
shared :mod:`policy`). Workers record their own outcomes in the output location's ledger;
the runner records those of workers killed before they could, so a killed runner resumes
— and an output folder the operator's workers wrote resumes here, and the other way round.
"""

from __future__ import annotations

import hashlib
import signal
import tempfile
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import finalize, policy
from .errors import InputError
from .forkserver import ForkServer
from .ledgerstore import LedgerStore, LocationLedgerStore, list_all
from .location import LocalLocation, Location, open_location
from .plan import Plan
from .quantity import format_bytes
from .runtypes import RunResult, Sample, Snapshot, TileRun
from .spec import GisJob
from .supervisor import (
    DEFAULT_WORKER_COMMAND,
    Exited,
    Supervisor,
    SupervisorOptions,
)
from .tilestate import TileBook

__all__ = ["LocalExecutor", "RunOptions"]

STATE_DIR = ".gisjob"
SAMPLE_SECONDS = 0.25


@dataclass
class RunOptions:
    job_file: Path
    workers: int
    allowance: int
    resume: bool = True
    fail_fast: bool = False
    use_cgroups: bool = True
    backoff_base: float = 1.0
    poll_seconds: float = 0.02
    metrics_port_base: int | None = None  # worker in slot k serves metrics on base + k
    metrics_linger: float = 0.0  # a worker waits (at most) this long for its final scrape
    worker_command: tuple[str, ...] = DEFAULT_WORKER_COMMAND
    # fork workers from a server that imported their stack once (:mod:`forkserver`);
    # only with the default worker command
    fork_server: bool = True


def local_state_dir(job: GisJob, location: Location) -> Path:
    """Where the runner keeps worker logs: ``.gisjob/`` of a local output folder; for an
    object-store output a local folder named after the job and its output URI."""
    if isinstance(location, LocalLocation):
        return location.root / STATE_DIR
    tag = hashlib.sha256(location.uri.encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / "gisjob-runs" / f"{job.name}-{tag}"


class LocalExecutor:
    def __init__(
        self,
        job: GisJob,
        plan: Plan,
        options: RunOptions,
        on_update: Callable[[Snapshot], None] | None = None,
        on_event: Callable[[str, dict[str, Any]], None] | None = None,
        fork_server: ForkServer | None = None,
        store: LedgerStore | None = None,
    ) -> None:
        """``fork_server``: one already started for this job (the executor owns it then).
        ``store``: the ledger (default: the output folder's)."""
        self.job = job
        self.plan = plan
        self.opts = options
        self.location = open_location(job.spec.output.uri)
        self.state_dir = local_state_dir(job, self.location)
        self.store: LedgerStore = store or LocationLedgerStore(self.location)
        self.config = policy.PolicyConfig.from_spec(
            job.spec, memory_cap=options.allowance, backoff_base=options.backoff_base
        )
        self.on_update = on_update or (lambda s: None)
        self.on_event = on_event or (lambda e, d: None)
        self.supervisor = Supervisor(
            SupervisorOptions(
                job_file=options.job_file,
                job_name=job.name,
                state_dir=self.state_dir,
                workers=options.workers,
                use_cgroups=options.use_cgroups,
                fork_server=options.fork_server,
                worker_command=options.worker_command,
                metrics_port_base=options.metrics_port_base,
                metrics_linger=options.metrics_linger,
            ),
            self.on_event,
            fork_server,
        )
        self.book: TileBook | None = None
        self.queue: deque[tuple[float, policy.Launch]] = deque()
        self.running: dict[str, policy.Launch] = {}  # supervisor key -> launch
        self.samples: list[Sample] = []
        self._interrupted = False

    @property
    def runs(self) -> dict[str, TileRun]:
        return self.book.runs if self.book is not None else {}

    def check_allowance(self) -> None:
        sizes = self.plan.by_size()  # one tile of each size: no need to lay them all
        worst = max((t for t, _ in sizes), key=lambda t: t.memory_request_bytes, default=None)
        if worst is not None and worst.memory_request_bytes > self.opts.allowance:
            raise InputError(
                f"tile {worst.id} needs {format_bytes(worst.memory_request_bytes)} (its memory "
                f"request) but the allowance is {format_bytes(self.opts.allowance)}: raise "
                f"--memory, or lower spec.resources.memory / spec.tiling"
            )

    # ------------------------------------------------------------------------ main loop

    def run(self) -> RunResult:
        started = time.monotonic()
        self.check_allowance()
        (self.state_dir / "logs").mkdir(parents=True, exist_ok=True)
        finalize.remove_stale_temporaries(self.location)
        book = self.book = TileBook(
            self.job.name,
            self.job.spec.output.uri,
            self.plan,
            self.config,
            self.store,
            resume=self.opts.resume,
            on_event=self.on_event,
        )
        self._enqueue(book.restore())
        previous_handler = signal.signal(signal.SIGINT, self._on_sigint)
        last_sample = 0.0
        try:
            while not self._finished():
                self._reap()
                if not self._interrupted and not self._fail_fast_tripped():
                    self._launch_ready()
                now = time.monotonic()
                if now - last_sample >= SAMPLE_SECONDS:
                    self._sample(now - started)
                    last_sample = now
                self.on_update(self.snapshot())
                if self._interrupted or self._fail_fast_tripped():
                    if not self.running:
                        break
                    self._stop_all()
                time.sleep(self.opts.poll_seconds)
        finally:
            signal.signal(signal.SIGINT, previous_handler)
            self._stop_all()
            self.supervisor.close()
        self.on_update(self.snapshot())
        manifest = finalize.finalize_outputs(
            self.job.name,
            self.plan,
            self.location,
            book.entries(),
            self.store,
            [*list_all(self.store), *book.unrecorded],
            interrupted=self._interrupted,
        )
        return RunResult(
            self.plan,
            book.runs,
            time.monotonic() - started,
            self._interrupted,
            self.samples,
            manifest,
        )

    def _on_sigint(self, signum: int, frame: object) -> None:
        self._interrupted = True

    def _fail_fast_tripped(self) -> bool:
        return self.opts.fail_fast and any(r.state == "failed" for r in self.runs.values())

    def _finished(self) -> bool:
        if self.running:
            return False
        if self._interrupted or self._fail_fast_tripped():
            return True
        return not self.queue

    def _enqueue(self, launches: list[policy.Launch]) -> None:
        now = time.monotonic()
        self.queue.extend((now + launch.delay_seconds, launch) for launch in launches)

    def _memory_in_use(self) -> int:
        return sum(launch.memory for launch in self.running.values())

    def _launch_ready(self) -> None:
        now = time.monotonic()
        used = self._memory_in_use()
        kept: deque[tuple[float, policy.Launch]] = deque()
        while self.queue:
            ready, launch = self.queue.popleft()
            fits = used + launch.memory <= self.opts.allowance
            if ready <= now and fits and len(self.running) < self.opts.workers:
                self._start(launch)
                used += launch.memory
            else:
                kept.append((ready, launch))
            if len(self.running) >= self.opts.workers:
                break
        kept.extend(self.queue)
        self.queue = kept

    def _start(self, launch: policy.Launch) -> None:
        assert self.book is not None
        key = f"{launch.tile.id}.{launch.number}"
        in_cgroup = self.supervisor.start(key, self.book.request(launch), launch.memory)
        self.book.launched(launch)
        self.running[key] = launch
        self.on_event(
            "launch",
            {
                "tile": launch.tile.id,
                "attempt": launch.number,
                "memory": launch.memory,
                "chunkScale": launch.chunk_scale,
                "strategy": launch.strategy,
                "cgroup": in_cgroup,
            },
        )

    def _reap(self) -> None:
        self._finish_exits(self.supervisor.reap())

    def _stop_all(self) -> None:
        self._finish_exits(self.supervisor.terminate_all())

    def _finish_exits(self, exits: list[Exited]) -> None:
        assert self.book is not None
        for ex in exits:
            launch = self.running.pop(ex.key)
            self._enqueue(self.book.finished(launch, ex, stopped=self._interrupted))

    def _sample(self, t: float) -> None:
        for key, rss in self.supervisor.rss():
            launch = self.running.get(key)
            if launch is not None:
                self.samples.append(
                    Sample(launch.tile.id, launch.number, round(t, 3), rss, launch.memory)
                )

    def snapshot(self) -> Snapshot:
        states = [r.state for r in self.runs.values() if r.state != "split"]
        book = self.book
        return Snapshot(
            total=len(states),
            done=sum(1 for s in states if s == "succeeded"),
            failed=sum(1 for s in states if s == "failed"),
            running=len(self.running),
            memory_in_use=self._memory_in_use(),
            allowance=self.opts.allowance,
            retries=book.retries if book else 0,
            oom=book.oom if book else 0,
            skipped=book.skipped if book else 0,
        )
