"""Reconcile one GisJob against the API (the side-effecting shell around :mod:`reconcile`).

The operator is a pure control plane: it reads no dataset, mounts no data volume and holds
no storage credentials. Per tick: validate the spec's shape, get the plan from the job's
planner pod (a compact descriptor in its termination message or log; tiles are laid again
by the worker package's pure functions), read the job's pods from the watch index, ask the
pure reconciler what to do, then create pods, write the status (coalesced: at most once per
``status_interval``), and only then delete the pods whose outcome the status now holds. When
every tile is resolved a finalizer pod writes the manifest and mosaic from the ledger in the
output location; its result decides the terminal phase. ``ttlSecondsAfterFinished`` deletes
finished jobs.

Pods read the job document from a ConfigMap (:func:`pods.build_job_configmap`), created
before the first pod that mounts it: one per job and document, so a changed document gets a
new one, and the old ones are deleted once no pod of the job mounts them (all go with the
GisJob through their owner reference). A document too large for a ConfigMap fails the job
(``SpecTooLarge``) before any pod exists.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from gisjob_worker import plandesc, policy
from gisjob_worker.errors import SpecError
from gisjob_worker.plan import Plan
from gisjob_worker.quantity import format_bytes, to_quantity
from gisjob_worker.ranges import compress, decode
from gisjob_worker.spec import GisJob, parse_job

from .admission import AdmissionError, check_job
from .kube import Kube, Rejected
from .metrics import OperatorMetrics
from .pods import (
    ANNOTATION_DIGEST,
    ANNOTATION_SPEC,
    LABEL_ROLE,
    ROLE_FINALIZER,
    ROLE_PLANNER,
    JobDocumentTooLarge,
    PodLaunch,
    build_finalizer_pod,
    build_job_configmap,
    build_planner_pod,
    build_worker_pod,
    configmap_of,
    pod_name,
    spec_hash,
)
from .podview import PodView, parse_time, pod_view
from .progress import Progress
from .reconcile import Actions, TileTree, now_iso, reconcile
from .rolepods import FINISHED_PHASES, RoleStep, role_pods, role_step
from .settings import OperatorSettings
from .status import TERMINAL, plan_status, progress_status, set_condition

log = logging.getLogger("gisjob.operator")


@dataclass
class JobMemo:
    """What the operator remembers of one GisJob between ticks (lost on restart, by design:
    everything here can be recomputed from the API)."""

    spec_key: str | None = None  # spec_hash of the spec the plan was made for
    plan: Plan | None = None
    tree: TileTree | None = None  # the plan's tile tree, reused by every tick
    last_write: float = 0.0
    seq: int = 0
    status: dict[str, Any] | None = None  # the last status this process wrote
    created: dict[str, tuple[float, PodLaunch]] = field(default_factory=dict)
    # planned tiles the planner found complete in the output location (a resumed job)
    complete: set[int] = field(default_factory=set)
    # when this process first saw a planner/finalizer pod finished (pods may lack finishedAt)
    seen_finished: dict[str, float] = field(default_factory=dict)
    # pod creations that failed with 5xx/429 in a row, and when to try again
    create_failures: int = 0
    create_retry_at: float = 0.0
    unschedulable_reported: set[str] = field(default_factory=set)  # pods with an Event
    # the job document's ConfigMap: for which document (a hash of the body's), its name,
    # its manifest until it is created, or why there cannot be one (too large)
    document_key: str = ""
    document_name: str = ""
    document_body: dict[str, Any] | None = None
    document_error: str = ""
    # this job's document ConfigMaps known to exist: name -> when it was last the current one
    configmaps: dict[str, float] = field(default_factory=dict)
    configmaps_deleted: set[str] = field(default_factory=set)  # not to be learnt again


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
        except Rejected as exc:
            return self._rejected(exc)
        finally:
            self.flush_events()

    def _create(self, body: dict[str, Any]) -> bool:
        """Create a pod (it exists afterwards, or already did) unless creations are backing
        off after server errors (False); a refusal (:class:`kube.PodRejected`) goes up to
        :meth:`tick`."""
        if self.now < self.memo.create_retry_at:
            return False
        self.ctx.kube.create_pod(self.namespace, body)
        self.memo.create_failures = 0
        return True

    def _rejected(self, exc: Rejected) -> str:
        """The API server refused a pod (or the job document's ConfigMap). An object that is
        itself wrong (4xx: invalid, too large, forbidden by policy) fails the job at once
        with the API's message (reason ``PodRejected``, ``ConfigMapRejected``); server errors
        and throttling are retried with backoff, then fail; a full ResourceQuota is waited
        for (with backoff and an event each time). Returns ``error``: the tick did not do its
        work (operator metrics and the reconcile-error alert count it)."""
        cfg = self.ctx.settings
        what = f"the API server rejected {exc.kind} {exc.name} ({exc.status}): {exc.message}"
        if exc.permanent:
            self._fail(f"{exc.reason}Rejected", what)
            return "error"
        self.memo.create_failures += 1
        if not exc.over_quota and self.memo.create_failures >= cfg.create_retries:
            self._fail(f"{exc.reason}CreateFailed", f"{what} ({self.memo.create_failures} tries)")
            return "error"
        delay = policy.backoff(self.memo.create_failures, cfg.backoff_base, cfg.backoff_max)
        if exc.over_quota:  # room may come back any moment: keep looking every few ticks
            delay = min(delay, 10 * cfg.tick_seconds)
        self.memo.create_retry_at = self.now + delay
        self.event("Warning", f"{exc.reason}CreateRetry", f"{what}; retrying in {delay:g} s")
        return "error"

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
            job = parse_job(
                _document(self.body), f"{self.namespace}/{self.name}", check_operation=False
            )
        except SpecError as exc:
            return self._fail("InvalidSpec", str(exc))
        try:  # every tick: spec.worker may change without a new plan
            check_job(job, self.ctx.settings.pod_policy)
        except AdmissionError as exc:
            return self._fail(exc.reason, str(exc))
        if self._document_configmap(job) is None:
            if self.memo.document_error:
                return self._fail("SpecTooLarge", self.memo.document_error)
            return str(self.status.get("phase") or "Pending")  # backing off: next tick
        plan = self._plan(job)
        if plan is None:
            return str(self.status.get("phase") or "Planning")
        if self.status.get("plan", {}).get("digest") not in (None, plan.digest):
            return self._replan(plan)
        if not self.status.get("plan"):
            return self._planned(job, plan)
        return self._run(job, plan)

    # ----------------------------------------------------------------- the job document

    def _document_configmap(self, job: GisJob) -> str | None:
        """The name of the ConfigMap holding this job's document, created if this process does
        not know it to exist; None when there is none to mount: the document is too large
        (``memo.document_error`` says so) or creations are backing off after server errors.
        A refusal (:class:`kube.ConfigMapRejected`) goes up to :meth:`tick`. Then the job's
        ConfigMaps of earlier documents that no pod needs any more are deleted."""
        memo = self.memo
        key = hashlib.sha256(
            json.dumps(_document(self.body), sort_keys=True, default=str).encode()
        ).hexdigest()
        if memo.document_key != key:  # a new document (or the first tick): built once
            memo.document_key, memo.document_name, memo.document_error = key, "", ""
            try:
                memo.document_body = build_job_configmap(job, self.uid, self.namespace)
            except JobDocumentTooLarge as exc:
                memo.document_body, memo.document_error = None, str(exc)
                return None
            memo.document_name = memo.document_body["metadata"]["name"]
        if memo.document_error:
            return None
        name = memo.document_name
        if name not in memo.configmaps:
            memo.configmaps_deleted.discard(name)  # wanted again (a terminal job edited)
            if self.now < memo.create_retry_at:
                return None
            body = memo.document_body or build_job_configmap(job, self.uid, self.namespace)
            self.ctx.kube.create_configmap(self.namespace, body)  # False: it exists, fine
            memo.create_failures = 0
        memo.document_body = None  # kept only until created
        memo.configmaps[name] = self.now
        self._delete_unused_documents(name)
        return name

    def _delete_unused_documents(self, current: str | None) -> None:
        """Delete this job's document ConfigMaps that are not ``current`` and that no pod of
        the job still needs (a pod needs its volumes until it has finished), once they have
        not been current for a while (a pod created from one may not be in the watch yet).
        Those this process did not create are learnt from the pods that mount them; what a
        restarted process never saw goes with the GisJob (owner reference)."""
        memo = self.memo
        needed: set[str] = set()
        for pod in self.pods:
            name = configmap_of(pod)
            if not name or name in memo.configmaps_deleted:
                continue
            memo.configmaps.setdefault(name, self.now)
            if (pod.get("status") or {}).get("phase") not in FINISHED_PHASES:
                needed.add(name)
        grace = self.ctx.settings.created_grace_seconds
        for name, current_at in list(memo.configmaps.items()):
            if name == current or name in needed or self.now - current_at < grace:
                continue
            self.ctx.kube.delete_configmap(self.namespace, name)
            del memo.configmaps[name]
            memo.configmaps_deleted.add(name)

    # ------------------------------------------------------------- role pods (plan, finalize)

    def _role_step(self, pods: list[dict[str, Any]], create: Any, what: str) -> RoleStep:
        """Decide (:func:`rolepods.role_step`) and carry out the step for planner or
        finalizer pods: delete the failed attempts, create the next, say why."""
        cfg = self.ctx.settings
        newest = pods[-1]["metadata"]["name"] if pods else ""
        phase = (pods[-1].get("status") or {}).get("phase") if pods else None
        first_seen = (
            self.memo.seen_finished.setdefault(newest, self.now)
            if phase in FINISHED_PHASES
            else self.now
        )
        step = role_step(
            pods, what, self.now, first_seen, cfg.role_pod_retries, cfg.backoff_base,
            cfg.backoff_max,
        )  # fmt: skip
        for name in step.delete:
            self.ctx.kube.delete_pod(self.namespace, name)
        if step.create is not None:
            self._create(create(step.create))
        if step.retry:
            self.event("Warning", f"{what.capitalize()}Retry", step.message)
        return step

    def _plan(self, job: GisJob) -> Plan | None:
        """The plan for this spec: remembered, or from the planner pod (started if needed)."""
        memo = self.memo
        key = spec_hash(job)
        if memo.plan is not None and memo.spec_key == key:
            return memo.plan
        cfg = self.ctx.settings
        pods = role_pods(self.pods, ROLE_PLANNER, ANNOTATION_SPEC, key)
        step = self._role_step(
            pods,
            lambda n: build_planner_pod(
                job,
                self.uid,
                self.namespace,
                key,
                n,
                cfg.planner_memory,
                cfg.max_tiles,
                configmap=self.memo.document_name,
            ),
            "planner",
        )
        if step.state == "running":
            self._planning(step.message)
            return None
        record = step.record
        if step.state == "failed":
            reason = "InvalidInput" if (record or {}).get("exitCode") == 2 else "PlanningFailed"
            self._fail(reason, step.message)
            return None
        assert record is not None
        try:
            plan = self._read_descriptor(pods[-1], record)
        except plandesc.DescriptorError as exc:
            self._fail("PlanningFailed", f"planner pod {pods[-1]['metadata']['name']}: {exc}")
            return None
        memo.plan, memo.spec_key = plan, key  # _tree() lays a new tree for a new plan
        for pod in self.pods:  # planner pods of earlier specs are done with
            meta = pod.get("metadata") or {}
            if (meta.get("labels") or {}).get(LABEL_ROLE) == ROLE_PLANNER and (
                meta.get("annotations") or {}
            ).get(ANNOTATION_SPEC) != key:
                self.ctx.kube.delete_pod(self.namespace, meta["name"])
        return plan

    def _read_descriptor(self, pod: dict[str, Any], record: dict[str, Any]) -> Plan:
        text = record.get("descriptor")
        if not text:
            name = pod["metadata"]["name"]
            logged = self.ctx.kube.read_pod_log(
                self.namespace, name, ROLE_PLANNER, self.ctx.settings.plan_log_limit
            )
            text = plandesc.find_in_log(logged)
            if not text:
                raise plandesc.DescriptorError(
                    f"no plan descriptor in the log of {name} (read "
                    f"{len(logged)} bytes, limit {self.ctx.settings.plan_log_limit})"
                )
        data = plandesc.decode(str(text), record.get("sha256"))
        plan = plandesc.from_descriptor(data, self.ctx.settings.max_tiles)
        self.memo.complete = decode(str(data.get("complete") or ""))
        return plan

    def _planning(self, message: str) -> None:
        """Phase Planning (before the first plan) with a Planned=False condition saying why."""
        if self.status.get("plan"):
            return  # a new spec is being planned; the status keeps the current plan's view
        conditions = set_condition(
            self.status.get("conditions") or [],
            "Planned",
            "False",
            "Planning",
            message,
            now_iso(),
            self.generation,
        )
        status = {"phase": "Planning", "conditions": conditions}
        if self._differs(status) and self.now - self.memo.last_write >= 1.0:
            self.write_status({**status, "startTime": self.status.get("startTime") or now_iso()})

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
            **progress_status(plan, Progress(completed=set(self.memo.complete)), None),
        }
        if self.write_status(status):
            if self.memo.complete:
                self.event(
                    "Normal",
                    "Resumed",
                    f"{len(self.memo.complete)} of {len(plan.tiles)} tiles are already complete "
                    "in the output location for this plan: not run again",
                )
            self.event(
                "Normal",
                "Planned",
                f"{len(plan.tiles)} tiles of {plan.kind} operation {plan.operation}; per-tile "
                f"estimate up to {format_bytes(plan.max_estimate)}, memory request up to "
                f"{format_bytes(plan.max_request)} (headroom {plan.sizing.headroom:.0%}), "
                f"{format_bytes(plan.sum_requests)} in all",
            )
        return "planned"

    def _replan(self, plan: Plan) -> str:
        """The spec or the input changed what the outputs are: start over on the new plan."""
        for pod in self.pods:
            role = ((pod.get("metadata") or {}).get("labels") or {}).get(LABEL_ROLE)
            if role != ROLE_PLANNER:
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
        first_seen = self.memo.seen_finished
        names = {p["metadata"]["name"] for p in self.pods}
        for gone in [n for n in first_seen if n not in names]:
            del first_seen[gone]
        views = []
        for p in self.pods:
            finished = (p.get("status") or {}).get("phase") in FINISHED_PHASES
            name = p["metadata"]["name"]
            view = pod_view(p, first_seen.setdefault(name, self.now) if finished else None)
            if view is not None:
                views.append(view)
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
            unschedulable_seconds=cfg.unschedulable_seconds,
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
                plan=plan,
                configmap=self.memo.document_name,
            )
            if not self._create(body):
                break  # backing off after server errors: the next tick decides again
            self.memo.created[pod_name(job.name, launch.tile, launch.attempt)] = (self.now, launch)
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
        self._report_unschedulable(actions)
        return str(status.get("phase", "Running"))

    def _report_unschedulable(self, actions: Actions) -> None:
        """An Event (once per pod) for a tile no node can hold, naming it and its request."""
        reported = self.memo.unschedulable_reported
        alive = {v.name for v in actions.unschedulable}
        reported.intersection_update(alive)
        for view in actions.unschedulable:
            if view.name in reported:
                continue
            reported.add(view.name)
            self.event(
                "Warning",
                "Unschedulable",
                f"tile {view.tile} (pod {view.name}) requests {to_quantity(view.memory)} of "
                f"memory and no node can hold it: {view.unschedulable}; it fails after "
                f"{self.ctx.settings.unschedulable_seconds:g} s",
            )

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
        if actions.unschedulable:
            first = actions.unschedulable[0]
            more = len(actions.unschedulable) - 1
            conditions = set_condition(
                conditions,
                "Unschedulable",
                "True",
                "Unschedulable",
                f"tile {first.tile} requests {to_quantity(first.memory)}: {first.unschedulable}"
                + (f" (and {more} more tiles)" if more else ""),
                now,
                self.generation,
            )
        elif any(c.get("type") == "Unschedulable" for c in conditions):
            conditions = set_condition(
                conditions, "Unschedulable", "False", "Scheduled", "", now, self.generation
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
        """Every tile resolved: the finalizer pod writes the manifest and mosaic from the
        ledger; until it has, the job stays Running (Finalizing)."""
        cfg = self.ctx.settings
        progress = actions.progress
        completed, failed_ranges = compress(progress.completed), compress(progress.failed)
        step = self._role_step(
            role_pods(self.pods, ROLE_FINALIZER, ANNOTATION_DIGEST, plan.digest),
            lambda n: build_finalizer_pod(
                job,
                self.uid,
                self.namespace,
                plan.digest,
                n,
                cfg.finalizer_memory,
                completed,
                failed_ranges,
                configmap=self.memo.document_name,
            ),
            "finalizer",
        )
        now = now_iso()
        state, record, why = step.state, step.record, step.message
        if state == "running":
            conditions = set_condition(
                conditions, "Running", "True", "Finalizing", why, now, self.generation
            )
            return {**st, "phase": "Running", "conditions": conditions}
        for key in ("pending", "running", "succeeded", "failed"):
            self.ctx.metrics.tiles.labels(self.namespace, self.name, key).set(st["tiles"][key])
        conditions = set_condition(
            conditions, "Running", "False", "Finished", "", now, self.generation
        )
        failed = st["tiles"]["failed"]
        manifest = (record or {}).get("manifest") if state == "done" else None
        note = f"; manifest {manifest}" if manifest else ""
        if state == "failed":
            message = f"finalizing failed: {why}"
            conditions = set_condition(
                conditions, "Failed", "True", "FinalizeFailed", message, now, self.generation
            )
            phase = "Failed"
            self.event("Warning", "FinalizeFailed", message)
        elif failed:
            ranges = compress(progress.failed)  # readable even when status has a bitmap
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
        out = {
            **st,
            "phase": phase,
            "conditions": conditions,
            "message": message,
            "completionTime": now,
        }
        if manifest:
            out["outputs"] = {"manifest": manifest}
        return out

    def _after_finish(self) -> str:
        """A finished job: clean up succeeded pods and the job document's ConfigMaps no
        running pod needs, honour ttlSecondsAfterFinished."""
        self._delete_unused_documents(None)
        for pod in self.pods:
            meta = pod.get("metadata") or {}
            if (pod.get("status") or {}).get("phase") == "Succeeded" and not meta.get(
                "deletionTimestamp"
            ):
                self.ctx.kube.delete_pod(self.namespace, meta["name"])
        ttl = (self.body.get("spec") or {}).get("ttlSecondsAfterFinished")
        done = self.status.get("completionTime")
        if ttl is not None and done:
            finished = parse_time(done)
            if finished is not None and self.now >= finished + int(ttl):
                finalizers = list((self.body.get("metadata") or {}).get("finalizers") or [])
                self.ctx.kube.delete_job(self.namespace, self.name, finalizers)
                return "deleted"
        return str(self.status.get("phase"))
