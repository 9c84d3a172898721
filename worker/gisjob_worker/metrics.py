"""Worker metrics (Prometheus, prefix ``gisjob_worker_``, base units, registry injectable).

Live values (RSS, cgroup, GDAL cache) are read at scrape time; counters and the chunk-duration
histogram are updated per chunk. Served on a port while the worker runs, and optionally pushed
once at exit to a Pushgateway (grouping key ``gisjob``/``tile``) because scrapes miss short peaks.
A worker may also linger after its tile until it has been scraped once more
(:class:`MetricsServer` counts the scrapes it has sent), so the final peak and counters
reach Prometheus.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app

if TYPE_CHECKING:
    from wsgiref.types import StartResponse

from . import gdalenv
from .cgroup import current as current_cgroup
from .guard import peak_rss_bytes, rss_bytes

PREFIX = "gisjob_worker"
LABELS = ("gisjob", "tile")
CHUNK_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def _cgroup_value(attr: str) -> Callable[[], float]:
    def read() -> float:
        cg = current_cgroup()
        value = getattr(cg, attr) if cg is not None else None
        return float(value) if value is not None else float("nan")

    return read


def _cache_value(attr: str) -> Callable[[], float]:
    def read() -> float:
        cache = gdalenv.rasterio_cache()
        return float(getattr(cache, attr)) if cache is not None else float("nan")

    return read


class WorkerMetrics:
    def __init__(self, registry: CollectorRegistry, job: str, tile: str) -> None:
        self.registry = registry
        labels = {"gisjob": job, "tile": tile}

        def gauge(name: str, doc: str, fn: Callable[[], float] | None = None) -> Gauge:
            g = Gauge(f"{PREFIX}_{name}", doc, LABELS, registry=registry)
            child = g.labels(**labels)
            if fn is not None:
                child.set_function(fn)
            return child

        gauge(
            "resident_memory_bytes", "Resident set size of the worker", lambda: float(rss_bytes())
        )
        gauge(
            "peak_resident_memory_bytes",
            "High-water mark of the worker's RSS",
            lambda: float(peak_rss_bytes()),
        )
        gauge(
            "cgroup_memory_usage_bytes",
            "Memory usage of the worker's cgroup",
            _cgroup_value("usage"),
        )
        gauge(
            "cgroup_memory_limit_bytes",
            "Memory limit of the worker's cgroup (NaN: none)",
            _cgroup_value("limit"),
        )
        gauge(
            "cgroup_memory_peak_bytes", "Peak memory of the worker's cgroup", _cgroup_value("peak")
        )
        gauge(
            "gdal_cache_used_bytes",
            "GDAL block cache in use (rasterio's libgdal)",
            _cache_value("used"),
        )
        gauge(
            "gdal_cache_max_bytes",
            "GDAL block cache size (rasterio's libgdal)",
            _cache_value("max"),
        )
        self.budget = gauge("memory_budget_bytes", "Memory budget (request = limit) of the tile")
        self.ceiling = gauge("memory_soft_ceiling_bytes", "Soft ceiling the guard enforces")
        self.estimate = gauge("estimated_peak_bytes", "Peak memory the model predicted")
        self.chunks = Counter(
            f"{PREFIX}_chunks", "Chunks processed", LABELS, registry=registry
        ).labels(**labels)
        self.bytes_read = Counter(
            f"{PREFIX}_read_bytes", "Bytes of input data read", LABELS, registry=registry
        ).labels(**labels)
        self.bytes_written = Counter(
            f"{PREFIX}_written_bytes", "Bytes of output written", LABELS, registry=registry
        ).labels(**labels)
        self.chunk_seconds = Histogram(
            f"{PREFIX}_chunk_duration_seconds",
            "Time per chunk",
            LABELS,
            buckets=CHUNK_BUCKETS,
            registry=registry,
        ).labels(**labels)
        self.memory_failures = Counter(
            f"{PREFIX}_memory_ceiling_hits",
            "Chunks refused by the memory guard",
            LABELS,
            registry=registry,
        ).labels(**labels)


class ScrapeTracker:
    """Counts the scrapes a metrics server has finished sending."""

    def __init__(self) -> None:
        self._count = 0
        self._cond = threading.Condition()

    def served(self) -> None:
        with self._cond:
            self._count += 1
            self._cond.notify_all()

    @property
    def count(self) -> int:
        with self._cond:
            return self._count

    def wait_next(self, timeout: float) -> bool:
        """Wait until one more scrape has been sent (at most ``timeout`` s); True if it was."""
        deadline = time.monotonic() + timeout
        with self._cond:
            seen = self._count
            while self._count == seen:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True


class _Sent:
    """A WSGI response body whose ``close()`` (called once the body is written) counts it."""

    def __init__(self, body: Iterable[bytes], done: Callable[[], None]) -> None:
        self._body = body
        self._done = done

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._body)

    def close(self) -> None:
        self._done()


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class MetricsServer:
    """The registry served over HTTP on a daemon thread, counting finished scrapes."""

    def __init__(self, registry: CollectorRegistry, port: int, addr: str = "0.0.0.0") -> None:
        self.scrapes = ScrapeTracker()
        app = make_wsgi_app(registry)

        def counted(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
            return _Sent(app(environ, start_response), self.scrapes.served)

        self._server = make_server(
            addr, port, counted, server_class=_ThreadingServer, handler_class=_Quiet
        )
        self.port = int(self._server.server_port)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def push(registry: CollectorRegistry, url: str, job: str, tile: str) -> None:
    from prometheus_client import push_to_gateway

    push_to_gateway(
        url,
        job="gisjob_worker",
        grouping_key={"gisjob": job, "tile": tile},
        registry=registry,
        timeout=10,
    )
