"""Unit tests of the test kubelet's pure helpers (no cluster needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
from kubelet import ImageRules, _expand, _translator, memory_request, parse_quantity


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/data", "/L/d"),
        ("/data/x", "/L/d/x"),
        ("--out=/data/x", "--out=/L/d/x"),
        ("cat /data/x > /dev/termination-log", "cat /L/d/x > /L/t"),
        ("/database", "/database"),
        ("x/data", "x/data"),
        ("/data/sub/y", "/L/s/y"),
        ('"/data"', '"/L/d"'),
    ],
)
def test_path_translation(text: str, expected: str) -> None:
    t = _translator([("/data", "/L/d"), ("/dev/termination-log", "/L/t"), ("/data/sub/", "/L/s")])
    assert t(text) == expected


def test_var_expansion_like_kubernetes() -> None:
    assert _expand("$(A)-$$(A)-$(B)", {"A": "1"}) == "1-$(A)-$(B)"


@pytest.mark.parametrize(
    ("q", "v"), [("100Mi", 100 * 2**20), ("250m", 0.25), ("1e3", 1000), ("2G", 2e9), (3, 3)]
)
def test_parse_quantity(q: str | int, v: float) -> None:
    assert parse_quantity(q) == pytest.approx(v)


def test_memory_request_sums_containers_and_defaults_to_limit() -> None:
    pod = {
        "spec": {
            "containers": [
                {"resources": {"requests": {"memory": "100Mi"}}},
                {"resources": {"limits": {"memory": "1Gi"}}},
            ],
            "initContainers": [{"resources": {"requests": {"memory": "2Gi"}}}],
        }
    }
    assert memory_request(pod) == 2 * 2**30
    pod["spec"].pop("initContainers")
    assert memory_request(pod) == 100 * 2**20 + 2**30


def test_image_rules(tmp_path: Path) -> None:
    default = ImageRules.load(None)
    assert default.resolve("ghcr.io/x/gisjob:1").entrypoint == ["gisjob"]
    assert default.resolve("python:3.11").entrypoint is None
    assert default.resolve("python:3.11").path_prepend[0].endswith(".venv/bin")
    cfg = tmp_path / "images.yaml"
    cfg.write_text(
        "images:\n- match: 'busybox*'\n  commandPrefix: [env]\n  pathPrepend: ['{repo}/x']\n"
    )
    rules = ImageRules.load(str(cfg))
    rule = rules.resolve("busybox:1.36")
    assert rule.command_prefix == ["env"] and rule.path_prepend[0].endswith("/x")
    assert ImageRules.load('{"inheritEnv": ["FOO"]}').inherit_env == ["FOO"]
