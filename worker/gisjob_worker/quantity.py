"""Kubernetes resource quantities for memory: parsed exactly, printed back in the same notation.

``Quantity`` is an ``int`` (bytes) that remembers how it was written, so ``1Gi`` stays ``1Gi``
when a spec is echoed and ``1.5G`` stays ``1.5G``.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Any

from pydantic import GetCoreSchemaHandler
from pydantic_core import core_schema

BINARY_SUFFIXES: dict[str, int] = {
    "Ki": 1024,
    "Mi": 1024**2,
    "Gi": 1024**3,
    "Ti": 1024**4,
    "Pi": 1024**5,
    "Ei": 1024**6,
}
DECIMAL_SUFFIXES: dict[str, int] = {
    "": 1,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "E": 10**18,
}
# What the CRD schema accepts too (kept in one place: the CRD generator reuses it).
QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$"
_QUANTITY_RE = re.compile(QUANTITY_PATTERN)


class Quantity(int):
    """A byte count written as a Kubernetes quantity."""

    text: str

    def __new__(cls, value: int | str) -> Quantity:
        if isinstance(value, Quantity):
            return value
        if isinstance(value, bool):
            raise ValueError("a quantity must be a number of bytes or a string like 512Mi")
        if isinstance(value, int):
            if value < 0:
                raise ValueError(f"must not be negative (got {value})")
            obj = super().__new__(cls, value)
            obj.text = str(value)
            return obj
        n = parse_quantity(value)
        obj = super().__new__(cls, n)
        obj.text = value.strip()
        return obj

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"Quantity({self.text!r})"

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: type[Any], handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(
            _validate_quantity,
            json_schema_input_schema=core_schema.union_schema(
                [core_schema.int_schema(), core_schema.str_schema(pattern=QUANTITY_PATTERN)]
            ),
            serialization=core_schema.plain_serializer_function_ser_schema(
                lambda q: q.text if isinstance(q, Quantity) else q
            ),
        )


def _validate_quantity(value: Any) -> Quantity:
    if isinstance(value, Quantity):
        return value
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int | str) and not isinstance(value, bool):
        return Quantity(value)
    raise ValueError(f"must be a quantity such as 512Mi, 1Gi or 1.5G (got {value!r})")


def parse_quantity(text: str) -> int:
    """Parse a memory quantity to bytes; fractional bytes are rounded up (as Kubernetes does)."""
    s = text.strip()
    if not _QUANTITY_RE.match(s):
        raise ValueError(f"must be a quantity such as 512Mi, 1Gi or 1.5G (got {text!r})")
    m = re.match(r"^([0-9.]+)(.*)$", s)
    assert m is not None
    number, suffix = m.group(1), m.group(2)
    factor = BINARY_SUFFIXES.get(suffix) or DECIMAL_SUFFIXES[suffix]
    try:
        value = Decimal(number) * factor
    except InvalidOperation as exc:  # pragma: no cover - the regex excludes this
        raise ValueError(f"not a number: {text!r}") from exc
    return int(value.to_integral_value(rounding="ROUND_CEILING"))


def format_bytes(n: int) -> str:
    """Human-readable binary size for tables and messages (e.g. ``178.4 MiB``)."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def to_quantity(n: int) -> Quantity:
    """The most readable exact quantity for a byte count (``Mi`` when it divides, else bytes)."""
    for suffix in ("Gi", "Mi", "Ki"):
        factor = BINARY_SUFFIXES[suffix]
        if n % factor == 0 and n >= factor:
            return Quantity(f"{n // factor}{suffix}")
    return Quantity(n)


def round_up_mib(n: int) -> int:
    """Round a byte count up to a whole MiB (memory requests are kept in MiB)."""
    mib = 1024**2
    return -(-n // mib) * mib
