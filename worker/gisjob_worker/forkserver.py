"""Fork server for local workers: import once, fork a fresh worker per tile.

Starting a worker costs ~0.5 s of interpreter start and imports (NumPy, rasterio or pyogrio,
pydantic, the operations) — most of a small tile's life. ``gisjob run`` therefore starts one
server process per run that configures GDAL for the job and imports the worker's stack
once, then forks a child per tile. A child is still a process of its own: its own cgroup
(joined before it runs any tile code), its own ``RLIMIT_DATA`` backstop where there is no
cgroup, its own exit code, its memory back to the OS when it exits. Pages inherited from the
server are shared copy-on-write, so N workers hold one copy of the imports. A child runs
the worker's attempt function (:func:`attempt.main`: the tile, its ledger record, its
result record, metrics) — what ``gisjob worker`` runs, without the CLI in between.

Protocol (JSON lines): the client writes ``{"id", "attempt", "stderr", "cgroupProcs",
"backstop"}`` (``attempt``: an :class:`attempt.AttemptRequest`) to the server's stdin; the
server answers ``{"id", "pid"}`` after the fork and ``{"pid", "code"}`` when it has reaped a
child (``code`` as ``Popen.returncode``: negative for a signal). The server ignores SIGINT
(the runner decides), dies with the runner (``PR_SET_PDEATHSIG``), and its children die
with it.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import selectors
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:  # the client side stays light: no pydantic, GDAL or NumPy at import
    from .attempt import AttemptRequest

PR_SET_PDEATHSIG = 1
READY = "ready"
START_TIMEOUT = 120.0
LOST_EXIT = 1  # the exit code reported for workers whose server died under them


class ForkServerError(RuntimeError):
    """The fork server failed to start or exited while workers were running."""


def die_with_parent() -> None:
    try:
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


# ---------------------------------------------------------------------------------- server


def _warm_up(job_file: str) -> None:
    """Configure GDAL for the job and import everything its workers import."""
    from . import gdalenv
    from .guard import tune_allocator
    from .registry import get_operation
    from .spec import load_job

    tune_allocator()
    job = load_job(Path(job_file))
    gdalenv.configure_for(job)  # before GDAL loads: cache, threads, spec.gdalConfig
    import prometheus_client  # noqa: F401

    from . import attempt, ledger, ledgerstore, logs, metrics, worker  # noqa: F401

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the probe dataset is not georeferenced
        if get_operation(job.spec.operation.name).kind == "vector":
            worker.import_vector_stack()
        else:
            worker.import_raster_stack()


def _child(request: dict[str, Any], keep: Sequence[int]) -> None:
    """In the forked child: become a worker process, run the attempt, never return."""
    code = 1
    try:
        die_with_parent()
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        procs = request.get("cgroupProcs")
        if procs:
            Path(procs).write_text(str(os.getpid()))
        backstop = request.get("backstop")
        if backstop:
            resource.setrlimit(resource.RLIMIT_DATA, (int(backstop), int(backstop)))
        null = os.open(os.devnull, os.O_RDWR)
        err = os.open(request["stderr"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.dup2(null, 0)
        os.dup2(null, 1)
        os.dup2(err, 2)  # sys.stdout/sys.stderr keep their objects: fds 1 and 2 now point here
        for fd in {null, err, *keep}:
            if fd > 2:
                os.close(fd)
        from .attempt import AttemptRequest, main

        attempt = AttemptRequest.from_json(request["attempt"])
        code = main(attempt)
    except BaseException:
        try:
            traceback.print_exc()
        except BaseException:
            pass
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def serve(job_file: str, stdin: IO[bytes], stdout: IO[bytes]) -> int:
    """The server loop: fork on request, report exits; returns when the client closes stdin."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _warm_up(job_file)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    os.set_blocking(wake_r, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    in_fd, out_fd = stdin.fileno(), stdout.fileno()

    def send(message: dict[str, Any]) -> None:
        data = (json.dumps(message) + "\n").encode()
        while data:
            data = data[os.write(out_fd, data) :]

    def reap() -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            send({"pid": pid, "code": os.waitstatus_to_exitcode(status)})

    send({"event": READY, "pid": os.getpid()})
    sel = selectors.DefaultSelector()
    sel.register(in_fd, selectors.EVENT_READ)
    sel.register(wake_r, selectors.EVENT_READ)
    buf = b""
    open_input = True
    while open_input:
        for key, _ in sel.select():
            if key.fd == wake_r:
                try:
                    while os.read(wake_r, 512):
                        pass
                except BlockingIOError:
                    pass
                reap()
                continue
            chunk = os.read(in_fd, 65536)
            if not chunk:
                open_input = False
                break
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                request = json.loads(line)
                pid = os.fork()
                if pid == 0:
                    sel.close()
                    _child(request, (in_fd, out_fd, wake_r, wake_w))
                send({"id": request["id"], "pid": pid})
        reap()
    # the client is gone: nothing may outlive it
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    return 0


def server_main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m gisjob_worker.forkserver JOB_FILE", file=sys.stderr)
        return 2
    return serve(args[0], sys.stdin.buffer, sys.stdout.buffer)


# ---------------------------------------------------------------------------------- client


class ForkedWorker:
    """A worker forked by the server, with the slice of ``Popen`` the executor uses."""

    def __init__(self, server: ForkServer, pid: int) -> None:
        self.server = server
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                self.server.pump()
            except ForkServerError:
                pass  # the server is gone: it has set our returncode (LOST_EXIT)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(["forked worker", str(self.pid)], timeout or 0)
            time.sleep(0.02)
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:  # reaped pids are never signalled (they may be reused)
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class ForkServer:
    """Client side: start the server for a job, fork workers through it."""

    def __init__(
        self,
        job_file: Path,
        log_path: Path | None = None,
        python: str = sys.executable,
        wait: bool = True,
    ) -> None:
        """Start the server; with ``wait=False`` return at once (it warms up meanwhile and
        the first :meth:`spawn` waits for it). Without ``log_path`` its stderr goes to an
        anonymous temporary file (nothing is left behind, even if this process is killed);
        a :class:`ForkServerError` saves it under a name the error gives."""
        self._saved_log: Path | None = None
        self._log_path = log_path
        # an anonymous file (unlinked at creation) or the named one, appended to
        self._log: IO[bytes] = (
            tempfile.TemporaryFile() if log_path is None else open(log_path, "ab")  # noqa: SIM115
        )
        self.proc = subprocess.Popen(
            [python, "-m", "gisjob_worker.forkserver", str(job_file)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            preexec_fn=die_with_parent,  # noqa: PLW1509 — the runner has no threads
            start_new_session=True,
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._out = self.proc.stdout.fileno()
        os.set_blocking(self._out, False)
        self._buf = b""
        self._next = 0
        self._workers: dict[int, ForkedWorker] = {}
        self._replies: dict[int, int] = {}
        self._early: dict[int, int] = {}  # exits reported before their spawn reply was read
        self._ready = False
        self._closed = False
        self.lost: str | None = None  # why the server is gone, once it is
        if wait:
            self.wait_ready()

    def log_name(self) -> str:
        """The server's log file; an anonymous one is saved to a named file first."""
        if self._log_path is not None:
            return str(self._log_path)
        if self._saved_log is None:
            fd, name = tempfile.mkstemp(prefix="gisjob-forkserver-", suffix=".log")
            with os.fdopen(fd, "wb") as out:
                self._log.flush()
                self._log.seek(0)
                out.write(self._log.read())
            self._saved_log = Path(name)
        return str(self._saved_log)

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while not self._ready:
            if time.monotonic() > deadline:
                message = f"the fork server did not start ({self.log_name()})"
                self.close()
                raise ForkServerError(message)
            self.pump(0.05)

    def _lines(self, timeout: float) -> list[dict[str, Any]]:
        sel = selectors.DefaultSelector()
        sel.register(self._out, selectors.EVENT_READ)
        try:
            if not sel.select(timeout):
                return []
        finally:
            sel.close()
        try:
            chunk = os.read(self._out, 65536)
        except BlockingIOError:
            return []
        if not chunk:
            if self.lost is None:
                code = self.proc.wait()
                self.lost = f"the fork server exited (code {code}); its log: {self.log_name()}"
                # its children died with it (PDEATHSIG); their exit status died with it too
                for worker in self._workers.values():
                    worker.returncode = LOST_EXIT
                self._workers.clear()
            raise ForkServerError(self.lost)
        self._buf += chunk
        out = []
        while b"\n" in self._buf:
            line, self._buf = self._buf.split(b"\n", 1)
            out.append(json.loads(line))
        return out

    def pump(self, timeout: float = 0.0) -> None:
        """Read what the server has said (waiting at most ``timeout`` for the first line)."""
        for message in self._lines(timeout):
            if message.get("event") == READY:
                self._ready = True
            elif "id" in message:
                self._replies[int(message["id"])] = int(message["pid"])
            elif "code" in message:
                pid, code = int(message["pid"]), int(message["code"])
                worker = self._workers.pop(pid, None)
                if worker is not None:
                    worker.returncode = code
                else:
                    self._early[pid] = code

    def spawn(
        self,
        attempt: AttemptRequest,
        stderr_path: Path,
        cgroup_procs: Path | None = None,
        backstop: int | None = None,
    ) -> ForkedWorker:
        """Fork a worker running ``attempt`` (stderr to ``stderr_path``)."""
        assert self.proc.stdin is not None
        self.wait_ready()
        self._next += 1
        request = {
            "id": self._next,
            "attempt": attempt.to_json(),
            "stderr": str(stderr_path),
            "cgroupProcs": str(cgroup_procs) if cgroup_procs else None,
            "backstop": backstop,
        }
        try:
            self.proc.stdin.write((json.dumps(request) + "\n").encode())
            self.proc.stdin.flush()
        except BrokenPipeError:
            raise ForkServerError(f"the fork server exited; its log: {self.log_name()}") from None
        while self._next not in self._replies:
            self.pump(1.0)
        pid = self._replies.pop(self._next)
        worker = ForkedWorker(self, pid)
        if pid in self._early:
            worker.returncode = self._early.pop(pid)
        else:
            self._workers[pid] = worker
        return worker

    def close(self) -> None:
        """Stop the server (its remaining children die with it); idempotent."""
        if self._closed:
            return
        self._closed = True
        for worker in self._workers.values():  # they die with the server
            worker.returncode = LOST_EXIT
        self._workers.clear()
        if self.proc.stdin is not None:
            try:
                self.proc.stdin.close()
            except BrokenPipeError:
                pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()


if __name__ == "__main__":
    status = server_main()
    sys.stdout.flush()
    sys.stderr.flush()
    # no interpreter teardown (~0.2 s with NumPy and GDAL loaded): the runner waits for it
    os._exit(status)
