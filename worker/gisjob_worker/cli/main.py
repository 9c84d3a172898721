"""``gisjob``: plan, run and inspect memory-bounded geospatial batch jobs."""

from __future__ import annotations

import click

from .. import __version__
from .demo import demo
from .errors import DEBUG_KEY, OneLineErrorGroup
from .finalize import finalize
from .operations import operations
from .plan import plan
from .planner import planner
from .run import run
from .worker import worker


@click.group(cls=OneLineErrorGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="gisjob")
@click.option(
    "--debug",
    is_flag=True,
    help="Show the traceback of an unexpected error (otherwise: one line).",
)
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Memory-bounded geospatial batch jobs: one GisJob runs here or on Kubernetes."""
    ctx.meta[DEBUG_KEY] = debug


cli.add_command(plan)
cli.add_command(planner)
cli.add_command(run)
cli.add_command(worker)
cli.add_command(demo)
cli.add_command(finalize)
cli.add_command(operations)


def main() -> None:
    cli()
