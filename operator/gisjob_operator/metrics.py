"""Operator metrics (``gisjob_operator_*``), registry injectable for tests."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

PREFIX = "gisjob_operator"


class OperatorMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.reconciles = Counter(
            f"{PREFIX}_reconciles", "Reconcile ticks", ["result"], registry=registry
        )
        self.reconcile_seconds = Histogram(
            f"{PREFIX}_reconcile_duration_seconds",
            "Time per reconcile tick",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=registry,
        )
        self.tiles = Gauge(
            f"{PREFIX}_tiles",
            "Tiles by phase",
            ["namespace", "gisjob", "phase"],
            registry=registry,
        )
        self.oom = Counter(
            f"{PREFIX}_tile_oom",
            "Out-of-memory failures of tiles (exit 3 or OOMKilled)",
            ["namespace", "gisjob"],
            registry=registry,
        )
        self.retries = Counter(
            f"{PREFIX}_tile_retries",
            "Tile retries after non-memory failures",
            ["namespace", "gisjob"],
            registry=registry,
        )
        self.api_requests = Counter(
            f"{PREFIX}_api_requests",
            "Kubernetes API requests made by the reconciler",
            ["verb", "resource"],
            registry=registry,
        )
        self.api_errors = Counter(
            f"{PREFIX}_api_errors",
            "Kubernetes API requests that failed",
            ["verb", "resource", "code"],
            registry=registry,
        )
        self.api_seconds = Histogram(
            f"{PREFIX}_api_request_duration_seconds",
            "Kubernetes API request latency",
            ["verb", "resource"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=registry,
        )
        self.jobs = Gauge(
            f"{PREFIX}_jobs",
            "GisJobs by phase",
            ["namespace", "gisjob", "phase"],
            registry=registry,
        )
        self.peak_memory = Gauge(
            f"{PREFIX}_job_peak_memory_bytes",
            "Largest worker peak memory observed",
            ["namespace", "gisjob"],
            registry=registry,
        )

    PHASES = ("Pending", "Running", "Succeeded", "Failed", "Suspended")
    TILE_PHASES = ("pending", "running", "succeeded", "failed")

    def set_phase(self, namespace: str, job: str, phase: str) -> None:
        """Every tick of a job. Also creates the job's counters at 0: a series that first
        appears at 1 shows no increase() (alerts on the first OOM would never fire)."""
        for p in self.PHASES:
            self.jobs.labels(namespace, job, p).set(1.0 if p == phase else 0.0)
        self.oom.labels(namespace, job)
        self.retries.labels(namespace, job)

    def forget_job(self, namespace: str, job: str) -> None:
        for p in self.PHASES:
            self.jobs.remove(namespace, job, p)
        for p in self.TILE_PHASES:
            self.tiles.remove(namespace, job, p)
        for m in (self.oom, self.retries, self.peak_memory):
            m.remove(namespace, job)
