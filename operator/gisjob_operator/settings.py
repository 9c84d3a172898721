"""Operator settings, from environment variables or command-line flags (never at import)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from .admission import (
    DEFAULT_ALLOWED_IMAGES,
    DEFAULT_ALLOWED_VOLUME_TYPES,
    PodPolicy,
    PolicyError,
)

# The pod policy's environment variables, by PodPolicy field.
POLICY_ENV = {
    "allowed_images": "GISJOB_ALLOWED_IMAGES",
    "allowed_volume_types": "GISJOB_ALLOWED_VOLUME_TYPES",
    "allowed_service_accounts": "GISJOB_ALLOWED_SERVICE_ACCOUNTS",
    "storage_secret": "GISJOB_STORAGE_SECRET",
}


def _env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value else default


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


def _env_list(name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    """Comma-separated; unset: ``default``, set but empty: none."""
    value = os.environ.get(name)
    if value is None:
        return default
    return tuple(item.strip() for item in value.split(",") if item.strip())


def pod_policy_from_env() -> PodPolicy:
    """The :class:`PodPolicy` from ``GISJOB_ALLOWED_IMAGES``, ``GISJOB_ALLOWED_VOLUME_TYPES``,
    ``GISJOB_ALLOWED_SERVICE_ACCOUNTS`` (comma-separated; unset: the defaults, empty: none)
    and ``GISJOB_STORAGE_SECRET``. An invalid setting raises ``ValueError`` naming its
    variable."""
    try:
        return PodPolicy(
            allowed_images=_env_list(POLICY_ENV["allowed_images"], DEFAULT_ALLOWED_IMAGES),
            allowed_volume_types=_env_list(
                POLICY_ENV["allowed_volume_types"], DEFAULT_ALLOWED_VOLUME_TYPES
            ),
            allowed_service_accounts=_env_list(POLICY_ENV["allowed_service_accounts"], ()),
            storage_secret=os.environ.get(POLICY_ENV["storage_secret"], "").strip(),
        )
    except PolicyError as exc:
        raise ValueError(f"{POLICY_ENV[exc.setting]}: {exc}") from None


@dataclass
class OperatorSettings:
    namespaces: list[str] = field(default_factory=list)  # empty: cluster-wide
    tick_seconds: float = 1.0  # how often each GisJob is reconciled
    status_interval: float = 2.0  # at most one status write per job per interval
    keep_failed_pods: int = 3  # failed worker pods kept per job for debugging
    backoff_base: float = 10.0  # seconds; doubles per retry
    backoff_max: float = 300.0
    metrics_port: int = 9090
    liveness_port: int = 8080
    planner_memory: int = 512 * 1024**2  # the planner pod's memory (request = limit)
    finalizer_memory: int = 512 * 1024**2  # the finalizer pod's memory
    plan_log_limit: int = 16 * 1024**2  # bytes of a planner pod's log read for its descriptor
    role_pod_retries: int = 5  # planner/finalizer pods retried this often after failures
    create_retries: int = 5  # pod creations failing with 5xx/429 in a row before Failed
    unschedulable_seconds: float = 600.0  # a tile no node can hold fails after this long
    max_tiles: int = 1_000_000  # the most tiles one job's plan may have (planner pods too)
    created_grace_seconds: float = 60.0  # count just-created pods until the watch sees them
    pod_policy: PodPolicy = field(default_factory=PodPolicy)  # what spec.worker may ask for

    @classmethod
    def from_env(cls) -> OperatorSettings:
        ns = os.environ.get("GISJOB_NAMESPACES", "")
        return cls(
            namespaces=[n.strip() for n in ns.split(",") if n.strip()],
            tick_seconds=_env_float("GISJOB_TICK_SECONDS", 1.0),
            status_interval=_env_float("GISJOB_STATUS_INTERVAL", 2.0),
            keep_failed_pods=_env_int("GISJOB_KEEP_FAILED_PODS", 3),
            backoff_base=_env_float("GISJOB_BACKOFF_BASE", 10.0),
            backoff_max=_env_float("GISJOB_BACKOFF_MAX", 300.0),
            metrics_port=_env_int("GISJOB_METRICS_PORT", 9090),
            liveness_port=_env_int("GISJOB_LIVENESS_PORT", 8080),
            unschedulable_seconds=_env_float("GISJOB_UNSCHEDULABLE_SECONDS", 600.0),
            max_tiles=_env_int("GISJOB_MAX_TILES", 1_000_000),
            planner_memory=_env_int("GISJOB_PLANNER_MEMORY_BYTES", 512 * 1024**2),
            finalizer_memory=_env_int("GISJOB_FINALIZER_MEMORY_BYTES", 512 * 1024**2),
            pod_policy=pod_policy_from_env(),
        )
