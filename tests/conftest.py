"""Project-wide pytest configuration (options must be registered at the root)."""

from __future__ import annotations

import pytest


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
