"""Operator metrics: a job's counters exist at 0 from its first tick, so the first OOM is an
increase Prometheus can see (a series born at 1 has no increase()); forgetting a job removes
its series."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from gisjob_operator.metrics import OperatorMetrics


def _lines(registry: CollectorRegistry, prefix: str) -> list[str]:
    text = generate_latest(registry).decode()
    return [ln for ln in text.splitlines() if ln.startswith(prefix)]


def test_counters_of_a_job_start_at_zero_on_its_first_tick() -> None:
    registry = CollectorRegistry()
    m = OperatorMetrics(registry)
    assert _lines(registry, "gisjob_operator_tile_oom_total") == []
    m.set_phase("ns", "j", "Running")
    assert _lines(registry, "gisjob_operator_tile_oom_total") == [
        'gisjob_operator_tile_oom_total{gisjob="j",namespace="ns"} 0.0'
    ]
    assert _lines(registry, "gisjob_operator_tile_retries_total") == [
        'gisjob_operator_tile_retries_total{gisjob="j",namespace="ns"} 0.0'
    ]
    m.oom.labels("ns", "j").inc()
    m.set_phase("ns", "j", "Running")  # later ticks keep the count
    assert _lines(registry, "gisjob_operator_tile_oom_total") == [
        'gisjob_operator_tile_oom_total{gisjob="j",namespace="ns"} 1.0'
    ]
    jobs = _lines(registry, "gisjob_operator_jobs{")
    assert 'gisjob_operator_jobs{gisjob="j",namespace="ns",phase="Running"} 1.0' in jobs
    assert len(jobs) == len(OperatorMetrics.PHASES)


def test_forget_job_removes_its_series() -> None:
    registry = CollectorRegistry()
    m = OperatorMetrics(registry)
    m.set_phase("ns", "j", "Succeeded")
    m.peak_memory.labels("ns", "j").set(1.0)
    m.forget_job("ns", "j")
    text = generate_latest(registry).decode()
    assert 'gisjob="j"' not in text
