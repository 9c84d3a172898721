"""Where a command running in a pod finds its job and writes its one-line result."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import SpecError
from ..spec import GisJob

MOUNTED_JOB = "/etc/gisjob/job.yaml"
TERMINATION_LOG = "/dev/termination-log"
MAX_RESULT_BYTES = 4096  # a container's termination message


def load_pod_job(job_file: str | None) -> GisJob:
    """``--job FILE``, else ``$GISJOB_JOB`` (the document), else ``$GISJOB_JOB_FILE`` or the
    mounted ``/etc/gisjob/job.yaml``."""
    from ..spec import load_job, load_job_text

    if job_file:
        return load_job(job_file)
    text = os.environ.get("GISJOB_JOB")
    if text:
        return load_job_text(text, "$GISJOB_JOB")
    mounted = os.environ.get("GISJOB_JOB_FILE", MOUNTED_JOB)
    if Path(mounted).is_file():
        return load_job(mounted)
    raise SpecError("no job: give --job FILE, or set GISJOB_JOB or GISJOB_JOB_FILE")


def default_result_path() -> str | None:
    env = os.environ.get("GISJOB_RESULT_PATH")
    if env:
        return env
    return TERMINATION_LOG if os.access(TERMINATION_LOG, os.W_OK) else None


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
