"""Demo inputs shaped like real work: a Sentinel-2-like subset and a parcels GeoPackage."""

from __future__ import annotations

from pathlib import Path

import numpy as np

DEMO_CRS = "EPSG:32632"  # UTM 32N
ORIGIN = (600_000.0, 5_100_000.0)  # upper-left corner, metres
PIXEL = 10.0
BLOCK = 512

JOBS: dict[str, str] = {
    "scale": """\
# Surface reflectance: digital numbers x 0.0001, clipped to [0, 1].
apiVersion: gisjob.dev/v1alpha1
kind: GisJob
metadata: {{name: demo-scale}}
spec:
  input: {{uri: ../s2.tif}}
  operation:
    name: scale
    params: {{scale: 0.0001, offset: 0.0, clip: [0.0, 1.0], dtype: float32, bands: [1, 2, 3, 4]}}
  output: {{uri: ../out/scale, format: GTiff}}
  tiling: {{tileSize: {tile}}}
  resources: {{memoryHeadroom: 0.2, gdalCacheMax: 32Mi}}
  parallelism: 2
""",
    "ndvi": """\
# NDVI from the red (band 3) and near-infrared (band 4) bands.
apiVersion: gisjob.dev/v1alpha1
kind: GisJob
metadata: {{name: demo-ndvi}}
spec:
  input: {{uri: ../s2.tif}}
  operation:
    name: ndvi
    params: {{nir: 4, red: 3}}
  output: {{uri: ../out/ndvi, format: COG}}
  tiling: {{tileSize: {tile}}}
  resources: {{memoryHeadroom: 0.2, gdalCacheMax: 32Mi}}
  parallelism: 2
""",
    "expression": """\
# NDWI (McFeeters): (green - nir) / (green + nir), only where green is bright enough.
apiVersion: gisjob.dev/v1alpha1
kind: GisJob
metadata: {{name: demo-expression}}
spec:
  input: {{uri: ../s2.tif}}
  operation:
    name: expression
    params: {{expr: "where(b2 > 300, (b2 - b4) / (b2 + b4), -1)", dtype: float32}}
  output: {{uri: ../out/expression, format: GTiff}}
  tiling: {{tileSize: {tile}}}
  resources: {{memoryHeadroom: 0.2, gdalCacheMax: 32Mi}}
  parallelism: 2
""",
    "filter": """\
# Populated parcels with their area in square kilometres.
apiVersion: gisjob.dev/v1alpha1
kind: GisJob
metadata: {{name: demo-filter}}
spec:
  input: {{uri: ../parcels.gpkg, layer: parcels}}
  operation:
    name: filter
    params: {{where: "population > 500", columns: [parcel_id, population, landuse], area: true}}
  output: {{uri: ../out/filter, format: GeoParquet}}
  tiling: {{featuresPerTile: {features}}}
  resources: {{memoryHeadroom: 0.2, gdalCacheMax: 16Mi}}
  parallelism: 2
""",
}


def write_raster(path: Path, size: int, bands: int = 4, seed: int = 42) -> None:
    """A tiled, deflate-compressed uint16 raster like a Sentinel-2 L1C subset.

    Bands: blue, green, red, near-infrared. Fields of vegetation, water and bare soil; the
    lower-right corner beyond the orbit edge is nodata (0). Written strip by strip.
    """
    import rasterio
    from rasterio.transform import from_origin

    rng = np.random.default_rng(seed)
    profile = {
        "driver": "GTiff",
        "width": size,
        "height": size,
        "count": bands,
        "dtype": "uint16",
        "nodata": 0,
        "crs": DEMO_CRS,
        "transform": from_origin(*ORIGIN, PIXEL, PIXEL),
        "tiled": True,
        "blockxsize": BLOCK,
        "blockysize": BLOCK,
        "compress": "deflate",
    }
    # land-cover classes on a coarse grid of fields: 0 water, 1 vegetation, 2 soil
    field = 64
    classes = rng.integers(0, 3, size=(size // field + 1, size // field + 1))
    base = np.array(  # typical L1C digital numbers per class and band (B2, B3, B4, B8)
        [[900, 800, 600, 400], [500, 800, 450, 3500], [1300, 1500, 1800, 2600]], dtype=np.float32
    )
    with rasterio.open(path, "w", **profile) as dst:
        cols = np.arange(size)
        for row0 in range(0, size, BLOCK):
            h = min(BLOCK, size - row0)
            rows = np.arange(row0, row0 + h)
            cls = classes[(rows // field)[:, None], (cols // field)[None, :]]
            edge = (rows[:, None] + cols[None, :]) > int(size * 1.6)
            strip = np.empty((bands, h, size), dtype=np.uint16)
            for b in range(bands):
                values = base[cls, b % 4] * rng.normal(1.0, 0.08, size=(h, size)).astype(np.float32)
                values = np.clip(values, 1, 10000)
                values[edge] = 0
                strip[b] = values.astype(np.uint16)
            dst.write(strip, window=((row0, row0 + h), (0, size)))


def write_parcels(path: Path, count: int, seed: int = 7) -> None:
    """A GeoPackage layer ``parcels``: quadrilateral parcels with population and land use
    (written through pyogrio's raw arrays: no geopandas/pandas needed)."""
    import shapely
    from pyogrio.raw import write

    from .gdalenv import import_pyogrio

    import_pyogrio()
    rng = np.random.default_rng(seed)
    per_row = int(np.ceil(np.sqrt(count)))
    idx = np.arange(count)
    x0 = ORIGIN[0] + (idx % per_row) * 50.0
    y0 = ORIGIN[1] - (idx // per_row) * 50.0
    jitter = rng.uniform(0, 8, size=(count, 4, 2))
    corners = np.stack(
        [
            np.stack([x0 + jitter[:, 0, 0], y0 - jitter[:, 0, 1]], axis=1),
            np.stack([x0 + 45 - jitter[:, 1, 0], y0 - jitter[:, 1, 1]], axis=1),
            np.stack([x0 + 45 - jitter[:, 2, 0], y0 - 45 + jitter[:, 2, 1]], axis=1),
            np.stack([x0 + jitter[:, 3, 0], y0 - 45 + jitter[:, 3, 1]], axis=1),
        ],
        axis=1,
    )
    rings = np.concatenate([corners, corners[:, :1]], axis=1)
    geoms = shapely.polygons(rings)
    landuse = np.array(["residential", "agricultural", "industrial", "forest"])
    population = rng.lognormal(6.0, 0.8, size=count).astype(np.int64)
    kinds = landuse[rng.integers(0, 4, size=count)]
    owners = np.array([f"owner-{i % 9973:04d}" for i in idx], dtype=object)
    if path.exists():
        path.unlink()
    write(
        str(path),
        geometry=np.asarray(shapely.to_wkb(geoms), dtype=object),
        field_data=[idx.astype(np.int64) + 1, population, kinds.astype(object), owners],
        fields=["parcel_id", "population", "landuse", "owner"],
        layer="parcels",
        driver="GPKG",
        geometry_type="Polygon",
        crs=DEMO_CRS,
        encoding="UTF-8",
    )


def write_demo(
    folder: Path,
    raster_size: int = 4096,
    features: int = 200_000,
    tile_size: int = 1024,
    features_per_tile: int = 50_000,
) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "jobs").mkdir(exist_ok=True)
    write_raster(folder / "s2.tif", raster_size)
    write_parcels(folder / "parcels.gpkg", features)
    written = [folder / "s2.tif", folder / "parcels.gpkg"]
    for name, template in JOBS.items():
        p = folder / "jobs" / f"{name}.yaml"
        p.write_text(template.format(tile=tile_size, features=features_per_tile))
        written.append(p)
    return written
