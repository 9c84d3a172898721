"""``gisjob planner``: plan a job inside the cluster (the planner pod) and hand the operator a
compact plan descriptor.

The operator reads no dataset: this command does the metadata reads, prints the descriptor
on stdout (one marked line, for the operator to read from the pod's log) and writes a
result record of at most 4 KiB to the termination message — with the descriptor inline when
it fits, so small plans need no log read at all.

With ``$GISJOB_OWNER`` (set by the operator) the planner claims the output location for its
GisJob (:mod:`gisjob_worker.ownership`) once the plan is built — so an input error is
reported as such and leaves no owner record — and before the location's ledger is read; a
location another job owns is an input error (exit 2) naming that job.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import time
from collections.abc import Iterator
from types import FrameType

import click

from ..errors import GisJobError, InputError
from ..ledger import complete_tile_indexes
from ..ledgerstore import LocationLedgerStore
from ..location import LocalLocation, open_location
from ..plan import Plan
from ..ranges import encode as encode_ranges
from .podjob import default_result_path, job_option, load_job, result_option, write_result_json

INLINE_LIMIT = 3000  # descriptor characters kept inline in the 4 KiB termination message
PLAN_SECONDS_ENV = "GISJOB_PLAN_SECONDS"
DEFAULT_PLAN_SECONDS = 600.0


class PlanningTimeout(InputError):
    """Planning ran past its time limit: the input is too slow to read or too big to plan."""


def plan_seconds() -> float:
    """The planner's time limit (``$GISJOB_PLAN_SECONDS``, default 600 s; 0 = none)."""
    raw = os.environ.get(PLAN_SECONDS_ENV, "").strip()
    try:
        value = float(raw) if raw else DEFAULT_PLAN_SECONDS
    except ValueError:
        raise InputError(f"${PLAN_SECONDS_ENV}: {raw!r} is not a number of seconds") from None
    if not math.isfinite(value) or value < 0:
        raise InputError(f"${PLAN_SECONDS_ENV}: {raw!r} is not a number of seconds")
    return value


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise :class:`PlanningTimeout` in this (main) thread after ``seconds`` (0: no limit).
    Python code is interrupted between statements; a single GDAL call that never returns
    is the pod's ``activeDeadlineSeconds``' to end."""

    def expired(signum: int, frame: FrameType | None) -> None:
        raise PlanningTimeout(
            f"planning took longer than {seconds:g} s (${PLAN_SECONDS_ENV}): the input is too "
            "slow to read or too large to plan"
        )

    if seconds <= 0:
        yield
        return
    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _complete_in_output(out_dir: str, plan: Plan) -> set[int]:
    """Planned tiles already complete in the output location for this plan (a run of the
    same job — local or on a cluster — got there first): the operator skips them."""
    loc = open_location(out_dir)
    if isinstance(loc, LocalLocation) and not loc.root.is_dir():
        return set()
    store = LocationLedgerStore(loc)
    return complete_tile_indexes(plan, store.records(plan.digest), store.output_ok)


@click.command()
@job_option
@result_option
def planner(job_file: str | None, result_path: str | None) -> None:
    """Plan the job (metadata reads only) and print its compact plan descriptor."""
    from .. import ownership, plandesc

    started = time.monotonic()
    path = result_path or default_result_path()
    try:
        job = load_job(job_file)
        from .. import gdalenv

        gdalenv.configure_for(job)  # before GDAL loads: cache, threads, spec.gdalConfig
        from ..planner import build_plan

        with time_limit(plan_seconds()):
            plan = build_plan(job)
        # the job's claim on its output location, once the input is known to be plannable
        # (a bad input leaves no owner record), before anything there is read or trusted
        owner = ownership.owner_from_env()
        if owner is not None:
            ownership.claim(job.spec.output.uri, owner)
        desc = plandesc.descriptor(
            plan, job.spec.tiling.tile_size, job.spec.tiling.features_per_tile
        )
        complete = _complete_in_output(job.spec.output.uri, plan)
        if complete:
            desc["complete"] = encode_ranges(complete)
        text, sha = plandesc.encode(desc)
    except GisJobError as exc:
        message = " ".join(str(exc).split())
        write_result_json({"exitCode": exc.exit_code, "error": message}, path)
        click.echo(f"gisjob: error: {message}", err=True)
        raise SystemExit(exc.exit_code) from None
    except Exception as exc:  # retryable: a storage hiccup, a bug — the record says which
        message = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
        write_result_json({"exitCode": 1, "error": message}, path)
        click.echo(f"gisjob: error: {message}", err=True)
        raise SystemExit(1) from None
    click.echo(plandesc.LOG_MARKER + text)
    record = {
        "exitCode": 0,
        "digest": plan.digest,
        "tiles": len(plan.tiles),
        "sha256": sha,
        "descriptorBytes": len(text),
        "complete": len(complete),
        "estimatedPeakBytes": plan.max_estimate,
        "memoryRequestBytes": plan.max_request,
        "seconds": round(time.monotonic() - started, 3),
    }
    if len(text) <= INLINE_LIMIT:
        record["descriptor"] = text
    write_result_json(record, path)
