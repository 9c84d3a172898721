"""Fixtures for integration tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from worker_helpers import job_doc, make_raster, write_job


@pytest.fixture
def raster_job(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Factory: a small raster and a job over it."""

    def make(
        operation: dict[str, Any],
        *,
        width: int = 512,
        height: int = 512,
        count: int = 4,
        fmt: str = "GTiff",
        **spec: Any,
    ) -> Path:
        src = make_raster(tmp_path / "in.tif", width, height, count=count)
        doc = job_doc(
            "t",
            {"uri": str(src)},
            operation,
            {"uri": str(tmp_path / "out"), "format": fmt},
            **spec,
        )
        return write_job(tmp_path / "job.yaml", doc)

    return make
