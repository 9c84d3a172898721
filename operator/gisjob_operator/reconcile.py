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

import base64
import binascii
import json
import re
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from gisjob_worker import policy
from gisjob_worker.plan import Plan, Tile, split_tile
from gisjob_worker.quantity import parse_quantity, to_quantity
from gisjob_worker.ranges import decode

from .pods import (
    ANNOTATION_CHUNK_SCALE,
    ANNOTATION_DIGEST,
    ANNOTATION_HISTORY,
    ANNOTATION_STRATEGY,
    LABEL_ATTEMPT,
    LABEL_TILE,
    PodLaunch,
)

FINISHED = ("Succeeded", "Failed")
# pod ``status.reason`` values Kubernetes gives pods it ended for reasons not their own:
# kubelet evictions (node pressure), kubelet preemption of a critical pod, (graceful) node
# shutdown, the node controller's lost node
DISRUPTION_REASONS = frozenset(
    {"Evicted", "Preempting", "Shutdown", "NodeShutdown", "Terminated", "NodeLost"}
)
# the container's ``state.terminated.reason`` when the kubelet lost the container (node or
# runtime gone): nothing says how the worker ended
CONTAINER_UNKNOWN = "ContainerStatusUnknown"
OOM_KILLED = "OOMKilled"
SIGKILL_EXIT = 137


@dataclass(frozen=True)
class PodView:
    """What the reconciler needs of one worker pod."""

    name: str
    tile: str
    attempt: int
    phase: str  # Pending | Running | Succeeded | Failed | Unknown
    memory: int
    chunk_scale: float
    strategy: str
    history: tuple[dict[str, Any], ...]
    exit_code: int | None = None
    oom_killed: bool = False
    record: dict[str, Any] | None = None
    # when the pod finished (epoch seconds), as well as anyone can tell: the container's
    # finishedAt, else the pod's latest condition transition, deletion, start, when this
    # operator first saw it finished, creation (see pod_view); None only when none is known
    finished_at: float | None = None
    deleting: bool = False
    message: str | None = None  # the container's termination message
    disrupted: bool = False  # ended by something other than the tile (eviction, node loss…)
    cause: str | None = None  # why Kubernetes says it ended (reason: message), if it says
    digest: str | None = None  # the plan digest the pod was made for (None: not known)

    @property
    def finished(self) -> bool:
        return self.phase in FINISHED

    @property
    def alive(self) -> bool:
        return not self.finished and not self.deleting

    def attempt_record(self) -> dict[str, Any]:
        """The compact form kept in the successor's history annotation."""
        return {
            "n": self.attempt,
            "m": self.memory,
            "c": self.chunk_scale,
            "s": self.strategy,
            "x": self.exit_code,
            "o": self.oom_killed,
            "d": self.disrupted,
        }


def _parse_time(text: Any) -> float | None:
    if not text or not isinstance(text, str):
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _terminated(status: dict[str, Any]) -> dict[str, Any] | None:
    """The worker container's terminated state (the last one listed), if it has one."""
    term = None
    for cs in status.get("containerStatuses") or []:
        t = (cs.get("state") or {}).get("terminated")
        if t:
            term = t
    return term


def _deletion_requested(meta: dict[str, Any]) -> float | None:
    """When the pod's deletion was asked for: ``deletionTimestamp`` is that time plus the
    grace period."""
    at = _parse_time(meta.get("deletionTimestamp"))
    if at is None:
        return None
    grace = meta.get("deletionGracePeriodSeconds")
    return at - float(grace) if isinstance(grace, int | float) else at


def _disruption(
    meta: dict[str, Any], status: dict[str, Any], term: dict[str, Any] | None
) -> str | None:
    """Why the pod was ended by something other than its tile, or None when it was not (as
    far as the pod tells)."""
    if term is not None and term.get("reason") == OOM_KILLED:
        return None  # the runtime confirms an OOM kill: the tile's own memory failure
    for c in status.get("conditions") or []:
        if c.get("type") == "DisruptionTarget" and c.get("status") == "True":
            return f"DisruptionTarget: {c.get('reason') or 'unknown'}"
    if status.get("reason") in DISRUPTION_REASONS:
        return str(status["reason"])
    if term is not None and term.get("reason") == CONTAINER_UNKNOWN:
        return CONTAINER_UNKNOWN
    requested = _deletion_requested(meta)
    if requested is not None:
        # the operator deletes only pods that already finished (or, suspended, all): a pod
        # that was still running when its deletion was asked for was ended by the deletion
        finished = _parse_time(term.get("finishedAt")) if term is not None else None
        if term is None or finished is None or finished >= requested:
            return "deleted while running"
    if term is not None and term.get("exitCode") == SIGKILL_EXIT:
        return f"exit {SIGKILL_EXIT} (SIGKILL) without {OOM_KILLED}"
    return None


def _finish_time(
    meta: dict[str, Any],
    status: dict[str, Any],
    term: dict[str, Any] | None,
    seen_finished: float | None,
) -> float | None:
    """The best known time a finished pod finished. Evicted, lost and rejected pods often
    have no terminated container, or one without ``finishedAt``: then the latest of what
    the pod does tell (its conditions' transitions — Ready → False, DisruptionTarget —, the
    deletion request, its start), else the time the operator first saw it finished, else
    its creation."""
    at = _parse_time(term.get("finishedAt")) if term is not None else None
    if at is not None:
        return at
    told = [_parse_time(c.get("lastTransitionTime")) for c in status.get("conditions") or []]
    told += [_deletion_requested(meta), _parse_time(status.get("startTime"))]
    known = [t for t in told if t is not None]
    if known:
        return max(known)
    if seen_finished is not None:
        return seen_finished
    return _parse_time(meta.get("creationTimestamp"))


def pod_view(pod: dict[str, Any], seen_finished: float | None = None) -> PodView | None:
    """Parse a pod object (as a dict, API field names); None if it is not a worker pod.

    ``seen_finished``: when this operator (process) first saw the pod in a finished phase —
    the time a retry's backoff counts from when the pod itself tells no time at all.
    """
    meta = pod.get("metadata") or {}
    labels = meta.get("labels") or {}
    annotations = meta.get("annotations") or {}
    if LABEL_TILE not in labels or LABEL_ATTEMPT not in labels:
        return None
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    phase = status.get("phase") or "Pending"
    containers = spec.get("containers") or [{}]
    limits = ((containers[0].get("resources") or {}).get("limits")) or {}
    try:
        memory = parse_quantity(str(limits.get("memory", "0")))
    except ValueError:
        memory = 0
    term = _terminated(status)
    exit_code: int | None = None
    oom = False
    message = None
    record = None
    if term is not None:
        code = term.get("exitCode")
        exit_code = code if isinstance(code, int) else None
        oom = term.get("reason") == OOM_KILLED
        message = term.get("message")
    elif phase == "Succeeded":
        exit_code = 0  # every container exited 0, whatever the statuses still show
    if message:
        try:
            parsed = json.loads(message)
            record = parsed if isinstance(parsed, dict) else None
        except ValueError:
            record = None
    try:
        history = tuple(json.loads(annotations.get(ANNOTATION_HISTORY, "[]")))
    except ValueError:
        history = ()
    finished = phase in FINISHED
    why = _disruption(meta, status, term) if finished else None
    said = " ".join(str(status.get("message") or "").split())[:300]
    reason = status.get("reason") or (term.get("reason") if term is not None else None)
    told = ": ".join(str(x) for x in (reason, said) if x)
    cause = told if why is None or told.startswith(why) else "; ".join(x for x in (why, told) if x)
    return PodView(
        name=meta.get("name", ""),
        tile=labels[LABEL_TILE],
        attempt=int(labels[LABEL_ATTEMPT]),
        phase=phase,
        memory=memory,
        chunk_scale=float(annotations.get(ANNOTATION_CHUNK_SCALE, "1.0")),
        strategy=annotations.get(ANNOTATION_STRATEGY, "initial"),
        history=history,
        exit_code=exit_code,
        oom_killed=oom,
        record=record,
        finished_at=_finish_time(meta, status, term, seen_finished) if finished else None,
        deleting=bool(meta.get("deletionTimestamp")),
        message=message,
        disrupted=why is not None,
        cause=(cause or None) if finished else None,
        digest=annotations.get(ANNOTATION_DIGEST),
    )


def to_attempt(tile: str, h: dict[str, Any]) -> policy.Attempt:
    return policy.Attempt(
        tile=tile,
        number=int(h["n"]),
        memory=int(h["m"]),
        chunk_scale=float(h["c"]),
        strategy=h["s"],
        exit_code=h["x"],
        oom_killed=bool(h["o"]),
        disrupted=bool(h.get("d", False)),  # histories written before disruptions: absent
    )


# ------------------------------------------------------------------ sub-tile sets in status
# While splits are open, status carries which sub-tiles are split, succeeded or failed. As
# lists of ids they cost ~60 bytes per split tile, and a job whose tiles all run out of
# memory has about two splits open per pod of parallelism: 2,000 pods made 120 KiB. They are
# written grouped by planned tile instead, one state letter and the split path per entry:
#
#     r0003c0007:sdq0dq1fq2,r0003c0008:ssq1dq1q0      (s split, d succeeded, f failed)
#
# is r0003c0007 split, its -q0 and -q1 succeeded, -q2 failed; r0003c0008 and its -q1 split,
# r0003c0008-q1-q0 succeeded. Long texts are zlib-compressed (``z:`` + base64), as tile
# index sets are: about 5-7 bytes per open split, so status stays small at any parallelism
# a cluster runs. Plan-free (the ids are spelled out), and the old list form still reads.

SUBTILES_PLAIN_LIMIT = 1024  # characters of group text before the compressed form is tried
SUBTILES_ZIP_PREFIX = "z:"
_SPLIT_PART = re.compile(r"-([qh][0-9])$")
_GROUP_ITEMS = re.compile(r"(?:[sdf](?:[qh][0-9])*)*")
_ITEM = re.compile(r"([sdf])((?:[qh][0-9])*)")
_STATES = (("s", "split"), ("d", "sub_done"), ("f", "sub_failed"))


def _root_and_path(tile_id: str) -> tuple[str, str]:
    """``r0001c0002-q3-q0`` → (``r0001c0002``, ``q3q0``)."""
    parts: list[str] = []
    head = tile_id
    while (m := _SPLIT_PART.search(head)) is not None:
        parts.append(m.group(1))
        head = head[: m.start()]
    return head, "".join(reversed(parts))


def encode_subtiles(split: Iterable[str], done: Iterable[str], failed: Iterable[str]) -> str:
    """The status form of the open splits' sub-tile sets ("" when there are none)."""
    groups: dict[str, list[tuple[str, str]]] = {}
    for (letter, _), ids in zip(_STATES, (split, done, failed), strict=True):
        for tile_id in ids:
            root, path = _root_and_path(tile_id)
            if not root or any(c in root for c in ":, "):
                raise ValueError(f"not a tile id for status: {tile_id!r}")
            groups.setdefault(root, []).append((path, letter))
    text = ",".join(
        root + ":" + "".join(letter + path for path, letter in sorted(items))
        for root, items in sorted(groups.items())
    )
    if len(text) <= SUBTILES_PLAIN_LIMIT:
        return text
    packed = SUBTILES_ZIP_PREFIX + base64.b64encode(zlib.compress(text.encode(), 9)).decode()
    return packed if len(packed) < len(text) else text


def decode_subtiles(value: Any) -> dict[str, set[str]]:
    """Inverse of :func:`encode_subtiles` (also the older ``{split, succeeded, failed}``
    lists): the ``split``, ``sub_done`` and ``sub_failed`` sets. Malformed text raises
    ``ValueError``."""
    out: dict[str, set[str]] = {attr: set() for _, attr in _STATES}
    if not value:
        return out
    if isinstance(value, dict):  # written by an operator before the grouped form
        out["split"] = {str(x) for x in value.get("split") or []}
        out["sub_done"] = {str(x) for x in value.get("succeeded") or []}
        out["sub_failed"] = {str(x) for x in value.get("failed") or []}
        return out
    text = str(value)
    if text.startswith(SUBTILES_ZIP_PREFIX):
        try:
            raw = base64.b64decode(text[len(SUBTILES_ZIP_PREFIX) :], validate=True)
            text = zlib.decompress(raw).decode()
        except (binascii.Error, zlib.error, UnicodeDecodeError) as exc:
            raise ValueError(f"bad compressed subtiles: {exc}") from None
    attr = dict(_STATES)
    for group in text.split(","):
        root, sep, items = group.partition(":")
        if not sep or not root or _GROUP_ITEMS.fullmatch(items) is None:
            raise ValueError(f"bad subtiles group {group[:60]!r}")
        for letter, path in _ITEM.findall(items):
            out[attr[letter]].add(
                root + "".join(f"-{path[i : i + 2]}" for i in range(0, len(path), 2))
            )
    return out


@dataclass
class Progress:
    """Completion state persisted in status."""

    completed: set[int] = field(default_factory=set)  # planned tile indexes
    failed: set[int] = field(default_factory=set)
    sub_done: set[str] = field(default_factory=set)  # sub-tile ids, while splits are open
    sub_failed: set[str] = field(default_factory=set)
    split: set[str] = field(default_factory=set)  # tile ids (planned or sub) that were split
    memory_retries: int = 0
    other_retries: int = 0
    disruptions: int = 0  # relaunches after disruptions: neither memory nor other retries
    peak_observed: int = 0

    @classmethod
    def from_status(cls, status: dict[str, Any] | None) -> Progress:
        s = status or {}
        sub = decode_subtiles(s.get("subtiles"))
        retries = s.get("retries") or {}
        return cls(
            completed=decode(s.get("completedTiles") or ""),
            failed=decode(s.get("failedTiles") or ""),
            sub_done=sub["sub_done"],
            sub_failed=sub["sub_failed"],
            split=sub["split"],
            memory_retries=int(retries.get("memory") or 0),
            other_retries=int(retries.get("other") or 0),
            disruptions=int(retries.get("disruptions") or 0),
            peak_observed=int((s.get("memory") or {}).get("peakObservedBytes") or 0),
        )

    def key(self) -> tuple[Any, ...]:
        return (
            frozenset(self.completed),
            frozenset(self.failed),
            frozenset(self.sub_done),
            frozenset(self.sub_failed),
            frozenset(self.split),
            self.memory_retries,
            self.other_retries,
            self.disruptions,
            self.peak_observed,
        )


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


class TileTree:
    """Planned tiles and their sub-tiles (pure navigation over the plan)."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.index = {t.id: i for i, t in enumerate(plan.tiles)}
        self._children: dict[str, list[Tile]] = {}
        self._tiles: dict[str, Tile] = {t.id: t for t in plan.tiles}
        self._root: dict[str, int] = dict(self.index)

    def children(self, tile: Tile) -> list[Tile]:
        if tile.id not in self._children:
            kids = split_tile(self.plan, tile) or []
            self._children[tile.id] = kids
            for k in kids:
                self._tiles[k.id] = k
                self._root[k.id] = self._root[tile.id]
        return self._children[tile.id]

    def tile(self, tile_id: str) -> Tile | None:
        return self._tiles.get(tile_id)

    def root(self, tile_id: str) -> int:
        return self._root[tile_id]


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
        if tid not in tree.index:
            continue
        i = tree.index[tid]
        states = list(_leaf_state(tree, tree.plan.tiles[i], p))
        if any(s == "open" for _, s in states):
            continue
        (p.failed if any(s == "failed" for _, s in states) else p.completed).add(i)
        prefix = f"{tid}-"
        p.split = {s for s in p.split if s != tid and not s.startswith(prefix)}
        p.sub_done = {s for s in p.sub_done if not s.startswith(prefix)}
        p.sub_failed = {s for s in p.sub_failed if not s.startswith(prefix)}


def open_leaves(tree: TileTree, p: Progress) -> Iterator[Tile]:
    """Open leaves in plan order: unresolved planned tiles, and the open sub-tiles of the
    split ones. The unresolved indexes come from set arithmetic (C speed), so a tick late in
    a 100,000-tile job does not walk every completed tile in Python."""
    n = len(tree.plan.tiles)
    unresolved: Iterable[int] = (
        sorted(set(range(n)).difference(p.completed, p.failed))
        if p.completed or p.failed
        else range(n)
    )
    tiles = tree.plan.tiles
    for i in unresolved:
        tile = tiles[i]
        if tile.id in p.split:
            for leaf, state in _leaf_state(tree, tile, p):
                if state == "open":
                    yield leaf
        elif tile.id not in p.sub_done and tile.id not in p.sub_failed:
            yield tile


def _mark(tree: TileTree, p: Progress, tile: Tile, outcome: str) -> None:
    if tile.id in tree.index and tile.id not in p.split:
        (p.completed if outcome == "done" else p.failed).add(tree.index[tile.id])
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
    # walking the open leaves makes every open sub-tile known to the tree by id
    open_ids = {t.id for t in open_leaves(tree, p)}
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
    open_after = list(open_leaves(tree, p))  # progress is final for this tick
    if not suspended:
        budget = max(0, parallelism - slots)
        for leaf in open_after:
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
    remaining = len(open_after)
    actions.running = slots
    actions.pending = max(0, remaining - slots)
    actions.finished = remaining == 0 and slots == 0
    return actions


def _backing_off(view: PodView, delay: float, now: float) -> bool:
    """Whether a finished pod's retry must still wait. The backoff counts from when the pod
    finished; a pod that tells no time at all (see :func:`pod_view`) is not waited for —
    counting from ``now`` would wait for ever."""
    return view.finished_at is not None and view.finished_at + delay > now


def _under_open_tile(tile_id: str, open_ids: set[str]) -> bool:
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
