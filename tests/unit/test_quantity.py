"""Kubernetes memory quantities: exact parsing and printing back in the same notation."""

from __future__ import annotations

import copy
import pickle
import re
from collections.abc import Callable
from typing import Any

import pytest

from gisjob_worker.errors import SpecError
from gisjob_worker.quantity import (
    QUANTITY_PATTERN,
    Quantity,
    format_bytes,
    parse_memory,
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
    ("bad", "why"),
    [
        ("1GB", "not a Kubernetes quantity: write 1G for 1×1000^3 bytes or 1Gi for 1×1024^3"),
        ("8192MiB", "not a Kubernetes quantity: write 8192Mi for 8192×1024^2 bytes"),
        ("512B", "not a Kubernetes quantity: write 512"),
        ("8K", "not a Kubernetes quantity: write 8k for 8×1000 bytes or 8Ki for 8×1024"),
        ("-1Gi", "must not be negative"),
        ("abc", "no number: give a number and a unit, e.g. 8Gi"),
        ("", "empty: give a number and a unit"),
        ("1.5.5G", "'1.5.5' is not a plain decimal number"),
        ("1e3", "'1e3' is not a plain decimal number"),
        ("0x10", "'0x10' is not a plain decimal number"),
        (".5Gi", "'.5' is not a plain decimal number"),
        ("1.Gi", "'1.' is not a plain decimal number"),
        ("1,5G", "'1,5' is not a plain decimal number"),
        ("1 Gi", "no space between number and unit in a Kubernetes quantity"),
        ("Gi", "no number"),
        ("1gi", "unit 'gi' is written Gi"),
        ("5m", "lower-case m is milli in Kubernetes: write 5M for 5×1000^2 bytes or 5Mi"),
        ("8g", "lower-case 'g' is ambiguous"),
        ("8Gb", "'Gb': a lower-case b means bits"),
        ("8XB", "unknown unit 'XB' (use k M G T P E (powers of 1000), Ki Mi Gi"),
    ],
)
def test_rejects_bad_text_saying_what_was_not_understood(bad: str, why: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_quantity(bad)
    assert str(info.value).startswith(why), str(info.value)
    assert str(info.value).endswith(f"(got {bad!r})")
    with pytest.raises(ValueError):
        Quantity(bad)


# ----------------------------------------------------------------- command-line spellings

KIB, MIB, GIB = 1024, 1024**2, 1024**3


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # every Kubernetes quantity means the same on the command line
        *EXACT,
        ("8G", 8 * 10**9),
        ("8Gi", 8 * GIB),
        # a trailing B: GB is G, MiB is Mi (exactly as Kubernetes' G and Mi)
        ("8GB", 8 * 10**9),
        ("8GiB", 8 * GIB),
        ("8192MiB", 8 * GIB),
        ("1.5GB", 1_500_000_000),
        ("500MB", 500_000_000),
        ("64KiB", 64 * KIB),
        ("2TB", 2 * 10**12),
        ("512B", 512),
        # K and KB for the kilo Kubernetes writes k
        ("8K", 8000),
        ("8KB", 8000),
        ("8kB", 8000),
        # a space before the unit
        ("8 GiB", 8 * GIB),
        ("8 G", 8 * 10**9),
        (" 4Gi ", 4 * GIB),
    ],
)
def test_parse_memory_accepts_what_people_type(text: str, expected: int) -> None:
    assert parse_memory(text) == expected


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        (
            "8gb",
            "lower-case 'gb' is ambiguous (powers of 1000 in SI, of 1024 for Docker and "
            "Java): write 8G for 8×1000^3 bytes or 8Gi for 8×1024^3",
        ),
        ("8g", "lower-case 'g' is ambiguous"),
        ("8m", "lower-case m is milli in Kubernetes: write 8M"),
        ("8mb", "lower-case m is milli"),
        ("8gi", "unit 'gi' is written Gi or GiB"),
        ("8Mib", "unit 'Mib' is written Mi or MiB"),
        ("8Gb", "'Gb': a lower-case b means bits: write 8G"),
        (
            "8XB",
            "unknown unit 'XB' (use k M G T P E (powers of 1000), Ki Mi Gi Ti Pi Ei "
            "(powers of 1024), with or without a trailing B)",
        ),
        ("1e9", "'1e9' is not a plain decimal number"),
        ("-8Gi", "must not be negative"),
        ("GiB", "no number"),
    ],
)
def test_parse_memory_says_what_was_not_understood(bad: str, why: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_memory(bad)
    assert str(info.value).startswith(why), str(info.value)
    assert str(info.value).endswith(f"(got {bad!r})")


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
    resources: dict[str, Any] = job.to_document()["spec"]["resources"]
    return resources


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
    ("value", "message"),
    [
        (
            "1GB",
            "not a Kubernetes quantity: write 1G for 1×1000^3 bytes or 1Gi for 1×1024^3 "
            "(got '1GB')",
        ),
        ("8GiB", "not a Kubernetes quantity: write 8Gi for 8×1024^3 bytes (got '8GiB')"),
        ("-1Gi", "must not be negative (got '-1Gi')"),
        ("abc", "no number: give a number and a unit, e.g. 8Gi, 512Mi or 1.5G (got 'abc')"),
        (True, "must be a quantity such as 512Mi, 1Gi or 1.5G (got True)"),
        (1.5, "must be a quantity such as 512Mi, 1Gi or 1.5G (got 1.5)"),
    ],
)
def test_spec_rejects_bad_quantities(
    job_doc: Callable[..., dict[str, Any]], value: Any, message: str
) -> None:
    """A GisJob is a Kubernetes manifest: its quantities are Kubernetes quantities (what the
    CRD pattern lets ``kubectl apply`` through), with the same diagnosis as ``--memory``."""
    with pytest.raises(SpecError) as info:
        parse_job(job_doc(resources={"memory": value}), "job.yaml")
    assert str(info.value) == f"job.yaml: spec.resources.memory: {message}"


@pytest.mark.parametrize("text", ["8G", "8Gi", "1.5G", "512Mi", "100k", "1000"])
def test_cli_and_spec_agree_on_every_kubernetes_quantity(text: str) -> None:
    """Same meaning for every spelling both accept; the spec's set is the CRD's pattern."""
    assert parse_memory(text) == parse_quantity(text) == int(Quantity(text))
    assert re.match(QUANTITY_PATTERN, text)


@pytest.mark.parametrize("text", ["8GB", "8GiB", "8 Gi", "8K", "512B"])
def test_cli_only_spellings_stay_outside_the_crd_pattern(text: str) -> None:
    assert parse_memory(text) > 0
    assert not re.match(QUANTITY_PATTERN, text)
    with pytest.raises(ValueError, match="Kubernetes quantity"):
        parse_quantity(text)
