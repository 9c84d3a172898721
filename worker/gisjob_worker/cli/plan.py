"""``gisjob plan JOB.yaml...``: tiles, per-tile estimate and memory request, totals.

A plan of thousands of tiles prints a summary (counts, the distribution of estimates and
requests, totals) and a sample of its tiles (the first and the last few); ``--all`` prints
every row. The summary lines are short enough not to wrap on an 80-column terminal.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from typing import TYPE_CHECKING

import click

from ..quantity import format_bytes, parse_memory

if TYPE_CHECKING:
    from rich.console import Console

    from ..plan import Plan, Tile

HEAD = 10  # tiles shown from the start of a long plan
TAIL = 5  # ... and from its end


def sample_tiles(tiles: Sequence[Tile], show_all: bool) -> tuple[list[Tile], int]:
    """The tiles to print and how many are left out between the head and the tail."""
    if show_all or len(tiles) <= HEAD + TAIL:
        return list(tiles), 0
    return [*tiles[:HEAD], *tiles[-TAIL:]], len(tiles) - HEAD - TAIL


def _spread(values: list[int]) -> str:
    if not values:
        return "-"
    return (
        f"min {format_bytes(min(values))}  median {format_bytes(int(statistics.median(values)))}"
        f"  max {format_bytes(max(values))}"
    )


def summary_lines(p: Plan, shown: int) -> list[str]:
    """The plan's numbers as short lines (each well under 80 columns)."""
    tiles = p.tiles
    files = len(p.files)
    estimates = [t.estimated_peak_bytes for t in tiles]
    requests = [t.memory_request_bytes for t in tiles]
    lines = [
        f"tiles: {len(tiles):,}" + (f" from {files:,} input files" if files > 1 else ""),
        f"estimate: {_spread(estimates)}",
        f"request:  {_spread(requests)}",
        f"sum of requests: {format_bytes(sum(requests))}",
        f"headroom: {p.sizing.headroom:.0%}   baseline: {format_bytes(p.sizing.baseline_bytes)}"
        f"   GDAL cache: {format_bytes(p.sizing.cache_bytes)}",
    ]
    if shown < len(tiles):
        lines.append(
            f"shown: the first {HEAD} and last {TAIL} of {len(tiles):,} tiles "
            "(--all shows every one)"
        )
    return lines


def _tile_size(t: Tile) -> str:
    if t.window is not None:
        return f"{t.window.width}x{t.window.height}"
    assert t.fids is not None
    return f"{t.fids.features:,} features"


def print_plan(console: Console, p: Plan, show_all: bool) -> None:
    from rich.table import Table

    rows, left_out = sample_tiles(p.tiles, show_all)
    table = Table(title=f"{p.job}: {p.operation} ({p.kind}), plan {p.digest}")
    table.add_column("tile", no_wrap=True)
    table.add_column("size", justify="right", no_wrap=True)
    table.add_column("chunks", justify="right")
    table.add_column("estimate", justify="right", no_wrap=True)
    table.add_column("request", justify="right", no_wrap=True)
    for i, t in enumerate(rows):
        if left_out and i == HEAD:
            table.add_row(f"... {left_out:,} more", "", "", "", "")
        table.add_row(
            t.id,
            _tile_size(t),
            str(t.chunks),
            format_bytes(t.estimated_peak_bytes),
            format_bytes(t.memory_request_bytes),
        )
    console.print(table)
    for line in summary_lines(p, len(rows)):
        console.print(line, highlight=False, markup=False)


@click.command()
@click.argument("job_files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print the plan as JSON (a list of plans for several job files).",
)
@click.option(
    "--all",
    "show_all",
    is_flag=True,
    help="Print every tile (default: a summary and the first and last few of a long plan).",
)
@click.option(
    "--node-memory",
    "node_memory",
    help="Warn about tiles whose memory request is above this (a node's allocatable memory, "
    "e.g. 16Gi): no node could hold their pods.",
)
def plan(
    job_files: tuple[str, ...], as_json: bool, show_all: bool, node_memory: str | None
) -> None:
    """Plan each JOB_FILE from metadata only and show what its tiles will cost."""
    from .. import gdalenv
    from ..planner import build_plan
    from ..spec import load_job

    node = None
    if node_memory is not None:
        try:
            node = parse_memory(node_memory)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--node-memory") from None
    jobs = [load_job(f) for f in job_files]  # every file checked before any is planned
    gdalenv.configure_for(jobs[0])
    plans = [build_plan(job) for job in jobs]
    for line in request_warnings(plans, node):
        click.echo(line, err=True)
    if as_json:
        docs = [p.to_json() for p in plans]
        click.echo(json.dumps(docs[0] if len(docs) == 1 else docs))
        return
    from rich.console import Console

    console = Console()
    for i, p in enumerate(plans):
        if i:
            console.print()
        print_plan(console, p, show_all)
    if len(plans) > 1:
        total = sum(len(p.tiles) for p in plans)
        requests = sum(t.memory_request_bytes for p in plans for t in p.tiles)
        console.print()
        console.print(
            f"{len(plans)} jobs: {total:,} tiles, sum of requests {format_bytes(requests)}",
            highlight=False,
            markup=False,
        )


ABSURD_REQUEST = 1024**4  # 1 TiB for one tile: no machine worker pods land on is that big


def request_warnings(plans: list[Plan], node: int | None) -> list[str]:
    """Warnings for requests no node could hold (above ``node``) or no machine has (1 TiB)."""
    out = []
    for p in plans:
        limit = node if node is not None else ABSURD_REQUEST
        big = [t for t in p.tiles if t.memory_request_bytes > limit]
        if not big:
            continue
        worst = max(big, key=lambda t: t.memory_request_bytes)
        where = (
            f"--node-memory {format_bytes(node)}" if node is not None else "any machine's memory"
        )
        out.append(
            f"gisjob: warning: {p.job}: {len(big)} of {len(p.tiles)} tiles request more than "
            f"{where} (largest: {worst.id}, {format_bytes(worst.memory_request_bytes)}); their "
            "pods would never be scheduled — lower spec.resources.memory or spec.tiling"
        )
    return out
