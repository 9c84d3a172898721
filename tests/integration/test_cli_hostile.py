"""Real files at the CLI edge (issue 15): FIFOs, read-only file systems, where the result is.

Real subprocesses: a FIFO blocks ``open`` forever and a read-only mount needs its own mount
namespace, which an in-process runner cannot show.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import struct
import subprocess
import termios
import time
from pathlib import Path
from typing import Any

import pytest
from worker_helpers import GISJOB, job_doc, make_raster, ndvi_job, run_cli, write_job

pytestmark = pytest.mark.slow

TIMEOUT = 60  # without the checks, a FIFO blocks until this kills the command


def _error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if not line.startswith("{")]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("gisjob: error: "), stderr
    assert "Traceback" not in stderr
    return lines[0]


def _ndvi(tmp: Path, input_: dict[str, Any], name: str = "job.yaml") -> Path:
    return write_job(
        tmp / name,
        job_doc(
            "hostile",
            input_,
            {"name": "ndvi", "params": {"nir": 2, "red": 1}},
            {"uri": str(tmp / "out"), "format": "GTiff"},
        ),
    )


@pytest.mark.parametrize("command", ["plan", "run", "worker"])
def test_fifo_as_job_file_is_refused_at_once(tmp_path: Path, command: str) -> None:
    fifo = tmp_path / "job.yaml"
    os.mkfifo(fifo)
    args = ["worker", "--job", str(fifo), "--tile", "r0000c0000"]
    run = run_cli(*(args if command == "worker" else [command, str(fifo)]), timeout=TIMEOUT)
    assert run.code == 2, run.stderr
    line = [x for x in run.stderr.splitlines() if x.startswith("gisjob: error:")]
    assert line == [
        f"gisjob: error: {fifo}: is a FIFO (named pipe), not a job file (give a regular file)"
    ], run.stderr


def test_character_device_as_job_file_is_refused(tmp_path: Path) -> None:
    run = run_cli("plan", "/dev/zero", timeout=TIMEOUT)
    assert run.code == 2
    assert _error_line(run.stderr) == (
        "gisjob: error: /dev/zero: is a character device, not a job file (give a regular file)"
    )


@pytest.mark.parametrize("field", ["uri", "uris", "glob"])
@pytest.mark.parametrize("command", ["plan", "run"])
def test_fifo_as_input_is_refused_at_once(tmp_path: Path, field: str, command: str) -> None:
    good = make_raster(tmp_path / "a.tif", 256, 256, count=2)
    fifo = tmp_path / "b.tif"
    os.mkfifo(fifo)
    inputs: dict[str, dict[str, Any]] = {
        "uri": {"uri": str(fifo)},
        "uris": {"uris": [str(good), str(fifo)]},
        "glob": {"glob": str(tmp_path / "*.tif")},
    }
    input_ = inputs[field]
    job = _ndvi(tmp_path, input_)
    run = run_cli(command, str(job), timeout=TIMEOUT)
    assert run.code == 2, run.stderr
    where = {"uri": "spec.input.uri", "uris": "spec.input.uris[1]", "glob": "spec.input.glob"}
    assert _error_line(run.stderr) == (
        f"gisjob: error: {job}: {where[field]}: {fifo} is a FIFO (named pipe), not a file "
        "GDAL can read"
    )
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------- read-only file systems


def _can_mount_privately() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-m", "sh", "-c", "mount -t tmpfs -o ro tmpfs /mnt"],
        capture_output=True,
        check=False,
        timeout=30,
    )
    return probe.returncode == 0


needs_mount_namespace = pytest.mark.skipif(
    not _can_mount_privately(), reason="no private mount namespace (unshare -m) here"
)


def _in_read_only_mount(ro: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``gisjob ARGS`` with a read-only tmpfs mounted on ``ro`` (in its own mount namespace:
    the host never sees the mount)."""
    script = 'mount -t tmpfs -o ro tmpfs "$0" && exec "$@"'
    return subprocess.run(
        ["unshare", "-m", "sh", "-c", script, str(ro), GISJOB, *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=TIMEOUT,
    )


@needs_mount_namespace
def test_read_only_output_is_one_line_exit_2_nothing_written(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    job = ndvi_job(tmp_path, "ndvi", ro / "out", width=512, tile=256)
    before = sorted(p.name for p in tmp_path.iterdir())
    proc = _in_read_only_mount(ro, "run", str(job))
    assert proc.returncode == 2, proc.stderr
    assert _error_line(proc.stderr) == (
        f"gisjob: error: {job}: spec.output.uri: cannot write to {ro / 'out'}: "
        "Read-only file system"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert list(ro.iterdir()) == []


@needs_mount_namespace
def test_read_only_report_is_refused_before_the_job_runs(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    out = tmp_path / "out"
    job = ndvi_job(tmp_path, "ndvi", out, width=512, tile=256)
    proc = _in_read_only_mount(ro, "run", "--report", str(ro / "report"), str(job))
    assert proc.returncode == 2, proc.stderr
    assert _error_line(proc.stderr) == (
        f"gisjob: error: --report: cannot write to {ro / 'report'}: Read-only file system"
    )
    assert not out.exists()  # checked up front: no tile ran


# --------------------------------------------------------------------- where the result is


def test_run_names_each_mosaic_with_its_input(tmp_path: Path) -> None:
    a = make_raster(tmp_path / "a.tif", 512, 512, count=2)
    b = make_raster(tmp_path / "b.tif", 256, 256, count=2, seed=2)
    job = _ndvi(tmp_path, {"uris": [str(a), str(b)]})
    run = run_cli("run", "--no-fork-server", str(job), timeout=300)
    assert run.code == 0, run.stderr
    out = tmp_path / "out"
    lines = [x for x in run.stderr.splitlines() if x.startswith(("mosaic:", "manifest:"))]
    assert lines == [
        f"mosaic: {out / 'mosaic-i0000.vrt'}  (from {a})",
        f"mosaic: {out / 'mosaic-i0001.vrt'}  (from {b})",
        f"manifest: {out / 'manifest.json'}",
    ]
    assert (out / "mosaic-i0000.vrt").is_file() and (out / "mosaic-i0001.vrt").is_file()


def test_run_names_the_geoparquet_dataset(tmp_path: Path) -> None:
    import geopandas as gpd
    from shapely.geometry import box

    src = tmp_path / "parcels.gpkg"
    gpd.GeoDataFrame(
        {"v": list(range(20))},
        geometry=[box(i, 0, i + 0.5, 0.5) for i in range(20)],
        crs="EPSG:32632",
    ).to_file(src, layer="parcels", driver="GPKG")
    job = write_job(
        tmp_path / "job.yaml",
        job_doc(
            "vec",
            {"uri": str(src), "layer": "parcels"},
            {"name": "filter", "params": {}},
            {"uri": str(tmp_path / "out"), "format": "GeoParquet"},
        ),
    )
    run = run_cli("run", "--no-fork-server", str(job), timeout=300)
    assert run.code == 0, run.stderr
    parts = tmp_path / "out" / "parts"
    assert f"dataset: {parts}  (GeoParquet dataset)" in run.stderr.splitlines()
    assert len(gpd.read_parquet(parts)) == 20


# ----------------------------------------------------------------- progress on a terminal

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _run_in_terminal(columns: int, *args: str) -> tuple[int, str]:
    """``gisjob ARGS`` on a pseudo-terminal ``columns`` wide (24 rows): exit code, output."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    env["TERM"] = "xterm-256color"
    proc = subprocess.Popen(
        [GISJOB, *args], stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True
    )
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the terminal's last writer is gone
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(master)
    return proc.wait(timeout=60), b"".join(chunks).decode("utf-8", "replace")


@pytest.mark.parametrize("columns", [80, 60])
def test_progress_line_keeps_its_essentials_on_a_narrow_terminal(
    tmp_path: Path, columns: int
) -> None:
    job = ndvi_job(tmp_path, "progress", tmp_path / "out", width=1024, tile=256)
    code, output = _run_in_terminal(columns, "run", str(job))
    assert code == 0, output
    screen = [line for line in re.split(r"[\r\n]+", ANSI.sub("", output)) if " ETA " in line]
    assert screen, output
    final = screen[-1]  # the line left on the terminal when the run ended
    assert len(final) <= columns, final
    assert re.search(r"(^|  )16/16  failed 0  .*\b\d+:\d\d ETA 0:00$", final), final
    assert "…" not in final
    for line in screen:  # no state of the line ever had its essentials cut
        assert re.search(r"\b\d+/16  failed \d+  .*\b\d+:\d\d ETA (\d+:\d\d|-:--)$", line), line


def test_planning_past_its_time_limit_is_an_input_error_with_the_limit(tmp_path: Path) -> None:
    """The planner pod's own limit ($GISJOB_PLAN_SECONDS, default 600 s): past it, exit 2 and
    a result record that says so — not a pod that runs until something else kills it."""
    job = ndvi_job(tmp_path, "slow", tmp_path / "out", width=512, tile=256)
    result = tmp_path / "planner.json"
    run = run_cli(
        "planner", "--job", str(job), "--result", str(result),
        env={"GISJOB_PLAN_SECONDS": "0.001"},
    )  # fmt: skip
    assert run.code == 2, run.stderr
    record = json.loads(result.read_text())
    assert record["exitCode"] == 2
    assert record["error"].startswith("planning took longer than 0.001 s ($GISJOB_PLAN_SECONDS)")
    assert not (tmp_path / "out").exists()
    bad = run_cli("planner", "--job", str(job), "--result", str(result),
                  env={"GISJOB_PLAN_SECONDS": "soon"})  # fmt: skip
    assert bad.code == 2 and "$GISJOB_PLAN_SECONDS: 'soon' is not a number" in bad.stderr
