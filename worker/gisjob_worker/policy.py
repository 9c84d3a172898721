"""Retry, split and out-of-memory policy: pure functions shared by both executors.

Given the plan and the attempts observed so far for a tile, :func:`decide` says what to do
next. It knows nothing of processes or pods: the local executor and the operator feed it
what they observed (exit code, OOM kill, result record) and carry out its decision.

Rules (DESIGN §2, §4):

- exit 0 → the tile is done;
- exit 2 (input/spec error) → the tile fails at once, never retried;
- a disruption — the attempt was killed by something other than its own memory or input
  (eviction, preemption, node loss, a ``DisruptionTarget`` condition, SIGKILL without an
  OOM the cgroup or kernel confirms, exit 137 without ``OOMKilled``) → relaunched as it
  was: never a memory failure, never counted against ``retry.backoffLimit`` (Kubernetes'
  podFailurePolicy ``Ignore`` on ``DisruptionTarget``), at most ``MAX_DISRUPTIONS`` times;
  the worker's own exit 0, 2 and 3 and a confirmed OOM kill win over a disruption mark;
- exit 3 or a confirmed OOM kill (``OOMKilled``, the cgroup's OOM counter) → the next strategy of
  ``retry.onOutOfMemory`` in order: ``shrinkChunks`` (same memory, half the chunk),
  ``split`` (4 block-aligned sub-tiles, or 2 feature halves), ``grow`` (memory × 1.5, capped
  at ``resources.maxMemory``); a strategy that cannot apply (a one-block chunk, a one-block
  tile, memory already at the cap) is skipped; when none is left the tile fails;
- any other failure → retried after an exponential backoff, up to ``retry.backoffLimit``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from .errors import EXIT_INPUT, EXIT_MEMORY, EXIT_OK
from .plan import Plan, Tile, can_shrink, resize_tile, split_tile
from .quantity import round_up_mib
from .spec import GisJobSpec

GROW_FACTOR = 1.5
SHRINK_FACTOR = 0.5
DEFAULT_GROW_CAP = 4  # without resources.maxMemory, growth stops at 4x the planned request
EXIT_OOM_KILLED = 137
# a bound on relaunches after disruptions (they do not count against backoffLimit, but a tile
# that is killed every single time — e.g. a node that always dies — must end)
MAX_DISRUPTIONS = 20

Strategy = Literal["initial", "retry", "disrupted", "shrinkChunks", "split", "grow"]
FailureKind = Literal["memory", "input", "error", "disruption"]


@dataclass(frozen=True)
class Attempt:
    """One observed run of a tile (a worker process or a pod)."""

    tile: str
    number: int  # 0-based, per tile id
    memory: int  # bytes the worker was given (request = limit)
    chunk_scale: float
    strategy: Strategy
    exit_code: int | None  # None: killed by a signal with no code
    oom_killed: bool = False  # an OOM kill confirmed by the runtime, cgroup or kernel
    disrupted: bool = False  # killed for reasons not the tile's own (eviction, node loss, …)

    @property
    def failure(self) -> FailureKind | None:
        if self.exit_code == EXIT_OK and not self.oom_killed:
            return None
        if self.oom_killed or self.exit_code == EXIT_MEMORY:
            return "memory"
        if self.exit_code == EXIT_INPUT:
            return "input"  # the worker's own verdict, even on a pod marked for disruption
        if self.disrupted or self.exit_code == EXIT_OOM_KILLED:
            return "disruption"  # 137 alone is a SIGKILL, not proof of an OOM
        return "error"


def attempt_from_history(tile: str, h: dict[str, Any]) -> Attempt:
    """An attempt from its compact history entry (the operator's pod annotation and the
    ``GISJOB_HISTORY`` a successor pod gets): ``n`` number, ``m`` memory, ``c`` chunk scale,
    ``s`` strategy, ``x`` exit code, ``o`` OOM-killed, ``d`` disrupted (absent in histories
    written before disruptions). Raises KeyError/TypeError/ValueError when malformed."""
    return Attempt(
        tile=tile,
        number=int(h["n"]),
        memory=int(h["m"]),
        chunk_scale=float(h["c"]),
        strategy=h["s"],
        exit_code=h["x"],
        oom_killed=bool(h["o"]),
        disrupted=bool(h.get("d", False)),
    )


@dataclass(frozen=True)
class Launch:
    tile: Tile
    number: int
    memory: int
    chunk_scale: float
    strategy: Strategy
    delay_seconds: float = 0.0


@dataclass(frozen=True)
class Split:
    tile: Tile
    children: tuple[Tile, ...]


@dataclass(frozen=True)
class Done:
    tile: Tile


@dataclass(frozen=True)
class Fail:
    tile: Tile
    reason: str


Decision = Launch | Split | Done | Fail


@dataclass(frozen=True)
class PolicyConfig:
    backoff_limit: int
    strategies: tuple[str, ...]
    max_memory: int | None  # resources.maxMemory
    memory_cap: int | None = None  # the executor's own ceiling (local allowance)
    backoff_base: float = 1.0
    backoff_max: float = 60.0

    @classmethod
    def from_spec(
        cls,
        spec: GisJobSpec,
        *,
        memory_cap: int | None = None,
        backoff_base: float = 1.0,
        backoff_max: float = 60.0,
    ) -> PolicyConfig:
        return cls(
            backoff_limit=spec.retry.backoff_limit,
            strategies=tuple(spec.retry.on_out_of_memory),
            max_memory=int(spec.resources.max_memory) if spec.resources.max_memory else None,
            memory_cap=memory_cap,
            backoff_base=backoff_base,
            backoff_max=backoff_max,
        )


def backoff(retry: int, base: float, cap: float) -> float:
    """Delay before the ``retry``-th retry (1-based): base, 2·base, 4·base, … up to cap."""
    exponent = min(max(0, retry - 1), 64)  # 2**64·base is past any cap; no float overflow
    return float(min(cap, base * 2**exponent))


def grow_cap(tile: Tile, config: PolicyConfig) -> int:
    cap = config.max_memory or tile.memory_request_bytes * DEFAULT_GROW_CAP
    if config.memory_cap is not None:
        cap = min(cap, config.memory_cap)
    return cap


def decide(plan: Plan, tile: Tile, attempts: Sequence[Attempt], config: PolicyConfig) -> Decision:
    """What to do next with ``tile`` given its attempts so far (oldest first)."""
    if not attempts:
        return Launch(tile, 0, tile.memory_request_bytes, 1.0, "initial")
    last = attempts[-1]
    failure = last.failure
    if failure is None:
        return Done(tile)
    nxt = last.number + 1
    if failure == "input":
        return Fail(tile, f"input error (exit {last.exit_code}): not retried")
    if failure == "disruption":
        disruptions = sum(1 for a in attempts if a.failure == "disruption")
        if disruptions > MAX_DISRUPTIONS:
            return Fail(
                tile,
                f"disrupted {disruptions} times (last: exit {last.exit_code}, not an "
                f"out-of-memory kill); giving up after {MAX_DISRUPTIONS} relaunches",
            )
        return Launch(tile, nxt, last.memory, last.chunk_scale, "disrupted")
    if failure == "error":
        retries = sum(1 for a in attempts if a.failure == "error")
        if retries > config.backoff_limit:
            return Fail(
                tile,
                f"failed {retries} times (exit {last.exit_code}); backoffLimit is "
                f"{config.backoff_limit}",
            )
        return Launch(
            tile,
            nxt,
            last.memory,
            last.chunk_scale,
            "retry",
            backoff(retries, config.backoff_base, config.backoff_max),
        )
    # a memory failure: the next applicable strategy after those already used
    for strategy in config.strategies[_strategies_used(attempts, config.strategies) :]:
        if strategy == "shrinkChunks":
            scale = last.chunk_scale * SHRINK_FACTOR
            current = resize_tile(plan, tile, last.chunk_scale) if last.chunk_scale < 1.0 else tile
            if can_shrink(plan, current, scale):
                return Launch(tile, nxt, last.memory, scale, "shrinkChunks")
        elif strategy == "split":
            children = split_tile(plan, tile)
            if children:
                return Split(tile, tuple(children))
        elif strategy == "grow":
            cap = grow_cap(tile, config)
            grown = min(cap, round_up_mib(int(last.memory * GROW_FACTOR)))
            if grown > last.memory:
                return Launch(tile, nxt, grown, last.chunk_scale, "grow")
        # this strategy cannot apply here (nothing to shrink, split or grow): the next one
    return Fail(
        tile,
        f"out of memory at {last.memory} bytes and no out-of-memory strategy left "
        f"(tried: {', '.join(config.strategies) or 'none'})",
    )


def _strategies_used(attempts: Sequence[Attempt], strategies: Sequence[str]) -> int:
    """How far down the strategy list earlier attempts of this tile went (skipped ones
    included): the position just after the last strategy that was applied."""
    position = 0
    for a in attempts:
        if a.strategy in ("shrinkChunks", "grow"):
            try:
                position = list(strategies).index(a.strategy, position) + 1
            except ValueError:
                return len(strategies)
    return position


@dataclass(frozen=True)
class JobOutcome:
    finished: bool
    succeeded: bool
    failed_tiles: tuple[str, ...]


def job_outcome(states: Iterable[tuple[str, str]], fail_fast: bool = False) -> JobOutcome:
    """From (tile id, state) pairs — state one of pending, running, succeeded, failed,
    split — whether the job is finished and whether it succeeded. A split tile counts
    through its children (which appear as their own entries)."""
    items = list(states)
    failed = tuple(t for t, s in items if s == "failed")
    active = any(s in ("pending", "running") for _, s in items)
    if failed and fail_fast:
        return JobOutcome(
            finished=not any(s == "running" for _, s in items), succeeded=False, failed_tiles=failed
        )
    return JobOutcome(finished=not active, succeeded=not active and not failed, failed_tiles=failed)
