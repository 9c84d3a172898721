#!/usr/bin/env python3
"""Test kubelet (and one-node scheduler) for the dev cluster.

No container runtime: each pod bound to the node runs its first container's
``command`` + ``args`` as a local process group. What it does, like a kubelet:

* registers a Ready Node, renews its Lease every 10 s, refreshes node status;
* binds unscheduled pods (``schedulerName: default-scheduler``) whose memory
  request fits the node's remaining allocatable; others get
  ``PodScheduled=False/Unschedulable`` and a ``FailedScheduling`` event;
* volumes → local directories: hostPath as is, emptyDir per pod, PVC per claim,
  configMap/secret/downwardAPI/projected materialized as files (read from the API server
  with the kubelet's own credentials; a missing ConfigMap or Secret leaves the pod Pending
  with its container Waiting ``ContainerCreating`` and a ``FailedMount`` event, retried
  until it appears). Mount paths (and the termination-message path) that appear in
  command, args, env values and workingDir are rewritten to the local directories ("path
  translation": ``GISJOB_JOB_FILE=/etc/gisjob/job.yaml`` names the file in the pod's
  ``/etc/gisjob`` volume directory);
* ``envFrom`` and ``env[].valueFrom`` ConfigMaps and Secrets are read from the API
  server with the kubelet's own credentials (Secret ``data`` base64-decoded; ``env``
  wins over ``envFrom``); a missing one, or a missing key, leaves the pod Pending with
  its container Waiting (``CreateContainerConfigError``) and a ``Failed`` event, retried
  until it appears;
* the image maps to a local command environment through rules (see ImageRules);
  by default ``<repo>/.venv/bin`` is prepended to PATH;
* ``limits.memory`` is enforced with a memory cgroup (v1 or v2), created under
  the kubelet's own cgroup; OOM kills are reported as ``OOMKilled``/137;
* the termination message is read from the local file the container wrote
  (``GISJOB_RESULT_PATH`` and ``TERMINATION_MESSAGE_PATH`` point at it, and the
  original path is rewritten in args/env), truncated to 4096 bytes;
* pod deletion → SIGTERM to the process group, SIGKILL after the grace period,
  then the pod is removed (``gracePeriodSeconds=0``);
* survives API-server restarts (re-list + re-watch; failed writes are retried);
* serves container logs over HTTPS on its kubelet port (``/containerLogs/ns/pod/container``
  with ``limitBytes`` and ``tailLines``), so ``kubectl logs`` and the API's ``pods/log``
  work as on a real node (the operator reads large plan descriptors that way).

API writes per pod: 1 binding, 1 status patch when running, 1 when terminated,
1 final delete if it was deleted while running.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime as dt
import fnmatch
import heapq
import json
import logging
import os
import platform
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import urllib3
import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.watch.watch import iter_resp_lines

REPO = Path(__file__).resolve().parent.parent.parent
log = logging.getLogger("test-kubelet")

Obj = dict[str, Any]
SA_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
MAX_MESSAGE = 4096
POD_IP = "127.0.0.1"
CGROUP_NAME = "gisjob-kubelet"
TERMINAL = ("Succeeded", "Failed")
# What the kubelet accepts as a variable name from envFrom (validation.IsEnvVarName)
ENV_VAR_NAME = re.compile(r"[-._a-zA-Z][-._a-zA-Z0-9]*")
# Node annotation telling tests how limits.memory is enforced: cgroup-v1 | cgroup-v2 | none
MEMORY_ANNOTATION = "gisjob.dev/memory-limits"


# --------------------------------------------------------------------------- helpers

_SUFFIX = {
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
    "n": 10**-9,
    "u": 10**-6,
    "m": 10**-3,
    "": 1,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "E": 10**18,
}
_QTY = re.compile(r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?$")


def parse_quantity(q: str | int | float) -> float:
    """A Kubernetes resource quantity ("100Mi", "0.5", "250m") as a number."""
    if isinstance(q, int | float):
        return float(q)
    m = _QTY.match(q.strip())
    if not m:
        raise ValueError(f"bad quantity {q!r}")
    return float(m.group(1)) * _SUFFIX[m.group(2) or ""]


def now_rfc3339() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def pod_key(pod: Obj) -> str:
    md = pod["metadata"]
    return f"{md['namespace']}/{md['name']}"


def memory_request(pod: Obj) -> int:
    """Effective memory request like the scheduler: sum over containers, at least
    the largest init container's."""
    spec = pod.get("spec", {})

    def req(c: Obj) -> int:
        res = c.get("resources") or {}
        v = (res.get("requests") or {}).get("memory") or (res.get("limits") or {}).get("memory")
        return int(parse_quantity(v)) if v else 0

    total = sum(req(c) for c in spec.get("containers", []))
    init = max((req(c) for c in spec.get("initContainers") or []), default=0)
    return max(total, init)


def _json(resp: Any) -> Obj:
    data = resp.data if hasattr(resp, "data") else resp
    out: Obj = json.loads(data) if data else {}
    return out


def _status_code(exc: BaseException) -> int | None:
    if isinstance(exc, k8s.ApiException):
        return int(exc.status) if exc.status else None
    return None


# --------------------------------------------------------------------------- images


@dataclass
class ImageRule:
    match: str = "*"
    path_prepend: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    entrypoint: list[str] | None = None  # image ENTRYPOINT, used when no `command`
    cmd: list[str] | None = None  # image CMD, used when neither command nor args
    command_prefix: list[str] = field(default_factory=list)
    working_dir: str | None = None


@dataclass
class ImageRules:
    """Maps a container image to a local environment. File format (JSON/YAML)::

        images:
          - match: "registry.example/gisjob*"   # fnmatch on the image reference
            pathPrepend: ["{repo}/.venv/bin"]    # {repo} = this repository
            env: {FOO: bar}
            entrypoint: ["gisjob"]               # image ENTRYPOINT (no `command` given)
            cmd: []                              # image CMD
            commandPrefix: []                    # prepended to the final argv
            workingDir: null
        inheritEnv: [HOME, LANG]                 # host variables passed through

    Rules are tried in order, then the built-in defaults: images containing
    ``gisjob`` have entrypoint ``gisjob``; every image gets ``{repo}/.venv/bin``
    prepended to PATH.
    """

    rules: list[ImageRule]
    inherit_env: list[str]

    @classmethod
    def default_rules(cls) -> list[ImageRule]:
        venv = str(REPO / ".venv" / "bin")
        # the real image measures the worker's import baseline at build time (GISJOB_CACHE);
        # here pods share the machine's measured one, as the image's pods share the baked one
        cache = os.environ.get("GISJOB_CACHE") or os.path.join(
            os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "gisjob"
        )
        return [
            ImageRule(
                match="*gisjob*",
                path_prepend=[venv],
                entrypoint=["gisjob"],
                env={"GISJOB_CACHE": cache},
            ),
            ImageRule(match="*", path_prepend=[venv]),
        ]

    @classmethod
    def load(cls, source: str | None) -> ImageRules:
        data: Obj = {}
        if source:
            text = Path(source).read_text() if not source.lstrip().startswith("{") else source
            data = yaml.safe_load(text) or {}

        def sub(v: Any) -> Any:
            if isinstance(v, str):
                return v.replace("{repo}", str(REPO))
            if isinstance(v, list):
                return [sub(x) for x in v]
            if isinstance(v, dict):
                return {k: sub(x) for k, x in v.items()}
            return v

        rules = [
            ImageRule(
                match=r.get("match", "*"),
                path_prepend=sub(r.get("pathPrepend", [])),
                env=sub(r.get("env", {})),
                entrypoint=sub(r.get("entrypoint")),
                cmd=sub(r.get("cmd")),
                command_prefix=sub(r.get("commandPrefix", [])),
                working_dir=sub(r.get("workingDir")),
            )
            for r in data.get("images", [])
        ]
        inherit = data.get("inheritEnv", ["HOME", "LANG", "LC_ALL", "TZ", "TMPDIR"])
        return cls(rules + cls.default_rules(), list(inherit))

    def resolve(self, image: str) -> ImageRule:
        for r in self.rules:
            if fnmatch.fnmatchcase(image, r.match):
                return r
        return ImageRule()


# --------------------------------------------------------------------------- cgroups


class MemoryCgroups:
    """Per-pod memory cgroups under the kubelet's own memory cgroup (v1 or v2)."""

    def __init__(self, version: int, base: Path) -> None:
        self.version = version
        self.base = base

    @classmethod
    def detect(cls, root: Path = Path("/sys/fs/cgroup"), keep: bool = True) -> MemoryCgroups | None:
        """The first usable place for pod cgroups, or None. ``keep=False`` only
        probes: it removes the directory it created."""
        try:
            lines = Path("/proc/self/cgroup").read_text().splitlines()
        except OSError:
            return None
        v1_path = v2_path = None
        for line in lines:
            hid, ctrls, path = line.split(":", 2)
            if "memory" in ctrls.split(","):
                v1_path = path
            elif hid == "0" and ctrls == "":
                v2_path = path
        candidates: list[tuple[int, Path]] = []
        if v1_path is not None and (root / "memory" / "memory.limit_in_bytes").exists():
            own = root / "memory" / v1_path.lstrip("/")
            candidates += [(1, own / CGROUP_NAME), (1, root / "memory" / CGROUP_NAME)]
        if v2_path is not None and (root / "cgroup.controllers").exists():
            candidates.append((2, root / CGROUP_NAME))
        for version, base in candidates:
            existed = base.exists()
            try:
                cls._prepare(version, base)
                probe = base / f"probe-{os.getpid()}"
                probe.mkdir(exist_ok=True)
                try:
                    limit = probe / ("memory.limit_in_bytes" if version == 1 else "memory.max")
                    limit.write_text(str(64 * 2**20))
                finally:
                    probe.rmdir()
            except OSError as e:
                log.debug("cgroup v%d at %s not usable: %s", version, base, e)
                ok = False
            else:
                ok = True
            if not existed and (not ok or not keep):
                with contextlib.suppress(OSError):
                    base.rmdir()
            if ok:
                return cls(version, base)
        return None

    @staticmethod
    def _prepare(version: int, base: Path) -> None:
        base.mkdir(exist_ok=True)
        if version == 2:
            ctl = base.parent / "cgroup.subtree_control"
            if "memory" not in ctl.read_text().split():
                ctl.write_text("+memory")
            sub = base / "cgroup.subtree_control"
            if "memory" not in sub.read_text().split():
                sub.write_text("+memory")

    def create(self, name: str, limit: int | None) -> Path:
        if not self.base.exists():  # removed by another kubelet's shutdown
            self._prepare(self.version, self.base)
        path = self.base / name
        path.mkdir(exist_ok=True)
        if self.version == 1:
            if limit is not None:
                (path / "memory.limit_in_bytes").write_text(str(limit))
                memsw = path / "memory.memsw.limit_in_bytes"
                if memsw.exists():
                    memsw.write_text(str(limit))  # no swapping past the limit
            with contextlib.suppress(OSError):
                (path / "memory.swappiness").write_text("0")
        else:
            if limit is not None:
                (path / "memory.max").write_text(str(limit))
                with contextlib.suppress(OSError):
                    (path / "memory.swap.max").write_text("0")
            with contextlib.suppress(OSError):
                (path / "memory.oom.group").write_text("1")
        return path

    def oom_kills(self, path: Path) -> int:
        fname = "memory.oom_control" if self.version == 1 else "memory.events"
        try:
            for line in (path / fname).read_text().splitlines():
                k, _, v = line.partition(" ")
                if k == "oom_kill":
                    return int(v)
        except (OSError, ValueError):
            pass
        return 0

    def peak(self, path: Path) -> int | None:
        fname = "memory.max_usage_in_bytes" if self.version == 1 else "memory.peak"
        try:
            return int((path / fname).read_text())
        except (OSError, ValueError):
            return None

    @staticmethod
    def procs(path: Path) -> list[int]:
        try:
            return [int(p) for p in (path / "cgroup.procs").read_text().split()]
        except (OSError, ValueError):
            return []

    def remove(self, path: Path) -> None:
        for _ in range(50):
            pids = self.procs(path)
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            try:
                path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.05)
        log.warning("could not remove cgroup %s", path)


# --------------------------------------------------------------------------- runtime


@dataclass
class Runtime:
    """What the kubelet knows about one pod it runs."""

    uid: str
    key: str
    dir: Path
    proc: subprocess.Popen[bytes] | None = None
    cgroup: Path | None = None
    started_at: str | None = None
    start_time: str | None = None  # pod status.startTime
    finished_at: str | None = None
    exit_code: int | None = None
    reason: str | None = None
    message: str | None = None
    restart_count: int = 0
    last_state: Obj = field(default_factory=dict)
    restart_at: float | None = None
    reported: str = ""  # "", "running:<n>", "terminated:<n>"
    term_sent_at: float | None = None
    kill_at: float | None = None
    log_path: Path | None = None
    term_path: Path | None = None
    container: Obj = field(default_factory=dict)
    pending_result: bool = False  # process exited, result not yet collected

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None and self.exit_code is None


_NO_RUNTIME = Runtime("", "", Path("/"))


class StartError(Exception):
    def __init__(self, reason: str, message: str, retry: bool = False) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.retry = retry


class Kubelet:
    def __init__(
        self,
        kubeconfig: str,
        root_dir: Path,
        node_name: str,
        memory: int | None,
        cpu: str | None,
        max_pods: int,
        images: ImageRules,
        use_cgroups: bool = True,
    ) -> None:
        self.kubeconfig = kubeconfig
        self.root = root_dir.resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.node_name = node_name
        self.images = images
        self.max_pods = max_pods
        self.api = _client(kubeconfig)
        self.watch_api = _client(kubeconfig)
        # Raw dict bodies and _preload_content=False everywhere: no model (de)serialization.
        self.core: Any = k8s.CoreV1Api(self.api)
        self.coord: Any = k8s.CoordinationV1Api(self.api)
        self.server = str(self.api.configuration.host)
        ca = self.api.configuration.ssl_ca_cert
        self.ca_pem = Path(ca).read_bytes() if ca else b""
        mem_total = _mem_total()
        self.capacity = {
            "cpu": str(os.cpu_count() or 1),
            "memory": f"{mem_total // 1024}Ki",
            "pods": str(max_pods),
            "ephemeral-storage": f"{shutil.disk_usage(self.root).total // 1024}Ki",
        }
        alloc_mem = memory if memory is not None else max(mem_total - 512 * 2**20, 2**30)
        self.allocatable = dict(self.capacity)
        self.allocatable["memory"] = f"{alloc_mem // 1024}Ki"
        if cpu:
            self.allocatable["cpu"] = cpu
        self.alloc_memory = alloc_mem
        self.cgroups = MemoryCgroups.detect() if use_cgroups else None
        self.memory_enforcement = f"cgroup-v{self.cgroups.version}" if self.cgroups else "none"
        if self.cgroups is None:
            log.warning("no writable memory cgroup: limits.memory will NOT be enforced")
        else:
            log.info("memory cgroups v%d under %s", self.cgroups.version, self.cgroups.base)
        self.pods: dict[str, Obj] = {}
        self.runtimes: dict[str, Runtime] = {}
        self.assumed: dict[str, int] = {}  # uid -> memory bound by us, not yet seen bound
        self.sched_msgs: dict[str, str] = {}  # uid -> last FailedScheduling message
        self.waiting_msgs: dict[str, str] = {}  # uid -> last waiting message reported
        self.lock = threading.RLock()
        self.cond = threading.Condition(self.lock)
        self.queue: list[tuple[float, str]] = []
        self.queued: dict[str, float] = {}
        self.stopping = threading.Event()
        self.api_calls = 0
        self.started = now_rfc3339()
        self.log_port = 0
        self._log_server: ThreadingHTTPServer | None = None

    # ------------------------------------------------------------------ queue
    def enqueue(self, uid: str, delay: float = 0.0) -> None:
        at = time.monotonic() + delay
        with self.cond:
            prev = self.queued.get(uid)
            if prev is not None and prev <= at:
                return
            self.queued[uid] = at
            heapq.heappush(self.queue, (at, uid))
            self.cond.notify()

    def _next(self) -> str | None:
        with self.cond:
            while not self.stopping.is_set():
                now = time.monotonic()
                while self.queue and self.queued.get(self.queue[0][1]) != self.queue[0][0]:
                    heapq.heappop(self.queue)  # superseded entry
                if self.queue and self.queue[0][0] <= now:
                    _, uid = heapq.heappop(self.queue)
                    self.queued.pop(uid, None)
                    return uid
                timeout = self.queue[0][0] - now if self.queue else 1.0
                self.cond.wait(timeout=min(timeout, 1.0))
        return None

    # ------------------------------------------------------------------ node
    @property
    def labels(self) -> dict[str, str]:
        return {
            "kubernetes.io/hostname": self.node_name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": _arch(),
            "beta.kubernetes.io/os": "linux",
            "beta.kubernetes.io/arch": _arch(),
        }

    def node_body(self) -> Obj:
        uname = platform.uname()
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.node_name,
                "labels": self.labels,
                "annotations": {
                    "gisjob.dev/test-kubelet": "true",
                    MEMORY_ANNOTATION: self.memory_enforcement,
                },
            },
            "spec": {},
            "status": self.node_status(uname.release),
        }

    def node_status(self, kernel: str | None = None) -> Obj:
        now = now_rfc3339()

        def cond(t: str, status: str, reason: str, msg: str) -> Obj:
            return {
                "type": t,
                "status": status,
                "reason": reason,
                "message": msg,
                "lastHeartbeatTime": now,
                "lastTransitionTime": self.started,
            }

        return {
            "capacity": self.capacity,
            "allocatable": self.allocatable,
            "conditions": [
                cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "ok"),
                cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "ok"),
                cond("PIDPressure", "False", "KubeletHasSufficientPID", "ok"),
                cond(
                    "Ready", "True", "KubeletReady", "gisjob test kubelet is posting ready status"
                ),
            ],
            "addresses": [
                {"type": "InternalIP", "address": POD_IP},
                {"type": "Hostname", "address": self.node_name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.log_port}},
            "nodeInfo": {
                "machineID": _read("/etc/machine-id"),
                "systemUUID": "",
                "bootID": _read("/proc/sys/kernel/random/boot_id"),
                "kernelVersion": kernel or platform.release(),
                "osImage": _os_image(),
                "containerRuntimeVersion": "gisjob-test://local-processes",
                "kubeletVersion": "v1.20.2-gisjob-test",
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": _arch(),
            },
        }

    def register(self) -> None:
        body = self.node_body()
        try:
            node = _json(self.core.create_node(body, _preload_content=False, _request_timeout=10))
            log.info("registered node %s", self.node_name)
        except k8s.ApiException as e:
            if e.status != 409:
                raise
            node = _json(
                self.core.patch_node(
                    self.node_name,
                    {"metadata": body["metadata"]},
                    _preload_content=False,
                    _request_timeout=10,
                )
            )
        # Status is set on create by real kubelets too; patch it in case it was dropped.
        self.core.patch_node_status(
            self.node_name, {"status": body["status"]}, _preload_content=False, _request_timeout=10
        )
        taints = node.get("spec", {}).get("taints") or []
        keep = [t for t in taints if not t["key"].startswith("node.kubernetes.io/not-ready")]
        if len(keep) != len(taints):
            # The TaintNodesByCondition admission plugin adds it; the node lifecycle
            # controller (not run here) would remove it once Ready.
            self.core.patch_node(
                self.node_name,
                {"spec": {"taints": keep or None}},
                _preload_content=False,
                _request_timeout=10,
            )

    def heartbeat_loop(self) -> None:
        last_status = time.monotonic()
        while not self.stopping.wait(10.0):
            try:
                self.renew_lease()
                if time.monotonic() - last_status > 60:
                    self.core.patch_node_status(
                        self.node_name,
                        {"status": {"conditions": self.node_status()["conditions"]}},
                        _preload_content=False,
                        _request_timeout=10,
                    )
                    last_status = time.monotonic()
            except k8s.ApiException as e:
                if e.status == 404:
                    with contextlib.suppress(Exception):
                        self.register()
                else:
                    log.warning("heartbeat failed: %s", e.status)
            except Exception as e:
                log.warning("heartbeat failed: %s", _short(e))

    def renew_lease(self) -> None:
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.node_name, "namespace": "kube-node-lease"},
            "spec": {
                "holderIdentity": self.node_name,
                "leaseDurationSeconds": 40,
                "renewTime": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            },
        }
        try:
            self.coord.patch_namespaced_lease(
                self.node_name,
                "kube-node-lease",
                {"spec": body["spec"]},
                _preload_content=False,
                _request_timeout=10,
            )
        except k8s.ApiException as e:
            if e.status != 404:
                raise
            self.coord.create_namespaced_lease(
                "kube-node-lease", body, _preload_content=False, _request_timeout=10
            )

    # ------------------------------------------------------------------ watch
    def watch_loop(self) -> None:
        core = k8s.CoreV1Api(self.watch_api)
        backoff = 0.2
        while not self.stopping.is_set():
            try:
                resp = _json(
                    core.list_pod_for_all_namespaces(_preload_content=False, _request_timeout=30)
                )
                rv = resp["metadata"]["resourceVersion"]
                self._replace_cache(resp.get("items", []))
                backoff = 0.2
                while not self.stopping.is_set():
                    rv = self._watch_once(core, rv)
            except k8s.ApiException as e:
                if e.status == 410:
                    log.info("watch expired (410 Gone); re-listing")
                    continue
                log.warning("pod watch failed: %s %s; re-listing", e.status, e.reason)
            except Exception as e:
                log.warning("pod watch interrupted (%s); re-listing", _short(e))
            self.stopping.wait(backoff)
            backoff = min(backoff * 2, 2.0)

    def _watch_once(self, core: Any, rv: str) -> str:
        """One watch request from ``rv``; returns the last resourceVersion seen."""
        resp = core.list_pod_for_all_namespaces(
            watch=True,
            resource_version=rv,
            timeout_seconds=50,
            allow_watch_bookmarks=True,
            _preload_content=False,
            _request_timeout=(5, 65),
        )
        try:
            for line in iter_resp_lines(resp):  # type: ignore[no-untyped-call]
                if not line or self.stopping.is_set():
                    continue
                ev = json.loads(line)
                obj = ev.get("object") or {}
                if ev.get("type") == "ERROR":
                    raise k8s.ApiException(status=obj.get("code"), reason=obj.get("message"))
                rv = obj.get("metadata", {}).get("resourceVersion", rv)
                if ev.get("type") != "BOOKMARK":
                    self._on_event(ev["type"], obj)
        finally:
            resp.release_conn()
        return rv

    def _replace_cache(self, items: list[Obj]) -> None:
        with self.lock:
            new = {p["metadata"]["uid"]: p for p in items}
            gone = set(self.pods) - set(new)
            self.pods = new
        for uid in gone | set(new):
            self.enqueue(uid)

    def _on_event(self, kind: str, pod: Obj) -> None:
        uid = pod["metadata"]["uid"]
        with self.lock:
            if kind == "DELETED":
                self.pods.pop(uid, None)
            else:
                self.pods[uid] = pod
        self.enqueue(uid)
        if kind == "DELETED" or pod.get("status", {}).get("phase") in TERMINAL:
            self._capacity_freed()

    def _capacity_freed(self) -> None:
        with self.lock:
            pending = [u for u, p in self.pods.items() if not p.get("spec", {}).get("nodeName")]
        for uid in pending:
            self.enqueue(uid)

    # ------------------------------------------------------------------ sync
    def work_loop(self) -> None:
        while True:
            uid = self._next()
            if uid is None:
                return
            try:
                self.sync(uid)
            except _Retry:
                continue
            except Exception as e:
                code = _status_code(e)
                if code == 404:
                    continue
                log.warning("sync %s failed (%s); retrying", uid, _short(e))
                self.enqueue(uid, 1.0)

    def sync(self, uid: str) -> None:
        with self.lock:
            pod = self.pods.get(uid)
            rt = self.runtimes.get(uid)
        if pod is None:
            if rt is not None:
                self._kill(rt, signal.SIGKILL)
                if rt.proc is not None:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        rt.proc.wait(5)
                self._cleanup(rt, remove_dir=True)
                with self.lock:
                    self.runtimes.pop(uid, None)
            self.assumed.pop(uid, None)
            self.sched_msgs.pop(uid, None)
            self.waiting_msgs.pop(uid, None)
            return
        spec, md, status = pod["spec"], pod["metadata"], pod.get("status", {})
        node = spec.get("nodeName")
        if not node:
            if md.get("deletionTimestamp") or status.get("phase") in TERMINAL:
                return
            if spec.get("schedulerName", "default-scheduler") == "default-scheduler":
                self.schedule(pod)
            return
        self.assumed.pop(uid, None)
        if node != self.node_name:
            return
        if md.get("deletionTimestamp"):
            self._sync_deleting(pod, rt)
            return
        if rt is None:
            if status.get("phase") in TERMINAL:
                return
            if status.get("phase") == "Running":
                rt = Runtime(uid, pod_key(pod), self._pod_dir(pod))
                rt.exit_code, rt.reason = 137, "Error"
                rt.message = "process lost: the test kubelet restarted"
                rt.started_at = rt.finished_at = now_rfc3339()
                rt.container = spec["containers"][0]
                with self.lock:
                    self.runtimes[uid] = rt
            else:
                rt = self._start(pod)
        elif rt.pending_result:
            self._collect(rt)
        if rt.exit_code is not None and rt.restart_at is None and self._should_restart(pod, rt):
            delay = (
                min(10.0 * 2 ** max(rt.restart_count - 1, 0), 300.0) if rt.restart_count else 0.0
            )
            rt.restart_at = time.monotonic() + delay
        if rt.restart_at is not None and time.monotonic() >= rt.restart_at:
            self._restart(pod, rt)
        elif rt.restart_at is not None:
            self.enqueue(uid, rt.restart_at - time.monotonic())
        self._report(pod, rt)

    def _should_restart(self, pod: Obj, rt: Runtime) -> bool:
        policy = pod["spec"].get("restartPolicy", "Always")
        return policy == "Always" or (policy == "OnFailure" and rt.exit_code != 0)

    # ------------------------------------------------------------------ scheduling
    def schedule(self, pod: Obj) -> None:
        uid = pod["metadata"]["uid"]
        req = memory_request(pod)
        with self.lock:
            active = {
                u: memory_request(p)
                for u, p in self.pods.items()
                if p["spec"].get("nodeName") == self.node_name
                and p.get("status", {}).get("phase") not in TERMINAL
                and not self.runtimes.get(u, _NO_RUNTIME).reported.startswith("terminated")
            }
            for u, m in self.assumed.items():
                if u != uid:
                    active.setdefault(u, m)  # bound by us, not yet seen bound
        used, count = sum(active.values()), len(active)
        reasons = []
        labels = self.labels
        selector = pod["spec"].get("nodeSelector") or {}
        if any(labels.get(k) != v for k, v in selector.items()):
            reasons.append("1 node(s) didn't match node selector")
        if used + req > self.alloc_memory:
            reasons.append("1 Insufficient memory")
        if count >= self.max_pods:
            reasons.append("1 Too many pods")
        if reasons:
            self._unschedulable(pod, "0/1 nodes are available: " + ", ".join(sorted(reasons)) + ".")
            return
        body = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": pod["metadata"]["name"], "uid": uid},
            "target": {"apiVersion": "v1", "kind": "Node", "name": self.node_name},
        }
        try:
            self._call()
            self.core.create_namespaced_pod_binding(
                pod["metadata"]["name"],
                pod["metadata"]["namespace"],
                body,
                _preload_content=False,
                _request_timeout=10,
            )
        except k8s.ApiException as e:
            if e.status in (404, 409):
                return  # deleted or already bound
            raise
        self.assumed[uid] = req
        self.sched_msgs.pop(uid, None)
        log.info("bound %s (memory request %d MiB)", pod_key(pod), req // 2**20)

    def _unschedulable(self, pod: Obj, message: str) -> None:
        uid = pod["metadata"]["uid"]
        conds = pod.get("status", {}).get("conditions") or []
        current = next((c for c in conds if c.get("type") == "PodScheduled"), None)
        if current and current.get("status") == "False" and current.get("message") == message:
            return
        now = now_rfc3339()
        self._call()
        self.core.patch_namespaced_pod_status(
            pod["metadata"]["name"],
            pod["metadata"]["namespace"],
            {
                "status": {
                    "conditions": [
                        {
                            "type": "PodScheduled",
                            "status": "False",
                            "reason": "Unschedulable",
                            "message": message,
                            "lastProbeTime": None,
                            "lastTransitionTime": now,
                        }
                    ]
                }
            },
            _preload_content=False,
            _request_timeout=10,
        )
        if self.sched_msgs.get(uid) != message:
            self.sched_msgs[uid] = message
            self._event(pod, "Warning", "FailedScheduling", message, "default-scheduler")
        log.info("cannot schedule %s: %s", pod_key(pod), message)

    def _event(self, pod: Obj, type_: str, reason: str, message: str, component: str) -> None:
        md = pod["metadata"]
        now = now_rfc3339()
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{md['name']}.", "namespace": md["namespace"]},
            "involvedObject": {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": md["name"],
                "namespace": md["namespace"],
                "uid": md["uid"],
                "resourceVersion": md.get("resourceVersion"),
            },
            "reason": reason,
            "message": message,
            "type": type_,
            "source": {"component": component},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
            "reportingComponent": component,
            "reportingInstance": self.node_name,
        }
        try:
            self._call()
            self.core.create_namespaced_event(
                md["namespace"], body, _preload_content=False, _request_timeout=10
            )
        except Exception as e:
            log.warning("event for %s not recorded: %s", pod_key(pod), _short(e))

    # ------------------------------------------------------------------ running
    def _pod_dir(self, pod: Obj) -> Path:
        md = pod["metadata"]
        return self.root / "pods" / f"{md['namespace']}_{md['name']}_{md['uid']}"

    def _start(self, pod: Obj) -> Runtime:
        uid = pod["metadata"]["uid"]
        rt = Runtime(uid, pod_key(pod), self._pod_dir(pod))
        rt.start_time = now_rfc3339()
        rt.container = pod["spec"]["containers"][0]
        with self.lock:
            self.runtimes[uid] = rt
        if len(pod["spec"]["containers"]) > 1 or pod["spec"].get("initContainers"):
            log.warning("%s: only the first container runs under the test kubelet", rt.key)
        self._launch(pod, rt)
        return rt

    def _restart(self, pod: Obj, rt: Runtime) -> None:
        rt.last_state = {"terminated": self._terminated_state(rt)}
        rt.restart_count += 1
        rt.exit_code = rt.reason = rt.message = rt.finished_at = None
        rt.proc, rt.restart_at = None, None
        self._launch(pod, rt)

    def _launch(self, pod: Obj, rt: Runtime) -> None:
        try:
            argv, env, cwd, term_local = self._prepare(pod, rt)
        except StartError as e:
            if e.retry:
                log.info("%s: %s (retrying)", rt.key, e.message)
                with self.lock:
                    self.runtimes.pop(rt.uid, None)
                self.enqueue(rt.uid, 2.0)
                self._report_waiting(pod, e.reason, e.message)
                raise _Retry() from None
            rt.started_at = rt.finished_at = now_rfc3339()
            rt.exit_code, rt.reason, rt.message = 128, e.reason, e.message
            log.info("%s: cannot start: %s", rt.key, e.message)
            return
        limit_s = ((rt.container.get("resources") or {}).get("limits") or {}).get("memory")
        limit = int(parse_quantity(limit_s)) if limit_s else None
        wrapped = argv
        if self.cgroups is not None:
            try:
                rt.cgroup = self.cgroups.create(rt.uid, limit)
            except OSError as e:
                log.warning("%s: memory cgroup not created (%s): limit not enforced", rt.key, e)
        if rt.cgroup is not None:
            procs = rt.cgroup / "cgroup.procs"
            wrapped = ["/bin/sh", "-c", 'echo $$ > "$0" || exit 125; exec "$@"', str(procs), *argv]
        rt.log_path = rt.dir / f"{rt.container['name']}.log"
        rt.term_path = term_local
        with open(rt.log_path, "ab") as out:
            out.write(f"==== {now_rfc3339()} start {argv!r}\n".encode())
            out.flush()
            rt.proc = subprocess.Popen(
                wrapped,
                env=env,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        rt.started_at = now_rfc3339()
        rt.pending_result = False
        log.info("started %s pid %d: %s", rt.key, rt.proc.pid, " ".join(argv)[:200])
        threading.Thread(target=self._wait, args=(rt, rt.proc), daemon=True).start()

    def _wait(self, rt: Runtime, proc: subprocess.Popen[bytes]) -> None:
        proc.wait()
        rt.pending_result = True
        self.enqueue(rt.uid)

    def _collect(self, rt: Runtime) -> None:
        assert rt.proc is not None
        rc = rt.proc.returncode
        rt.pending_result = False
        rt.finished_at = now_rfc3339()
        code = 128 - rc if rc < 0 else rc
        oom = 0
        if self.cgroups is not None and rt.cgroup is not None:
            oom = self.cgroups.oom_kills(rt.cgroup)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(rt.proc.pid, signal.SIGKILL)  # the rest of the "container"
            self.cgroups.remove(rt.cgroup)
            rt.cgroup = None
        else:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(rt.proc.pid, signal.SIGKILL)
        if oom:
            reason = "OOMKilled"
        elif code == 0:
            reason = "Completed"
        else:
            reason = "Error"
        if rt.term_sent_at is not None and not oom and code != 0:
            reason = "Error"
        message = ""
        if rt.term_path is not None:
            with contextlib.suppress(OSError):
                message = rt.term_path.read_bytes()[:MAX_MESSAGE].decode(errors="replace")
        if (
            not message
            and code != 0
            and rt.container.get("terminationMessagePolicy") == "FallbackToLogsOnError"
        ):
            message = _log_tail(rt.log_path)
        rt.exit_code, rt.reason, rt.message = code, reason, message or None
        log.info("%s exited: code %d reason %s", rt.key, code, reason)

    def _prepare(self, pod: Obj, rt: Runtime) -> tuple[list[str], dict[str, str], str, Path]:
        c = rt.container
        rt.dir.mkdir(parents=True, exist_ok=True)
        vols = self._volumes(pod, rt, c)
        trans: list[tuple[str, str]] = []
        for m in c.get("volumeMounts") or []:
            local = vols.get(m["name"])
            if local is None:
                continue
            if m.get("subPath"):
                local = local / m["subPath"]
                if not local.exists():
                    local.mkdir(parents=True, exist_ok=True)
            trans.append((m["mountPath"], str(local)))
        term_remote = c.get("terminationMessagePath") or "/dev/termination-log"
        term_local = rt.dir / f"{c['name']}.termination-log"
        term_local.write_bytes(b"")
        trans.append((term_remote, str(term_local)))
        translate = _translator(trans)

        rule = self.images.resolve(c.get("image", ""))
        env: dict[str, str] = {k: os.environ[k] for k in self.images.inherit_env if k in os.environ}
        path = ":".join(
            [*rule.path_prepend, "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
        )
        host, _, port = self.server.split("://", 1)[-1].partition(":")
        env.update(
            PATH=path,
            HOSTNAME=pod["metadata"]["name"],
            KUBERNETES_SERVICE_HOST=host,
            KUBERNETES_SERVICE_PORT=port or "443",
            GISJOB_RESULT_PATH=str(term_local),
            TERMINATION_MESSAGE_PATH=str(term_local),
        )
        env.update(rule.env)
        self._env_from_sources(pod, c, env)
        for e in c.get("env") or []:
            if "value" in e:
                env[e["name"]] = translate(_expand(e.get("value") or "", env))
            elif "valueFrom" in e:
                v = self._env_from(pod, c, e["valueFrom"])
                if v is not None:
                    env[e["name"]] = translate(v)
            else:
                env[e["name"]] = ""

        command = c.get("command") or rule.entrypoint
        args = c.get("args")
        if not c.get("command") and args is None:
            args = rule.cmd
        if not command and not args:
            raise StartError(
                "ContainerCannotRun",
                f"image {c.get('image')!r} has no known entrypoint: give the container a command "
                "or add an images rule for the test kubelet",
            )
        argv = [*rule.command_prefix, *(command or []), *(args or [])]
        argv = [translate(_expand(a, env)) for a in argv]
        wd = c.get("workingDir") or rule.working_dir
        cwd = translate(wd) if wd else str(rt.dir / "work")
        if not wd:
            Path(cwd).mkdir(parents=True, exist_ok=True)
        if not Path(cwd).is_dir():
            raise StartError(
                "CreateContainerError", f"workingDir {wd!r} ({cwd}) is not a directory"
            )
        exe = argv[0] if "/" in argv[0] else shutil.which(argv[0], path=env["PATH"])
        if exe is None or not os.access(exe, os.X_OK):
            raise StartError(
                "StartError",
                f'failed to create containerd task: exec: "{argv[0]}": '
                "executable file not found in $PATH",
            )
        return argv, env, cwd, term_local

    def _env_from_sources(self, pod: Obj, c: Obj, env: dict[str, str]) -> None:
        """``envFrom``: every key of each ConfigMap/Secret (read from the API server with the
        kubelet's own credentials, Secret ``data`` base64-decoded) becomes a variable, with
        the source's ``prefix``; later sources win, and ``env`` entries (applied after this)
        win over all of them. Keys that are not valid variable names are skipped with an
        ``InvalidEnvironmentVariableNames`` event, as the kubelet does. A missing source that
        is not ``optional`` raises ``CreateContainerConfigError`` (the container waits)."""
        for src in c.get("envFrom") or []:
            prefix = src.get("prefix", "")
            for kind in ("configMapRef", "secretRef"):
                if kind not in src:
                    continue
                ref = src[kind]
                data = self._config_data(pod, kind, ref["name"], ref.get("optional", False))
                invalid = sorted(k for k in data if not ENV_VAR_NAME.fullmatch(prefix + k))
                env.update({prefix + k: v for k, v in data.items() if k not in invalid})
                if invalid:
                    what = "secret" if kind == "secretRef" else "configmap"
                    ns = pod["metadata"]["namespace"]
                    self._event(
                        pod,
                        "Warning",
                        "InvalidEnvironmentVariableNames",
                        f"Keys [{', '.join(invalid)}] from the EnvFrom {what} {ns}/{ref['name']} "
                        "were skipped since they are considered invalid environment variable "
                        "names.",
                        "kubelet",
                    )

    def _env_from(self, pod: Obj, c: Obj, src: Obj) -> str | None:
        if "fieldRef" in src:
            return self._field(pod, src["fieldRef"]["fieldPath"])
        if "resourceFieldRef" in src:
            ref = src["resourceFieldRef"]
            target = c
            if ref.get("containerName"):
                target = next(
                    (x for x in pod["spec"]["containers"] if x["name"] == ref["containerName"]), c
                )
            kind, _, res = ref["resource"].partition(".")
            value = ((target.get("resources") or {}).get(kind) or {}).get(res)
            if value is None:
                value = self.allocatable.get(res, "0")
            divisor = parse_quantity(ref.get("divisor") or "1")
            num = parse_quantity(value) / divisor
            return str(int(-(-num // 1)))  # ceiling, like the kubelet
        for kind in ("configMapKeyRef", "secretKeyRef"):
            if kind in src:
                ref = src[kind]
                data = self._config_data(pod, kind, ref["name"], ref.get("optional", False))
                if ref["key"] not in data:
                    if ref.get("optional"):
                        return None
                    what = "Secret" if kind == "secretKeyRef" else "ConfigMap"
                    raise StartError(
                        "CreateContainerConfigError",
                        f"couldn't find key {ref['key']} in {what} "
                        f"{pod['metadata']['namespace']}/{ref['name']}",
                        retry=True,
                    )
                return data[ref["key"]]
        return None

    def _field(self, pod: Obj, path: str) -> str:
        md = pod["metadata"]
        m = re.match(r"metadata\.(labels|annotations)\['(.+)'\]$", path)
        if m:
            return str((md.get(m.group(1)) or {}).get(m.group(2), ""))
        values = {
            "metadata.name": md["name"],
            "metadata.namespace": md["namespace"],
            "metadata.uid": md["uid"],
            "spec.nodeName": self.node_name,
            "spec.serviceAccountName": pod["spec"].get("serviceAccountName", ""),
            "status.hostIP": POD_IP,
            "status.podIP": POD_IP,
            "status.podIPs": POD_IP,
        }
        return str(values.get(path, ""))

    def _config_data(self, pod: Obj, kind: str, name: str, optional: bool) -> dict[str, str]:
        ns = pod["metadata"]["namespace"]
        secret = kind.startswith("secret")
        try:
            self._call()
            if secret:
                obj = _json(
                    self.core.read_namespaced_secret(
                        name, ns, _preload_content=False, _request_timeout=10
                    )
                )
                return {
                    k: base64.b64decode(v).decode(errors="replace")
                    for k, v in (obj.get("data") or {}).items()
                }
            obj = _json(
                self.core.read_namespaced_config_map(
                    name, ns, _preload_content=False, _request_timeout=10
                )
            )
        except k8s.ApiException as e:
            if e.status == 404:
                if optional:
                    return {}
                what = "secret" if secret else "configmap"
                raise StartError(
                    "CreateContainerConfigError", f'{what} "{name}" not found', retry=True
                ) from e
            raise
        data: dict[str, str] = dict(obj.get("data") or {})
        return data

    def _config_files(
        self, pod: Obj, kind: str, name: str, optional: bool, volume: str = ""
    ) -> dict[str, bytes]:
        """The files of a ``configMap``/``secret`` volume (source): its keys, from the API
        server. A missing one that is not ``optional`` raises ``ContainerCreating`` with the
        kubelet's ``FailedMount`` text (the container waits; retried)."""
        ns = pod["metadata"]["namespace"]
        if kind == "configMap" and name == "kube-root-ca.crt":
            return {"ca.crt": self.ca_pem}  # known locally: no API call
        try:
            self._call()
            if kind == "secret":
                obj = _json(
                    self.core.read_namespaced_secret(
                        name, ns, _preload_content=False, _request_timeout=10
                    )
                )
                return {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
            obj = _json(
                self.core.read_namespaced_config_map(
                    name, ns, _preload_content=False, _request_timeout=10
                )
            )
        except k8s.ApiException as e:
            if e.status == 404:
                if optional:
                    return {}
                what = "secret" if kind == "secret" else "configmap"
                raise StartError(
                    "ContainerCreating",
                    f'MountVolume.SetUp failed for volume "{volume}" : {what} "{name}" not found',
                    retry=True,
                ) from e
            raise
        files = {k: v.encode() for k, v in (obj.get("data") or {}).items()}
        files.update({k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()})
        return files

    def _volumes(self, pod: Obj, rt: Runtime, c: Obj) -> dict[str, Path]:
        mounted = {m["name"]: m["mountPath"] for m in c.get("volumeMounts") or []}
        out: dict[str, Path] = {}
        ns = pod["metadata"]["namespace"]
        for v in pod["spec"].get("volumes") or []:
            name = v["name"]
            if name not in mounted:
                continue
            vdir = rt.dir / "volumes" / name
            if "hostPath" in v:
                hp = Path(v["hostPath"]["path"])
                typ = v["hostPath"].get("type", "")
                if typ == "DirectoryOrCreate":
                    hp.mkdir(parents=True, exist_ok=True)
                elif typ == "FileOrCreate" and not hp.exists():
                    hp.parent.mkdir(parents=True, exist_ok=True)
                    hp.touch()
                elif typ in ("Directory", "File") and not hp.exists():
                    raise StartError(
                        "ContainerCreating", f"hostPath {hp} does not exist", retry=True
                    )
                out[name] = hp
            elif "persistentVolumeClaim" in v:
                d = self.root / "pvc" / ns / v["persistentVolumeClaim"]["claimName"]
                d.mkdir(parents=True, exist_ok=True)
                out[name] = d
            elif "configMap" in v or "secret" in v or "downwardAPI" in v or "projected" in v:
                vdir.mkdir(parents=True, exist_ok=True)
                self._write_projection(pod, v, vdir, sa_mount=mounted[name] == SA_MOUNT)
                out[name] = vdir
            else:
                if "emptyDir" not in v:
                    log.warning("%s: volume %s of unsupported type → empty directory", rt.key, name)
                vdir.mkdir(parents=True, exist_ok=True)
                out[name] = vdir
        return out

    def _write_projection(self, pod: Obj, v: Obj, vdir: Path, sa_mount: bool) -> None:
        sources: list[Obj] = (v["projected"].get("sources") or []) if "projected" in v else [v]
        for src in sources:
            for kind in ("configMap", "secret"):
                if kind not in src:
                    continue
                ref = src[kind]
                name = ref.get("name") or ref.get("secretName", "")
                files = self._config_files(
                    pod, kind, name, ref.get("optional", False), volume=v.get("name", "")
                )
                items = ref.get("items")
                mapping = {i["key"]: i["path"] for i in items} if items else {k: k for k in files}
                for key, rel in mapping.items():
                    if key in files:
                        _write_file(vdir / rel, files[key], ref.get("defaultMode"))
            if "downwardAPI" in src:
                for item in src["downwardAPI"].get("items") or []:
                    if "fieldRef" in item:
                        value = self._field(pod, item["fieldRef"]["fieldPath"])
                        _write_file(vdir / item["path"], value.encode(), None)
            if "serviceAccountToken" in src:
                # Not materialized: the path is not reachable by local processes and
                # minting a token per pod would cost an API call.
                pass
        if sa_mount and not (vdir / "namespace").exists():
            _write_file(vdir / "namespace", pod["metadata"]["namespace"].encode(), None)

    # ------------------------------------------------------------------ status
    def _terminated_state(self, rt: Runtime) -> Obj:
        st: Obj = {
            "exitCode": rt.exit_code,
            "reason": rt.reason,
            "startedAt": rt.started_at,
            "finishedAt": rt.finished_at,
            "containerID": f"gisjob://{rt.uid}",
        }
        if rt.message:
            st["message"] = rt.message
        return st

    def _report_waiting(self, pod: Obj, reason: str, message: str) -> None:
        """Pending with a waiting container, as a kubelet reports a container it cannot
        create yet (a missing ConfigMap or Secret, a missing key: ``ContainerCreating``,
        ``CreateContainerConfigError``): phase Pending, not ready, no process; once per
        message, with the kubelet's ``Failed`` event for configuration errors."""
        uid = pod["metadata"]["uid"]
        if self.waiting_msgs.get(uid) == message:
            return
        c = pod["spec"]["containers"][0]
        cs = {
            "name": c["name"],
            "image": c.get("image", ""),
            "imageID": "",
            "ready": False,
            "started": False,
            "restartCount": 0,
            "state": {"waiting": {"reason": reason, "message": message}},
        }
        now = now_rfc3339()
        unready = f"containers with unready status: [{c['name']}]"

        def cond(t: str, ok: bool) -> Obj:
            d: Obj = {
                "type": t,
                "status": "True" if ok else "False",
                "lastProbeTime": None,
                "lastTransitionTime": now,
            }
            if not ok:
                d.update(reason="ContainersNotReady", message=unready)
            return d

        status = {
            "phase": "Pending",
            "hostIP": POD_IP,
            "startTime": (pod.get("status") or {}).get("startTime") or now,
            "conditions": [
                cond("Initialized", True),
                cond("Ready", False),
                cond("ContainersReady", False),
                cond("PodScheduled", True),
            ],
            "containerStatuses": [cs],
        }
        with contextlib.suppress(Exception):
            self._call()
            self.core.patch_namespaced_pod_status(
                pod["metadata"]["name"],
                pod["metadata"]["namespace"],
                {"status": status},
                _preload_content=False,
                _request_timeout=10,
            )
            self.waiting_msgs[uid] = message
            if reason == "CreateContainerConfigError":
                self._event(pod, "Warning", "Failed", f"Error: {message}", "kubelet")
            elif message.startswith("MountVolume."):  # a volume's source is missing
                self._event(pod, "Warning", "FailedMount", message, "kubelet")

    def _report(self, pod: Obj, rt: Runtime) -> None:
        c = rt.container
        if rt.exit_code is not None and not self._should_restart(pod, rt):
            want = f"terminated:{rt.restart_count}"
        elif rt.exit_code is not None:
            want = f"waiting:{rt.restart_count}"
        elif rt.running:
            want = f"running:{rt.restart_count}"
        else:
            return
        if rt.reported == want:
            return
        now = now_rfc3339()
        sched = next(
            (
                x
                for x in pod.get("status", {}).get("conditions") or []
                if x.get("type") == "PodScheduled"
            ),
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
        )
        cs: Obj = {
            "name": c["name"],
            "image": c.get("image", ""),
            "imageID": "",
            "containerID": f"gisjob://{rt.uid}",
            "restartCount": rt.restart_count,
            "lastState": rt.last_state,
        }
        if want.startswith("running"):
            phase, ready = "Running", True
            cs["state"] = {"running": {"startedAt": rt.started_at}}
            cs["started"] = True
        elif want.startswith("waiting"):
            phase, ready = "Running", False
            cs["state"] = {
                "waiting": {
                    "reason": "CrashLoopBackOff",
                    "message": f"back-off restarting failed container {c['name']}",
                }
            }
            cs["lastState"] = {"terminated": self._terminated_state(rt)}
            cs["started"] = False
        else:
            phase = "Succeeded" if rt.exit_code == 0 else "Failed"
            ready = False
            cs["state"] = {"terminated": self._terminated_state(rt)}
            cs["started"] = False
        cs["ready"] = ready
        ready_reason = (
            None if ready else ("PodCompleted" if phase in TERMINAL else "ContainersNotReady")
        )

        def cond(t: str, ok: bool, reason: str | None = None) -> Obj:
            d: Obj = {
                "type": t,
                "status": "True" if ok else "False",
                "lastProbeTime": None,
                "lastTransitionTime": now,
            }
            if reason:
                d["reason"] = reason
            return d

        status: Obj = {
            "phase": phase,
            "hostIP": POD_IP,
            "podIP": POD_IP,
            "podIPs": [{"ip": POD_IP}],
            "startTime": rt.start_time or rt.started_at,
            "conditions": [
                cond("Initialized", True, "PodCompleted" if phase in TERMINAL else None),
                cond("Ready", ready, ready_reason),
                cond("ContainersReady", ready, ready_reason),
                sched,
            ],
            "containerStatuses": [cs],
        }
        self._call()
        self.core.patch_namespaced_pod_status(
            pod["metadata"]["name"],
            pod["metadata"]["namespace"],
            {"status": status},
            _preload_content=False,
            _request_timeout=10,
        )
        rt.reported = want
        if phase in TERMINAL:
            self._capacity_freed()

    # ------------------------------------------------------------------ deletion
    def _sync_deleting(self, pod: Obj, rt: Runtime | None) -> None:
        md = pod["metadata"]
        if rt is not None and rt.running:
            now = time.monotonic()
            if rt.term_sent_at is None:
                grace = md.get("deletionGracePeriodSeconds")
                if grace is None:
                    grace = pod["spec"].get("terminationGracePeriodSeconds", 30)
                rt.term_sent_at = now
                rt.kill_at = now + float(grace)
                log.info("%s deleted: SIGTERM, SIGKILL in %ss", rt.key, grace)
                self._kill(rt, signal.SIGTERM)
                self.enqueue(rt.uid, float(grace))
            elif rt.kill_at is not None and now >= rt.kill_at:
                self._kill(rt, signal.SIGKILL)
            else:
                self.enqueue(rt.uid, max((rt.kill_at or now) - now, 0.05))
            return
        if rt is not None and rt.pending_result:
            self._collect(rt)
        if rt is not None:
            self._cleanup(rt, remove_dir=False)
        self._call()
        try:
            self.core.delete_namespaced_pod(
                md["name"],
                md["namespace"],
                body={"gracePeriodSeconds": 0, "preconditions": {"uid": md["uid"]}},
                grace_period_seconds=0,
                _preload_content=False,
                _request_timeout=10,
            )
        except k8s.ApiException as e:
            if e.status not in (404, 409):
                raise
        log.info("%s removed", pod_key(pod))

    def _kill(self, rt: Runtime, sig: int) -> None:
        if rt.proc is None or rt.exit_code is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(rt.proc.pid, sig)
        if sig == signal.SIGKILL and rt.cgroup is not None:
            for pid in MemoryCgroups.procs(rt.cgroup):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)

    def _cleanup(self, rt: Runtime, remove_dir: bool) -> None:
        if rt.cgroup is not None and self.cgroups is not None and not rt.running:
            self.cgroups.remove(rt.cgroup)
            rt.cgroup = None
        if remove_dir:
            shutil.rmtree(rt.dir / "volumes", ignore_errors=True)

    # ------------------------------------------------------------------ main
    def _call(self) -> None:
        self.api_calls += 1

    # ------------------------------------------------------------------ logs
    def log_file(self, namespace: str, name: str, container: str) -> Path | None:
        """The log of a pod's container (running or finished, until the pod is removed)."""
        key = f"{namespace}/{name}"
        with self.lock:
            for rt in self.runtimes.values():
                if rt.key == key and rt.container.get("name") == container and rt.log_path:
                    return rt.log_path
        return None

    def serve_logs(self) -> None:
        """The kubelet's HTTPS endpoint for ``pods/log`` (the API server proxies to it; it
        does not verify a kubelet's serving certificate unless told to)."""
        cert_dir = self.root / "serving"
        cert_dir.mkdir(exist_ok=True)
        cert, key = cert_dir / "kubelet.crt", cert_dir / "kubelet.key"
        if not cert.exists():
            subprocess.run(
                [
                    "openssl",
                    "req",
                    "-x509",
                    "-newkey",
                    "rsa:2048",
                    "-nodes",
                    "-days",
                    "30",
                    "-subj",
                    f"/CN={self.node_name}",
                    "-addext",
                    f"subjectAltName=IP:{POD_IP}",
                    "-keyout",
                    str(key),
                    "-out",
                    str(cert),
                ],
                check=True,
                capture_output=True,
            )
        kubelet = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, fmt: str, *args: Any) -> None:
                log.debug("logs: " + fmt, *args)

            def do_GET(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                parts = url.path.strip("/").split("/")
                if len(parts) != 4 or parts[0] != "containerLogs":
                    self.send_error(404, "not found")
                    return
                path = kubelet.log_file(parts[1], parts[2], parts[3])
                if path is None:
                    self.send_error(404, f"container {parts[3]} of {parts[1]}/{parts[2]} not found")
                    return
                query = urllib.parse.parse_qs(url.query)
                data = path.read_bytes()
                if "tailLines" in query:
                    n = int(query["tailLines"][0])
                    data = b"".join(data.splitlines(keepends=True)[-n:]) if n > 0 else b""
                if "limitBytes" in query:
                    data = data[: int(query["limitBytes"][0])]
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        server = ThreadingHTTPServer((POD_IP, 0), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(cert), str(key))
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
        self.log_port = server.server_address[1]
        self._log_server = server
        threading.Thread(target=server.serve_forever, name="logs", daemon=True).start()

    def run(self) -> None:
        deadline = time.monotonic() + 60
        self.serve_logs()
        while True:
            try:
                self.register()
                self.renew_lease()
                break
            except Exception as e:
                if time.monotonic() > deadline:
                    raise
                log.warning("node registration failed (%s); retrying", _short(e))
                time.sleep(0.5)
        threads = [
            threading.Thread(target=self.watch_loop, name="watch", daemon=True),
            threading.Thread(target=self.heartbeat_loop, name="heartbeat", daemon=True),
            threading.Thread(target=self.work_loop, name="sync", daemon=True),
        ]
        for t in threads:
            t.start()
        log.info("test kubelet ready: node %s, allocatable %s", self.node_name, self.allocatable)
        (self.root / "kubelet.ready").write_text(f"{os.getpid()}\n")
        self.stopping.wait()
        self.shutdown()

    def shutdown(self) -> None:
        with self.lock:
            rts = list(self.runtimes.values())
        for rt in rts:
            self._kill(rt, signal.SIGTERM)
        deadline = time.monotonic() + 5
        for rt in rts:
            if rt.proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    rt.proc.wait(max(deadline - time.monotonic(), 0.01))
                self._kill(rt, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    rt.proc.wait(1)
            if rt.cgroup is not None and self.cgroups is not None:
                self.cgroups.remove(rt.cgroup)
        if self.cgroups is not None:
            with contextlib.suppress(OSError):
                self.cgroups.base.rmdir()
        log.info("test kubelet stopped (%d API writes/reads for pods)", self.api_calls)


class _Retry(Exception):
    pass


# --------------------------------------------------------------------------- small utils


def _translator(pairs: list[tuple[str, str]]) -> Callable[[str], str]:
    """Rewrite container paths to local ones where they appear as whole path
    components in a string (``/data`` matches ``/data``, ``/data/x``,
    ``--out=/data/x``, ``cat /data/x``, not ``/database``)."""
    # identity mappings stay in the table: a hostPath mounted at its own path inside another
    # mount (/tmp/data inside a /tmp emptyDir) must win over the shorter prefix
    cleaned = sorted(((r.rstrip("/") or "/", loc) for r, loc in pairs), key=lambda p: -len(p[0]))
    cleaned = [(r, loc) for r, loc in cleaned if r != "/"]
    if all(r == loc for r, loc in cleaned):
        return lambda s: s
    table = dict(cleaned)
    pattern = re.compile(
        r"(?<![\w.\-/])(" + "|".join(re.escape(r) for r, _ in cleaned) + r")(?=/|$|[^\w.\-])"
    )
    return lambda s: pattern.sub(lambda m: table[m.group(1)], s)


_VAR = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.\-]*)\)")


def _expand(s: str, env: dict[str, str]) -> str:
    """Kubernetes $(VAR) expansion; $$ escapes; unknown references stay as they are."""

    def rep(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1)
        return env.get(name, m.group(0))

    return _VAR.sub(rep, s)


def _client(kubeconfig: str) -> Any:
    return k8s_config.new_client_from_config(config_file=kubeconfig)  # type: ignore[no-untyped-call]


def _write_file(path: Path, data: bytes, mode: int | None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(mode if mode is not None else 0o644)


def _log_tail(path: Path | None, lines: int = 80, limit: int = 2048) -> str:
    if path is None:
        return ""
    try:
        text = path.read_bytes()[-64 * 1024 :].decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])[-limit:]


def _mem_total() -> int:
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return 4 * 2**30


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def _os_image() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    return "linux"


def _arch() -> str:
    m = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(m, m)


def _short(e: BaseException) -> str:
    s = f"{type(e).__name__}: {e}"
    return s.splitlines()[0][:200] if s else type(e).__name__


@contextlib.contextmanager
def _quiet_urllib3() -> Iterator[None]:
    urllib3.disable_warnings()
    logging.getLogger("urllib3").setLevel(logging.ERROR)
    yield


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="kubelet.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--kubeconfig", required=True)
    p.add_argument("--root-dir", type=Path, required=True, help="pod dirs, volumes, logs")
    p.add_argument("--node-name", default=socket.gethostname())
    p.add_argument("--memory", help="allocatable memory (quantity); default: machine total - 512Mi")
    p.add_argument("--cpu", help="allocatable cpu (quantity); default: cores (not scheduled on)")
    p.add_argument("--max-pods", type=int, default=110)
    p.add_argument(
        "--image-config",
        default=os.environ.get("GISJOB_KUBELET_IMAGES"),
        help="images rules file (JSON/YAML) or inline JSON; env GISJOB_KUBELET_IMAGES",
    )
    p.add_argument("--no-cgroups", action="store_true", help="never enforce memory limits")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("kubernetes").setLevel(logging.WARNING)
    with _quiet_urllib3():
        kubelet = Kubelet(
            kubeconfig=args.kubeconfig,
            root_dir=args.root_dir,
            node_name=args.node_name,
            memory=int(parse_quantity(args.memory)) if args.memory else None,
            cpu=args.cpu,
            max_pods=args.max_pods,
            images=ImageRules.load(args.image_config),
            use_cgroups=not args.no_cgroups,
        )
        signal.signal(signal.SIGTERM, lambda *_: kubelet.stopping.set())
        signal.signal(signal.SIGINT, lambda *_: kubelet.stopping.set())
        kubelet.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
