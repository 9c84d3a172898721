"""``gisjob demo DIR``: write demo inputs and ready-to-run jobs."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
@click.option("--raster-size", default=4096, show_default=True, help="Raster edge in pixels.")
@click.option("--features", default=200_000, show_default=True, help="Parcels in the GeoPackage.")
@click.option("--tile-size", default=1024, show_default=True, help="tileSize of the raster jobs.")
@click.option("--features-per-tile", default=50_000, show_default=True)
def demo(
    folder: Path, raster_size: int, features: int, tile_size: int, features_per_tile: int
) -> None:
    """Write a Sentinel-2-like raster, a parcels GeoPackage and jobs under FOLDER/jobs."""
    from ..demo import write_demo

    if raster_size < 16 or features < 1 or tile_size < 1 or features_per_tile < 1:
        raise click.BadParameter("sizes must be positive (raster at least 16 pixels)")
    for p in write_demo(folder, raster_size, features, tile_size, features_per_tile):
        click.echo(str(p))
    click.echo(f"next: gisjob run {folder / 'jobs' / 'ndvi.yaml'}", err=True)
