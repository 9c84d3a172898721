"""The GisJob document: defaults, one-line errors naming file and field, path resolution."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from gisjob_worker.errors import EXIT_INPUT, InputError, SpecError
from gisjob_worker.spec import GisJob, load_job, load_job_text, parse_job

JobDoc = Callable[..., dict[str, Any]]
WriteJob = Callable[..., Path]


def _error(path: Path) -> str:
    with pytest.raises(SpecError) as info:
        load_job(path)
    text = str(info.value)
    assert "\n" not in text, "a SpecError must be one line"
    assert isinstance(info.value, InputError)
    assert info.value.exit_code == EXIT_INPUT
    return text


# ------------------------------------------------------------------------------ valid


def test_minimal_job_gets_defaults(job_doc: JobDoc, write_job: WriteJob) -> None:
    job = load_job(write_job(job_doc()))
    spec = job.spec
    assert job.name == "unit-job"
    assert job.api_version == "gisjob.dev/v1alpha1"
    assert spec.resources.memory_headroom == 0.2
    assert int(spec.resources.gdal_cache_max) == 64 * 1024**2
    assert str(spec.resources.gdal_cache_max) == "64Mi"
    assert spec.resources.memory is None
    assert spec.resources.max_memory is None
    assert spec.resources.cpu == "1"
    assert spec.resources.cpu_count == 1.0
    assert spec.retry.backoff_limit == 3
    assert spec.retry.on_out_of_memory == ["shrinkChunks", "split", "grow"]
    assert spec.tiling.tile_size == 4096
    assert spec.tiling.features_per_tile == 100_000
    assert spec.parallelism == 4
    assert spec.suspend is False
    assert spec.output.format is None
    assert spec.operation.params == {}


def test_full_job_round_trips_through_to_document(job_doc: JobDoc, write_job: WriteJob) -> None:
    doc = job_doc(
        operation={"name": "ndvi", "params": {"nir": 8, "red": 4}},
        output={"uri": "/data/out/s2-ndvi", "format": "COG"},
        tiling={"tileSize": 2048},
        resources={
            "memory": "1Gi",
            "maxMemory": "8Gi",
            "memoryHeadroom": 0.15,
            "gdalCacheMax": "128Mi",
            "cpu": "500m",
        },
        parallelism=8,
        retry={"backoffLimit": 1, "onOutOfMemory": ["split"]},
        ttlSecondsAfterFinished=86400,
    )
    job = load_job(write_job(doc))
    out = job.to_document()
    assert out["spec"]["resources"] == {
        "memory": "1Gi",
        "maxMemory": "8Gi",
        "memoryHeadroom": 0.15,
        "gdalCacheMax": "128Mi",
        "cpu": "500m",
    }
    assert job.spec.resources.cpu_count == 0.5
    assert out["spec"]["tiling"] == {"tileSize": 2048, "featuresPerTile": 100_000}
    assert out["spec"]["retry"] == {"backoffLimit": 1, "onOutOfMemory": ["split"]}
    assert out["spec"]["ttlSecondsAfterFinished"] == 86400
    assert "status" not in out
    # the echoed document parses back to the same model
    again = parse_job(yaml.safe_load(yaml.safe_dump(out)), "again")
    assert again.spec == job.spec
    assert again.metadata == job.metadata
    assert again.to_document() == out


def test_cpu_given_as_number_becomes_text(job_doc: JobDoc) -> None:
    job = parse_job(job_doc(resources={"cpu": 2}), "job.yaml")
    assert job.spec.resources.cpu == "2"
    assert job.spec.resources.cpu_count == 2.0


def test_status_is_accepted_but_not_echoed(job_doc: JobDoc) -> None:
    doc = job_doc()
    doc["status"] = {"phase": "Running"}
    job = parse_job(doc, "job.yaml")
    assert job.status == {"phase": "Running"}
    assert "status" not in job.to_document()


def test_model_is_frozen(job_doc: JobDoc) -> None:
    job = parse_job(job_doc(), "job.yaml")
    with pytest.raises(ValueError):
        job.spec.parallelism = 9  # type: ignore[misc]


# -------------------------------------------------------------------- one-line errors


def test_headroom_out_of_range_exact_message(job_doc: JobDoc, write_job: WriteJob) -> None:
    path = write_job(job_doc(resources={"memoryHeadroom": 1.5}))
    assert _error(path) == (
        f"{path}: spec.resources.memoryHeadroom: must be between 0.05 and 1.0 (got 1.5)"
    )


def test_headroom_bounds_inclusive(job_doc: JobDoc) -> None:
    for ok in (0.05, 1.0):
        job = parse_job(job_doc(resources={"memoryHeadroom": ok}), "j")
        assert job.spec.resources.memory_headroom == ok
    with pytest.raises(SpecError, match=r"must be between 0\.05 and 1\.0 \(got 0\.04\)"):
        parse_job(job_doc(resources={"memoryHeadroom": 0.04}), "j")


def test_malformed_yaml_names_file_and_line(write_job: WriteJob) -> None:
    path = write_job(
        "apiVersion: gisjob.dev/v1alpha1\nkind: GisJob\nmetadata: {name: a}\nspec:\n"
        "  input: {uri: [unclosed\n  output: x\n"
    )
    msg = _error(path)
    assert msg.startswith(f"{path}: malformed YAML at line 6, column 9: ")


def test_malformed_yaml_indentation(write_job: WriteJob) -> None:
    path = write_job("a: 1\n b: 2\n")
    assert (
        _error(path)
        == f"{path}: malformed YAML at line 2, column 3: mapping values are not allowed here"
    )


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    assert _error(path) == f"{path}: job file not found"


def test_directory_instead_of_file(tmp_path: Path) -> None:
    assert _error(tmp_path) == f"{tmp_path}: is a directory, not a job file"


def test_undecodable_file(tmp_path: Path) -> None:
    path = tmp_path / "bin.yaml"
    path.write_bytes(b"\xff\xfe\x00")
    assert _error(path).startswith(f"{path}: cannot read job file: ")


@pytest.mark.parametrize("text", ["", "- 1\n- 2\n", "just text\n"])
def test_not_a_mapping(write_job: WriteJob, text: str) -> None:
    path = write_job(text)
    assert _error(path) == (f"{path}: not a GisJob document (expected a mapping at the top level)")


def _set(doc: dict[str, Any], dotted: str, value: Any) -> None:
    node = doc
    keys = dotted.split(".")
    for k in keys[:-1]:
        node = node.setdefault(k, {})
    node[keys[-1]] = value


def _drop(doc: dict[str, Any], dotted: str) -> None:
    node = doc
    keys = dotted.split(".")
    for k in keys[:-1]:
        node = node[k]
    del node[keys[-1]]


BAD_FIELDS: list[tuple[str, Any, str]] = [
    ("foo", 1, "foo: unknown field"),
    ("spec.foo", 1, "spec.foo: unknown field"),
    ("spec.resources.bogus", 1, "spec.resources.bogus: unknown field"),
    ("apiVersion", "v1", "apiVersion: Input should be 'gisjob.dev/v1alpha1' (got 'v1')"),
    ("apiVersion", "gisjob.dev/v1", "apiVersion: Input should be 'gisjob.dev/v1alpha1'"),
    ("kind", "Job", "kind: Input should be 'GisJob' (got 'Job')"),
    (
        "spec.input.glob",
        "*.tif",
        "spec.input: give exactly one of uri, uris or glob (got uri, glob)",
    ),
    (
        "spec.input.uris",
        ["a.tif"],
        "spec.input: give exactly one of uri, uris or glob (got uri, uris)",
    ),
    ("spec.input", {}, "spec.input: give exactly one of uri, uris or glob"),
    ("spec.input", {"layer": "x"}, "spec.input: give exactly one of uri, uris or glob"),
    ("spec.input.uris", [], "spec.input.uris: List should have at least 1 item"),
    (
        "spec.tiling.tileSize",
        0,
        "spec.tiling.tileSize: Input should be greater than or equal to 1 (got 0)",
    ),
    (
        "spec.tiling.tileSize",
        -5,
        "spec.tiling.tileSize: Input should be greater than or equal to 1 (got -5)",
    ),
    (
        "spec.tiling.featuresPerTile",
        -1,
        "spec.tiling.featuresPerTile: Input should be greater than or equal to 1 (got -1)",
    ),
    ("spec.parallelism", 0, "spec.parallelism: Input should be greater than or equal to 1 (got 0)"),
    ("spec.resources.memory", 0, "spec.resources.memory: must be greater than zero (got 0)"),
    ("spec.resources.memory", "0Mi", "spec.resources.memory: must be greater than zero (got 0Mi)"),
    ("spec.resources.maxMemory", 0, "spec.resources.maxMemory: must be greater than zero (got 0)"),
    (
        "spec.resources.gdalCacheMax",
        "64",
        "spec.resources.gdalCacheMax: must be at least 1Mi (got 64)",
    ),
    (
        "spec.retry.backoffLimit",
        -1,
        "spec.retry.backoffLimit: Input should be greater than or equal to 0 (got -1)",
    ),
    (
        "spec.retry.onOutOfMemory",
        ["split", "panic"],
        "spec.retry.onOutOfMemory[1]: Input should be 'shrinkChunks', 'split' or 'grow' "
        "(got 'panic')",
    ),
    ("spec.output.format", "PNG", "spec.output.format: Input should be"),
    ("metadata.name", "Bad_Name", "metadata.name: String should match pattern"),
    ("spec.resources.cpu", "abc", "spec.resources.cpu: String should match pattern"),
]


@pytest.mark.parametrize(("field", "value", "expected"), BAD_FIELDS, ids=[b[0] for b in BAD_FIELDS])
def test_bad_field_names_file_and_path(
    job_doc: JobDoc, write_job: WriteJob, field: str, value: Any, expected: str
) -> None:
    doc = job_doc()
    _set(doc, field, value)
    path = write_job(doc)
    msg = _error(path)
    assert msg.startswith(f"{path}: {expected}"), msg


@pytest.mark.parametrize(
    ("field", "expected"),
    [
        ("spec.output", "spec.output: required field is missing"),
        ("spec.operation", "spec.operation: required field is missing"),
        ("metadata", "metadata: required field is missing"),
        ("spec.output.uri", "spec.output.uri: required field is missing"),
        ("kind", "kind: required field is missing"),
    ],
)
def test_missing_field(job_doc: JobDoc, write_job: WriteJob, field: str, expected: str) -> None:
    doc = job_doc()
    _drop(doc, field)
    path = write_job(doc)
    assert _error(path) == f"{path}: {expected}"


def test_several_errors_are_counted(job_doc: JobDoc, write_job: WriteJob) -> None:
    doc = job_doc(parallelism=0, tiling={"tileSize": 0})
    path = write_job(doc)
    msg = _error(path)
    assert msg.startswith(f"{path}: spec.")
    assert msg.endswith("(and 1 more)")


def test_max_memory_below_memory(job_doc: JobDoc, write_job: WriteJob) -> None:
    path = write_job(job_doc(resources={"memory": "1Gi", "maxMemory": "512Mi"}))
    assert _error(path) == (
        f"{path}: spec.resources: maxMemory (512Mi) must not be below memory (1Gi)"
    )


def test_max_memory_equal_to_memory_is_fine(job_doc: JobDoc) -> None:
    job = parse_job(job_doc(resources={"memory": "1Gi", "maxMemory": "1024Mi"}), "j")
    assert int(job.spec.resources.max_memory or 0) == int(job.spec.resources.memory or 0)


def test_unknown_operation_lists_known(job_doc: JobDoc, write_job: WriteJob) -> None:
    path = write_job(job_doc(operation={"name": "blur"}))
    assert _error(path) == (
        f"{path}: spec.operation.name: unknown operation 'blur' "
        "(known: expression, filter, ndvi, scale)"
    )


@pytest.mark.parametrize(
    ("operation", "expected"),
    [
        (
            {"name": "ndvi", "params": {"red": 4}},
            "spec.operation.params.nir: required field is missing",
        ),
        (
            {"name": "ndvi", "params": {"nir": 0, "red": 4}},
            "spec.operation.params.nir: Input should be greater than or equal to 1 (got 0)",
        ),
        ({"name": "scale", "params": {"factor": 2}}, "spec.operation.params.factor: unknown field"),
        (
            {"name": "scale", "params": {"bands": [0]}},
            "spec.operation.params.bands: band indexes start at 1 (got 0)",
        ),
        (
            {"name": "scale", "params": {"bands": []}},
            "spec.operation.params.bands: must list at least one band",
        ),
        (
            {"name": "scale", "params": {"dtype": "int8"}},
            "spec.operation.params.dtype: Input should be",
        ),
        (
            {"name": "expression", "params": {"expr": "x + 1"}},
            "spec.operation.params.expr: name 'x' is not allowed",
        ),
        (
            {"name": "expression", "params": {"expr": "__import__('os')"}},
            "spec.operation.params.expr: function '__import__' is not allowed",
        ),
        (
            {"name": "filter", "params": {"where": "a = 1; DROP TABLE x"}},
            "spec.operation.params.where: must be a single non-empty attribute filter (no ';')",
        ),
        (
            {"name": "filter", "params": {"areaColumn": "area km2"}},
            "spec.operation.params.areaColumn: must be a plain column name (got 'area km2')",
        ),
    ],
)
def test_bad_params(
    job_doc: JobDoc, write_job: WriteJob, operation: dict[str, Any], expected: str
) -> None:
    path = write_job(job_doc(operation=operation, input={"uri": "/data/in.gpkg"}))
    msg = _error(path)
    assert msg.startswith(f"{path}: {expected}"), msg


def test_clip_bounds_error(job_doc: JobDoc, write_job: WriteJob) -> None:
    path = write_job(job_doc(operation={"name": "scale", "params": {"clip": [2, 1]}}))
    msg = _error(path)
    # a model-level check: either spelling of the path is fine, the message must be exact
    assert re.fullmatch(
        re.escape(f"{path}: spec.operation.params")
        + r"(\.|: )clip: lower bound above upper bound \(got \[2\.0, 1\.0\]\)",
        msg,
    ), msg


@pytest.mark.parametrize(
    "operation",
    [
        {"name": "scale", "params": {"dtype": "uint8", "nodata": 300}},
        {"name": "expression", "params": {"expr": "b1", "dtype": "uint8", "nodata": -1}},
    ],
)
def test_model_level_params_error_keeps_field_path_separator(
    job_doc: JobDoc, write_job: WriteJob, operation: dict[str, Any]
) -> None:
    path = write_job(job_doc(operation=operation))
    msg = _error(path)
    assert msg.startswith(f"{path}: spec.operation.params.nodata: nodata "), msg


def test_raster_format_for_vector_op(job_doc: JobDoc, write_job: WriteJob) -> None:
    path = write_job(
        job_doc(
            input={"uri": "/d/p.gpkg"},
            operation={"name": "filter"},
            output={"uri": "/o", "format": "COG"},
        )
    )
    assert _error(path) == (
        f"{path}: spec.output.format: COG is not a vector format (use GeoParquet or GPKG)"
    )


def test_vector_format_for_raster_op(job_doc: JobDoc, write_job: WriteJob) -> None:
    path = write_job(job_doc(output={"uri": "/o", "format": "GeoParquet"}))
    assert _error(path) == (
        f"{path}: spec.output.format: GeoParquet is not a raster format (use COG or GTiff)"
    )


def test_layer_on_raster_op(job_doc: JobDoc, write_job: WriteJob) -> None:
    path = write_job(job_doc(input={"uri": "/d/in.tif", "layer": "x"}))
    assert _error(path) == f"{path}: spec.input.layer: only vector operations read layers"


def test_vector_job_with_layer_and_format(job_doc: JobDoc) -> None:
    job = parse_job(
        job_doc(
            input={"uri": "/d/p.gpkg", "layer": "parcels"},
            operation={"name": "filter", "params": {"area": True, "areaColumn": "km2"}},
            output={"uri": "/o", "format": "GPKG"},
            tiling={"featuresPerTile": 5000},
        ),
        "j",
    )
    assert job.spec.input.layer == "parcels"
    assert job.spec.tiling.features_per_tile == 5000


# -------------------------------------------------------------------------- paths


def test_relative_paths_resolved_against_job_folder(
    job_doc: JobDoc, write_job: WriteJob, tmp_path: Path
) -> None:
    doc = job_doc(input={"uri": "data/in.tif"}, output={"uri": "../out"})
    path = write_job(doc, name="jobs/sub/job.yaml")
    job = load_job(path)
    assert job.spec.input.uri == str(tmp_path / "jobs" / "sub" / "data" / "in.tif")
    assert job.spec.output.uri == str(tmp_path / "jobs" / "out")


def test_relative_uris_and_glob_resolved(
    job_doc: JobDoc, write_job: WriteJob, tmp_path: Path
) -> None:
    job = load_job(write_job(job_doc(input={"uris": ["a.tif", "/abs/b.tif", "s3://bkt/c.tif"]})))
    assert job.spec.input.uris == [str(tmp_path / "a.tif"), "/abs/b.tif", "s3://bkt/c.tif"]
    job = load_job(write_job(job_doc(input={"glob": "tiles/*.tif"})))
    assert job.spec.input.glob == str(tmp_path / "tiles" / "*.tif")


@pytest.mark.parametrize("uri", ["/abs/in.tif", "s3://bucket/in.tif", "/vsicurl/http://h/x.tif"])
def test_absolute_and_remote_paths_unchanged(
    job_doc: JobDoc, write_job: WriteJob, uri: str
) -> None:
    job = load_job(write_job(job_doc(input={"uri": uri})))
    assert job.spec.input.uri == uri


def test_relative_path_with_cwd_elsewhere(
    job_doc: JobDoc, write_job: WriteJob, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_job(job_doc(input={"uri": "in.tif"}), name="d/job.yaml")
    other = tmp_path / "elsewhere"
    other.mkdir()
    monkeypatch.chdir(other)
    job = load_job(Path("..") / "d" / "job.yaml")
    assert job.spec.input.uri == str(path.parent / "in.tif")


def test_load_job_text_without_base_keeps_paths(job_doc: JobDoc) -> None:
    text = yaml.safe_dump(job_doc(input={"uri": "rel/in.tif"}))
    job = load_job_text(text, "inline")
    assert isinstance(job, GisJob)
    assert job.spec.input.uri == "rel/in.tif"


def test_parse_job_error_uses_source_name(job_doc: JobDoc) -> None:
    with pytest.raises(SpecError) as info:
        parse_job(job_doc(parallelism=0), "configmap:job")
    assert str(info.value).startswith("configmap:job: spec.parallelism: ")
