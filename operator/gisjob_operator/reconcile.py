"""The reconcile core (pure): from what exists — the plan, the persisted status, the worker
pods — to what to do: pods to create and delete, the next status, events, result records.

Level-triggered and restart-safe:

- completion is persisted in ``status`` (planned tile indexes as compressed ranges, plus the
  sub-tiles of the splits in progress, grouped per planned tile: :func:`encode_subtiles`)
  before the pods that reported it are deleted, so a restarted operator never loses or
  repeats a tile;
- a tile's attempt history travels on its newest pod (annotation), and a finished pod is
  deleted only once its successor exists or its outcome is persisted;
- pod names are deterministic (job, tile, attempt): re-creating is idempotent;
- a retry's backoff counts from the best time known of the pod's end (:func:`pod_view`):
  evicted, lost and rejected pods have no ``finishedAt``, and waiting for one would hang the
  tile; pods ended by something other than their tile (evictions, preemption, node loss,
  someone else's deletion, 137 without ``OOMKilled``) are disruptions: relaunched as they
  were, neither memory failures nor retries.

The decisions themselves come from the shared :mod:`gisjob_worker.policy`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from gisjob_worker import policy
from gisjob_worker.plan import Plan, Tile, split_tile
from gisjob_worker.quantity import to_quantity

from .pods import (
    PodLaunch,
)
from .podview import PodView, to_attempt
from .progress import Progress


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass
class Actions:
    """What to do, in this order: create pods, write the status (when ``changed``), then
    delete pods — deletions are only safe once the status holds what those pods reported."""

    create: list[PodLaunch] = field(default_factory=list)
    delete: list[str] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)  # for the journal
    progress: Progress = field(default_factory=Progress)
    changed: bool = False  # progress differs from the persisted status
    finished: bool = False
    running: int = 0
    pending: int = 0
    waiting: int = 0  # finished pods not processed this tick (status coalescing)
    memory_failures: int = 0  # exit 3 / OOMKilled attempts seen this tick
    disruptions: int = 0  # disrupted attempts (evicted, preempted, …) decided this tick
    unschedulable: list[PodView] = field(default_factory=list)  # Pending, cannot be placed


class TileTree:
    """Planned tiles and their sub-tiles (pure navigation over the plan)."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self._children: dict[str, list[Tile]] = {}
        # sub-tiles only: planned tiles are laid on demand (Plan.index_of, Plan.tiles)
        self._sub: dict[str, Tile] = {}
        self._sub_root: dict[str, int] = {}

    def children(self, tile: Tile) -> list[Tile]:
        if tile.id not in self._children:
            kids = split_tile(self.plan, tile) or []
            self._children[tile.id] = kids
            root = self.root(tile.id)
            for k in kids:
                self._sub[k.id] = k
                self._sub_root[k.id] = root
        return self._children[tile.id]

    def index(self, tile_id: str) -> int | None:
        """The planned index of a planned tile (None for sub-tiles)."""
        return self.plan.index_of(tile_id)

    def tile(self, tile_id: str) -> Tile | None:
        i = self.plan.index_of(tile_id)
        return self.plan.tiles[i] if i is not None else self._sub.get(tile_id)

    def root(self, tile_id: str) -> int:
        i = self.plan.index_of(tile_id)
        return i if i is not None else self._sub_root[tile_id]


def _leaf_state(tree: TileTree, tile: Tile, p: Progress) -> Iterator[tuple[Tile, str]]:
    """(leaf, state) under a tile: state is 'done', 'failed' or 'open'."""
    if tile.id in p.split:
        for child in tree.children(tile):
            yield from _leaf_state(tree, child, p)
        return
    if tile.id in p.sub_done:
        yield tile, "done"
    elif tile.id in p.sub_failed:
        yield tile, "failed"
    else:
        yield tile, "open"


def _collapse(tree: TileTree, p: Progress) -> None:
    """A planned tile whose split subtree is resolved becomes one completed/failed index;
    its sub-tile ids leave the status (keeps status small)."""
    for tid in list(p.split):
        i = tree.index(tid)
        if i is None:
            continue
        states = list(_leaf_state(tree, tree.plan.tiles[i], p))
        if any(s == "open" for _, s in states):
            continue
        (p.failed if any(s == "failed" for _, s in states) else p.completed).add(i)
        prefix = f"{tid}-"
        p.split = {s for s in p.split if s != tid and not s.startswith(prefix)}
        p.sub_done = {s for s in p.sub_done if not s.startswith(prefix)}
        p.sub_failed = {s for s in p.sub_failed if not s.startswith(prefix)}


UNRESOLVED_BLOCK = 65_536  # planned indexes per set difference: bounded transient memory


def _unresolved(n: int, p: Progress) -> Iterator[int]:
    """Planned indexes neither completed nor failed, in order: set arithmetic (C speed) a
    block at a time, so a tick late in a million-tile job neither walks every completed
    tile in Python nor builds a set of every index."""
    if not p.completed and not p.failed:
        yield from range(n)
        return
    for start in range(0, n, UNRESOLVED_BLOCK):
        block = set(range(start, min(n, start + UNRESOLVED_BLOCK)))
        yield from sorted(block.difference(p.completed, p.failed))


def open_leaves(tree: TileTree, p: Progress) -> Iterator[Tile]:
    """Open leaves in plan order: unresolved planned tiles, and the open sub-tiles of the
    split ones."""
    tiles = tree.plan.tiles
    for i in _unresolved(len(tiles), p):
        tile = tiles[i]
        if tile.id in p.split:
            for leaf, state in _leaf_state(tree, tile, p):
                if state == "open":
                    yield leaf
        elif tile.id not in p.sub_done and tile.id not in p.sub_failed:
            yield tile


def _open_under_splits(tree: TileTree, p: Progress) -> Iterator[Tile]:
    """The open sub-tiles of the unresolved split planned tiles (a few: splits are rare)."""
    for tid in sorted(p.split):
        i = tree.index(tid)
        if i is None or i in p.completed or i in p.failed:
            continue
        for leaf, state in _leaf_state(tree, tree.plan.tiles[i], p):
            if state == "open":
                yield leaf


def open_count(tree: TileTree, p: Progress) -> int:
    """How many leaves :func:`open_leaves` yields, by arithmetic: no tile is laid."""
    n = len(tree.plan.tiles)
    count = n - len(p.completed) - len(p.failed.difference(p.completed))
    for tid in p.split | p.sub_done | p.sub_failed:  # planned tiles that are not open leaves
        i = tree.index(tid)
        if i is not None and i not in p.completed and i not in p.failed:
            count -= 1
    return count + sum(1 for _ in _open_under_splits(tree, p))


class OpenTiles:
    """Whether a tile id is an open leaf as of when this was made (:func:`open_leaves`
    without walking them: planned ids by their index, sub-tiles from the few splits), plus
    ids :meth:`update` adds."""

    def __init__(self, tree: TileTree, p: Progress) -> None:
        self.tree = tree
        self.resolved = frozenset(p.completed) | frozenset(p.failed)
        self.not_leaves = frozenset(p.split | p.sub_done | p.sub_failed)
        self.sub = {t.id for t in _open_under_splits(tree, p)}

    def __contains__(self, tile_id: object) -> bool:
        if not isinstance(tile_id, str):
            return False
        i = self.tree.index(tile_id)
        if i is None:
            return tile_id in self.sub
        return i not in self.resolved and tile_id not in self.not_leaves

    def update(self, ids: Iterable[str]) -> None:
        self.sub.update(ids)


def _mark(tree: TileTree, p: Progress, tile: Tile, outcome: str) -> None:
    i = tree.index(tile.id)
    if i is not None and tile.id not in p.split:
        (p.completed if outcome == "done" else p.failed).add(i)
    else:
        (p.sub_done if outcome == "done" else p.sub_failed).add(tile.id)


def reconcile(
    plan: Plan,
    persisted: dict[str, Any] | None,
    pods: Iterable[PodView],
    config: policy.PolicyConfig,
    parallelism: int,
    now: float,
    *,
    process_finished: bool = True,
    keep_failed: int = 3,
    suspended: bool = False,
    tree: TileTree | None = None,
    unschedulable_seconds: float | None = None,
) -> Actions:
    """Everything the operator should do this tick (see the module docstring).

    ``process_finished=False`` (between coalesced status writes): finished pods keep their
    slot and wait; only new tiles are launched.
    """
    if tree is None or tree.plan is not plan:  # a tree is pure navigation: reusable
        tree = TileTree(plan)
    before = Progress.from_status(persisted)
    p = Progress.from_status(persisted)
    actions = Actions(progress=p)
    by_tile: dict[str, list[PodView]] = {}
    for pod in pods:
        by_tile.setdefault(pod.tile, []).append(pod)
    for lst in by_tile.values():
        lst.sort(key=lambda v: v.attempt)
    # knowing the open sub-tiles makes every one of them known to the tree by id
    open_ids = OpenTiles(tree, p)
    for tid in list(p.split):
        t = tree.tile(tid)
        if t is not None:
            tree.children(t)
    failed_pods: list[PodView] = []
    slots = 0
    successors: list[PodLaunch] = []

    for tile_id, views in sorted(by_tile.items()):
        newest = views[-1]
        for old in views[:-1]:  # superseded: the successor holds the history
            _retire(old, actions, failed_pods)
        if newest.deleting and not (
            newest.finished and newest.disrupted and newest.digest in (None, plan.digest)
        ):
            # being deleted: by this operator (its outcome is in the status or a successor;
            # or the plan changed) or while still running. A pod of this plan that someone
            # else's deletion (a drain, a user) killed is a disruption, decided below while
            # it is still there to read (gone, its tile would start over at attempt 0).
            continue
        if newest.alive:
            if newest.unschedulable is not None:
                actions.unschedulable.append(newest)
                waited = now - (newest.unschedulable_since or now)
                tile = tree.tile(tile_id)
                if (
                    unschedulable_seconds is not None
                    and waited >= unschedulable_seconds
                    and not suspended
                    and tile is not None
                    and tile_id in open_ids
                ):
                    # no node can hold it: the tile fails (and its pod goes) instead of
                    # waiting for ever; the operator's setting says how long is too long
                    _mark(tree, p, tile, "failed")
                    actions.events.append(
                        Event(
                            "Warning",
                            "TileFailed",
                            f"tile {tile_id}: unschedulable for {waited:.0f} s with a memory "
                            f"request of {to_quantity(newest.memory)}: {newest.unschedulable}",
                        )
                    )
                    actions.delete.append(newest.name)
                    continue
            slots += 1
            if suspended:
                actions.delete.append(newest.name)
            continue
        tile = tree.tile(tile_id)
        if tile is None or tile_id not in open_ids:
            if _under_open_tile(tile_id, open_ids):
                # a sub-tile of a tile whose split is not in the status yet (that write was
                # lost, or the operator restarted): its outcome is recorded nowhere, so the
                # pod keeps its slot until the split is decided again (this tick, since
                # parents sort before their children, or a later one)
                slots += 1
                actions.waiting += 1
                continue
            _retire(newest, actions, failed_pods)  # resolved before, or not in this plan
            continue
        if not process_finished:
            slots += 1
            actions.waiting += 1
            continue
        attempts = [to_attempt(tile_id, h) for h in newest.history]
        attempts.append(to_attempt(tile_id, newest.attempt_record()))
        decision = policy.decide(plan, tile, attempts, config)
        failure = attempts[-1].failure
        if isinstance(decision, policy.Launch) and (
            suspended or _backing_off(newest, decision.delay_seconds, now)
        ):
            # backoff not over, or suspended: the finished pod keeps its slot and is decided
            # again on a later tick; only then is the attempt counted, journaled, reported
            slots += 1
            continue
        # every attempt goes to the journal; a killed worker wrote no record of its own
        record = newest.record or {
            "tile": tile_id,
            "outcome": failure or "succeeded",
            "error": newest.message
            or ("OOMKilled by its cgroup" if newest.oom_killed else None)
            or newest.cause,
        }
        actions.records.append(
            {
                **record,
                "tile": tile_id,
                "attempt": newest.attempt,
                "strategy": newest.strategy,
                "memory": newest.memory,
                "chunkScale": newest.chunk_scale,
                "pod": newest.name,
                "exitCode": newest.exit_code,
                "oomKilled": newest.oom_killed,
                "disrupted": newest.disrupted,
            }
        )
        if newest.record:
            peak = newest.record.get("cgroupPeakBytes") or newest.record.get("peakRssBytes")
            if isinstance(peak, int):
                p.peak_observed = max(p.peak_observed, peak)
        oom = f"exit {newest.exit_code}" + (", OOMKilled" if newest.oom_killed else "")
        if failure == "memory":
            p.memory_retries += 1
            actions.memory_failures += 1
        elif failure == "disruption":
            p.disruptions += 1
            actions.disruptions += 1
        if isinstance(decision, policy.Done):
            _mark(tree, p, tile, "done")
            _retire(newest, actions, failed_pods)
        elif isinstance(decision, policy.Fail):
            _mark(tree, p, tile, "failed")
            actions.events.append(
                Event("Warning", "TileFailed", f"tile {tile_id}: {decision.reason}")
            )
            _retire(newest, actions, failed_pods)
        elif isinstance(decision, policy.Split):
            p.split.add(tile_id)
            # the children are known and open from now on: pods of theirs that already
            # exist (the split's status write was lost) are decided in this same tick
            open_ids.update(child.id for child in tree.children(tile))
            actions.events.append(
                Event(
                    "Warning",
                    "OutOfMemory",
                    f"tile {tile_id} ran out of memory at {to_quantity(newest.memory)} ({oom}): "
                    "split into " + ", ".join(c.id for c in decision.children),
                )
            )
            _retire(newest, actions, failed_pods)
        else:
            assert isinstance(decision, policy.Launch)
            if decision.strategy == "retry":
                p.other_retries += 1
            elif decision.strategy == "disrupted":
                actions.events.append(
                    Event(
                        "Warning",
                        "TileDisrupted",
                        f"tile {tile_id} attempt {newest.attempt} was ended by something other "
                        f"than the tile ({newest.cause or oom}): relaunched as it was, memory "
                        f"{to_quantity(decision.memory)}, chunk scale {decision.chunk_scale:g}; "
                        "not an out-of-memory failure, not counted against backoffLimit",
                    )
                )
            elif failure == "memory":
                actions.events.append(
                    Event(
                        "Warning",
                        "OutOfMemory",
                        f"tile {tile_id} ran out of memory at "
                        f"{to_quantity(newest.memory)} ({oom}): {decision.strategy}, "
                        f"memory {to_quantity(decision.memory)}, "
                        f"chunk scale {decision.chunk_scale:g}",
                    )
                )
            slots += 1  # the finished pod holds the tile's slot until its successor exists
            successors.append(
                PodLaunch(
                    tile=tile_id,
                    attempt=decision.number,
                    memory=decision.memory,
                    chunk_scale=decision.chunk_scale,
                    strategy=decision.strategy,
                    history=(*newest.history, newest.attempt_record()),
                )
            )

    _collapse(tree, p)
    actions.changed = p.key() != before.key()
    actions.create.extend(successors)  # they replace a pod: no new slot
    # progress is final for this tick: launch the first open leaves (laid as they come)
    if not suspended:
        budget = max(0, parallelism - slots)
        for leaf in open_leaves(tree, p):
            if budget <= 0:
                break
            if leaf.id in by_tile:
                continue
            actions.create.append(
                PodLaunch(
                    tile=leaf.id,
                    attempt=0,
                    memory=leaf.memory_request_bytes,
                    chunk_scale=1.0,
                    strategy="initial",
                )
            )
            budget -= 1
    failed_pods.sort(key=lambda v: (v.finished_at or 0.0, v.name))
    excess = len(failed_pods) - keep_failed
    actions.delete.extend(v.name for v in failed_pods[: max(0, excess)])
    remaining = open_count(tree, p)
    actions.running = slots
    actions.pending = max(0, remaining - slots)
    actions.finished = remaining == 0 and slots == 0
    return actions


def _backing_off(view: PodView, delay: float, now: float) -> bool:
    """Whether a finished pod's retry must still wait. The backoff counts from when the pod
    finished; a pod that tells no time at all (see :func:`pod_view`) is not waited for —
    counting from ``now`` would wait for ever."""
    return view.finished_at is not None and view.finished_at + delay > now


def _under_open_tile(tile_id: str, open_ids: OpenTiles) -> bool:
    """Whether ``tile_id`` is a sub-tile (``…-q1``, ``…-h0``) of an open tile."""
    head = tile_id
    while "-" in head:
        head = head.rsplit("-", 1)[0]
        if head in open_ids:
            return True
    return False


def _retire(view: PodView, actions: Actions, failed_pods: list[PodView]) -> None:
    """A finished pod whose information is in its successor or in the status (once this
    tick's status is written): succeeded pods are deleted; failed ones are kept — the newest
    few per job — for debugging."""
    if view.deleting or not view.finished:
        return
    if view.phase == "Failed":
        failed_pods.append(view)
    else:
        actions.delete.append(view.name)


def now_iso(ts: float | None = None) -> str:
    dt = datetime.fromtimestamp(ts, UTC) if ts is not None else datetime.now(UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")
