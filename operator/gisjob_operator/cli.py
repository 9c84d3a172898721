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
@click.option(
    "--allowed-image",
    "allowed_images",
    multiple=True,
    help="Image a GisJob's pods may run (repeatable): an exact name, or a prefix ending in "
    "'/' (registry or path) or ':' (any tag or digest of a repository). "
    "Default: $GISJOB_ALLOWED_IMAGES, else gisjob:",
)
@click.option(
    "--allowed-volume-type",
    "allowed_volume_types",
    multiple=True,
    help="Volume type spec.worker.volumes may use (repeatable). Default: "
    "$GISJOB_ALLOWED_VOLUME_TYPES, else persistentVolumeClaim, configMap, emptyDir, "
    "ephemeral, csi.",
)
@click.option(
    "--allowed-service-account",
    "allowed_service_accounts",
    multiple=True,
    help="Service account spec.worker.serviceAccountName may name besides the namespace "
    "default (repeatable). Default: $GISJOB_ALLOWED_SERVICE_ACCOUNTS, else none.",
)
@click.option(
    "--storage-secret",
    default=None,
    help="The one Secret a GisJob may reference (env secretKeyRef, secret volume, CSI "
    "nodePublishSecretRef). Default: $GISJOB_STORAGE_SECRET, else none.",
)
@click.option("--verbose", "-v", is_flag=True)
def run(
    namespaces: tuple[str, ...],
    metrics_port: int,
    liveness_port: int,
    status_interval: float,
    keep_failed_pods: int,
    backoff_base: float,
    allowed_images: tuple[str, ...],
    allowed_volume_types: tuple[str, ...],
    allowed_service_accounts: tuple[str, ...],
    storage_secret: str | None,
    verbose: bool,
) -> None:
    """Run the operator (one replica; see the README on restarts)."""
    import logging

    import kopf

    from . import handlers  # noqa: F401  (registers the handlers)
    from .settings import POLICY_ENV, pod_policy_from_env

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
    # the pod policy's flags override its environment only when given
    for setting, given in (
        ("allowed_images", allowed_images),
        ("allowed_volume_types", allowed_volume_types),
        ("allowed_service_accounts", allowed_service_accounts),
    ):
        if given:
            os.environ[POLICY_ENV[setting]] = ",".join(given)
    if storage_secret is not None:
        os.environ[POLICY_ENV["storage_secret"]] = storage_secret
    try:
        pod_policy_from_env()  # refuse a bad policy now, not at the first job
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
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
