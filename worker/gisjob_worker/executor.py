"""The local executor: run a plan's tiles as memory-capped worker subprocesses.

Tiles are packed by memory: the sum of the requests of running workers stays within the
allowance, and their count within the worker limit. Each worker is a process of its own
(memory really returns to the OS), forked from the run's :mod:`forkserver` (imports paid
once) or started as a fresh interpreter, in its own memory cgroup where the machine allows one,
otherwise under its own soft ceiling plus an ``RLIMIT_DATA`` backstop. Outcomes go through
the shared :mod:`policy`; finished tiles are journaled so a killed runner resumes.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from . import finalize, outputs, policy
from .cgroup import ChildCgroup, create_child
from .errors import InputError
from .finalize import TileEntry
from .forkserver import ForkedWorker, ForkServer, ForkServerError
from .plan import Plan, Tile, split_tile
from .quantity import format_bytes
from .spec import GisJob

STATE_DIR = ".gisjob"
JOURNAL = "journal.jsonl"
TERM_GRACE_SECONDS = 10.0
SAMPLE_SECONDS = 0.25
BACKSTOP_FACTOR = 2.0
BACKSTOP_EXTRA = 1024**3
PR_SET_PDEATHSIG = 1
DEFAULT_WORKER_COMMAND = (sys.executable, "-m", "gisjob_worker")

TileState = Literal["pending", "running", "succeeded", "failed", "split"]


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


@dataclass
class TileRun:
    tile: Tile
    parent: str | None = None
    state: TileState = "pending"
    attempts: list[policy.Attempt] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)
    entry: TileEntry | None = None  # set when it finished (or was resumed)
    resumed: bool = False


@dataclass
class Running:
    run: TileRun
    launch: policy.Launch
    proc: subprocess.Popen[bytes] | ForkedWorker
    cgroup: ChildCgroup | None
    result_path: Path
    started: float
    log: Any
    slot: int = 0


@dataclass
class Sample:
    tile: str
    attempt: int
    t: float
    rss: int
    request: int


@dataclass
class Snapshot:
    """What the progress display shows."""

    total: int
    done: int
    failed: int
    running: int
    memory_in_use: int
    allowance: int
    retries: int
    oom: int
    skipped: int


@dataclass
class RunResult:
    plan: Plan
    runs: dict[str, TileRun]
    seconds: float
    interrupted: bool
    samples: list[Sample]
    manifest: dict[str, Any]

    @property
    def succeeded(self) -> bool:
        return not self.interrupted and all(
            r.state in ("succeeded", "split") for r in self.runs.values()
        )


def _preexec(cgroup: ChildCgroup | None, backstop: int | None) -> Callable[[], None]:
    def setup() -> None:
        # die with the runner (a SIGKILLed runner must not leave workers writing)
        try:
            libc = ctypes.CDLL(None)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):
            pass
        if cgroup is not None:
            cgroup.add(os.getpid())
        if backstop is not None:
            resource.setrlimit(resource.RLIMIT_DATA, (backstop, backstop))

    return setup


def backstop_for(memory: int) -> int:
    """``RLIMIT_DATA`` backstop where no cgroup is available: coarse on purpose — it caps
    private writable mappings (reserved, not used), so it must sit well above the budget."""
    return int(memory * BACKSTOP_FACTOR) + BACKSTOP_EXTRA


class LocalExecutor:
    def __init__(
        self,
        job: GisJob,
        plan: Plan,
        options: RunOptions,
        on_update: Callable[[Snapshot], None] | None = None,
        on_event: Callable[[str, dict[str, Any]], None] | None = None,
        fork_server: ForkServer | None = None,
    ) -> None:
        """``fork_server``: one already started for this job (the executor owns it then)."""
        self.job = job
        self.plan = plan
        self.opts = options
        self.out_dir = Path(job.spec.output.uri)
        self.state_dir = self.out_dir / STATE_DIR
        self.config = policy.PolicyConfig.from_spec(
            job.spec, memory_cap=options.allowance, backoff_base=options.backoff_base
        )
        self.on_update = on_update or (lambda s: None)
        self.on_event = on_event or (lambda e, d: None)
        self.runs: dict[str, TileRun] = {}
        self.queue: deque[tuple[float, policy.Launch]] = deque()
        self.running: dict[int, Running] = {}
        self._server: ForkServer | None = fork_server
        self._server_lost = False
        self.samples: list[Sample] = []
        self.retries = 0
        self.oom = 0
        self.skipped = 0
        self._interrupted = False
        self._journal: Any = None

    # ------------------------------------------------------------------ checks / resume

    def check_allowance(self) -> None:
        worst = max(self.plan.tiles, key=lambda t: t.memory_request_bytes, default=None)
        if worst is not None and worst.memory_request_bytes > self.opts.allowance:
            raise InputError(
                f"tile {worst.id} needs {format_bytes(worst.memory_request_bytes)} (its memory "
                f"request) but the allowance is {format_bytes(self.opts.allowance)}: raise "
                f"--memory, or lower spec.resources.memory / spec.tiling"
            )

    def _previous_entries(self) -> dict[str, TileEntry]:
        """Entries of earlier runs of the same plan: the manifest, then the journal."""
        entries: dict[str, TileEntry] = {}
        manifest = finalize.read_manifest(self.out_dir)
        if manifest and manifest.get("digest") == self.plan.digest:
            for d in manifest.get("tiles", []):
                entries[d["id"]] = TileEntry.from_json(d)
        try:
            lines = (self.state_dir / JOURNAL).read_text().splitlines()
        except OSError:
            lines = []
        for line in lines:
            try:
                d = json.loads(line)
            except ValueError:
                continue  # a torn last line from a killed runner
            if d.get("digest") == self.plan.digest:
                entries[d["tile"]["id"]] = TileEntry.from_json(d["tile"])
        return entries

    def _restore(self, tile: Tile, parent: str | None, prev: dict[str, TileEntry]) -> None:
        run = TileRun(tile, parent)
        self.runs[tile.id] = run
        entry = prev.get(tile.id)
        if entry is not None and finalize.output_is_complete(self.out_dir, entry):
            run.state, run.entry, run.resumed = "succeeded", entry, True
            self.skipped += 1
            return
        if entry is not None and entry.outcome == "split":
            children = split_tile(self.plan, tile) or []
            if children:
                run.state, run.entry, run.resumed = "split", entry, True
                for child in children:
                    self._restore(child, tile.id, prev)
                return
        self._enqueue(run, policy.decide(self.plan, tile, [], self.config))

    # ------------------------------------------------------------------------ main loop

    def run(self) -> RunResult:
        started = time.monotonic()
        self.check_allowance()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.state_dir.mkdir(exist_ok=True)
        (self.state_dir / "logs").mkdir(exist_ok=True)
        prev = self._previous_entries() if self.opts.resume else {}
        for sub in (outputs.TILES_DIR, outputs.PARTS_DIR):
            for stale in outputs.stale_temporaries(self.out_dir / sub):
                stale.unlink(missing_ok=True)
        journal_path = self.state_dir / JOURNAL
        self._journal = open(journal_path, "a" if prev else "w", encoding="utf-8")  # noqa: SIM115
        for tile in self.plan.tiles:
            self._restore(tile, None, prev)
        if self.skipped:
            self.on_event("resume", {"skipped": self.skipped, "digest": self.plan.digest})
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
                    self._terminate_all()
                time.sleep(self.opts.poll_seconds)
        finally:
            signal.signal(signal.SIGINT, previous_handler)
            self._terminate_all()
            if self._server is not None:
                self._server.close()
                self._server = None
            self._journal.close()
            for sub in (outputs.TILES_DIR, outputs.PARTS_DIR):
                for stale in outputs.stale_temporaries(self.out_dir / sub):
                    stale.unlink(missing_ok=True)
        self.on_update(self.snapshot())
        manifest = self.write_manifest(interrupted=self._interrupted)
        return RunResult(
            self.plan,
            self.runs,
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

    def _enqueue(self, run: TileRun, decision: policy.Decision) -> None:
        if isinstance(decision, policy.Launch):
            run.state = "pending"
            ready = time.monotonic() + decision.delay_seconds
            self.queue.append((ready, decision))
            if decision.strategy == "retry":
                self.retries += 1
        elif isinstance(decision, policy.Split):
            run.state = "split"
            self.oom += 0  # counted at the failure
            self._finish(run, "split", None)
            self.on_event(
                "split", {"tile": run.tile.id, "children": [c.id for c in decision.children]}
            )
            for child in decision.children:
                child_run = TileRun(child, run.tile.id)
                self.runs[child.id] = child_run
                self._enqueue(child_run, policy.decide(self.plan, child, [], self.config))
        elif isinstance(decision, policy.Done):
            run.state = "succeeded"
            self._finish(run, "succeeded", None)
        else:
            run.state = "failed"
            self._finish(run, "failed", decision.reason)
            self.on_event("failed", {"tile": run.tile.id, "reason": decision.reason})

    def _memory_in_use(self) -> int:
        return sum(r.launch.memory for r in self.running.values())

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
        tile = launch.tile
        run = self.runs[tile.id]
        run.state = "running"
        tag = f"{tile.id}.{launch.number}"
        result_path = self.state_dir / f"result-{tag}.json"
        result_path.unlink(missing_ok=True)
        cg = None
        if self.opts.use_cgroups:
            cg = create_child(f"gisjob-{os.getpid()}-{self.job.name}-{tag}", launch.memory)
        backstop = None if cg is not None else backstop_for(launch.memory)
        cmd = [
            *self.opts.worker_command,
            "worker",
            "--job",
            str(self.opts.job_file),
            "--tile",
            tile.id,
            "--memory",
            str(launch.memory),
            "--chunk-scale",
            repr(launch.chunk_scale),
            "--result",
            str(result_path),
        ]
        used_slots = {r.slot for r in self.running.values()}
        slot = next(k for k in range(self.opts.workers + 1) if k not in used_slots)
        if self.opts.metrics_port_base is not None:
            cmd += ["--metrics-port", str(self.opts.metrics_port_base + slot)]
            if self.opts.metrics_linger > 0:
                cmd += ["--metrics-linger", repr(self.opts.metrics_linger)]
        log = open(self.state_dir / "logs" / f"{tag}.log", "wb")  # noqa: SIM115
        proc: subprocess.Popen[bytes] | ForkedWorker
        server = self._fork_server()
        if server is not None:
            try:
                proc = server.spawn(
                    cmd[len(self.opts.worker_command) :],
                    self.state_dir / "logs" / f"{tag}.log",
                    cg.path / "cgroup.procs" if cg is not None else None,
                    backstop,
                )
            except ForkServerError as exc:
                self._lose_fork_server(str(exc))
                server = None
        if server is None:
            proc = subprocess.Popen(
                cmd,
                stdout=subprocess.DEVNULL,
                stderr=log,
                stdin=subprocess.DEVNULL,
                # the runner has no threads, so preexec_fn is safe here; it is the only way
                # to join the cgroup and set PDEATHSIG before the worker runs any own code
                preexec_fn=_preexec(cg, backstop),  # noqa: PLW1509
                start_new_session=True,
            )
        self.running[proc.pid] = Running(
            run, launch, proc, cg, result_path, time.monotonic(), log, slot
        )
        self.on_event(
            "launch",
            {
                "tile": tile.id,
                "attempt": launch.number,
                "memory": launch.memory,
                "chunkScale": launch.chunk_scale,
                "strategy": launch.strategy,
                "cgroup": cg is not None,
            },
        )

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
        Workers it had forked died with it; they come back through the policy as failed
        attempts (exit 1) and are retried."""
        self._server_lost = True
        if self._server is not None:
            self._server.close()
            self._server = None
        self.on_event("forkserver-lost", {"error": reason, "fallback": "spawn"})

    def _reap(self) -> None:
        for pid, r in list(self.running.items()):
            code = r.proc.poll()
            if code is None:
                continue
            del self.running[pid]
            r.log.close()
            oom_kills = 0
            cgroup_peak = None
            if r.cgroup is not None:
                stats = r.cgroup.stats()
                oom_kills = stats.oom_kills or 0
                cgroup_peak = stats.peak
                r.cgroup.remove()
            record: dict[str, Any] | None = None
            try:
                record = json.loads(r.result_path.read_text())
            except (OSError, ValueError):
                record = None
            r.result_path.unlink(missing_ok=True)
            killed = code < 0 and -code == signal.SIGKILL
            oom_killed = oom_kills > 0 or (killed and record is None and not self._interrupted)
            exit_code = 128 - code if code < 0 else code
            if killed and oom_killed:
                exit_code = policy.EXIT_OOM_KILLED
            attempt = policy.Attempt(
                tile=r.run.tile.id,
                number=r.launch.number,
                memory=r.launch.memory,
                chunk_scale=r.launch.chunk_scale,
                strategy=r.launch.strategy,
                exit_code=exit_code,
                oom_killed=oom_killed,
            )
            rec = dict(record or {})
            rec.update(
                {
                    "attempt": r.launch.number,
                    "strategy": r.launch.strategy,
                    "memory": r.launch.memory,
                    "chunkScale": r.launch.chunk_scale,
                    "exitCode": exit_code,
                    "oomKilled": oom_killed,
                    "seconds": round(time.monotonic() - r.started, 3),
                }
            )
            if cgroup_peak is not None:
                rec["cgroupPeakBytes"] = cgroup_peak
            if self._interrupted and code != 0:
                # stopped by us: not a tile failure; it stays pending in the manifest
                r.run.state = "pending"
                r.run.records.append(rec)
                continue
            r.run.attempts.append(attempt)
            r.run.records.append(rec)
            if attempt.failure == "memory":
                self.oom += 1
                self.on_event(
                    "out-of-memory",
                    {
                        "tile": r.run.tile.id,
                        "exitCode": exit_code,
                        "oomKilled": oom_killed,
                        "memory": r.launch.memory,
                    },
                )
            self._enqueue(r.run, policy.decide(self.plan, r.run.tile, r.run.attempts, self.config))

    def _finish(self, run: TileRun, outcome: str, error: str | None) -> None:
        last = run.records[-1] if run.records else {}
        entry = TileEntry(
            id=run.tile.id,
            outcome=outcome,
            parent=run.parent,
            error=error,
            memory_request_bytes=run.tile.memory_request_bytes,
            estimated_peak_bytes=run.tile.estimated_peak_bytes,
            peak_rss_bytes=last.get("peakRssBytes"),
            attempts=list(run.records),
        )
        if outcome == "succeeded" and last.get("output"):
            entry.output, entry.bytes, entry.mtime_ns = finalize.stat_output(
                self.out_dir, last["output"]
            )
        run.entry = entry
        line = json.dumps({"digest": self.plan.digest, "tile": entry.to_json()})
        self._journal.write(line + "\n")
        self._journal.flush()
        os.fsync(self._journal.fileno())
        self.on_event(
            "tile",
            {
                "tile": run.tile.id,
                "outcome": outcome,
                "peakRssBytes": entry.peak_rss_bytes,
                "error": error,
            },
        )

    def _terminate_all(self) -> None:
        if not self.running:
            return
        for r in self.running.values():
            if r.proc.poll() is None:
                r.proc.terminate()
        deadline = time.monotonic() + TERM_GRACE_SECONDS
        while time.monotonic() < deadline and any(
            r.proc.poll() is None for r in self.running.values()
        ):
            time.sleep(0.02)
        for r in self.running.values():
            if r.proc.poll() is None:
                r.proc.kill()
                r.proc.wait()
        self._reap()

    def _sample(self, t: float) -> None:
        for r in self.running.values():
            try:
                with open(f"/proc/{r.proc.pid}/statm", encoding="ascii") as fh:
                    rss = int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            except (OSError, ValueError, IndexError):
                continue
            self.samples.append(
                Sample(r.run.tile.id, r.launch.number, round(t, 3), rss, r.launch.memory)
            )

    def snapshot(self) -> Snapshot:
        states = [r.state for r in self.runs.values() if r.state != "split"]
        return Snapshot(
            total=len(states),
            done=sum(1 for s in states if s == "succeeded"),
            failed=sum(1 for s in states if s == "failed"),
            running=len(self.running),
            memory_in_use=self._memory_in_use(),
            allowance=self.opts.allowance,
            retries=self.retries,
            oom=self.oom,
            skipped=self.skipped,
        )

    # ------------------------------------------------------------------------ finalize

    def write_manifest(self, *, interrupted: bool) -> dict[str, Any]:
        entries: list[tuple[Tile, TileEntry]] = []
        for run in self.runs.values():
            entry = run.entry or TileEntry(
                id=run.tile.id,
                outcome="pending",
                parent=run.parent,
                memory_request_bytes=run.tile.memory_request_bytes,
                estimated_peak_bytes=run.tile.estimated_peak_bytes,
                attempts=run.records,
            )
            entries.append((run.tile, entry))
        return finalize.finalize_outputs(
            self.job.name, self.plan, self.out_dir, entries, interrupted=interrupted
        )
