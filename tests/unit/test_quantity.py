"""Kubernetes memory quantities: exact parsing and printing back in the same notation."""

from __future__ import annotations

import copy
import pickle
from collections.abc import Callable
from typing import Any

import pytest

from gisjob_worker.errors import SpecError
from gisjob_worker.quantity import (
    Quantity,
    format_bytes,
    parse_quantity,
    round_up_mib,
    to_quantity,
)
from gisjob_worker.spec import parse_job

EXACT = [
    ("1Gi", 1024**3),
    ("512Mi", 512 * 1024**2),
    ("500M", 500_000_000),
    ("1.5G", 1_500_000_000),
    ("1000", 1000),
    ("64Ki", 65536),
    ("2k", 2000),
    ("1Ti", 1024**4),
    ("0.5Ki", 512),
    ("0", 0),
]


@pytest.mark.parametrize(("text", "expected"), EXACT)
def test_parse_exact(text: str, expected: int) -> None:
    assert parse_quantity(text) == expected
    q = Quantity(text)
    assert int(q) == expected
    assert q == expected
    assert str(q) == text
    assert repr(q) == f"Quantity({text!r})"


@pytest.mark.parametrize(
    ("text", "expected"),
    [("0.1Ki", 103), ("0.001Ki", 2), ("1.0000001M", 1_000_001), ("0.5", 1), ("1.5", 2)],
)
def test_fractional_bytes_round_up(text: str, expected: int) -> None:
    assert parse_quantity(text) == expected
    assert str(Quantity(text)) == text


def test_plain_int_bytes() -> None:
    q = Quantity(1073741824)
    assert int(q) == 1024**3
    assert str(q) == "1073741824"


def test_whitespace_is_stripped_from_the_text() -> None:
    q = Quantity("  2Gi ")
    assert int(q) == 2 * 1024**3
    assert str(q) == "2Gi"


def test_quantity_of_quantity_is_identity() -> None:
    q = Quantity("1.5G")
    assert Quantity(q) is q


@pytest.mark.parametrize("text", ["1Gi", "1.5G", "0.1Ki", "123"])
def test_copy_and_pickle_keep_notation(text: str) -> None:
    q = Quantity(text)
    for clone in (copy.copy(q), copy.deepcopy(q), pickle.loads(pickle.dumps(q))):
        assert int(clone) == int(q)
        assert str(clone) == text


@pytest.mark.parametrize(
    "bad",
    ["1GB", "-1Gi", "abc", "", "1.5.5G", "1e3", "1 Gi", "Gi", ".5Gi", "1.Gi", "1gi", "5m", "0x10"],
)
def test_rejects_bad_text(bad: str) -> None:
    with pytest.raises(ValueError, match="quantity such as 512Mi"):
        parse_quantity(bad)
    with pytest.raises(ValueError):
        Quantity(bad)


@pytest.mark.parametrize("bad", [True, False])
def test_rejects_booleans(bad: bool) -> None:
    with pytest.raises(ValueError, match="number of bytes"):
        Quantity(bad)


def test_rejects_negative_int() -> None:
    with pytest.raises(ValueError, match=r"must not be negative \(got -1\)"):
        Quantity(-1)


def test_to_quantity_prefers_the_largest_exact_binary_suffix() -> None:
    assert str(to_quantity(3 * 1024**3)) == "3Gi"
    assert str(to_quantity(1536 * 1024**2)) == "1536Mi"
    assert str(to_quantity(3 * 1024)) == "3Ki"
    assert str(to_quantity(1000)) == "1000"
    assert str(to_quantity(0)) == "0"
    for n in (1, 1023, 1024, 5 * 1024**2 + 1, 7 * 1024**3):
        assert int(to_quantity(n)) == n


def test_round_up_mib() -> None:
    mib = 1024**2
    assert round_up_mib(0) == 0
    assert round_up_mib(1) == mib
    assert round_up_mib(mib) == mib
    assert round_up_mib(mib + 1) == 2 * mib


def test_format_bytes() -> None:
    assert format_bytes(512) == "512 B"
    assert format_bytes(1536) == "1.5 KiB"
    assert format_bytes(178 * 1024**2 + 400 * 1024) == "178.4 MiB"
    assert format_bytes(3 * 1024**3) == "3.0 GiB"
    assert format_bytes(2048 * 1024**4) == "2048.0 TiB"


# ------------------------------------------------------------------ through the spec model


def _resources(job_doc: Callable[..., dict[str, Any]], **res: Any) -> dict[str, Any]:
    job = parse_job(job_doc(resources=res), "job.yaml")
    return job.to_document()["spec"]["resources"]


@pytest.mark.parametrize("text", ["1Gi", "512Mi", "500M", "1.5G", "0.5Ki", "1073741824"])
def test_spec_echoes_quantities_as_written(
    job_doc: Callable[..., dict[str, Any]], text: str
) -> None:
    res = _resources(job_doc, memory=text, maxMemory=text, gdalCacheMax="128Mi")
    assert res["memory"] == text
    assert res["maxMemory"] == text
    assert res["gdalCacheMax"] == "128Mi"


def test_spec_quantity_values_are_exact(job_doc: Callable[..., dict[str, Any]]) -> None:
    job = parse_job(job_doc(resources={"memory": "1.5G", "maxMemory": 2147483648}), "job.yaml")
    res = job.spec.resources
    assert isinstance(res.memory, Quantity)
    assert int(res.memory) == 1_500_000_000
    assert int(res.max_memory or 0) == 2 * 1024**3
    # a plain int keeps its digits
    assert str(job.to_document()["spec"]["resources"]["maxMemory"]) == "2147483648"
    assert int(res.gdal_cache_max) == 64 * 1024**2
    assert job.to_document()["spec"]["resources"]["gdalCacheMax"] == "64Mi"


def test_spec_accepts_integral_float(job_doc: Callable[..., dict[str, Any]]) -> None:
    job = parse_job(job_doc(resources={"memory": 1048576.0}), "job.yaml")
    assert int(job.spec.resources.memory or 0) == 1048576


@pytest.mark.parametrize(
    ("value", "shown"),
    [("1GB", "'1GB'"), ("-1Gi", "'-1Gi'"), ("abc", "'abc'"), (True, "True"), (1.5, "1.5")],
)
def test_spec_rejects_bad_quantities(
    job_doc: Callable[..., dict[str, Any]], value: Any, shown: str
) -> None:
    with pytest.raises(SpecError) as info:
        parse_job(job_doc(resources={"memory": value}), "job.yaml")
    assert str(info.value) == (
        "job.yaml: spec.resources.memory: must be a quantity such as 512Mi, 1Gi or 1.5G "
        f"(got {shown})"
    )
