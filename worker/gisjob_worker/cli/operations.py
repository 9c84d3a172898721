"""``gisjob operations``: the registered operations and their parameters."""

from __future__ import annotations

import click
from pydantic import BaseModel


def param_names(model: type[BaseModel]) -> list[str]:
    """The parameter names as a job file spells them: the model's aliases (``areaColumn``),
    the field name where there is none."""
    names: list[str] = []
    for name, field in model.model_fields.items():
        spelled = field.validation_alias if isinstance(field.validation_alias, str) else None
        names.append(spelled or field.alias or name)
    return names


@click.command()
def operations() -> None:
    """List registered operations (built-ins and the gisjob.operations entry points)."""
    from ..registry import registry

    for name, op in sorted(registry().items()):
        fields = ", ".join(param_names(op.params_model))
        click.echo(f"{name:12} {op.kind:7} params: {fields}")
