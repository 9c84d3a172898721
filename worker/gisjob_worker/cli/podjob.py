"""What the commands that run in pods (planner, worker, finalizer) share: where the job
comes from, where the one-line result goes, and their common options."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from ..attempt import default_result_path, load_job

F = TypeVar("F", bound=Callable[..., Any])
MAX_RESULT_BYTES = 4096  # a container's termination message

__all__ = ["default_result_path", "job_option", "load_job", "result_option", "write_result_json"]


def job_option(fn: F) -> F:
    """``--job FILE`` (default: ``$GISJOB_JOB``, then ``$GISJOB_JOB_FILE`` or the mount)."""
    return click.option(
        "--job",
        "job_file",
        type=click.Path(dir_okay=False),
        help="Job file (default: $GISJOB_JOB, then $GISJOB_JOB_FILE or /etc/gisjob/job.yaml).",
    )(fn)


def result_option(fn: F) -> F:
    """``--result PATH`` (default: ``$GISJOB_RESULT_PATH``, in pods the termination log)."""
    return click.option(
        "--result",
        "result_path",
        help="Result record path (default: $GISJOB_RESULT_PATH, in pods /dev/termination-log).",
    )(fn)


def write_result_json(data: dict[str, Any], path: str | None) -> str:
    """Write a result object (at most 4 KiB; the free-text ``error`` is shortened first)."""
    text = json.dumps(data, separators=(",", ":"))
    error = data.get("error")
    if len(text.encode()) > MAX_RESULT_BYTES and isinstance(error, str):
        over = len(text.encode()) - MAX_RESULT_BYTES
        data = {**data, "error": error[: max(0, len(error) - over - 8)] + "..."}
        text = json.dumps(data, separators=(",", ":"))
    if path:
        Path(path).write_text(text)
    return text
