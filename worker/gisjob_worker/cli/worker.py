"""``gisjob worker``: run one tile, record its outcome in the ledger, write its result."""

from __future__ import annotations

import os
import sys

import click

from ..errors import EXIT_INPUT
from ..quantity import parse_quantity
from .errors import fail
from .podjob import job_option, result_option


@click.command()
@job_option
@click.option("--tile", envvar="GISJOB_TILE", required=True, help="Tile id, e.g. r0003c0007.")
@result_option
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
@click.option(
    "--attempt",
    type=click.IntRange(0),
    default=0,
    envvar="GISJOB_ATTEMPT",
    show_default=True,
    help="This tile's attempt number (its ledger record's key).",
)
@click.option(
    "--strategy",
    type=click.Choice(["initial", "retry", "disrupted", "shrinkChunks", "grow"]),
    default="initial",
    envvar="GISJOB_STRATEGY",
    show_default=True,
    help="Why this attempt runs (initial, retry, disrupted, shrinkChunks, grow), as recorded.",
)
@click.option(
    "--history",
    envvar="GISJOB_HISTORY",
    hidden=True,
    help="Earlier attempts of this tile as the operator saw them (compact JSON): those killed "
    "before they recorded themselves are recorded now.",
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
    attempt: int,
    strategy: str,
    history: str | None,
    log_level: str,
) -> None:
    """Process one tile within its memory budget, record the outcome in the output
    location's ledger; exit 0, 2 (input), 3 (memory) or other (retryable)."""
    from .. import attempt as attempt_mod
    from ..result import ResultRecord

    try:
        budget = parse_quantity(memory_text) if memory_text else None
    except ValueError as exc:
        message = f"--memory: {exc}"
        attempt_mod.finish(
            ResultRecord(
                tile=tile, outcome="input", exitCode=EXIT_INPUT, peakRssBytes=0, error=message
            ),
            result_path or attempt_mod.default_result_path(),
        )
        fail(message, EXIT_INPUT)
    request = attempt_mod.AttemptRequest(
        tile=tile,
        job_file=job_file,
        memory=budget,
        chunk_scale=chunk_scale,
        attempt=attempt,
        strategy=strategy,
        result_path=result_path,
        metrics_port=metrics_port,
        metrics_linger=metrics_linger,
        pushgateway=pushgateway,
        pod=os.environ.get("GISJOB_POD_NAME"),
        history=history,
        log_level=log_level,
    )
    code = attempt_mod.main(request)
    # the tile is committed, recorded and reported: skip the interpreter's teardown (0.1-0.2
    # s of freeing NumPy/GDAL/pyarrow state that the exit frees anyway)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
