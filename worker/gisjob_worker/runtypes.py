"""What a local run shows and returns (shared by the executor, the progress display and the
report): memory samples, progress snapshots, each tile's run and the run's result."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from . import policy
from .ledger import TileState
from .plan import Plan, Tile


@dataclass
class Sample:
    tile: str
    attempt: int
    t: float
    rss: int
    request: int


@dataclass
class Snapshot:
    """What the progress display shows."""

    total: int
    done: int
    failed: int
    running: int
    memory_in_use: int
    allowance: int
    retries: int
    oom: int
    skipped: int


@dataclass
class TileRun:
    """One tile (planned, or a sub-tile of a split) in a local run."""

    tile: Tile
    parent: str | None = None
    state: TileState = "pending"
    attempts: list[policy.Attempt] = field(default_factory=list)  # this run's, oldest first
    records: list[dict[str, Any]] = field(default_factory=list)  # their ledger records
    reason: str | None = None  # why it failed (the policy's words)
    resumed: bool = False  # complete (or split) before this run started


@dataclass
class RunResult:
    plan: Plan
    runs: dict[str, TileRun]
    seconds: float
    interrupted: bool
    samples: list[Sample]
    manifest: dict[str, Any]

    @property
    def succeeded(self) -> bool:
        return not self.interrupted and all(
            r.state in ("succeeded", "split") for r in self.runs.values()
        )
