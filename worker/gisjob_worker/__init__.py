"""gisjob worker: spec, planner, memory model, operations and the tile worker."""

__version__ = "0.1.0"
