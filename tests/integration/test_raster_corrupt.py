"""Permanent input errors found at run time or plan time are input errors (exit 2), never
retried: a truncated TIFF, a TIFF with a corrupt tile, a nodata the output dtype cannot hold.

The corrupt files are real GeoTIFFs written with rasterio (tiled, deflate), then cut short or
overwritten inside one tile's compressed bytes, found through GDAL's ``BLOCK_OFFSET_x_y`` /
``BLOCK_SIZE_x_y`` items of the ``TIFF`` metadata domain. Tiles that do not touch the damage
must still succeed and equal a full-array NumPy computation over the intact file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from worker_helpers import job_doc, make_raster, run_cli, run_worker, write_job

pytestmark = pytest.mark.slow

SIZE, BLOCK, TILE = 768, 128, 256  # 6 × 6 blocks, 3 × 3 tiles of 2 × 2 blocks
PER_TILE = TILE // BLOCK
SCALE = {"name": "scale", "params": {"bands": [2, 1], "scale": 0.5}}
Block = tuple[int, int]  # (block row, block column)


def _intact(folder: Path) -> Path:
    return make_raster(folder / "intact.tif", SIZE, SIZE, count=2, block=BLOCK, nodata=0)


def _block_spans(path: Path) -> dict[Block, tuple[int, int]]:
    """(offset, size) in the file of every block's compressed bytes (pixel-interleaved: one
    span holds both bands)."""
    import rasterio

    spans = {}
    with rasterio.open(path) as ds:
        assert ds.profile["interleave"] == "pixel" and ds.block_shapes[0] == (BLOCK, BLOCK)
        for row in range(SIZE // BLOCK):
            for col in range(SIZE // BLOCK):
                offset = ds.get_tag_item(f"BLOCK_OFFSET_{col}_{row}", "TIFF", bidx=1)
                size = ds.get_tag_item(f"BLOCK_SIZE_{col}_{row}", "TIFF", bidx=1)
                spans[(row, col)] = (int(offset), int(size))
    return spans


def _tile_of(block: Block) -> str:
    return f"r{block[0] // PER_TILE:04d}c{block[1] // PER_TILE:04d}"


def _unreadable_blocks(path: Path) -> set[Block]:
    """The blocks rasterio fails to read (precondition: the damage is real)."""
    import rasterio
    from rasterio.errors import RasterioIOError
    from rasterio.windows import Window

    bad = set()
    with rasterio.open(path) as ds:
        for row in range(SIZE // BLOCK):
            for col in range(SIZE // BLOCK):
                try:
                    ds.read([1, 2], window=Window(col * BLOCK, row * BLOCK, BLOCK, BLOCK))
                except RasterioIOError:
                    bad.add((row, col))
    return bad


def _job(folder: Path, src: Path, operation: dict[str, Any] | None = None) -> Path:
    return write_job(
        folder / "job.yaml",
        job_doc(
            "corrupt",
            {"uri": str(src)},
            operation or SCALE,
            {"uri": str(folder / "out"), "format": "GTiff"},
            tiling={"tileSize": TILE},
            retry={"backoffLimit": 3},
        ),
    )


def _reference(intact: Path) -> np.ndarray:
    """scale 0.5 over bands [2, 1] of the intact file, each band with its own nodata."""
    import rasterio

    with rasterio.open(intact) as ds:
        values = ds.read([2, 1])
    out = values.astype(np.float32) * np.float32(0.5)
    out[values == 0] = -9999.0
    return out


def _check_run(folder: Path, src: Path, intact: Path, bad_tiles: set[str], words: str) -> None:
    """``gisjob run``: the damaged tiles fail once each with exit 2 and GDAL's reason; the
    others succeed with the reference values."""
    import rasterio

    run = run_cli("run", str(_job(folder, src)), "--workers", "2")
    # every failed tile failed on its input: exit 2, and the last line names the first of
    # them with the worker's reason (issue 15 #6), not only its id
    assert run.code == 2, run.stderr[-3000:]
    last = run.stderr.strip().splitlines()[-1]
    first = sorted(bad_tiles)[0]
    assert last.startswith(f"gisjob: error: {len(bad_tiles)} tile(s) failed: {first}: "), last
    assert "corrupt or truncated data" in last and words in last, last
    manifest = json.loads((folder / "out" / "manifest.json").read_text())
    assert manifest["failedTiles"] == sorted(bad_tiles)
    tiles = {t["id"]: t for t in manifest["tiles"]}
    assert len(tiles) == 9
    reference = _reference(intact)
    for tile_id, tile in tiles.items():
        if tile_id in bad_tiles:
            assert tile["outcome"] == "failed"
            assert len(tile["attempts"]) == 1, tile["attempts"]  # never retried
            attempt = tile["attempts"][0]
            assert attempt["exitCode"] == 2 and attempt["outcome"] == "input", attempt
            error = attempt["error"]
            assert f"{src}: corrupt or truncated data: cannot read the pixels of rows" in error
            assert words in error, error
            continue
        assert tile["outcome"] == "succeeded" and len(tile["attempts"]) == 1
        r, c = int(tile_id[1:5]), int(tile_id[6:10])
        with rasterio.open(folder / "out" / "tiles" / f"{tile_id}.tif") as ds:
            got = ds.read()
        want = reference[:, r * TILE : (r + 1) * TILE, c * TILE : (c + 1) * TILE]
        np.testing.assert_array_equal(got, want)


def test_truncated_tiff_fails_its_tiles_once_as_input_errors(tmp_path: Path) -> None:
    intact = _intact(tmp_path)
    spans = _block_spans(intact)
    offset, size = spans[(3, 2)]  # cut inside a block in the middle of the file
    cut = offset + size // 2
    src = tmp_path / "in.tif"
    src.write_bytes(intact.read_bytes()[:cut])
    damaged = {b for b, (o, s) in spans.items() if o + s > cut}
    assert _unreadable_blocks(src) == damaged
    bad_tiles = {_tile_of(b) for b in damaged}
    assert 0 < len(bad_tiles) < 9

    _check_run(tmp_path, src, intact, bad_tiles, "Read error")


def test_corrupt_tile_data_fails_that_tile_once_as_an_input_error(tmp_path: Path) -> None:
    intact = _intact(tmp_path)
    offset, size = _block_spans(intact)[(1, 3)]  # a block of tile r0000c0001
    data = bytearray(intact.read_bytes())
    start = offset + size // 3
    data[start : start + size // 3] = np.random.default_rng(0).bytes(size // 3)
    src = tmp_path / "in.tif"
    src.write_bytes(bytes(data))
    assert _unreadable_blocks(src) == {(1, 3)}

    _check_run(tmp_path, src, intact, {"r0000c0001"}, "Decoding error")

    # the worker on its own: exit 2, an input outcome naming the file, the window and the
    # reason, printed as one error line
    run = run_worker(tmp_path / "job.yaml", "r0000c0001")
    assert run.code == 2, run.stderr[-2000:]
    assert run.record is not None and run.record["outcome"] == "input"
    error = run.record["error"]
    assert error.startswith(
        f"{src}: corrupt or truncated data: cannot read the pixels of rows 0-255, columns 256-511"
    )
    assert "IReadBlock failed at X offset 3, Y offset 1" in error  # block (row 1, col 3)
    assert "ZIPDecode:Decoding error" in error
    printed = [line for line in run.stderr.splitlines() if line.startswith("gisjob: error:")]
    assert printed == [f"gisjob: error: {error}"], run.stderr[-2000:]
    # and an intact tile of the same file still succeeds on its own
    assert run_worker(tmp_path / "job.yaml", "r0001c0001").code == 0


@pytest.mark.parametrize(
    ("operation", "dtype"),
    [
        ({"name": "scale", "params": {"nodata": 1e300}}, "float32"),
        ({"name": "scale", "params": {"dtype": "uint8", "nodata": -1}}, "uint8"),
        ({"name": "ndvi", "params": {"nir": 2, "red": 1, "nodata": -1e39}}, "float32"),
        (
            {"name": "expression", "params": {"expr": "b1", "dtype": "uint16", "nodata": 7e4}},
            "uint16",
        ),
    ],
)
@pytest.mark.parametrize("command", ["plan", "run"])
def test_nodata_the_output_dtype_cannot_hold_is_rejected_at_plan_time(
    tmp_path: Path, operation: dict[str, Any], dtype: str, command: str
) -> None:
    src = make_raster(tmp_path / "in.tif", 256, 256, count=2)
    job = _job(tmp_path, src, operation)
    run = run_cli(command, str(job))
    assert run.code == 2, run.stderr[-2000:]
    errors = [line for line in run.stderr.splitlines() if line.startswith("gisjob: error:")]
    assert len(errors) == 1, run.stderr
    assert f"{job}: spec.operation.params.nodata: " in errors[0]
    assert f"does not fit the output dtype {dtype}" in errors[0]
    assert not (tmp_path / "out").exists()
