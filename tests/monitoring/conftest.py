"""Fixtures for the monitoring tests (Prometheus rules, Grafana dashboard, real scrapes)."""

from __future__ import annotations

from pathlib import Path

import pytest
from promutil import Unavailable, binaries


@pytest.fixture(scope="session")
def prometheus_binaries() -> tuple[Path, Path]:
    """(prometheus, promtool) from Debian's package; installs it once, skips if it cannot."""
    try:
        return binaries()
    except Unavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def promtool(prometheus_binaries: tuple[Path, Path]) -> Path:
    return prometheus_binaries[1]
