"""``gisjob worker``: run one tile and write its result record."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from ..errors import EXIT_INPUT, SpecError
from ..quantity import parse_quantity
from ..result import ResultRecord
from .errors import fail

MOUNTED_JOB = "/etc/gisjob/job.yaml"
TERMINATION_LOG = "/dev/termination-log"


def _load(job_file: str | None) -> object:
    from ..spec import load_job, load_job_text

    if job_file:
        return load_job(job_file)
    text = os.environ.get("GISJOB_JOB")
    if text:
        return load_job_text(text, "$GISJOB_JOB")
    mounted = os.environ.get("GISJOB_JOB_FILE", MOUNTED_JOB)
    if Path(mounted).is_file():
        return load_job(mounted)
    raise SpecError("no job: give --job FILE, or set GISJOB_JOB or GISJOB_JOB_FILE")


def _default_result_path() -> str | None:
    env = os.environ.get("GISJOB_RESULT_PATH")
    if env:
        return env
    return TERMINATION_LOG if os.access(TERMINATION_LOG, os.W_OK) else None


def _finish(record: ResultRecord, path: str | None) -> None:
    """Write the record to the result path (the pod's termination message) and stdout."""
    from ..guard import peak_rss_bytes
    from ..result import write_result

    record.peakRssBytes = record.peakRssBytes or peak_rss_bytes()
    if path:
        write_result(record, path)
    click.echo(record.to_json())


@click.command()
@click.option(
    "--job",
    "job_file",
    type=click.Path(dir_okay=False),
    help="Job file (default: $GISJOB_JOB, then $GISJOB_JOB_FILE or /etc/gisjob/job.yaml).",
)
@click.option("--tile", envvar="GISJOB_TILE", required=True, help="Tile id, e.g. r0003c0007.")
@click.option(
    "--result",
    "result_path",
    help="Result record path (default: $GISJOB_RESULT_PATH, in pods /dev/termination-log).",
)
@click.option(
    "--metrics-port",
    type=int,
    envvar="GISJOB_METRICS_PORT",
    help="Serve Prometheus metrics on this port while running.",
)
@click.option(
    "--metrics-linger",
    type=click.FloatRange(0.0, 600.0),
    default=0.0,
    envvar="GISJOB_METRICS_LINGER",
    show_default=True,
    help="After the tile, keep serving metrics until scraped once more, at most this many "
    "seconds (so the final peak reaches Prometheus).",
)
@click.option("--pushgateway", envvar="GISJOB_PUSHGATEWAY", help="Push metrics here at exit.")
@click.option(
    "--memory",
    "memory_text",
    envvar="GISJOB_MEMORY",
    help="Memory budget (quantity); default: the tile's planned request.",
)
@click.option(
    "--chunk-scale",
    type=click.FloatRange(0.0, 1.0, min_open=True),
    default=1.0,
    envvar="GISJOB_CHUNK_SCALE",
    show_default=True,
    help="Shrink chunks by this factor.",
)
@click.option("--log-level", default="info", show_default=True)
def worker(
    job_file: str | None,
    tile: str,
    result_path: str | None,
    metrics_port: int | None,
    metrics_linger: float,
    pushgateway: str | None,
    memory_text: str | None,
    chunk_scale: float,
    log_level: str,
) -> None:
    """Process one tile within its memory budget; exit 0, 2 (input), 3 (memory) or other."""
    from .. import logs
    from ..guard import tune_allocator
    from ..result import ResultRecord
    from ..spec import GisJob

    tune_allocator()
    logs.configure(log_level)
    path = result_path or _default_result_path()
    try:
        job = _load(job_file)
        assert isinstance(job, GisJob)
        budget = parse_quantity(memory_text) if memory_text else None
    except (SpecError, ValueError) as exc:
        message = str(exc) if isinstance(exc, SpecError) else f"--memory: {exc}"
        _finish(
            ResultRecord(
                tile=tile, outcome="input", exitCode=EXIT_INPUT, peakRssBytes=0, error=message
            ),
            path,
        )
        fail(message, EXIT_INPUT)
        return
    from .. import gdalenv

    res = job.spec.resources
    gdalenv.configure(int(res.gdal_cache_max), max(1, int(res.cpu_count)))
    from ..registry import get_operation

    if get_operation(job.spec.operation.name).kind == "vector":
        gdalenv.import_pyogrio()  # this process reads Arrow only: skip geopandas/pandas
    from prometheus_client import CollectorRegistry

    from ..metrics import MetricsServer, WorkerMetrics, push
    from ..worker import WorkerOptions, run_tile

    registry = CollectorRegistry()
    metrics = WorkerMetrics(registry, job.name, tile)
    server: MetricsServer | None = None
    if metrics_port is not None:
        try:
            server = MetricsServer(registry, metrics_port)
        except OSError as exc:  # metrics must never fail a tile
            click.echo(f"gisjob: warning: metrics port {metrics_port}: {exc}", err=True)
    record = run_tile(
        job, WorkerOptions(tile=tile, memory=budget, chunk_scale=chunk_scale, metrics=metrics)
    )
    _finish(record, path)
    if server is not None and metrics_linger > 0:
        server.scrapes.wait_next(metrics_linger)
    if pushgateway:
        try:
            push(registry, pushgateway, job.name, tile)
        except OSError as exc:
            click.echo(f"gisjob: warning: metrics push to {pushgateway} failed: {exc}", err=True)
    if record.exitCode != 0:
        click.echo(f"gisjob: error: {record.error}", err=True)
    # the tile is committed and reported: skip the interpreter's teardown (0.1-0.2 s of
    # freeing NumPy/GDAL/pyarrow state that the exit frees anyway)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(record.exitCode)
