"""The metrics server behind ``--metrics-linger``: counts the scrapes it has finished sending."""

from __future__ import annotations

import threading
import time
import urllib.request

from prometheus_client import CollectorRegistry, Gauge

from gisjob_worker.metrics import MetricsServer, ScrapeTracker


def _server() -> MetricsServer:
    registry = CollectorRegistry()
    Gauge("x_bytes", "x", registry=registry).set(1)
    return MetricsServer(registry, 0, "127.0.0.1")


def _scrape(server: MetricsServer) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5) as r:
        return str(r.read().decode())


def test_each_scrape_counts_once_after_it_is_sent() -> None:
    server = _server()
    try:
        assert server.scrapes.count == 0
        body = _scrape(server)
        _scrape(server)
        assert server.scrapes.count == 2
        assert "x_bytes 1.0" in body.splitlines()
    finally:
        server.close()


def test_the_waiter_wakes_only_after_the_body_was_sent() -> None:
    """The worker exits right after ``wait_next``: the scraper must already have everything."""
    server = _server()
    bodies: list[str] = []
    try:
        scraper = threading.Timer(0.2, lambda: bodies.append(_scrape(server)))
        scraper.start()
        assert server.scrapes.wait_next(10.0) is True
        scraper.join(5)
        assert bodies and "x_bytes 1.0" in bodies[0].splitlines()
    finally:
        server.close()


def test_wait_next_times_out_without_a_scrape() -> None:
    tracker = ScrapeTracker()
    t0 = time.monotonic()
    assert tracker.wait_next(0.2) is False
    assert time.monotonic() - t0 >= 0.2


def test_wait_next_returns_on_the_next_scrape_not_an_earlier_one() -> None:
    tracker = ScrapeTracker()
    tracker.served()  # an earlier scrape does not satisfy the wait
    timer = threading.Timer(0.3, tracker.served)
    timer.start()
    t0 = time.monotonic()
    try:
        assert tracker.wait_next(10.0) is True
    finally:
        timer.join()
    assert 0.25 <= time.monotonic() - t0 < 5.0
