"""Reconcile one GisJob against the API (the side-effecting shell around :mod:`reconcile`).

Per tick: validate the spec with the worker's model, plan (cached per generation), read the
job's pods from the watch index, ask the pure reconciler what to do, then create pods,
write the status (coalesced: at most once per ``status_interval``), and only then delete the
pods whose outcome the status now holds. Finished jobs get a manifest and mosaic like local
runs, a terminal condition and an event; ``ttlSecondsAfterFinished`` deletes them.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gisjob_worker import finalize, policy
from gisjob_worker.errors import GisJobError, InputError, SpecError
from gisjob_worker.finalize import TileEntry
from gisjob_worker.plan import Plan, Tile
from gisjob_worker.planner import build_plan
from gisjob_worker.quantity import format_bytes
from gisjob_worker.ranges import compress
from gisjob_worker.spec import GisJob, parse_job

from .kube import Kube
from .metrics import OperatorMetrics
from .pods import PodLaunch, build_worker_pod, pod_name
from .reconcile import Actions, PodView, Progress, TileTree, now_iso, pod_view, reconcile
from .settings import OperatorSettings
from .status import TERMINAL, plan_status, progress_status, set_condition

log = logging.getLogger("gisjob.operator")
JOURNAL = "journal.jsonl"


@dataclass
class JobMemo:
    """What the operator remembers of one GisJob between ticks (lost on restart, by design:
    everything here can be recomputed from the API)."""

    generation: int | None = None
    job: GisJob | None = None
    plan: Plan | None = None
    tree: TileTree | None = None  # the plan's tile tree, reused by every tick
    error: str | None = None
    last_write: float = 0.0
    seq: int = 0
    status: dict[str, Any] | None = None  # the last status this process wrote
    created: dict[str, tuple[float, PodLaunch]] = field(default_factory=dict)


@dataclass
class Context:
    settings: OperatorSettings
    kube: Kube
    metrics: OperatorMetrics
    jobs: dict[str, JobMemo] = field(default_factory=dict)


def _document(body: dict[str, Any]) -> dict[str, Any]:
    meta = body.get("metadata") or {}
    return {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": {
            k: meta[k]
            for k in ("name", "namespace", "labels", "annotations")
            if meta.get(k) is not None
        },
        "spec": body.get("spec"),
    }


def _current_status(body: dict[str, Any], memo: JobMemo) -> dict[str, Any]:
    """The body's status, unless this process wrote a newer one the watch has not shown."""
    status = dict(body.get("status") or {})
    if memo.status is not None and int(status.get("reconcileSeq") or 0) < memo.seq:
        return dict(memo.status)
    memo.seq = max(memo.seq, int(status.get("reconcileSeq") or 0))
    return status


class JobController:
    def __init__(self, ctx: Context, body: dict[str, Any], pods: list[dict[str, Any]]) -> None:
        self.ctx = ctx
        self.body = body
        meta = body.get("metadata") or {}
        self.name: str = meta["name"]
        self.namespace: str = meta.get("namespace") or "default"
        self.uid: str = meta.get("uid") or ""
        self.generation: int | None = meta.get("generation")
        self.memo = ctx.jobs.setdefault(self.uid, JobMemo())
        self.status = _current_status(body, self.memo)
        self.pods = [
            p
            for p in pods
            if any(
                o.get("uid") == self.uid
                for o in (p.get("metadata") or {}).get("ownerReferences") or []
            )
        ]
        self.now = time.time()
        self.events: list[tuple[str, str, str]] = []

    # ----------------------------------------------------------------------------- API

    def event(self, type_: str, reason: str, message: str) -> None:
        self.events.append((type_, reason, message))

    def write_status(self, status: dict[str, Any]) -> bool:
        self.memo.seq += 1
        status = {**status, "reconcileSeq": self.memo.seq, "observedGeneration": self.generation}
        try:
            self.ctx.kube.patch_status(self.namespace, self.name, status)
        except Exception:
            log.exception("status write failed for %s/%s", self.namespace, self.name)
            self.memo.seq -= 1
            return False
        merged = {**self.status, **{k: v for k, v in status.items()}}
        self.memo.status = {k: v for k, v in merged.items() if v is not None}
        self.memo.last_write = self.now
        self.status = dict(self.memo.status)
        return True

    def flush_events(self) -> None:
        for type_, reason, message in self.events:
            self.ctx.kube.post_event(self.namespace, self.body, type_, reason, message)
        self.events.clear()

    # ------------------------------------------------------------------------ the tick

    def tick(self) -> str:
        try:
            return self._tick()
        finally:
            self.flush_events()

    def _fail(self, reason: str, message: str) -> str:
        """A permanent problem with the spec or its input: Failed, once, no retry loop."""
        if self.status.get("phase") == "Failed" and self.status.get("message") == message:
            return "failed"
        conditions = set_condition(
            self.status.get("conditions") or [],
            "Failed",
            "True",
            reason,
            message,
            now_iso(),
            self.generation,
        )
        self.write_status(
            {
                "phase": "Failed",
                "message": message,
                "conditions": conditions,
                "completionTime": now_iso(),
            }
        )
        self.event("Warning", reason, message)
        return "failed"

    def _tick(self) -> str:
        phase = self.status.get("phase")
        if phase in TERMINAL and self.status.get("observedGeneration") == self.generation:
            return self._after_finish()
        try:
            job = parse_job(_document(self.body), f"{self.namespace}/{self.name}")
        except SpecError as exc:
            return self._fail("InvalidSpec", str(exc))
        plan = self._plan(job)
        if plan is None:
            return "failed"
        if self.status.get("plan", {}).get("digest") not in (None, plan.digest):
            return self._replan(plan)
        if not self.status.get("plan"):
            return self._planned(job, plan)
        return self._run(job, plan)

    def _plan(self, job: GisJob) -> Plan | None:
        memo = self.memo
        if memo.plan is not None and memo.generation == self.generation:
            return memo.plan
        try:
            plan = build_plan(job)
        except (InputError, SpecError) as exc:
            self._fail("InvalidInput", str(exc))
            return None
        memo.generation, memo.job, memo.plan = self.generation, job, plan
        return plan

    def _planned(self, job: GisJob, plan: Plan) -> str:
        conditions = set_condition(
            self.status.get("conditions") or [],
            "Planned",
            "True",
            "Planned",
            f"{len(plan.tiles)} tiles, plan {plan.digest}",
            now_iso(),
            self.generation,
        )
        status = {
            "phase": "Running" if not job.spec.suspend else "Suspended",
            "plan": plan_status(plan),
            "conditions": conditions,
            "startTime": self.status.get("startTime") or now_iso(),
            **progress_status(plan, Progress(), None),
        }
        if self.write_status(status):
            self.event(
                "Normal",
                "Planned",
                f"{len(plan.tiles)} tiles of {plan.kind} operation {plan.operation}; per-tile "
                f"estimate up to {format_bytes(plan.max_estimate)}, memory request up to "
                f"{format_bytes(plan.max_request)} (headroom {plan.sizing.headroom:.0%}), "
                f"{format_bytes(sum(t.memory_request_bytes for t in plan.tiles))} in all",
            )
        return "planned"

    def _replan(self, plan: Plan) -> str:
        """The spec or the input changed what the outputs are: start over on the new plan."""
        for pod in self.pods:
            self.ctx.kube.delete_pod(self.namespace, pod["metadata"]["name"])
        self.memo.created.clear()
        old = self.status.get("plan", {}).get("digest")
        reset = {
            k: None
            for k in (
                "completedTiles",
                "failedTiles",
                "subtiles",
                "retries",
                "memory",
                "completionTime",
                "outputs",
                "message",
            )
        }
        conditions = [
            c
            for c in self.status.get("conditions") or []
            if c.get("type") not in ("Complete", "Failed")
        ]
        self.write_status({**reset, "plan": None, "phase": "Pending", "conditions": conditions})
        self.event(
            "Normal",
            "Replanned",
            f"the spec or input changed (plan {old} → {plan.digest}): replanning; "
            "tiles of the old plan are discarded",
        )
        return "replanned"

    # ----------------------------------------------------------------------- running

    def _views(self) -> list[PodView]:
        views = [v for v in (pod_view(p) for p in self.pods) if v is not None]
        seen = {v.name for v in views}
        grace = self.ctx.settings.created_grace_seconds
        for name, (at, launch) in list(self.memo.created.items()):
            if name in seen or self.now - at > grace:
                del self.memo.created[name]
                continue
            # created by us, not yet in the watch: it holds its slot and its tile
            views.append(
                PodView(
                    name=name,
                    tile=launch.tile,
                    attempt=launch.attempt,
                    phase="Pending",
                    memory=launch.memory,
                    chunk_scale=launch.chunk_scale,
                    strategy=launch.strategy,
                    history=launch.history,
                )
            )
        return views

    def _run(self, job: GisJob, plan: Plan) -> str:
        cfg = self.ctx.settings
        config = policy.PolicyConfig.from_spec(
            job.spec, backoff_base=cfg.backoff_base, backoff_max=cfg.backoff_max
        )
        suspended = job.spec.suspend
        process = self.now - self.memo.last_write >= cfg.status_interval
        actions = reconcile(
            plan,
            self.status,
            self._views(),
            config,
            job.spec.parallelism,
            self.now,
            process_finished=process,
            keep_failed=cfg.keep_failed_pods,
            suspended=suspended,
            tree=self._tree(plan),
        )
        digest = plan.digest
        for launch in actions.create:
            body = build_worker_pod(
                job,
                self.uid,
                self.namespace,
                launch,
                digest,
                baseline=(plan.kind, plan.sizing.baseline_bytes),
            )
            self.ctx.kube.create_pod(self.namespace, body)
            self.memo.created[pod_name(job.name, launch.tile, launch.attempt)] = (self.now, launch)
        if actions.records:
            self._journal(job, actions.records)
        self._count(actions)
        status = self._status(job, plan, actions, suspended)
        wrote = False
        if self._differs(status) and (process or actions.finished or self._phase_changed(status)):
            wrote = self.write_status(status)
        # deleting is safe once the status holds what the pods reported (or had nothing new)
        if wrote or not actions.changed:
            for name in actions.delete:
                self.ctx.kube.delete_pod(self.namespace, name)
        for e in actions.events:
            self.event(e.type, e.reason, e.message)
        return str(status.get("phase", "Running"))

    def _tree(self, plan: Plan) -> TileTree:
        if self.memo.tree is None or self.memo.tree.plan is not plan:
            self.memo.tree = TileTree(plan)
        return self.memo.tree

    def _count(self, actions: Actions) -> None:
        m = self.ctx.metrics
        if actions.memory_failures:
            m.oom.labels(self.namespace, self.name).inc(actions.memory_failures)
        before = Progress.from_status(self.status)
        if actions.progress.other_retries > before.other_retries:
            m.retries.labels(self.namespace, self.name).inc(
                actions.progress.other_retries - before.other_retries
            )

    def _phase_changed(self, status: dict[str, Any]) -> bool:
        return status.get("phase") != self.status.get("phase")

    def _differs(self, status: dict[str, Any]) -> bool:
        return any(self.status.get(k) != v for k, v in status.items())

    def _status(self, job: GisJob, plan: Plan, actions: Actions, suspended: bool) -> dict[str, Any]:
        st = progress_status(plan, actions.progress, actions)
        conditions = list(self.status.get("conditions") or [])
        now = now_iso()
        if suspended:
            phase = "Suspended"
            conditions = set_condition(
                conditions,
                "Suspended",
                "True",
                "Suspended",
                "spec.suspend is true: no pods run",
                now,
                self.generation,
            )
        elif actions.finished:
            return self._finish(job, plan, actions, st, conditions)
        else:
            phase = "Running"
            conditions = (
                set_condition(conditions, "Suspended", "False", "Resumed", "", now, self.generation)
                if any(c.get("type") == "Suspended" for c in conditions)
                else conditions
            )
            conditions = set_condition(
                conditions,
                "Running",
                "True",
                "TilesRunning",
                f"{st['tiles']['succeeded']}/{st['tiles']['total']} tiles done",
                now,
                self.generation,
            )
        m = self.ctx.metrics
        for key in ("pending", "running", "succeeded", "failed"):
            m.tiles.labels(self.namespace, self.name, key).set(st["tiles"][key])
        m.peak_memory.labels(self.namespace, self.name).set(actions.progress.peak_observed)
        return {**st, "phase": phase, "conditions": conditions}

    def _finish(
        self,
        job: GisJob,
        plan: Plan,
        actions: Actions,
        st: dict[str, Any],
        conditions: list[dict[str, Any]],
    ) -> dict[str, Any]:
        failed = st["tiles"]["failed"]
        now = now_iso()
        manifest_path, note = self._finalize(job, plan, actions.progress)
        conditions = set_condition(
            conditions, "Running", "False", "Finished", "", now, self.generation
        )
        if failed:
            ranges = compress(actions.progress.failed)  # readable even when status has a bitmap
            shown = ranges if len(ranges) <= 200 else ranges[:200].rsplit(",", 1)[0] + ",..."
            message = f"{failed} of {st['tiles']['total']} tiles failed: {shown}"
            conditions = set_condition(
                conditions, "Failed", "True", "TilesFailed", message, now, self.generation
            )
            phase = "Failed"
            self.event("Warning", "Failed", message + note)
        else:
            message = f"all {st['tiles']['total']} tiles succeeded"
            conditions = set_condition(
                conditions, "Complete", "True", "Completed", message, now, self.generation
            )
            phase = "Succeeded"
            self.event("Normal", "Completed", message + note)
        for key in ("pending", "running", "succeeded", "failed"):
            self.ctx.metrics.tiles.labels(self.namespace, self.name, key).set(st["tiles"][key])
        out = {
            **st,
            "phase": phase,
            "conditions": conditions,
            "message": message,
            "completionTime": now,
        }
        if manifest_path:
            out["outputs"] = {"manifest": manifest_path}
        return out

    # ------------------------------------------------------------------ journal, finalize

    def _journal(self, job: GisJob, records: list[dict[str, Any]]) -> None:
        path = Path(job.spec.output.uri) / ".gisjob" / JOURNAL
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a", encoding="utf-8") as fh:
                for r in records:
                    fh.write(
                        json.dumps(
                            {
                                "digest": self.memo.plan.digest if self.memo.plan else None,
                                "record": r,
                            }
                        )
                        + "\n"
                    )
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            log.warning("cannot write the journal %s: %s", path, exc)

    def _finalize(self, job: GisJob, plan: Plan, p: Progress) -> tuple[str | None, str]:
        out_dir = Path(job.spec.output.uri)
        try:
            entries = manifest_entries(plan, p, _read_journal(out_dir, plan.digest), out_dir)
            finalize.finalize_outputs(job.name, plan, out_dir, entries)
        except (OSError, GisJobError) as exc:
            return None, f" (no manifest: the operator cannot write {out_dir}: {exc})"
        return str(out_dir / finalize.MANIFEST), f"; manifest {out_dir / finalize.MANIFEST}"

    def _after_finish(self) -> str:
        """A finished job: clean up succeeded pods, honour ttlSecondsAfterFinished."""
        for pod in self.pods:
            view = pod_view(pod)
            if view is not None and view.phase == "Succeeded" and not view.deleting:
                self.ctx.kube.delete_pod(self.namespace, view.name)
        ttl = (self.body.get("spec") or {}).get("ttlSecondsAfterFinished")
        done = self.status.get("completionTime")
        if ttl is not None and done:
            from .reconcile import _parse_time

            finished = _parse_time(done)
            if finished is not None and self.now >= finished + int(ttl):
                finalizers = list((self.body.get("metadata") or {}).get("finalizers") or [])
                self.ctx.kube.delete_job(self.namespace, self.name, finalizers)
                return "deleted"
        return str(self.status.get("phase"))


def _read_journal(out_dir: Path, digest: str) -> list[dict[str, Any]]:
    path = out_dir / ".gisjob" / JOURNAL
    records: dict[tuple[str, int], dict[str, Any]] = {}
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        try:
            d = json.loads(line)
        except ValueError:
            continue
        r = d.get("record") or {}
        if d.get("digest") == digest and "tile" in r:
            records[(r["tile"], int(r.get("attempt", 0)))] = r  # duplicates after restarts
    return [records[k] for k in sorted(records)]


def manifest_entries(
    plan: Plan, p: Progress, records: list[dict[str, Any]], out_dir: Path
) -> list[tuple[Tile, TileEntry]]:
    """Manifest entries for every planned tile and every sub-tile the journal mentions."""
    tree = TileTree(plan)
    by_tile: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by_tile.setdefault(r["tile"], []).append(r)
    # ids with a descendant in the journal: every prefix of a recorded id that ends before a
    # "-" (one set, so finalize stays linear in the tiles instead of scanning per tile)
    ancestors = {k[:i] for k in by_tile for i, ch in enumerate(k) if ch == "-"}
    entries: list[tuple[Tile, TileEntry]] = []

    def visit(tile: Tile, parent: str | None, resolved: str) -> None:
        recs = by_tile.get(tile.id, [])
        last = recs[-1] if recs else {}
        kids = tree.children(tile) if tile.id in ancestors else []
        if kids and (not recs or last.get("exitCode") != 0):
            outcome = "split"
        elif last.get("exitCode") == 0 and last.get("output"):
            outcome = "succeeded"
        else:
            outcome = resolved if resolved != "succeeded" else "failed"
        entry = TileEntry(
            id=tile.id,
            outcome=outcome,
            parent=parent,
            error=last.get("error"),
            peak_rss_bytes=last.get("peakRssBytes"),
            memory_request_bytes=tile.memory_request_bytes,
            estimated_peak_bytes=tile.estimated_peak_bytes,
            attempts=recs,
        )
        if outcome == "succeeded":
            try:
                entry.output, entry.bytes, entry.mtime_ns = finalize.stat_output(
                    out_dir, last["output"]
                )
            except OSError:
                entry.outcome, entry.error = "failed", f"output {last['output']} is missing"
        entries.append((tile, entry))
        if outcome == "split":
            for k in kids:
                visit(k, tile.id, resolved)

    for i, tile in enumerate(plan.tiles):
        resolved = "succeeded" if i in p.completed else ("failed" if i in p.failed else "pending")
        visit(tile, None, resolved)
    return entries
