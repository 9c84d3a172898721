"""The CLI edge (issue 15): every error one line ``gisjob: error: ...`` with a non-zero exit
(2 for bad input), checked before anything runs; ``--debug`` for a traceback."""

from __future__ import annotations

import dataclasses
import io
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result

from gisjob_worker import gdalenv, logs
from gisjob_worker.cli.main import cli
from gisjob_worker.cli.run import result_lines
from gisjob_worker.plan import Tile
from gisjob_worker.planner import build_plan
from gisjob_worker.progress import ProgressLine, clock, eta_seconds, layout
from gisjob_worker.quantity import format_bytes as fb
from gisjob_worker.report import TilePeak, memory_figure, reported_peaks, write_report
from gisjob_worker.runtypes import Sample, Snapshot, TileRun
from gisjob_worker.spec import MAX_JOB_BYTES, MAX_JOB_DEPTH, load_job

WriteJob = Callable[..., Path]
JobDoc = Callable[..., dict[str, Any]]


@pytest.fixture(autouse=True)
def _no_process_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process commands: keep structlog (configured onto the runner's stderr) and GDAL
    (configured once per process, before rasterio is imported) as the other tests have them."""
    monkeypatch.setattr(logs, "configure", lambda *a, **k: None)
    monkeypatch.setattr(gdalenv, "configure", lambda *a, **k: None)


@pytest.fixture
def no_planning(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Fail loudly if a command gets as far as planning (checks must come first)."""
    calls: list[str] = []

    def refuse(job: Any) -> Any:
        calls.append(job.name)
        raise AssertionError("planned although a check should have stopped the run")

    monkeypatch.setattr("gisjob_worker.planner.build_plan", refuse)
    yield calls


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), prog_name="gisjob")


def one_error_line(result: Result) -> str:
    """The stderr of a failed command: exactly one line, ``gisjob: error: ...``."""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("gisjob: error: "), lines[0]
    assert "Traceback" not in result.output + result.stderr
    return lines[0]


def _raster_job(write_job: WriteJob, job_doc: JobDoc, raster: Path, out: Path, **spec: Any) -> Path:
    doc = job_doc(
        input={"uri": str(raster)},
        operation={"name": "scale", "params": {}},
        output={"uri": str(out)},
        **spec,
    )
    return write_job(doc)


# ------------------------------------------------------------------------------ item 8


@pytest.mark.parametrize("command", ["plan", "run"])
def test_yaml_nested_20000_deep_is_one_line(
    tmp_path: Path, command: str, no_planning: list[str]
) -> None:
    job = tmp_path / "deep.yaml"
    job.write_text("spec: " + "[" * 20_000 + "]" * 20_000 + "\n")
    result = (
        invoke(command, "--no-fork-server", str(job))
        if command == "run"
        else invoke(command, str(job))
    )
    assert result.exit_code == 2, result.stderr
    line = one_error_line(result)
    assert f"{job}: malformed YAML at line 1: nested deeper than {MAX_JOB_DEPTH} levels" in line


def test_block_style_nesting_is_limited_too(tmp_path: Path) -> None:
    text = "".join(f"{'  ' * i}k{i}:\n" for i in range(MAX_JOB_DEPTH + 5)) + "  " * 70 + "x: 1\n"
    job = tmp_path / "deep.yaml"
    job.write_text(text)
    result = invoke("plan", str(job))
    assert result.exit_code == 2
    assert f"nested deeper than {MAX_JOB_DEPTH} levels" in one_error_line(result)


def test_job_file_over_1mib_is_refused_before_parsing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = tmp_path / "huge.yaml"
    job.write_text("# padding\n" * (MAX_JOB_BYTES // 10 + 1))
    parsed: list[str] = []

    def parse(*args: Any, **kwargs: Any) -> Any:
        parsed.append("yaml")
        return {}

    monkeypatch.setattr("yaml.load", parse)
    result = invoke("plan", str(job))
    assert result.exit_code == 2
    line = one_error_line(result)
    assert line == (
        f"gisjob: error: {job}: a job document of {job.stat().st_size:,} bytes is over the "
        "limit of 1 MiB (1,048,576 bytes); for many inputs use spec.input.glob"
    )
    assert parsed == []


def test_job_file_of_exactly_the_limit_is_read(
    write_job: WriteJob, job_doc: JobDoc, raster_1024: Path, tmp_path: Path
) -> None:
    import yaml

    text = yaml.safe_dump(
        job_doc(input={"uri": str(raster_1024)}, output={"uri": str(tmp_path / "o")})
    )
    text += "#" * (MAX_JOB_BYTES - len(text) - 1) + "\n"
    job = write_job(text)
    assert job.stat().st_size == MAX_JOB_BYTES
    assert load_job(job).name == "unit-job"


def test_alias_bomb_is_refused(tmp_path: Path, no_planning: list[str]) -> None:
    levels = ["a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    for i, name in enumerate("bcdefghi"):
        prev = "abcdefghi"[i]
        levels.append(f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 10) + "]")
    job = tmp_path / "bomb.yaml"
    job.write_text("\n".join(levels) + "\n")  # 10^9 values once expanded, 600 bytes
    result = invoke("plan", str(job))
    assert result.exit_code == 2
    assert "more than 100,000 values once YAML aliases are expanded" in one_error_line(result)


def test_non_utf8_job_file_is_one_line(tmp_path: Path) -> None:
    job = tmp_path / "latin1.yaml"
    job.write_bytes(b"metadata: {name: caf\xe9}\n")
    result = invoke("plan", str(job))
    assert result.exit_code == 2
    assert f"{job}: cannot read job file: not UTF-8 text (byte 20)" in one_error_line(result)


def test_unexpected_exception_is_one_line_and_debug_shows_it(
    write_job: WriteJob,
    job_doc: JobDoc,
    raster_1024: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    job = _raster_job(write_job, job_doc, raster_1024, tmp_path / "out")

    def broken(job: Any) -> Any:
        raise RuntimeError("boom\n  on two lines")

    monkeypatch.setattr("gisjob_worker.planner.build_plan", broken)
    result = invoke("plan", str(job))
    assert result.exit_code == 1
    assert one_error_line(result) == (
        "gisjob: error: RuntimeError: boom on two lines (gisjob --debug ... shows the traceback)"
    )
    debug = invoke("--debug", "plan", str(job))
    assert debug.exit_code == 1
    assert isinstance(debug.exception, RuntimeError)  # raised through: click prints it
    assert "gisjob: error" not in debug.stderr


def test_unexpected_exception_in_any_command_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> Any:
        raise KeyError("entry point")

    monkeypatch.setattr("gisjob_worker.registry.registry", broken)
    result = invoke("operations")
    assert result.exit_code == 1
    assert one_error_line(result).startswith("gisjob: error: KeyError: 'entry point'")
    assert isinstance(invoke("--debug", "operations").exception, KeyError)


def test_usage_errors_are_one_line_exit_2() -> None:
    for args, expected in [
        (["run"], "Missing argument 'JOB_FILE'. (see 'gisjob run --help')"),
        (["--bogus"], "No such option '--bogus'"),
        (["plan", "--nope", "x.yaml"], "No such option '--nope'"),
    ]:
        result = invoke(*args)
        assert result.exit_code == 2, args
        assert expected in one_error_line(result), args


def test_no_arguments_still_prints_the_help() -> None:
    result = invoke()
    assert "Usage: gisjob" in result.output + result.stderr
    assert "--debug" in result.output + result.stderr


# ------------------------------------------------------------------------------ item 10


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--metrics-port-base", "99999"], "'--metrics-port-base': 99999 is not in the range"),
        (["--metrics-port-base", "0"], "'--metrics-port-base': 0 is not in the range"),
        (
            ["--metrics-port-base", "65535", "--workers", "2"],
            "--metrics-port-base: 65535 with 2 worker(s) needs ports up to 65536, past 65535: "
            "use a base of at most 65534",
        ),
        (
            ["--metrics-port-base", "65000", "--workers", "600"],
            "needs ports up to 65599, past 65535: use a base of at most 64936",
        ),
        (["--workers", "0"], "'--workers': must be a positive number or 'auto' (got '0')"),
        (["--workers", "-3"], "'--workers': must be a positive number or 'auto'"),
        (["--metrics-linger", "-1"], "'--metrics-linger': -1.0 is not in the range"),
        (["--memory", "8gb"], "--memory: lower-case 'gb' is ambiguous"),
        (["--memory", "0"], "--memory: must be greater than zero (got 0)"),
    ],
)
def test_run_flags_are_checked_up_front(
    write_job: WriteJob,
    job_doc: JobDoc,
    raster_1024: Path,
    tmp_path: Path,
    no_planning: list[str],
    flags: list[str],
    expected: str,
) -> None:
    out = tmp_path / "out"
    job = _raster_job(write_job, job_doc, raster_1024, out)
    result = invoke("run", "--no-fork-server", *flags, str(job))
    assert result.exit_code == 2, result.stderr
    assert expected in one_error_line(result)
    assert no_planning == []
    assert not out.exists()


def test_auto_workers_are_counted_in_the_port_check(
    write_job: WriteJob,
    job_doc: JobDoc,
    raster_1024: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    no_planning: list[str],
) -> None:
    monkeypatch.setattr("gisjob_worker.allowance.default_workers", lambda parallelism: 3)
    job = _raster_job(write_job, job_doc, raster_1024, tmp_path / "out", parallelism=3)
    result = invoke("run", "--no-fork-server", "--metrics-port-base", "65534", str(job))
    assert result.exit_code == 2
    assert "65534 with 3 worker(s) needs ports up to 65536" in one_error_line(result)


@pytest.mark.parametrize(("memory", "shown"), [("1MB", "976.6 KiB"), ("1MiB", "1.0 MiB")])
def test_memory_spellings_reach_the_allowance(
    write_job: WriteJob,
    job_doc: JobDoc,
    raster_1024: Path,
    tmp_path: Path,
    memory: str,
    shown: str,
) -> None:
    """``--memory 1MB`` is accepted (10^6 bytes, as Kubernetes' 1M); the allowance check
    (every tile needs more) shows which number it became."""
    job = _raster_job(write_job, job_doc, raster_1024, tmp_path / "out")
    result = invoke("run", "--no-fork-server", "--memory", memory, str(job))
    assert result.exit_code == 2
    assert f"but the allowance is {shown}" in one_error_line(result)


# ------------------------------------------------------------------------------- item 7


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ("/proc/gisjob-out", "spec.output.uri: /proc/gisjob-out is under /proc: not a place"),
        ("/sys/kernel/gisjob", "spec.output.uri: /sys/kernel/gisjob is under /sys"),
        ("FILE", "spec.output.uri: {file} is an existing file, not a folder"),
        ("FILE/sub", "spec.output.uri: {file}/sub: {file} is a file, not a folder"),
    ],
)
def test_unwritable_output_is_refused_before_planning(
    write_job: WriteJob,
    job_doc: JobDoc,
    raster_1024: Path,
    tmp_path: Path,
    no_planning: list[str],
    where: str,
    expected: str,
) -> None:
    existing = tmp_path / "taken.txt"
    existing.write_text("not a folder\n")
    out = where.replace("FILE", str(existing))
    job = _raster_job(write_job, job_doc, raster_1024, Path(out))
    result = invoke("run", "--no-fork-server", str(job))
    assert result.exit_code == 2
    line = one_error_line(result)
    assert line.startswith(f"gisjob: error: {job}: ")
    assert expected.format(file=existing) in line
    assert existing.read_text() == "not a folder\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job.yaml", "taken.txt"]


@pytest.mark.parametrize("report", ["/proc/gisjob-report", "/sys/gisjob-report"])
def test_unwritable_report_is_refused_before_the_run(
    write_job: WriteJob,
    job_doc: JobDoc,
    raster_1024: Path,
    tmp_path: Path,
    no_planning: list[str],
    report: str,
) -> None:
    out = tmp_path / "out"
    job = _raster_job(write_job, job_doc, raster_1024, out)
    result = invoke("run", "--no-fork-server", "--report", report, str(job))
    assert result.exit_code == 2
    assert f"--report: {report} is under /" in one_error_line(result)
    assert not out.exists()


def test_report_that_is_a_file_is_a_one_line_usage_error(
    write_job: WriteJob, job_doc: JobDoc, raster_1024: Path, tmp_path: Path
) -> None:
    job = _raster_job(write_job, job_doc, raster_1024, tmp_path / "out")
    result = invoke("run", "--no-fork-server", "--report", str(job), str(job))
    assert result.exit_code == 2
    assert "'--report'" in one_error_line(result)


def test_writable_output_probe_leaves_nothing_behind(tmp_path: Path) -> None:
    from gisjob_worker.cli.run import check_writable_dir

    check_writable_dir(tmp_path / "a" / "b" / "out", "spec.output.uri")
    check_writable_dir(tmp_path, "spec.output.uri")
    assert list(tmp_path.iterdir()) == []
    check_writable_dir("s3://bucket/out", "spec.output.uri")  # not local: not probed


# ------------------------------------------------------------------------------ item 14


def test_result_lines_name_each_mosaic_with_its_input(
    write_job: WriteJob, job_doc: JobDoc, make_raster: Callable[..., Path], tmp_path: Path
) -> None:
    a = make_raster(tmp_path / "a.tif", width=128, height=128)
    b = make_raster(tmp_path / "b.tif", width=128, height=128)
    job = load_job(
        write_job(
            job_doc(
                input={"uris": [str(a), str(b)]},
                operation={"name": "scale", "params": {}},
                output={"uri": str(tmp_path / "out")},
            )
        )
    )
    plan = build_plan(job)
    out = tmp_path / "out"
    manifest = {"mosaics": ["mosaic-i0000.vrt", "mosaic-i0001.vrt"]}
    assert result_lines(manifest, plan, out) == [
        f"mosaic: {out / 'mosaic-i0000.vrt'}  (from {a})",
        f"mosaic: {out / 'mosaic-i0001.vrt'}  (from {b})",
    ]
    assert result_lines({"mosaics": ["mosaic.vrt"]}, plan, out) == [f"mosaic: {out / 'mosaic.vrt'}"]
    many = {"mosaics": [f"mosaic-i{i:04d}.vrt" for i in range(25)]}
    lines = result_lines(many, plan, out)
    assert len(lines) == 11
    assert lines[-1] == "mosaic: ... 15 more (all listed in manifest.json)"


def test_result_lines_name_the_dataset_folder(
    write_job: WriteJob, job_doc: JobDoc, vector_25: Path, tmp_path: Path
) -> None:
    job = load_job(
        write_job(
            job_doc(
                input={"uri": str(vector_25), "layer": "parcels"},
                operation={"name": "filter", "params": {}},
                output={"uri": str(tmp_path / "out"), "format": "GeoParquet"},
            )
        )
    )
    plan = build_plan(job)
    manifest = {"dataset": "parts", "outputFormat": "GeoParquet"}
    assert result_lines(manifest, plan, tmp_path / "out") == [
        f"dataset: {tmp_path / 'out' / 'parts'}  (GeoParquet dataset)"
    ]


# ------------------------------------------------------------------------------ item 16


def test_operations_prints_the_names_a_job_file_uses() -> None:
    from gisjob_worker.registry import registry

    result = invoke("operations")
    assert result.exit_code == 0, result.stderr
    rows = {line.split()[0]: line for line in result.stdout.splitlines()}
    assert rows["filter"].endswith("params: where, columns, area, areaColumn, equalAreaCrs")
    assert "area_column" not in result.stdout and "equal_area_crs" not in result.stdout
    for name, op in registry().items():
        printed = rows[name].split("params: ", 1)[1].split(", ")
        schema = op.params_model.model_json_schema(by_alias=True)
        assert printed == list(schema.get("properties", {})), name


def test_param_names_follow_an_alias_generator() -> None:
    from pydantic import BaseModel, ConfigDict, Field
    from pydantic.alias_generators import to_camel

    from gisjob_worker.cli.operations import param_names

    class PluginParams(BaseModel):
        model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)
        window_size: int = 3
        no_data_value: float = Field(0.0, alias="nodata")
        band: int = 1

    assert param_names(PluginParams) == ["windowSize", "nodata", "band"]


# ------------------------------------------------------------------------------ item 15


@pytest.fixture
def tiled_job(write_job: WriteJob, job_doc: JobDoc, raster_1024: Path, tmp_path: Path) -> Path:
    """256 tiles of 64×64 over the 1024² raster."""
    return _raster_job(write_job, job_doc, raster_1024, tmp_path / "out", tiling={"tileSize": 64})


def _plan(*args: str, columns: int = 80) -> Result:
    result = CliRunner().invoke(
        cli, ["plan", *args], prog_name="gisjob", env={"COLUMNS": str(columns)}
    )
    assert result.exit_code == 0, result.stderr
    return result


def test_plan_of_many_tiles_prints_a_summary_and_a_sample(tiled_job: Path) -> None:
    out = _plan(str(tiled_job)).stdout
    lines = out.splitlines()
    assert all(len(line) <= 80 for line in lines), out
    rows = [line for line in lines if line.startswith("│ r")]
    ids = [row.split()[1] for row in rows]
    assert ids[:2] == ["r0000c0000", "r0000c0001"] and len(ids) == 15
    assert ids[-1] == "r0015c0015" and ids[10] == "r0015c0011"
    assert any("... 241 more" in line for line in lines)
    p = build_plan(load_job(tiled_job))
    est = p.tiles[0].estimated_peak_bytes
    req = p.tiles[0].memory_request_bytes
    # the footer: one phrase per line, nothing cut mid-phrase at 80 columns
    assert lines[-6:] == [
        "tiles: 256",
        f"estimate: min {fb(est)}  median {fb(est)}  max {fb(est)}",
        f"request:  min {fb(req)}  median {fb(req)}  max {fb(req)}",
        f"sum of requests: {fb(256 * req)}",
        f"headroom: 20%   baseline: {fb(p.sizing.baseline_bytes)}   "
        f"GDAL cache: {fb(p.sizing.cache_bytes)}",
        "shown: the first 10 and last 5 of 256 tiles (--all shows every one)",
    ]


def test_plan_all_prints_every_tile(tiled_job: Path) -> None:
    out = _plan("--all", str(tiled_job)).stdout
    assert len([line for line in out.splitlines() if line.startswith("│ r")]) == 256
    assert "more" not in out and "shown:" not in out


def test_plan_footer_fits_60_columns_too(tiled_job: Path) -> None:
    out = _plan(str(tiled_job), columns=60).stdout
    assert "sum of requests: " in out
    for phrase in ("tiles: 256", "estimate: min", "request:  min", "headroom: 20%"):
        assert any(line.startswith(phrase) for line in out.splitlines()), phrase


def test_plan_several_job_files(
    tiled_job: Path, write_job: WriteJob, job_doc: JobDoc, vector_25: Path, tmp_path: Path
) -> None:
    vector_job = write_job(
        job_doc(
            input={"uri": str(vector_25), "layer": "parcels"},
            operation={"name": "filter", "params": {}},
            output={"uri": str(tmp_path / "vout"), "format": "GeoParquet"},
        ),
        name="vector.yaml",
    )
    out = _plan(str(tiled_job), str(vector_job)).stdout
    assert out.count("unit-job: ") == 2
    assert "unit-job: scale (raster)" in out and "unit-job: filter (vector)" in out
    plans = [build_plan(load_job(tiled_job)), build_plan(load_job(vector_job))]
    tiles = sum(len(p.tiles) for p in plans)
    assert f"2 jobs: {tiles:,} tiles, sum of requests " in out.splitlines()[-1]

    docs = json.loads(_plan("--json", str(tiled_job), str(vector_job)).stdout)
    assert [d["digest"] for d in docs] == [p.digest for p in plans]
    one = json.loads(_plan("--json", str(tiled_job)).stdout)
    assert one == json.loads(json.dumps(plans[0].to_json()))  # one file: unchanged


def test_plan_stops_at_the_first_bad_job_file(tiled_job: Path, tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    result = invoke("plan", str(tiled_job), str(missing))
    assert result.exit_code == 2
    assert one_error_line(result) == f"gisjob: error: {missing}: job file not found"
    assert result.stdout == ""  # checked before any plan is printed


# ------------------------------------------------------------------------------ item 13

RUNNING = Snapshot(
    total=1234,
    done=567,
    failed=3,
    running=8,
    memory_in_use=7 * 1024**3 + 300 * 1024**2,
    allowance=24 * 1024**3,
    retries=2,
    oom=0,
    skipped=0,
)


def _line(segments: list[tuple[str, str]]) -> str:
    return "  ".join("━" * int(t) if style == "bar" else t for t, style in segments)


def _texts(segments: list[tuple[str, str]]) -> list[str]:
    return [t for t, style in segments if style != "bar"]


def test_clock_and_eta() -> None:
    assert [clock(s) for s in (None, 0, 59.6, 61, 3599, 3600, 86399)] == [
        "-:--",
        "0:00",
        "1:00",
        "1:01",
        "59:59",
        "1:00:00",
        "23:59:59",
    ]
    # 570 of 1234 finished in 754 s: 664 left at the same pace
    assert eta_seconds(RUNNING, 754.0) == pytest.approx(664 * 754 / 570)
    resumed = dataclasses.replace(RUNNING, done=600, skipped=500)  # resumed tiles cost nothing
    assert eta_seconds(resumed, 100.0) == pytest.approx(631 * 100 / 103)
    assert eta_seconds(dataclasses.replace(RUNNING, done=0, failed=0), 5.0) is None
    assert eta_seconds(dataclasses.replace(RUNNING, done=1231), 5.0) == 0.0


@pytest.mark.parametrize("width", [80, 60])
def test_progress_essentials_survive_narrow_terminals(width: int) -> None:
    segments = layout(RUNNING, "s2-ndvi-europe-2024", 754.0, width)
    line = _line(segments)
    assert len(line) <= width, line
    texts = _texts(segments)
    assert "570/1234" in texts and "failed 3" in texts
    assert f"12:34 ETA {clock(664 * 754 / 570)}" in texts
    assert "retries 2" in texts  # a non-zero counter outlives the optional fields
    assert "…" not in line


def test_progress_line_gives_way_in_order() -> None:
    """Bar width first, then zero counters and the long memory text, then the bar, workers,
    memory, title; done/total, failed, elapsed and ETA never."""
    essentials = {"570/1234", "failed 3", f"12:34 ETA {clock(664 * 754 / 570)}"}
    full = layout(RUNNING, "s2-ndvi-europe-2024", 754.0, 200)
    everything_with_a_short_bar = len(_line(full)) - 40 + 10
    seen_widths: dict[str, list[int]] = {}
    for width in range(38, 200):
        segments = layout(RUNNING, "s2-ndvi-europe-2024", 754.0, width)
        line, texts = _line(segments), _texts(segments)
        assert len(line) <= width, (width, line)
        assert essentials <= set(texts), (width, line)
        bar = [int(t) for t, style in segments if style == "bar"]
        mem = [t for t in texts if t.startswith("mem ")]
        title = "s2-ndvi-europe-2024" in texts
        if bar:
            assert mem and "workers 8" in texts and title, (width, line)
            assert 10 <= bar[0] <= 40
        # the bar shrinks to its minimum before anything else goes
        assert ("OOM 0" in texts) == (width >= everything_with_a_short_bar), (width, line)
        if "workers 8" in texts:
            assert mem and title
        if mem:
            assert title
        if "OOM 0" in texts:
            assert mem == ["mem 7.3 GiB/24.0 GiB"] and bar
        for key, present in [("bar", bool(bar)), ("mem", bool(mem)), ("title", title)]:
            if present:
                seen_widths.setdefault(key, []).append(width)
    # every optional part appears somewhere, the bar needing the most room
    assert min(seen_widths["bar"]) > min(seen_widths["mem"]) > min(seen_widths["title"])
    assert _texts(full) == [
        "s2-ndvi-europe-2024",
        "570/1234",
        "failed 3",
        "workers 8",
        "mem 7.3 GiB/24.0 GiB",
        "retries 2",
        "OOM 0",
        f"12:34 ETA {clock(664 * 754 / 570)}",
    ]
    assert [t for t, style in full if style == "bar"] == ["40"]


def test_progress_renders_through_rich_at_80_columns() -> None:
    from rich.console import Console

    console = Console(width=80, force_terminal=True, record=True, file=io.StringIO())
    ui = ProgressLine("demo-ndvi", RUNNING.total, started=time.monotonic() - 75)
    ui.snapshot = RUNNING
    console.print(ui)
    text = console.export_text().rstrip("\n")
    assert "\n" not in text and len(text) <= 80
    assert "570/1234  failed 3" in text and "1:15 ETA " in text


# ------------------------------------------------------------------------------ item 18

MIB = 1024**2


def _samples(tiles: int) -> tuple[list[Sample], list[TilePeak]]:
    """Two workers' worth of tiles, 4 samples each (tile 3: one sample only); every worker
    reports a peak above what the runner sampled (a spike between two samples)."""
    samples: list[Sample] = []
    peaks: list[TilePeak] = []
    for i in range(tiles):
        start = (i // 2) * 1.0
        n = 1 if i == 3 else 4
        for k in range(n):
            samples.append(
                Sample(f"r{i:04d}c0000", 0, start + 0.25 * k, (50 + 10 * k + i) * MIB, 256 * MIB)
            )
        peaks.append(TilePeak(f"r{i:04d}c0000", 0, (95 + i) * MIB + 12345))
    return samples, peaks


def _by_gid(ax: Any, gid: str) -> Any:
    found = [line for line in ax.get_lines() if line.get_gid() == gid]
    assert len(found) == 1, gid
    return found[0]


def test_memory_figure_colours_peaks_totals_and_allowance() -> None:
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_rgb

    samples, peaks = _samples(25)
    allowance = 8 * 1024**3
    largest = {"tile": "r0024c0000", "peakRssBytes": peaks[-1].peakRssBytes}
    fig = memory_figure(samples, "t", peaks=peaks, allowance=allowance, largest=largest)
    try:
        ax, total_ax = fig.axes[:2]
        tile_lines = [
            line for line in ax.get_lines() if not str(line.get_gid()).startswith("peak:")
        ]
        assert [line.get_label() for line in tile_lines] == [f"r{i:04d}c0000" for i in range(25)]
        colours = [to_rgb(line.get_color()) for line in tile_lines]
        distances = [
            sum((a - b) ** 2 for a, b in zip(c1, c2, strict=True)) ** 0.5
            for i, c1 in enumerate(colours)
            for c2 in colours[i + 1 :]
        ]
        assert min(distances) > 0.05  # 25 colours, each distinguishable from every other
        # each reported peak is marked at exactly the reported value
        for p in peaks:
            marker = _by_gid(ax, f"peak:{p.tile}:0")
            assert list(marker.get_ydata()) == [p.peakRssBytes / MIB]
            assert marker.get_color() == tile_lines[int(p.tile[1:5])].get_color()
        assert [t.get_text() for t in ax.texts] == [
            f"largest peak {peaks[-1].peakRssBytes / MIB:.1f} MiB (r0024c0000)"
        ]
        # the run: resident memory of all workers, their requests, the allowance
        resident = _by_gid(total_ax, "total-resident")
        times = sorted({s.t for s in samples})
        assert list(resident.get_xdata()) == times
        assert list(resident.get_ydata()) == [
            sum(s.rss for s in samples if s.t == t) / MIB for t in times
        ]
        requested = _by_gid(total_ax, "total-requested")
        assert max(requested.get_ydata()) == 2 * 256
        assert list(_by_gid(total_ax, "allowance").get_ydata()) == [allowance / MIB] * 2
        # legends outside the data
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
        for axes in (ax, total_ax):
            legend = axes.get_legend()
            assert legend is not None
            assert legend.get_window_extent(renderer).x0 >= axes.get_window_extent(renderer).x1
        assert total_ax.get_yscale() == "log"  # 8 GiB over 0.5 GiB in use: use not flattened
    finally:
        plt.close(fig)


def test_memory_figure_of_many_tiles_has_a_colour_bar_not_a_legend() -> None:
    import matplotlib.pyplot as plt

    samples, peaks = _samples(60)
    fig = memory_figure(samples, "t", peaks=peaks)
    try:
        assert fig.axes[0].get_legend() is None
        assert len(fig.axes) == 3  # the colour bar
        assert "60 tile attempts" in fig.axes[2].get_ylabel()
        assert fig.axes[1].get_yscale() == "linear"
    finally:
        plt.close(fig)


def test_write_report_writes_the_png_and_the_numbers(tmp_path: Path) -> None:
    samples, peaks = _samples(3)
    summary = {"job": "j", "largestPeak": None}
    written = write_report(tmp_path / "rep", summary, samples, peaks=peaks, allowance=10**9)
    assert [p.name for p in written] == ["summary.json", "memory.png"]
    assert (tmp_path / "rep" / "memory.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads((tmp_path / "rep" / "summary.json").read_text())
    assert data["allowanceBytes"] == 10**9
    assert data["tilePeaks"][0] == {
        "tile": "r0000c0000",
        "attempt": 0,
        "peakRssBytes": 95 * MIB + 12345,
    }
    assert len(data["samples"]) == len(samples)


def test_reported_peaks_come_from_every_attempt_record() -> None:
    tile = Tile("r0000c0000", 0, None, None, None, None, 1, 10, 20)
    other = Tile("r0000c0001", 0, None, None, None, None, 1, 10, 20)
    runs = {
        tile.id: TileRun(
            tile,
            records=[
                {"attempt": 0, "peakRssBytes": 300, "exitCode": 3},
                {"attempt": 1, "peakRssBytes": 200, "exitCode": 0},
            ],
        ),
        other.id: TileRun(other, records=[{"attempt": 0, "peakRssBytes": 5}], resumed=True),
    }
    assert reported_peaks(runs) == [
        TilePeak("r0000c0000", 0, 300),
        TilePeak("r0000c0000", 1, 200),
    ]


def test_plan_warns_about_requests_no_node_can_hold(
    tmp_path: Path, make_raster: Callable[..., Path]
) -> None:
    """Issue 17 #6: `gisjob plan --node-memory` names the tiles no node could hold; an
    absurd request (1 EiB) is a warning even without it."""
    src = tmp_path / "in.tif"
    make_raster(src, width=256, height=256, count=2, block=64)
    doc = {
        "apiVersion": "gisjob.dev/v1alpha1",
        "kind": "GisJob",
        "metadata": {"name": "big"},
        "spec": {
            "input": {"uri": str(src)},
            "operation": {"name": "ndvi", "params": {"nir": 2, "red": 1}},
            "output": {"uri": str(tmp_path / "out")},
            "tiling": {"tileSize": 128},
            "resources": {"memory": "20Gi"},
        },
    }
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(doc))
    run = CliRunner().invoke(cli, ["plan", str(job), "--node-memory", "16Gi"])
    assert run.exit_code == 0, run.output
    assert "4 of 4 tiles request more than --node-memory 16.0 GiB" in run.output
    assert "never be scheduled" in run.output
    run = CliRunner().invoke(cli, ["plan", str(job), "--node-memory", "32Gi"])
    assert "warning" not in run.output
    doc["spec"]["resources"] = {"memory": "1Ei", "maxMemory": "1Ei"}
    job.write_text(yaml.safe_dump(doc))
    run = CliRunner().invoke(cli, ["plan", str(job)])
    assert "request more than any machine's memory" in run.output
    run = CliRunner().invoke(cli, ["plan", str(job), "--node-memory", "lots"])
    assert run.exit_code == 2 and "--node-memory" in run.output
