"""``gisjob-operator``: print the CRD, or run the operator."""

from __future__ import annotations

import os

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """The gisjob Kubernetes operator."""


@cli.command()
def crd() -> None:
    """Print the GisJob CustomResourceDefinition generated from the spec model."""
    from .crd import crd_yaml

    click.echo(crd_yaml(), nl=False)


@cli.command()
@click.option(
    "--namespace",
    "-n",
    "namespaces",
    multiple=True,
    help="Watch only these namespaces (repeatable); default: all namespaces.",
)
@click.option("--metrics-port", type=int, default=9090, show_default=True)
@click.option(
    "--liveness-port",
    type=int,
    default=8080,
    show_default=True,
    help="Serves /healthz for liveness and readiness probes.",
)
@click.option(
    "--status-interval",
    type=float,
    default=2.0,
    show_default=True,
    help="Seconds between status writes of one job (writes are coalesced).",
)
@click.option("--keep-failed-pods", type=int, default=3, show_default=True)
@click.option(
    "--backoff-base",
    type=float,
    default=10.0,
    show_default=True,
    help="Seconds before the first retry of a failed tile; doubles per retry.",
)
@click.option("--verbose", "-v", is_flag=True)
def run(
    namespaces: tuple[str, ...],
    metrics_port: int,
    liveness_port: int,
    status_interval: float,
    keep_failed_pods: int,
    backoff_base: float,
    verbose: bool,
) -> None:
    """Run the operator (one replica; see the README on restarts)."""
    import logging

    import kopf

    from . import handlers  # noqa: F401  (registers the handlers)

    os.environ.update(
        {
            "GISJOB_NAMESPACES": ",".join(namespaces),
            "GISJOB_METRICS_PORT": str(metrics_port),
            "GISJOB_LIVENESS_PORT": str(liveness_port),
            "GISJOB_STATUS_INTERVAL": str(status_interval),
            "GISJOB_KEEP_FAILED_PODS": str(keep_failed_pods),
            "GISJOB_BACKOFF_BASE": str(backoff_base),
        }
    )
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    kopf.run(
        standalone=True,
        clusterwide=not namespaces,
        namespaces=list(namespaces),
        liveness_endpoint=f"http://0.0.0.0:{liveness_port}/healthz",
    )


def main() -> None:
    cli()
