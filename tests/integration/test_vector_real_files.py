"""Vector jobs on data shaped like real files (issue 15): curved geometries from surveying,
sparse and unordered feature ids, filters that only break once combined with a tile's FID
range, corrupt data, a filter too slow to plan, and the GPKG parts merge.

Every output is checked against a reference computed another way: ``pyogrio.read_dataframe``
(GDAL's feature-by-feature path, not the Arrow stream the workers use) on the whole file,
shapely/pyproj areas and the analytic area of the curves.
"""

from __future__ import annotations

import json
import math
import sqlite3
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from worker_helpers import job_doc, run_cli, run_worker, write_job

pytestmark = pytest.mark.slow

CRS = "EPSG:32633"
X0, Y0 = 500_000.0, 5_000_000.0

# ------------------------------------------------------------------------ curved WKB by hand
# ISO WKB, little-endian: 8 CircularString, 9 CompoundCurve, 10 CurvePolygon, 12 MultiSurface


def _head(code: int, n: int) -> bytes:
    return struct.pack("<BII", 1, code, n)


def _points(*xy: tuple[float, float]) -> bytes:
    return b"".join(struct.pack("<dd", x, y) for x, y in xy)


def circle(x: float, y: float, r: float) -> bytes:
    """CurvePolygon: a full circle as one CircularString (area πr²)."""
    ring = _head(8, 3) + _points((x - r, y), (x + r, y), (x - r, y))
    return _head(10, 1) + ring


def half_disk(x: float, y: float, r: float) -> bytes:
    """CurvePolygon whose ring is a CompoundCurve: an arc over the diameter (area πr²/2)."""
    arc = _head(8, 3) + _points((x - r, y), (x, y + r), (x + r, y))
    chord = _head(2, 2) + _points((x + r, y), (x - r, y))
    return _head(10, 1) + _head(9, 2) + arc + chord


def square(x: float, y: float, s: float) -> bytes:
    ring = struct.pack("<I", 5) + _points((x, y), (x + s, y), (x + s, y + s), (x, y + s), (x, y))
    return _head(3, 1) + ring


def multi_surface(*members: bytes) -> bytes:
    return _head(12, len(members)) + b"".join(members)


def write_surveyed(path: Path, n: int, declared: str) -> dict[int, float]:
    """A GeoPackage layer ``parcels`` declared ``declared`` (CURVEPOLYGON or MULTISURFACE)
    as surveying software writes them; returns the analytic area (m²) of each ``k``."""
    from pyogrio import raw

    geoms: list[bytes] = []
    areas: dict[int, float] = {}
    for k in range(n):
        x, y = X0 + (k % 50) * 100.0, Y0 + (k // 50) * 100.0
        r = 5.0 + (k % 7)
        if declared == "CURVEPOLYGON":
            kind = k % 3
            geoms.append([circle, half_disk, square][kind](x, y, r))
            areas[k] = [math.pi * r * r, math.pi * r * r / 2, r * r][kind]
        else:
            geoms.append(
                multi_surface(circle(x, y, r), square(x + 20, y, r), half_disk(x, y + 40, r))
            )
            areas[k] = math.pi * r * r + r * r + math.pi * r * r / 2
    raw.write(
        str(path),
        geometry=np.array(geoms, dtype=object),
        field_data=[np.arange(n, dtype=np.int64)],
        fields=["k"],
        layer="parcels",
        driver="GPKG",
        geometry_type="Unknown",
        crs=CRS,
    )
    with sqlite3.connect(path) as db:  # the layer's declared type, as the GPKG spec stores it
        db.execute("UPDATE gpkg_geometry_columns SET geometry_type_name = ?", (declared,))
    return areas


def _plan(job: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    run = run_cli("plan", str(job), "--json", env=env)
    assert run.code == 0, run.stderr
    return json.loads(run.stdout)  # type: ignore[no-any-return]


def _run_all(job: Path) -> tuple[dict[str, Any], list[str]]:
    plan = _plan(job)
    outputs = []
    for tile in plan["tiles"]:
        run = run_worker(job, tile["id"])
        assert run.code == 0, run.stderr[-2000:]
        assert run.record is not None
        assert run.record["peakRssBytes"] <= tile["estimatedPeakBytes"], (tile, run.record)
        outputs.append(run.record["output"])
    return plan, outputs


def _filter_job(
    tmp: Path, src: Path, params: dict[str, Any], per_tile: int, fmt: str = "GeoParquet", **kw: Any
) -> Path:
    layer = kw.pop("layer", "parcels")
    input_ = {"uri": str(src), **({"layer": layer} if layer else {})}
    return write_job(
        tmp / "job.yaml",
        job_doc(
            "vreal",
            input_,
            {"name": "filter", "params": params},
            {"uri": str(tmp / "out"), "format": fmt},
            tiling={"featuresPerTile": per_tile},
            **kw,
        ),
    )


# ------------------------------------------------------------------------------ 1. curves


@pytest.mark.parametrize(
    ("declared", "fmt"),
    [("CURVEPOLYGON", "GeoParquet"), ("MULTISURFACE", "GeoParquet"), ("MULTISURFACE", "GPKG")],
)
def test_curved_geometries_are_linearised_on_read_with_the_right_area(
    tmp_path: Path, declared: str, fmt: str
) -> None:
    import geopandas as gpd
    import pyarrow.parquet as pq
    import pyogrio

    src = tmp_path / "surveyed.gpkg"
    exact = write_surveyed(src, 240, declared)
    job = _filter_job(tmp_path, src, {"area": True}, per_tile=100, fmt=fmt)
    plan, outputs = _run_all(job)
    assert len(plan["tiles"]) == 3
    if fmt == "GeoParquet":
        got = gpd.read_parquet(tmp_path / "out" / "parts")  # the dataset, as users read it
        assert pq.read_table(tmp_path / "out" / "parts").num_rows == 240
    else:
        got = gpd.pd.concat([pyogrio.read_dataframe(p) for p in outputs], ignore_index=True)
    got = got.sort_values("k").reset_index(drop=True)
    linear = {"CURVEPOLYGON": {"Polygon"}, "MULTISURFACE": {"MultiPolygon"}}[declared]
    assert set(got.geom_type) == linear
    # reference: GDAL's feature-by-feature read (it linearises too), areas by geopandas
    ref = pyogrio.read_dataframe(src, layer="parcels").sort_values("k").reset_index(drop=True)
    assert set(ref.geom_type) == linear
    np.testing.assert_array_equal(got.k.to_numpy(), np.arange(240))
    assert got.geometry.geom_equals_exact(ref.geometry, tolerance=1e-9).all()
    np.testing.assert_allclose(
        got.area_km2.to_numpy(), ref.to_crs("EPSG:6933").area.to_numpy() / 1e6, rtol=1e-9
    )
    # and the curves themselves: GDAL strokes arcs every 4°, 0.08 % inside the true circle
    analytic = np.array([exact[k] for k in range(240)])
    np.testing.assert_allclose(got.area.to_numpy(), analytic, rtol=1e-3)


def test_linearize_wkb_matches_gdal_on_pyogrios_own_curve_files() -> None:
    import pyogrio
    import shapely
    from pyogrio import raw

    from gisjob_worker.operations.vector import linearize_wkb

    fixtures = Path(pyogrio.__file__).parent / "tests" / "fixtures"
    names = ["curve.gpkg", "curvepolygon.gpkg", "multisurface.gpkg"]
    if not all((fixtures / n).exists() for n in names):
        pytest.skip("this pyogrio does not ship its test data")
    for name in names:
        meta, table = raw.read_arrow(fixtures / name)
        column = table.column(meta["geometry_name"])
        with pytest.raises(NotImplementedError):  # what GEOS makes of the raw stream
            shapely.from_wkb(column.to_pylist())
        got = shapely.from_wkb(linearize_wkb(column).to_pylist())
        ref = pyogrio.read_dataframe(fixtures / name).geometry.to_numpy()
        assert [g.wkb for g in got] == [g.wkb for g in ref], name


def test_planning_and_linearising_import_no_pandas(tmp_path: Path) -> None:
    """A vector worker never needs pandas (~45 MiB): the FID pass, the sample probe and the
    linearisation must not make pyarrow import it (``to_numpy``, ``pa.array(ndarray)``)."""
    src = tmp_path / "surveyed.gpkg"
    write_surveyed(src, 50, "MULTISURFACE")
    code = f"""
import sys
from gisjob_worker import worker
worker.import_vector_stack()
from pyogrio import raw
from gisjob_worker.inputs import vector_file
from gisjob_worker.operations.vector import FILTER, linearize_wkb
params = FILTER.parse_params({{"where": "k > 3", "area": True}})
vf = vector_file(0, {str(src)!r}, "parcels", FILTER, params, 20)
assert vf.features == 50 and len(vf.fid_bounds) == 3, vf
with raw.open_arrow({str(src)!r}, use_pyarrow=True) as (meta, reader):
    for batch in reader:
        col = batch.column(meta["geometry_name"])
        assert linearize_wkb(col) is not col
print("pandas" in sys.modules)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


# ------------------------------------------------------------------------- 2. sparse FIDs


def write_sparse_parcels(path: Path, fids: np.ndarray, driver: str = "GPKG") -> None:
    """Square parcels whose feature ids are ``fids`` (GDAL's GPKG driver takes a ``fid``
    field as the FID; GeoJSON takes integer feature ids)."""
    from pyogrio import raw

    n = len(fids)
    rng = np.random.default_rng(9)
    geoms = [square(X0 + (i % 100) * 60.0, Y0 + (i // 100) * 60.0, 40.0) for i in range(n)]
    population = rng.integers(0, 1000, n).astype(np.int64)
    fields = ["fid", "parcel_id", "population"]
    data = [fids.astype(np.int64), np.arange(n, dtype=np.int64), population]
    kw: dict[str, Any] = {"layer": "parcels"} if driver == "GPKG" else {"ID_FIELD": "fid"}
    raw.write(
        str(path),
        geometry=np.array(geoms, dtype=object),
        field_data=data,
        fields=fields,
        driver=driver,
        geometry_type="Polygon",
        crs=CRS,
        **kw,
    )


def _all_fids(src: Path, layer: str | None) -> np.ndarray:
    import pyogrio

    df = pyogrio.read_dataframe(src, layer=layer, fid_as_index=True, columns=[])
    return np.sort(df.index.to_numpy().astype(np.int64))


def _check_tiles_hold_per_tile(plan: dict[str, Any], fids: np.ndarray, per_tile: int) -> None:
    tiles = plan["tiles"]
    assert len(tiles) == math.ceil(len(fids) / per_tile)
    for t in tiles:
        start, stop = t["fids"]["start"], t["fids"]["stop"]
        inside = int(np.count_nonzero((fids >= start) & (fids < (stop or 2**62))))
        assert inside == t["fids"]["features"], t
        assert abs(inside - per_tile) <= per_tile, t  # within one tile-size (the last: rest)
        assert t["chunks"] == max(1, math.ceil(inside / t["batchRows"]))
    assert sum(t["fids"]["features"] for t in tiles) == len(fids)


def _check_filtered(outputs: list[str], src: Path, layer: str | None) -> None:
    import geopandas as gpd
    import pyogrio

    got = gpd.pd.concat([gpd.read_parquet(p) for p in outputs], ignore_index=True)
    ref = pyogrio.read_dataframe(src, layer=layer)
    ref = ref[ref.population > 300]
    got = got.sort_values("parcel_id").reset_index(drop=True)
    ref = ref.sort_values("parcel_id").reset_index(drop=True)
    np.testing.assert_array_equal(got.parcel_id.to_numpy(), ref.parcel_id.to_numpy())
    np.testing.assert_array_equal(got.population.to_numpy(), ref.population.to_numpy())
    assert got.geometry.geom_equals_exact(ref.geometry, tolerance=0).all()
    np.testing.assert_allclose(
        got.area_km2.to_numpy(), ref.to_crs("EPSG:6933").area.to_numpy() / 1e6, rtol=1e-9
    )


def test_sparse_fids_make_tiles_of_features_per_tile(tmp_path: Path) -> None:
    """OSM-like ids: a dense run and ids scattered over 10^9 (before: all in the last tile)."""
    rng = np.random.default_rng(4)
    scattered = rng.choice(10**9 - 1, size=3_500, replace=False) + 1
    run = np.arange(600_000_000, 600_000_000 + 2_500)
    fids = np.unique(np.concatenate([scattered, run]))
    src = tmp_path / "sparse.gpkg"
    write_sparse_parcels(src, fids)
    assert np.array_equal(_all_fids(src, "parcels"), np.sort(fids))  # ids kept as written
    job = _filter_job(tmp_path, src, {"where": "population > 300", "area": True}, per_tile=1000)
    plan, outputs = _run_all(job)
    _check_tiles_hold_per_tile(plan, np.sort(fids), 1000)
    _check_filtered(outputs, src, "parcels")


def test_unordered_fids_are_tiled_from_a_sample(tmp_path: Path) -> None:
    """A GeoJSON whose integer feature ids come in no order: boundaries from the sampled
    pass (every FID kept at this size, so the counts are exact)."""
    rng = np.random.default_rng(6)
    fids = rng.choice(10**9 - 1, size=3_000, replace=False) + 1  # shuffled
    src = tmp_path / "unordered.geojson"
    write_sparse_parcels(src, fids, driver="GeoJSON")
    from pyogrio import raw

    _, first = raw.read_arrow(src, columns=[], read_geometry=False, return_fids=True)
    assert np.array_equal(first.column(0).to_numpy(), fids), "GDAL must keep the ids"
    job = _filter_job(
        tmp_path, src, {"where": "population > 300", "area": True}, per_tile=1000, layer=None
    )
    plan, outputs = _run_all(job)
    _check_tiles_hold_per_tile(plan, np.sort(fids), 1000)
    _check_filtered(outputs, src, None)


# ----------------------------------------------------------------- 3. where as workers run it


def _parcels(tmp: Path, n: int) -> Path:
    from gisjob_worker.demo import write_parcels

    src = tmp / "parcels.gpkg"
    write_parcels(src, n)
    return src


@pytest.mark.parametrize(
    ("where", "keep"),
    [
        ("population > 300 -- the big ones", lambda d: d.population > 300),
        (
            "landuse = 'forest' OR population > 900",
            lambda d: (d.landuse == "forest") | (d.population > 900),
        ),
    ],
)
def test_where_runs_inside_each_tiles_range(tmp_path: Path, where: str, keep: Any) -> None:
    """A trailing SQL comment (SQLite, GeoPackage's native filter language) used to eat the
    closing parenthesis (exit 1, retried 4 times); an OR must not leak out of the tile's
    range (each feature exactly once)."""
    import geopandas as gpd
    import pyogrio

    src = _parcels(tmp_path, 2_500)
    params = {"where": where, "columns": ["parcel_id", "population", "landuse"]}
    job = _filter_job(tmp_path, src, params, per_tile=1000)
    _, outputs = _run_all(job)
    got = gpd.pd.concat([gpd.read_parquet(p) for p in outputs], ignore_index=True)
    ref = pyogrio.read_dataframe(src, layer="parcels")
    ref = ref[keep(ref)]
    assert sorted(got.parcel_id) == sorted(ref.parcel_id)  # no duplicates, nothing missing


def test_unreadable_geometry_is_an_input_error_naming_the_file(tmp_path: Path) -> None:
    src = _parcels(tmp_path, 300)
    with sqlite3.connect(src) as db:  # a truncated polygon, as a broken export leaves it
        for fn in ("ST_IsEmpty", "ST_MinX", "ST_MinY", "ST_MaxX", "ST_MaxY"):
            db.create_function(fn, 1, lambda _g: 0)
        db.execute(
            "UPDATE parcels SET geom = x'47500001e6640000010300000001000000ffffff7f' "
            "WHERE fid = 123"
        )
    job = _filter_job(tmp_path, src, {"area": True}, per_tile=1000)
    run = run_worker(job, "f000000")
    assert run.code == 2, run.stderr[-2000:]
    assert run.record is not None
    assert run.record["outcome"] == "input"
    assert str(src) in run.record["error"]
    assert "unreadable geometry" in run.record["error"]
    assert not list((tmp_path / "out").rglob("*.parquet"))


def test_corrupt_file_is_an_input_error_naming_the_file(tmp_path: Path) -> None:
    """Pages of the feature table overwritten: planning reads the header and a sample fine,
    the FID pass meets the damage and says so (before: a retried read error mid-tile)."""
    src = _parcels(tmp_path, 20_000)
    size = src.stat().st_size
    with open(src, "r+b") as fh:
        fh.seek(size // 2)
        fh.write(np.random.default_rng(1).integers(0, 256, size // 4, dtype=np.uint8).tobytes())
    job = _filter_job(tmp_path, src, {"where": "population > 300"}, per_tile=5_000)
    run = run_worker(job, "f000002")
    assert run.code == 2, run.stderr[-2000:]
    assert run.record is not None
    assert run.record["outcome"] == "input"
    assert str(src) in run.record["error"]


def test_where_that_breaks_once_combined_fails_the_plan(tmp_path: Path) -> None:
    src = _parcels(tmp_path, 200)
    job = _filter_job(tmp_path, src, {"where": "population > 300 ORDER BY population"}, 100)
    run = run_cli("plan", str(job))
    assert run.code == 2, run.stdout + run.stderr
    err = run.stdout + run.stderr
    assert "spec.operation.params.where" in err
    assert "feature-id range" in err
    assert str(src) in err


# ------------------------------------------------------------------ 4. a where too slow to plan


def test_cartesian_where_fails_the_plan_within_the_limit(tmp_path: Path) -> None:
    import psutil

    src = _parcels(tmp_path, 3_000)
    where = "population > (SELECT count(*) FROM parcels a, parcels b, parcels c)"  # 2.7e10 rows
    job = _filter_job(tmp_path, src, {"where": where}, per_tile=1000)
    started = time.monotonic()
    run = run_cli("plan", str(job), env={"GISJOB_WHERE_PROBE_SECONDS": "2"}, timeout=120)
    took = time.monotonic() - started
    assert run.code == 2, run.stdout + run.stderr
    err = run.stdout + run.stderr
    assert "spec.operation.params.where" in err
    assert "within 2 s" in err
    assert took < 30, took
    time.sleep(0.5)
    left = [
        p.pid
        for p in psutil.process_iter(["cmdline"])
        if str(job) in " ".join(p.info["cmdline"] or [])
    ]
    assert not left, f"the probe outlived the planner: {left}"


# --------------------------------------------------------------------------- 5. GPKG merge


def test_merge_gpkg_parts_appends_every_part_atomically(tmp_path: Path) -> None:
    import geopandas as gpd
    import pyogrio

    from gisjob_worker.gpkgmerge import merge_gpkg_parts
    from gisjob_worker.outputs import stale_temporaries

    src = _parcels(tmp_path, 2_500)
    job = _filter_job(
        tmp_path, src, {"where": "population > 300", "area": True}, per_tile=1000, fmt="GPKG"
    )
    _, outputs = _run_all(job)
    out = tmp_path / "out"
    rel = [str(Path(p).relative_to(out)) for p in outputs]
    merged = merge_gpkg_parts(out, rel, job="vreal", batch_rows=100)  # many batches per part
    assert merged == str(out / "vreal.gpkg")
    assert [(n, t) for n, t in pyogrio.list_layers(merged)] == [("vreal", "Polygon")]
    got = pyogrio.read_dataframe(merged)
    parts = gpd.pd.concat([pyogrio.read_dataframe(p) for p in outputs], ignore_index=True)
    ref = pyogrio.read_dataframe(src, layer="parcels")
    ref = ref[ref.population > 300].reset_index(drop=True)
    assert len(got) == len(parts) == len(ref)
    np.testing.assert_array_equal(got.parcel_id.to_numpy(), ref.parcel_id.to_numpy())
    assert got.geometry.geom_equals_exact(ref.geometry, tolerance=0).all()
    np.testing.assert_allclose(got.area_km2.to_numpy(), parts.area_km2.to_numpy(), rtol=0)
    assert got.crs == ref.crs
    assert not stale_temporaries(out), "a temporary was left"
    # a re-run replaces the merged file (same content, nothing appended twice)
    merge_gpkg_parts(out, [str(out / r) for r in rel], job="vreal")
    assert len(pyogrio.read_dataframe(merged)) == len(ref)


def test_merge_gpkg_parts_of_empty_parts_still_has_the_layer(tmp_path: Path) -> None:
    import pyogrio

    from gisjob_worker.gpkgmerge import merge_gpkg_parts

    src = _parcels(tmp_path, 300)
    job = _filter_job(tmp_path, src, {"where": "population < 0"}, per_tile=1000, fmt="GPKG")
    _, outputs = _run_all(job)
    merged = merge_gpkg_parts(tmp_path / "out", outputs)
    assert Path(merged).name == "out.gpkg"  # job defaults to the output folder's name
    df = pyogrio.read_dataframe(merged)
    assert len(df) == 0
    assert {"parcel_id", "population"} <= set(df.columns)
    with pytest.raises(ValueError, match="no GeoPackage parts"):
        merge_gpkg_parts(tmp_path / "out", [])
