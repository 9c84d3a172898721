"""Fixtures for tests against a real Kubernetes API server.

By default one dev control plane (``devcluster.py``: etcd + kube-apiserver +
kube-controller-manager + test kubelet) is started for the session. With
``--use-existing-cluster`` the tests use ``$KUBECONFIG`` instead (no kubelet is
started: the cluster must run pods itself) and dev-only tests skip.

Every test here that uses the ``cluster`` fixture (directly or through another
fixture) gets the ``cluster`` marker; pure unit tests of the substrate do not.
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client as k8s

sys.path.insert(0, str(Path(__file__).resolve().parent))

from clusterutil import Api, ClusterHandle, new_client, unique, wait_for
from devcluster import ClusterError, DevCluster, find_binaries


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test here that uses the cluster (directly or through a fixture)."""
    here = Path(__file__).resolve().parent
    for item in items:
        uses_cluster = "cluster" in getattr(item, "fixturenames", ())
        if uses_cluster and here in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.cluster)


@pytest.fixture(scope="session")
def cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ClusterHandle]:
    """The cluster under test (session-scoped)."""
    if request.config.getoption("--use-existing-cluster"):
        kubeconfig = Path(os.environ.get("KUBECONFIG", str(Path.home() / ".kube" / "config")))
        if not kubeconfig.exists():
            pytest.fail(f"--use-existing-cluster: kubeconfig {kubeconfig} does not exist")
        yield ClusterHandle(kubeconfig=kubeconfig, dev=None)
        return
    try:
        bin_dir = find_binaries(build=os.environ.get("GISJOB_NO_BUILD") != "1")
    except ClusterError as e:
        pytest.skip(f"Kubernetes control-plane binaries unavailable: {e}")
    dev = DevCluster(
        tmp_path_factory.mktemp("devcluster"),
        bin_dir=bin_dir,
        kubelet_args=shlex.split(os.environ.get("GISJOB_KUBELET_ARGS", "")),
    )
    t0 = time.monotonic()
    try:
        dev.up()
    except ClusterError:
        dev.down(keep_state=True, keep_etcd_data=False)  # logs stay for the report
        raise
    print(f"\ndev cluster up in {time.monotonic() - t0:.1f}s: KUBECONFIG={dev.kubeconfig}")
    try:
        yield ClusterHandle(kubeconfig=dev.kubeconfig, dev=dev)
    finally:
        dev.down(keep_state=os.environ.get("GISJOB_KEEP_CLUSTER") == "1", keep_etcd_data=False)


@pytest.fixture(scope="session")
def api_client(cluster: ClusterHandle) -> k8s.ApiClient:
    return new_client(cluster.kubeconfig)


@pytest.fixture(scope="session")
def core(api_client: k8s.ApiClient) -> Api:
    api: Api = k8s.CoreV1Api(api_client)
    return api


@pytest.fixture
def dev_cluster(cluster: ClusterHandle) -> DevCluster:
    """The dev control plane itself (skips on --use-existing-cluster)."""
    if cluster.dev is None:
        pytest.skip("needs the dev control plane (not available with --use-existing-cluster)")
    dev: DevCluster = cluster.dev
    return dev


@pytest.fixture
def namespace(core: Api) -> Iterator[str]:
    """A fresh namespace whose `default` ServiceAccount exists; deleted afterwards."""
    name = unique("t")
    core.create_namespace({"metadata": {"name": name, "labels": {"gisjob.dev/test": "true"}}})
    wait_for(
        lambda: core.read_namespaced_service_account("default", name),
        timeout=30,
        what=f"default ServiceAccount in {name}",
    )
    yield name
    try:
        core.delete_namespace(name, propagation_policy="Background")
    except k8s.ApiException as e:
        if e.status != 404:
            raise
