"""Turn errors into one line on stderr and the right exit code."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from ..errors import GisJobError

F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str, code: int) -> None:
    click.echo(f"gisjob: error: {message}", err=True)
    sys.exit(code)


def one_line_errors(fn: F) -> F:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except GisJobError as exc:
            fail(" ".join(str(exc).split()), exc.exit_code)
        return None

    return wrapper  # type: ignore[return-value]
