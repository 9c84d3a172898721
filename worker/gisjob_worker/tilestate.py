"""Tile state of a local run: the ledger and the policy's decisions (no processes here).

:class:`TileBook` restores the run from the ledger (tiles complete for the same plan digest
are skipped, splits are followed), turns what a worker process was observed to do into one
recorded attempt — the worker's own ledger record when it wrote one, else a record the
runner writes on its behalf (writer ``runner``) — asks the policy what comes next, and
builds the manifest entries from the ledger and the tiles' states.

A record the runner cannot write is an error, never silent: the attempt keeps its place in
this run's manifest, an event says why, and an attempt that finished its tile without any
record becomes a retryable failure (its output is nobody's to delete).
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from . import ledger, policy
from .attempt import AttemptRequest
from .errors import EXIT_ERROR
from .ledger import LedgerError, LedgerRecord, LedgerView, Resolution, TileEntry
from .ledgerrecord import runner_record
from .ledgerstore import LedgerStore, output_identity
from .plan import Plan, Tile, split_tile
from .runtypes import TileRun
from .supervisor import Exited

CLOCK_SLACK = 1.0  # seconds: a worker's record is this attempt's if written after its start


def kill_text(ex: Exited) -> str | None:
    """Why a worker without its own record ended, in words."""
    if ex.code >= 0:
        return None
    try:
        name = signal.Signals(-ex.code).name
    except ValueError:
        name = f"signal {-ex.code}"
    if ex.kill.oom_killed:
        return f"killed by {name}: an out-of-memory kill its cgroup or the kernel counted"
    if ex.kill.disrupted:
        return f"killed by {name} without an out-of-memory kill (a disruption)"
    return f"killed by {name}"


class TileBook:
    def __init__(
        self,
        job_name: str,
        out_dir: str,
        plan: Plan,
        config: policy.PolicyConfig,
        store: LedgerStore,
        *,
        resume: bool,
        on_event: Callable[[str, dict[str, Any]], None],
    ) -> None:
        self.job_name = job_name
        self.out_dir = out_dir
        self.plan = plan
        self.config = config
        self.store = store
        self.resume = resume
        self.on_event = on_event
        self.runs: dict[str, TileRun] = {}
        recorded = store.records(plan.digest)
        self._next: dict[str, int] = {}  # next attempt number per tile, after every record
        for r in recorded:
            self._next[r.tile] = max(self._next.get(r.tile, 0), r.attempt + 1)
        # with --no-resume the earlier records of this digest are not this run's history
        self.view = LedgerView.of(plan.digest, recorded if resume else (), store.output_ok)
        self.unrecorded: list[LedgerRecord] = []  # records the runner could not write
        self.retries = 0
        self.oom = 0
        self.skipped = 0

    # -------------------------------------------------------------------------- restore

    def restore(self) -> list[policy.Launch]:
        """Every planned tile's run; returns the first launches."""
        launches: list[policy.Launch] = []
        for tile in self.plan.tiles:
            launches += self._restore(tile, None)
        if self.skipped:
            self.on_event("resume", {"skipped": self.skipped, "digest": self.plan.digest})
        return launches

    def _restore(self, tile: Tile, parent: str | None) -> list[policy.Launch]:
        run = TileRun(tile, parent)
        self.runs[tile.id] = run
        if self.view.complete(tile.id) is not None:
            run.state, run.resumed = "succeeded", True
            self.skipped += 1
            return []
        if self.view.was_split(tile.id):
            children = split_tile(self.plan, tile) or []
            if children:
                run.state, run.resumed = "split", True
                return [launch for c in children for launch in self._restore(c, tile.id)]
        return self._decided(run, policy.decide(self.plan, tile, [], self.config))

    # ------------------------------------------------------------------------- outcomes

    def launched(self, launch: policy.Launch) -> None:
        self.runs[launch.tile.id].state = "running"

    def request(self, launch: policy.Launch) -> AttemptRequest:
        return AttemptRequest(
            tile=launch.tile.id,
            memory=launch.memory,
            chunk_scale=launch.chunk_scale,
            attempt=launch.number,
            strategy=launch.strategy,
        )

    def finished(self, launch: policy.Launch, ex: Exited, *, stopped: bool) -> list[policy.Launch]:
        """A worker of ``launch`` exited (``stopped``: the runner stopped it, Ctrl-C).
        Records the attempt, decides what next; returns the launches that follow."""
        run = self.runs[launch.tile.id]
        record = self._attempt_record(launch, ex)
        self.view.add(record)
        run.records.append(record.attempt_json())
        if stopped and record.exit_code != 0:
            run.state = "pending"  # stopped by us: not a tile failure
            return []
        attempt = record.to_attempt()
        run.attempts.append(attempt)
        if attempt.failure == "memory":
            self.oom += 1
            self.on_event(
                "out-of-memory",
                {
                    "tile": run.tile.id,
                    "exitCode": record.exit_code,
                    "oomKilled": record.oom_killed,
                    "memory": launch.memory,
                },
            )
        elif attempt.failure == "disruption":
            self.on_event("disrupted", {"tile": run.tile.id, "error": record.error})
        decision = policy.decide(self.plan, run.tile, run.attempts, self.config)
        return self._decided(run, decision)

    def _decided(self, run: TileRun, decision: policy.Decision) -> list[policy.Launch]:
        if isinstance(decision, policy.Launch):
            run.state = "pending"
            if decision.strategy == "retry":
                self.retries += 1
            if not run.attempts:  # numbered after every recorded attempt of the tile
                decision = replace(decision, number=self._next.get(run.tile.id, 0))
            return [decision]
        if isinstance(decision, policy.Split):
            run.state = "split"
            self.on_event(
                "split", {"tile": run.tile.id, "children": [c.id for c in decision.children]}
            )
            launches: list[policy.Launch] = []
            for child in decision.children:
                child_run = TileRun(child, run.tile.id)
                self.runs[child.id] = child_run
                launches += self._decided(
                    child_run, policy.decide(self.plan, child, [], self.config)
                )
            return launches
        if isinstance(decision, policy.Done):
            run.state = "succeeded"
        else:
            run.state, run.reason = "failed", decision.reason
            self.on_event("failed", {"tile": run.tile.id, "reason": decision.reason})
        last = run.records[-1] if run.records else {}
        self.on_event(
            "tile",
            {
                "tile": run.tile.id,
                "outcome": run.state,
                "peakRssBytes": last.get("peakRssBytes"),
                "error": run.reason or last.get("error"),
            },
        )
        return []

    def _attempt_record(self, launch: policy.Launch, ex: Exited) -> LedgerRecord:
        """The worker's own record of this attempt, else one the runner writes for it."""
        tile = launch.tile.id
        own = [r for r in self._own_records(launch, ex) if self._is_own(r, launch, ex)]
        if own:
            record = own[-1]
            if record.succeeded and not self.store.output_ok(record):
                # recorded, then changed or removed under us: not a finished tile
                return replace(
                    record,
                    outcome="error",
                    exit_code=EXIT_ERROR,
                    error=f"output {record.output} changed after it was recorded",
                )
            return record
        record = self._runner_record(launch, ex)
        try:
            self.store.put(record)
        except LedgerError as exc:
            self.on_event("ledger-error", {"tile": tile, "error": str(exc)})
            if record.exit_code == 0:  # finished, but no record says so: not complete
                record = replace(record, outcome="error", exit_code=EXIT_ERROR, output=None)
            record = replace(record, error=ledger_error_text(exc, record.error))
            self.unrecorded.append(record)
        return record

    def _own_records(self, launch: policy.Launch, ex: Exited) -> list[LedgerRecord]:
        """The records the worker says it wrote (its result names one: one read), else —
        killed before it could report — the records of its tile and attempt (a listing)."""
        try:
            if ex.result is not None and ex.result.ledgerRecord:
                return [self.store.read(ex.result.ledgerRecord)]
            return self.store.records(self.plan.digest, launch.tile.id, launch.number)
        except LedgerError as exc:
            self.on_event("ledger-error", {"tile": launch.tile.id, "error": str(exc)})
            return []

    def _is_own(self, r: LedgerRecord, launch: policy.Launch, ex: Exited) -> bool:
        return (
            r.writer == "worker"
            and (r.digest, r.tile, r.attempt) == (self.plan.digest, launch.tile.id, launch.number)
            and (r.recorded_at or 0.0) >= ex.started_wall - CLOCK_SLACK
        )

    def _runner_record(self, launch: policy.Launch, ex: Exited) -> LedgerRecord:
        res = ex.result
        exit_code, error = ex.kill.exit_code, kill_text(ex)
        if res is not None and ex.code >= 0:
            exit_code, error = res.exitCode, res.error
        output = size = mtime = etag = None
        if res is not None and res.digest and res.digest != self.plan.digest:
            exit_code = EXIT_ERROR
            error = (
                f"the worker planned {res.digest}, not {self.plan.digest}: the input changed "
                "during the run"
            )
        elif exit_code == 0:
            try:
                if res is None or not res.output:
                    raise OSError("no result record naming its output")
                output, st = output_identity(self.out_dir, res.output)
                size, mtime, etag = st.size, st.mtime_ns, st.etag
            except OSError as exc:
                exit_code, error = EXIT_ERROR, f"exit 0, but {exc}"
        elif error is None:
            error = f"exit {exit_code} without a result record"
        attempt = policy.Attempt(
            tile=launch.tile.id,
            number=launch.number,
            memory=launch.memory,
            chunk_scale=launch.chunk_scale,
            strategy=launch.strategy,
            exit_code=exit_code,
            oom_killed=ex.kill.oom_killed,
            disrupted=ex.kill.disrupted,
        )
        return runner_record(
            self.job_name,
            self.plan.digest,
            attempt,
            output=output,
            bytes=size,
            mtime_ns=mtime,
            etag=etag,
            peak_rss_bytes=res.peakRssBytes if res else None,
            cgroup_peak_bytes=ex.cgroup_peak or (res.cgroupPeakBytes if res else None),
            estimated_peak_bytes=res.estimatedPeakBytes if res else None,
            memory_budget_bytes=res.memoryBudgetBytes if res else None,
            chunks=res.chunks if res else 0,
            bytes_read=res.bytesRead if res else 0,
            bytes_written=res.bytesWritten if res else 0,
            seconds=ex.seconds,
            error=error,
        )

    # ------------------------------------------------------------------------- manifest

    def resolve(self, tile: Tile, root: int) -> Resolution:
        run = self.runs.get(tile.id)
        if run is None:
            return Resolution("pending")
        return Resolution(run.state, run.reason)

    def entries(self) -> list[tuple[Tile, TileEntry]]:
        return ledger.manifest_entries(self.plan, self.view, self.resolve)


def ledger_error_text(exc: LedgerError, error: str | None) -> str:
    text = " ".join(str(exc).split())
    return f"{text} (the attempt's own outcome: {error})" if error else text
