"""``gisjob plan JOB.yaml``: tiles, per-tile estimate and memory request, totals."""

from __future__ import annotations

import json

import click

from ..quantity import format_bytes
from .errors import one_line_errors

SHOWN = 20


@click.command()
@click.argument("job_file", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@one_line_errors
def plan(job_file: str, as_json: bool) -> None:
    """Plan JOB_FILE from metadata only and show what each tile will cost."""
    from .. import gdalenv
    from ..planner import build_plan
    from ..spec import load_job

    job = load_job(job_file)
    res = job.spec.resources
    gdalenv.configure(int(res.gdal_cache_max), max(1, int(res.cpu_count)))
    p = build_plan(job)
    if as_json:
        click.echo(json.dumps(p.to_json()))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{p.job}: {p.operation} ({p.kind}), plan {p.digest}")
    table.add_column("tile")
    table.add_column("size", justify="right")
    table.add_column("chunks", justify="right")
    table.add_column("estimate", justify="right")
    table.add_column("request", justify="right")
    for t in p.tiles[:SHOWN]:
        if t.window is not None:
            size = f"{t.window.width}x{t.window.height}"
        else:
            assert t.fids is not None
            size = f"{t.fids.features} features"
        table.add_row(
            t.id,
            size,
            str(t.chunks),
            format_bytes(t.estimated_peak_bytes),
            format_bytes(t.memory_request_bytes),
        )
    if len(p.tiles) > SHOWN:
        table.add_row(f"... {len(p.tiles) - SHOWN} more", "", "", "", "")
    console = Console()
    console.print(table)
    console.print(
        f"tiles: {len(p.tiles)}   largest estimate: {format_bytes(p.max_estimate)}   "
        f"largest request: {format_bytes(p.max_request)} "
        f"(headroom {p.sizing.headroom:.0%})   sum of requests: "
        f"{format_bytes(sum(t.memory_request_bytes for t in p.tiles))}   "
        f"baseline: {format_bytes(p.sizing.baseline_bytes)}   "
        f"GDAL cache: {format_bytes(p.sizing.cache_bytes)}"
    )
