"""Atomic outputs: write under a temporary name in the same folder, then rename into place.

A killed worker leaves at most a dot-prefixed temporary, never a partial file under the final
name; re-running a tile replaces its output atomically. Temporary names carry a random
128-bit token (not the pid: every pod is pid 1), so writers sharing a folder never collide,
and stale-temporary cleanup removes only names of exactly this pattern.
"""

from __future__ import annotations

import contextlib
import os
import re
import uuid
from pathlib import Path

TMP_MARK = ".tmp-"
TILES_DIR = "tiles"
PARTS_DIR = "parts"
EXTENSIONS = {"COG": ".tif", "GTiff": ".tif", "GeoParquet": ".parquet", "GPKG": ".gpkg"}
# ".<stem>.tmp-<32 hex>[-<step>][<suffix>]" (temp_path), ".<name>.tmp-<32 hex>" (temp_name),
# and the side files GDAL and SQLite make next to them (".aux.xml", ".gpkg-journal")
TEMP_NAME = re.compile(r"\..+\.tmp-[0-9a-f]{32}(?:-[A-Za-z0-9]+)?(?:\.[A-Za-z0-9-]+)*")


def tile_output_key(fmt: str, tile_id: str) -> str:
    """Where a tile's output goes, relative to the output location."""
    sub = TILES_DIR if fmt in ("COG", "GTiff") else PARTS_DIR
    return f"{sub}/{tile_id}{EXTENSIONS[fmt]}"


def temp_path(final: Path, step: str = "") -> Path:
    """A hidden sibling of ``final``, unique to this call, keeping its suffix (GDAL picks
    drivers by it). ``step`` (``-work``) tells intermediate files apart in logs."""
    if step and not re.fullmatch(r"-[A-Za-z0-9]+", step):
        raise ValueError(f"step must look like '-work', not {step!r}")
    return final.with_name(f".{final.stem}{TMP_MARK}{uuid.uuid4().hex}{step}{final.suffix}")


def temp_name(final: Path) -> Path:
    """A hidden, unique sibling of ``final`` (whole name kept, for JSON and XML files)."""
    return final.with_name(f".{final.name}{TMP_MARK}{uuid.uuid4().hex}")


def is_temp_name(name: str) -> bool:
    """Whether ``name`` is one of our temporaries (:func:`temp_path`, :func:`temp_name`)."""
    return TEMP_NAME.fullmatch(name) is not None


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_fd(fd: int, data: bytes) -> None:
    """Write all of ``data`` to an open file descriptor, fsync and close it."""
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def commit(tmp: Path, final: Path) -> int:
    """fsync ``tmp``, rename it to ``final``, fsync the folder; returns the file size."""
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, final)
    fsync_dir(final.parent)
    return final.stat().st_size


def write_atomic(path: Path, text: str) -> None:
    """Write a small text file whole: unique temporary, fsync, rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    try:
        tmp.write_text(text, encoding="utf-8")
        commit(tmp, path)
    finally:
        remove_quietly(tmp)


def remove_quietly(*paths: Path) -> None:
    for p in paths:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def stale_temporaries(folder: Path) -> list[Path]:
    """Temporaries left by killed writers: only names of our unique-temporary pattern."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if is_temp_name(p.name) and p.is_file())
