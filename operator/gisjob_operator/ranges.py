"""Compressed index ranges (``"0-99,102,105-133"``), like a Job's ``completedIndexes``."""

from __future__ import annotations

from collections.abc import Iterable


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
