"""Compressed index ranges (``"0-99,102,105-133"``): the form completedTiles takes in status.

``compress`` and ``expand`` are inverse on any set of non-negative indexes; the text is
canonical (sorted, maximal runs, no duplicates); malformed text raises ``ValueError``
rather than silently dropping or inventing tiles.
"""

from __future__ import annotations

import itertools
import random

import pytest

from gisjob_worker.ranges import (
    BITMAP_PREFIX,
    RANGES_LIMIT,
    compress,
    decode,
    encode,
    expand,
    from_bitmap,
    to_bitmap,
)

# ----------------------------------------------------------------------------- compress


@pytest.mark.parametrize(
    ("indexes", "text"),
    [
        ([], ""),
        (set(), ""),
        ([0], "0"),
        ([7], "7"),
        ([0, 1], "0-1"),
        ([1, 0], "0-1"),
        ([0, 2], "0,2"),
        ([0, 1, 2, 3], "0-3"),
        ([5, 3, 4, 9, 10, 12], "3-5,9-10,12"),
        ([0, 0, 0, 1, 1], "0-1"),  # duplicates collapse
        (range(100), "0-99"),
        ([*range(100), 102, *range(105, 134)], "0-99,102,105-133"),  # DESIGN §2's example
        ([99_999], "99999"),
    ],
)
def test_compress_known_forms(indexes: list[int], text: str) -> None:
    assert compress(indexes) == text


def test_compress_accepts_any_iterable() -> None:
    assert compress(iter([3, 1, 2])) == "1-3"
    assert compress(frozenset({4, 6})) == "4,6"
    assert compress(i for i in (10, 11, 13)) == "10-11,13"


def test_adjacent_runs_merge_into_one_range() -> None:
    """Two runs that touch (…-4 and 5-…) are one range, never "0-4,5-9"."""
    assert compress([*range(5), *range(5, 10)]) == "0-9"
    assert compress([0, 1, 2, 4, 3]) == "0-4"
    # filling the single hole of "0-4,6-9" gives one range
    assert compress(expand("0-4,6-9") | {5}) == "0-9"


def test_compress_never_emits_a_redundant_part() -> None:
    rng = random.Random(7)
    for _ in range(200):
        items = {rng.randrange(300) for _ in range(rng.randrange(1, 120))}
        parts = compress(items).split(",")
        bounds = []
        for part in parts:
            lo, _, hi = part.partition("-")
            a, b = int(lo), int(hi or lo)
            assert a <= b
            if a == b:
                assert "-" not in part  # a single index is written alone, not "5-5"
            bounds.append((a, b))
        # sorted, disjoint and not adjacent (otherwise they would have merged)
        for (_, b1), (a2, _) in itertools.pairwise(bounds):
            assert a2 > b1 + 1


# ------------------------------------------------------------------------------- expand


@pytest.mark.parametrize(
    ("text", "indexes"),
    [
        ("", set()),
        ("   ", set()),
        ("0", {0}),
        ("0-0", {0}),
        ("3-5", {3, 4, 5}),
        ("0-2,4", {0, 1, 2, 4}),
        (" 1 , 3-4 ", {1, 3, 4}),  # whitespace around parts is tolerated
        ("1,,2", {1, 2}),  # empty parts are skipped
        ("2,1,1", {1, 2}),  # not canonical but unambiguous
        ("0-3,2-5", {0, 1, 2, 3, 4, 5}),  # overlapping ranges union
    ],
)
def test_expand_known_forms(text: str, indexes: set[int]) -> None:
    assert expand(text) == indexes


@pytest.mark.parametrize(
    "text",
    [
        "a",
        "1-b",
        "x-3",
        "1.5",
        "5-3",  # reversed range
        "1-2-3",
        "-",
        "1-",
        "-2",  # a negative index is not a tile
        "0-99,102,10x",
    ],
)
def test_expand_rejects_malformed_text(text: str) -> None:
    with pytest.raises(ValueError):
        expand(text)


# ---------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("seed", range(20))
def test_round_trip_random_sets(seed: int) -> None:
    rng = random.Random(seed)
    universe = rng.choice([10, 100, 1_000, 100_000])
    density = rng.random()
    items = {i for i in range(min(universe, 5_000)) if rng.random() < density}
    items |= {rng.randrange(universe) for _ in range(rng.randrange(50))}
    text = compress(items)
    assert expand(text) == items
    assert compress(expand(text)) == text  # canonical: a fixed point


def test_round_trip_single_and_empty() -> None:
    assert expand(compress([])) == set()
    assert compress(expand("")) == ""
    for i in (0, 1, 42, 99_999):
        assert expand(compress([i])) == {i}


def test_round_trip_large_contiguous_prefix_is_tiny() -> None:
    """100,000 completed tiles in plan order are one short range."""
    text = compress(range(100_000))
    assert text == "0-99999"
    assert expand(text) == set(range(100_000))


def test_round_trip_alternating_worst_case() -> None:
    """Every other index: no run merges; the text stays exact (and sized ~ n·digits)."""
    items = set(range(0, 2_000, 2))
    text = compress(items)
    assert text.count(",") == len(items) - 1
    assert expand(text) == items


# ------------------------------------------------------------------- encode / decode (status)


def test_encode_keeps_readable_ranges_while_short() -> None:
    assert encode(range(100_000)) == "0-99999"
    assert encode([*range(100), 102, *range(105, 134)]) == "0-99,102,105-133"
    assert encode([]) == ""
    text = encode(range(0, 2 * 700, 2))  # 700 singletons, ~3.4 KB of text: under the limit
    assert not text.startswith(BITMAP_PREFIX)
    assert len(text) <= RANGES_LIMIT


def test_encode_switches_to_a_bitmap_when_ranges_grow_long() -> None:
    items = set(range(1, 100_000, 2))
    text = encode(items)
    assert text.startswith(BITMAP_PREFIX)
    assert len(text) < len(compress(items)) // 20
    assert decode(text) == items


@pytest.mark.parametrize("seed", range(5))
def test_encode_decode_round_trip(seed: int) -> None:
    rng = random.Random(seed)
    n = rng.choice([10, 1_000, 50_000])
    density = rng.choice([0.01, 0.3, 0.5, 0.99])
    items = {i for i in range(n) if rng.random() < density}
    assert decode(encode(items)) == items
    assert from_bitmap(to_bitmap(items)) == items


def test_bitmap_of_nothing_and_of_large_indexes() -> None:
    assert from_bitmap(to_bitmap([])) == set()
    assert from_bitmap(to_bitmap([0, 7, 8, 1_000_003])) == {0, 7, 8, 1_000_003}


@pytest.mark.parametrize("text", ["z:", "z:!!!!", "z:aGVsbG8=", "y:eJwDAAAAAAE="])
def test_malformed_bitmaps_raise(text: str) -> None:
    with pytest.raises(ValueError):
        from_bitmap(text)


def test_negative_indexes_have_no_bitmap() -> None:
    with pytest.raises(ValueError):
        to_bitmap([-1, 2])
