#!/usr/bin/env python3
"""A real Kubernetes control plane on loopback for tests: etcd, kube-apiserver,
kube-controller-manager and the test kubelet (``kubelet.py``).

CLI::

    python tests/cluster/devcluster.py up --state .state/cluster     # start (idempotent)
    python tests/cluster/devcluster.py status --state .state/cluster
    python tests/cluster/devcluster.py down --state .state/cluster   # stop + remove state

Python::

    cluster = DevCluster(Path("/tmp/c"))
    cluster.up()
    cluster.kubeconfig                      # admin (system:masters)
    cluster.kubeconfig_for("alice", ["devs"])   # client-certificate identity, RBAC only
    cluster.service_account_kubeconfig("ns", "sa")  # TokenRequest identity
    cluster.restart_apiserver()
    cluster.down()

Every process is started detached (own session) with its PID and start time in
``STATE/pids/<name>.pid``; ``down`` stops exactly those processes.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
SETUP_SCRIPT = HERE / "setup_binaries.sh"
KUBELET_SCRIPT = HERE / "kubelet.py"

NODE_NAME = "gisjob-dev-node"
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"
SERVICE_CIDR = "10.96.0.0/16"
# Controllers run by kube-controller-manager. `*` would also start node lifecycle,
# volume attach/detach and friends, which need a real kubelet; this set is what
# batch workloads and the operator exercise.
KCM_CONTROLLERS = (
    "namespace,garbagecollector,serviceaccount,serviceaccount-token,root-ca-cert-publisher,"
    "pvc-protection,pv-protection,resourcequota,podgc,job,replicaset,deployment,cronjob,"
    "endpoint,endpointslice"
)
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kubelet")
STOP_GRACE = {"kube-apiserver": 1.0, "kube-controller-manager": 1.0}


class ClusterError(RuntimeError):
    """A one-line, user-facing error (CLI prints it and exits 1)."""


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(text[-lines:])


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_in_use(port: int) -> bool:
    """True if something listens on 127.0.0.1:port (TIME_WAIT leftovers do not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


# --------------------------------------------------------------------------- binaries


def find_binaries(build: bool = True) -> Path:
    """Directory holding etcd, kube-apiserver, kube-controller-manager.

    Runs ``setup_binaries.sh`` (honours ``KUBEBUILDER_ASSETS`` and the cache); with
    ``build=False`` it never installs or compiles. Raises ClusterError on failure.
    """
    env = dict(os.environ)
    if not build:
        env["GISJOB_NO_BUILD"] = "1"
    proc = subprocess.run(
        ["bash", str(SETUP_SCRIPT)], env=env, capture_output=True, text=True, check=False
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    if proc.returncode != 0 or not lines:
        tail = "\n".join(proc.stderr.strip().splitlines()[-8:])
        raise ClusterError(f"control-plane binaries missing and not built: {tail}")
    path = Path(lines[-1])
    for name in ("etcd", "kube-apiserver", "kube-controller-manager"):
        if not os.access(path / name, os.X_OK):
            raise ClusterError(f"build missing: {path / name} is not executable")
    return path


# --------------------------------------------------------------------------- PKI


def _openssl(*args: str, cwd: Path | None = None) -> None:
    proc = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ClusterError(f"openssl {args[0]} failed: {proc.stderr.strip().splitlines()[-1:]}")


def _ec_key(path: Path) -> None:
    _openssl(
        "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(path)
    )
    path.chmod(0o600)


def _subject(cn: str, orgs: Sequence[str] = ()) -> str:
    def esc(v: str) -> str:
        return v.replace("\\", "\\\\").replace("/", "\\/").replace("=", "\\=")

    return "/" + "/".join([*(f"O={esc(o)}" for o in orgs), f"CN={esc(cn)}"])


@dataclass
class Pki:
    dir: Path

    @property
    def ca_crt(self) -> Path:
        return self.dir / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.dir / "ca.key"

    def ensure(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        if not self.ca_crt.exists():
            _ec_key(self.ca_key)
            _openssl(
                "req",
                "-x509",
                "-new",
                "-key",
                str(self.ca_key),
                "-out",
                str(self.ca_crt),
                "-days",
                "3650",
                "-subj",
                "/CN=gisjob-dev-ca",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
            )
        if not (self.dir / "apiserver.crt").exists():
            sans = [
                "IP:127.0.0.1",
                "IP:10.96.0.1",
                "DNS:localhost",
                "DNS:kubernetes",
                "DNS:kubernetes.default",
                "DNS:kubernetes.default.svc",
                "DNS:kubernetes.default.svc.cluster.local",
            ]
            self.sign("apiserver", "kube-apiserver", (), server=True, sans=sans)
        if not (self.dir / "sa.key").exists():
            _openssl(
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
                str(self.dir / "sa.key"),
            )
            _openssl(
                "pkey", "-in", str(self.dir / "sa.key"), "-pubout", "-out", str(self.dir / "sa.pub")
            )

    def sign(
        self,
        name: str,
        cn: str,
        orgs: Sequence[str],
        *,
        server: bool = False,
        sans: Sequence[str] = (),
        out_dir: Path | None = None,
    ) -> tuple[Path, Path]:
        """Issue a certificate signed by the CA into ``out_dir`` (default: the
        PKI dir): returns (cert, key). Subject CN=user, O=groups (Kubernetes'
        client-certificate identity mapping)."""
        out = out_dir or self.dir
        out.mkdir(parents=True, exist_ok=True)
        key, crt = out / f"{name}.key", out / f"{name}.crt"
        _ec_key(key)
        ext = [
            "basicConstraints=critical,CA:FALSE",
            "keyUsage=critical,digitalSignature,keyEncipherment",
        ]
        ext.append(f"extendedKeyUsage={'serverAuth' if server else 'clientAuth'}")
        if sans:
            ext.append("subjectAltName=" + ",".join(sans))
        with tempfile.TemporaryDirectory() as tmp:
            csr, extfile = Path(tmp) / "req.csr", Path(tmp) / "ext.cnf"
            extfile.write_text("\n".join(ext) + "\n")
            _openssl("req", "-new", "-key", str(key), "-out", str(csr), "-subj", _subject(cn, orgs))
            _openssl(
                "x509",
                "-req",
                "-in",
                str(csr),
                "-CA",
                str(self.ca_crt),
                "-CAkey",
                str(self.ca_key),
                "-set_serial",
                str(int.from_bytes(os.urandom(8), "big")),
                "-days",
                "3650",
                "-out",
                str(crt),
                "-extfile",
                str(extfile),
            )
        return crt, key


# --------------------------------------------------------------------------- processes


def _proc_start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":
        return None  # zombie: dead, just not reaped
    return fields[19]


@dataclass
class PidFile:
    path: Path

    def write(self, pid: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(f"{pid} {_proc_start_time(pid) or ''}\n")

    def read(self) -> int | None:
        """The PID if that exact process (same start time) is still alive."""
        try:
            pid_s, _, started = self.path.read_text().strip().partition(" ")
            pid = int(pid_s)
        except (OSError, ValueError):
            return None
        now = _proc_start_time(pid)
        if now is None or (started and now != started):
            return None
        return pid


@dataclass
class ComponentStatus:
    name: str
    pid: int | None
    log: Path

    @property
    def running(self) -> bool:
        return self.pid is not None


@dataclass
class DevCluster:
    """A control plane whose whole state lives in ``state_dir``."""

    state_dir: Path
    bin_dir: Path | None = None
    kubelet: bool = True
    kubelet_args: list[str] = field(default_factory=list)
    etcd_in_memory: bool = True
    _children: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.state_dir = Path(self.state_dir).resolve()
        self.pki = Pki(self.state_dir / "pki")

    # ----------------------------------------------------------------- paths/state
    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "kubeconfig"

    @property
    def _state_file(self) -> Path:
        return self.state_dir / "state.json"

    def _load_state(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(self._state_file.read_text())
            return data
        except (OSError, ValueError):
            return {}

    def _save_state(self, state: dict[str, Any]) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self._state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self._state_file)

    @property
    def server(self) -> str:
        port = self._load_state().get("apiserver_port")
        if not port:
            raise ClusterError(f"no cluster state in {self.state_dir}")
        return f"https://127.0.0.1:{port}"

    def _pidfile(self, name: str) -> PidFile:
        return PidFile(self.state_dir / "pids" / f"{name}.pid")

    def _logfile(self, name: str) -> Path:
        return self.state_dir / "logs" / f"{name}.log"

    def status(self) -> dict[str, ComponentStatus]:
        return {
            name: ComponentStatus(name, self._pidfile(name).read(), self._logfile(name))
            for name in COMPONENTS
        }

    # ----------------------------------------------------------------- lifecycle
    def up(self, timeout: float = 90.0) -> bool:
        """Start whatever is not running. Returns False if everything already was."""
        st = self.status()
        wanted = [c for c in COMPONENTS if c != "kubelet" or self.kubelet]
        if all(st[c].running for c in wanted) and self._readyz():
            return False
        if self.bin_dir is None:
            self.bin_dir = find_binaries(build=True)
        for exe in ("etcd", "kube-apiserver", "kube-controller-manager"):
            if not os.access(self.bin_dir / exe, os.X_OK):
                raise ClusterError(f"build missing: {self.bin_dir / exe}")
        state = self._load_state()
        state.setdefault("etcd_port", free_port())
        state.setdefault("etcd_peer_port", free_port())
        state.setdefault("apiserver_port", free_port())
        state.setdefault("admin_token", secrets.token_hex(16))
        state.setdefault("kcm_token", secrets.token_hex(16))
        state.setdefault("kubelet_token", secrets.token_hex(16))
        state["bin_dir"] = str(self.bin_dir)
        if "etcd_data" not in state:
            shm = Path("/dev/shm")
            if self.etcd_in_memory and shm.is_dir() and os.access(shm, os.W_OK):
                state["etcd_data"] = tempfile.mkdtemp(prefix="gisjob-etcd-", dir=shm)
            else:
                state["etcd_data"] = str(self.state_dir / "etcd")
        self._save_state(state)
        self.pki.ensure()
        self._write_token_file(state)
        self._write_kubeconfigs(state)
        ports = []
        if not st["etcd"].running:
            ports += [("etcd", state["etcd_port"]), ("etcd", state["etcd_peer_port"])]
        if not st["kube-apiserver"].running:
            ports.append(("kube-apiserver", state["apiserver_port"]))
        for who, port in ports:
            if port_in_use(port):
                raise ClusterError(
                    f"port in use: 127.0.0.1:{port} ({who}); stop what holds it, or run "
                    f"`down --state {self.state_dir}` to start over with new ports"
                )
        deadline = time.monotonic() + timeout
        if not st["etcd"].running:
            self._start_etcd(state, deadline)
        # The kubelet retries until the API server is up: start it at once so its
        # (Python) start-up overlaps the API server's. The controller manager
        # gives up after 10 s without a healthy API server: start it after.
        if not st["kube-apiserver"].running:
            self._start_apiserver(state, deadline, wait=False)
        if self.kubelet and not st["kubelet"].running:
            self._start_kubelet(state)
        self._wait_apiserver(deadline)
        if not st["kube-controller-manager"].running:
            self._start_kcm(state)
        self._wait_ready(deadline)
        return True

    def down(self, keep_state: bool = False, keep_etcd_data: bool | None = None) -> list[str]:
        """Stop every component this state dir started; remove the state. etcd's
        data (in /dev/shm by default) is kept with the state unless
        ``keep_etcd_data=False``."""
        if keep_etcd_data is None:
            keep_etcd_data = keep_state
        stopped = []
        for name in reversed(COMPONENTS):
            if self._stop(name):
                stopped.append(name)
        state = self._load_state()
        etcd_data = state.get("etcd_data")
        if not keep_etcd_data and etcd_data and str(etcd_data).startswith("/dev/shm/"):
            _rmtree(Path(etcd_data))
        if not keep_state:
            _rmtree(self.state_dir)
        return stopped

    def restart_apiserver(self, downtime: float = 0.0, timeout: float = 60.0) -> None:
        """Stop kube-apiserver, wait ``downtime`` seconds, start it again on the same port."""
        self._stop("kube-apiserver")
        time.sleep(downtime)
        state = self._load_state()
        self._start_apiserver(state, time.monotonic() + timeout)

    def stop_component(self, name: str) -> bool:
        return self._stop(name)

    # ----------------------------------------------------------------- identities
    def kubeconfig_for(self, user: str, groups: Sequence[str] = ()) -> Path:
        """A kubeconfig authenticating as ``user`` in ``groups`` with a client
        certificate signed by the cluster CA (no API-server restart needed).
        The identity has only what RBAC grants it."""
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in user)
        tag = secrets.token_hex(3)
        crt, key = self.pki.sign(f"{safe}-{tag}", user, groups, out_dir=self.pki.dir / "users")
        path = self.state_dir / "identities" / f"{safe}-{tag}.kubeconfig"
        self._write_kubeconfig(
            path,
            user,
            {
                "client-certificate-data": _b64(crt.read_bytes()),
                "client-key-data": _b64(key.read_bytes()),
            },
        )
        return path

    def service_account_token(
        self, namespace: str, name: str, expiration_seconds: int = 3600
    ) -> str:
        """A bound token for an existing ServiceAccount via the TokenRequest API."""
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"audiences": [SA_ISSUER], "expirationSeconds": expiration_seconds},
        }
        resp = self.request(
            "POST", f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token", body
        )
        return str(resp["status"]["token"])

    def service_account_kubeconfig(
        self, namespace: str, name: str, expiration_seconds: int = 3600
    ) -> Path:
        token = self.service_account_token(namespace, name, expiration_seconds)
        path = self.state_dir / "identities" / f"sa-{namespace}-{name}.kubeconfig"
        self._write_kubeconfig(path, f"system:serviceaccount:{namespace}:{name}", {"token": token})
        return path

    # ----------------------------------------------------------------- raw API access
    def _ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.pki.ca_crt))

    def request(
        self, method: str, path: str, body: Any = None, timeout: float = 10.0
    ) -> dict[str, Any]:
        """One admin request to the API server (JSON in/out)."""
        token = self._load_state()["admin_token"]
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.server + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, context=self._ssl_context(), timeout=timeout) as r:
                out: dict[str, Any] = json.loads(r.read() or b"{}")
                return out
        except urllib.error.HTTPError as e:
            raise ClusterError(f"{method} {path}: HTTP {e.code}: {e.read()[:300]!r}") from e

    def _readyz(self) -> bool:
        try:
            token = self._load_state()["admin_token"]
            req = urllib.request.Request(self.server + "/readyz")
            req.add_header("Authorization", f"Bearer {token}")
            with urllib.request.urlopen(req, context=self._ssl_context(), timeout=2) as r:
                return bool(r.status == 200)
        except (OSError, KeyError, ClusterError, ssl.SSLError):
            return False

    # ----------------------------------------------------------------- internals
    def _write_token_file(self, state: dict[str, Any]) -> None:
        lines = [
            f'{state["admin_token"]},admin,admin-uid,"system:masters"',
            f"{state['kcm_token']},system:kube-controller-manager,kcm-uid",
            f'{state["kubelet_token"]},gisjob-test-kubelet,kubelet-uid,"system:masters"',
        ]
        path = self.pki.dir / "tokens.csv"
        path.write_text("\n".join(lines) + "\n")
        path.chmod(0o600)

    def _write_kubeconfig(self, path: Path, user: str, creds: dict[str, str]) -> None:
        state = self._load_state()
        cfg = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "gisjob-dev",
                    "cluster": {
                        "server": f"https://127.0.0.1:{state['apiserver_port']}",
                        "certificate-authority-data": _b64(self.pki.ca_crt.read_bytes()),
                    },
                }
            ],
            "users": [{"name": user, "user": creds}],
            "contexts": [
                {"name": "gisjob-dev", "context": {"cluster": "gisjob-dev", "user": user}}
            ],
            "current-context": "gisjob-dev",
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(cfg, sort_keys=False))
        tmp.chmod(0o600)
        tmp.replace(path)

    def _write_kubeconfigs(self, state: dict[str, Any]) -> None:
        self._write_kubeconfig(self.kubeconfig, "admin", {"token": state["admin_token"]})
        self._write_kubeconfig(
            self.state_dir / "kcm.kubeconfig",
            "system:kube-controller-manager",
            {"token": state["kcm_token"]},
        )
        self._write_kubeconfig(
            self.state_dir / "kubelet.kubeconfig",
            "gisjob-test-kubelet",
            {"token": state["kubelet_token"]},
        )

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> int:
        log = self._logfile(name)
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            out.write(f"\n==== {time.strftime('%H:%M:%S')} starting {name}\n".encode())
            out.flush()
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=self.state_dir,
                env=env,
            )
        self._children[name] = proc
        self._pidfile(name).write(proc.pid)
        return proc.pid

    def _check_alive(self, name: str) -> None:
        proc = self._children.get(name)
        if proc is not None and proc.poll() is not None:
            raise ClusterError(
                f"{name} exited with code {proc.returncode}; log tail:\n"
                + _log_tail(self._logfile(name))
            )
        if proc is None and self._pidfile(name).read() is None:
            raise ClusterError(
                f"{name} is not running; log tail:\n" + _log_tail(self._logfile(name))
            )

    def _start_etcd(self, state: dict[str, Any], deadline: float) -> None:
        assert self.bin_dir is not None
        cport, pport = state["etcd_port"], state["etcd_peer_port"]
        for p in (cport, pport):
            if port_in_use(p):
                raise ClusterError(
                    f"port in use: 127.0.0.1:{p} (etcd); run `down` or pick a new state dir"
                )
        client = f"http://127.0.0.1:{cport}"
        peer = f"http://127.0.0.1:{pport}"
        self._spawn(
            "etcd",
            [
                str(self.bin_dir / "etcd"),
                "--name=gisjob-dev",
                f"--data-dir={state['etcd_data']}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=gisjob-dev={peer}",
                "--initial-cluster-state=new",
                "--quota-backend-bytes=2147483648",
                "--log-level=warn",
                "--logger=zap",
            ],
        )
        while True:
            self._check_alive("etcd")
            try:
                with urllib.request.urlopen(client + "/health", timeout=1) as r:
                    if json.loads(r.read()).get("health") == "true":
                        return
            except (OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise ClusterError(
                    "etcd failed to become healthy; log tail:\n" + _log_tail(self._logfile("etcd"))
                )
            time.sleep(0.1)

    def _start_apiserver(self, state: dict[str, Any], deadline: float, wait: bool = True) -> None:
        if self.bin_dir is None:
            self.bin_dir = Path(state["bin_dir"])
        port = state["apiserver_port"]
        if port_in_use(port):
            raise ClusterError(f"port in use: 127.0.0.1:{port} (kube-apiserver)")
        pki = self.pki.dir
        self._spawn(
            "kube-apiserver",
            [
                str(self.bin_dir / "kube-apiserver"),
                f"--etcd-servers=http://127.0.0.1:{state['etcd_port']}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={port}",
                "--insecure-port=0",
                f"--cert-dir={pki}",
                f"--tls-cert-file={pki / 'apiserver.crt'}",
                f"--tls-private-key-file={pki / 'apiserver.key'}",
                f"--client-ca-file={pki / 'ca.crt'}",
                f"--token-auth-file={pki / 'tokens.csv'}",
                "--authorization-mode=Node,RBAC",
                f"--service-account-issuer={SA_ISSUER}",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                f"--api-audiences={SA_ISSUER}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--endpoint-reconciler-type=none",
                # pods/log is proxied to the kubelet's port at its InternalIP (loopback)
                "--kubelet-preferred-address-types=InternalIP",
                "--allow-privileged=true",
                "--feature-gates=BoundServiceAccountTokenVolume=true",
                "--profiling=false",
                "--event-ttl=1h",
                "--v=1",
            ],
        )
        if wait:
            self._wait_apiserver(deadline)

    def _wait_apiserver(self, deadline: float) -> None:
        while True:
            self._check_alive("kube-apiserver")
            if self._readyz():
                return
            if time.monotonic() > deadline:
                raise ClusterError(
                    "kube-apiserver not ready (/readyz); log tail:\n"
                    + _log_tail(self._logfile("kube-apiserver"))
                )
            time.sleep(0.2)

    def _start_kcm(self, state: dict[str, Any]) -> None:
        assert self.bin_dir is not None
        pki = self.pki.dir
        controllers = os.environ.get("GISJOB_KCM_CONTROLLERS", KCM_CONTROLLERS)
        self._spawn(
            "kube-controller-manager",
            [
                str(self.bin_dir / "kube-controller-manager"),
                f"--kubeconfig={self.state_dir / 'kcm.kubeconfig'}",
                "--port=0",
                "--secure-port=0",
                "--leader-elect=false",
                f"--controllers={controllers}",
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={pki / 'sa.key'}",
                f"--root-ca-file={pki / 'ca.crt'}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--concurrent-gc-syncs=5",
                "--v=1",
            ],
        )

    def _start_kubelet(self, state: dict[str, Any]) -> None:
        self._spawn(
            "kubelet",
            [
                sys.executable,
                str(KUBELET_SCRIPT),
                f"--kubeconfig={self.state_dir / 'kubelet.kubeconfig'}",
                f"--root-dir={self.state_dir / 'kubelet'}",
                f"--node-name={NODE_NAME}",
                *self.kubelet_args,
            ],
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    def _wait_ready(self, deadline: float) -> None:
        """Ready = /readyz ok, the `default` ServiceAccount exists (controller
        manager works) and, with the kubelet, the node is Ready."""
        while True:
            self._check_alive("kube-apiserver")
            self._check_alive("kube-controller-manager")
            if self.kubelet:
                self._check_alive("kubelet")
            ok = self._readyz()
            if ok:
                try:
                    self.request("GET", "/api/v1/namespaces/default/serviceaccounts/default")
                except ClusterError:
                    ok = False
            if ok and self.kubelet:
                # registered by *this* kubelet process (not a stale Ready node)
                ok = _read_text(self.state_dir / "kubelet" / "kubelet.ready") == str(
                    self._pidfile("kubelet").read()
                )
            if ok and self.kubelet:
                try:
                    node = self.request("GET", f"/api/v1/nodes/{NODE_NAME}")
                    conds = node.get("status", {}).get("conditions", [])
                    ok = any(c["type"] == "Ready" and c["status"] == "True" for c in conds)
                except ClusterError:
                    ok = False
            if ok:
                return
            if time.monotonic() > deadline:
                what = "kubelet node" if self.kubelet else "controller manager"
                name = "kubelet" if self.kubelet else "kube-controller-manager"
                raise ClusterError(
                    f"{what} not ready in time; log tail:\n" + _log_tail(self._logfile(name))
                )
            time.sleep(0.2)

    def _stop(self, name: str, grace: float | None = None) -> bool:
        """SIGTERM the component's process group, SIGKILL after ``grace`` seconds.
        kube-apiserver drains watches for up to 60 s on SIGTERM; it keeps no state
        of its own, so it (and the controller manager) get a short grace."""
        if grace is None:
            grace = STOP_GRACE.get(name, 10.0)
        pid = self._pidfile(name).read()
        child = self._children.pop(name, None)
        if pid is None:
            if child is not None:
                child.poll()
            self._pidfile(name).path.unlink(missing_ok=True)
            return False
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if child is not None:
                if child.poll() is not None:
                    break
            elif _proc_start_time(pid) is None:
                break
            time.sleep(0.05)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            if child is not None:
                child.wait(5)
        self._pidfile(name).path.unlink(missing_ok=True)
        return True


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _rmtree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def running_cluster(state_dir: Path, **kwargs: Any) -> Iterator[DevCluster]:
    cluster = DevCluster(state_dir, **kwargs)
    cluster.up()
    try:
        yield cluster
    finally:
        cluster.down()


# --------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="devcluster", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name, help_ in (
        ("up", "start the control plane (idempotent)"),
        ("down", "stop everything started from STATE and remove STATE"),
        ("status", "show component status"),
    ):
        p = sub.add_parser(name, help=help_)
        p.add_argument(
            "--state",
            type=Path,
            default=REPO / ".state" / "cluster",
            help="state directory (default: <repo>/.state/cluster)",
        )
        if name == "up":
            p.add_argument(
                "--no-kubelet", action="store_true", help="do not start the test kubelet"
            )
            p.add_argument("--bin-dir", type=Path, help="directory with etcd/kube-apiserver/...")
            p.add_argument("--timeout", type=float, default=90.0)
            p.add_argument(
                "--kubelet-arg",
                action="append",
                default=[],
                help="extra argument for kubelet.py (repeatable)",
            )
        if name == "down":
            p.add_argument("--keep-state", action="store_true")
    args = parser.parse_args(argv)
    state: Path = args.state
    try:
        if args.cmd == "up":
            cluster = DevCluster(
                state,
                bin_dir=args.bin_dir,
                kubelet=not args.no_kubelet,
                kubelet_args=list(args.kubelet_arg),
            )
            t0 = time.monotonic()
            started = cluster.up(timeout=args.timeout)
            if started:
                print(f"dev cluster up in {time.monotonic() - t0:.1f}s at {cluster.server}")
            else:
                print(f"dev cluster already up at {cluster.server}")
            print(f"export KUBECONFIG={cluster.kubeconfig}")
            print(
                "kubectl get nodes    # then: devcluster.py down --state " + str(cluster.state_dir)
            )
        elif args.cmd == "down":
            cluster = DevCluster(state)
            if not cluster.state_dir.exists():
                print(f"nothing to stop: {cluster.state_dir} does not exist")
                return 0
            stopped = cluster.down(keep_state=args.keep_state)
            print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
        else:
            cluster = DevCluster(state)
            if not cluster.state_dir.exists():
                print(f"down ({cluster.state_dir} does not exist)")
                return 1
            rc = 0
            for st in cluster.status().values():
                if st.running:
                    print(f"{st.name:<24} running  pid {st.pid}")
                else:
                    print(f"{st.name:<24} stopped  (log: {st.log})")
                    rc = 1 if st.name != "kubelet" else rc
            with contextlib.suppress(ClusterError):
                print(
                    f"api server {cluster.server}: {'ready' if cluster._readyz() else 'NOT ready'}"
                )
                print(f"export KUBECONFIG={cluster.kubeconfig}")
            return rc
    except ClusterError as e:
        first, *rest = str(e).splitlines()
        print(f"error: {first}", file=sys.stderr)
        for line in rest:
            print(f"  | {line}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `devcluster.py status | head` is fine
    sys.exit(main())
