"""The GisJob CRD: generated from the spec model, committed twice, structurally valid.

- drift: ``deploy/crd.yaml`` and the chart's copy are byte-identical to ``crd_yaml()``;
- names, scope, the status subresource and the printer columns ``kubectl get gj`` shows;
- the schema: required fields, enums, minimums, the headroom range, quantities as
  ``x-kubernetes-int-or-string``, free-form maps preserved;
- Kubernetes' structural-schema rules (no ``$ref``, ``title``, ``default``,
  ``additionalProperties: false``; a type everywhere; every object says what it holds);
- the schema, read as JSON Schema, accepts the shipped examples and rejects what it claims
  to reject.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from gisjob_operator import crd as crd_mod
from gisjob_operator.cli import cli
from gisjob_operator.crd import build_crd, crd_yaml, openapi_schema
from gisjob_worker.quantity import QUANTITY_PATTERN
from gisjob_worker.spec import HEADROOM_MAX, HEADROOM_MIN, GisJobSpec

ROOT = Path(__file__).resolve().parents[2]
DEPLOY_CRD = ROOT / "deploy" / "crd.yaml"
CHART_CRD = ROOT / "charts" / "gisjob" / "crds" / "gisjob.dev_gisjobs.yaml"
EXAMPLES = ROOT / "deploy" / "examples"
REGENERATE = (
    "run `gisjob-operator crd > deploy/crd.yaml` and copy it to the chart: "
    "`cp deploy/crd.yaml charts/gisjob/crds/gisjob.dev_gisjobs.yaml`"
)
FORBIDDEN_KEYS = ("$ref", "$defs", "definitions", "title", "default", "allOf", "oneOf", "not")


# ------------------------------------------------------------------------------- helpers


def assert_no_drift(path: Path, expected: str) -> None:
    """The committed file is exactly what the generator produces (bytes, header included)."""
    rel = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    assert path.is_file(), f"{rel} is missing: {REGENERATE}"
    actual = path.read_text(encoding="utf-8")
    if actual != expected:
        diff = next(
            (
                f"first difference at line {n}: {a!r} != {b!r}"
                for n, (a, b) in enumerate(
                    zip(actual.splitlines(), expected.splitlines(), strict=False), 1
                )
                if a != b
            ),
            f"{len(actual.splitlines())} lines committed, {len(expected.splitlines())} generated",
        )
        raise AssertionError(f"{rel} drifted from the GisJob spec model ({diff}); {REGENERATE}")


def walk(node: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema node (dict) with a readable path, depth first."""
    if not isinstance(node, dict):
        return
    yield path or "/", node
    for key, child in (node.get("properties") or {}).items():
        yield from walk(child, f"{path}/{key}")
    if isinstance(node.get("items"), dict):
        yield from walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk(node["additionalProperties"], f"{path}/*")
    for i, option in enumerate(node.get("anyOf") or []):
        yield from walk(option, f"{path}|anyOf{i}")


def all_keys(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield k
            if k in ("properties",):  # property names are data, not schema keywords
                for child in v.values():
                    yield from all_keys(child)
            else:
                yield from all_keys(v)
    elif isinstance(node, list):
        for item in node:
            yield from all_keys(item)


def as_json_schema(node: Any) -> Any:
    """The structural schema as plain JSON Schema: ``nullable`` → also null; the
    Kubernetes extensions dropped (int-or-string keeps its anyOf, the pattern applies to
    strings only in JSON Schema too); preserve-unknown-fields is JSON Schema's default."""
    if isinstance(node, list):
        return [as_json_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {
        k: as_json_schema(v) if k != "properties" else {p: as_json_schema(s) for p, s in v.items()}
        for k, v in node.items()
        if not k.startswith("x-kubernetes-") and k != "nullable"
    }
    if node.get("nullable"):
        out = {"anyOf": [out, {"type": "null"}]}
    return out


@pytest.fixture(scope="module")
def crd() -> dict[str, Any]:
    return build_crd()


@pytest.fixture(scope="module")
def version(crd: dict[str, Any]) -> dict[str, Any]:
    versions: list[dict[str, Any]] = crd["spec"]["versions"]
    assert len(versions) == 1
    return versions[0]


@pytest.fixture(scope="module")
def root(version: dict[str, Any]) -> dict[str, Any]:
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


@pytest.fixture(scope="module")
def spec(root: dict[str, Any]) -> dict[str, Any]:
    node: dict[str, Any] = root["properties"]["spec"]
    return node


@pytest.fixture(scope="module")
def validator(root: dict[str, Any]) -> Any:
    """A JSON Schema validator of the CRD schema (jsonschema comes with kubernetes-validate,
    a dev dependency; these tests skip without it)."""
    jsonschema = pytest.importorskip("jsonschema")
    schema = as_json_schema(root)
    jsonschema.Draft4Validator.check_schema(schema)
    return jsonschema.Draft4Validator(schema)


def example_docs() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if isinstance(doc, dict) and doc.get("kind") == "GisJob":
                out.append((f"{path.name}:{doc['metadata']['name']}", doc))
    return out


_DELETE = object()
MINIMAL: dict[str, Any] = {
    "apiVersion": "gisjob.dev/v1alpha1",
    "kind": "GisJob",
    "metadata": {"name": "crd-unit"},
    "spec": {
        "input": {"uri": "/data/in.tif"},
        "operation": {"name": "scale", "params": {"scale": 0.0001}},
        "output": {"uri": "/data/out"},
    },
}


def with_spec(**changes: Any) -> dict[str, Any]:
    doc = copy.deepcopy(MINIMAL)
    for dotted, value in changes.items():
        node = doc["spec"]
        *parents, leaf = dotted.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        if value is _DELETE:
            node.pop(leaf)
        else:
            node[leaf] = value
    return doc


# --------------------------------------------------------------------------------- drift


@pytest.mark.parametrize("path", [DEPLOY_CRD, CHART_CRD], ids=["deploy", "chart"])
def test_committed_crd_matches_the_model(path: Path) -> None:
    assert_no_drift(path, crd_yaml())


def test_drift_message_says_how_to_regenerate(tmp_path: Path) -> None:
    stale = tmp_path / "crd.yaml"
    stale.write_text(crd_yaml().replace("minimum: 0.05", "minimum: 0.01"), encoding="utf-8")
    with pytest.raises(AssertionError) as info:
        assert_no_drift(stale, crd_yaml())
    message = str(info.value)
    assert "gisjob-operator crd > deploy/crd.yaml" in message
    assert "charts/gisjob/crds/gisjob.dev_gisjobs.yaml" in message
    assert "minimum: 0.01" in message  # points at the line that drifted
    with pytest.raises(AssertionError, match=re.escape("gisjob-operator crd > deploy/crd.yaml")):
        assert_no_drift(tmp_path / "missing.yaml", crd_yaml())


def test_cli_prints_exactly_the_generated_crd() -> None:
    result = CliRunner().invoke(cli, ["crd"])
    assert result.exit_code == 0, result.output
    assert result.output == crd_yaml()


def test_generation_is_deterministic_and_marked_generated() -> None:
    text = crd_yaml()
    assert text == crd_yaml()
    assert text.startswith("# Generated by `gisjob-operator crd`")
    assert "do not edit" in text.splitlines()[0]
    assert yaml.safe_load(text) == build_crd()


# ---------------------------------------------------------------------- names, columns


def test_names_group_version_and_scope(crd: dict[str, Any], version: dict[str, Any]) -> None:
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd["kind"] == "CustomResourceDefinition"
    assert crd["metadata"]["name"] == "gisjobs.gisjob.dev" == crd_mod.CRD_NAME
    spec = crd["spec"]
    assert spec["group"] == "gisjob.dev"
    assert spec["scope"] == "Namespaced"
    assert spec["names"] == {
        "kind": "GisJob",
        "listKind": "GisJobList",
        "plural": "gisjobs",
        "singular": "gisjob",
        "shortNames": ["gj"],
        "categories": ["gisjob"],
    }
    assert version["name"] == "v1alpha1"
    assert version["served"] is True
    assert version["storage"] is True


def test_status_subresource(version: dict[str, Any], root: dict[str, Any]) -> None:
    assert version["subresources"] == {"status": {}}
    status = root["properties"]["status"]
    assert status["type"] == "object"
    assert status["x-kubernetes-preserve-unknown-fields"] is True


def test_printer_columns(version: dict[str, Any]) -> None:
    columns = [(c["name"], c["type"], c["jsonPath"]) for c in version["additionalPrinterColumns"]]
    assert columns == [
        ("Phase", "string", ".status.phase"),
        ("Done/Tiles", "string", ".status.progress"),
        ("Peak memory", "string", ".status.memory.peakObserved"),
        ("Age", "date", ".metadata.creationTimestamp"),
    ]


# --------------------------------------------------------------------------------- schema


def test_top_level_schema(root: dict[str, Any]) -> None:
    assert root["type"] == "object"
    assert root["required"] == ["spec"]
    assert set(root["properties"]) == {"apiVersion", "kind", "metadata", "spec", "status"}
    assert root["properties"]["metadata"] == {"type": "object"}


def test_spec_required_fields(spec: dict[str, Any]) -> None:
    assert spec["type"] == "object"
    assert sorted(spec["required"]) == ["input", "operation", "output"]
    assert spec["properties"]["operation"]["required"] == ["name"]
    assert spec["properties"]["output"]["required"] == ["uri"]


def test_spec_properties_mirror_the_model(spec: dict[str, Any]) -> None:
    """Every field of the pydantic model (by its camelCase alias) is in the schema."""
    fields = {f.alias or name for name, f in GisJobSpec.model_fields.items()}
    assert set(spec["properties"]) == fields
    resources = spec["properties"]["resources"]["properties"]
    assert set(resources) == {"memory", "maxMemory", "memoryHeadroom", "gdalCacheMax", "cpu"}
    worker = spec["properties"]["worker"]["properties"]
    assert set(worker) == {
        "image",
        "imagePullPolicy",
        "serviceAccountName",
        "volumes",
        "volumeMounts",
        "env",
        "nodeSelector",
        "tolerations",
    }


def test_memory_headroom_range(spec: dict[str, Any]) -> None:
    headroom = spec["properties"]["resources"]["properties"]["memoryHeadroom"]
    assert headroom["type"] == "number"
    assert headroom["minimum"] == 0.05 == HEADROOM_MIN
    assert headroom["maximum"] == 1.0 == HEADROOM_MAX


def test_enums(spec: dict[str, Any]) -> None:
    props = spec["properties"]
    assert props["output"]["properties"]["format"]["enum"] == ["COG", "GTiff", "GeoParquet", "GPKG"]
    assert props["output"]["properties"]["format"]["nullable"] is True
    assert props["retry"]["properties"]["onOutOfMemory"]["items"]["enum"] == [
        "shrinkChunks",
        "split",
        "grow",
    ]
    assert props["worker"]["properties"]["imagePullPolicy"]["enum"] == [
        "Always",
        "IfNotPresent",
        "Never",
    ]


def test_minimums(spec: dict[str, Any]) -> None:
    props = spec["properties"]
    assert props["parallelism"]["minimum"] == 1
    assert props["tiling"]["properties"]["tileSize"]["minimum"] == 1
    assert props["tiling"]["properties"]["featuresPerTile"]["minimum"] == 1
    assert props["retry"]["properties"]["backoffLimit"]["minimum"] == 0
    assert props["ttlSecondsAfterFinished"]["minimum"] == 0
    assert props["input"]["properties"]["uris"]["minItems"] == 1
    assert props["operation"]["properties"]["name"]["minLength"] == 1


@pytest.mark.parametrize("field", ["memory", "maxMemory", "gdalCacheMax"])
def test_quantities_are_int_or_string(spec: dict[str, Any], field: str) -> None:
    node = spec["properties"]["resources"]["properties"][field]
    assert node["x-kubernetes-int-or-string"] is True
    assert node["anyOf"] == [{"type": "integer"}, {"type": "string"}]
    assert node["pattern"] == QUANTITY_PATTERN
    assert "type" not in node  # int-or-string nodes must not carry a type
    assert node.get("nullable", False) is (field != "gdalCacheMax")


def test_quantity_pattern_accepts_kubernetes_memory_notation() -> None:
    pattern = re.compile(QUANTITY_PATTERN)
    for ok in ("1Gi", "512Mi", "1.5G", "1000", "64Ki", "2Ti", "1E", "100k"):
        assert pattern.match(ok), ok
    for bad in ("1Gb", "1 Gi", "-1Gi", "Gi", "1.Gi", "1e3", "", "1gi"):
        assert not pattern.match(bad), bad


def test_free_form_maps_preserve_unknown_fields(spec: dict[str, Any]) -> None:
    params = spec["properties"]["operation"]["properties"]["params"]
    assert params == {
        "type": "object",
        "description": "Validated by the operation's own params model.",
        "x-kubernetes-preserve-unknown-fields": True,
    }
    worker = spec["properties"]["worker"]["properties"]
    for name in ("volumes", "volumeMounts", "env", "tolerations"):
        assert worker[name]["type"] == "array"
        assert worker[name]["items"] == {
            "type": "object",
            "x-kubernetes-preserve-unknown-fields": True,
        }, name
    assert worker["nodeSelector"] == {"type": "object", "additionalProperties": {"type": "string"}}


# ------------------------------------------------------------------ structural schema rules


def test_no_forbidden_keywords_anywhere(root: dict[str, Any]) -> None:
    keys = set(all_keys(root))
    for forbidden in FORBIDDEN_KEYS:
        assert forbidden not in keys, f"{forbidden} left in the CRD schema"
    for path, node in walk(root):
        assert node.get("additionalProperties") is not False, path
        assert node.get("additionalProperties") is not True, path


def test_every_node_has_a_type_or_is_an_allowed_exception(root: dict[str, Any]) -> None:
    for path, node in walk(root):
        if "|anyOf" in path:
            assert set(node) == {"type"}, path  # only types inside the int-or-string anyOf
            continue
        if node.get("x-kubernetes-int-or-string"):
            assert "type" not in node, path
            continue
        assert node.get("type") in ("object", "array", "string", "integer", "number", "boolean"), (
            path
        )


def test_any_of_only_for_int_or_string(root: dict[str, Any]) -> None:
    for path, node in walk(root):
        if "anyOf" in node:
            assert node.get("x-kubernetes-int-or-string") is True, path
            assert node["anyOf"] == [{"type": "integer"}, {"type": "string"}], path


def test_every_object_says_what_it_holds(root: dict[str, Any]) -> None:
    """An object node has properties, preserves unknown fields, or is a typed map
    (``additionalProperties`` with a schema — Kubernetes' structural form of
    ``map[string]string``). Only the root ``metadata`` is a bare ``type: object``: the API
    server owns its schema and forbids anything but name/generateName constraints there."""
    for path, node in walk(root):
        if node.get("type") != "object" or path == "/metadata":
            continue
        has_props = bool(node.get("properties"))
        preserves = node.get("x-kubernetes-preserve-unknown-fields") is True
        typed_map = isinstance(node.get("additionalProperties"), dict)
        assert has_props or preserves or typed_map, f"{path}: an object with no shape"
        assert not (has_props and typed_map), f"{path}: properties and additionalProperties"


def test_arrays_have_items_and_required_names_exist(root: dict[str, Any]) -> None:
    for path, node in walk(root):
        if node.get("type") == "array":
            assert isinstance(node.get("items"), dict), path
        for name in node.get("required") or []:
            assert name in (node.get("properties") or {}), f"{path}: required {name} undefined"
        if "nullable" in node:
            assert node["nullable"] is True, path


def test_openapi_schema_is_pure() -> None:
    assert openapi_schema() == openapi_schema()
    first = openapi_schema()
    first["properties"]["spec"]["properties"].clear()
    assert openapi_schema()["properties"]["spec"]["properties"]  # no shared mutable state


# ------------------------------------------------------ the schema validates like it claims


@pytest.mark.parametrize(("name", "doc"), example_docs(), ids=[n for n, _ in example_docs()])
def test_shipped_examples_are_valid(validator: Any, name: str, doc: dict[str, Any]) -> None:
    errors = [e.message for e in validator.iter_errors(doc)]
    assert not errors, f"{name}: {errors}"


def test_there_are_examples_to_check() -> None:
    assert len(example_docs()) >= 3


@pytest.mark.parametrize(
    "doc",
    [
        MINIMAL,
        with_spec(resources={"memory": "1Gi", "maxMemory": 4 * 1024**3, "memoryHeadroom": 1.0}),
        with_spec(resources={"memoryHeadroom": 0.05, "gdalCacheMax": "1.5G", "cpu": "500m"}),
        with_spec(output={"uri": "/o", "format": "GPKG"}),
        with_spec(output={"uri": "/o", "format": None}),
        with_spec(operation={"name": "x", "params": {"nested": {"any": [1, "two"]}}}),
        with_spec(worker={"nodeSelector": {"disk": "ssd"}, "env": [{"name": "A", "value": "1"}]}),
        with_spec(retry={"onOutOfMemory": []}),
        with_spec(ttlSecondsAfterFinished=0, suspend=True, parallelism=1),
    ],
)
def test_schema_accepts_valid_documents(validator: Any, doc: dict[str, Any]) -> None:
    assert not [e.message for e in validator.iter_errors(doc)]


@pytest.mark.parametrize(
    ("doc", "why"),
    [
        ({k: v for k, v in MINIMAL.items() if k != "spec"}, "spec is required"),
        (with_spec(input=_DELETE), "input is required"),
        (with_spec(operation=_DELETE), "operation is required"),
        (with_spec(output=_DELETE), "output is required"),
        (with_spec(output={"format": "COG"}), "output.uri is required"),
        (with_spec(output={"uri": "/o", "format": "PNG"}), "format enum"),
        (with_spec(resources={"memoryHeadroom": 0.01}), "headroom minimum"),
        (with_spec(resources={"memoryHeadroom": 1.5}), "headroom maximum"),
        (with_spec(resources={"memory": "1Gb"}), "quantity pattern"),
        (with_spec(resources={"gdalCacheMax": 1.5}), "a quantity is an integer or a string"),
        (with_spec(resources={"cpu": "one"}), "cpu pattern"),
        (with_spec(parallelism=0), "parallelism minimum"),
        (with_spec(tiling={"tileSize": 0}), "tileSize minimum"),
        (with_spec(retry={"backoffLimit": -1}), "backoffLimit minimum"),
        (with_spec(retry={"onOutOfMemory": ["pray"]}), "strategy enum"),
        (with_spec(input={"uris": []}), "uris minItems"),
        (with_spec(worker={"nodeSelector": {"disk": 1}}), "nodeSelector values are strings"),
        (with_spec(worker={"imagePullPolicy": "Sometimes"}), "pull policy enum"),
        (with_spec(suspend="yes"), "suspend is a boolean"),
    ],
)
def test_schema_rejects_what_it_can_express(validator: Any, doc: dict[str, Any], why: str) -> None:
    assert list(validator.iter_errors(doc)), why


def test_cpu_as_an_integer_is_accepted_like_the_model_accepts_it(
    validator: Any,
) -> None:
    from gisjob_worker.spec import parse_job

    doc = with_spec(resources={"cpu": 2})
    assert parse_job(copy.deepcopy(doc)).spec.resources.cpu == "2"  # the model accepts it
    assert not [e.message for e in validator.iter_errors(doc)]
