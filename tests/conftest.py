"""Project-wide pytest configuration (options must be registered at the root)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("gisjob-cluster", "gisjob cluster tests (tests/cluster)")
    group.addoption(
        "--use-existing-cluster",
        action="store_true",
        default=False,
        help=(
            "run cluster tests against the cluster in $KUBECONFIG (or ~/.kube/config) instead "
            "of starting the dev control plane; no test kubelet is started"
        ),
    )


@pytest.fixture(scope="session")
def helm() -> str:
    """The helm CLI from scripts/install-helm.sh (installed into ~/.cache/gisjob once;
    ``scripts/test.sh`` installs it before pytest, so CI cannot skip here)."""
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "install-helm.sh")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        pytest.skip(f"helm unavailable: {proc.stderr.strip() or 'install-helm.sh failed'}")
    return lines[-1]
