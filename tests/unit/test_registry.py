"""Operation registry: built-ins, third-party entry points, validation against the spec."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gisjob_worker import registry
from gisjob_worker.errors import SpecError
from gisjob_worker.operations.raster import EXPRESSION, NDVI, SCALE
from gisjob_worker.operations.vector import FILTER
from gisjob_worker.registry import (
    ENTRY_POINT_GROUP,
    RasterOperation,
    VectorOperation,
    get_operation,
    output_format,
)
from gisjob_worker.spec import parse_job

THIRD_PARTY_MODULE = """
from __future__ import annotations

import numpy as np

from gisjob_worker.plan import RasterOutput
from gisjob_worker.registry import Params, RasterOperation


class InvertParams(Params):
    band: int = 1
    maximum: float = 255.0


class Invert(RasterOperation[InvertParams]):
    name = "invert"
    params_model = InvertParams

    def bands(self, params, src):
        return [params.band]

    def output(self, params, src):
        return RasterOutput(1, "float32", -1.0)

    def temp_bytes_per_pixel(self, params, src):
        return 4

    def apply(self, params, data, valid, out):
        result = (params.maximum - data.astype(np.float32))[:1]
        result[0][~valid] = out.nodata
        return result


OP = Invert()
NOT_AN_OPERATION = {"name": "fake"}
SHADOW = Invert()
"""


def make_dist(
    root: Path, module: str, entry_points: dict[str, str], dist: str = "thirdparty_op"
) -> Path:
    """A module plus an installed-looking ``<dist>-0.1.dist-info`` in ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{module}.py").write_text(THIRD_PARTY_MODULE)
    info = root / f"{dist}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    lines = "".join(f"{name} = {target}\n" for name, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n{lines}")
    return root


@pytest.fixture
def third_party(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clean_registry: None
) -> Iterator[Callable[..., None]]:
    """Install a fake distribution on sys.path; the registry cache is cleared around it."""
    modules: list[str] = []

    def install(module: str, entry_points: dict[str, str], dist: str = "thirdparty_op") -> None:
        root = make_dist(tmp_path / dist, module, entry_points, dist)
        monkeypatch.syspath_prepend(str(root))
        modules.append(module)
        registry.registry.cache_clear()

    yield install
    for name in modules:
        sys.modules.pop(name, None)


def test_builtins_registered(clean_registry: None) -> None:
    ops = registry.registry()
    assert ops["scale"] is SCALE
    assert ops["ndvi"] is NDVI
    assert ops["expression"] is EXPRESSION
    assert ops["filter"] is FILTER
    assert {"scale", "ndvi", "expression", "filter"} <= set(ops)
    for name in ("scale", "ndvi", "expression"):
        assert isinstance(ops[name], RasterOperation)
        assert ops[name].kind == "raster"
        assert ops[name].name == name
        assert ops[name].per_band_valid  # built-ins take a (bands, h, w) mask
    assert isinstance(ops["filter"], VectorOperation)
    assert ops["filter"].kind == "vector"


def test_unknown_operation_lists_known(clean_registry: None) -> None:
    with pytest.raises(KeyError) as info:
        get_operation("blur")
    assert info.value.args[0] == (
        "unknown operation 'blur' (known: expression, filter, ndvi, scale)"
    )


def test_third_party_operation_found(third_party: Callable[..., None]) -> None:
    third_party("thirdparty_op_mod", {"invert": "thirdparty_op_mod:OP"})
    op = get_operation("invert")
    assert type(op).__name__ == "Invert"
    assert isinstance(op, RasterOperation)
    assert op.kind == "raster"
    assert op.name == "invert"
    # written for the first interface: the worker passes it one merged (h, w) mask
    assert op.per_band_valid is False
    # it is usable like a built-in: params model, bands, apply
    import numpy as np

    params = op.parse_params({"band": 2, "maximum": 100})
    src = registry.RasterSource("/x.tif", 3, ("uint8",) * 3, None, 4, 1)
    assert op.bands(params, src) == [2]
    out = op.output(params, src)
    result = op.apply(
        params, np.array([[[10, 20, 30, 40]]], np.uint8), np.array([[1, 1, 0, 1]], bool), out
    )
    np.testing.assert_array_equal(result, [[[90, 80, -1, 60]]])
    # built-ins are still there
    assert get_operation("scale") is SCALE


def test_third_party_operation_validates_in_a_job(
    third_party: Callable[..., None], job_doc: Callable[..., dict[str, Any]]
) -> None:
    third_party("thirdparty_op_mod2", {"invert": "thirdparty_op_mod2:OP"})
    job = parse_job(job_doc(operation={"name": "invert", "params": {"band": 3}}), "job.yaml")
    assert job.spec.operation.name == "invert"
    assert output_format(job) == "COG"
    with pytest.raises(SpecError) as info:
        parse_job(job_doc(operation={"name": "invert", "params": {"bandz": 3}}), "job.yaml")
    assert str(info.value) == "job.yaml: spec.operation.params.bandz: unknown field"
    with pytest.raises(SpecError, match=r"known: expression, filter, invert, ndvi, scale\)"):
        parse_job(job_doc(operation={"name": "nope"}), "job.yaml")


def test_entry_point_that_is_not_an_operation_raises_type_error(
    third_party: Callable[..., None],
) -> None:
    third_party("thirdparty_op_bad", {"fake": "thirdparty_op_bad:NOT_AN_OPERATION"})
    with pytest.raises(TypeError) as info:
        registry.registry()
    msg = str(info.value)
    assert "entry point fake = thirdparty_op_bad:NOT_AN_OPERATION" in msg
    assert "is not a RasterOperation or VectorOperation" in msg


def test_entry_point_cannot_shadow_a_builtin(third_party: Callable[..., None]) -> None:
    third_party("thirdparty_op_shadow", {"scale": "thirdparty_op_shadow:SHADOW"})
    assert get_operation("scale") is SCALE
    assert "thirdparty_op_shadow" not in sys.modules  # not even imported


def test_registry_cache_restored_after_third_party_tests(clean_registry: None) -> None:
    assert "invert" not in registry.registry()
    assert "fake" not in registry.registry()
    targets = [ep.value for ep in registry.entry_points(group=ENTRY_POINT_GROUP)]
    assert not [t for t in targets if t.startswith("thirdparty_op")]
    assert not [p for p in sys.path if "thirdparty_op" in p]


# ------------------------------------------------------------------ output formats


@pytest.mark.parametrize(
    ("operation", "fmt", "expected"),
    [
        ("scale", None, "COG"),
        ("ndvi", "GTiff", "GTiff"),
        ("filter", None, "GeoParquet"),
        ("filter", "GPKG", "GPKG"),
    ],
)
def test_output_format_defaults(
    job_doc: Callable[..., dict[str, Any]], operation: str, fmt: str | None, expected: str
) -> None:
    params = {"nir": 2, "red": 1} if operation == "ndvi" else {}
    output: dict[str, Any] = {"uri": "/o"}
    if fmt:
        output["format"] = fmt
    job = parse_job(job_doc(operation={"name": operation, "params": params}, output=output), "j")
    assert output_format(job) == expected


def test_params_base_forbids_unknown_keys() -> None:
    with pytest.raises(ValueError, match="Extra inputs"):
        NDVI.parse_params({"nir": 1, "red": 2, "green": 3})


def test_abstract_operation_cannot_be_instantiated() -> None:
    with pytest.raises(TypeError):
        RasterOperation()  # type: ignore[abstract]
