"""The pure arithmetic of the memory model (memory.py), checked over many inputs."""

from __future__ import annotations

import itertools
import random

import pytest

from gisjob_worker import memory as m
from gisjob_worker.memory import ChunkShape

MIB = 1024**2
HEADROOMS = [0.05, 0.1, 0.15, 0.2, 0.25, 1 / 3, 0.5, 0.7, 1.0]


# ------------------------------------------------------------------------ fit_chunk


FIT_CASES = list(
    itertools.product(
        [(1024, 1024), (4096, 4096), (1000, 700), (100, 37), (4096, 128), (8000, 8000)],
        [(256, 256), (512, 512), (128, 64), (512, 16)],
        [1, 255, 256 * 256, 300_000, 1024 * 512, 2_000_000, 10**9],
    )
)


@pytest.mark.parametrize(("tile", "block", "max_pixels"), FIT_CASES)
def test_fit_chunk_properties(
    tile: tuple[int, int], block: tuple[int, int], max_pixels: int
) -> None:
    tw, th = tile
    bw, bh = block
    chunk = m.fit_chunk(max_pixels, tw, th, bw, bh)
    one_block = min(bw, tw) * min(bh, th)
    if max_pixels < one_block:
        assert chunk is None
        return
    assert chunk is not None
    assert chunk.pixels <= max_pixels
    assert 0 < chunk.width <= tw
    assert 0 < chunk.height <= th
    # block-aligned: whole blocks, or the whole tile edge
    assert chunk.width == tw or chunk.width % bw == 0
    assert chunk.height == th or chunk.height % bh == 0
    strip = tw * min(bh, th)
    if max_pixels >= strip:
        # full-width strips, as many block rows as fit
        assert chunk.width == tw
        rows_fit = (max_pixels // strip) * min(bh, th)
        assert chunk.height == min(rows_fit, th)
    else:
        # one block row, narrowed by whole blocks, as wide as fits
        assert chunk.height == min(bh, th)
        assert chunk.width < tw
        assert (chunk.width + bw) * chunk.height > max_pixels


def test_fit_chunk_examples() -> None:
    # 8000x8000, 512 blocks, 16 Mpx: 4 block rows of full width (8000*2048 = 16.4M > 16M)
    assert m.fit_chunk(16_000_000, 8000, 8000, 512, 512) == ChunkShape(8000, 1536)
    # the whole tile fits
    assert m.fit_chunk(10**9, 1024, 1024, 256, 256) == ChunkShape(1024, 1024)
    # one block row is too much: narrow to 3 blocks
    assert m.fit_chunk(3 * 256 * 256 + 5, 4096, 4096, 256, 256) == ChunkShape(768, 256)
    # exactly one block
    assert m.fit_chunk(256 * 256, 4096, 4096, 256, 256) == ChunkShape(256, 256)
    # below one block: nothing fits
    assert m.fit_chunk(256 * 256 - 1, 4096, 4096, 256, 256) is None
    # an edge tile smaller than a block: the block is clipped to the tile
    assert m.fit_chunk(100 * 37, 100, 37, 256, 256) == ChunkShape(100, 37)


def test_scaled_chunk() -> None:
    chunk = ChunkShape(4096, 1024)
    assert m.scaled_chunk(chunk, 1.0, 4096, 4096, 256, 256) is chunk
    half = m.scaled_chunk(chunk, 0.5, 4096, 4096, 256, 256)
    assert half == ChunkShape(4096, 512)
    quarter = m.scaled_chunk(chunk, 0.25, 4096, 4096, 256, 256)
    assert quarter == ChunkShape(4096, 256)
    narrower = m.scaled_chunk(quarter, 0.5, 4096, 4096, 256, 256)
    assert narrower == ChunkShape(2048, 256)
    assert m.scaled_chunk(ChunkShape(256, 256), 0.5, 4096, 4096, 256, 256) is None


# -------------------------------------------------------------- request / usable


def test_request_for_examples() -> None:
    assert m.request_for(100 * MIB, 0.2) == 120 * MIB
    assert m.request_for(100 * MIB + 1, 0.2) == 121 * MIB
    assert m.request_for(1, 0.2) == MIB
    assert m.request_for(1000 * MIB, 1.0) == 2000 * MIB


def test_usable_for_examples() -> None:
    assert m.usable_for(120 * MIB, 0.2) == 100 * MIB
    assert m.usable_for(1024 * MIB, 1.0) == 512 * MIB


def test_request_and_usable_are_near_inverse() -> None:
    rng = random.Random(1234)
    estimates = [1, MIB - 1, MIB, 317_450_780, 10**9, 7 * 1024**3 + 12345]
    estimates += [rng.randrange(1, 64 * 1024**3) for _ in range(3000)]
    for e in estimates:
        for h in HEADROOMS:
            req = m.request_for(e, h)
            assert req % MIB == 0
            assert req >= e * (1 + h)
            assert m.usable_for(req, h) >= e - MIB, (e, h)
            # and the request is not inflated by more than the MiB rounding
            assert req < e * (1 + h) + MIB + 1


def test_request_is_monotonic() -> None:
    rng = random.Random(99)
    for _ in range(2000):
        a = rng.randrange(1, 10**11)
        b = a + rng.randrange(0, 10**8)
        h = rng.choice(HEADROOMS)
        assert m.request_for(a, h) <= m.request_for(b, h)
        assert m.usable_for(a, h) <= m.usable_for(b, h)


def test_request_of_usable_fits_budget() -> None:
    budget, headroom = 47_867_494_400, 0.1  # a whole number of MiB
    assert budget % MIB == 0
    assert m.request_for(m.usable_for(budget, headroom), headroom) <= budget


# --------------------------------------------------------------------- estimates


def test_raster_estimate_formula() -> None:
    est = m.raster_estimate(100_000_000, 64 * MIB, 1_000_000, 10)
    assert est == 100_000_000 + 64 * MIB + 11_500_000 + m.FIXED_SLACK


def test_vector_estimate_formula() -> None:
    est = m.vector_estimate(200_000_000, 64 * MIB, 1000, 100.0, 2.0)
    # (factor + one more stream batch) x rows x bytes, plus slack
    assert est == 200_000_000 + 64 * MIB + 345_000 + m.FIXED_SLACK


def test_chunk_pixel_budget_keeps_estimate_within_budget() -> None:
    rng = random.Random(7)
    for _ in range(5000):
        budget = rng.randrange(1, 16 * 1024**3)
        baseline = rng.randrange(0, 600 * MIB)
        cache = rng.choice([MIB, 64 * MIB, 256 * MIB])
        bpp = rng.randrange(1, 200)
        px = m.chunk_pixel_budget(budget, baseline, cache, bpp)
        assert px >= 0
        if px == 0:
            continue
        assert m.raster_estimate(baseline, cache, px, bpp) <= budget
        # and it is (nearly) the largest such count: a few more pixels would not fit
        assert m.raster_estimate(baseline, cache, px + 2, bpp) > budget


def test_chunk_pixel_budget_zero_when_nothing_left() -> None:
    assert m.chunk_pixel_budget(100 * MIB, 60 * MIB, 64 * MIB, 10) == 0
    assert m.chunk_pixel_budget(100 * MIB, 0, 0, 10) == int((100 - 48) * MIB / (10 * 1.15))


def test_batch_rows_for_keeps_estimate_within_budget() -> None:
    rng = random.Random(11)
    for _ in range(5000):
        budget = rng.randrange(1, 16 * 1024**3)
        baseline = rng.randrange(0, 600 * MIB)
        cache = rng.choice([MIB, 64 * MIB])
        bpf = rng.uniform(64, 100_000)
        factor = rng.choice([1.0, 2.0, 7.0, 12.5])
        rows = m.batch_rows_for(budget, baseline, cache, bpf, factor)
        assert 0 <= rows <= m.MAX_BATCH_ROWS
        if rows == 0:
            continue
        assert m.vector_estimate(baseline, cache, rows, bpf, factor) <= budget
        if rows < m.MAX_BATCH_ROWS:
            assert m.vector_estimate(baseline, cache, rows + 2, bpf, factor) > budget


def test_batch_rows_for_caps_and_zero() -> None:
    assert m.batch_rows_for(64 * 1024**3, 0, 0, 64, 1.0) == m.MAX_BATCH_ROWS
    assert m.batch_rows_for(100 * MIB, 100 * MIB, 0, 64, 1.0) == 0
    assert m.batch_rows_for(10**10, 0, 0, 0.0, 1.0) == 0


def test_baseline_override_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GISJOB_BASELINE_RASTER", "123456789")
    monkeypatch.setenv("GISJOB_BASELINE_VECTOR", "987654321")
    assert m.measured_baseline("raster") == 123_456_789
    assert m.measured_baseline("vector") == 987_654_321
