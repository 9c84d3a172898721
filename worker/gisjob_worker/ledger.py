"""The tile ledger (pure): one versioned record per attempt of a tile, and everything derived
from records — attempt histories, tile states, which planned tiles are complete, the
manifest entries, and which outputs a job owns or has superseded.

Both executors record through it: workers write their own record after their tile (writer
``worker``); the local runner writes one on a worker's behalf when the worker was killed
before it could (``runner``); ``finalizer`` names records a finalizer would write (none
yet). The schema itself is :mod:`ledgerrecord` (re-exported here). Records live in the
output location, one object per record (object storage has no append; see
:mod:`ledgerstore`). Nothing here does I/O: whether an output is still the one a record
describes is a check the caller injects (``output_ok``).

Rules:

- a tile is *complete* when one of its succeeded records names an output that is still the
  recorded one (``output_ok``), or — for a tile that was split — when all of its sub-tiles
  are complete, recursively;
- an output is *owned* when any record of the output folder says a gisjob worker wrote it;
  it is *superseded* when it is owned but not a succeeded output of the final manifest.
  Only superseded outputs are ever deleted; files nobody recorded are never touched.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from . import policy
from .ledgerrecord import (
    LEDGER_VERSION,
    STRATEGIES,
    LedgerError,
    LedgerRecord,
    LedgerVersionError,
    RecordOutcome,
    Writer,
    outcome_of,
)
from .plan import Plan, Tile, split_tile

__all__ = [
    "LEDGER_VERSION",
    "STRATEGIES",
    "LedgerError",
    "LedgerRecord",
    "LedgerVersionError",
    "LedgerView",
    "RecordOutcome",
    "Resolution",
    "Resolver",
    "TileEntry",
    "TileState",
    "Writer",
    "complete_tile_indexes",
    "manifest_entries",
    "operator_resolver",
    "outcome_of",
    "owned_outputs",
    "policy_resolver",
    "superseded_outputs",
    "tile_counts",
]

TileState = Literal["pending", "running", "succeeded", "failed", "split"]
WRITER_RANK: dict[str, int] = {"worker": 0, "finalizer": 1, "runner": 2}


def _order(r: LedgerRecord) -> tuple[int, float, int]:
    return (r.attempt, r.recorded_at or 0.0, WRITER_RANK.get(r.writer, 9))


# ------------------------------------------------------------------------ tile states


@dataclass
class LedgerView:
    """The records of one plan digest, by tile (pure; ``output_ok`` is the injected check
    that a record's output is still the one it describes)."""

    digest: str
    output_ok: Callable[[LedgerRecord], bool]
    _by_tile: dict[str, list[LedgerRecord]] = field(default_factory=dict)
    _ancestors: set[str] = field(default_factory=set)
    _complete: dict[str, LedgerRecord | None] = field(default_factory=dict)

    @classmethod
    def of(
        cls, digest: str, records: Iterable[LedgerRecord], output_ok: Callable[[LedgerRecord], bool]
    ) -> LedgerView:
        view = cls(digest, output_ok)
        for r in records:
            view.add(r)
        return view

    def add(self, record: LedgerRecord) -> None:
        if record.digest != self.digest:
            return
        lst = self._by_tile.setdefault(record.tile, [])
        lst.append(record)
        lst.sort(key=_order)
        self._complete.pop(record.tile, None)
        tid = record.tile
        # every id this one descends from (each prefix ending before a "-"): one set, so the
        # walks below stay linear in the tiles instead of scanning the records per tile
        self._ancestors.update(tid[:i] for i, ch in enumerate(tid) if ch == "-")

    def tiles(self) -> list[str]:
        return sorted(self._by_tile)

    def records(self, tile_id: str) -> list[LedgerRecord]:
        """Oldest first."""
        return list(self._by_tile.get(tile_id, ()))

    def last(self, tile_id: str) -> LedgerRecord | None:
        recs = self._by_tile.get(tile_id)
        return recs[-1] if recs else None

    def attempts(self, tile_id: str) -> list[policy.Attempt]:
        return [r.to_attempt() for r in self._by_tile.get(tile_id, ())]

    def next_attempt(self, tile_id: str) -> int:
        """The number a new attempt of this tile gets (after every recorded one)."""
        recs = self._by_tile.get(tile_id)
        return max(r.attempt for r in recs) + 1 if recs else 0

    def complete(self, tile_id: str) -> LedgerRecord | None:
        """The newest succeeded record whose output is still the recorded one."""
        if tile_id not in self._complete:
            found = None
            for r in reversed(self._by_tile.get(tile_id, ())):
                if r.succeeded and self.output_ok(r):
                    found = r
                    break
            self._complete[tile_id] = found
        return self._complete[tile_id]

    def was_split(self, tile_id: str) -> bool:
        """Some sub-tile of this tile has a record."""
        return tile_id in self._ancestors

    def subtree_complete(self, plan: Plan, tile: Tile) -> bool:
        """The tile is complete, or it was split and all of its sub-tiles are."""
        if self.complete(tile.id) is not None:
            return True
        if not self.was_split(tile.id):
            return False
        children = split_tile(plan, tile) or []
        return bool(children) and all(self.subtree_complete(plan, c) for c in children)


def complete_tile_indexes(
    plan: Plan, records: Iterable[LedgerRecord], output_ok: Callable[[LedgerRecord], bool]
) -> set[int]:
    """Planned tile indexes whose output — or all of whose split leaves' outputs — is
    complete for this plan's digest."""
    view = LedgerView.of(plan.digest, records, output_ok)
    return {i for i, t in enumerate(plan.tiles) if view.subtree_complete(plan, t)}


@dataclass(frozen=True)
class Resolution:
    """What an executor says of a tile: its state, and why when it failed."""

    state: TileState
    reason: str | None = None


Resolver = Callable[[Tile, int], Resolution]  # (tile, index of its planned root) -> state


def operator_resolver(completed: set[int], failed: set[int]) -> Resolver:
    """The operator's view (its status' completed and failed planned indexes)."""

    def resolve(tile: Tile, root: int) -> Resolution:
        if root in completed:
            return Resolution("succeeded")
        if root in failed:
            return Resolution("failed")
        return Resolution("pending")

    return resolve


def policy_resolver(plan: Plan, view: LedgerView, config: policy.PolicyConfig) -> Resolver:
    """Without an executor's view: what the policy decides from the recorded attempts."""

    def resolve(tile: Tile, root: int) -> Resolution:
        attempts = view.attempts(tile.id)
        if not attempts:
            return Resolution("pending")
        decision = policy.decide(plan, tile, attempts, config)
        if isinstance(decision, policy.Done):
            return Resolution("succeeded")
        if isinstance(decision, policy.Fail):
            return Resolution("failed", decision.reason)
        if isinstance(decision, policy.Split):
            return Resolution("split")
        return Resolution("pending")

    return resolve


# ------------------------------------------------------------------------ manifest


@dataclass
class TileEntry:
    """What the manifest says of one tile (planned or a sub-tile of a split)."""

    id: str
    outcome: str  # succeeded | failed | split | pending
    parent: str | None = None
    output: str | None = None  # relative to the output folder
    bytes: int | None = None
    mtime_ns: int | None = None
    peak_rss_bytes: int | None = None
    memory_request_bytes: int | None = None
    estimated_peak_bytes: int | None = None
    error: str | None = None
    attempts: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        d = {
            "id": self.id,
            "outcome": self.outcome,
            "parent": self.parent,
            "output": self.output,
            "bytes": self.bytes,
            "mtimeNs": self.mtime_ns,
            "peakRssBytes": self.peak_rss_bytes,
            "memoryRequestBytes": self.memory_request_bytes,
            "estimatedPeakBytes": self.estimated_peak_bytes,
            "error": self.error,
            "attempts": self.attempts,
        }
        return {k: v for k, v in d.items() if v is not None}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> TileEntry:
        return cls(
            id=d["id"],
            outcome=d["outcome"],
            parent=d.get("parent"),
            output=d.get("output"),
            bytes=d.get("bytes"),
            mtime_ns=d.get("mtimeNs"),
            peak_rss_bytes=d.get("peakRssBytes"),
            memory_request_bytes=d.get("memoryRequestBytes"),
            estimated_peak_bytes=d.get("estimatedPeakBytes"),
            error=d.get("error"),
            attempts=list(d.get("attempts", [])),
        )


def _join(*parts: str | None) -> str | None:
    text = ": ".join(p for p in parts if p)
    return text or None


def manifest_entries(
    plan: Plan, view: LedgerView, resolve: Resolver
) -> list[tuple[Tile, TileEntry]]:
    """One entry per planned tile, each followed by the sub-tiles of its split (recursively),
    from the ledger and an executor's view of the tiles (``resolve``).

    A tile with a complete record is succeeded whatever the view says; a tile whose
    sub-tiles have records (or that the view says was split) lists its sub-tiles; otherwise
    the view's state holds — except that a tile the view calls succeeded without a complete
    record is failed, with the reason. Linear in the tiles and records.
    """
    entries: list[tuple[Tile, TileEntry]] = []

    def visit(tile: Tile, parent: str | None, root: int) -> None:
        res = resolve(tile, root)
        done = view.complete(tile.id)
        last = view.last(tile.id)
        kids: list[Tile] = []
        if done is None and (view.was_split(tile.id) or res.state == "split"):
            kids = split_tile(plan, tile) or []
        entry = TileEntry(
            id=tile.id,
            outcome="pending",
            parent=parent,
            memory_request_bytes=tile.memory_request_bytes,
            estimated_peak_bytes=tile.estimated_peak_bytes,
            attempts=[r.attempt_json() for r in view.records(tile.id)],
        )
        if done is not None:
            entry.outcome = "succeeded"
            entry.output, entry.bytes, entry.mtime_ns = done.output, done.bytes, done.mtime_ns
            entry.peak_rss_bytes = done.peak_rss_bytes
        elif kids:
            entry.outcome = "split"
        else:
            entry.peak_rss_bytes = last.peak_rss_bytes if last else None
            state = res.state
            if state in ("succeeded", "split"):
                entry.outcome = "failed"
                entry.error = _join(_missing(last), last.error if last else None)
            elif state == "failed":
                entry.outcome = "failed"
                entry.error = _join(res.reason, last.error if last else None)
            else:
                entry.outcome = "pending"
                entry.error = last.error if last else None
        entries.append((tile, entry))
        for k in kids:
            visit(k, tile.id, root)

    for i, tile in enumerate(plan.tiles):
        visit(tile, None, i)
    return entries


def _missing(last: LedgerRecord | None) -> str:
    for_output = last is not None and last.succeeded
    if for_output:
        assert last is not None
        return f"output {last.output} is missing or is not the file recorded in the ledger"
    return "no succeeded attempt with its output in the ledger"


# ------------------------------------------------------------------------ ownership


def owned_outputs(records: Iterable[LedgerRecord]) -> set[str]:
    """Every output path (relative to the output folder) that any record says a gisjob
    worker wrote there."""
    return {r.output for r in records if r.output}


def superseded_outputs(
    records: Iterable[LedgerRecord], final_entries: Iterable[TileEntry]
) -> dict[str, list[LedgerRecord]]:
    """Owned outputs that the final manifest does not list as a succeeded output, with the
    records that claim each. The edge deletes one only while the file is still what one of
    those records describes (a file rewritten by an attempt that could not record itself
    is nobody's to delete)."""
    keep = {e.output for e in final_entries if e.outcome == "succeeded" and e.output}
    out: dict[str, list[LedgerRecord]] = {}
    for r in records:
        if r.output and r.output not in keep:
            out.setdefault(r.output, []).append(r)
    return dict(sorted(out.items()))


def tile_counts(entries: Iterable[TileEntry]) -> dict[str, int]:
    """Leaf tiles by outcome (a split tile counts through its sub-tiles)."""
    counts = {"succeeded": 0, "failed": 0, "pending": 0, "split": 0}
    for e in entries:
        counts[e.outcome] = counts.get(e.outcome, 0) + 1
    return counts
