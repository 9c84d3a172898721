"""GDAL configuration that means what it says, set before either libgdal loads.

rasterio and pyogrio each bundle their own libgdal. Configuration set through
``rasterio.Env`` reaches only rasterio's copy, and ``rasterio.Env(GDAL_CACHEMAX=64)`` means
64 *bytes*. Environment variables set before import reach both copies, so the worker sets
these here, first thing; ``GDAL_CACHEMAX`` is written as a byte count (GDAL reads values
of 100000 and more as bytes, smaller ones as megabytes — the spec enforces at least 1 MiB).
"""

from __future__ import annotations

import ctypes
import os
import sys
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Mapping

    from .spec import GisJob

VSI_CURL_CACHE_BYTES = 16 * 1024**2


def gdal_environment(cache_bytes: int, num_threads: int) -> dict[str, str]:
    """The environment variables a worker sets (pure; the runner also passes them to children)."""
    if cache_bytes < 100_000:
        raise ValueError(f"GDAL cache of {cache_bytes} bytes would be read as megabytes")
    return {
        "GDAL_CACHEMAX": str(int(cache_bytes)),
        "GDAL_NUM_THREADS": str(max(1, int(num_threads))),
        "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
        "VSI_CACHE": "FALSE",
        "CPL_VSIL_CURL_CACHE_SIZE": str(VSI_CURL_CACHE_BYTES),
        "GDAL_MAX_DATASET_POOL_SIZE": "32",
    }


def configure(cache_bytes: int, num_threads: int, extra: Mapping[str, str] | None = None) -> None:
    """Export the GDAL settings (and the job's own ``spec.gdalConfig`` options); must run
    before rasterio/pyogrio are imported.

    Once GDAL is loaded, settings already in the environment are accepted as they are (a
    worker forked from the fork server, which exported the same job's settings before it
    imported rasterio/pyogrio)."""
    wanted = {**(extra or {}), **gdal_environment(cache_bytes, num_threads)}
    loaded = [m for m in ("rasterio", "pyogrio") if m in sys.modules]
    if loaded:
        if all(os.environ.get(k) == v for k, v in wanted.items()):
            return
        raise RuntimeError(
            f"GDAL configured after {', '.join(loaded)} was imported: settings would not apply"
        )
    os.environ.update(wanted)


def configure_for(job: GisJob) -> None:
    """:func:`configure` with a job's cache, threads, object-storage settings translated
    from the AWS environment (:func:`storage.gdal_storage_env`) and ``spec.gdalConfig``."""
    from . import storage
    from .errors import InputError

    res = job.spec.resources
    try:
        net = storage.gdal_storage_env(os.environ, requester_pays=job.spec.storage.requester_pays)
    except storage.StorageUriError as exc:
        raise InputError(str(exc)) from None
    extra = {**net, **job.spec.gdal_config}
    configure(int(res.gdal_cache_max), max(1, int(res.cpu_count)), extra)


# pyogrio probes these at import (pyogrio._compat: ``try: import geopandas``, ``import
# pandas``) to switch optional features on. A vector worker only uses ``pyogrio.raw``
# (Arrow), which needs neither; importing them costs ~45 MiB resident and 0.25-1 s.
PYOGRIO_OPTIONAL = ("geopandas", "pandas")


def import_pyogrio() -> Any:
    """``import pyogrio`` without the optional geopandas/pandas it would pull in.

    For single-purpose worker processes only (``gisjob worker`` on a vector tile, the
    baseline probe): a process that later calls ``pyogrio.read_dataframe`` — a test
    session, ``gisjob demo`` — must import pyogrio normally. The modules are hidden only
    while pyogrio imports (``sys.modules[name] = None`` makes ``import name`` raise
    ImportError), then un-hidden. Importing pandas later is harmless but brings the cost
    back: avoid ``pa.array(ndarray)`` and ``to_numpy()`` on binary Arrow data in hot paths —
    pyarrow's pandas shim imports pandas for both.
    """
    if "pyogrio" in sys.modules:
        return sys.modules["pyogrio"]
    hidden = [m for m in PYOGRIO_OPTIONAL if m not in sys.modules]
    for m in hidden:
        sys.modules[m] = None  # type: ignore[assignment]
    try:
        import pyogrio
    finally:
        for m in hidden:
            if m in sys.modules and sys.modules[m] is None:
                del sys.modules[m]
    return pyogrio


@dataclass(frozen=True)
class GdalCache:
    used: int
    max: int


@cache
def _rasterio_libgdal() -> ctypes.CDLL | None:
    """rasterio's own libgdal, found among the libraries mapped into this process."""
    import rasterio  # noqa: F401  (loads its libgdal)

    try:
        with open("/proc/self/maps", encoding="utf-8") as fh:
            paths = {line.split()[-1] for line in fh if "libgdal" in line and "/" in line}
    except OSError:
        return None
    ours = sorted(p for p in paths if "rasterio" in p) or sorted(paths)
    if not ours:
        return None
    lib = ctypes.CDLL(ours[0])
    lib.GDALGetCacheUsed64.restype = ctypes.c_int64
    lib.GDALGetCacheMax64.restype = ctypes.c_int64
    return lib


def rasterio_cache() -> GdalCache | None:
    """Block-cache use and size of rasterio's libgdal (None when it cannot be reached)."""
    if "rasterio" not in sys.modules:
        return None
    lib = _rasterio_libgdal()
    if lib is None:
        return None
    return GdalCache(used=int(lib.GDALGetCacheUsed64()), max=int(lib.GDALGetCacheMax64()))
