"""Benchmark ``gisjob run`` — the local executor — in one run, on generated data.

Not a test: nothing here asserts. Three measurements, each printed as a table:

1. **Speed-up of 2 workers over 1** on the demo raster (4096², tiles 1024 → 16 tiles) for
   CPU-bound operations (``expression``, ``ndvi``): median wall time of ``gisjob run
   --no-resume --workers 1`` vs ``--workers 2`` (round-robin, separate output folders).
   Target ≥ 1.7× on 2 cores (PASS/MISS). What bounds it comes from the same runs: the
   runner's serial start (before the first launch) and finish (after the last tile), the
   per-tile worker seconds of ``manifest.json`` (``tiles[].attempts[].seconds``, the
   runner-seen life of each worker) split into in-worker work (``tile.end`` of the worker
   logs) and start-up, and how busy the worker slots were.
2. **The runner's overhead per tile** over ~1,000 tiny tiles (a 2048² raster, block 64,
   ``tileSize`` 64, operation ``scale``): wall / tiles, and against a worker run alone on
   one tiny tile (and ``python -c "import gisjob_worker.worker"``), the bookkeeping part
   ``wall × workers / tiles − one worker's time``.
3. **The memory model's over-prediction** on every demo job (``scale``, ``ndvi``,
   ``expression``, ``filter``) from ``--report DIR``'s ``summary.json``.

Usage::

    python bench/local.py                       # all three, about 10 minutes on 2 cores
    python bench/local.py --only speedup --repeat 5 --json local.json

Every command runs as its own child under ``bench/_measure.py`` (wall, CPU of the whole
process tree, peak RSS). Other load on the machine is measured for each run from
``/proc/stat`` (busy CPU time not spent by our process tree) and printed, so contaminated
numbers are visible.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import Measurement, report_targets, run_measured, warm_page_cache
from worker import clean_env, environment, plan_of, warm_bytecode

MIB = 1024**2
RUN_TIMEOUT = 1800.0
DEMO_VERSION = 1
DEMO_JOBS = ("scale", "ndvi", "expression", "filter")
SPEEDUP_TARGET = 1.7
RUN_EXTRA: list[str] = []  # extra ``gisjob run`` arguments (--no-fork-server)
TINY_BLOCK = 64
TINY_COLS = 32  # tiles per row of the tiny raster (2048 px)
CALIBRATION_TILES = 64
STANDALONE_REPEAT = 5
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ============================================================================ helpers


def _python() -> str:
    return sys.executable


def _gisjob() -> list[str]:
    """How to call the CLI: the same interpreter the runner starts its workers with."""
    return [_python(), "-m", "gisjob_worker"]


def _tail(text: str, lines: int = 6) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def cpu_busy_seconds() -> float:
    """Busy CPU seconds of the whole machine so far (all CPUs; ``/proc/stat``)."""
    with open("/proc/stat", encoding="ascii") as fh:
        fields = [int(x) for x in fh.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    guest = sum(fields[8:10]) if len(fields) > 9 else 0  # already counted in user/nice
    return (sum(fields) - idle - guest) / CLK_TCK


def _epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


def _json_lines(text: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                d = json.loads(line)
            except ValueError:
                continue
            if isinstance(d, dict):
                out.append(d)
    return out


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


# ======================================================================== one gisjob run


@dataclass
class JobRun:
    """One ``gisjob run``: the child's measurement plus what its manifest and logs say."""

    label: str
    workers: int
    m: Measurement
    foreign_cpu: float  # busy CPU seconds of other processes during the run
    tiles: int = 0
    lives: list[float] = field(default_factory=list)  # manifest attempts[].seconds
    in_worker: list[float] = field(default_factory=list)  # tile.end seconds (worker logs)
    first_launch: float | None = None  # seconds after spawn
    last_tile: float | None = None  # seconds after spawn
    cgroups: bool | None = None
    summary: dict[str, Any] | None = None  # --report summary.json, without samples
    manifest_tiles: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.m.ok

    @property
    def wall(self) -> float:
        return self.m.wall_seconds

    @property
    def start(self) -> float | None:
        """Runner's serial start: interpreter, imports, plan, until the first launch."""
        return self.first_launch

    @property
    def finish(self) -> float | None:
        """Runner's serial finish: after the last tile (manifest, mosaic, summary, exit)."""
        return None if self.last_tile is None else max(0.0, self.wall - self.last_tile)

    @property
    def loop(self) -> float | None:
        if self.first_launch is None or self.last_tile is None:
            return None
        return self.last_tile - self.first_launch

    @property
    def worker_seconds(self) -> float:
        return sum(self.lives)

    @property
    def slot_use(self) -> float | None:
        """Fraction of the worker slots' time (tile loop × workers) a worker was alive."""
        loop = self.loop
        return self.worker_seconds / (loop * self.workers) if loop else None

    @property
    def other_cores(self) -> float:
        return self.foreign_cpu / self.wall if self.wall > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "workers": self.workers,
            "ok": self.ok,
            "returncode": self.m.returncode,
            "wallSeconds": round(self.wall, 4),
            "cpuSeconds": round(self.m.cpu_seconds, 3),
            "peakRssBytes": self.m.peak_rss_bytes,
            "otherLoadCores": round(self.other_cores, 3),
            "tiles": self.tiles,
            "runnerStartSeconds": self.start,
            "runnerFinishSeconds": self.finish,
            "tileLoopSeconds": self.loop,
            "workerSeconds": round(self.worker_seconds, 3),
            "meanWorkerLifeSeconds": statistics.fmean(self.lives) if self.lives else None,
            "meanInWorkerSeconds": statistics.fmean(self.in_worker) if self.in_worker else None,
            "slotUse": self.slot_use,
            "cgroups": self.cgroups,
            "argv": list(self.m.argv),
            "error": None if self.ok else _tail(self.m.stderr),
        }


def run_job(
    job: Path,
    out: Path,
    workers: int,
    label: str,
    report: Path | None = None,
) -> JobRun:
    """``gisjob run JOB --no-resume --workers N`` from a clean output folder."""
    _remove(out)
    if report is not None:
        _remove(report)
    os.sync()  # flush the previous run's dirty pages outside this run's timing
    argv = [*_gisjob(), "run", str(job), "--no-resume", "--workers", str(workers), *RUN_EXTRA]
    if report is not None:
        argv += ["--report", str(report)]
    busy0 = cpu_busy_seconds()
    t0 = time.time()
    m = run_measured(argv, env=clean_env(), timeout=RUN_TIMEOUT)
    foreign = max(0.0, cpu_busy_seconds() - busy0 - m.cpu_seconds)
    # The launcher's clock starts a few ms after t0; so the start is slightly overstated.
    r = JobRun(label, workers, m, foreign)
    events = _json_lines(m.stderr)
    launches = [e for e in events if e.get("event") == "launch"]
    done = [e for e in events if e.get("event") == "tile"]
    if launches:
        r.first_launch = _epoch(launches[0]["timestamp"]) - t0
        r.cgroups = all(bool(e.get("cgroup")) for e in launches)
    if done:
        r.last_tile = _epoch(done[-1]["timestamp"]) - t0
    manifest = out / "manifest.json"
    if manifest.exists():
        data = json.loads(manifest.read_text())
        r.manifest_tiles = data.get("tiles", [])
        r.tiles = sum(1 for t in r.manifest_tiles if t.get("outcome") != "split")
        r.lives = [float(a["seconds"]) for t in r.manifest_tiles for a in t.get("attempts", [])]
    logs = out / ".gisjob" / "logs"
    if logs.is_dir():
        for f in sorted(logs.glob("*.log")):
            for e in _json_lines(f.read_text(errors="replace")):
                if e.get("event") == "tile.end" and e.get("seconds") is not None:
                    r.in_worker.append(float(e["seconds"]))
    if report is not None and (report / "summary.json").exists():
        s = json.loads((report / "summary.json").read_text())
        s.pop("samples", None)
        r.summary = s
    return r


def _run_line(r: JobRun, i: int, n: int) -> str:
    status = "ok" if r.ok else f"FAILED rc={r.m.returncode}"
    return (
        f"    run {i}/{n} {r.label:<14} workers {r.workers}  {r.wall:7.2f} s  "
        f"CPU {r.m.cpu_seconds:6.2f} s  other load {r.other_cores:4.2f} cores  {status}"
    )


# ============================================================================ demo data


def ensure_demo(workdir: Path, raster_size: int, tile_size: int) -> Path:
    """``gisjob demo`` once into WORKDIR/demo (regenerated when its parameters change)."""
    demo = workdir / "demo"
    stamp = demo / "bench-stamp.json"
    want = {"version": DEMO_VERSION, "rasterSize": raster_size, "tileSize": tile_size}
    try:
        have = json.loads(stamp.read_text())
    except (OSError, ValueError):
        have = None
    if have != want or not all((demo / "jobs" / f"{j}.yaml").exists() for j in DEMO_JOBS):
        _remove(demo)
        t0 = time.perf_counter()
        argv = [*_gisjob(), "demo", str(demo)]
        argv += ["--raster-size", str(raster_size), "--tile-size", str(tile_size)]
        print(f"  generating demo data: {' '.join(argv[2:])} ...", flush=True)
        subprocess.run(argv, check=True, env=clean_env(), capture_output=True)
        stamp.write_text(json.dumps(want))
        print(f"  generated in {time.perf_counter() - t0:.1f} s", flush=True)
    return demo


def derived_job(demo: Path, name: str, out: Path, jobs_dir: Path, tag: str) -> Path:
    """The demo job ``name`` with absolute input and its own output folder."""
    import yaml

    doc = yaml.safe_load((demo / "jobs" / f"{name}.yaml").read_text())
    spec = doc["spec"]
    spec["input"]["uri"] = str((demo / "jobs" / spec["input"]["uri"]).resolve())
    spec["output"]["uri"] = str(out)
    jobs_dir.mkdir(parents=True, exist_ok=True)
    path = jobs_dir / f"{name}-{tag}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


# ================================================================ 1. speed-up 2 vs 1


@dataclass
class SpeedupResult:
    op: str
    runs: dict[int, list[JobRun]]

    def ok_runs(self, w: int) -> list[JobRun]:
        return [r for r in self.runs.get(w, []) if r.ok]

    def med(self, w: int, attr: str) -> float | None:
        vals = [getattr(r, attr) for r in self.ok_runs(w)]
        return _median([float(v) for v in vals if v is not None])

    def speedup(self, w: int) -> float | None:
        a, b = self.med(1, "wall"), self.med(w, "wall")
        return a / b if a and b else None


def _per_tile(runs: list[JobRun]) -> tuple[float | None, float | None]:
    """Median over runs of the mean worker life and of the mean in-worker time per tile."""
    lives = [statistics.fmean(r.lives) for r in runs if r.lives]
    work = [statistics.fmean(r.in_worker) for r in runs if r.in_worker]
    return _median(lives), _median(work)


def bench_speedup(
    args: argparse.Namespace, demo: Path
) -> tuple[list[SpeedupResult], list[dict[str, Any]]]:
    workdir: Path = args.workdir
    w2: int = args.workers
    print(f"\n== 1. speed-up: --workers {w2} vs --workers 1 (median of {args.repeat})", flush=True)
    print(f"  warming page cache: {warm_page_cache(demo / 's2.tif') / MIB:.0f} MiB read")
    results: list[SpeedupResult] = []
    for op in args.ops:
        jobs: dict[int, tuple[Path, Path]] = {}
        for w in (1, w2):
            out = workdir / "out" / "speedup" / f"{op}-w{w}"
            jobs[w] = (derived_job(demo, op, out, workdir / "jobs", f"w{w}"), out)
        plan = plan_of(jobs[1][0])
        t = plan["tiles"][0]
        print(
            f"  {op}: {len(plan['tiles'])} tiles of {t['window']['width']}x"
            f"{t['window']['height']}, request {t['memoryRequestBytes'] / MIB:.0f} MiB each",
            flush=True,
        )
        res = SpeedupResult(op, {1: [], w2: []})
        for i in range(args.repeat):
            for w in (1, w2):  # round-robin: drift in machine load hits both alike
                job, out = jobs[w]
                r = run_job(job, out, w, op)
                res.runs[w].append(r)
                print(_run_line(r, i + 1, args.repeat), flush=True)
                if not r.ok:
                    print("      " + _tail(r.m.stderr).replace("\n", "\n      "), flush=True)
        results.append(res)
    print_speedup(results, w2, args.repeat)
    return results, speedup_targets(results, w2)


def print_speedup(results: list[SpeedupResult], w2: int, repeat: int) -> None:
    print()
    print(
        f"Speed-up of {w2} workers over 1: demo raster 4096² uint16 ×4 bands, 16 tiles of "
        f"1024²; median of {repeat} runs; seconds"
    )
    head = (
        f"  {'op':<11}{'workers':>8}{'wall':>8}{'start':>7}{'loop':>7}{'finish':>7}"
        f"{'Σ tile':>8}{'life/tile':>10}{'work/tile':>10}{'startup %':>10}{'slots':>7}"
        f"{'CPU':>7}{'other':>7}"
    )
    print(head)
    print("  " + "-" * (len(head) - 2))
    for res in results:
        for w in (1, w2):
            ok = res.ok_runs(w)
            if not ok:
                print(f"  {res.op:<11}{w:>8}  FAILED")
                continue
            life, work = _per_tile(ok)
            share = (life - work) / life if life and work is not None else None
            print(
                f"  {res.op:<11}{w:>8}{_fmt(res.med(w, 'wall'), '.2f'):>8}"
                f"{_fmt(res.med(w, 'start'), '.2f'):>7}{_fmt(res.med(w, 'loop'), '.2f'):>7}"
                f"{_fmt(res.med(w, 'finish'), '.2f'):>7}"
                f"{_fmt(res.med(w, 'worker_seconds'), '.2f'):>8}{_fmt(life, '.3f'):>10}"
                f"{_fmt(work, '.3f'):>10}{_fmt(share and share * 100, '.0f'):>10}"
                f"{_fmt(res.med(w, 'slot_use'), '.2f'):>7}"
                f"{_fmt(_median([r.m.cpu_seconds for r in ok]), '.2f'):>7}"
                f"{_fmt(res.med(w, 'other_cores'), '.2f'):>7}"
            )
    print(
        "  start: spawn → first worker launched (runner interpreter, imports, plan); loop:\n"
        "  first launch → last tile done; finish: last tile → exit (manifest, mosaic VRT,\n"
        "  summary). Σ tile: worker seconds of manifest.json (attempts[].seconds, the life of\n"
        "  each worker process as the runner saw it); life/tile = Σ tile / tiles; work/tile:\n"
        "  the worker's own tile.end seconds (plan of its tile, read, compute, write, commit);\n"
        "  startup %: (life − work) / life = interpreter start + imports; slots: Σ tile /\n"
        "  (loop × workers); CPU: the whole process tree; other: CPU cores busy with other\n"
        "  processes during the run (/proc/stat minus our tree)."
    )


def speedup_losses(res: SpeedupResult, w2: int) -> list[tuple[str, float]]:
    """From the ideal ``w2``× to the measured speed-up, one cause at a time.

    ``wall = start + loop + finish``; the loop is Σ worker life / (workers × slot use).
    Each step replaces one quantity of the ideal run by its measured value.
    """
    w1 = res.med(1, "wall")
    s1 = (res.med(1, "start") or 0.0) + (res.med(1, "finish") or 0.0)
    sn = (res.med(w2, "start") or 0.0) + (res.med(w2, "finish") or 0.0)
    l1, ln = res.med(1, "loop"), res.med(w2, "loop")
    t1, tn = res.med(1, "worker_seconds"), res.med(w2, "worker_seconds")
    if not (w1 and l1 and ln and t1 and tn):
        return []
    return [
        ("ideal", float(w2)),
        ("serial runner start + finish", w1 / (s1 + l1 / w2)),
        (
            f"workers slower with {w2} at once (Σ tile ×{tn / t1:.2f})",
            w1 / (s1 + l1 * tn / t1 / w2),
        ),
        ("worker slots idle between tiles", w1 / (s1 + ln)),
        (f"serial part with {w2} workers", w1 / (sn + ln)),
    ]


def speedup_targets(results: list[SpeedupResult], w2: int) -> list[dict[str, Any]]:
    cpus = len(os.sched_getaffinity(0))
    out: list[dict[str, Any]] = []
    for res in results:
        text = f"{res.op}: {w2} workers ≥ {SPEEDUP_TARGET}× faster than 1 on {cpus} CPUs"
        sp = res.speedup(w2)
        w1, wn = res.med(1, "wall"), res.med(w2, "wall")
        if sp is None or w1 is None or wn is None:
            out.append({"target": text, "status": "N/A", "detail": "a run failed"})
            continue
        losses = speedup_losses(res, w2)
        steps = " → ".join(f"{why} {v:.2f}×" for why, v in losses)
        drops = [(losses[i - 1][1] - v, why) for i, (why, v) in enumerate(losses) if i]
        detail = [f"speed-up {sp:.2f}× ({w1:.2f} s → {wn:.2f} s)"]
        if steps:
            detail.append(f"from the ideal: {steps}")
        if drops:
            detail.append(f"largest loss: {max(drops)[1]}")
        life1, work1 = _per_tile(res.ok_runs(1))
        if life1 and work1 is not None:
            detail.append(
                f"per tile {life1:.2f} s of worker life, of which {work1:.2f} s in the tile and "
                f"{life1 - work1:.2f} s ({(life1 - work1) / life1:.0%}) interpreter start-up + "
                f"imports (parallel CPU work: it scales with cores, but costs "
                f"{(life1 - work1) / work1 if work1 else math.inf:.1f}× the tile's own work)"
            )
        other = max(res.med(1, "other_cores") or 0.0, res.med(w2, "other_cores") or 0.0)
        if other > 0.2:
            detail.append(f"CONTAMINATED: other processes used up to {other:.2f} cores")
        out.append(
            {
                "target": text,
                "status": "N/A" if cpus < w2 else ("PASS" if sp >= SPEEDUP_TARGET else "MISS"),
                "detail": "; ".join(detail),
                "speedup": sp,
                "losses": losses,
                "otherLoadCores": other,
            }
        )
    return out


# ========================================================= 2. runner overhead per tile


def tiny_raster(workdir: Path, tiles: int) -> tuple[Path, int]:
    """A uint16 raster of ``tiles`` 64² blocks (32 per row, the last row full)."""
    rows = max(1, math.ceil(tiles / TINY_COLS))
    cols = min(tiles, TINY_COLS)
    n = rows * cols
    path = workdir / "data" / f"tiny-{cols}x{rows}.tif"
    if not path.exists():
        import numpy as np
        import rasterio
        from rasterio.transform import from_origin

        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        w, h = cols * TINY_BLOCK, rows * TINY_BLOCK
        rng = np.random.default_rng(1)
        with rasterio.open(
            tmp,
            "w",
            driver="GTiff",
            width=w,
            height=h,
            count=1,
            dtype="uint16",
            crs="EPSG:32632",
            transform=from_origin(600_000.0, 5_100_000.0, 10.0, 10.0),
            tiled=True,
            blockxsize=TINY_BLOCK,
            blockysize=TINY_BLOCK,
        ) as dst:
            dst.write(rng.integers(1, 10000, size=(1, h, w), dtype=np.uint16))
        os.replace(tmp, path)
    return path, n


def tiny_job(workdir: Path, src: Path, tiles: int) -> tuple[Path, Path]:
    out = workdir / "out" / "tiny" / f"scale-{tiles}"
    job = workdir / "jobs" / f"tiny-{tiles}.yaml"
    job.parent.mkdir(parents=True, exist_ok=True)
    job.write_text(f"""\
apiVersion: gisjob.dev/v1alpha1
kind: GisJob
metadata: {{name: bench-tiny-{tiles}}}
spec:
  input: {{uri: {json.dumps(str(src))}}}
  operation:
    name: scale
    params: {{scale: 0.0001, offset: 0.0, dtype: float32}}
  output: {{uri: {json.dumps(str(out))}, format: GTiff}}
  tiling: {{tileSize: {TINY_BLOCK}}}
  resources: {{memoryHeadroom: 0.2, gdalCacheMax: 8Mi}}
  parallelism: 2
""")
    return job, out


@dataclass
class Standalone:
    name: str
    runs: list[Measurement] = field(default_factory=list)
    in_process: list[float] = field(default_factory=list)

    @property
    def wall(self) -> float | None:
        return _median([r.wall_seconds for r in self.runs if r.ok])

    @property
    def work(self) -> float | None:
        return _median(self.in_process)

    @property
    def peak(self) -> int | None:
        ok = [r.peak_rss_bytes for r in self.runs if r.ok]
        return max(ok) if ok else None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "wallSeconds": self.wall,
            "inProcessSeconds": self.work,
            "peakRssBytes": self.peak,
            "runs": [round(r.wall_seconds, 4) for r in self.runs],
            "argv": list(self.runs[0].argv) if self.runs else None,
        }


def standalone(job: Path, out: Path, request: int, repeat: int) -> list[Standalone]:
    """What one worker costs on its own: the interpreter, the imports, a whole tiny tile."""
    result = out.parent / f"{out.name}-standalone-result.json"
    worker_argv = [*_gisjob(), "worker", "--job", str(job), "--tile", "r0000c0000"]
    worker_argv += ["--memory", str(request), "--chunk-scale", "1.0", "--result", str(result)]
    cases = [
        Standalone("python -c pass"),
        Standalone("import gisjob_worker.worker"),
        Standalone("gisjob worker, 1 tiny tile"),
    ]
    argvs = [
        [_python(), "-c", "pass"],
        [_python(), "-c", "import gisjob_worker.worker"],
        worker_argv,
    ]
    for _ in range(repeat):
        for case, argv in zip(cases, argvs, strict=True):
            _remove(out)
            m = run_measured(argv, env=clean_env(), timeout=120)
            case.runs.append(m)
            if m.ok and argv is worker_argv:
                rec = _json_lines(m.stdout)
                if rec and rec[-1].get("seconds") is not None:
                    case.in_process.append(float(rec[-1]["seconds"]))
            elif not m.ok:
                print(f"    {case.name}: FAILED {_tail(m.stderr, 2)}", flush=True)
    _remove(out)
    result.unlink(missing_ok=True)
    return cases


@dataclass
class OverheadResult:
    run: JobRun
    alone: list[Standalone]
    planned_tiles: int

    @property
    def worker_alone(self) -> float | None:
        return self.alone[-1].wall

    def per_tile(self) -> dict[str, float | None]:
        r, n, w = self.run, max(1, self.run.tiles), self.run.workers
        alone = self.worker_alone
        slot = r.wall * w / n
        loop_slot = (r.loop or 0.0) * w / n
        life = statistics.fmean(r.lives) if r.lives else None
        return {
            "wallMsPerTile": r.wall / n * 1e3,
            "slotMsPerTile": slot * 1e3,
            "workerAloneMs": alone * 1e3 if alone is not None else None,
            "bookkeepingMsPerTile": (slot - alone) * 1e3 if alone is not None else None,
            "workerLifeInRunMs": life * 1e3 if life is not None else None,
            "slotIdleMsPerTile": (loop_slot - life) * 1e3 if life is not None else None,
            "serialMsPerTile": ((r.start or 0.0) + (r.finish or 0.0)) * w / n * 1e3,
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "tiles": self.run.tiles,
            "plannedTiles": self.planned_tiles,
            "run": self.run.to_json(),
            "standalone": [s.to_json() for s in self.alone],
            "perTile": self.per_tile(),
        }


def bench_overhead(args: argparse.Namespace) -> list[OverheadResult]:
    workdir: Path = args.workdir
    w: int = args.workers
    print(f"\n== 2. runner overhead per tile: tiny tiles (64², op scale), --workers {w}")
    results: list[OverheadResult] = []
    target = args.tiny_tiles
    sizes = [CALIBRATION_TILES, target] if target > CALIBRATION_TILES else [target]
    for k, size in enumerate(sizes):
        wanted = size
        if k > 0:  # size the big run from the calibration run so it fits the time budget
            cal = results[0]
            per_slot = cal.run.wall * w / max(1, cal.run.tiles)
            budget = float(args.tiny_budget)
            fits = int(budget * w / per_slot) if per_slot > 0 else wanted
            if fits < wanted:
                n = max(CALIBRATION_TILES, fits // TINY_COLS * TINY_COLS)
                print(
                    f"  {wanted} tiles would take ~{wanted * per_slot / w:.0f} s (> "
                    f"--tiny-budget {budget:.0f} s at {per_slot * 1e3:.0f} ms per tile-slot): "
                    f"measuring {n} tiles instead",
                    flush=True,
                )
                wanted = n
        src, n = tiny_raster(workdir, wanted)
        job, out = tiny_job(workdir, src, n)
        plan = plan_of(job)
        planned = len(plan["tiles"])
        request = int(plan["tiles"][0]["memoryRequestBytes"])
        print(f"  {planned} tiles ({src.name}), request {request / MIB:.0f} MiB each", flush=True)
        warm_page_cache(src)
        alone = standalone(job, out, request, STANDALONE_REPEAT)
        r = run_job(job, out, w, f"tiny-{planned}")
        print(_run_line(r, 1, 1), flush=True)
        if not r.ok:
            print("      " + _tail(r.m.stderr).replace("\n", "\n      "), flush=True)
        results.append(OverheadResult(r, alone, planned))
    print_overhead(results, w)
    return results


def print_overhead(results: list[OverheadResult], w: int) -> None:
    print()
    print("One worker on its own (median of 5; wall of the whole process)")
    for k, res in enumerate(results):
        for s in res.alone if k == 0 else res.alone[-1:]:
            extra = ""
            if s.work is not None:
                extra = f"  (in the tile {s.work * 1e3:.0f} ms; {res.planned_tiles}-tile job)"
            print(
                f"  {s.name:<32}{_fmt(s.wall and s.wall * 1e3, '.0f'):>7} ms  "
                f"peak {_fmt(s.peak and s.peak / MIB, '.0f'):>4} MiB{extra}"
            )
    print()
    print(f"Runner overhead per tile, --workers {w}; ms per tile")
    head = (
        f"  {'tiles':>6}{'wall s':>8}{'wall/tile':>10}{'×W/tile':>9}{'alone':>7}"
        f"{'bookkeep':>10}{'life':>7}{'slot idle':>10}{'serial':>8}{'other':>7}"
    )
    print(head)
    print("  " + "-" * (len(head) - 2))
    for res in results:
        if not res.run.ok:
            print(f"  {res.planned_tiles:>6}  FAILED")
            continue
        p = res.per_tile()
        print(
            f"  {res.run.tiles:>6}{res.run.wall:>8.1f}{_fmt(p['wallMsPerTile'], '.1f'):>10}"
            f"{_fmt(p['slotMsPerTile'], '.0f'):>9}{_fmt(p['workerAloneMs'], '.0f'):>7}"
            f"{_fmt(p['bookkeepingMsPerTile'], '.0f'):>10}"
            f"{_fmt(p['workerLifeInRunMs'], '.0f'):>7}{_fmt(p['slotIdleMsPerTile'], '.1f'):>10}"
            f"{_fmt(p['serialMsPerTile'], '.1f'):>8}{res.run.other_cores:>7.2f}"
        )
    print(
        f"  ×W/tile = wall × {w} / tiles (worker-slot time per tile); alone: one `gisjob\n"
        "  worker` on one tile of the same job, run by itself; bookkeep = ×W/tile − alone\n"
        "  (everything the run costs per tile beyond one worker alone: the runner's serial\n"
        "  start/finish, its loop, and workers slowing each other on shared CPUs); life: mean\n"
        "  worker life in the run (manifest); slot idle = (loop × W − Σ life) / tiles, the\n"
        "  runner's reap → launch gap per tile; serial = (start + finish) × W / tiles."
    )


# ===================================================== 3. memory model over-prediction


def bench_memory(args: argparse.Namespace, demo: Path) -> list[JobRun]:
    workdir: Path = args.workdir
    w: int = args.workers
    print(f"\n== 3. memory model: every demo job with --report, --workers {w}", flush=True)
    runs: list[JobRun] = []
    for name in DEMO_JOBS:
        out = workdir / "out" / "memory" / name
        job = derived_job(demo, name, out, workdir / "jobs", "memory")
        plan_of(job)
        r = run_job(job, out, w, name, report=workdir / "out" / "memory" / f"{name}-report")
        print(_run_line(r, 1, 1), flush=True)
        if not r.ok:
            print("      " + _tail(r.m.stderr).replace("\n", "\n      "), flush=True)
        runs.append(r)
    print_memory(runs)
    return runs


def _largest_estimate(r: JobRun, tile: str) -> int | None:
    for t in r.manifest_tiles:
        if t.get("id") == tile:
            est = t.get("estimatedPeakBytes")
            return int(est) if est is not None else None
    return None


def print_memory(runs: list[JobRun]) -> None:
    print()
    print("Memory model: over-prediction = estimate / measured peak RSS per tile (summary.json)")
    head = (
        f"  {'job':<11}{'tiles':>6}{'min':>7}{'median':>8}{'max':>7}{'under':>7}"
        f"{'largest peak':>14}{'its estimate':>14}{'its request':>13}{'peak/req':>10}  tile"
    )
    print(head)
    print("  " + "-" * (len(head) - 2))
    for r in runs:
        s = r.summary
        if not r.ok or s is None:
            print(f"  {r.label:<11}  FAILED (no summary.json)")
            continue
        over = s.get("overPrediction") or {}
        under = s.get("underPredictedTiles") or []
        big = s.get("largestPeak") or {}
        peak, req = big.get("peakRssBytes"), big.get("memoryRequestBytes")
        est = _largest_estimate(r, big.get("tile", ""))
        ratio = peak / req if peak and req else None
        print(
            f"  {r.label:<11}{s.get('tiles', 0):>6}{_fmt(over.get('min'), '.2f'):>7}"
            f"{_fmt(over.get('median'), '.2f'):>8}{_fmt(over.get('max'), '.2f'):>7}"
            f"{len(under):>7}"
            f"{_fmt(peak and peak / MIB, '.1f'):>10} MiB{_fmt(est and est / MIB, '.1f'):>10} MiB"
            f"{_fmt(req and req / MIB, '.1f'):>9} MiB{_fmt(ratio, '.0%'):>10}"
            f"  {big.get('tile', '-')}"
        )
    print(
        "  under = tiles whose peak exceeded the estimate (underPredictedTiles; must be 0);\n"
        "  peak/req = the largest peak over its worker's memory request (estimate + headroom)."
    )


def memory_targets(runs: list[JobRun]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for r in runs:
        text = f"{r.label}: no tile's peak above the model's estimate (underPredictedTiles empty)"
        if r.summary is None:
            out.append({"target": text, "status": "N/A", "detail": "run failed"})
            continue
        under = r.summary.get("underPredictedTiles") or []
        over = r.summary.get("overPrediction") or {}
        out.append(
            {
                "target": text,
                "status": "MISS" if under else "PASS",
                "detail": f"under-predicted: {under or 'none'}; over-prediction median "
                f"{_fmt(over.get('median'), '.2f')}×",
            }
        )
    return out


# ================================================================================ main


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--workdir",
        type=Path,
        default=Path("/var/tmp/gisjob-bench-local"),
        help="demo data, jobs and outputs (default %(default)s)",
    )
    p.add_argument("--repeat", type=int, default=3, help="runs per case (default %(default)s)")
    p.add_argument(
        "--workers", type=int, default=2, help="the parallel worker count (default %(default)s)"
    )
    p.add_argument(
        "--ops",
        type=lambda s: [x for x in s.split(",") if x],
        default=["expression", "ndvi"],
        help="demo jobs for the speed-up (default expression,ndvi)",
    )
    p.add_argument("--raster-size", type=int, default=4096, help="demo raster edge")
    p.add_argument("--tile-size", type=int, default=1024, help="demo raster jobs' tileSize")
    p.add_argument(
        "--tiny-tiles", type=int, default=1024, help="tiles of the overhead run (default 1024)"
    )
    p.add_argument(
        "--tiny-budget",
        type=float,
        default=420.0,
        help="seconds the big overhead run may take; fewer tiles when the 64-tile "
        "calibration run says it would not fit (default %(default)s)",
    )
    p.add_argument(
        "--only",
        type=lambda s: [x for x in s.split(",") if x],
        default=["speedup", "overhead", "memory"],
        help="sections: speedup,overhead,memory (default all)",
    )
    p.add_argument(
        "--no-fork-server",
        action="store_true",
        help="run gisjob with --no-fork-server (a fresh interpreter per tile), to compare",
    )
    p.add_argument("--json", dest="json_path", type=Path, help="save all numbers here")
    args = p.parse_args(argv)
    if args.repeat < 1 or args.workers < 2 or args.tiny_tiles < 1:
        p.error("--repeat ≥ 1, --workers ≥ 2 and --tiny-tiles ≥ 1")
    unknown = set(args.only) - {"speedup", "overhead", "memory"}
    if unknown:
        p.error(f"--only: unknown section(s) {sorted(unknown)}")
    return args


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    if args.no_fork_server:
        RUN_EXTRA.append("--no-fork-server")
    started = time.perf_counter()
    env = environment()
    env["affinityCpus"] = len(os.sched_getaffinity(0))
    env["runArgs"] = RUN_EXTRA
    print("environment: " + json.dumps(env))
    warm_bytecode()
    report: dict[str, Any] = {"environment": env, "targets": []}
    demo = None
    if {"speedup", "memory"} & set(args.only):
        demo = ensure_demo(args.workdir, args.raster_size, args.tile_size)
    if "speedup" in args.only:
        assert demo is not None
        print(f"  load average before: {_load()}")
        sp, targets = bench_speedup(args, demo)
        report["speedup"] = [
            {
                "op": r.op,
                "speedup": r.speedup(args.workers),
                "runs": {str(w): [x.to_json() for x in rs] for w, rs in r.runs.items()},
            }
            for r in sp
        ]
        report["targets"].extend(targets)
        print(f"  load average after: {_load()}")
    if "overhead" in args.only:
        print(f"  load average before: {_load()}")
        oh = bench_overhead(args)
        report["overhead"] = [o.to_json() for o in oh]
        print(f"  load average after: {_load()}")
    if "memory" in args.only:
        assert demo is not None
        mem = bench_memory(args, demo)
        report["memory"] = [{"job": r.label, "summary": r.summary, "run": r.to_json()} for r in mem]
        report["targets"].extend(memory_targets(mem))
    report_targets(report, args.json_path)
    print(f"\ntotal {time.perf_counter() - started:.0f} s; load average now {_load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
