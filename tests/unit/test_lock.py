"""requirements/runtime.lock: complete for pyproject.toml's dependencies and exactly what this
environment runs (scripts/setup.sh installs with it as constraints; the image builds from it).
A failure here means: re-run ``.venv/bin/python scripts/lock.py`` and commit the lock."""

from __future__ import annotations

import importlib.util
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements" / "runtime.lock"
OPERATOR_LOCK = ROOT / "requirements" / "operator.lock"
DATA_STACK = {"rasterio", "pyogrio", "pyarrow", "numpy", "geopandas", "pandas", "shapely", "pyproj"}


def _lock(path: Path = LOCK) -> dict[str, str]:
    pins = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, version = line.partition("==")
        assert sep, f"{LOCK.name}: not an exact pin: {line!r}"
        pins[canonicalize_name(name)] = version
    return pins


def _lock_script():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("lock", ROOT / "scripts" / "lock.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_dependency_of_pyproject_is_pinned_within_its_range() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = _lock()
    for text in project["dependencies"]:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is a dependency but not in {LOCK.name}"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"{LOCK.name} pins {name}=={pins[name]}, outside pyproject's {req}"
        )


def test_lock_is_this_environment_runtime_closure() -> None:
    assert _lock() == _lock_script().closure(), (
        f"{LOCK.name} is stale: run .venv/bin/python scripts/lock.py"
    )


def test_operator_lock_is_the_control_planes_closure_without_the_data_stack() -> None:
    pins = _lock(OPERATOR_LOCK)
    assert pins == _lock_script().closure(requirements=_lock_script().operator_roots()), (
        f"{OPERATOR_LOCK.name} is stale: run .venv/bin/python scripts/lock.py"
    )
    assert {"kopf", "kubernetes", "pydantic", "pyyaml"} <= set(pins)
    assert not DATA_STACK & set(pins)
    # and the worker's own lock has no Kubernetes stack (workers never import it)
    assert not {"kopf", "kubernetes"} & set(_lock())
    assert not {"numexpr", "geopandas", "pandas"} & set(_lock())


def test_the_image_and_the_setup_script_use_the_lock() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "--constraint requirements/runtime.lock" in dockerfile
    assert "--constraint requirements/operator.lock" in dockerfile
    assert "-c requirements/runtime.lock" in (ROOT / "scripts" / "setup.sh").read_text()
