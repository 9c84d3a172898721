"""kopf wiring: startup settings, the pod index, one reconcile timer per GisJob.

Handlers only gather what the watch has seen and hand it to :class:`JobController`; every
API write goes through the official client in :mod:`kube`. kopf's own event posting is
off (the reconciler posts its own events) and no finalizers are added: deleting a GisJob
removes its pods through their owner references.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

import kopf

from gisjob_worker.spec import GROUP, VERSION

from .crd import PLURAL
from .pods import LABEL_JOB

TICK_SECONDS = 1.0
log = logging.getLogger("gisjob.operator")


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: Any, **_: Any) -> None:
    """Settings from the environment, API client, metrics server — at startup, not import."""
    from kubernetes import client, config
    from prometheus_client import CollectorRegistry, start_http_server

    from .controller import Context
    from .kube import Kube
    from .metrics import OperatorMetrics
    from .settings import OperatorSettings

    cfg = OperatorSettings.from_env()
    settings.posting.enabled = False
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.error_backoffs = [1, 2, 5, 10]
    settings.execution.max_workers = 8
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config()  # type: ignore[no-untyped-call]
    api = client.ApiClient()
    registry = CollectorRegistry()
    metrics = OperatorMetrics(registry)
    start_http_server(cfg.metrics_port, registry=registry)
    memo.ctx = Context(settings=cfg, kube=Kube(api, metrics), metrics=metrics)


@kopf.index("", "v1", "pods", labels={LABEL_JOB: kopf.PRESENT})
def worker_pods(
    namespace: str | None, labels: Mapping[str, str], body: kopf.Body, **_: Any
) -> dict[tuple[str | None, str], dict[str, Any]]:
    """Worker pods by (namespace, job name), kept current by the watch."""
    return {(namespace, labels[LABEL_JOB]): _plain(body)}


def _plain(body: Any) -> dict[str, Any]:
    import copy

    return copy.deepcopy(dict(body))


@kopf.timer(GROUP, VERSION, PLURAL, interval=TICK_SECONDS, sharp=False)
def reconcile_gisjob(
    body: kopf.Body,
    namespace: str | None,
    name: str,
    memo: Any,
    **kwargs: Any,
) -> None:
    from .controller import JobController

    worker_pods: kopf.Index[tuple[str | None, str], dict[str, Any]] = kwargs["worker_pods"]
    ctx = memo.ctx
    started = time.perf_counter()
    pods = [dict(p) for p in worker_pods.get((namespace, name), [])]
    try:
        controller = JobController(ctx, _plain(body), pods)
        result = controller.tick()
    except Exception:
        ctx.metrics.reconciles.labels("error").inc()
        log.exception("reconcile of %s/%s failed; retrying next tick", namespace, name)
        return
    finally:
        ctx.metrics.reconcile_seconds.observe(time.perf_counter() - started)
    ctx.metrics.reconciles.labels(result).inc()
    ctx.metrics.set_phase(namespace or "", name, str(controller.status.get("phase") or "Pending"))


@kopf.on.event(GROUP, VERSION, PLURAL)
def forget(
    event: kopf.RawEvent, body: kopf.Body, namespace: str | None, name: str, memo: Any, **_: Any
) -> None:
    """Drop what this process remembered of a deleted job (its pods go by owner reference)
    and its per-job series (alerts on a job that no longer exists would never resolve).

    A watch-event handler, not ``on.delete``: a resource-changing handler would make kopf
    keep the whole spec in an annotation (last-handled-configuration), which fails for specs
    over 256 KiB and is not needed — the reconciler is level-triggered."""
    if event.get("type") != "DELETED":
        return
    uid = body.get("metadata", {}).get("uid")
    ctx = getattr(memo, "ctx", None)
    if ctx is not None and uid:
        ctx.jobs.pop(uid, None)
        ctx.metrics.forget_job(namespace or "", name)
