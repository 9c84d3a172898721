"""``gisjob``: plan, run and inspect memory-bounded geospatial batch jobs."""

from __future__ import annotations

import click

from .. import __version__
from .demo import demo
from .operations import operations
from .plan import plan
from .run import run
from .worker import worker


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="gisjob")
def cli() -> None:
    """Memory-bounded geospatial batch jobs: one GisJob runs here or on Kubernetes."""


cli.add_command(plan)
cli.add_command(run)
cli.add_command(worker)
cli.add_command(demo)
cli.add_command(operations)


def main() -> None:
    cli()
