"""Shared fixtures for the unit tests: job documents, job files and tiny real inputs."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from planbuilders import BASELINE_RASTER, BASELINE_VECTOR

from gisjob_worker import registry as registry_mod

MINIMAL_DOC: dict[str, Any] = {
    "apiVersion": "gisjob.dev/v1alpha1",
    "kind": "GisJob",
    "metadata": {"name": "unit-job"},
    "spec": {
        "input": {"uri": "/data/in.tif"},
        "operation": {"name": "scale", "params": {}},
        "output": {"uri": "/data/out"},
    },
}


@pytest.fixture(autouse=True)
def _fixed_baselines(monkeypatch: pytest.MonkeyPatch) -> None:
    """Never run the subprocess baseline probe in unit tests."""
    monkeypatch.setenv("GISJOB_BASELINE_RASTER", str(BASELINE_RASTER))
    monkeypatch.setenv("GISJOB_BASELINE_VECTOR", str(BASELINE_VECTOR))


@pytest.fixture
def clean_registry() -> Iterator[None]:
    """Clear the operation registry cache before and after the test."""
    registry_mod.registry.cache_clear()
    try:
        yield
    finally:
        registry_mod.registry.cache_clear()


@pytest.fixture
def job_doc() -> Callable[..., dict[str, Any]]:
    """A fresh copy of a minimal valid document; keyword args replace ``spec`` entries."""

    def make(**spec: Any) -> dict[str, Any]:
        doc = copy.deepcopy(MINIMAL_DOC)
        doc["spec"].update(copy.deepcopy(spec))
        return doc

    return make


@pytest.fixture
def write_job(tmp_path: Path) -> Callable[..., Path]:
    """Write a document (dict, dumped as YAML, or raw text) to a job file in ``tmp_path``."""

    def write(doc: dict[str, Any] | str, name: str = "job.yaml") -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        text = doc if isinstance(doc, str) else yaml.safe_dump(doc, sort_keys=False)
        path.write_text(text, encoding="utf-8")
        return path

    return write


def write_raster(
    path: Path,
    *,
    width: int = 1024,
    height: int = 1024,
    count: int = 2,
    dtype: str = "uint16",
    block: int = 64,
    nodata: float | None = None,
    seed: int = 0,
) -> Path:
    """A small tiled GeoTIFF (UTM 33N) with deterministic pseudo-random content."""
    import rasterio
    from affine import Affine

    rng = np.random.default_rng(seed)
    data = rng.integers(0, 1000, size=(count, height, width)).astype(dtype)
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=width,
        height=height,
        count=count,
        dtype=dtype,
        tiled=True,
        blockxsize=block,
        blockysize=block,
        crs="EPSG:32633",
        transform=Affine(10.0, 0.0, 500_000.0, 0.0, -10.0, 5_000_000.0),
        nodata=nodata,
        compress="deflate",
    ) as ds:
        ds.write(data)
    return path


def write_vector(path: Path, n: int = 25, layer: str = "parcels") -> Path:
    """A small GeoPackage of ``n`` square parcels in UTM 33N (FIDs start at 1)."""
    import geopandas as gpd
    from shapely.geometry import box

    gdf = gpd.GeoDataFrame(
        {"name": [f"p{i}" for i in range(n)], "value": list(range(n))},
        geometry=[
            box(500_000 + i * 100, 5_000_000, 500_050 + i * 100, 5_000_050) for i in range(n)
        ],
        crs="EPSG:32633",
    )
    gdf.to_file(path, layer=layer, driver="GPKG")
    return path


@pytest.fixture(scope="session")
def raster_1024(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1024×1024, 2 bands uint16, 64×64 blocks: 256 blocks (read-only: do not modify)."""
    return write_raster(tmp_path_factory.mktemp("raster") / "in.tif")


@pytest.fixture(scope="session")
def vector_25(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """25 parcels in a GeoPackage layer ``parcels`` (read-only: do not modify)."""
    return write_vector(tmp_path_factory.mktemp("vector") / "parcels.gpkg")


@pytest.fixture
def make_raster() -> Callable[..., Path]:
    return write_raster


@pytest.fixture
def make_vector() -> Callable[..., Path]:
    return write_vector
