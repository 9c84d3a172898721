"""Unit tests of the test kubelet's helpers and of how it starts a pod from its Secrets,
against an in-memory API (no cluster needed)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import kubelet
import pytest
from kubelet import (
    ImageRules,
    Kubelet,
    _expand,
    _Retry,
    _translator,
    memory_request,
    parse_quantity,
)
from kubernetes import client as k8s


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


# ------------------------------------------------------------- env from Secrets (fake API)


class FakeCore:
    """The API calls the kubelet makes to start a pod, answered from memory: Secrets and
    ConfigMaps (as the API server stores them: Secret ``data`` base64), status patches and
    events recorded."""

    def __init__(self) -> None:
        self.secrets: dict[tuple[str, str], dict[str, str]] = {}
        self.patches: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.reads: list[tuple[str, str]] = []

    def read_namespaced_secret(self, name: str, namespace: str, **_: Any) -> Any:
        self.reads.append((namespace, name))
        data = self.secrets.get((namespace, name))
        if data is None:
            raise k8s.ApiException(status=404, reason="Not Found")
        encoded = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
        body = {"kind": "Secret", "metadata": {"name": name}, "data": encoded}
        return SimpleNamespace(data=json.dumps(body).encode())

    def read_namespaced_config_map(self, name: str, namespace: str, **_: Any) -> Any:
        raise k8s.ApiException(status=404, reason="Not Found")

    def patch_namespaced_pod_status(
        self, name: str, namespace: str, body: dict[str, Any], **_: Any
    ) -> None:
        self.patches.append(body)

    def create_namespaced_event(self, namespace: str, body: dict[str, Any], **_: Any) -> None:
        self.events.append(body)


@pytest.fixture
def fake_kubelet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Kubelet, FakeCore]:
    """A kubelet whose API server is :class:`FakeCore` (no cluster, no cgroups)."""
    config = SimpleNamespace(host="https://127.0.0.1:6443", ssl_ca_cert=None)
    monkeypatch.setattr(kubelet, "_client", lambda _: SimpleNamespace(configuration=config))
    kb = Kubelet("kubeconfig", tmp_path, "node", 2**30, None, 10, ImageRules.load(None), False)
    core = FakeCore()
    kb.core = core
    return kb, core


def secret_pod(env: list[dict[str, Any]] | None = None, **ref: Any) -> dict[str, Any]:
    """A pod bound to the fake node whose container prints its environment into the
    termination message, with ``envFrom: [{secretRef: {name: s3, **ref}}]``."""
    code = "import json, os; open('/dev/termination-log', 'w').write(json.dumps(dict(os.environ)))"
    return {
        "metadata": {"name": "p", "namespace": "ns", "uid": "u-1"},
        "spec": {
            "nodeName": "node",
            "restartPolicy": "Never",
            "containers": [
                {
                    "name": "worker",
                    "image": "gisjob:test",
                    "command": ["python3", "-c", code],
                    "envFrom": [{"secretRef": {"name": "s3", **ref}}],
                    "env": env or [],
                }
            ],
        },
        "status": {"phase": "Pending"},
    }


def run_to_end(kb: Kubelet, pod: dict[str, Any]) -> dict[str, str]:
    """Start the pod, wait for its process, report it; the environment it saw."""
    kb.pods[pod["metadata"]["uid"]] = pod
    kb.sync("u-1")
    rt = kb.runtimes["u-1"]
    assert rt.proc is not None
    rt.proc.wait(30)
    kb.sync("u-1")
    assert rt.exit_code == 0, rt.message
    seen: dict[str, str] = json.loads(rt.message or "{}")
    return seen


CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "gisjob-test",
    "AWS_SECRET_ACCESS_KEY": "s3cr3t/with+base64=chars",
    "AWS_REGION": "us-east-1",
    "AWS_ENDPOINT_URL": "http://127.0.0.1:8333",
}


def test_env_from_a_secret_is_read_and_decoded(fake_kubelet: tuple[Kubelet, FakeCore]) -> None:
    kb, core = fake_kubelet
    core.secrets[("ns", "s3")] = {**CREDENTIALS, "1-not-a-name": "x", "also bad": "y"}
    token = {"secretKeyRef": {"name": "s3", "key": "AWS_ACCESS_KEY_ID"}}
    env = [
        {"name": "AWS_REGION", "value": "eu-west-1"},  # explicit env wins over envFrom
        {"name": "KEY_ID", "valueFrom": token},
    ]
    seen = run_to_end(kb, secret_pod(env))
    assert ("ns", "s3") in core.reads  # read from the API server, not the kubelet's env
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"):
        assert seen[key] == CREDENTIALS[key]
    assert seen["AWS_REGION"] == "eu-west-1"
    assert seen["KEY_ID"] == "gisjob-test"
    assert "1-not-a-name" not in seen and "also bad" not in seen
    (event,) = [e for e in core.events if e["reason"] == "InvalidEnvironmentVariableNames"]
    assert "[1-not-a-name, also bad]" in event["message"] and "ns/s3" in event["message"]
    final = core.patches[-1]["status"]
    assert final["phase"] == "Succeeded"


def test_a_missing_secret_leaves_the_container_waiting(
    fake_kubelet: tuple[Kubelet, FakeCore],
) -> None:
    """As a kubelet: no process, phase Pending, the container Waiting with reason
    CreateContainerConfigError and the API's words, a Failed event; retried until the Secret
    exists, then the pod runs with it."""
    kb, core = fake_kubelet
    pod = secret_pod()
    kb.pods["u-1"] = pod
    with pytest.raises(_Retry):
        kb.sync("u-1")
    assert "u-1" not in kb.runtimes  # nothing started
    assert kb.queued.get("u-1") is not None  # tried again later
    status = core.patches[-1]["status"]
    assert status["phase"] == "Pending"
    (cs,) = status["containerStatuses"]
    assert cs["state"] == {
        "waiting": {"reason": "CreateContainerConfigError", "message": 'secret "s3" not found'}
    }
    assert cs["ready"] is False and cs["started"] is False
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False" and ready["reason"] == "ContainersNotReady"
    (event,) = core.events
    assert event["reason"] == "Failed" and event["type"] == "Warning"
    assert event["message"] == 'Error: secret "s3" not found'
    # the same failure again: no second patch or event
    with pytest.raises(_Retry):
        kb.sync("u-1")
    assert len(core.patches) == 1 and len(core.events) == 1
    # the Secret appears: the pod starts with it
    core.secrets[("ns", "s3")] = CREDENTIALS
    seen = run_to_end(kb, pod)
    assert seen["AWS_SECRET_ACCESS_KEY"] == CREDENTIALS["AWS_SECRET_ACCESS_KEY"]


def test_an_optional_missing_secret_is_no_error(fake_kubelet: tuple[Kubelet, FakeCore]) -> None:
    kb, _ = fake_kubelet
    seen = run_to_end(kb, secret_pod(optional=True))
    assert "AWS_SECRET_ACCESS_KEY" not in seen


def test_a_missing_key_of_a_secret_leaves_the_container_waiting(
    fake_kubelet: tuple[Kubelet, FakeCore],
) -> None:
    kb, core = fake_kubelet
    core.secrets[("ns", "s3")] = CREDENTIALS
    ref = {"secretKeyRef": {"name": "s3", "key": "AWS_SESSION_TOKEN"}}
    kb.pods["u-1"] = secret_pod([{"name": "AWS_SESSION_TOKEN", "valueFrom": ref}])
    with pytest.raises(_Retry):
        kb.sync("u-1")
    (cs,) = core.patches[-1]["status"]["containerStatuses"]
    assert cs["state"]["waiting"] == {
        "reason": "CreateContainerConfigError",
        "message": "couldn't find key AWS_SESSION_TOKEN in Secret ns/s3",
    }
