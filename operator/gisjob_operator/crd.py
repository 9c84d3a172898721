"""The GisJob CustomResourceDefinition, generated from the worker's pydantic spec model.

One source of truth: the same model validates job files in ``gisjob run`` and the custom
resource in the operator; this module turns its JSON schema into a structural OpenAPI v3
schema (inlined references, ``nullable``, ``x-kubernetes-int-or-string`` for quantities,
``x-kubernetes-preserve-unknown-fields`` for free-form maps). ``tests`` fail when the
committed ``deploy/crd.yaml`` drifts from what this produces.
"""

from __future__ import annotations

from typing import Any

import yaml

from gisjob_worker.spec import GROUP, KIND, VERSION, GisJobSpec

PLURAL = "gisjobs"
SINGULAR = "gisjob"
SHORT_NAMES = ["gj"]
CATEGORIES = ["gisjob"]
CRD_NAME = f"{PLURAL}.{GROUP}"
_KEEP = (
    "type",
    "description",
    "enum",
    "pattern",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "format",
)


def _resolve(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in node:
        target = defs[node["$ref"].split("/")[-1]]
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return _resolve(merged, defs)
    return node


def _is_quantity(options: list[dict[str, Any]]) -> bool:
    types = sorted(o.get("type", "") for o in options)
    return types == ["integer", "string"]


def structural(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """A pydantic JSON-schema node as a Kubernetes structural schema node."""
    node = _resolve(node, defs)
    if "anyOf" in node:
        options = [_resolve(o, defs) for o in node["anyOf"]]
        non_null = [o for o in options if o.get("type") != "null"]
        nullable = len(non_null) < len(options)
        if _is_quantity(non_null):
            # the one anyOf a structural schema allows; the pattern applies to strings only
            out: dict[str, Any] = {
                "x-kubernetes-int-or-string": True,
                "anyOf": [{"type": "integer"}, {"type": "string"}],
                "pattern": next(o["pattern"] for o in non_null if o.get("type") == "string"),
            }
        elif len(non_null) == 1:
            out = structural(non_null[0], defs)
        else:  # pragma: no cover - the spec model has no other unions
            raise ValueError(f"cannot express union {node} in a structural schema")
        if "description" in node:
            out["description"] = node["description"]
        if nullable:
            out["nullable"] = True
        return out
    out = {k: node[k] for k in _KEEP if k in node}
    kind = node.get("type")
    if kind == "object":
        props = node.get("properties")
        extra = node.get("additionalProperties")
        if props:
            out["properties"] = {k: structural(v, defs) for k, v in props.items()}
            if node.get("required"):
                out["required"] = list(node["required"])
        elif isinstance(extra, dict) and extra:
            out["additionalProperties"] = structural(extra, defs)
        else:
            out["x-kubernetes-preserve-unknown-fields"] = True
    elif kind == "array":
        out["items"] = structural(node.get("items", {"type": "object"}), defs)
    elif kind is None:  # Any
        out["x-kubernetes-preserve-unknown-fields"] = True
    return out


def openapi_schema() -> dict[str, Any]:
    raw = GisJobSpec.model_json_schema(by_alias=True)
    defs = raw.pop("$defs", {})
    spec = structural(raw, defs)
    spec["description"] = "What to run: input, operation, output, tiling, memory, retries."
    # cpu is a quantity like in a Pod (`cpu: 2` or `cpu: 500m`); the model coerces numbers
    resources = spec["properties"]["resources"]["properties"]
    cpu = resources["cpu"]
    resources["cpu"] = {
        "x-kubernetes-int-or-string": True,
        "anyOf": [{"type": "integer"}, {"type": "string"}],
        "pattern": cpu["pattern"],
        "description": cpu["description"],
    }
    return {
        "type": "object",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": {
                "type": "object",
                "description": "Written by the operator through the status subresource.",
                "x-kubernetes-preserve-unknown-fields": True,
            },
        },
    }


def build_crd() -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": CRD_NAME,
            "labels": {"app.kubernetes.io/name": "gisjob", "app.kubernetes.io/part-of": "gisjob"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": SHORT_NAMES,
                "categories": CATEGORIES,
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
                        {"name": "Done/Tiles", "type": "string", "jsonPath": ".status.progress"},
                        {
                            "name": "Peak memory",
                            "type": "string",
                            "jsonPath": ".status.memory.peakObserved",
                        },
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                    ],
                    "schema": {"openAPIV3Schema": openapi_schema()},
                }
            ],
        },
    }


def crd_yaml() -> str:
    header = (
        "# Generated by `gisjob-operator crd` from the GisJob spec model; do not edit.\n"
        "# tests/unit/test_crd.py fails when this file drifts from the model.\n"
    )
    return header + yaml.safe_dump(build_crd(), sort_keys=False, width=100)
