"""The pod policy (issue 17 #2): "create GisJob" must not mean "create any pod".

- each attack through ``spec.worker`` is refused by exactly one check, with the field named:
  a hostPath of ``/``, Secret volumes, projected service-account tokens, any image, any
  service account, another Secret through ``secretKeyRef`` or a CSI volume, user env over
  ``GISJOB_*``/``HOME``, ``mountPropagation``, mounts over gisjob's own paths;
- what a data job needs passes: PVC, configMap, emptyDir, generic and CSI ephemeral volumes,
  the default image, a listed registry or repository, the storage secret when configured, a
  listed service account, and every example job in ``deploy/examples``;
- the policy protects what the operator's pod builder actually adds (env, mounts, names);
- settings: the environment variables and ``gisjob-operator run``'s flags, their defaults,
  and a bad setting refused at startup naming its variable.
"""

from __future__ import annotations

import copy
import posixpath
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from gisjob_operator import admission
from gisjob_operator.admission import (
    AdmissionError,
    PodPolicy,
    PolicyError,
    check_job,
    image_allowed,
    violations,
)
from gisjob_operator.pods import (
    PodLaunch,
    build_finalizer_pod,
    build_planner_pod,
    build_worker_pod,
)
from gisjob_operator.settings import POLICY_ENV, OperatorSettings, pod_policy_from_env
from gisjob_worker import attempt
from gisjob_worker.errors import GisJobError
from gisjob_worker.spec import GisJob, WorkerSpec, parse_job

EXAMPLES = Path(__file__).resolve().parents[2] / "deploy" / "examples"
DEFAULT = PodPolicy()
STORAGE = PodPolicy(storage_secret="gisjob-storage")
DATA_VOLUME = {"name": "data", "persistentVolumeClaim": {"claimName": "gisjob-data"}}
DATA_MOUNT = {"name": "data", "mountPath": "/data"}


def make_job(**worker: Any) -> GisJob:
    doc = {
        "apiVersion": "gisjob.dev/v1alpha1",
        "kind": "GisJob",
        "metadata": {"name": "tenant-job", "namespace": "tenant-a"},
        "spec": {
            "input": {"uri": "/data/in.tif"},
            "operation": {"name": "scale", "params": {}},
            "output": {"uri": "/data/out"},
            "worker": copy.deepcopy(worker),
        },
    }
    return parse_job(doc, "tenant-a/tenant-job", check_operation=False)


def refused(job: GisJob, policy: PodPolicy, field: str, *needles: str) -> str:
    """The job is refused by exactly one violation, on ``field``; the message is one line."""
    found = violations(job, policy)
    assert len(found) == 1, found
    assert found[0].startswith(f"{field}: "), found[0]
    with pytest.raises(AdmissionError) as info:
        check_job(job, policy)
    message = str(info.value)
    assert message == found[0] and "\n" not in message
    for needle in needles:
        assert needle in message, message
    return message


# --------------------------------------------------------------------------- attacks


def test_host_path_of_the_node_root_is_refused() -> None:
    job = make_job(
        volumes=[DATA_VOLUME, {"name": "host", "hostPath": {"path": "/"}}],
        volumeMounts=[DATA_MOUNT, {"name": "host", "mountPath": "/host"}],
    )
    message = refused(job, DEFAULT, "spec.worker.volumes[1].hostPath")
    assert message == (
        "spec.worker.volumes[1].hostPath: volume type hostPath is not allowed "
        "(allowed: persistentVolumeClaim, configMap, emptyDir, ephemeral, csi)"
    )


@pytest.mark.parametrize("policy", [DEFAULT, STORAGE], ids=["no-storage-secret", "storage"])
def test_secret_volume_is_refused(policy: PodPolicy) -> None:
    job = make_job(
        volumes=[{"name": "creds", "secret": {"secretName": "db-creds"}}],
        volumeMounts=[{"name": "creds", "mountPath": "/creds"}],
    )
    refused(job, policy, "spec.worker.volumes[0].secret.secretName", "'db-creds'")


@pytest.mark.parametrize("policy", [DEFAULT, STORAGE], ids=["no-storage-secret", "storage"])
@pytest.mark.parametrize("secret", [{}, {"secretName": ""}], ids=["missing", "empty"])
def test_secret_volume_without_a_name_is_refused(policy: PodPolicy, secret: Any) -> None:
    job = make_job(volumes=[{"name": "creds", "secret": secret}])
    refused(job, policy, "spec.worker.volumes[0].secret.secretName")


def test_projected_service_account_token_is_refused() -> None:
    token = {"serviceAccountToken": {"path": "token", "audience": "https://kubernetes.default"}}
    job = make_job(
        volumes=[{"name": "tok", "projected": {"sources": [token]}}],
        volumeMounts=[{"name": "tok", "mountPath": "/var/run/secrets/tokens"}],
    )
    refused(job, STORAGE, "spec.worker.volumes[0].projected", "volume type projected")


def test_two_volume_types_in_one_volume_are_refused() -> None:
    """An allowed type does not smuggle a second one in."""
    volume = {**DATA_VOLUME, "hostPath": {"path": "/"}}
    job = make_job(volumes=[volume])
    refused(
        job,
        DEFAULT,
        "spec.worker.volumes[0]",
        "more than one volume type (hostPath, persistentVolumeClaim)",
    )


def test_reserved_volume_name_is_refused() -> None:
    job = make_job(volumes=[{"name": "scratch", "emptyDir": {}}])
    refused(job, DEFAULT, "spec.worker.volumes[0].name", "reserved")


@pytest.mark.parametrize(
    "image",
    [
        "evil.example/miner:latest",
        "gisjob-miner:1",  # the prefix is the repository "gisjob", not a string prefix
        "gisjob",  # no tag: not "gisjob:" anything
        "evil.example/gisjob:0.1.0",
        "gisjob:0.1.0 ",  # not a valid reference
    ],
)
def test_arbitrary_image_is_refused(image: str) -> None:
    message = refused(make_job(image=image), DEFAULT, "spec.worker.image", repr(image))
    assert message.endswith("(allowed: gisjob:*)")


@pytest.mark.parametrize(
    "image",
    [
        "registry.example/gisx/worker:1",
        "registry.example.evil.com/gis/worker:1",
        "registry.example/gis",
        "evil.example/registry.example/gis/worker:1",
    ],
)
def test_registry_prefix_is_not_a_string_prefix(image: str) -> None:
    policy = PodPolicy(allowed_images=("registry.example/gis/",))
    refused(make_job(image=image), policy, "spec.worker.image")


def test_exact_image_allows_only_itself() -> None:
    policy = PodPolicy(allowed_images=("registry.example/gis/worker:1.2",))
    assert violations(make_job(image="registry.example/gis/worker:1.2"), policy) == []
    for image in ("registry.example/gis/worker:1.2.3", "registry.example/gis/worker:1"):
        refused(make_job(image=image), policy, "spec.worker.image")


def test_service_account_is_refused() -> None:
    job = make_job(serviceAccountName="cluster-admin-sa")
    message = refused(job, DEFAULT, "spec.worker.serviceAccountName", "'cluster-admin-sa'")
    assert message.endswith("(allowed: the namespace default)")
    listed = PodPolicy(allowed_service_accounts=("gis-reader",))
    message = refused(job, listed, "spec.worker.serviceAccountName")
    assert message.endswith("(allowed: the namespace default, gis-reader)")


@pytest.mark.parametrize("policy", [DEFAULT, STORAGE], ids=["no-storage-secret", "storage"])
def test_env_from_another_secret_is_refused(policy: PodPolicy) -> None:
    ref = {"secretKeyRef": {"name": "db-creds", "key": "password"}}
    job = make_job(env=[{"name": "AWS_REGION", "value": "x"}, {"name": "PW", "valueFrom": ref}])
    message = refused(job, policy, "spec.worker.env[1].valueFrom.secretKeyRef.name", "db-creds")
    expected = "'gisjob-storage' may be referenced" if policy.storage_secret else "no storage"
    assert expected in message


@pytest.mark.parametrize(
    "name", ["GISJOB_JOB", "GISJOB_TILE", "GISJOB_JOB_FILE", "GISJOB_RESULT_PATH", "HOME"]
)
def test_env_over_gisjobs_own_is_refused(name: str) -> None:
    job = make_job(env=[{"name": name, "value": "x"}])
    refused(job, DEFAULT, "spec.worker.env[0].name", name, "cannot be set or overridden")


def test_env_from_any_other_source_is_refused() -> None:
    source = {"fileKeyRef": {"volumeName": "data", "path": "x", "key": "k"}}
    job = make_job(env=[{"name": "X", "valueFrom": source}])
    refused(job, DEFAULT, "spec.worker.env[0].valueFrom.fileKeyRef")


def test_env_without_a_name_is_refused() -> None:
    refused(make_job(env=[{"value": "x"}]), DEFAULT, "spec.worker.env[0].name")


@pytest.mark.parametrize("propagation", ["Bidirectional", "HostToContainer"])
def test_mount_propagation_is_refused(propagation: str) -> None:
    mount = {**DATA_MOUNT, "mountPropagation": propagation}
    job = make_job(volumes=[DATA_VOLUME], volumeMounts=[mount])
    refused(job, DEFAULT, "spec.worker.volumeMounts[0].mountPropagation", propagation)


@pytest.mark.parametrize(
    ("path", "reserved"),
    [
        ("/tmp", "/tmp"),
        ("/tmp/", "/tmp"),
        ("/dev/termination-log", "/dev/termination-log"),
        ("/dev", "/dev/termination-log"),
        ("/etc/gisjob", "/etc/gisjob"),
        ("/etc", "/etc/gisjob"),
        ("/data/../tmp", "/tmp"),
        ("//tmp", "/tmp"),
    ],
)
def test_mount_over_gisjobs_own_paths_is_refused(path: str, reserved: str) -> None:
    job = make_job(volumes=[DATA_VOLUME], volumeMounts=[{"name": "data", "mountPath": path}])
    refused(job, DEFAULT, "spec.worker.volumeMounts[0].mountPath", f"overlaps {reserved} (")


@pytest.mark.parametrize("path", ["/tmp/data", "/etc/gisjob-data", "/data/tmp", "/devices"])
def test_mounts_that_hide_nothing_of_gisjobs_are_allowed(path: str) -> None:
    """A data volume below the scratch folder (the dev cluster keeps data under /tmp) or
    beside a reserved path hides nothing gisjob needs."""
    job = make_job(volumes=[DATA_VOLUME], volumeMounts=[{"name": "data", "mountPath": path}])
    assert violations(job, DEFAULT) == []


def test_mount_over_the_root_overlaps_everything() -> None:
    job = make_job(volumes=[DATA_VOLUME], volumeMounts=[{"name": "data", "mountPath": "/"}])
    found = violations(job, DEFAULT)
    assert len(found) == len(admission.RESERVED_PATHS)
    assert all(f.startswith("spec.worker.volumeMounts[0].mountPath: / overlaps") for f in found)


def test_relative_mount_path_is_refused() -> None:
    job = make_job(volumes=[DATA_VOLUME], volumeMounts=[{"name": "data", "mountPath": "tmp"}])
    refused(job, DEFAULT, "spec.worker.volumeMounts[0].mountPath", "not an absolute path")


@pytest.mark.parametrize("policy", [DEFAULT, STORAGE], ids=["no-storage-secret", "storage"])
def test_csi_secret_of_another_name_is_refused(policy: PodPolicy) -> None:
    csi = {"driver": "secrets-store.csi.k8s.io", "nodePublishSecretRef": {"name": "vault"}}
    job = make_job(volumes=[{"name": "kv", "csi": csi}])
    refused(job, policy, "spec.worker.volumes[0].csi.nodePublishSecretRef.name", "'vault'")


def test_volume_types_the_admin_did_not_list_are_refused() -> None:
    policy = PodPolicy(allowed_volume_types=("persistentVolumeClaim",))
    job = make_job(volumes=[DATA_VOLUME, {"name": "cache", "emptyDir": {}}])
    message = refused(job, policy, "spec.worker.volumes[1].emptyDir")
    assert message.endswith("(allowed: persistentVolumeClaim)")
    nothing = PodPolicy(allowed_volume_types=())
    refused(
        make_job(volumes=[DATA_VOLUME]), nothing, "spec.worker.volumes[0].persistentVolumeClaim"
    )


def test_volume_without_a_source_is_an_empty_dir() -> None:
    """The API server defaults a volume without a source to emptyDir: so does the policy."""
    job = make_job(volumes=[{"name": "cache"}])
    assert violations(job, DEFAULT) == []
    refused(job, PodPolicy(allowed_volume_types=()), "spec.worker.volumes[0].emptyDir")


def test_every_violation_is_counted_in_one_line() -> None:
    job = make_job(
        image="evil.example/miner:latest",
        serviceAccountName="cluster-admin-sa",
        volumes=[{"name": "host", "hostPath": {"path": "/"}}],
        env=[{"name": "GISJOB_TILE", "value": "i0000-r0000c0000"}],
    )
    found = violations(job, DEFAULT)
    assert [f.split(":", 1)[0] for f in found] == [
        "spec.worker.image",
        "spec.worker.serviceAccountName",
        "spec.worker.volumes[0].hostPath",
        "spec.worker.env[0].name",
    ]
    with pytest.raises(AdmissionError, match=r"^spec\.worker\.image: .* \(and 3 more\)$"):
        check_job(job, DEFAULT)


def test_admission_error_is_a_permanent_gisjob_error() -> None:
    assert issubclass(AdmissionError, GisJobError)
    assert AdmissionError.reason == admission.REASON == "Forbidden"
    assert AdmissionError.exit_code == 2


# --------------------------------------------------------------------------- allowed


def test_a_data_job_passes_the_default_policy() -> None:
    job = make_job(
        image="gisjob:0.1.0",
        imagePullPolicy="Always",
        serviceAccountName="default",
        volumes=[
            DATA_VOLUME,
            {"name": "config", "configMap": {"name": "gis-config"}},
            {"name": "cache", "emptyDir": {"sizeLimit": "1Gi"}},
            {
                "name": "work",
                "ephemeral": {
                    "volumeClaimTemplate": {
                        "spec": {
                            "accessModes": ["ReadWriteOnce"],
                            "resources": {"requests": {"storage": "1Gi"}},
                        }
                    }
                },
            },
            {"name": "inline", "csi": {"driver": "inline.storage.example", "readOnly": True}},
        ],
        volumeMounts=[
            DATA_MOUNT,
            {"name": "config", "mountPath": "/etc/gis", "readOnly": True},
            {"name": "cache", "mountPath": "/tmpdata"},  # beside /tmp, not in it
            {"name": "work", "mountPath": "/work", "mountPropagation": "None"},
            {"name": "inline", "mountPath": "/inline"},
        ],
        env=[
            {"name": "AWS_REGION", "value": "eu-west-1"},
            {"name": "GISJOB", "value": "not gisjob's own"},
            {"name": "BUCKET", "valueFrom": {"configMapKeyRef": {"name": "gis", "key": "b"}}},
            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        ],
        nodeSelector={"kubernetes.io/os": "linux"},
    )
    assert violations(job, DEFAULT) == []
    check_job(job, DEFAULT)


def test_the_default_image_passes() -> None:
    assert violations(make_job(), DEFAULT) == []
    assert make_job().spec.worker.image == WorkerSpec().image
    assert image_allowed(WorkerSpec().image, admission.DEFAULT_ALLOWED_IMAGES)


@pytest.mark.parametrize(
    ("allowed", "image"),
    [
        ("registry.example/gis/", "registry.example/gis/worker:1.2.3"),
        ("registry.example/gis/", "registry.example/gis/team/worker@sha256:" + "a" * 64),
        ("registry.example:5000/", "registry.example:5000/worker:1"),
        ("registry.example/gis/worker:", "registry.example/gis/worker:2"),
        ("registry.example/gis/worker:", "registry.example/gis/worker@sha256:" + "b" * 64),
        ("gisjob:", "gisjob:0.2.0"),
    ],
)
def test_a_listed_registry_or_repository_passes(allowed: str, image: str) -> None:
    policy = PodPolicy(allowed_images=("gisjob:", allowed))
    assert violations(make_job(image=image), policy) == []


def test_the_storage_secret_passes_when_configured() -> None:
    ref = {"secretKeyRef": {"name": "gisjob-storage", "key": "AWS_SECRET_ACCESS_KEY"}}
    csi = {"driver": "secrets-store.csi.k8s.io", "nodePublishSecretRef": {"name": "gisjob-storage"}}
    job = make_job(
        volumes=[
            {"name": "key", "secret": {"secretName": "gisjob-storage"}},
            {"name": "kv", "csi": csi},
        ],
        volumeMounts=[{"name": "key", "mountPath": "/var/run/gcs", "readOnly": True}],
        env=[{"name": "AWS_SECRET_ACCESS_KEY", "valueFrom": ref}],
    )
    assert violations(job, STORAGE) == []
    # ... and not without it
    assert [f.split(":", 1)[0] for f in violations(job, DEFAULT)] == [
        "spec.worker.volumes[0].secret.secretName",
        "spec.worker.volumes[1].csi.nodePublishSecretRef.name",
        "spec.worker.env[0].valueFrom.secretKeyRef.name",
    ]


def storage_job(storage: dict[str, Any], **worker: Any) -> GisJob:
    """A job on object storage (no volumes) with ``spec.storage``."""
    job = make_job(**worker)
    doc = job.to_document()
    doc["spec"]["input"] = {"uri": "s3://bucket/in.tif"}
    doc["spec"]["output"] = {"uri": "s3://bucket/out"}
    doc["spec"]["storage"] = storage
    return parse_job(doc, "tenant-a/tenant-job", check_operation=False)


@pytest.mark.parametrize("policy", [DEFAULT, STORAGE], ids=["no-storage-secret", "storage"])
def test_storage_secret_other_than_the_configured_one_is_refused(policy: PodPolicy) -> None:
    """``spec.storage.secretName`` becomes every pod's environment (envFrom): only the
    operator's storage Secret may be named there."""
    job = storage_job({"secretName": "db-creds"})
    message = refused(job, policy, "spec.storage.secretName", "'db-creds'")
    if policy.storage_secret:
        assert message == (
            "spec.storage.secretName: secret 'db-creds' is not allowed "
            "(only the storage secret 'gisjob-storage' may be referenced)"
        )
    else:
        assert message.endswith("(no storage secret is configured)")


def test_the_configured_storage_secret_passes_as_spec_storage() -> None:
    job = storage_job({"secretName": "gisjob-storage", "requesterPays": True})
    assert violations(job, STORAGE) == []
    check_job(job, STORAGE)
    # no Secret named: nothing to admit, whatever the policy
    for policy in (DEFAULT, STORAGE):
        assert violations(storage_job({}), policy) == []
        assert violations(storage_job({"requesterPays": True}), policy) == []


def test_the_storage_secret_is_counted_after_the_worker_violations() -> None:
    """One line, field order: spec.worker comes before spec.storage."""
    job = storage_job({"secretName": "db-creds"}, image="evil:latest")
    found = violations(job, STORAGE)
    assert [f.split(":", 1)[0] for f in found] == ["spec.worker.image", "spec.storage.secretName"]
    with pytest.raises(AdmissionError, match=r"^spec\.worker\.image: .* \(and 1 more\)$"):
        check_job(job, STORAGE)


def test_the_admitted_storage_secret_is_what_every_pod_gets() -> None:
    """What the policy admits is what the pods carry: the Secret named in
    spec.storage is exactly the envFrom of every pod built for the job."""
    job = storage_job({"secretName": "gisjob-storage"})
    for pod in pods_of(job):
        (container,) = pod["spec"]["containers"]
        assert container["envFrom"] == [{"secretRef": {"name": "gisjob-storage"}}]
        refs = [v["secret"]["secretName"] for v in pod["spec"]["volumes"] if "secret" in v]
        assert refs == []


def test_a_listed_service_account_passes() -> None:
    job = make_job(serviceAccountName="gis-reader")
    assert violations(job, PodPolicy(allowed_service_accounts=("gis-reader",))) == []


def example_jobs() -> Iterator[tuple[str, dict[str, Any]]]:
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "GisJob":
                yield f"{path.name}:{doc['metadata']['name']}", doc


def test_the_example_jobs_pass_the_default_policy() -> None:
    found = list(example_jobs())
    assert len(found) >= 4, [name for name, _ in found]
    for name, doc in found:
        job = parse_job(doc, name, check_operation=False)
        assert violations(job, DEFAULT) == [], name
        assert job.spec.worker.volumes, name  # they do use a data volume


# --------------------------------------------------------------------------- what pods hold


def pods_of(job: GisJob) -> list[dict[str, Any]]:
    launch = PodLaunch(
        tile="i0000-r0000c0000",
        attempt=2,
        memory=512 * 1024**2,
        chunk_scale=0.5,
        strategy="shrinkChunks",
        history=({"a": 1, "e": 3},),
    )
    return [
        build_worker_pod(job, "uid", "tenant-a", launch, "0123456789", ("raster", 1)),
        build_planner_pod(job, "uid", "tenant-a", "abc", 0, 256 * 1024**2),
        build_finalizer_pod(job, "uid", "tenant-a", "0123456789", 0, 256 * 1024**2, "0", ""),
    ]


def test_every_env_var_the_operator_sets_is_protected() -> None:
    """A user variable of any name the operator puts into a pod is refused."""
    for pod in pods_of(make_job()):
        (container,) = pod["spec"]["containers"]
        names = [v["name"] for v in container["env"]]
        assert "GISJOB_JOB_FILE" in names and "HOME" in names
        for name in names:
            refused(
                make_job(env=[{"name": name, "value": "x"}]), DEFAULT, "spec.worker.env[0].name"
            )


def test_every_path_and_volume_the_operator_adds_is_reserved() -> None:
    """The operator's own mounts, termination message and volumes cannot be covered or
    shadowed by a user volume; the job document's mount (gisjob_worker.attempt) is one."""
    reserved = set(admission.RESERVED_PATHS)
    assert attempt.TERMINATION_LOG in reserved
    assert posixpath.dirname(attempt.MOUNTED_JOB) in reserved
    for pod in pods_of(make_job()):
        (container,) = pod["spec"]["containers"]
        assert container["terminationMessagePath"] in reserved
        for mount in container["volumeMounts"]:
            assert mount["mountPath"] in reserved
        for volume in pod["spec"]["volumes"]:
            refused(make_job(volumes=[volume]), DEFAULT, "spec.worker.volumes[0].name")


def test_admitted_user_settings_reach_the_pod_unchanged() -> None:
    """What the policy checked is what the pod gets (no second source of volumes or env)."""
    job = make_job(volumes=[DATA_VOLUME], volumeMounts=[DATA_MOUNT])
    check_job(job, DEFAULT)
    for pod in pods_of(job):
        spec = pod["spec"]
        # after gisjob's own: the scratch volume and the job document
        assert spec["volumes"][2:] == [DATA_VOLUME]
        assert spec["containers"][0]["volumeMounts"][2:] == [DATA_MOUNT]
        assert spec["automountServiceAccountToken"] is False
        assert "serviceAccountName" not in spec


# --------------------------------------------------------------------------- the policy


@pytest.mark.parametrize(
    ("kwargs", "setting", "needle"),
    [
        ({"allowed_images": ()}, "allowed_images", "at least one"),
        ({"allowed_images": ("Bad Image",)}, "allowed_images", "'Bad Image'"),
        ({"allowed_images": ("https://registry.example/",)}, "allowed_images", "https"),
        ({"allowed_volume_types": ("secret",)}, "allowed_volume_types", "storage secret"),
        ({"allowed_volume_types": ("projected",)}, "allowed_volume_types", "tokens"),
        ({"allowed_volume_types": ("hostpath",)}, "allowed_volume_types", "'hostpath'"),
        ({"allowed_service_accounts": ("Admin",)}, "allowed_service_accounts", "'Admin'"),
        ({"storage_secret": "s3 creds"}, "storage_secret", "'s3 creds'"),
    ],
)
def test_invalid_policies_are_refused(kwargs: dict[str, Any], setting: str, needle: str) -> None:
    with pytest.raises(PolicyError, match=needle) as info:
        PodPolicy(**kwargs)
    assert info.value.setting == setting


def test_an_admin_may_list_host_paths() -> None:
    """The cluster admin's decision (a dev cluster): listed, hostPath passes."""
    policy = PodPolicy(allowed_volume_types=("hostPath",))
    job = make_job(volumes=[{"name": "data", "hostPath": {"path": "/srv/gis"}}])
    assert violations(job, policy) == []


# --------------------------------------------------------------------------- settings


@pytest.fixture
def policy_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in POLICY_ENV.values():
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_settings_default_to_the_default_policy(policy_env: pytest.MonkeyPatch) -> None:
    assert OperatorSettings.from_env().pod_policy == DEFAULT == OperatorSettings().pod_policy
    assert DEFAULT.allowed_images == ("gisjob:",)
    assert DEFAULT.allowed_volume_types == (
        "persistentVolumeClaim",
        "configMap",
        "emptyDir",
        "ephemeral",
        "csi",
    )
    assert DEFAULT.allowed_service_accounts == () and DEFAULT.storage_secret == ""


def test_settings_from_the_environment(policy_env: pytest.MonkeyPatch) -> None:
    policy_env.setenv("GISJOB_ALLOWED_IMAGES", "registry.example/gis/, gisjob:")
    policy_env.setenv("GISJOB_ALLOWED_VOLUME_TYPES", "persistentVolumeClaim,nfs")
    policy_env.setenv("GISJOB_ALLOWED_SERVICE_ACCOUNTS", "gis-reader,gis-writer")
    policy_env.setenv("GISJOB_STORAGE_SECRET", "gisjob-storage")
    assert OperatorSettings.from_env().pod_policy == PodPolicy(
        allowed_images=("registry.example/gis/", "gisjob:"),
        allowed_volume_types=("persistentVolumeClaim", "nfs"),
        allowed_service_accounts=("gis-reader", "gis-writer"),
        storage_secret="gisjob-storage",
    )
    policy_env.setenv("GISJOB_ALLOWED_VOLUME_TYPES", "")  # set but empty: no volumes at all
    assert pod_policy_from_env().allowed_volume_types == ()


@pytest.mark.parametrize(
    ("name", "value", "needle"),
    [
        ("GISJOB_ALLOWED_IMAGES", "", "at least one"),
        ("GISJOB_ALLOWED_VOLUME_TYPES", "emptyDir,secret", "secret cannot be listed"),
        ("GISJOB_ALLOWED_SERVICE_ACCOUNTS", "Not_An_Account", "Not_An_Account"),
        ("GISJOB_STORAGE_SECRET", "a/b", "'a/b'"),
    ],
)
def test_a_bad_setting_names_its_variable(
    policy_env: pytest.MonkeyPatch, name: str, value: str, needle: str
) -> None:
    policy_env.setenv(name, value)
    with pytest.raises(ValueError, match=needle) as info:
        OperatorSettings.from_env()
    assert str(info.value).startswith(f"{name}: ")


def run_operator(policy_env: pytest.MonkeyPatch, *flags: str) -> tuple[Any, PodPolicy | None]:
    """``gisjob-operator run`` with ``kopf.run`` replaced: the policy it would run with."""
    import kopf

    from gisjob_operator.cli import cli

    for name in ("GISJOB_NAMESPACES", "GISJOB_METRICS_PORT", "GISJOB_LIVENESS_PORT"):
        policy_env.delenv(name, raising=False)  # restored after the test (run sets them)
    for name in ("GISJOB_STATUS_INTERVAL", "GISJOB_KEEP_FAILED_PODS", "GISJOB_BACKOFF_BASE"):
        policy_env.delenv(name, raising=False)
    seen: list[PodPolicy] = []
    policy_env.setattr(kopf, "run", lambda **_: seen.append(pod_policy_from_env()))
    result = CliRunner().invoke(cli, ["run", *flags])
    return result, (seen[0] if seen else None)


def test_run_flags_set_the_policy(policy_env: pytest.MonkeyPatch) -> None:
    result, policy = run_operator(
        policy_env,
        "--allowed-image=registry.example/gis/",
        "--allowed-image=gisjob:",
        "--allowed-volume-type=persistentVolumeClaim",
        "--allowed-service-account=gis-reader",
        "--storage-secret=gisjob-storage",
    )
    assert result.exit_code == 0, result.output
    assert policy == PodPolicy(
        allowed_images=("registry.example/gis/", "gisjob:"),
        allowed_volume_types=("persistentVolumeClaim",),
        allowed_service_accounts=("gis-reader",),
        storage_secret="gisjob-storage",
    )


def test_run_without_flags_keeps_the_environment(policy_env: pytest.MonkeyPatch) -> None:
    policy_env.setenv("GISJOB_ALLOWED_VOLUME_TYPES", "persistentVolumeClaim")
    policy_env.setenv("GISJOB_STORAGE_SECRET", "gisjob-storage")
    result, policy = run_operator(policy_env)
    assert result.exit_code == 0, result.output
    assert policy == PodPolicy(
        allowed_volume_types=("persistentVolumeClaim",), storage_secret="gisjob-storage"
    )


def test_run_refuses_a_bad_policy_before_starting(policy_env: pytest.MonkeyPatch) -> None:
    result, policy = run_operator(policy_env, "--allowed-volume-type=secret")
    assert result.exit_code == 2 and policy is None
    assert "GISJOB_ALLOWED_VOLUME_TYPES: secret cannot be listed" in result.output
