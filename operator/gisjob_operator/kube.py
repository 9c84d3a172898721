"""Kubernetes API calls the reconciler makes (official client), counted and timed."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any, TypeVar, cast

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from gisjob_worker.spec import GROUP, VERSION

from .crd import PLURAL
from .metrics import OperatorMetrics

T = TypeVar("T")


class Rejected(Exception):
    """The API server refused to create an object (status code and its message)."""

    kind = "object"  # how messages name it: "pod", "ConfigMap"
    reason = "Object"  # the prefix of the job's condition and event reasons: "Pod…"

    def __init__(self, name: str, status: int, message: str) -> None:
        super().__init__(f"{self.kind} {name}: {status} {message}")
        self.name = name
        self.status = status
        self.message = message

    @property
    def over_quota(self) -> bool:
        """Forbidden by a ResourceQuota: the namespace is full for now, the object is fine."""
        return self.status == 403 and "exceeded quota" in self.message

    @property
    def permanent(self) -> bool:
        """The object itself is wrong (invalid, too large, forbidden by policy — not by a quota,
        not a conflict or throttling): retrying the same object cannot succeed."""
        if self.over_quota:
            return False
        return 400 <= self.status < 500 and self.status not in (408, 409, 429)


class PodRejected(Rejected):
    """The API server refused to create a pod."""

    kind = "pod"
    reason = "Pod"


class ConfigMapRejected(Rejected):
    """The API server refused to create the job document's ConfigMap."""

    kind = "ConfigMap"
    reason = "ConfigMap"


def api_message(exc: ApiException) -> str:
    """The API's one-line reason (its Status object's message), else the HTTP reason."""
    try:
        data = json.loads(exc.body or "")
    except (TypeError, ValueError):
        data = None
    text = data.get("message") if isinstance(data, dict) else None
    return " ".join(str(text or exc.reason or "no message").split())


class Kube:
    def __init__(self, api: client.ApiClient, metrics: OperatorMetrics) -> None:
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.metrics = metrics

    def _call(
        self, verb: str, resource: str, fn: Callable[[], T], ok: tuple[int, ...] = ()
    ) -> T | None:
        started = time.perf_counter()
        self.metrics.api_requests.labels(verb, resource).inc()
        try:
            return fn()
        except ApiException as exc:
            if exc.status in ok:
                return None
            self.metrics.api_errors.labels(verb, resource, str(exc.status)).inc()
            raise
        finally:
            self.metrics.api_seconds.labels(verb, resource).observe(time.perf_counter() - started)

    def create_pod(self, namespace: str, body: dict[str, Any]) -> bool:
        """Create a pod; False if it already exists (creation is idempotent). Raises
        :class:`PodRejected` with the API's own message when the API server refuses it."""
        try:
            result = self._call(
                "create",
                "pods",
                lambda: self.core.create_namespaced_pod(namespace, cast(Any, body)),
                ok=(409,),
            )
        except ApiException as exc:
            raise PodRejected(
                body["metadata"]["name"], int(exc.status or 0), api_message(exc)
            ) from None
        return result is not None

    def create_configmap(self, namespace: str, body: dict[str, Any]) -> bool:
        """Create a ConfigMap; False if it already exists (its name says what it holds).
        Raises :class:`ConfigMapRejected` with the API's own message when the API server
        refuses it."""
        try:
            result = self._call(
                "create",
                "configmaps",
                lambda: self.core.create_namespaced_config_map(namespace, cast(Any, body)),
                ok=(409,),
            )
        except ApiException as exc:
            raise ConfigMapRejected(
                body["metadata"]["name"], int(exc.status or 0), api_message(exc)
            ) from None
        return result is not None

    def delete_configmap(self, namespace: str, name: str) -> None:
        self._call(
            "delete",
            "configmaps",
            lambda: self.core.delete_namespaced_config_map(name, namespace),
            ok=(404,),
        )

    def delete_pod(self, namespace: str, name: str) -> None:
        self._call(
            "delete",
            "pods",
            lambda: self.core.delete_namespaced_pod(name, namespace),
            ok=(404,),
        )

    def read_pod_log(self, namespace: str, name: str, container: str, limit: int) -> str:
        """A pod's log (at most ``limit`` bytes): how a planner pod hands over a plan
        descriptor too large for its termination message."""
        text = self._call(
            "get",
            "pods/log",
            lambda: self.core.read_namespaced_pod_log(
                name, namespace, container=container, limit_bytes=limit
            ),
        )
        return str(text or "")

    def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self._call(
            "patch",
            "gisjobs/status",
            lambda: self.custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, PLURAL, name, {"status": status}
            ),
            ok=(404,),
        )

    def delete_job(self, namespace: str, name: str, finalizers: list[str]) -> None:
        """Delete a finished job (ttlSecondsAfterFinished). kopf's finalizer (its timers
        need one) is released first: nothing is left to clean up, and the deletion must not
        wait for kopf to notice it."""
        keep = [f for f in finalizers if not f.startswith("kopf.zalando.org/")]
        if keep != finalizers:
            self._call(
                "patch",
                "gisjobs",
                lambda: self.custom.patch_namespaced_custom_object(
                    GROUP, VERSION, namespace, PLURAL, name, {"metadata": {"finalizers": keep}}
                ),
                ok=(404,),
            )
        self._call(
            "delete",
            "gisjobs",
            lambda: self.custom.delete_namespaced_custom_object(
                GROUP,
                VERSION,
                namespace,
                PLURAL,
                name,
                body=client.V1DeleteOptions(propagation_policy="Background"),
            ),
            ok=(404,),
        )

    def post_event(
        self, namespace: str, job: dict[str, Any], type_: str, reason: str, message: str
    ) -> None:
        meta = job.get("metadata") or {}
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta.get('name', 'gisjob')}.", "namespace": namespace},
            "involvedObject": {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "GisJob",
                "name": meta.get("name"),
                "namespace": namespace,
                "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "reason": reason,
            "message": message[:1024],
            "type": type_,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
            "source": {"component": "gisjob-operator"},
            "reportingComponent": "gisjob-operator",
            "reportingInstance": "gisjob-operator",
        }
        try:
            self._call(
                "create",
                "events",
                lambda: self.core.create_namespaced_event(namespace, cast(Any, body)),
            )
        except ApiException:
            pass  # an event that cannot be posted must not stop reconciliation
