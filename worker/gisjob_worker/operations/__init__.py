"""Built-in operations: raster ``scale``, ``ndvi``, ``expression``; vector ``filter``."""
