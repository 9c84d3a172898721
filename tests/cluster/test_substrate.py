"""Tests of the cluster test substrate itself: API server, controllers, test
kubelet, identities, kubectl. They also run against a real cluster with
``--use-existing-cluster`` (dev-only tests skip there)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from clusterutil import (
    Api,
    ClusterHandle,
    Obj,
    pod_manifest,
    terminated,
    unique,
    wait_for,
    wait_pod,
)
from devcluster import NODE_NAME
from kubelet import MEMORY_ANNOTATION
from kubernetes import client as k8s

pytestmark = pytest.mark.cluster

GROUP = "substrate.gisjob.dev"


# --------------------------------------------------------------------------- API server


def test_node_registered_ready_with_lease(cluster: ClusterHandle, core: Api) -> None:
    nodes = core.list_node().items
    assert nodes, "no nodes"
    ready = [
        n
        for n in nodes
        if any(c.type == "Ready" and c.status == "True" for c in (n.status.conditions or []))
    ]
    assert ready, [n.metadata.name for n in nodes]
    if cluster.is_dev:
        node = core.read_node(NODE_NAME)
        assert node.status.allocatable["memory"].endswith("Ki")
        assert not [t for t in node.spec.taints or [] if "not-ready" in t.key]
        coord: Api = k8s.CoordinationV1Api(core.api_client)
        lease = coord.read_namespaced_lease("gisjob-dev-node", "kube-node-lease")
        assert lease.spec.holder_identity == "gisjob-dev-node"


def _crd() -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"widgets.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "required": ["size"],
                                    "properties": {
                                        "size": {"type": "integer", "minimum": 1},
                                        "color": {"type": "string", "enum": ["red", "blue"]},
                                    },
                                },
                                "status": {
                                    "type": "object",
                                    "properties": {"phase": {"type": "string"}},
                                },
                            },
                        }
                    },
                }
            ],
        },
    }


def test_crd_create_schema_rejection_and_status(api_client: k8s.ApiClient, namespace: str) -> None:
    ext: Api = k8s.ApiextensionsV1Api(api_client)
    crds: Api = k8s.CustomObjectsApi(api_client)
    try:
        ext.create_custom_resource_definition(_crd())
    except k8s.ApiException as e:
        if e.status != 409:
            raise

    def established() -> bool:
        crd = ext.read_custom_resource_definition(f"widgets.{GROUP}")
        return any(
            c.type == "Established" and c.status == "True" for c in crd.status.conditions or []
        )

    wait_for(established, 30, what="CRD Established")

    def create(name: str, spec: dict[str, Any]) -> Any:
        body = {
            "apiVersion": f"{GROUP}/v1",
            "kind": "Widget",
            "metadata": {"name": name},
            "spec": spec,
        }
        return crds.create_namespaced_custom_object(GROUP, "v1", namespace, "widgets", body)

    # The CRD's REST endpoint can lag Established by a moment.
    wait_for(lambda: create("ok", {"size": 3, "color": "red"}), 15, 0.2, what="first Widget")

    with pytest.raises(k8s.ApiException) as err:
        create("bad", {"size": 0, "color": "green"})
    assert err.value.status == 422
    body = json.loads(str(err.value.body))
    assert "spec.size" in body["message"] and "spec.color" in body["message"], body["message"]

    with pytest.raises(k8s.ApiException) as err:
        create("missing", {"color": "blue"})
    assert err.value.status == 422 and "spec.size" in str(err.value.body)

    crds.patch_namespaced_custom_object_status(
        GROUP, "v1", namespace, "widgets", "ok", {"status": {"phase": "Done"}}
    )
    got = crds.get_namespaced_custom_object(GROUP, "v1", namespace, "widgets", "ok")
    assert got["status"] == {"phase": "Done"}
    assert got["metadata"]["generation"] == 1  # status writes do not bump generation


def test_garbage_collector_deletes_dependents(core: Api, namespace: str) -> None:
    owner = core.create_namespaced_config_map(namespace, {"metadata": {"name": "owner"}})
    ref = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "name": "owner",
        "uid": owner.metadata.uid,
    }
    core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "dependent", "ownerReferences": [ref]}}
    )
    core.delete_namespaced_config_map("owner", namespace, propagation_policy="Background")

    def gone() -> bool:
        try:
            core.read_namespaced_config_map("dependent", namespace)
        except k8s.ApiException as e:
            return bool(e.status == 404)
        return False

    wait_for(gone, 30, 0.2, what="garbage collection of the dependent")


# --------------------------------------------------------------------------- identities


def test_restricted_identities_get_403(
    cluster: ClusterHandle, api_client: k8s.ApiClient, core: Api, namespace: str
) -> None:
    rbac: Api = k8s.RbacAuthorizationV1Api(api_client)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "reader"}})
    rbac.create_namespaced_role(
        namespace,
        {
            "metadata": {"name": "pod-reader"},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}],
        },
    )
    subjects: list[dict[str, str]] = [
        {"kind": "ServiceAccount", "name": "reader", "namespace": namespace},
        {"kind": "User", "name": "alice", "apiGroup": "rbac.authorization.k8s.io"},
    ]
    rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": "pod-reader"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "pod-reader",
            },
            "subjects": subjects,
        },
    )
    identities = []
    if cluster.dev is not None:
        identities.append(cluster.dev.service_account_kubeconfig(namespace, "reader"))
        identities.append(cluster.dev.kubeconfig_for("alice", ["gisjob-devs"]))
    else:
        token = core.create_namespaced_service_account_token(
            "reader", namespace, {"spec": {"expirationSeconds": 600}}
        ).status.token
        identities.append(_token_kubeconfig(cluster.kubeconfig, token, namespace))
    for kubeconfig in identities:
        limited: Api = k8s.CoreV1Api(cluster.api_client(kubeconfig))
        # RBAC is evaluated per request; the binding may need a moment to reach the cache
        wait_for(lambda c=limited: c.list_namespaced_pod(namespace) is not None, 10, 0.2)  # type: ignore[misc]
        with pytest.raises(k8s.ApiException) as err:
            limited.list_namespaced_secret(namespace)
        assert err.value.status == 403, err.value
        with pytest.raises(k8s.ApiException) as err:
            limited.list_namespaced_pod("default")
        assert err.value.status == 403


def _token_kubeconfig(base: Path, token: str, namespace: str) -> Path:
    import yaml

    cfg = yaml.safe_load(base.read_text())
    ctx_name = cfg["current-context"]
    ctx = next(c for c in cfg["contexts"] if c["name"] == ctx_name)["context"]
    cfg["users"] = [{"name": "sa", "user": {"token": token}}]
    cfg["contexts"] = [{"name": "sa", "context": {"cluster": ctx["cluster"], "user": "sa"}}]
    cfg["current-context"] = "sa"
    path = base.parent / f".sa-{namespace}.kubeconfig"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not on PATH")
def test_kubectl_works_with_kubeconfig(cluster: ClusterHandle, namespace: str) -> None:
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}
    out = subprocess.run(
        ["kubectl", "get", "nodes", "-o", "name"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("node/"), out.stdout
    manifest = json.dumps(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "via-kubectl"},
            "data": {"a": "1"},
        }
    )
    out = subprocess.run(
        ["kubectl", "apply", "-n", namespace, "-f", "-"],
        input=manifest,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "configmap/via-kubectl" in out.stdout


# --------------------------------------------------------------------------- pods


def test_pod_exit_zero_succeeds(core: Api, namespace: str) -> None:
    core.create_namespaced_pod(namespace, pod_manifest("ok", ["python3", "-c", "print('hello')"]))
    pod = wait_pod(core, namespace, "ok")
    assert pod.status.phase == "Succeeded"
    assert pod.spec.node_name
    assert pod.status.start_time is not None and pod.status.pod_ip
    term = terminated(pod)
    assert (term.exit_code, term.reason) == (0, "Completed")
    assert term.started_at <= term.finished_at
    sched = [c for c in pod.status.conditions if c.type == "PodScheduled"]
    assert sched and sched[0].status == "True"


def test_pod_exit_one_fails(core: Api, namespace: str) -> None:
    core.create_namespaced_pod(
        namespace, pod_manifest("bad", ["sh", "-c", "echo oops >&2; exit 1"])
    )
    pod = wait_pod(core, namespace, "bad")
    assert pod.status.phase == "Failed"
    term = terminated(pod)
    assert (term.exit_code, term.reason) == (1, "Error")


def test_termination_message_round_trip(core: Api, namespace: str) -> None:
    record = json.dumps({"tile": 7, "outcome": "ok", "peak": 123})
    # 1. the default path written by a shell; 2. a custom path written by python
    #    through $GISJOB_RESULT_PATH-style indirection; 3. oversized → 4096 bytes.
    core.create_namespaced_pod(
        namespace,
        pod_manifest("msg", ["sh", "-c", f"printf '%s' '{record}' > /dev/termination-log"]),
    )
    code = "import os,sys; open(sys.argv[1],'w').write('custom:'+os.environ['POD_NAME'])"
    core.create_namespaced_pod(
        namespace,
        pod_manifest(
            "msg-custom",
            ["python3", "-c", code, "/tmp/gisjob/result.json"],
            termination_message_path="/tmp/gisjob/result.json",
            env=[{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
        ),
    )
    big = "import sys; open('/dev/termination-log','w').write('x'*5000); sys.exit(3)"
    core.create_namespaced_pod(namespace, pod_manifest("msg-big", ["python3", "-c", big]))

    assert terminated(wait_pod(core, namespace, "msg")).message == record
    assert terminated(wait_pod(core, namespace, "msg-custom")).message == "custom:msg-custom"
    pod = wait_pod(core, namespace, "msg-big")
    term = terminated(pod)
    assert pod.status.phase == "Failed" and term.exit_code == 3
    assert term.message == "x" * 4096


def test_volumes_env_and_path_translation(core: Api, namespace: str) -> None:
    core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "job"}, "data": {"job.yaml": "tiles: 4\n"}}
    )
    script = (
        "cat /etc/gisjob/job.yaml > /dev/termination-log; "
        "echo data > /scratch/f; cat /scratch/f >> /dev/termination-log; "
        'echo "$POD_NAME $POD_NS $MEM $REF $(pwd)" >> /dev/termination-log'
    )
    manifest = pod_manifest(
        "vols",
        ["sh", "-c", script],
        memory="64Mi",
        volumes=[
            {"name": "job", "configMap": {"name": "job"}},
            {"name": "scratch", "emptyDir": {}},
        ],
        mounts=[
            {"name": "job", "mountPath": "/etc/gisjob", "readOnly": True},
            {"name": "scratch", "mountPath": "/scratch"},
        ],
        env=[
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "POD_NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {
                "name": "MEM",
                "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}},
            },
            {"name": "REF", "value": "$(POD_NAME)-x"},
        ],
    )
    manifest["spec"]["containers"][0]["workingDir"] = "/scratch"
    core.create_namespaced_pod(namespace, manifest)
    pod = wait_pod(core, namespace, "vols")
    term = terminated(pod)
    assert pod.status.phase == "Succeeded", term
    lines = (term.message or "").splitlines()
    assert lines[:2] == ["tiles: 4", "data"], lines
    name, ns, mem, ref, cwd = lines[2].split()
    assert (name, ns, mem, ref) == ("vols", namespace, "64", "vols-x")
    assert cwd.endswith("scratch")


def test_pod_waits_for_missing_configmap(core: Api, namespace: str) -> None:
    manifest = pod_manifest(
        "waits",
        ["sh", "-c", "cat /cfg/v > /dev/termination-log"],
        volumes=[{"name": "cfg", "configMap": {"name": "late"}}],
        mounts=[{"name": "cfg", "mountPath": "/cfg"}],
    )
    core.create_namespaced_pod(namespace, manifest)

    def waiting() -> Obj:
        pod = core.read_namespaced_pod("waits", namespace)
        statuses = pod.status.container_statuses or []
        return pod if statuses and statuses[0].state.waiting else None

    pod = wait_for(waiting, 30, what="waiting container")
    assert pod.status.phase == "Pending"
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "late"}, "data": {"v": "1"}})
    pod = wait_pod(core, namespace, "waits", timeout=90)
    assert pod.status.phase == "Succeeded"
    assert terminated(pod).message == "1"


def test_unschedulable_pod_stays_pending(core: Api, namespace: str) -> None:
    core.create_namespaced_pod(namespace, pod_manifest("huge", ["true"], memory="100000Gi"))

    def unschedulable() -> Obj:
        pod = core.read_namespaced_pod("huge", namespace)
        for c in pod.status.conditions or []:
            if c.type == "PodScheduled" and c.status == "False":
                return c
        return None

    cond = wait_for(unschedulable, 30, what="PodScheduled=False")
    assert cond.reason == "Unschedulable"
    assert "Insufficient memory" in cond.message
    pod = core.read_namespaced_pod("huge", namespace)
    assert pod.status.phase == "Pending" and not pod.spec.node_name
    events = wait_for(
        lambda: [
            e
            for e in core.list_namespaced_event(namespace).items
            if e.reason == "FailedScheduling" and e.involved_object.name == "huge"
        ],
        15,
        what="FailedScheduling event",
    )
    assert "Insufficient memory" in events[0].message


@pytest.mark.cgroup
def test_memory_limit_oom_killed(cluster: ClusterHandle, core: Api, namespace: str) -> None:
    if cluster.is_dev:
        node = core.read_node(NODE_NAME)
        if node.metadata.annotations.get(MEMORY_ANNOTATION, "none") == "none":
            pytest.skip("no writable memory cgroup (v1 memory controller or v2 memory.max) here")
    hog = "x = b'\\x01' * (300 * 1024 * 1024); print(len(x))"
    core.create_namespaced_pod(
        namespace, pod_manifest("hog", ["python3", "-c", hog], memory="100Mi")
    )
    pod = wait_pod(core, namespace, "hog")
    term = terminated(pod)
    assert pod.status.phase == "Failed"
    assert (term.exit_code, term.reason) == (137, "OOMKilled")


def test_pod_deletion_kills_process(
    cluster: ClusterHandle, core: Api, namespace: str, tmp_path: Path
) -> None:
    if not cluster.is_dev:
        pytest.skip("checks local processes: dev cluster only")
    tmp_path.chmod(0o777)
    # Ignores SIGTERM: must be SIGKILLed after the 1 s grace period. ("$$$$": Kubernetes
    # turns "$$" into "$" in commands, like real kubelets do.)
    script = "trap '' TERM; echo $$$$ > /out/pid; while true; do sleep 0.2; done"
    core.create_namespaced_pod(
        namespace,
        pod_manifest(
            "sleeper",
            ["sh", "-c", script],
            grace=1,
            volumes=[{"name": "out", "hostPath": {"path": str(tmp_path), "type": "Directory"}}],
            mounts=[{"name": "out", "mountPath": "/out"}],
        ),
    )
    wait_pod(core, namespace, "sleeper", ("Running",))
    pid = int(wait_for(lambda: _read(tmp_path / "pid"), 20, what="pid file"))
    assert _alive(pid)
    t0 = time.monotonic()
    core.delete_namespaced_pod("sleeper", namespace)

    def deleted() -> bool:
        try:
            core.read_namespaced_pod("sleeper", namespace)
        except k8s.ApiException as e:
            return bool(e.status == 404)
        return False

    wait_for(deleted, 20, what="pod removed")
    assert time.monotonic() - t0 >= 0.9  # waited for the grace period
    wait_for(lambda: not _alive(pid), 5, what=f"pid {pid} gone")


def test_apiserver_restart_while_pod_runs(
    cluster: ClusterHandle, core: Api, namespace: str
) -> None:
    if cluster.dev is None:
        pytest.skip("restarts the API server: dev cluster only")
    core.create_namespaced_pod(
        namespace,
        pod_manifest("survivor", ["sh", "-c", "sleep 2; echo done > /dev/termination-log"]),
    )
    wait_pod(core, namespace, "survivor", ("Running",))
    # The pod finishes while the API server is down; the kubelet reports it afterwards.
    cluster.dev.restart_apiserver(downtime=3.0)
    pod = wait_pod(core, namespace, "survivor", timeout=60)
    term = terminated(pod)
    assert pod.status.phase == "Succeeded"
    assert (term.reason, (term.message or "").strip()) == ("Completed", "done")
    # and the kubelet still schedules + runs new pods after the restart
    name = unique("after")
    core.create_namespaced_pod(namespace, pod_manifest(name, ["true"]))
    assert wait_pod(core, namespace, name).status.phase == "Succeeded"


def _read(path: Path) -> str | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return text or None


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
