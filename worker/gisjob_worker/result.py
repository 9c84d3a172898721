"""The worker's result record: one JSON object of at most 4 KiB (a pod termination message)."""

from __future__ import annotations

import json
import os
import stat
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from .outputs import write_atomic

MAX_BYTES = 4096
Outcome = Literal["succeeded", "memory", "input", "error"]


def _dumps(data: dict[str, Any]) -> str:
    return json.dumps(data, separators=(",", ":"))


@dataclass
class ResultRecord:
    tile: str
    outcome: Outcome
    exitCode: int  # noqa: N815 - wire format is camelCase
    peakRssBytes: int  # noqa: N815
    cgroupPeakBytes: int | None = None  # noqa: N815
    memoryBudgetBytes: int | None = None  # noqa: N815
    estimatedPeakBytes: int | None = None  # noqa: N815
    chunks: int = 0
    bytesRead: int = 0  # noqa: N815
    bytesWritten: int = 0  # noqa: N815
    seconds: float = 0.0
    output: str | None = None
    error: str | None = None
    job: str | None = None
    digest: str | None = None  # the plan digest the worker built (the ledger's key)
    ledgerRecord: str | None = None  # noqa: N815 - where the worker recorded this attempt

    def to_json(self) -> str:
        data: dict[str, Any] = {k: v for k, v in asdict(self).items() if v is not None}
        text = _dumps(data)
        for key in ("error", "output"):  # shorten the free-text fields, error first
            value = data.get(key)
            if len(text.encode()) <= MAX_BYTES or not value:
                continue
            lo, hi = 0, len(value)  # the longest prefix that fits (JSON-escaped size)
            while lo < hi:
                mid = (lo + hi + 1) // 2
                data[key] = value[:mid] + "..."
                if len(_dumps(data).encode()) <= MAX_BYTES:
                    lo = mid
                else:
                    hi = mid - 1
            data[key] = value[:lo] + "..."
            text = _dumps(data)
        return text

    @classmethod
    def from_json(cls, text: str) -> ResultRecord:
        data = json.loads(text)
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


def write_result(record: ResultRecord, path: str | os.PathLike[str]) -> None:
    """Write the record; atomically (temp + rename) for regular files, directly for devices."""
    p = Path(path)
    text = record.to_json()
    try:
        is_regular = stat.S_ISREG(p.stat().st_mode)
    except FileNotFoundError:
        is_regular = True
    if not is_regular or str(p).startswith("/dev/"):
        p.write_text(text)
        return
    write_atomic(p, text)
