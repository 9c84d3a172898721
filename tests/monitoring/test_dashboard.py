"""The Grafana dashboard's structure: valid JSON, importable standalone, templated datasource.

There is no Grafana here; every panel's PromQL is run against a real Prometheus scraping real
workers (test_local_run_metrics.py) and a real operator (tests/cluster/
test_monitoring_operator.py).
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from promutil import DASHBOARD, iter_panels, load_dashboard, substitute, targets

DS = {"type": "prometheus", "uid": "${datasource}"}
BUILTINS = {"__rate_interval", "__interval", "__range"}


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return load_dashboard()


def _walk(node: Any, path: str = "") -> Any:
    if isinstance(node, dict):
        yield path, node
        for k, v in node.items():
            yield from _walk(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk(v, f"{path}[{i}]")


def test_valid_json_with_identity(dashboard: dict[str, Any]) -> None:
    json.loads(DASHBOARD.read_text())  # strict JSON (no trailing commas, comments)
    assert dashboard["uid"] == "gisjob" and dashboard["title"]
    assert isinstance(dashboard["schemaVersion"], int)
    assert dashboard.get("id") is None, "an exported id ties the JSON to one Grafana instance"


def test_standalone_import_inputs(dashboard: dict[str, Any]) -> None:
    (inp,) = dashboard["__inputs"]
    assert inp["type"] == "datasource" and inp["pluginId"] == "prometheus"
    required = {(r["type"], r["id"]) for r in dashboard["__requires"]}
    assert ("datasource", "prometheus") in required
    used = {p["type"] for p in iter_panels(dashboard) if p["type"] != "row"}
    assert used <= {r["id"] for r in dashboard["__requires"] if r["type"] == "panel"}


def test_variables(dashboard: dict[str, Any]) -> None:
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("namespace", "gisjob"):
        v = variables[name]
        assert v["type"] == "query" and v["datasource"] == DS
        assert v["includeAll"] and v["allValue"] == ".*" and v["multi"]
        assert "label_values(" in v["query"]["query"]
        assert v["definition"] == v["query"]["query"]
    assert "$namespace" in variables["gisjob"]["query"]["query"]  # chained


def test_panel_ids_unique_and_every_panel_queries(dashboard: dict[str, Any]) -> None:
    panels = list(iter_panels(dashboard))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {ids}"
    assert all(isinstance(i, int) and i > 0 for i in ids)
    for p in panels:
        if p["type"] == "row":
            continue
        assert p["title"] and p.get("description"), p["id"]
        assert p["targets"], f"panel {p['id']} {p['title']!r} has no target"
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), f"panel {p['id']}: duplicate refIds {refs}"
        for t in p["targets"]:
            assert t["expr"].strip(), f"panel {p['id']} target {t['refId']} has no expr"
            assert t.get("legendFormat"), f"panel {p['id']} target {t['refId']}: no legend"


def test_datasource_is_the_template_variable_everywhere(dashboard: dict[str, Any]) -> None:
    seen = 0
    for path, node in _walk(dashboard):
        if "datasource" in node and path != ".templating.list[0]":
            seen += 1
            assert node["datasource"] == DS, f"{path}: datasource {node['datasource']!r}"
    for p in iter_panels(dashboard):
        if p["type"] != "row":
            assert p["datasource"] == DS
            assert all(t["datasource"] == DS for t in p["targets"])
    assert seen > 0
    # no datasource name or uid of one particular Grafana leaked into the file
    text = DASHBOARD.read_text()
    assert '"uid": "${datasource}"' in text
    assert not re.search(r'"datasource":\s*"', text), "string datasource references"


def test_expressions_use_only_defined_variables(dashboard: dict[str, Any]) -> None:
    defined = {v["name"] for v in dashboard["templating"]["list"]} | BUILTINS
    for t in targets(dashboard):
        used = set(re.findall(r"\$\{?(\w+)", t.expr))
        assert used <= defined, f"{t}: undefined {used - defined}"
        # the job filters apply to every gisjob_* selector except the operator's own counters
        if "gisjob_operator_tiles" in t.expr or "gisjob_worker_" in t.expr:
            assert 'gisjob=~"$gisjob"' in t.expr, f"{t} ignores the $gisjob variable"
        substitute(t.expr, {"namespace": ".*", "gisjob": ".*"})


def test_every_target_reads_the_worker_or_the_operator(dashboard: dict[str, Any]) -> None:
    """Each target is checked for data against the process that exports its metrics."""
    bad = [str(t) for t in targets(dashboard) if t.source not in ("worker", "operator")]
    assert not bad, bad
    sources = {t.source for t in targets(dashboard)}
    assert sources == {"worker", "operator"}


def test_layout(dashboard: dict[str, Any]) -> None:
    """Panels stay within 24 columns and do not overlap."""
    cells: dict[tuple[int, int], int] = {}
    for p in iter_panels(dashboard):
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, p["id"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"panels {cells[(x, y)]} and {p['id']} overlap"
                cells[(x, y)] = p["id"]


def test_covers_the_design(dashboard: dict[str, Any]) -> None:
    """The rows and signals DESIGN §6 / the README promise."""
    rows = [p["title"] for p in dashboard["panels"] if p["type"] == "row"]
    assert rows == ["Job progress", "Worker memory", "Operator health"]
    exprs = " ".join(t.expr for t in targets(dashboard))
    for metric in (
        "gisjob_operator_tiles",
        "gisjob_operator_jobs",
        "gisjob_worker_resident_memory_bytes",
        "gisjob_worker_peak_resident_memory_bytes",
        "gisjob_worker_memory_budget_bytes",
        "gisjob_worker_cgroup_memory_limit_bytes",
        "gisjob_worker_cgroup_memory_peak_bytes",
        "gisjob_worker_gdal_cache_used_bytes",
        "gisjob_worker_gdal_cache_max_bytes",
        "gisjob_operator_tile_oom_total",
        "gisjob_operator_reconciles_total",
        "gisjob_operator_api_errors_total",
        "gisjob_operator_api_request_duration_seconds_bucket",
        "gisjob_operator_reconcile_duration_seconds_bucket",
    ):
        assert metric in exprs, f"no panel shows {metric}"
    titles = [p["title"] for p in iter_panels(dashboard)]
    assert "ETA" in titles
