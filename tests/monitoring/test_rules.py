"""The alert rules: promtool check rules / test rules, and what every alert must carry."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from promutil import RULE_TESTS, RULES

EXPECTED = {
    "GisJobWorkerMemoryHigh": "warning",
    "GisJobTileOutOfMemory": "warning",
    "GisJobFailed": "warning",
    "GisJobStalled": "warning",
    "GisJobOperatorDown": "critical",
    "GisJobOperatorReconcileErrors": "warning",
}


def _alerts() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [r for g in doc["groups"] for r in g["rules"] if "alert" in r]


def test_rules_file_is_plain_prometheus_format() -> None:
    doc = yaml.safe_load(RULES.read_text())
    assert set(doc) == {"groups"}, "a plain rules file (the chart wraps it in a PrometheusRule)"
    names = [g["name"] for g in doc["groups"]]
    assert len(names) == len(set(names))
    assert "{{ .Values" not in RULES.read_text() and "{{- " not in RULES.read_text()


def test_every_alert_has_severity_and_annotations() -> None:
    alerts = _alerts()
    assert {a["alert"]: a["labels"]["severity"] for a in alerts} == EXPECTED
    for a in alerts:
        ann = a["annotations"]
        assert ann["summary"] and ann["description"], a["alert"]
        assert "$labels" in ann["summary"] + ann["description"], a["alert"]
        # no Helm-style template braces that are not Prometheus templates
        for text in ann.values():
            for expr in re.findall(r"{{(.*?)}}", text):
                assert expr.strip().startswith(("$", "if ", "else", "end")), (a["alert"], expr)
    fors = {a["alert"]: a.get("for") for a in alerts}
    assert fors["GisJobWorkerMemoryHigh"] == "1m"
    assert fors["GisJobOperatorDown"] == "5m"
    assert fors["GisJobStalled"] == "5m"


def test_promtool_check_rules(promtool: Path) -> None:
    out = subprocess.run(
        [str(promtool), "check", "rules", str(RULES)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(_alerts())} rules found" in out.stdout


def test_promtool_unit_tests_pass(promtool: Path) -> None:
    out = subprocess.run(
        [str(promtool), "test", "rules", str(RULE_TESTS)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=RULE_TESTS.parent,
    )
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]
    assert "SUCCESS" in out.stdout


def test_unit_tests_cover_every_alert_firing_and_silent() -> None:
    doc = yaml.safe_load(RULE_TESTS.read_text())
    assert doc["rule_files"] == ["../../charts/gisjob/rules/gisjob-alerts.yaml"]
    fires: set[str] = set()
    silent: set[str] = set()
    for case in doc["tests"]:
        for t in case.get("alert_rule_test", []):
            (fires if t.get("exp_alerts") else silent).add(t["alertname"])
            for exp in t.get("exp_alerts") or []:
                assert exp.get("exp_annotations"), f"{t['alertname']}: annotations unchecked"
    assert fires == set(EXPECTED), f"alerts never shown firing: {set(EXPECTED) - fires}"
    assert silent == set(EXPECTED), f"alerts never shown silent: {set(EXPECTED) - silent}"


@pytest.mark.parametrize(
    "mutation",
    [
        # the OOM alert must not depend on increase() alone: a job's first OOM creates the
        # counter at 1, which increase() never counts
        ("GisJobTileOutOfMemory", lambda e: e.split("\nor\n")[0]),
        # the stall alert must follow progress across operator restarts (max over instances)
        (
            "GisJobStalled",
            lambda e: e.replace(
                'changes(max by (namespace, gisjob) (gisjob_operator_tiles{phase="succeeded"})'
                "[30m:1m])",
                'changes(gisjob_operator_tiles{phase="succeeded"}[30m])',
            ),
        ),
    ],
    ids=lambda m: m[0] if isinstance(m, tuple) else "",
)
def test_unit_tests_catch_weakened_rules(
    promtool: Path, tmp_path: Path, mutation: tuple[str, Any]
) -> None:
    """The promtool cases are sharp: a simpler, wrong expression fails them."""
    alert, mutate = mutation
    doc = yaml.safe_load(RULES.read_text())
    for g in doc["groups"]:
        for r in g["rules"]:
            if r.get("alert") == alert:
                before = r["expr"]
                r["expr"] = mutate(before)
                assert r["expr"] != before
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "gisjob-alerts.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    tests = yaml.safe_load(RULE_TESTS.read_text())
    tests["rule_files"] = ["rules/gisjob-alerts.yaml"]
    (tmp_path / "alerts_test.yaml").write_text(yaml.safe_dump(tests, sort_keys=False))
    out = subprocess.run(
        [str(promtool), "test", "rules", "alerts_test.yaml"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
    )
    assert out.returncode != 0, f"the unit tests accept a weakened {alert}"
    assert f"alertname: {alert}" in out.stdout + out.stderr
