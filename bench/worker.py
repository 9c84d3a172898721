"""Benchmark ``gisjob worker`` against the usual tools, in one run, on generated data.

Not a test: nothing here asserts. Every command runs as its own child process and is
measured whole — interpreter start, imports, planning, reading, computing, writing — for
wall time and peak resident memory (``ru_maxrss`` of that child from ``wait4``, like
``/usr/bin/time -v``). Python comparisons also report their in-process "work" time (after
their imports), so start-up cost is visible separately.

Raster (per ``--sizes``): ``float32(x)·1e-4 − 0.1`` on a uint16 raster, 1 band, tiled 512,
deflate, GDAL block cache 64 MiB, written as a tiled deflate float32 GeoTIFF by:
``gisjob worker`` (one tile covering the raster), a naive full read, ``gdal_translate
-scale``, ``gdal_calc.py`` and rioxarray + dask. Vector: ``population > 500`` + area in
EPSG:6933 on 500k polygons, written as GeoParquet, by ``gisjob worker``, a full
``geopandas.read_file`` and pyogrio ``read_dataframe(sql=...)``.

Usage::

    python bench/worker.py --sizes 8000            # a few minutes
    python bench/worker.py --json bench.json       # 8000 and 20000 (+ vector)

Tools that are not installed are skipped with a note (``bench/setup.sh`` installs the
GDAL command-line tools). Generated inputs are cached in ``--workdir``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import Measurement, report_targets, run_measured, warm_page_cache

MIB = 1024**2
BLOCK = 512
SCALE, OFFSET = 1e-4, -0.1
GDAL_CACHE_MIB = 64
RASTER_GEN_VERSION = 1
RASTER_TILE = "r0000c0000"
VECTOR_TILE = "f000000"
VECTOR_WHERE = "population > 500"
EQUAL_AREA = "EPSG:6933"
RUN_TIMEOUT = 3600.0
GISJOB = "gisjob worker"
GDAL_TRANSLATE = "gdal_translate"
READ_FILE = "geopandas read_file"


# ============================================================================ child tasks
# ``python bench/worker.py task NAME ARGS...`` — the comparison scripts, run as children.
# Each prints one JSON line with its in-process work time (after imports).


def _task_naive_raster(src: str, dst: str) -> dict[str, Any]:
    import numpy as np
    import rasterio

    t0 = time.perf_counter()
    with rasterio.open(src) as ds:
        profile = ds.profile
        data = ds.read(1)
    out = data.astype(np.float32) * SCALE + OFFSET  # float32 throughout (NumPy 2 promotion)
    del data
    profile.update(
        dtype="float32",
        nodata=None,
        compress="deflate",
        tiled=True,
        blockxsize=BLOCK,
        blockysize=BLOCK,
        BIGTIFF="IF_SAFER",
    )
    with rasterio.open(dst, "w", **profile) as dst_ds:
        dst_ds.write(out, 1)
    return {"work_seconds": time.perf_counter() - t0, "dtype": str(out.dtype)}


def _task_rioxarray(src: str, dst: str) -> dict[str, Any]:
    import threading
    from importlib.metadata import version

    import rioxarray
    import xarray as xr

    t0 = time.perf_counter()
    da = rioxarray.open_rasterio(src, chunks=True, lock=False)  # dask chunks on block edges
    assert isinstance(da, xr.DataArray)
    out = (da.astype("float32") * SCALE + OFFSET).astype("float32")
    out.rio.to_raster(
        dst,
        tiled=True,
        blockxsize=BLOCK,
        blockysize=BLOCK,
        compress="deflate",
        BIGTIFF="IF_SAFER",
        dtype="float32",
        lock=threading.Lock(),
    )
    chunks = [int(c[0]) for c in da.chunks or ()]
    return {
        "work_seconds": time.perf_counter() - t0,
        "chunks": chunks,
        "dask": version("dask"),
        "workers": os.cpu_count(),
    }


def _task_read_file(src: str, dst: str) -> dict[str, Any]:
    import geopandas as gpd

    t0 = time.perf_counter()
    gdf = gpd.read_file(src, layer="parcels")
    gdf = gdf[gdf["population"] > 500]
    gdf = gdf.assign(area_km2=gdf.to_crs(EQUAL_AREA).area / 1e6)
    gdf.to_parquet(dst, compression="zstd")
    return {"work_seconds": time.perf_counter() - t0, "rows": len(gdf)}


def _task_pyogrio_sql(src: str, dst: str) -> dict[str, Any]:
    from pyogrio import read_dataframe

    t0 = time.perf_counter()
    gdf = read_dataframe(src, sql=f"SELECT * FROM parcels WHERE {VECTOR_WHERE}", use_arrow=True)
    gdf = gdf.assign(area_km2=gdf.to_crs(EQUAL_AREA).area / 1e6)
    gdf.to_parquet(dst, compression="zstd")
    return {"work_seconds": time.perf_counter() - t0, "rows": len(gdf)}


TASKS: dict[str, Callable[[str, str], dict[str, Any]]] = {
    "naive-raster": _task_naive_raster,
    "rioxarray": _task_rioxarray,
    "read-file": _task_read_file,
    "pyogrio-sql": _task_pyogrio_sql,
}


def run_task(argv: Sequence[str]) -> int:
    name, src, dst = argv
    print(json.dumps(TASKS[name](src, dst)))
    return 0


# =========================================================================== input data


def raster_path(workdir: Path, size: int, noise: float) -> Path:
    return workdir / "data" / f"raster-u16-{size}-n{noise:g}-v{RASTER_GEN_VERSION}.tif"


def write_raster(path: Path, size: int, noise_sd: float = 0.08, seed: int = 42) -> None:
    """A 1-band uint16 reflectance-like raster (fields of 4 land covers + sensor noise and a
    gentle illumination gradient; values 1..10000), tiled 512, deflate, strip by strip."""
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    rng = np.random.default_rng(seed)
    field_px = 64
    n = size // field_px + 1
    classes = rng.integers(0, 4, size=(n, n), dtype=np.int8)
    base = np.array([400.0, 3500.0, 2600.0, 1800.0], dtype=np.float32)  # water veg soil urban
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "width": size,
        "height": size,
        "count": 1,
        "dtype": "uint16",
        "crs": "EPSG:32632",
        "transform": from_origin(600_000.0, 5_100_000.0, 10.0, 10.0),
        "tiled": True,
        "blockxsize": BLOCK,
        "blockysize": BLOCK,
        "compress": "deflate",
        "BIGTIFF": "IF_SAFER",
        "num_threads": "ALL_CPUS",
    }
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    col_class = np.arange(size) // field_px
    with (
        rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MIB * MIB),  # bytes, see DESIGN §3
        rasterio.open(tmp, "w", **profile) as dst,
    ):
        for row0 in range(0, size, BLOCK):
            h = min(BLOCK, size - row0)
            rows = np.arange(row0, row0 + h)
            values = base[classes[(rows // field_px)[:, None], col_class[None, :]]]
            noise = rng.standard_normal((h, size), dtype=np.float32)
            noise *= noise_sd
            noise += 1.0
            values *= noise
            del noise
            values *= (0.9 + 0.2 * rows / size).astype(np.float32)[:, None]
            np.clip(values, 1, 10000, out=values)
            dst.write(values.astype(np.uint16), 1, window=Window(0, row0, size, h))
    os.replace(tmp, path)


def ensure_raster(workdir: Path, size: int, noise: float) -> Path:
    path = raster_path(workdir, size, noise)
    if not path.exists():
        t0 = time.perf_counter()
        print(f"  generating {path.name} ({size}x{size} uint16) ...", flush=True)
        write_raster(path, size, noise)
        print(f"  generated in {time.perf_counter() - t0:.1f} s", flush=True)
    return path


def ensure_parcels(workdir: Path, count: int) -> Path:
    path = workdir / "data" / f"parcels-{count}.gpkg"
    if not path.exists():
        from gisjob_worker.demo import write_parcels

        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"tmp-{os.getpid()}-{path.name}")
        t0 = time.perf_counter()
        print(f"  generating {path.name} ({count} polygons) ...", flush=True)
        write_parcels(tmp, count)
        os.replace(tmp, path)
        print(f"  generated in {time.perf_counter() - t0:.1f} s", flush=True)
    return path


# ================================================================================ tools


@dataclass
class Tool:
    name: str
    argv: list[str] | None  # None: skipped
    output: Path  # file (or, for gisjob, its output directory) removed before each run
    skip: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    note: str = ""


@dataclass
class Result:
    tool: str
    runs: list[Measurement] = field(default_factory=list)
    infos: list[dict[str, Any]] = field(default_factory=list)
    skip: str | None = None
    check: str = ""
    note: str = ""

    @property
    def ok_runs(self) -> list[Measurement]:
        return [r for r in self.runs if r.ok]

    @property
    def failed(self) -> Measurement | None:
        return next((r for r in self.runs if not r.ok), None)

    @property
    def wall(self) -> float | None:
        ok = self.ok_runs
        return statistics.median(r.wall_seconds for r in ok) if ok else None

    @property
    def peak(self) -> int | None:
        ok = self.ok_runs
        return max(r.peak_rss_bytes for r in ok) if ok else None

    @property
    def cpu(self) -> float | None:
        ok = self.ok_runs
        return statistics.median(r.cpu_seconds for r in ok) if ok else None

    @property
    def durable(self) -> float | None:
        """Median of wall + the fsync of the output after exit (equal durability for all)."""
        vals = [
            r.wall_seconds + float(i.get("fsync_seconds", 0.0))
            for r, i in zip(self.runs, self.infos, strict=True)
            if r.ok
        ]
        return statistics.median(vals) if vals else None

    @property
    def work(self) -> float | None:
        vals = [float(i["work_seconds"]) for i in self.infos if "work_seconds" in i]
        return statistics.median(vals) if vals else None

    def to_json(self) -> dict[str, Any]:
        return {
            "tool": self.tool,
            "skipped": self.skip,
            "wallSeconds": self.wall,
            "workSeconds": self.work,
            "durableSeconds": self.durable,
            "peakRssBytes": self.peak,
            "cpuSeconds": self.cpu,
            "check": self.check,
            "note": self.note,
            "runs": [
                {
                    "wallSeconds": round(r.wall_seconds, 4),
                    "peakRssBytes": r.peak_rss_bytes,
                    "userSeconds": round(r.user_seconds, 3),
                    "sysSeconds": round(r.sys_seconds, 3),
                    "returncode": r.returncode,
                    "timedOut": r.timed_out,
                }
                for r in self.runs
            ],
            "infos": self.infos,
            "argv": list(self.runs[0].argv) if self.runs else None,
            "error": _tail(self.failed.stderr) if self.failed else None,
        }


def _tail(text: str, lines: int = 6) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _venv_python() -> str:
    return sys.executable


def _gisjob_exe() -> str | None:
    here = Path(sys.executable).parent / "gisjob"
    return str(here) if here.exists() else shutil.which("gisjob")


def _importable(*modules: str) -> str | None:
    """None when the benchmark's interpreter can import all ``modules``; else the error."""
    code = "import " + ", ".join(modules)
    proc = subprocess.run([_venv_python(), "-c", code], capture_output=True, text=True, check=False)
    return None if proc.returncode == 0 else _tail(proc.stderr, 1)


def _task_argv(name: str, src: Path, dst: Path) -> list[str]:
    return [_venv_python(), str(Path(__file__).resolve()), "task", name, str(src), str(dst)]


def clean_env() -> dict[str, str]:
    """The parent environment minus anything that would steer gisjob or GDAL differently.

    ``PYTHONDONTWRITEBYTECODE`` is dropped too: with it, every Python tool recompiles any
    module that has no cached ``.pyc`` on every start (≈ 8 % of a small gisjob run's CPU
    here); deployed images ship compiled bytecode, so tools are measured warm.
    """
    drop = ("GISJOB_", "GDAL_", "CPL_", "VSI_", "PYOGRIO_", "OMP_", "DASK_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


WARM_MODULES = (
    "gisjob_worker.cli.main",
    "gisjob_worker.worker",
    "gisjob_worker.planner",
    "gisjob_worker.metrics",
    "gisjob_worker.operations.raster",
    "gisjob_worker.operations.vector",
    "rasterio.shutil",
    "pyogrio.raw",
    "pyarrow.parquet",
    "pyproj",
    "geopandas",
)


def warm_bytecode() -> None:
    """Import every Python stack once, untimed, so ``.pyc`` caches exist before timing."""
    mods = list(WARM_MODULES)
    if _importable("rioxarray", "dask") is None:
        mods += ["rioxarray", "dask.array", "xarray"]
    code = "import importlib, sys\nfor m in sys.argv[1:]:\n    importlib.import_module(m)"
    subprocess.run([_venv_python(), "-c", code, *mods], env=clean_env(), check=False)


def raster_job_yaml(src: Path, out: Path, size: int, memory: str) -> str:
    tile = -(-size // BLOCK) * BLOCK  # one tile covering the raster
    return f"""\
apiVersion: gisjob.dev/v1alpha1
kind: GisJob
metadata: {{name: bench-scale-{size}}}
spec:
  input: {{uri: {json.dumps(str(src))}}}
  operation:
    name: scale
    params: {{scale: {SCALE}, offset: {OFFSET}, dtype: float32, bands: [1]}}
  output: {{uri: {json.dumps(str(out))}, format: GTiff}}
  tiling: {{tileSize: {tile}}}
  resources: {{memory: {memory}, gdalCacheMax: {GDAL_CACHE_MIB}Mi, memoryHeadroom: 0.2}}
  parallelism: 1
"""


def vector_job_yaml(src: Path, out: Path, count: int, memory: str | None) -> str:
    mem = f"memory: {memory}, " if memory else ""
    return f"""\
apiVersion: gisjob.dev/v1alpha1
kind: GisJob
metadata: {{name: bench-filter-{count}}}
spec:
  input: {{uri: {json.dumps(str(src))}, layer: parcels}}
  operation:
    name: filter
    params: {{where: {json.dumps(VECTOR_WHERE)}, area: true, equalAreaCrs: "{EQUAL_AREA}"}}
  output: {{uri: {json.dumps(str(out))}, format: GeoParquet}}
  tiling: {{featuresPerTile: {max(count, 1)}}}
  resources: {{{mem}gdalCacheMax: 16Mi, memoryHeadroom: 0.2}}
  parallelism: 1
"""


def plan_of(job: Path) -> dict[str, Any]:
    exe = _gisjob_exe()
    assert exe is not None
    proc = subprocess.run(
        [exe, "plan", str(job), "--json"],
        capture_output=True,
        text=True,
        check=False,
        env=clean_env(),
    )
    if proc.returncode != 0:
        raise SystemExit(f"gisjob plan {job} failed: {proc.stderr.strip()}")
    plan: dict[str, Any] = json.loads(proc.stdout)
    return plan


def raster_tools(workdir: Path, src: Path, size: int, memory: str, job: Path) -> list[Tool]:
    out = workdir / "out" / f"raster-{size}"
    gdal_env = {"GDAL_CACHEMAX": str(GDAL_CACHE_MIB)}  # MB, for the tools that take it
    tools: list[Tool] = []
    exe = _gisjob_exe()
    tools.append(
        Tool(
            GISJOB,
            [exe, "worker", "--job", str(job), "--tile", RASTER_TILE, "--memory", memory]
            if exe
            else None,
            out / "gisjob",
            skip=None if exe else "gisjob CLI not found next to this interpreter",
        )
    )
    tools.append(
        Tool(
            "naive full read",
            _task_argv("naive-raster", src, out / "naive.tif"),
            out / "naive.tif",
            env=gdal_env,
        )
    )
    gt = shutil.which("gdal_translate")
    tools.append(
        Tool(
            GDAL_TRANSLATE,
            [
                gt,
                "-q",
                "--config",
                "GDAL_CACHEMAX",
                str(GDAL_CACHE_MIB),
                "-ot",
                "Float32",
                "-scale",
                "0",
                "10000",
                str(OFFSET),
                str(10000 * SCALE + OFFSET),
                "-co",
                "TILED=YES",
                "-co",
                "COMPRESS=DEFLATE",
                "-co",
                "BIGTIFF=IF_SAFER",
                str(src),
                str(out / "gdal_translate.tif"),
            ]
            if gt
            else None,
            out / "gdal_translate.tif",
            skip=None if gt else "gdal_translate not installed (run bench/setup.sh)",
            env=gdal_env,
        )
    )
    gc = shutil.which("gdal_calc.py")
    tools.append(
        Tool(
            "gdal_calc.py",
            [
                gc,
                "-A",
                str(src),
                "--outfile",
                str(out / "gdal_calc.tif"),
                f"--calc=A*{SCALE}{OFFSET:+}",
                "--type=Float32",
                "--co=TILED=YES",
                "--co=COMPRESS=DEFLATE",
                "--co=BIGTIFF=IF_SAFER",
                "--overwrite",
                "--quiet",
            ]
            if gc
            else None,
            out / "gdal_calc.tif",
            skip=None if gc else "gdal_calc.py not installed (run bench/setup.sh)",
            env=gdal_env,
        )
    )
    missing = _importable("rioxarray", "dask")
    tools.append(
        Tool(
            "rioxarray + dask",
            None if missing else _task_argv("rioxarray", src, out / "rioxarray.tif"),
            out / "rioxarray.tif",
            skip=f"rioxarray/dask not importable ({missing}); "
            f"`pip install rioxarray dask` into the venv to include it"
            if missing
            else None,
            env=gdal_env,
        )
    )
    return tools


def vector_tools(
    workdir: Path, src: Path, count: int, job: Path, budget_job: tuple[str, Path] | None
) -> list[Tool]:
    out = workdir / "out" / f"vector-{count}"
    exe = _gisjob_exe()
    skip = None if exe else "gisjob CLI not found next to this interpreter"
    tools = [
        Tool(
            GISJOB,
            [exe, "worker", "--job", str(job), "--tile", VECTOR_TILE] if exe else None,
            out / "gisjob",
            skip=skip,
        )
    ]
    if budget_job is not None:
        memory, bjob = budget_job
        tools.append(
            Tool(
                f"{GISJOB} (memory {memory})",
                [exe, "worker", "--job", str(bjob), "--tile", VECTOR_TILE] if exe else None,
                out / "gisjob-budget",
                skip=skip,
            )
        )
    tools += [
        Tool(
            READ_FILE,
            _task_argv("read-file", src, out / "read_file.parquet"),
            out / "read_file.parquet",
        ),
        Tool(
            "pyogrio read_dataframe(sql)",
            _task_argv("pyogrio-sql", src, out / "pyogrio_sql.parquet"),
            out / "pyogrio_sql.parquet",
        ),
    ]
    return tools


# ============================================================================ run + check


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _output_file(tool: Tool, m: Measurement, info: dict[str, Any]) -> Path | None:
    if "output" in info:
        return Path(str(info["output"]))
    if tool.argv and m.ok:
        for arg in reversed(tool.argv):
            p = Path(arg)
            if p.suffix in (".tif", ".parquet") and p.exists():
                return p
    return None


def _fsync_seconds(path: Path) -> float:
    """Time to make ``path`` durable after the tool exited (gisjob fsyncs its own output)."""
    t0 = time.perf_counter()
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return time.perf_counter() - t0


def _parse_info(tool: Tool, m: Measurement) -> dict[str, Any]:
    for line in reversed(m.stdout.strip().splitlines()):
        if line.startswith("{"):
            try:
                data: dict[str, Any] = json.loads(line)
            except ValueError:
                continue
            if tool.name.startswith(GISJOB):  # the result record
                data["work_seconds"] = data.get("seconds")
            return data
    return {}


def run_tools(
    tools: list[Tool],
    repeat: int,
    check: Callable[[Tool, Path], str],
) -> list[Result]:
    """Run every available tool ``repeat`` times, round-robin (drift hits all tools alike)."""
    results = {t.name: Result(t.name, skip=t.skip, note=t.note) for t in tools}
    for t in tools:
        if t.argv is not None:
            t.output.parent.mkdir(parents=True, exist_ok=True)
    for i in range(repeat):
        for t in tools:
            res = results[t.name]
            if t.argv is None or (res.runs and not res.runs[-1].ok):
                continue
            _remove(t.output)
            os.sync()  # flush the previous tool's dirty pages outside anyone's timing
            env = {**clean_env(), **t.env}
            m = run_measured(t.argv, env=env, timeout=RUN_TIMEOUT)
            res.runs.append(m)
            info = _parse_info(t, m)
            res.infos.append(info)
            status = "ok" if m.ok else f"FAILED rc={m.returncode}"
            print(
                f"    run {i + 1}/{repeat} {t.name:<28} {m.wall_seconds:7.2f} s "
                f"{m.peak_rss_bytes / MIB:8.1f} MiB  {status}",
                flush=True,
            )
            if not m.ok:
                print("      " + _tail(m.stderr).replace("\n", "\n      "), flush=True)
                continue
            out = _output_file(t, m, info)
            if out is not None:
                info["fsync_seconds"] = _fsync_seconds(out)
            if i == 0:
                res.check = check(t, out) if out is not None else "no output"
            if out is not None:
                _remove(out)
            _remove(t.output)
    return list(results.values())


def raster_checker(src: Path) -> Callable[[Tool, Path], str]:
    """Compare a 1024x1024 window in the middle and the corner block with the formula."""

    def check(tool: Tool, out: Path) -> str:
        import numpy as np
        import rasterio
        from rasterio.windows import Window

        with rasterio.open(src) as s, rasterio.open(out) as o:
            if (o.width, o.height, o.dtypes[0]) != (s.width, s.height, "float32"):
                return f"shape/dtype {o.width}x{o.height} {o.dtypes[0]}"
            c = max(0, s.width // 2 - 512)
            worst = 0.0
            for win in (
                Window(c, c, min(1024, s.width), min(1024, s.height)),
                Window(0, 0, 64, 64),
            ):
                x = s.read(1, window=win).astype(np.float64)
                y = o.read(1, window=win).astype(np.float64)
                worst = max(worst, float(np.max(np.abs(y - (x * SCALE + OFFSET)))))
            tiled = o.block_shapes[0] != (1, o.width) and o.compression is not None
        return ("ok" if worst < 1e-5 else f"max err {worst:.2g}") + ("" if tiled else " (untiled?)")

    return check


def vector_checker(expected: dict[str, float]) -> Callable[[Tool, Path], str]:
    """Same row count and area sum as the first tool that succeeded."""

    def check(tool: Tool, out: Path) -> str:
        import pyarrow.parquet as pq

        files = sorted(out.rglob("*.parquet")) if out.is_dir() else [out]
        rows, area = 0, 0.0
        for f in files:
            t = pq.read_table(f, columns=["area_km2"])
            rows += t.num_rows
            area += float(sum(v for v in t.column(0).to_pylist() if v is not None))
        if not expected:
            expected.update(rows=rows, area=area)
            return f"ok ({rows} rows)"
        if rows != expected["rows"]:
            return f"rows {rows} != {int(expected['rows'])}"
        if abs(area - expected["area"]) > 1e-6 * max(1.0, expected["area"]):
            return f"area sum {area:.6g} != {expected['area']:.6g}"
        return f"ok ({rows} rows)"

    return check


# ============================================================================== report


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def print_table(title: str, results: list[Result]) -> None:
    ref = next((r for r in results if r.tool == GISJOB), None)
    ref_wall = ref.wall if ref else None
    ref_peak = ref.peak if ref else None
    print()
    print(title)
    head = (
        f"  {'tool':<28}{'wall s':>8}{'+fsync s':>9}{'work s':>8}{'peak MiB':>10}{'CPU s':>8}"
        f"{'time×gj':>9}{'mem×gj':>8}  check"
    )
    print(head)
    print("  " + "-" * (len(head) - 2 + 10))
    for r in results:
        if r.skip:
            print(f"  {r.tool:<28}  skipped: {r.skip}")
            continue
        if r.wall is None:
            f = r.failed
            why = _tail(f.stderr, 1) if f else "no run"
            print(f"  {r.tool:<28}  FAILED: {why}")
            continue
        peak = r.peak or 0
        tr = r.wall / ref_wall if ref_wall else None
        mr = peak / ref_peak if ref_peak else None
        print(
            f"  {r.tool:<28}{r.wall:>8.2f}{_fmt(r.durable, '.2f'):>9}{_fmt(r.work, '.2f'):>8}"
            f"{peak / MIB:>10.1f}"
            f"{_fmt(r.cpu, '.2f'):>8}{_fmt(tr, '.2f'):>9}{_fmt(mr, '.2f'):>8}  {r.check}"
        )


def _by_name(results: list[Result], name: str) -> Result | None:
    return next((r for r in results if r.tool == name and r.wall is not None), None)


def raster_target(size: int, results: list[Result], budget: int) -> list[dict[str, Any]]:
    text = (
        f"raster {size}: gisjob worker at least as fast as gdal_translate while inside "
        f"its memory budget (peak ≤ {budget / MIB:.0f} MiB)"
    )
    gj, gt = _by_name(results, GISJOB), _by_name(results, GDAL_TRANSLATE)
    if gj is None or gt is None or gj.peak is None:
        return [{"target": text, "status": "N/A", "detail": "a tool did not run"}]
    inside = gj.peak <= budget
    out = []
    for label, a, b in (
        ("median wall time", gj.wall, gt.wall),
        ("median CPU time (user + sys; steadier on a shared machine)", gj.cpu, gt.cpu),
    ):
        if a is None or b is None:
            continue
        fast = a <= b
        out.append(
            {
                "target": f"{text} [{label}]",
                "status": "PASS" if fast and inside else "MISS",
                "detail": (
                    f"time {a:.2f} s vs {b:.2f} s ({a / b:.2f}×) {'OK' if fast else 'slower'}; "
                    f"peak {gj.peak / MIB:.0f} MiB vs budget {budget / MIB:.0f} MiB "
                    f"{'OK' if inside else 'OVER'}"
                ),
                "timeRatio": a / b,
                "peakBytes": gj.peak,
                "budgetBytes": budget,
            }
        )
    return out


def vector_target(results: list[Result]) -> list[dict[str, Any]]:
    text = "vector: gisjob ≥ 5× faster than full read_file with ≤ 1/3 of its peak memory"
    rf = _by_name(results, READ_FILE)
    gjs = [r for r in results if r.tool.startswith(GISJOB) and r.wall is not None]
    if rf is None or rf.peak is None or not gjs:
        return [{"target": text, "status": "N/A", "detail": "a tool did not run"}]
    out = []
    for gj in gjs:
        assert gj.peak is not None
        mem_ok = gj.peak * 3 <= rf.peak
        for label, a, b in (
            ("whole process", gj.wall, rf.wall),
            ("work only, excl. interpreter start + imports", gj.work, rf.work),
        ):
            if a is None or b is None:
                continue
            speed = b / a
            ok = speed >= 5 and mem_ok
            out.append(
                {
                    "target": f"{text} [{gj.tool}; {label}]",
                    "status": "PASS" if ok else "MISS",
                    "detail": (
                        f"speed-up {speed:.2f}× ({a:.2f} s vs {b:.2f} s) "
                        f"{'OK' if speed >= 5 else '< 5×'}; peak {gj.peak / MIB:.0f} MiB vs "
                        f"{rf.peak / MIB:.0f} MiB = {gj.peak / rf.peak:.2f} "
                        f"{'OK' if mem_ok else '> 1/3'}"
                    ),
                    "tool": gj.tool,
                    "speedup": speed,
                    "memRatio": gj.peak / rf.peak,
                }
            )
    return out


def environment() -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "memTotalBytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "loadavg": os.getloadavg(),
    }
    code = (
        "import json, rasterio, pyogrio, geopandas, numpy; print(json.dumps({"
        "'rasterio': rasterio.__version__, 'rasterioGdal': rasterio.__gdal_version__, "
        "'pyogrio': pyogrio.__version__, 'pyogrioGdal': pyogrio.__gdal_version_string__, "
        "'geopandas': geopandas.__version__, 'numpy': numpy.__version__}))"
    )
    proc = subprocess.run([_venv_python(), "-c", code], capture_output=True, text=True, check=False)
    if proc.returncode == 0:
        info.update(json.loads(proc.stdout))
    gi = shutil.which("gdalinfo")
    if gi:
        v = subprocess.run([gi, "--version"], capture_output=True, text=True, check=False)
        info["systemGdal"] = v.stdout.strip()
    return info


# ================================================================================ main


def _describe_plan(plan: dict[str, Any]) -> str:
    t = plan["tiles"][0]
    chunk = t.get("chunk")
    shape = f"chunk {chunk['width']}x{chunk['height']}" if chunk else f"batch {t['batchRows']} rows"
    return (
        f"plan: {len(plan['tiles'])} tile {t['id']}, {t['chunks']} chunks ({shape}), "
        f"estimate {t['estimatedPeakBytes'] / MIB:.0f} MiB, request "
        f"{t['memoryRequestBytes'] / MIB:.0f} MiB, baseline {plan['baselineBytes'] / MIB:.0f} MiB"
    )


def bench_raster(
    args: argparse.Namespace, size: int, budget: int
) -> tuple[list[Result], dict[str, Any], list[dict[str, Any]]]:
    workdir: Path = args.workdir
    print(f"\n== raster {size}x{size}", flush=True)
    src = ensure_raster(workdir, size, args.noise)
    jobs = workdir / "jobs"
    jobs.mkdir(parents=True, exist_ok=True)
    job = jobs / f"scale-{size}.yaml"
    job.write_text(
        raster_job_yaml(src, workdir / "out" / f"raster-{size}" / "gisjob", size, args.memory)
    )
    plan = plan_of(job)
    if len(plan["tiles"]) != 1 or plan["tiles"][0]["id"] != RASTER_TILE:
        raise SystemExit(f"{job}: expected one tile {RASTER_TILE}, got {len(plan['tiles'])}")
    print("  " + _describe_plan(plan), flush=True)
    print(f"  warming page cache: {warm_page_cache(src) / MIB:.0f} MiB read", flush=True)
    tools = [t for t in raster_tools(workdir, src, size, args.memory, job) if _wanted(args, t)]
    results = run_tools(tools, args.repeat, raster_checker(src))
    title = (
        f"Raster {size}x{size} uint16 -> float32 (x*1e-4 - 0.1), 1 band, tiled 512 deflate, "
        f"GDAL cache {GDAL_CACHE_MIB} MiB; median wall of {args.repeat}, max peak RSS; "
        f"gisjob --memory {args.memory}"
    )
    print_table(title, results)
    print(f"  load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    target = raster_target(size, results, budget)
    return results, plan, target


def bench_vector(args: argparse.Namespace) -> tuple[list[Result], dict[str, Any]]:
    workdir: Path = args.workdir
    count: int = args.features
    print(f"\n== vector {count} polygons", flush=True)
    src = ensure_parcels(workdir, count)
    job = workdir / "jobs" / f"filter-{count}.yaml"
    job.parent.mkdir(parents=True, exist_ok=True)
    out = workdir / "out" / f"vector-{count}"
    job.write_text(vector_job_yaml(src, out / "gisjob", count, None))
    plan = plan_of(job)
    print("  " + _describe_plan(plan), flush=True)
    budget_job: tuple[str, Path] | None = None
    if args.vector_memory:
        bjob = job.with_name(f"filter-{count}-{args.vector_memory}.yaml")
        bjob.write_text(vector_job_yaml(src, out / "gisjob-budget", count, args.vector_memory))
        try:
            bplan = plan_of(bjob)
        except SystemExit as exc:  # e.g. a budget below the job's minimum: say so, go on
            print(f"  with memory {args.vector_memory}: not run: {exc}", flush=True)
        else:
            print(f"  with memory {args.vector_memory}: {_describe_plan(bplan)}", flush=True)
            budget_job = (args.vector_memory, bjob)
    print(f"  warming page cache: {warm_page_cache(src) / MIB:.0f} MiB read", flush=True)
    tools = [t for t in vector_tools(workdir, src, count, job, budget_job) if _wanted(args, t)]
    results = run_tools(tools, args.repeat, vector_checker({}))
    title = (
        f"Vector {count} polygons ({src.stat().st_size / MIB:.0f} MiB GeoPackage): "
        f"where {VECTOR_WHERE!r} + area in {EQUAL_AREA} -> GeoParquet; median wall of "
        f"{args.repeat}, max peak RSS"
    )
    print_table(title, results)
    print(f"  load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return results, plan


def _wanted(args: argparse.Namespace, tool: Tool) -> bool:
    if not args.only:
        return True
    return tool.name.startswith(GISJOB) or any(k.lower() in tool.name.lower() for k in args.only)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--sizes", default="8000,20000", help="raster edges, comma-separated (default %(default)s)"
    )
    p.add_argument(
        "--workdir",
        type=Path,
        default=Path("/tmp/gisjob-bench"),
        help="cache + outputs (default %(default)s)",
    )
    p.add_argument(
        "--noise",
        type=float,
        default=0.08,
        help="relative pixel noise of the generated raster (default %(default)s; 0 gives "
        "piecewise-constant fields that deflate compresses ~10x faster)",
    )
    p.add_argument("--repeat", type=int, default=3, help="runs per tool (default %(default)s)")
    p.add_argument("--memory", default="512Mi", help="gisjob raster budget (default %(default)s)")
    p.add_argument("--features", type=int, default=500_000, help="polygons (default %(default)s)")
    p.add_argument(
        "--vector-memory",
        default=None,
        help="also run gisjob with this resources.memory (e.g. 300Mi; default: only planned)",
    )
    p.add_argument("--no-vector", action="store_true", help="skip the vector comparison")
    p.add_argument(
        "--only",
        type=lambda s: [x for x in s.split(",") if x],
        default=[],
        help="only tools whose name contains one of these (gisjob always runs)",
    )
    p.add_argument("--json", dest="json_path", type=Path, help="save all numbers here")
    args = p.parse_args(argv)
    args.sizes = [int(s) for s in str(args.sizes).split(",") if s.strip()] if args.sizes else []
    if args.repeat < 1:
        p.error("--repeat must be at least 1")
    return args


def main(argv: Sequence[str]) -> int:
    if argv and argv[0] == "task":
        return run_task(argv[1:])
    args = parse_args(argv)
    from gisjob_worker.quantity import parse_quantity

    budget = int(parse_quantity(args.memory))
    env = environment()
    print("environment: " + json.dumps(env))
    if shutil.which("time") is None:
        print("note: GNU time not installed; peak RSS comes from wait4() per child")
    warm_bytecode()
    report: dict[str, Any] = {"environment": env, "raster": {}, "vector": None, "targets": []}
    for size in args.sizes:
        results, plan, target = bench_raster(args, size, budget)
        report["raster"][str(size)] = {
            "plan": plan["tiles"][0],
            "results": [r.to_json() for r in results],
        }
        report["targets"].extend(target)
    if not args.no_vector:
        vresults, vplan = bench_vector(args)
        report["vector"] = {
            "features": args.features,
            "plan": vplan["tiles"][0],
            "results": [r.to_json() for r in vresults],
        }
        report["targets"].extend(vector_target(vresults))
    report_targets(report, args.json_path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
