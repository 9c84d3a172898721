"""Prometheus for tests: find (or install) Debian's prometheus/promtool, run a throw-away
Prometheus on loopback, query it, and read the panel targets of the gisjob dashboard.

Used by ``tests/monitoring`` and ``tests/cluster/test_monitoring_operator.py``. A Prometheus
started here always dies: :meth:`Prometheus.stop` in ``finally`` / the context manager, and a
watchdog timer kills it after ``max_lifetime`` seconds whatever the test does.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "charts" / "gisjob" / "rules" / "gisjob-alerts.yaml"
DASHBOARD = REPO / "charts" / "gisjob" / "dashboards" / "gisjob.json"
RULE_TESTS = Path(__file__).resolve().parent / "alerts_test.yaml"
INSTALL_SCRIPT = REPO / "scripts" / "install-prometheus.sh"
# what Grafana would put in for $__rate_interval with a 1 s scrape interval (4 x scrape)
RATE_INTERVAL = "10s"

_install_lock = threading.Lock()
_install: dict[str, tuple[Path, Path] | str] = {}  # "result": binaries, or why there are none


class Unavailable(RuntimeError):
    """prometheus/promtool are not installed and cannot be installed here."""


def _which(name: str, env: str) -> Path | None:
    if os.environ.get(env):
        p = Path(os.environ[env])
        return p if p.is_file() and os.access(p, os.X_OK) else None
    found = shutil.which(name)
    if found is None and Path(f"/usr/bin/{name}").exists():
        found = f"/usr/bin/{name}"
    return Path(found) if found else None


def _run_install_script() -> str | None:
    """Run scripts/install-prometheus.sh; None on success, else why it failed."""
    try:
        out = subprocess.run(
            ["bash", str(INSTALL_SCRIPT)],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return "scripts/install-prometheus.sh timed out"
    if out.returncode == 0:
        return None
    last = (out.stderr.strip().splitlines() or ["no output"])[-1]
    return f"scripts/install-prometheus.sh failed: {last}"


def _find_or_install(install: bool) -> tuple[Path, Path] | str:
    prom, tool = _which("prometheus", "PROMETHEUS"), _which("promtool", "PROMTOOL")
    if prom is not None and tool is not None:
        return prom, tool
    if not install or os.environ.get("GISJOB_NO_INSTALL") == "1":
        return (
            "prometheus/promtool not found (install Debian's `prometheus` package: "
            "bash scripts/install-prometheus.sh, or set PROMETHEUS/PROMTOOL)"
        )
    failed = _run_install_script()
    if failed:
        return f"Debian's prometheus package is not installed and {failed}"
    prom, tool = _which("prometheus", "PROMETHEUS"), _which("promtool", "PROMTOOL")
    if prom is None or tool is None:
        return "scripts/install-prometheus.sh ran but prometheus/promtool are still missing"
    return prom, tool


def binaries(install: bool = True) -> tuple[Path, Path]:
    """(prometheus, promtool): ``$PROMETHEUS``/``$PROMTOOL``, PATH, or Debian's package installed
    with ``scripts/install-prometheus.sh`` (once per process; ``GISJOB_NO_INSTALL=1`` never
    installs). Raises :class:`Unavailable` with the reason."""
    with _install_lock:
        if "result" not in _install:
            _install["result"] = _find_or_install(install)
        result = _install["result"]
    if isinstance(result, str):
        raise Unavailable(result)
    return result


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_port_range(n: int, attempts: int = 50) -> int:
    """A port BASE such that BASE .. BASE+n-1 are all free right now (on all interfaces)."""
    for _ in range(attempts):
        base = free_port()
        if base + n > 65535:
            continue
        socks = []
        try:
            for p in range(base, base + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("0.0.0.0", p))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError(f"no {n} consecutive free ports found")


class PrometheusError(RuntimeError):
    pass


class Prometheus:
    """A Prometheus process on 127.0.0.1 with its own config and TSDB under ``workdir``."""

    def __init__(
        self,
        binary: Path,
        workdir: Path,
        scrape_configs: list[dict[str, Any]],
        *,
        rule_files: Iterable[Path] = (),
        interval: str = "1s",
        max_lifetime: float = 240.0,
    ) -> None:
        self.binary = binary
        self.workdir = workdir
        self.scrape_configs = scrape_configs
        self.rule_files = [str(p) for p in rule_files]
        self.interval = interval
        self.max_lifetime = max_lifetime
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._watchdog: threading.Timer | None = None
        self.log = workdir / "prometheus.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _write_config(self) -> Path:
        config = {
            "global": {
                "scrape_interval": self.interval,
                "scrape_timeout": "900ms",
                "evaluation_interval": self.interval,
            },
            "rule_files": self.rule_files,
            "scrape_configs": self.scrape_configs,
        }
        path = self.workdir / "prometheus.yml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    def start(self, timeout: float = 30.0) -> Prometheus:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self._write_config()
        for attempt in range(3):  # the free port may be taken between probe and bind
            self.port = free_port()
            with open(self.log, "ab") as log:
                self.proc = subprocess.Popen(
                    [
                        str(self.binary),
                        f"--config.file={config}",
                        f"--storage.tsdb.path={self.workdir / 'tsdb'}",
                        "--storage.tsdb.retention.time=1h",
                        f"--web.listen-address=127.0.0.1:{self.port}",
                        "--web.enable-lifecycle",
                        "--log.level=info",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
            self._watchdog = threading.Timer(self.max_lifetime, self._expire)
            self._watchdog.daemon = True
            self._watchdog.start()
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break
                try:
                    with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as r:
                        if r.status == 200:
                            return self
                except (urllib.error.URLError, OSError):
                    pass
                time.sleep(0.1)
            self.stop()
            if "address already in use" not in self.tail() or attempt == 2:
                raise PrometheusError(f"prometheus did not become ready:\n{self.tail()}")
        raise PrometheusError("unreachable")

    def _expire(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()

    def stop(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def __enter__(self) -> Prometheus:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def tail(self, n: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    # ------------------------------------------------------------------------------ HTTP API

    def api(self, path: str, **params: str | float) -> Any:
        """GET /api/v1/<path>; returns the JSON body (``status`` success or error)."""
        qs = urllib.parse.urlencode({k: str(v) for k, v in params.items()})
        url = f"{self.url}/api/v1/{path}" + (f"?{qs}" if qs else "")
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:  # 400/422: bad query, the body says why
            return json.loads(e.read() or b"{}") | {"http_status": e.code}

    def query(self, expr: str, at: float | None = None) -> dict[str, Any]:
        params: dict[str, str | float] = {"query": expr}
        if at is not None:
            params["time"] = at
        body: dict[str, Any] = self.api("query", **params)
        return body

    def query_range(self, expr: str, start: float, end: float, step: float = 1.0) -> dict[str, Any]:
        body: dict[str, Any] = self.api("query_range", query=expr, start=start, end=end, step=step)
        return body

    def targets(self) -> list[dict[str, Any]]:
        return list(self.api("targets", state="active")["data"]["activeTargets"])

    def wait_scraping(self, job: str, count: int, timeout: float = 30.0) -> None:
        """Wait until ``count`` targets of ``job`` have been scraped at least once (up or down).

        Prometheus's discovery manager hands targets to the scrape loops only every 5 s, so a
        short-lived exporter started right after Prometheus may never be scraped."""
        deadline = time.monotonic() + timeout
        while True:
            scraped = [
                t
                for t in self.targets()
                if t["labels"].get("job") == job and not t["lastScrape"].startswith("0001-")
            ]
            if len(scraped) >= count:
                return
            if time.monotonic() > deadline:
                raise PrometheusError(f"{job}: not scraping after {timeout}s:\n{self.tail()}")
            time.sleep(0.1)

    def wait_up(
        self,
        job: str,
        count: int,
        timeout: float,
        until: Callable[[], bool] | None = None,
    ) -> set[str]:
        """Poll /api/v1/targets until ``count`` targets of ``job`` have each been seen up (not
        necessarily at once: short-lived workers come and go), or ``until()`` turns false
        (e.g. the process under test ended). Returns the scrape URLs seen up."""
        deadline = time.monotonic() + timeout
        seen: set[str] = set()
        while True:
            last = self.targets()
            seen |= {
                t["scrapeUrl"]
                for t in last
                if t["labels"].get("job") == job and t["health"] == "up"
            }
            if len(seen) >= count:
                return seen
            if time.monotonic() > deadline or (until is not None and not until()):
                raise PrometheusError(f"{job}: {len(seen)}/{count} targets seen up: {last}")
            time.sleep(0.2)

    def alerts(self) -> list[dict[str, Any]]:
        return list(self.api("alerts")["data"]["alerts"])

    def rules(self) -> list[dict[str, Any]]:
        return [r for g in self.api("rules")["data"]["groups"] for r in g["rules"]]


# ---------------------------------------------------------------------------------- dashboard


@dataclass(frozen=True)
class Target:
    panel_id: int
    panel_title: str
    ref_id: str
    expr: str

    @property
    def source(self) -> str:
        """Which process exports what the target reads: ``worker`` or ``operator``."""
        worker = "gisjob_worker_" in self.expr
        operator = "gisjob_operator_" in self.expr or re.search(r"\bup\{", self.expr) is not None
        if worker == operator:
            return "mixed" if worker else "none"
        return "worker" if worker else "operator"

    def __str__(self) -> str:
        return f"panel {self.panel_id} {self.panel_title!r} target {self.ref_id}"


def load_dashboard(path: Path = DASHBOARD) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def iter_panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows' nested panels included."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", []) or []


def targets(dashboard: Mapping[str, Any]) -> list[Target]:
    return [
        Target(int(p["id"]), str(p.get("title", "")), str(t.get("refId", "")), str(t["expr"]))
        for p in iter_panels(dashboard)
        if p.get("type") != "row"
        for t in p.get("targets", [])
    ]


def substitute(expr: str, variables: Mapping[str, str]) -> str:
    """Grafana's variable interpolation for the forms the dashboard uses (``$x``, ``${x}``)."""
    values = {"__rate_interval": RATE_INTERVAL, "__interval": "2s", "__range": "5m", **variables}

    def repl(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        if name not in values:
            raise KeyError(f"undefined variable ${name} in {expr!r}")
        return values[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", repl, expr)


def samples(result: Mapping[str, Any]) -> list[float]:
    """All sample values of a query / query_range answer."""
    out: list[float] = []
    for series in result.get("data", {}).get("result", []):
        if "values" in series:
            out.extend(float(v) for _, v in series["values"])
        elif "value" in series:
            out.append(float(series["value"][1]))
    return out


def finite(values: Iterable[float]) -> list[float]:
    return [v for v in values if math.isfinite(v)]
