"""Error types and the exit codes they map to (DESIGN §4)."""

from __future__ import annotations

EXIT_OK = 0
EXIT_INPUT = 2  # permanent input/spec error: never retried
EXIT_MEMORY = 3  # memory ceiling reached: the memory strategy applies
EXIT_ERROR = 1  # anything else: retryable
EXIT_INTERRUPTED = 130


class GisJobError(Exception):
    """Base class: carries the exit code and the result-record outcome."""

    exit_code = EXIT_ERROR
    outcome = "error"


class InputError(GisJobError):
    """Permanent error in the job file, its parameters or its input data."""

    exit_code = EXIT_INPUT
    outcome = "input"


class SpecError(InputError):
    """The GisJob document is invalid; the message names file and field."""


class MemoryCeilingError(GisJobError):
    """The next chunk would cross the worker's soft memory ceiling."""

    exit_code = EXIT_MEMORY
    outcome = "memory"

    def __init__(self, message: str, *, needed: int = 0, ceiling: int = 0) -> None:
        super().__init__(message)
        self.needed = needed
        self.ceiling = ceiling


def one_line(text: object) -> str:
    """``text`` with every run of whitespace (newlines included) as one space."""
    return " ".join(str(text).split())
