"""Tile index sets in status: compressed ranges (``"0-99,102,105-133"``, like a Job's
``completedIndexes``), or — when scattered outcomes would make the ranges long — a
compressed bitmap ``"z:<base64 of zlib(bitmap)>"`` (bit ``i % 8`` of byte ``i // 8`` is
tile ``i``), so status stays bounded however the outcomes are spread.
"""

from __future__ import annotations

import base64
import binascii
import zlib
from collections.abc import Iterable

RANGES_LIMIT = 4096  # characters of range text before the bitmap form is considered
BITMAP_PREFIX = "z:"


def compress(indexes: Iterable[int]) -> str:
    items = sorted(set(indexes))
    if not items:
        return ""
    parts: list[str] = []
    start = prev = items[0]
    for i in items[1:]:
        if i == prev + 1:
            prev = i
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        start = prev = i
    parts.append(str(start) if start == prev else f"{start}-{prev}")
    return ",".join(parts)


def expand(text: str) -> set[int]:
    out: set[int] = set()
    for part in filter(None, (p.strip() for p in text.split(","))):
        lo, sep, hi = part.partition("-")
        if sep:
            a, b = int(lo), int(hi)
            if b < a:
                raise ValueError(f"bad range {part!r}")
            out.update(range(a, b + 1))
        else:
            out.add(int(lo))
    return out


def to_bitmap(indexes: Iterable[int]) -> str:
    items = set(indexes)
    if any(i < 0 for i in items):
        raise ValueError("tile indexes are non-negative")
    bits = bytearray((max(items) // 8 + 1) if items else 0)
    for i in items:
        bits[i >> 3] |= 1 << (i & 7)
    return BITMAP_PREFIX + base64.b64encode(zlib.compress(bytes(bits), 9)).decode("ascii")


def from_bitmap(text: str) -> set[int]:
    if not text.startswith(BITMAP_PREFIX):
        raise ValueError(f"not a bitmap: {text[:20]!r}")
    try:
        bits = zlib.decompress(base64.b64decode(text[len(BITMAP_PREFIX) :], validate=True))
    except (binascii.Error, zlib.error) as exc:
        raise ValueError(f"bad bitmap: {exc}") from None
    return {b * 8 + k for b, byte in enumerate(bits) if byte for k in range(8) if byte >> k & 1}


def encode(indexes: Iterable[int]) -> str:
    """The status form of an index set: ranges while short, else the smaller of the two."""
    items = set(indexes)
    text = compress(items)
    if len(text) <= RANGES_LIMIT:
        return text
    bitmap = to_bitmap(items)
    return bitmap if len(bitmap) < len(text) else text


def decode(text: str) -> set[int]:
    """Inverse of :func:`encode` (either form); malformed text raises ``ValueError``."""
    return from_bitmap(text) if text.startswith(BITMAP_PREFIX) else expand(text)
