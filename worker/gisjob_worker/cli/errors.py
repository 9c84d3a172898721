"""Turn errors into one line on stderr and the right exit code.

At the CLI edge every error is one line ``gisjob: error: ...`` and a non-zero exit: input and
spec errors (:class:`~gisjob_worker.errors.GisJobError`) with their own exit code, usage errors
(a bad flag value, a missing argument) with 2, and anything unexpected with 1, its type named.
Only ``gisjob --debug`` lets an unexpected exception through with its traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import IO, Any, NoReturn

import click

from ..errors import EXIT_ERROR, GisJobError, one_line

DEBUG_KEY = "gisjob.debug"


def fail(message: str, code: int) -> NoReturn:
    click.echo(f"gisjob: error: {one_line(message)}", err=True)
    sys.exit(code)


def debug_enabled() -> bool:
    """``gisjob --debug`` was given (tracebacks instead of one-line errors)."""
    ctx = click.get_current_context(silent=True)
    return bool(ctx is not None and ctx.find_root().meta.get(DEBUG_KEY))


def unexpected(exc: BaseException) -> str:
    """One line for an exception nobody anticipated: its type, its message, how to see more."""
    text = one_line(exc)
    what = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return f"{what} (gisjob --debug ... shows the traceback)"


def _show(exc: click.ClickException, file: IO[Any] | None) -> None:
    ctx: click.Context | None = getattr(exc, "ctx", None)
    hint = ""
    if ctx is not None and ctx.command.get_help_option(ctx) is not None:
        hint = f" (see '{ctx.command_path} --help')"
    click.echo(f"gisjob: error: {one_line(exc.format_message())}{hint}", err=True, file=file)


class OneLineUsageError(click.UsageError):
    """A usage error (bad flag value, missing argument) as one line, exit 2."""

    def show(self, file: IO[Any] | None = None) -> None:
        _show(self, file)


class OneLineClickError(click.ClickException):
    """Any other click error (exit 1) as one line."""

    def show(self, file: IO[Any] | None = None) -> None:
        _show(self, file)


def _one_line_click_errors(call: Callable[[], Any]) -> Any:
    try:
        return call()
    except click.exceptions.NoArgsIsHelpError:
        raise  # ``gisjob`` alone prints the help
    except (OneLineUsageError, OneLineClickError):
        raise
    except click.UsageError as exc:
        raise OneLineUsageError(exc.format_message(), exc.ctx) from None
    except click.ClickException as exc:
        raise OneLineClickError(exc.format_message()) from None


class OneLineErrorGroup(click.Group):
    """A group whose usage errors (its own and its commands') are one line, exit 2, and whose
    commands' unexpected exceptions are one line, exit 1, unless ``--debug`` was given."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        parse = super().parse_args
        result: list[str] = _one_line_click_errors(lambda: parse(ctx, args))
        return result

    def invoke(self, ctx: click.Context) -> Any:
        try:
            invoke = super().invoke
            return _one_line_click_errors(lambda: invoke(ctx))
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except GisJobError as exc:
            fail(str(exc), exc.exit_code)
        except Exception as exc:
            if ctx.meta.get(DEBUG_KEY):
                raise
            fail(unexpected(exc), EXIT_ERROR)
