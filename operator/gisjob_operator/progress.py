"""Completion state persisted in a GisJob's status (pure): :class:`Progress` and the bounded
encoding of the sub-tiles of splits in progress (grouped per planned tile)."""

from __future__ import annotations

import base64
import binascii
import re
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from gisjob_worker.ranges import decode

# ------------------------------------------------------------------ sub-tile sets in status
# While splits are open, status carries which sub-tiles are split, succeeded or failed. As
# lists of ids they cost ~60 bytes per split tile, and a job whose tiles all run out of
# memory has about two splits open per pod of parallelism: 2,000 pods made 120 KiB. They are
# written grouped by planned tile instead, one state letter and the split path per entry:
#
#     r0003c0007:sdq0dq1fq2,r0003c0008:ssq1dq1q0      (s split, d succeeded, f failed)
#
# is r0003c0007 split, its -q0 and -q1 succeeded, -q2 failed; r0003c0008 and its -q1 split,
# r0003c0008-q1-q0 succeeded. Long texts are zlib-compressed (``z:`` + base64), as tile
# index sets are: about 5-7 bytes per open split, so status stays small at any parallelism
# a cluster runs. Plan-free (the ids are spelled out), and the old list form still reads.

SUBTILES_PLAIN_LIMIT = 1024  # characters of group text before the compressed form is tried
SUBTILES_ZIP_PREFIX = "z:"
_SPLIT_PART = re.compile(r"-([qh][0-9])$")
_GROUP_ITEMS = re.compile(r"(?:[sdf](?:[qh][0-9])*)*")
_ITEM = re.compile(r"([sdf])((?:[qh][0-9])*)")
_STATES = (("s", "split"), ("d", "sub_done"), ("f", "sub_failed"))


def _root_and_path(tile_id: str) -> tuple[str, str]:
    """``r0001c0002-q3-q0`` → (``r0001c0002``, ``q3q0``)."""
    parts: list[str] = []
    head = tile_id
    while (m := _SPLIT_PART.search(head)) is not None:
        parts.append(m.group(1))
        head = head[: m.start()]
    return head, "".join(reversed(parts))


def encode_subtiles(split: Iterable[str], done: Iterable[str], failed: Iterable[str]) -> str:
    """The status form of the open splits' sub-tile sets ("" when there are none)."""
    groups: dict[str, list[tuple[str, str]]] = {}
    for (letter, _), ids in zip(_STATES, (split, done, failed), strict=True):
        for tile_id in ids:
            root, path = _root_and_path(tile_id)
            if not root or any(c in root for c in ":, "):
                raise ValueError(f"not a tile id for status: {tile_id!r}")
            groups.setdefault(root, []).append((path, letter))
    text = ",".join(
        root + ":" + "".join(letter + path for path, letter in sorted(items))
        for root, items in sorted(groups.items())
    )
    if len(text) <= SUBTILES_PLAIN_LIMIT:
        return text
    packed = SUBTILES_ZIP_PREFIX + base64.b64encode(zlib.compress(text.encode(), 9)).decode()
    return packed if len(packed) < len(text) else text


def decode_subtiles(value: Any) -> dict[str, set[str]]:
    """Inverse of :func:`encode_subtiles` (also the older ``{split, succeeded, failed}``
    lists): the ``split``, ``sub_done`` and ``sub_failed`` sets. Malformed text raises
    ``ValueError``."""
    out: dict[str, set[str]] = {attr: set() for _, attr in _STATES}
    if not value:
        return out
    if isinstance(value, dict):  # written by an operator before the grouped form
        out["split"] = {str(x) for x in value.get("split") or []}
        out["sub_done"] = {str(x) for x in value.get("succeeded") or []}
        out["sub_failed"] = {str(x) for x in value.get("failed") or []}
        return out
    text = str(value)
    if text.startswith(SUBTILES_ZIP_PREFIX):
        try:
            raw = base64.b64decode(text[len(SUBTILES_ZIP_PREFIX) :], validate=True)
            text = zlib.decompress(raw).decode()
        except (binascii.Error, zlib.error, UnicodeDecodeError) as exc:
            raise ValueError(f"bad compressed subtiles: {exc}") from None
    attr = dict(_STATES)
    for group in text.split(","):
        root, sep, items = group.partition(":")
        if not sep or not root or _GROUP_ITEMS.fullmatch(items) is None:
            raise ValueError(f"bad subtiles group {group[:60]!r}")
        for letter, path in _ITEM.findall(items):
            out[attr[letter]].add(
                root + "".join(f"-{path[i : i + 2]}" for i in range(0, len(path), 2))
            )
    return out


@dataclass
class Progress:
    """Completion state persisted in status."""

    completed: set[int] = field(default_factory=set)  # planned tile indexes
    failed: set[int] = field(default_factory=set)
    sub_done: set[str] = field(default_factory=set)  # sub-tile ids, while splits are open
    sub_failed: set[str] = field(default_factory=set)
    split: set[str] = field(default_factory=set)  # tile ids (planned or sub) that were split
    memory_retries: int = 0
    other_retries: int = 0
    disruptions: int = 0  # relaunches after disruptions: neither memory nor other retries
    peak_observed: int = 0

    @classmethod
    def from_status(cls, status: dict[str, Any] | None) -> Progress:
        s = status or {}
        sub = decode_subtiles(s.get("subtiles"))
        retries = s.get("retries") or {}
        return cls(
            completed=decode(s.get("completedTiles") or ""),
            failed=decode(s.get("failedTiles") or ""),
            sub_done=sub["sub_done"],
            sub_failed=sub["sub_failed"],
            split=sub["split"],
            memory_retries=int(retries.get("memory") or 0),
            other_retries=int(retries.get("other") or 0),
            disruptions=int(retries.get("disruptions") or 0),
            peak_observed=int((s.get("memory") or {}).get("peakObservedBytes") or 0),
        )

    def key(self) -> tuple[Any, ...]:
        return (
            frozenset(self.completed),
            frozenset(self.failed),
            frozenset(self.sub_done),
            frozenset(self.sub_failed),
            frozenset(self.split),
            self.memory_retries,
            self.other_retries,
            self.disruptions,
            self.peak_observed,
        )
