"""The planner on tiny real files: tiles, sizing, digest, input errors, sub-tiles."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gisjob_worker import memory
from gisjob_worker.errors import EXIT_INPUT, InputError, SpecError
from gisjob_worker.plan import RasterFile, VectorFile, resolve_subtile, split_tile
from gisjob_worker.planner import build_plan, plan_for_tile
from gisjob_worker.spec import GisJob, load_job
from gisjob_worker.tiles import FeatureRange, Window

MIB = 1024**2
JobDoc = Callable[..., dict[str, Any]]
WriteJob = Callable[..., Path]
# set through GISJOB_BASELINE_* by the autouse fixture in conftest.py (no probe subprocess)
BASELINE_RASTER = 100_000_000
BASELINE_VECTOR = 200_000_000


def test_baselines_come_from_the_environment() -> None:
    assert os.environ["GISJOB_BASELINE_RASTER"] == str(BASELINE_RASTER)
    assert os.environ["GISJOB_BASELINE_VECTOR"] == str(BASELINE_VECTOR)


@pytest.fixture
def raster_job(job_doc: JobDoc, write_job: WriteJob) -> Callable[..., GisJob]:
    """A job on a given raster; keyword args replace spec entries."""

    def make(uri: Path | str, **spec: Any) -> GisJob:
        spec.setdefault("operation", {"name": "ndvi", "params": {"nir": 2, "red": 1}})
        spec.setdefault("tiling", {"tileSize": 256})
        return load_job(write_job(job_doc(input={"uri": str(uri)}, **spec)))

    return make


@pytest.fixture
def vector_job(job_doc: JobDoc, write_job: WriteJob) -> Callable[..., GisJob]:
    def make(uri: Path | str, **spec: Any) -> GisJob:
        spec.setdefault("operation", {"name": "filter", "params": {"area": True}})
        spec.setdefault("tiling", {"featuresPerTile": 10})
        return load_job(write_job(job_doc(input={"uri": str(uri), "layer": "parcels"}, **spec)))

    return make


# ------------------------------------------------------------------------- rasters


def test_raster_plan_tiles(raster_1024: Path, raster_job: Callable[..., GisJob]) -> None:
    plan = build_plan(raster_job(raster_1024))
    assert plan.kind == "raster"
    assert plan.operation == "ndvi"
    assert plan.output_format == "COG"
    assert plan.job == "unit-job"
    assert plan.sizing.baseline_bytes == BASELINE_RASTER
    assert plan.sizing.cache_bytes == 64 * MIB
    assert plan.sizing.headroom == 0.2
    assert plan.sizing.memory is None
    (f,) = plan.files
    assert isinstance(f, RasterFile)
    assert (f.width, f.height, f.count) == (1024, 1024, 2)
    assert (f.block_width, f.block_height) == (64, 64)  # 16 x 16 = 256 blocks
    assert f.bands == (2, 1)
    assert f.read_bytes_per_pixel == 4
    # read 2 x uint16 + ndvi temporaries 17 + mask 2 + float32 output 4
    assert f.bytes_per_pixel == 4 + 17 + 2 + 4
    assert len(plan.tiles) == 16
    assert [t.id for t in plan.tiles[:5]] == [
        "r0000c0000",
        "r0000c0001",
        "r0000c0002",
        "r0000c0003",
        "r0001c0000",
    ]
    assert plan.tiles[-1].id == "r0003c0003"
    assert plan.tiles[5].window == Window(256, 256, 256, 256)
    assert len({t.id for t in plan.tiles}) == 16
    est = memory.raster_estimate(BASELINE_RASTER, 64 * MIB, 256 * 256, 27)
    for t in plan.tiles:
        assert t.file_index == 0
        assert t.fids is None
        assert t.chunks == 1
        assert t.chunk is not None
        assert (t.chunk.width, t.chunk.height) == (256, 256)
        assert t.estimated_peak_bytes == est
        assert t.memory_request_bytes == memory.request_for(est, 0.2)
    assert plan.max_estimate == est
    assert plan.tile("r0002c0001").window == Window(256, 512, 256, 256)


@pytest.mark.parametrize(
    ("tile_size", "count", "edge"),
    [(4096, 1, 1024), (1000, 1, 1024), (300, 16, 320), (64, 256, 64), (1, 256, 64)],
)
def test_raster_tile_size_rounds_to_blocks(
    raster_1024: Path, raster_job: Callable[..., GisJob], tile_size: int, count: int, edge: int
) -> None:
    plan = build_plan(raster_job(raster_1024, tiling={"tileSize": tile_size}))
    assert len(plan.tiles) == count
    first = plan.tiles[0].window
    assert first is not None
    assert first.width == min(edge, 1024)
    covered = sum(t.window.pixels for t in plan.tiles if t.window is not None)
    assert covered == 1024 * 1024


def test_raster_plan_with_memory_fits_budget(
    raster_1024: Path, raster_job: Callable[..., GisJob]
) -> None:
    plan = build_plan(
        raster_job(raster_1024, tiling={"tileSize": 1024}, resources={"memory": "270Mi"})
    )
    (t,) = plan.tiles
    budget = memory.usable_for(270 * MIB, 0.2)
    assert t.memory_request_bytes == 270 * MIB
    assert t.estimated_peak_bytes <= budget
    assert t.chunk is not None
    assert t.chunk.width == 1024  # full-width strips
    assert t.chunk.height % 64 == 0
    assert 64 <= t.chunk.height < 1024  # the budget forces more than one strip
    # one more block row would not fit the budget
    bigger = memory.raster_estimate(BASELINE_RASTER, 64 * MIB, 1024 * (t.chunk.height + 64), 27)
    assert bigger > budget
    assert t.chunks == -(-1024 // t.chunk.height)


def test_memory_too_small_names_the_field(
    raster_1024: Path, raster_job: Callable[..., GisJob]
) -> None:
    with pytest.raises(SpecError) as info:
        build_plan(raster_job(raster_1024, resources={"memory": "100Mi"}))
    msg = str(info.value)
    assert "spec.resources.memory: 100.0 MiB is below this job's minimum of" in msg
    assert "one 64x64 block at 27 B/pixel" in msg
    assert info.value.exit_code == EXIT_INPUT


def test_band_out_of_range_names_the_file(
    raster_1024: Path, raster_job: Callable[..., GisJob]
) -> None:
    job = raster_job(raster_1024, operation={"name": "ndvi", "params": {"nir": 5, "red": 1}})
    with pytest.raises(InputError) as info:
        build_plan(job)
    assert str(info.value) == (
        f"{raster_1024}: spec.operation.params: band 5 is out of range (the dataset has 2 bands)"
    )
    assert info.value.exit_code == EXIT_INPUT


def _bad_inputs(tmp_path: Path, source: Path) -> dict[str, Path]:
    text = tmp_path / "text.tif"
    text.write_text("this is not a GeoTIFF\n")
    truncated = tmp_path / "truncated.tif"
    truncated.write_bytes(source.read_bytes()[:200])
    corrupt = tmp_path / "corrupt.tif"
    corrupt.write_bytes(b"II*\x00" + b"\xff" * 4 + b"\x00" * 500)
    empty = tmp_path / "empty.tif"
    empty.write_bytes(b"")
    return {
        "missing": tmp_path / "missing.tif",
        "text": text,
        "truncated": truncated,
        "corrupt": corrupt,
        "empty": empty,
    }


@pytest.mark.parametrize("kind", ["missing", "text", "truncated", "corrupt", "empty"])
def test_unreadable_raster_is_an_input_error(
    tmp_path: Path, raster_1024: Path, raster_job: Callable[..., GisJob], kind: str
) -> None:
    path = _bad_inputs(tmp_path, raster_1024)[kind]
    with pytest.raises(InputError) as info:
        build_plan(raster_job(path))
    msg = str(info.value)
    assert msg.startswith(f"{path}: ")
    assert "\n" not in msg
    assert info.value.exit_code == EXIT_INPUT
    if kind == "missing":
        assert msg == f"{path}: input file not found"
    else:
        assert "not a raster GDAL can read" in msg


# -------------------------------------------------------------------------- digest


def test_digest_stable_and_sensitive(
    tmp_path: Path, make_raster: Callable[..., Path], raster_job: Callable[..., GisJob]
) -> None:
    path = make_raster(tmp_path / "d.tif", width=256, height=256, block=64)
    base = build_plan(raster_job(path)).digest
    assert len(base) == 16
    assert build_plan(raster_job(path)).digest == base
    # how, not what: parallelism and memory sizing do not change the digest
    assert build_plan(raster_job(path, parallelism=17)).digest == base
    assert build_plan(raster_job(path, resources={"memory": "1Gi"})).digest == base
    # what: params, operation, tiling, format change it
    other_params = {"name": "ndvi", "params": {"nir": 1, "red": 2}}
    assert build_plan(raster_job(path, operation=other_params)).digest != base
    assert build_plan(raster_job(path, operation={"name": "scale"})).digest != base
    assert build_plan(raster_job(path, tiling={"tileSize": 128})).digest != base
    gtiff = {"uri": "/data/out", "format": "GTiff"}
    assert build_plan(raster_job(path, output=gtiff)).digest != base
    # the input file's modification time
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    touched = build_plan(raster_job(path)).digest
    assert touched != base
    # the input file's content
    make_raster(path, width=256, height=256, block=64, seed=99)
    assert build_plan(raster_job(path)).digest not in (base, touched)


def test_digest_differs_for_another_file(
    tmp_path: Path, raster_1024: Path, raster_job: Callable[..., GisJob]
) -> None:
    copy = tmp_path / "copy.tif"
    shutil.copy2(raster_1024, copy)
    assert build_plan(raster_job(copy)).digest != build_plan(raster_job(raster_1024)).digest


# ----------------------------------------------------------------------- sub-tiles


def test_split_and_resolve_subtiles(raster_1024: Path, raster_job: Callable[..., GisJob]) -> None:
    plan = build_plan(raster_job(raster_1024))
    parent = plan.tile("r0000c0000")
    parts = split_tile(plan, parent)
    assert parts is not None
    assert [p.id for p in parts] == [f"r0000c0000-q{i}" for i in range(4)]
    assert [p.window for p in parts] == [
        Window(0, 0, 128, 128),
        Window(128, 0, 128, 128),
        Window(0, 128, 128, 128),
        Window(128, 128, 128, 128),
    ]
    q3 = resolve_subtile(plan, "r0000c0000-q3")
    assert q3 == parts[3]
    assert plan.tile("r0000c0000-q3") == parts[3]
    assert q3.estimated_peak_bytes < parent.estimated_peak_bytes
    deeper = plan.tile("r0001c0002-q3-q1")
    assert deeper.window == Window(256 * 2 + 128 + 64, 256 + 128, 64, 64)
    # a single block cannot be split further
    assert split_tile(plan, deeper) is None


@pytest.mark.parametrize(
    ("tile_id", "match"),
    [
        ("r0009c0009", "is not in the plan"),
        ("nonsense", "not a tile id"),
        ("r0000c0000-q7", "has no such part|not a tile id"),
        ("r0000c0000-q3-q1-q0", "has no such part"),
    ],
)
def test_unknown_tiles_are_input_errors(
    raster_1024: Path, raster_job: Callable[..., GisJob], tile_id: str, match: str
) -> None:
    plan = build_plan(raster_job(raster_1024))
    with pytest.raises(InputError, match=match):
        plan.tile(tile_id)


# -------------------------------------------------------------------- many files


def test_glob_plans_each_file(
    tmp_path: Path,
    make_raster: Callable[..., Path],
    job_doc: JobDoc,
    write_job: WriteJob,
) -> None:
    (tmp_path / "in").mkdir()
    make_raster(tmp_path / "in" / "a.tif", width=128, height=128, block=64)
    make_raster(tmp_path / "in" / "b.tif", width=256, height=128, block=64)
    job = load_job(
        write_job(
            job_doc(
                input={"glob": "in/*.tif"},
                operation={"name": "scale", "params": {"bands": [1]}},
                tiling={"tileSize": 128},
            )
        )
    )
    plan = build_plan(job)
    assert [f.uri for f in plan.files] == [str(tmp_path / "in" / n) for n in ("a.tif", "b.tif")]
    assert [t.id for t in plan.tiles] == [
        "i0000-r0000c0000",
        "i0001-r0000c0000",
        "i0001-r0000c0001",
    ]
    assert [t.file_index for t in plan.tiles] == [0, 1, 1]
    # a worker plans only its own file
    plan1, tile = plan_for_tile(job, "i0001-r0000c0001")
    assert tile.window == Window(128, 0, 128, 128)
    assert [t.id for t in plan1.tiles] == ["i0001-r0000c0000", "i0001-r0000c0001"]
    assert plan1.digest == plan.digest
    sub = plan_for_tile(job, "i0001-r0000c0000-q1")[1]
    assert sub.window == Window(64, 0, 64, 64)


def test_glob_matching_nothing(job_doc: JobDoc, write_job: WriteJob, tmp_path: Path) -> None:
    job = load_job(write_job(job_doc(input={"glob": "none/*.tif"})))
    with pytest.raises(InputError, match=r"spec\.input\.glob matches no file") as info:
        build_plan(job)
    assert str(tmp_path / "none" / "*.tif") in str(info.value)


# -------------------------------------------------------------------------- vectors


def test_vector_plan_feature_ranges(vector_25: Path, vector_job: Callable[..., GisJob]) -> None:
    plan = build_plan(vector_job(vector_25))
    assert plan.kind == "vector"
    assert plan.output_format == "GeoParquet"
    assert plan.sizing.baseline_bytes == BASELINE_VECTOR
    assert plan.sizing.memory_factor == 7.0
    (f,) = plan.files
    assert isinstance(f, VectorFile)
    assert f.features == 25
    assert f.first_fid == 1  # GeoPackage FIDs start at 1
    assert f.layer == "parcels"
    assert f.crs == "EPSG:32633"
    assert f.bytes_per_feature >= 64
    assert [t.id for t in plan.tiles] == ["f000000", "f000001", "f000002"]
    assert [t.fids for t in plan.tiles] == [
        FeatureRange(1, 11, 10),
        FeatureRange(11, 21, 10),
        FeatureRange(21, None, 5),
    ]
    for t in plan.tiles:
        assert t.window is None
        assert t.batch_rows is not None
        assert 1 <= t.batch_rows <= 10
        assert t.estimated_peak_bytes == memory.vector_estimate(
            BASELINE_VECTOR, 64 * MIB, t.batch_rows, f.bytes_per_feature, 7.0
        )
    halves = split_tile(plan, plan.tiles[2])
    assert halves is not None
    assert [h.id for h in halves] == ["f000002-h0", "f000002-h1"]
    assert plan.tile("f000002-h1").fids == FeatureRange(23, None, 3)


def _sparse_gpkg(path: Path, fids: list[int]) -> Path:
    """Points whose GeoPackage FIDs are ``fids`` (GDAL takes a ``fid`` field as the FID)."""
    import numpy as np
    import shapely
    from pyogrio import raw

    n = len(fids)
    pts = shapely.points(np.arange(n) * 10.0 + 500_000, np.full(n, 5_000_000.0))
    raw.write(
        str(path),
        geometry=shapely.to_wkb(pts),
        field_data=[np.array(fids, dtype=np.int64), np.arange(n, dtype=np.int64)],
        fields=["fid", "value"],
        layer="parcels",
        driver="GPKG",
        geometry_type="Point",
        crs="EPSG:32633",
    )
    return path


def test_vector_plan_lays_tiles_on_sparse_fids(
    tmp_path: Path, vector_job: Callable[..., GisJob]
) -> None:
    fids = [5, 6, 7, 1_000, 20_000, 20_001, 10**9 - 7, 10**9 - 3, 10**9, 3 * 10**9 + 1]
    job = vector_job(
        _sparse_gpkg(tmp_path / "sparse.gpkg", fids),
        operation={"name": "filter", "params": {}},
        tiling={"featuresPerTile": 3},
    )
    plan = build_plan(job)
    (f,) = plan.files
    assert isinstance(f, VectorFile)
    assert f.features == 10
    assert f.first_fid == 5
    assert f.fid_bounds == (5, 1_000, 10**9 - 7, 3 * 10**9 + 1)
    assert f.last_fid == 3 * 10**9 + 1
    assert [t.fids for t in plan.tiles] == [
        FeatureRange(5, 1_000, 3),
        FeatureRange(1_000, 10**9 - 7, 3),
        FeatureRange(10**9 - 7, 3 * 10**9 + 1, 3),
        FeatureRange(3 * 10**9 + 1, None, 1),
    ]
    # a split of a sparse range halves its FID span; the open last one up to the last FID
    h0, h1 = split_tile(plan, plan.tiles[1]) or []
    assert (h0.fids, h1.fids) == (
        FeatureRange(1_000, 500_000_496, 1),
        FeatureRange(500_000_496, 10**9 - 7, 2),
    )
    assert split_tile(plan, plan.tiles[3]) is None  # one feature
    # a worker re-planning its file lays the same tiles and sub-tiles
    _, tile = plan_for_tile(job, "f000001-h1")
    assert tile.fids == h1.fids


def test_vector_plan_of_contiguous_fids_is_unchanged(
    vector_25: Path, vector_job: Callable[..., GisJob]
) -> None:
    plan = build_plan(vector_job(vector_25))
    (f,) = plan.files
    assert isinstance(f, VectorFile)
    assert f.fid_bounds == (1, 11, 21)
    assert f.last_fid == 25
    assert plan.tile("f000002-h0").fids == FeatureRange(21, 23, 2)


@pytest.mark.parametrize(
    "where",
    ["value > 3 ORDER BY value", "value > 3 LIMIT 2", "value > 3 /* unclosed"],
)
def test_vector_where_that_breaks_once_combined_with_a_range_fails_the_plan(
    vector_25: Path, vector_job: Callable[..., GisJob], where: str
) -> None:
    """Valid alone (GeoPackage filters are SQLite), invalid as workers run it."""
    from pyogrio import raw

    _, alone = raw.read_arrow(vector_25, layer="parcels", where=where)
    assert alone.num_rows > 0
    job = vector_job(vector_25, operation={"name": "filter", "params": {"where": where}})
    with pytest.raises(InputError) as info:
        build_plan(job)
    msg = str(info.value)
    assert msg.startswith(f"{vector_25}: spec.operation.params.where: valid alone but not")
    assert "FID >= 1 AND FID < 11 AND ( <where> )" in msg


def test_vector_where_with_a_trailing_comment_plans(
    vector_25: Path, vector_job: Callable[..., GisJob]
) -> None:
    job = vector_job(
        vector_25, operation={"name": "filter", "params": {"where": "value > 3 -- most"}}
    )
    assert len(build_plan(job).tiles) == 3


def test_vector_where_too_slow_to_sample_fails_the_plan_in_time(
    tmp_path: Path,
    vector_job: Callable[..., GisJob],
    make_vector: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from gisjob_worker.inputs import WHERE_PROBE_ENV

    src = make_vector(tmp_path / "p.gpkg", 2_000)
    where = "value > (SELECT count(*) FROM parcels a, parcels b, parcels c)"  # 8e9 rows
    monkeypatch.setenv(WHERE_PROBE_ENV, "1")
    job = vector_job(src, operation={"name": "filter", "params": {"where": where}})
    children_before = _children()
    started = time.monotonic()
    with pytest.raises(InputError) as info:
        build_plan(job)
    assert time.monotonic() - started < 10
    assert str(info.value).startswith(
        f"{src}: spec.operation.params.where: the planner's sample read of 500 features did "
        f"not finish within 1 s (the limit, ${WHERE_PROBE_ENV})"
    )
    assert _children() == children_before  # the probe was killed and reaped


def _children() -> set[int]:
    """This process's children, zombies included (other tests may leave their own)."""
    import psutil

    return {c.pid for c in psutil.Process().children()}


def test_run_with_deadline_returns_the_result_or_kills_the_child() -> None:
    from gisjob_worker.inputs import run_with_deadline

    assert run_with_deadline(lambda: {"pid": os.getpid()}, 5)["pid"] != os.getpid()  # type: ignore[index]

    def forever() -> dict[str, Any]:
        time.sleep(60)
        return {}

    children_before = _children()
    started = time.monotonic()
    assert run_with_deadline(forever, 0.5) is None
    assert time.monotonic() - started < 5
    assert _children() == children_before  # killed and reaped: no child, no zombie left

    def crash() -> dict[str, Any]:
        os._exit(7)

    assert run_with_deadline(crash, 5) == {
        "step": "read",
        "error": "the sample read's process died",
    }


def test_vector_unknown_column(vector_25: Path, vector_job: Callable[..., GisJob]) -> None:
    job = vector_job(vector_25, operation={"name": "filter", "params": {"columns": ["nope"]}})
    with pytest.raises(InputError) as info:
        build_plan(job)
    assert str(info.value) == (
        f"{vector_25}: spec.operation.params.columns: no column 'nope' (the layer has name, value)"
    )


def test_vector_bad_where_is_an_input_error(
    vector_25: Path, vector_job: Callable[..., GisJob]
) -> None:
    job = vector_job(vector_25, operation={"name": "filter", "params": {"where": "nope > 1"}})
    with pytest.raises(InputError, match=r"spec\.operation\.params\.where"):
        build_plan(job)


def test_vector_memory_too_small(vector_25: Path, vector_job: Callable[..., GisJob]) -> None:
    with pytest.raises(SpecError, match=r"spec\.resources\.memory: 200\.0 MiB is below"):
        build_plan(vector_job(vector_25, resources={"memory": "200Mi"}))


def test_vector_missing_file(tmp_path: Path, vector_job: Callable[..., GisJob]) -> None:
    path = tmp_path / "nope.gpkg"
    with pytest.raises(InputError) as info:
        build_plan(vector_job(path))
    assert str(info.value) == f"{path}: input file not found"


def test_vector_not_a_vector(tmp_path: Path, vector_job: Callable[..., GisJob]) -> None:
    path = tmp_path / "junk.gpkg"
    path.write_text("junk\n")
    with pytest.raises(InputError) as info:
        build_plan(vector_job(path))
    assert str(info.value).startswith(f"{path}: not a vector layer GDAL can read")


def test_plan_to_json_totals(raster_1024: Path, raster_job: Callable[..., GisJob]) -> None:
    plan = build_plan(raster_job(raster_1024))
    doc = plan.to_json()
    assert doc["totals"]["tiles"] == 16
    assert doc["totals"]["estimatedPeakBytes"] == plan.max_estimate
    assert doc["totals"]["sumMemoryRequestBytes"] == 16 * plan.max_request
    assert doc["tiles"][1]["window"] == {"colOff": 256, "rowOff": 0, "width": 256, "height": 256}
    assert doc["files"][0]["bands"] == [2, 1]
    assert doc["digest"] == plan.digest
