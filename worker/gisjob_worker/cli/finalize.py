"""``gisjob finalize``: the finalizer (a pod on the cluster, or by hand): the manifest, the
mosaic VRT(s) or the GeoParquet dataset of a job, from the ledger in its output location.

``--completed``/``--failed`` are the operator's view of the planned tiles (compressed index
ranges, as in its status). Every tile the operator counts as completed must have a
succeeded record whose output is the recorded file, or nothing is written or deleted and
the command exits 1 naming the tiles. Without a view, tile states come from replaying the
retry policy over the recorded attempts.

The result — one line of JSON of at most 4 KiB: manifest path, tile counts, outcome or error —
goes to ``--result`` / ``$GISJOB_RESULT_PATH`` / ``/dev/termination-log`` and stdout. Exit 0
when the manifest was written (whatever the tiles' outcome), 1 on a ledger error or
another retryable failure, 2 on an input or spec error — or when ``$GISJOB_OWNER`` names a
job other than the output location's owner (:mod:`gisjob_worker.ownership`): then nothing
is written or deleted.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import click

from ..errors import EXIT_ERROR, GisJobError
from .podjob import default_result_path, job_option, load_job, result_option, write_result_json


def _ranges(option: str, text: str | None) -> set[int]:
    from ..ranges import decode

    try:
        return decode(text or "")
    except ValueError as exc:
        raise click.BadParameter(f"not index ranges ({exc})", param_hint=option) from None


def _fail(message: str, code: int, path: str | None, started: float) -> None:
    message = " ".join(message.split())
    record = {"exitCode": code, "error": message, "seconds": round(time.monotonic() - started, 3)}
    try:
        write_result_json(record, path)
    except OSError as exc:
        click.echo(f"gisjob: warning: cannot write the result to {path}: {exc}", err=True)
    click.echo(f"gisjob: error: {message}", err=True)
    sys.exit(code)


@click.command()
@job_option
@click.option(
    "--completed",
    help="Planned tile indexes the operator counts as completed (ranges like 0-99,102).",
)
@click.option("--failed", help="Planned tile indexes the operator counts as failed.")
@result_option
def finalize(
    job_file: str | None,
    completed: str | None,
    failed: str | None,
    result_path: str | None,
) -> None:
    """Write the manifest and mosaic or dataset of a job from its ledger."""
    started = time.monotonic()
    path = result_path or default_result_path()
    view = None
    if completed is not None or failed is not None:
        view = (_ranges("--completed", completed), _ranges("--failed", failed))
    try:
        job = load_job(job_file)
        from .. import ownership

        owner = ownership.owner_from_env()
        if owner is not None:  # another job's location: write and delete nothing there
            ownership.check(job.spec.output.uri, owner, claimed=True)
        from .. import gdalenv

        gdalenv.configure_for(job)  # before GDAL loads: cache, threads, spec.gdalConfig
        from .. import finalize as finalize_mod
        from ..ledgerstore import LocationLedgerStore
        from ..location import open_location
        from ..planner import build_plan

        plan = build_plan(job)
        loc = open_location(job.spec.output.uri)
        try:
            store = LocationLedgerStore(loc)
            manifest = finalize_mod.finalize_job(job, plan, loc, store, view)
        finally:
            loc.close()
    except GisJobError as exc:
        _fail(str(exc), exc.exit_code, path, started)
        return
    except Exception as exc:  # retryable: a storage hiccup, a bug — the result says which
        _fail(f"{type(exc).__name__}: {exc}", EXIT_ERROR, path, started)
        return
    from ..ledger import TileEntry, tile_counts

    counts = tile_counts(TileEntry.from_json(t) for t in manifest["tiles"])
    record: dict[str, Any] = {
        "exitCode": 0,
        "outcome": manifest["outcome"],
        "manifest": loc.describe(finalize_mod.MANIFEST),
        "digest": plan.digest,
        "tiles": {"planned": len(plan.tiles), **counts},
        "seconds": round(time.monotonic() - started, 3),
    }
    try:
        text = write_result_json(record, path)
    except OSError as exc:
        _fail(f"cannot write the result to {path}: {exc}", EXIT_ERROR, None, started)
        return
    click.echo(text)
