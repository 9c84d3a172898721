"""Small helpers for tests that talk to a cluster (dev control plane or real)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias, TypeVar

from devcluster import free_port
from kubernetes import client as k8s
from kubernetes import config as k8s_config

T = TypeVar("T")
# The kubernetes client's annotations want model objects for request bodies and
# make every response field Optional; tests pass plain dicts (which the client
# accepts) and read fields directly, so tests type API objects loosely.
Api: TypeAlias = Any
Obj: TypeAlias = Any
# On the dev cluster the image only selects a local environment (kubelet.py
# ImageRules); on a real cluster it must provide `sh` and `python3`.
TEST_IMAGE = "python:3.11-slim"


@dataclass
class ClusterHandle:
    """What cluster tests get: a kubeconfig and, on the dev cluster, its controller."""

    kubeconfig: Path
    dev: Any | None  # devcluster.DevCluster when the tests started the control plane

    @property
    def is_dev(self) -> bool:
        return self.dev is not None

    def api_client(self, kubeconfig: Path | None = None) -> k8s.ApiClient:
        return new_client(kubeconfig or self.kubeconfig)


def new_client(kubeconfig: Path) -> k8s.ApiClient:
    api: k8s.ApiClient = k8s_config.new_client_from_config(  # type: ignore[no-untyped-call]
        config_file=str(kubeconfig)
    )
    return api


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def wait_for(
    fn: Callable[[], T | None], timeout: float = 30.0, interval: float = 0.1, what: str = ""
) -> T:
    """Poll ``fn`` until it returns something truthy; return it or raise TimeoutError."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            value = fn()
            if value:
                return value
        except k8s.ApiException as e:
            last = e
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what or fn}: {last}")
        time.sleep(interval)


def pod_manifest(
    name: str,
    command: list[str],
    *,
    memory: str | None = None,
    env: list[dict[str, Any]] | None = None,
    volumes: list[dict[str, Any]] | None = None,
    mounts: list[dict[str, Any]] | None = None,
    grace: int | None = None,
    termination_message_path: str | None = None,
    image: str = TEST_IMAGE,
) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "main", "image": image, "command": command}
    if memory:
        container["resources"] = {
            "requests": {"memory": memory, "cpu": "10m"},
            "limits": {"memory": memory},
        }
    if env:
        container["env"] = env
    if mounts:
        container["volumeMounts"] = mounts
    if termination_message_path:
        container["terminationMessagePath"] = termination_message_path
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "containers": [container],
        "automountServiceAccountToken": False,
    }
    if volumes:
        spec["volumes"] = volumes
    if grace is not None:
        spec["terminationGracePeriodSeconds"] = grace
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


def wait_pod(
    core: Api,
    namespace: str,
    name: str,
    phases: tuple[str, ...] = ("Succeeded", "Failed"),
    timeout: float = 60.0,
) -> Obj:
    def check() -> Obj:
        pod = core.read_namespaced_pod(name, namespace)
        return pod if pod.status and pod.status.phase in phases else None

    return wait_for(check, timeout, 0.1, f"pod {namespace}/{name} in {phases}")


DEV_VOLUME_TYPES = (
    "persistentVolumeClaim", "configMap", "emptyDir", "ephemeral", "csi", "hostPath",
)  # fmt: skip
# a process in a mount namespace of its own (mounts it makes are invisible outside)
UNSHARE_MOUNT = ["unshare", "--mount", "--propagation", "private", "--"]


def can_hide_folders() -> str | None:
    """Why folders cannot be hidden from a process here (None: they can)."""
    try:
        out = subprocess.run(
            [
                *UNSHARE_MOUNT,
                "sh",
                "-c",
                "mount -t tmpfs gisjob-probe /mnt",
            ],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unshare not usable: {exc}"
    return None if out.returncode == 0 else f"no mount namespaces here: {out.stderr.strip()}"


def terminated(pod: Obj) -> Obj:
    """The first container's terminated state (asserts there is one)."""
    assert pod.status.container_statuses, pod.status
    state = pod.status.container_statuses[0].state
    assert state.terminated is not None, state
    return state.terminated


class OperatorProcess:
    """A ``gisjob-operator run`` process watching one namespace (tests and bench/operator.py).

    ``status_interval`` and ``backoff_base`` are short by default so tests finish quickly;
    ``backoff_base=None`` keeps the operator's own default."""

    def __init__(
        self,
        kubeconfig: Path,
        namespace: str,
        log: Path,
        *,
        status_interval: float = 1.0,
        backoff_base: float | None = 1.0,
        hide: tuple[Path, ...] = (),
        extra_env: dict[str, str] | None = None,
    ) -> None:
        """``hide``: folders the operator must not see — it runs in a mount namespace of its
        own with an empty tmpfs over each (the operator is a pure control plane)."""
        self.kubeconfig = kubeconfig
        self.hide = hide
        self.extra_env = dict(extra_env or {})
        self.namespace = namespace
        self.log = log
        self.status_interval = status_interval
        self.backoff_base = backoff_base
        self.metrics_port = free_port()
        self.liveness_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "PYTHONUNBUFFERED": "1",
            # the dev cluster's data lives in host folders: hostPath is allowed here (a
            # cluster's admin decision; the default policy refuses it)
            "GISJOB_ALLOWED_VOLUME_TYPES": ",".join(DEV_VOLUME_TYPES),
            **self.extra_env,
        }
        argv = [
            str(Path(sys.executable).parent / "gisjob-operator"),
            "run",
            "--namespace",
            self.namespace,
            "--metrics-port",
            str(self.metrics_port),
            "--liveness-port",
            str(self.liveness_port),
            "--status-interval",
            str(self.status_interval),
        ]
        if self.backoff_base is not None:
            argv += ["--backoff-base", str(self.backoff_base)]
        if self.hide:
            script = (
                'n=$1; shift; i=0; while [ "$i" -lt "$n" ]; do '
                'mount -t tmpfs -o size=64k,mode=0555 gisjob-hidden "$1" || exit 97; '
                'shift; i=$((i+1)); done; exec "$@"'
            )
            argv = [
                *UNSHARE_MOUNT,
                "sh",
                "-c",
                script,
                "sh",
                str(len(self.hide)),
                *map(str, self.hide),
                *argv,
            ]
        with open(self.log, "ab") as fh:
            self.proc = subprocess.Popen(
                argv, env=env, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL (a crash), waiting until it is gone."""
        if self.running():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.running():
            assert self.proc is not None
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def tail(self, chars: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""
