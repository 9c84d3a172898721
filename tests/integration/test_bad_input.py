"""Bad input: a one-line error naming the file or field, exit 2, nothing written."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from worker_helpers import job_doc, make_raster, run_cli, write_job

pytestmark = pytest.mark.slow


def _ndvi() -> dict[str, Any]:
    return {"name": "ndvi", "params": {"nir": 2, "red": 1}}


def _case(tmp: Path, name: str) -> tuple[Path, str]:
    """(job file, text the error must contain) for each kind of bad input."""
    good = make_raster(tmp / "good.tif", 256, 256, count=2)
    out = {"uri": str(tmp / "out"), "format": "GTiff"}

    def job(input_: dict[str, Any], op: dict[str, Any], **spec: Any) -> Path:
        return write_job(tmp / "job.yaml", job_doc("bad", input_, op, out, **spec))

    if name == "missing-file":
        return job({"uri": str(tmp / "nope.tif")}, _ndvi()), "nope.tif: input file not found"
    if name == "corrupt-tiff":
        data = good.read_bytes()
        (tmp / "corrupt.tif").write_bytes(data[:200])
        return job({"uri": str(tmp / "corrupt.tif")}, _ndvi()), "corrupt.tif"
    if name == "text-file":
        (tmp / "notes.tif").write_text("this is not a raster\n")
        return job({"uri": str(tmp / "notes.tif")}, _ndvi()), "notes.tif: not a raster"
    if name == "unknown-operation":
        return job({"uri": str(good)}, {"name": "blur"}), "spec.operation.name: unknown operation"
    if name == "bad-params":
        return (
            job({"uri": str(good)}, {"name": "ndvi", "params": {"nir": "x", "red": 1}}),
            "spec.operation.params.nir",
        )
    if name == "band-out-of-range":
        return (
            job({"uri": str(good)}, {"name": "ndvi", "params": {"nir": 9, "red": 1}}),
            "band 9 is out of range (the dataset has 2 bands)",
        )
    if name == "unsafe-import":
        return (
            job({"uri": str(good)}, {"name": "expression", "params": {"expr": "__import__('os')"}}),
            "spec.operation.params.expr: function '__import__' is not allowed",
        )
    if name == "unsafe-attribute":
        return (
            job({"uri": str(good)}, {"name": "expression", "params": {"expr": "b1.__class__"}}),
            "spec.operation.params.expr: attribute access",
        )
    if name == "zero-tile-size":
        return (job({"uri": str(good)}, _ndvi(), tiling={"tileSize": 0}), "spec.tiling.tileSize")
    if name == "negative-memory":
        return (
            job({"uri": str(good)}, _ndvi(), resources={"memory": "-1Gi"}),
            "spec.resources.memory",
        )
    if name == "zero-parallelism":
        return job({"uri": str(good)}, _ndvi(), parallelism=0), "spec.parallelism"
    if name == "headroom":
        return (
            job({"uri": str(good)}, _ndvi(), resources={"memoryHeadroom": 1.5}),
            "spec.resources.memoryHeadroom: must be between 0.05 and 1.0 (got 1.5)",
        )
    if name == "malformed-yaml":
        p = tmp / "job.yaml"
        p.write_text("apiVersion: gisjob.dev/v1alpha1\nkind: GisJob\nspec: [unclosed\n")
        return p, "malformed YAML at line"
    raise AssertionError(name)


CASES = [
    "missing-file",
    "corrupt-tiff",
    "text-file",
    "unknown-operation",
    "bad-params",
    "band-out-of-range",
    "unsafe-import",
    "unsafe-attribute",
    "zero-tile-size",
    "negative-memory",
    "zero-parallelism",
    "headroom",
    "malformed-yaml",
]


@pytest.mark.parametrize("command", ["worker", "plan"])
@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_exit_2_nothing_written(
    tmp_path: Path, case: str, command: str
) -> None:
    job, expected = _case(tmp_path, case)
    if command == "worker":
        run = run_cli("worker", "--job", str(job), "--tile", "r0000c0000")
    else:
        run = run_cli("plan", str(job))
    assert run.code == 2, (run.code, run.stderr)
    lines = [line for line in run.stderr.splitlines() if line.startswith("gisjob: error:")]
    assert len(lines) == 1, run.stderr
    assert expected in lines[0], lines[0]
    needs_file = case not in ("unknown-operation",)
    if needs_file or "job.yaml" in lines[0]:
        assert str(job.name) in lines[0] or ".tif" in lines[0], lines[0]
    # nothing written but, for a worker, its ledger record of the failed attempt (whole)
    written = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    records = [p for p in written if p.parent.parent.name == "ledger" and p.suffix == ".json"]
    assert written == records, written
    assert all(json.loads(p.read_text())["outcome"] == "input" for p in records)
    if command == "worker":
        assert run.record is not None and run.record["outcome"] == "input"
    if case == "unsafe-import":
        assert "Traceback" not in run.stderr


def test_unknown_tile_id_is_an_input_error(tmp_path: Path) -> None:
    good = make_raster(tmp_path / "good.tif", 256, 256, count=2)
    job = write_job(
        tmp_path / "job.yaml",
        job_doc("t", {"uri": str(good)}, _ndvi(), {"uri": str(tmp_path / "out")}),
    )
    for tile in ("r0009c0009", "garbage"):
        run = run_cli("worker", "--job", str(job), "--tile", tile)
        assert run.code == 2, run.stderr
        assert tile in run.stderr
