"""``gisjob operations``: the registered operations and their parameters."""

from __future__ import annotations

import click


@click.command()
def operations() -> None:
    """List registered operations (built-ins and the gisjob.operations entry points)."""
    from ..registry import registry

    for name, op in sorted(registry().items()):
        fields = ", ".join(op.params_model.model_fields)
        click.echo(f"{name:12} {op.kind:7} params: {fields}")
