"""One attempt of one tile at the process edge: the job, GDAL settings, metrics, the tile
(:func:`worker.run_tile`), its ledger record, its result record, and the exit code.

``gisjob worker`` (a pod, or a worker spawned by ``gisjob run``) and the fork server's
children (``gisjob run``'s default) both call :func:`main` with an :class:`AttemptRequest`,
so a forked worker does exactly what a spawned one does, without the CLI in between.

With ``$GISJOB_OWNER`` (a pod) the worker first checks that the output location is not
another GisJob's (:mod:`ownership`); if it is, the attempt writes nothing there — no tile,
no ledger record — and exits 2 with the owner in its result.

The worker records its own outcome in the ledger of the output location (writer
``worker``) before it writes its result record. Failing to record is an error, never
silent: the attempt then exits 1 (retryable) and its result says
``could not record the outcome in <path>: <reason>``.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import EXIT_ERROR, EXIT_INPUT, GisJobError, SpecError
from .result import ResultRecord

if TYPE_CHECKING:  # light at import: the runner imports this before it plans
    from .ledger import LedgerRecord
    from .ledgerstore import LedgerStore
    from .spec import GisJob

MOUNTED_JOB = "/etc/gisjob/job.yaml"
TERMINATION_LOG = "/dev/termination-log"


@dataclass(frozen=True)
class AttemptRequest:
    """What one worker process is asked to do (the ``gisjob worker`` options)."""

    tile: str
    job_file: str | None = None  # None: $GISJOB_JOB, then $GISJOB_JOB_FILE or the mount
    memory: int | None = None  # budget (policy: grow); default the tile's planned request
    chunk_scale: float = 1.0  # policy: shrinkChunks
    attempt: int = 0  # this tile's attempt number (the ledger's key, with the tile)
    strategy: str = "initial"  # the policy's reason for this attempt
    result_path: str | None = None  # default $GISJOB_RESULT_PATH, /dev/termination-log
    metrics_port: int | None = None
    metrics_linger: float = 0.0
    pushgateway: str | None = None
    pod: str | None = None  # $GISJOB_POD_NAME in pods
    # earlier attempts as the operator saw them (its compact history, $GISJOB_HISTORY)
    history: str | None = None
    log_level: str = "info"

    def to_argv(self) -> list[str]:
        """The ``gisjob`` arguments of the same request."""
        argv = ["worker", "--tile", self.tile]
        if self.job_file is not None:
            argv += ["--job", self.job_file]
        if self.memory is not None:
            argv += ["--memory", str(self.memory)]
        argv += ["--chunk-scale", repr(self.chunk_scale)]
        argv += ["--attempt", str(self.attempt), "--strategy", self.strategy]
        if self.result_path is not None:
            argv += ["--result", self.result_path]
        if self.metrics_port is not None:
            argv += ["--metrics-port", str(self.metrics_port)]
        if self.metrics_linger > 0:
            argv += ["--metrics-linger", repr(self.metrics_linger)]
        if self.pushgateway is not None:
            argv += ["--pushgateway", self.pushgateway]
        if self.history is not None:
            argv += ["--history", self.history]
        if self.log_level != "info":
            argv += ["--log-level", self.log_level]
        return argv

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AttemptRequest:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


def default_result_path() -> str | None:
    env = os.environ.get("GISJOB_RESULT_PATH")
    if env:
        return env
    return TERMINATION_LOG if os.access(TERMINATION_LOG, os.W_OK) else None


def load_job(job_file: str | None) -> GisJob:
    """The job: ``job_file``, else ``$GISJOB_JOB`` (the document), else ``$GISJOB_JOB_FILE``
    or the mounted ``/etc/gisjob/job.yaml``."""
    from .spec import load_job as load
    from .spec import load_job_text

    if job_file:
        return load(job_file)
    text = os.environ.get("GISJOB_JOB")
    if text:
        return load_job_text(text, "$GISJOB_JOB")
    mounted = os.environ.get("GISJOB_JOB_FILE", MOUNTED_JOB)
    if Path(mounted).is_file():
        return load(mounted)
    raise SpecError("no job: give --job FILE, or set GISJOB_JOB or GISJOB_JOB_FILE")


def ledger_record(
    job_name: str, out_dir: str, req: AttemptRequest, result: ResultRecord, digest: str
) -> LedgerRecord:
    """The worker's ledger record of this attempt (stats the output it names)."""
    from .ledger import LedgerRecord
    from .ledgerstore import output_identity

    rel = size = mtime = etag = None
    if result.output and result.exitCode == 0:
        rel, st = output_identity(out_dir, result.output)
        size, mtime, etag = st.size, st.mtime_ns, st.etag
    return LedgerRecord(
        job=job_name,
        digest=digest,
        tile=req.tile,
        attempt=req.attempt,
        outcome=result.outcome,
        writer="worker",
        strategy=req.strategy,
        memory=req.memory if req.memory is not None else result.memoryBudgetBytes,
        chunk_scale=req.chunk_scale,
        exit_code=result.exitCode,
        output=rel,
        bytes=size,
        mtime_ns=mtime,
        etag=etag,
        peak_rss_bytes=result.peakRssBytes,
        cgroup_peak_bytes=result.cgroupPeakBytes,
        estimated_peak_bytes=result.estimatedPeakBytes,
        memory_budget_bytes=result.memoryBudgetBytes,
        chunks=result.chunks,
        bytes_read=result.bytesRead,
        bytes_written=result.bytesWritten,
        seconds=result.seconds,
        error=result.error,
        pod=req.pod,
        recorded_at=time.time(),
    )


def unrecorded_history(
    job_name: str, store: LedgerStore, req: AttemptRequest, digest: str
) -> list[LedgerRecord]:
    """Records of the earlier attempts the operator saw (``req.history``: its compact
    history of the tile) that have no record of their own — pods killed before they could
    write one (an OOM kill, an eviction). Written by this attempt on the operator's behalf
    (writer ``runner``, as the local runner does for its killed workers), so the ledger and
    the manifest hold every attempt."""
    import json

    from . import policy
    from .ledgerrecord import runner_record

    if not req.history:
        return []
    try:
        entries = json.loads(req.history)
    except ValueError:
        return []
    if not isinstance(entries, list) or not entries:
        return []
    recorded = {r.attempt for r in store.records(digest, tile=req.tile)}  # one listing
    out = []
    for h in entries:
        try:
            attempt = policy.attempt_from_history(req.tile, h)
        except (KeyError, TypeError, ValueError):
            continue
        if attempt.number in recorded:
            continue
        what = "OOMKilled" if attempt.oom_killed else f"exit {attempt.exit_code}"
        error = f"{what}: ended before it could record itself (as the operator saw it)"
        out.append(runner_record(job_name, digest, attempt, error=error))
    return out


def record_outcome(job: GisJob, req: AttemptRequest, result: ResultRecord) -> None:
    """Put the attempt's ledger record in the output location; on failure turn the result
    into a retryable error that says why (the tile's own outcome kept in the message)."""
    from .ledger import LedgerError
    from .ledgerstore import LocationLedgerStore
    from .location import open_location
    from .tiles import parse_tile_id

    try:
        parse_tile_id(req.tile)
    except ValueError:
        return  # not a tile id of any plan (its input error says so): nothing to record
    out_dir = job.spec.output.uri
    try:
        store = LocationLedgerStore(open_location(out_dir))
    except GisJobError as exc:
        result.outcome, result.exitCode = "error", EXIT_ERROR
        result.error = f"could not record the outcome: {exc}"
        return
    try:
        if not result.digest:
            raise LedgerError(
                f"could not record the outcome in {store.location}: no plan digest "
                "(the job's input could not be listed)"
            )
        for earlier in unrecorded_history(job.name, store, req, result.digest):
            store.put(earlier)
        result.ledgerRecord = store.put(
            ledger_record(job.name, out_dir, req, result, result.digest)
        )
    except (LedgerError, OSError, GisJobError) as exc:
        text = (
            str(exc)
            if isinstance(exc, LedgerError)
            else (f"could not record the outcome in {store.location}: {exc}")
        )
        own = f"{result.outcome}" + (f": {result.error}" if result.error else "")
        result.outcome, result.exitCode = "error", EXIT_ERROR
        result.error = f"{' '.join(text.split())} (the tile's own outcome: {own})"


def check_owner(job: GisJob, tile: str) -> ResultRecord | None:
    """With ``$GISJOB_OWNER`` (a pod), the output location must be unclaimed or this job's
    (:func:`ownership.check`: one small file read); else the result record of a refused
    attempt, which writes nothing there — exit 2 for another job's location or an unreadable
    owner record, 1 when the file system fails."""
    from . import ownership

    try:
        owner = ownership.owner_from_env()
        if owner is not None:
            ownership.check(job.spec.output.uri, owner, claimed=True)
    except GisJobError as exc:
        return ResultRecord(
            tile=tile,
            outcome=exc.outcome,  # type: ignore[arg-type]
            exitCode=exc.exit_code,
            peakRssBytes=0,
            job=job.name,
            error=" ".join(str(exc).split()),
        )
    return None


def finish(result: ResultRecord, path: str | None) -> None:
    """Write the result record to the result path (the termination message) and stdout."""
    from .guard import peak_rss_bytes
    from .result import write_result

    result.peakRssBytes = result.peakRssBytes or peak_rss_bytes()
    if path:
        write_result(result, path)
    sys.stdout.write(result.to_json() + "\n")


def main(req: AttemptRequest) -> int:
    """The whole attempt; returns the exit code (0, 1, 2, 3 …; see DESIGN §4)."""
    from . import logs
    from .guard import tune_allocator

    tune_allocator()
    logs.configure(req.log_level)
    path = req.result_path or default_result_path()
    try:
        job = load_job(req.job_file)
    except SpecError as exc:
        message = " ".join(str(exc).split())
        finish(
            ResultRecord(
                tile=req.tile, outcome="input", exitCode=EXIT_INPUT, peakRssBytes=0, error=message
            ),
            path,
        )
        sys.stderr.write(f"gisjob: error: {message}\n")
        return EXIT_INPUT
    refused = check_owner(job, req.tile)
    if refused is not None:  # another job's output location: no tile, no ledger record
        finish(refused, path)
        sys.stderr.write(f"gisjob: error: {refused.error}\n")
        return refused.exitCode
    from . import gdalenv

    gdalenv.configure_for(job)  # before GDAL loads: cache, threads, spec.gdalConfig
    from .registry import get_operation

    if get_operation(job.spec.operation.name).kind == "vector":
        gdalenv.import_pyogrio()  # this process reads Arrow only: skip geopandas/pandas
    from prometheus_client import CollectorRegistry

    from .metrics import MetricsServer, WorkerMetrics, push
    from .worker import WorkerOptions, run_tile

    registry = CollectorRegistry()
    metrics = WorkerMetrics(registry, job.name, req.tile)
    server: MetricsServer | None = None
    if req.metrics_port is not None:
        try:
            server = MetricsServer(registry, req.metrics_port)
        except OSError as exc:  # metrics must never fail a tile
            sys.stderr.write(f"gisjob: warning: metrics port {req.metrics_port}: {exc}\n")
    opts = WorkerOptions(
        tile=req.tile, memory=req.memory, chunk_scale=req.chunk_scale, metrics=metrics
    )
    result = run_tile(job, opts)
    record_outcome(job, req, result)
    finish(result, path)
    if server is not None and req.metrics_linger > 0:
        server.scrapes.wait_next(req.metrics_linger)
    if req.pushgateway:
        try:
            push(registry, req.pushgateway, job.name, req.tile)
        except OSError as exc:
            sys.stderr.write(f"gisjob: warning: metrics push to {req.pushgateway} failed: {exc}\n")
    if result.exitCode != 0:
        sys.stderr.write(f"gisjob: error: {result.error}\n")
    return result.exitCode
