"""Memory quantities: parsed exactly, printed back in the same notation.

Two grammars with one meaning for every spelling they share:

- **Kubernetes quantities** (:func:`parse_quantity`, ``Quantity``, the spec's ``resources``
  and the CRD pattern): ``8G`` = 8·10^9 bytes, ``8Gi`` = 8·2^30, ``k M G T P E`` and
  ``Ki Mi Gi Ti Pi Ei``, case as Kubernetes writes them. A GisJob is also a Kubernetes
  manifest, so its quantities are what ``kubectl apply`` accepts.
- **Command-line memory** (:func:`parse_memory`, ``--memory``): the same, plus the spellings
  people type — a ``B`` after the unit (``8GB`` = ``8G``, ``8192MiB`` = ``8192Mi``, ``512B``),
  ``K``/``KB`` for ``k`` and a space before the unit (``8 GiB``). Lower-case units other than
  ``k`` are refused as ambiguous (``8g`` is 8·2^30 for Docker and Java, 8·10^9 in SI; ``m``
  is milli in Kubernetes) with the exact spellings to use instead.

``Quantity`` is an ``int`` (bytes) that remembers how it was written, so ``1Gi`` stays ``1Gi``
when a spec is echoed and ``1.5G`` stays ``1.5G``.
"""

from __future__ import annotations

import re
from decimal import Decimal
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


_NUMBER_UNIT_RE = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(\s*)([A-Za-z]*)$")
# what a user may have meant as the number: digits with dots, commas, an exponent or 0x
_LOOSE_NUMBER_RE = re.compile(r"^([0-9.,]*(?:[eExX][-+]?[0-9][0-9.]*)?)\s*(.*)$")
_POWERS = "KMGTPE"
EXAMPLES = "e.g. 8Gi, 512Mi or 1.5G"


def _factor(unit: str, *, loose: bool) -> int | None:
    """Bytes per ``unit``; ``loose`` also takes a trailing ``B`` and ``K`` for ``k``."""
    if loose:
        if unit == "B":
            return 1
        if unit.endswith("B"):
            unit = unit[:-1]
        if unit == "K":
            unit = "k"
    return BINARY_SUFFIXES.get(unit) or DECIMAL_SUFFIXES.get(unit)


def _power(base: int, letter: str) -> str:
    n = _POWERS.index(letter) + 1
    return str(base) if n == 1 else f"{base}^{n}"


def _both(number: str, letter: str) -> str:
    dec = "k" if letter == "K" else letter
    return (
        f"write {number}{dec} for {number}×{_power(1000, letter)} bytes or "
        f"{number}{letter}i for {number}×{_power(1024, letter)}"
    )


def _explain(text: str, *, loose: bool) -> str:
    """What in ``text`` was not understood and what to write instead (one line)."""
    s = text.strip()
    m = _LOOSE_NUMBER_RE.match(s)
    number, unit = (m.group(1), m.group(2)) if m else ("", s)
    if not s:
        why = f"empty: give a number and a unit, {EXAMPLES}"
    elif s.startswith("-"):
        why = "must not be negative"
    elif not number:
        why = f"no number: give a number and a unit, {EXAMPLES}"
    elif not re.fullmatch(r"[0-9]+(\.[0-9]+)?", number):
        why = f"{number!r} is not a plain decimal number (digits, an optional .fraction)"
    elif not loose and " " in s:
        why = f"no space between number and unit in a Kubernetes quantity ({EXAMPLES})"
    elif not loose and _factor(unit, loose=True) is not None:
        base = unit[:-1] if unit.endswith("B") else unit
        letter = base[:1].upper()
        why = "not a Kubernetes quantity: " + (
            f"write {number}"
            if not base
            else f"write {number}{base} for {number}×{_power(1024, letter)} bytes"
            if base.endswith("i")
            else _both(number, letter)
        )
    else:
        base = unit[:-1] if len(unit) > 1 and unit[-1] in "Bb" else unit
        letter = base[:1].upper()
        if letter and letter in _POWERS and base[1:] in ("", "i", "I"):
            if base[1:]:
                why = f"unit {unit!r} is written {letter}i" + (f" or {letter}iB" if loose else "")
            elif base == "m":
                why = "lower-case m is milli in Kubernetes: " + _both(number, "M")
            elif unit.endswith("b") and not base[:1].islower():
                why = f"{unit!r}: a lower-case b means bits: " + _both(number, letter)
            else:  # g, gb, kb, ...: lower case (the valid k and kB parsed already)
                why = (
                    f"lower-case {unit!r} is ambiguous (powers of 1000 in SI, of 1024 for "
                    "Docker and Java): " + _both(number, letter)
                )
        else:
            units = "k M G T P E (powers of 1000), Ki Mi Gi Ti Pi Ei (powers of 1024)"
            if loose:
                units += ", with or without a trailing B"
            why = f"unknown unit {unit!r} (use {units})"
    return f"{why} (got {text!r})"


def _parse(text: str, *, loose: bool) -> int:
    m = _NUMBER_UNIT_RE.match(text.strip())
    factor = None
    if m is not None and (loose or not m.group(2)):
        factor = _factor(m.group(3), loose=loose)
    if m is None or factor is None:
        raise ValueError(_explain(text, loose=loose))
    value = Decimal(m.group(1)) * factor
    return int(value.to_integral_value(rounding="ROUND_CEILING"))


def parse_quantity(text: str) -> int:
    """Parse a Kubernetes memory quantity to bytes; fractional bytes are rounded up (as
    Kubernetes does). The error says what was not understood."""
    return _parse(text, loose=False)


def parse_memory(text: str) -> int:
    """Parse a command-line memory size: a Kubernetes quantity or one of the spellings people
    type (``8GB``, ``8192MiB``, ``8 GiB``, ``512B``); see the module docstring."""
    return _parse(text, loose=True)


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
