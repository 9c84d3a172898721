"""``gisjob run JOB.yaml``: the whole job on this machine, within a memory allowance."""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ..errors import EXIT_ERROR, EXIT_INPUT, EXIT_INTERRUPTED, InputError
from ..storage import is_local

if TYPE_CHECKING:
    from ..plan import Plan

PORT_MAX = 65535
SYSTEM_TREES = (Path("/proc"), Path("/sys"))
SHOWN_RESULTS = 10


def _workers(value: str) -> str:
    if value != "auto" and (not value.isdigit() or int(value) < 1):
        raise click.BadParameter(f"must be a positive number or 'auto' (got {value!r})")
    return value


def check_ports(base: int | None, workers: int) -> None:
    """Worker slot k serves metrics on ``base + k``: every one of them must be a port."""
    if base is None:
        return
    last = base + workers - 1
    if last > PORT_MAX:
        raise InputError(
            f"--metrics-port-base: {base} with {workers} worker(s) needs ports up to {last}, "
            f"past {PORT_MAX}: use a base of at most {PORT_MAX - workers + 1}"
        )


def check_writable_dir(path: str | Path, what: str) -> None:
    """Refuse, before anything runs, a folder this run could not write to: under /proc or
    /sys, an existing file, or a place where creating a file fails (read-only file system,
    permissions). The probe creates and removes a uniquely named file in the folder, or in
    its nearest existing parent when the folder is still to be created (so nothing is left
    behind when the run stops before its first tile)."""
    text = str(path)
    if not is_local(text):
        return  # not a local folder: the output layer reports its own errors
    target = Path(os.path.abspath(text))
    resolved = target.resolve()
    for tree in SYSTEM_TREES:
        if resolved == tree or tree in resolved.parents:
            raise InputError(f"{what}: {text} is under {tree}: not a place for output")
    existing = resolved
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        if existing == resolved:
            raise InputError(f"{what}: {text} is an existing file, not a folder")
        raise InputError(f"{what}: {text}: {existing} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".gisjob-probe-", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise InputError(f"{what}: cannot write to {text}: {exc.strerror or exc}") from None


def _inside(out: str | Path, name: str) -> str:
    return f"{str(out).rstrip('/')}/{name}"  # a folder or an s3:// prefix alike


def result_lines(manifest: dict[str, Any], plan: Plan, out: str | Path) -> list[str]:
    """Where the result is: each mosaic VRT (with its input when there are several), or the
    dataset folder of a vector job."""
    lines: list[str] = []
    mosaics: list[str] = list(manifest.get("mosaics") or [])
    inputs = {f.index: f.uri for f in plan.files}
    for name in mosaics[:SHOWN_RESULTS]:
        m = re.fullmatch(r"mosaic-i(\d+)\.vrt", name)
        source = inputs.get(int(m.group(1))) if m else None
        lines.append(f"mosaic: {_inside(out, name)}" + (f"  (from {source})" if source else ""))
    if len(mosaics) > SHOWN_RESULTS:
        lines.append(
            f"mosaic: ... {len(mosaics) - SHOWN_RESULTS} more (all listed in manifest.json)"
        )
    dataset = manifest.get("dataset")
    if dataset:
        fmt = manifest.get("outputFormat") or plan.output_format
        kind = "GeoParquet dataset" if fmt == "GeoParquet" else f"{fmt} parts"
        lines.append(f"dataset: {_inside(out, dataset)}  ({kind})")
    return lines


@click.command()
@click.argument("job_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--workers",
    default="auto",
    show_default=True,
    callback=lambda ctx, p, v: _workers(v),
    help="Workers at once: a number, or auto (spec.parallelism, at most one per CPU).",
)
@click.option(
    "--memory",
    "memory_text",
    help="Memory allowance for all workers together: 8Gi or 8GiB (8·2^30 bytes), 8G or 8GB "
    "(8·10^9), 8192Mi; lower-case units other than k are refused as ambiguous (default: 80% "
    "of available memory, or of the cgroup limit when running inside one).",
)
@click.option(
    "--resume/--no-resume",
    default=True,
    show_default=True,
    help="Skip tiles already complete for the same plan.",
)
@click.option("--fail-fast", is_flag=True, help="Stop launching after the first failed tile.")
@click.option(
    "--report",
    "report_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write memory.png (memory over time per worker) and summary.json here.",
)
@click.option("--no-cgroups", is_flag=True, help="Do not put workers in their own cgroups.")
@click.option(
    "--no-fork-server",
    is_flag=True,
    help="Start every worker as a fresh interpreter instead of forking it from a server "
    "that imported the worker stack once (slower: ~0.5 s more per tile).",
)
@click.option(
    "--metrics-port-base",
    type=click.IntRange(1, PORT_MAX),
    help="Workers serve Prometheus metrics on BASE, BASE+1, ... (one port per "
    "worker slot) while they run.",
)
@click.option(
    "--metrics-linger",
    type=click.FloatRange(0.0, 600.0),
    default=0.0,
    show_default=True,
    help="With --metrics-port-base: a finished worker keeps serving until scraped once more, "
    "at most this many seconds (set it to the scrape interval).",
)
def run(
    job_file: Path,
    workers: str,
    memory_text: str | None,
    resume: bool,
    fail_fast: bool,
    report_dir: Path | None,
    no_cgroups: bool,
    no_fork_server: bool,
    metrics_port_base: int | None,
    metrics_linger: float,
) -> None:
    """Plan JOB_FILE and run every tile locally as memory-capped worker processes."""
    # on one machine the user owns the file system: no output-location claims or checks
    # (gisjob_worker.ownership), not even by workers that would inherit a pod's identity
    os.environ.pop("GISJOB_OWNER", None)
    if workers != "auto":
        check_ports(metrics_port_base, int(workers))
    from ..forkserver import ForkServer  # light: no GDAL, no NumPy

    # started first, the server imports the worker stack while this process imports, checks
    # the job and plans (on an invalid job it fails too, quietly, and is closed below)
    server = None if no_fork_server else ForkServer(job_file.resolve(), wait=False)
    with contextlib.ExitStack() as cleanup:
        if server is not None:
            cleanup.callback(server.close)  # normally closed by the run already
        from .. import gdalenv, logs
        from ..allowance import default_allowance, default_workers
        from ..quantity import parse_memory
        from ..spec import load_job

        logs.configure()
        job = load_job(job_file)
        n = default_workers(job.spec.parallelism) if workers == "auto" else int(workers)
        check_ports(metrics_port_base, n)
        if memory_text:
            try:
                allowance = parse_memory(memory_text)
            except ValueError as exc:
                raise InputError(f"--memory: {exc}") from None
            if allowance <= 0:
                raise InputError(f"--memory: must be greater than zero (got {memory_text})")
        else:
            allowance = default_allowance()
        check_writable_dir(job.spec.output.uri, f"{job.source}: spec.output.uri")
        if report_dir is not None:
            check_writable_dir(report_dir, "--report")
        gdalenv.configure_for(job)
        from ..executor import LocalExecutor, RunOptions
        from ..planner import build_plan
        from ..progress import make_progress, print_summary, summarize

        plan = build_plan(job)
        options = RunOptions(
            job_file=job_file.resolve(),
            workers=n,
            allowance=allowance,
            resume=resume,
            fail_fast=fail_fast,
            use_cgroups=not no_cgroups,
            fork_server=not no_fork_server,
            metrics_port_base=metrics_port_base,
            metrics_linger=metrics_linger,
        )
        ui = make_progress(job.name, len(plan.tiles))
        executor = LocalExecutor(
            job, plan, options, on_update=ui.update, on_event=ui.event, fork_server=server
        )
        try:
            result = executor.run()
        finally:
            ui.close()
        summary = summarize(result)
        print_summary(summary)
        if report_dir is not None:
            from ..report import reported_peaks, write_report

            written = write_report(
                report_dir,
                summary,
                result.samples,
                peaks=reported_peaks(result.runs),
                allowance=allowance,
            )
            for p in written:
                click.echo(f"report: {p}", err=True)
        out = job.spec.output.uri
        for line in result_lines(result.manifest, plan, out):
            click.echo(line, err=True)
        click.echo(f"manifest: {_inside(out, 'manifest.json')}", err=True)
        if result.interrupted:
            click.echo(
                "gisjob: interrupted: manifest written with the tiles that finished", err=True
            )
            sys.exit(EXIT_INTERRUPTED)
        if not result.succeeded:
            line, code = failure_line(result.manifest)
            click.echo(line, err=True)
            sys.exit(code)


def failure_line(manifest: dict[str, Any]) -> tuple[str, int]:
    """The run's last line when tiles failed — the first failed tile with its reason, the
    others by id — and the exit code: 2 when every failed tile failed on its input (the job
    must change), else 1."""
    failed = list(manifest.get("failedTiles") or [])
    tiles = {t["id"]: t for t in manifest.get("tiles") or []}
    if not failed:
        return "gisjob: error: the run did not complete", EXIT_ERROR
    first = tiles.get(failed[0], {})
    reason = " ".join(str(first.get("error") or "no reason recorded").split())
    if len(reason) > 400:
        reason = reason[:397] + "..."
    more = ""
    if len(failed) > 1:
        shown = ", ".join(failed[1:10]) + (" ..." if len(failed) > 10 else "")
        more = f" (and {len(failed) - 1} more: {shown})"
    inputs = [
        (tiles.get(i, {}).get("attempts") or [{}])[-1].get("exitCode") == EXIT_INPUT for i in failed
    ]
    code = EXIT_INPUT if all(inputs) else EXIT_ERROR
    return f"gisjob: error: {len(failed)} tile(s) failed: {failed[0]}: {reason}{more}", code
