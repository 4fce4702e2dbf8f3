"""Validating Knative objects against the CustomResourceDefinitions Knative publishes.

A CRD carries a structural OpenAPI v3 schema. JSON Schema validates it once the Kubernetes extensions are
translated the way the API server applies them:

- an object schema with `properties` accepts no other field (the API server prunes unknown fields, and
  `kubectl apply --validate=strict` refuses them), unless `x-kubernetes-preserve-unknown-fields: true`,
  which keeps anything;
- `x-kubernetes-int-or-string: true` accepts an integer or a string;
- `nullable: true` also accepts null;
- at the root, `apiVersion`, `kind` and `metadata` are always allowed (ObjectMeta is the API server's,
  not the CRD's).
The other `x-kubernetes-*` keys (list types, map types) only steer merging and are dropped.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from .rendering import Manifest, shared_schemas

# The CRD files in ../shared/schemas/knative/.
CRD_FILES = (
    "serving-service.yaml",
    "eventing-broker.yaml",
    "eventing-trigger.yaml",
    "eventing-apiserversource.yaml",
    "eventing-pingsource.yaml",
    "eventing-sinkbindings.yaml",
    "eventing-jobsink.yaml",
)
KNATIVE_GROUPS = frozenset(
    {"serving.knative.dev", "eventing.knative.dev", "sources.knative.dev", "sinks.knative.dev"}
)
_ROOT_FIELDS = {"apiVersion": {"type": "string"}, "kind": {"type": "string"}, "metadata": {"type": "object"}}


class UnknownKind(LookupError):
    """No shared CRD describes this apiVersion and kind."""


def to_json_schema(node: Any) -> Any:
    """A structural schema node as JSON Schema, following the rules in the module docstring."""
    if isinstance(node, list):
        return [to_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key.startswith("x-kubernetes-") or key == "nullable":
            continue
        if key in ("properties", "patternProperties", "definitions"):
            out[key] = {name: to_json_schema(sub) for name, sub in value.items()}
        else:
            out[key] = to_json_schema(value)
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out = {"anyOf": [{"type": "integer"}, {"type": "string"}], **out}
    if node.get("nullable") and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    keeps_unknown = bool(node.get("x-kubernetes-preserve-unknown-fields"))
    if "properties" in node and "additionalProperties" not in node and not keeps_unknown:
        out["additionalProperties"] = False
    return out


@cache
def _schemas() -> dict[tuple[str, str, str], dict[str, Any]]:
    """(group, version, kind) -> JSON Schema, for every served version of every shared CRD."""
    folder: Path = shared_schemas() / "knative"
    found: dict[tuple[str, str, str], dict[str, Any]] = {}
    for name in CRD_FILES:
        crd = yaml.safe_load((folder / name).read_text())
        spec = crd["spec"]
        for version in spec["versions"]:
            if not version.get("served", False):
                continue
            schema = to_json_schema(version["schema"]["openAPIV3Schema"])
            schema.setdefault("properties", {}).update(_ROOT_FIELDS)
            found[(spec["group"], version["name"], spec["names"]["kind"])] = schema
    return found


def is_knative(doc: Manifest) -> bool:
    return str(doc.get("apiVersion", "")).rpartition("/")[0] in KNATIVE_GROUPS


def crd_errors(doc: Manifest) -> list[str]:
    """Every schema violation of a Knative object, as `path: message`; empty when it is valid."""
    group, _, version = str(doc.get("apiVersion", "")).rpartition("/")
    schema = _schemas().get((group, version, str(doc.get("kind"))))
    if schema is None:
        raise UnknownKind(f"no shared CRD schema for {doc.get('apiVersion')} {doc.get('kind')}")
    validator = jsonschema.Draft7Validator(schema)
    return [
        f"{'.'.join(str(p) for p in error.absolute_path) or '<root>'}: {error.message}"
        for error in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
    ]
