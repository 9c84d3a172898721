"""A small offline stage for the operator's controller: an in-memory API (``FakeKube``) and
helpers that finish pods the way real clusters leave them (with and without ``finishedAt``,
exit codes, termination messages). Imports nothing of the data stack, so it also runs in a
subprocess that checks the operator never loads GDAL, Arrow or NumPy."""

from __future__ import annotations

import copy
import json
from typing import Any

from prometheus_client import CollectorRegistry

from gisjob_operator.controller import Context, JobController
from gisjob_operator.kube import Kube
from gisjob_operator.metrics import OperatorMetrics
from gisjob_operator.pods import LABEL_ROLE
from gisjob_operator.settings import OperatorSettings

NAMESPACE = "team-a"
UID = "0b7c6f0e-0000-4000-8000-00000000c0de"
T0 = "2026-12-04T10:00:00Z"


class FakeKube(Kube):
    """The API as the controller uses it: pods, the job document's ConfigMaps, the job's
    status, events and pod logs."""

    def __init__(self, body: dict[str, Any]) -> None:
        self.body = body
        self.pods: dict[str, dict[str, Any]] = {}
        self.configmaps: dict[str, dict[str, Any]] = {}
        self.configmap_creates: list[str] = []  # every create call, 409s included
        self.configmaps_deleted: list[str] = []
        self.logs: dict[str, str] = {}
        self.events: list[tuple[str, str, str]] = []
        self.log_reads: list[str] = []
        self.deleted: list[str] = []
        self.status_writes = 0

    def create_pod(self, namespace: str, body: dict[str, Any]) -> bool:
        name = body["metadata"]["name"]
        if name in self.pods:
            return False
        pod = copy.deepcopy(body)
        pod["metadata"]["uid"] = f"uid-{name}"
        pod["status"] = {"phase": "Pending"}
        self.pods[name] = pod
        return True

    def create_configmap(self, namespace: str, body: dict[str, Any]) -> bool:
        name = body["metadata"]["name"]
        self.configmap_creates.append(name)
        if name in self.configmaps:
            return False
        self.configmaps[name] = copy.deepcopy(body)
        return True

    def delete_configmap(self, namespace: str, name: str) -> None:
        self.configmaps_deleted.append(name)
        self.configmaps.pop(name, None)

    def delete_pod(self, namespace: str, name: str) -> None:
        self.deleted.append(name)
        self.pods.pop(name, None)

    def read_pod_log(self, namespace: str, name: str, container: str, limit: int) -> str:
        self.log_reads.append(name)
        return self.logs.get(name, "")[:limit]

    def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self.status_writes += 1
        merged = {**(self.body.get("status") or {}), **json.loads(json.dumps(status))}
        self.body["status"] = {k: v for k, v in merged.items() if v is not None}

    def delete_job(self, namespace: str, name: str, finalizers: list[str]) -> None:
        self.body["deleted"] = True

    def post_event(
        self, namespace: str, job: dict[str, Any], type_: str, reason: str, message: str
    ) -> None:
        self.events.append((type_, reason, message))


class Stage:
    """One GisJob and the operator's controller ticking it against ``FakeKube``."""

    def __init__(self, spec: dict[str, Any], name: str = "cp-job", **settings: Any) -> None:
        body = {
            "apiVersion": "gisjob.dev/v1alpha1",
            "kind": "GisJob",
            "metadata": {"name": name, "namespace": NAMESPACE, "uid": UID, "generation": 1},
            "spec": spec,
        }
        self.kube = FakeKube(body)
        cfg = OperatorSettings(status_interval=0.0, backoff_base=0.0, backoff_max=0.0)
        for k, v in settings.items():
            setattr(cfg, k, v)
        metrics = OperatorMetrics(CollectorRegistry())
        self.ctx = Context(settings=cfg, kube=self.kube, metrics=metrics)

    @property
    def status(self) -> dict[str, Any]:
        return dict(self.kube.body.get("status") or {})

    def tick(self) -> str:
        pods = [copy.deepcopy(p) for p in self.kube.pods.values()]
        return JobController(self.ctx, copy.deepcopy(self.kube.body), pods).tick()

    def pods(self, role: str) -> list[dict[str, Any]]:
        return [
            p for p in self.kube.pods.values() if p["metadata"]["labels"].get(LABEL_ROLE) == role
        ]

    def finish(
        self,
        name: str,
        *,
        exit_code: int | None,
        message: str | None = None,
        reason: str | None = None,
        finished_at: str | None = T0,
        evicted: bool = False,
    ) -> None:
        """Finish a pod as a node reports it. ``evicted``: phase Failed, reason Evicted and
        no container state at all (no exit code, no finishedAt) — what real evictions
        leave."""
        pod = self.kube.pods[name]
        if evicted:
            pod["status"] = {
                "phase": "Failed",
                "reason": "Evicted",
                "message": "The node was low on resource: memory.",
            }
            return
        term: dict[str, Any] = {"exitCode": exit_code, "reason": reason or "Completed"}
        if finished_at:
            term["finishedAt"] = finished_at
        if message is not None:
            term["message"] = message
        pod["status"] = {
            "phase": "Succeeded" if exit_code == 0 else "Failed",
            "containerStatuses": [
                {"name": pod["spec"]["containers"][0]["name"], "state": {"terminated": term}}
            ],
        }

    def succeed_workers(self) -> int:
        """Every running worker pod succeeds with a worker-like result record."""
        n = 0
        for pod in self.pods("worker"):
            if pod["status"].get("phase") not in ("Pending", "Running"):
                continue
            env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
            record = {
                "tile": env["GISJOB_TILE"],
                "outcome": "succeeded",
                "exitCode": 0,
                "peakRssBytes": 100 << 20,
                "output": f"/data/out/tiles/{env['GISJOB_TILE']}.tif",
            }
            self.finish(pod["metadata"]["name"], exit_code=0, message=json.dumps(record))
            n += 1
        return n
