"""The ledger's record schema (pure): one versioned record per attempt of a tile, as it is
written in the output location — its wire form, parsing that ignores unknown keys and
refuses a newer major version, and the attempt it is for the policy. :mod:`ledger`
re-exports everything here; derive states from records there.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Literal, cast, get_args

from . import policy
from .errors import EXIT_INPUT, GisJobError

LEDGER_VERSION = 1

Writer = Literal["worker", "runner", "finalizer"]
RecordOutcome = Literal["succeeded", "memory", "input", "error", "disruption"]
STRATEGIES: tuple[str, ...] = get_args(policy.Strategy)


class LedgerError(GisJobError):
    """The ledger cannot be read or written, or disagrees with what an executor saw."""


class LedgerVersionError(LedgerError):
    """A record written by a newer gisjob (a newer major schema version): permanent."""

    exit_code = EXIT_INPUT


# ----------------------------------------------------------------------------- records

# wire name (camelCase) -> attribute name, in wire order
_WIRE: dict[str, str] = {
    "v": "v",
    "job": "job",
    "digest": "digest",
    "tile": "tile",
    "attempt": "attempt",
    "strategy": "strategy",
    "memory": "memory",
    "chunkScale": "chunk_scale",
    "exitCode": "exit_code",
    "oomKilled": "oom_killed",
    "disrupted": "disrupted",
    "outcome": "outcome",
    "output": "output",
    "bytes": "bytes",
    "mtimeNs": "mtime_ns",
    "etag": "etag",
    "peakRssBytes": "peak_rss_bytes",
    "cgroupPeakBytes": "cgroup_peak_bytes",
    "estimatedPeakBytes": "estimated_peak_bytes",
    "memoryBudgetBytes": "memory_budget_bytes",
    "chunks": "chunks",
    "bytesRead": "bytes_read",
    "bytesWritten": "bytes_written",
    "seconds": "seconds",
    "error": "error",
    "writer": "writer",
    "pod": "pod",
    "recordedAt": "recorded_at",
}
_REQUIRED = ("job", "digest", "tile", "attempt", "outcome", "writer")
_INTS = {
    "attempt",
    "memory",
    "exit_code",
    "bytes",
    "mtime_ns",
    "peak_rss_bytes",
    "cgroup_peak_bytes",
    "estimated_peak_bytes",
    "memory_budget_bytes",
    "chunks",
    "bytes_read",
    "bytes_written",
}
_FLOATS = {"chunk_scale", "seconds", "recorded_at"}
_BOOLS = {"oom_killed", "disrupted"}
_STRS = {"job", "digest", "tile", "strategy", "outcome", "output", "etag", "error", "writer", "pod"}


@dataclass(frozen=True)
class LedgerRecord:
    """One attempt of one tile, as recorded in the output location (schema version 1).

    ``output`` is relative to the output folder; ``bytes`` and ``mtime_ns`` (local files) or
    ``etag`` (object storage) identify the exact output the attempt wrote.
    """

    job: str
    digest: str
    tile: str
    attempt: int
    outcome: RecordOutcome
    writer: Writer
    strategy: str = "initial"
    memory: int | None = None
    chunk_scale: float = 1.0
    exit_code: int | None = None
    oom_killed: bool = False
    disrupted: bool = False
    output: str | None = None
    bytes: int | None = None
    mtime_ns: int | None = None
    etag: str | None = None
    peak_rss_bytes: int | None = None
    cgroup_peak_bytes: int | None = None
    estimated_peak_bytes: int | None = None
    memory_budget_bytes: int | None = None
    chunks: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    seconds: float = 0.0
    error: str | None = None
    pod: str | None = None
    recorded_at: float | None = None  # epoch seconds, orders records of one attempt
    v: int = LEDGER_VERSION

    @property
    def succeeded(self) -> bool:
        """The attempt finished its tile and names the output it wrote."""
        return self.outcome == "succeeded" and self.exit_code == 0 and bool(self.output)

    def to_json(self) -> dict[str, Any]:
        """The wire form (camelCase, ``None`` left out)."""
        out: dict[str, Any] = {}
        for wire, attr in _WIRE.items():
            value = getattr(self, attr)
            if value is not None:
                out[wire] = value
        return out

    def dumps(self) -> str:
        return json.dumps(self.to_json(), separators=(",", ":"))

    @classmethod
    def from_json(cls, data: object) -> LedgerRecord:
        """Parse the wire form; unknown keys are ignored (a newer minor version may add
        fields). A newer major version raises :class:`LedgerVersionError`; anything
        malformed raises :class:`LedgerError`."""
        if not isinstance(data, dict):
            raise LedgerError(f"a ledger record is a JSON object, not {type(data).__name__}")
        version = data.get("v")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise LedgerError(f"ledger record without a valid version (v: {version!r})")
        if version > LEDGER_VERSION:
            raise LedgerVersionError(
                f"ledger record version {version} was written by a newer gisjob (this one "
                f"reads version {LEDGER_VERSION}): upgrade gisjob to use this output folder"
            )
        kwargs: dict[str, Any] = {}
        for wire, attr in _WIRE.items():
            if wire in data and data[wire] is not None:
                kwargs[attr] = _checked(attr, data[wire])
        missing = [k for k in _REQUIRED if k not in kwargs]
        if missing:
            raise LedgerError(f"ledger record without {', '.join(missing)}")
        if kwargs["writer"] not in get_args(Writer):
            raise LedgerError(f"ledger record with an unknown writer {kwargs['writer']!r}")
        if kwargs["outcome"] not in get_args(RecordOutcome):
            raise LedgerError(f"ledger record with an unknown outcome {kwargs['outcome']!r}")
        return cls(**kwargs)

    @classmethod
    def loads(cls, text: str) -> LedgerRecord:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise LedgerError(f"not JSON: {exc}") from None
        return cls.from_json(data)

    def to_attempt(self) -> policy.Attempt:
        """The attempt as the policy sees it."""
        strategy = self.strategy if self.strategy in STRATEGIES else "retry"
        return policy.Attempt(
            tile=self.tile,
            number=self.attempt,
            memory=self.memory or 0,
            chunk_scale=self.chunk_scale,
            strategy=cast(policy.Strategy, strategy),
            exit_code=self.exit_code,
            oom_killed=self.oom_killed,
            disrupted=self.disrupted,
        )

    def attempt_json(self) -> dict[str, Any]:
        """What a manifest lists of this attempt (the tile, job and digest are implied)."""
        d = self.to_json()
        for key in ("v", "job", "digest", "tile"):
            d.pop(key, None)
        return d


def _checked(attr: str, value: object) -> object:
    ok: bool
    if attr in _BOOLS:
        ok = isinstance(value, bool)
    elif attr in _INTS:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif attr in _FLOATS:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if ok:
            number = float(cast(float, value))
            ok, value = math.isfinite(number), number
    elif attr in _STRS:
        ok = isinstance(value, str)
    else:  # "v"
        ok = isinstance(value, int)
    if not ok:
        raise LedgerError(f"ledger record field {attr!r} has a bad value {value!r}")
    return value


def outcome_of(attempt: policy.Attempt) -> RecordOutcome:
    failure = attempt.failure
    return "succeeded" if failure is None else failure


def runner_record(job: str, digest: str, attempt: policy.Attempt, **fields: Any) -> LedgerRecord:
    """The record an executor writes for an attempt that could not write its own (killed
    before it recorded): the attempt's facts, outcome from the policy; ``fields`` add what
    else the executor knows (output, peaks, error, …)."""
    import time

    return LedgerRecord(
        job=job,
        digest=digest,
        tile=attempt.tile,
        attempt=attempt.number,
        outcome=outcome_of(attempt),
        writer="runner",
        strategy=attempt.strategy,
        memory=attempt.memory,
        chunk_scale=attempt.chunk_scale,
        exit_code=attempt.exit_code,
        oom_killed=attempt.oom_killed,
        disrupted=attempt.disrupted,
        recorded_at=time.time(),
        **fields,
    )
