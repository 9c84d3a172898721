"""Atomic outputs: write under a temporary name in the same folder, then rename into place.

A killed worker leaves at most a dot-prefixed temporary, never a partial file under the final
name; re-running a tile replaces its output atomically.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

TMP_MARK = ".tmp-"
TILES_DIR = "tiles"
PARTS_DIR = "parts"
EXTENSIONS = {"COG": ".tif", "GTiff": ".tif", "GeoParquet": ".parquet", "GPKG": ".gpkg"}


def tile_output_path(out_dir: str, fmt: str, tile_id: str) -> Path:
    sub = TILES_DIR if fmt in ("COG", "GTiff") else PARTS_DIR
    return Path(out_dir) / sub / f"{tile_id}{EXTENSIONS[fmt]}"


def temp_path(final: Path, step: str = "") -> Path:
    """A hidden sibling of ``final`` unique to this process (and step)."""
    return final.with_name(f".{final.stem}{TMP_MARK}{os.getpid()}{step}{final.suffix}")


def _fsync_dir(path: Path) -> None:
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


def commit(tmp: Path, final: Path) -> int:
    """fsync ``tmp``, rename it to ``final``, fsync the folder; returns the file size."""
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, final)
    _fsync_dir(final.parent)
    return final.stat().st_size


def remove_quietly(*paths: Path) -> None:
    for p in paths:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def stale_temporaries(folder: Path) -> list[Path]:
    """Temporaries left by killed workers (the runner removes them)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.name.startswith(".") and TMP_MARK in p.name)
