"""The func.yaml files: valid for kn func 0.36.0, and deploying with `kn func deploy --build=false` what
`kubectl apply -k` deploys (the same environment, mounts, account, labels, probes and scale)."""

from __future__ import annotations

import copy
import json
import re
from datetime import datetime
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from .rendering import REPO, Manifest, find, knative_services, shared_schemas

Rendered = dict[str, list[Manifest]]
FUNCTIONS = ("submit", "health-relay", "rollback")
FUNC_FILES = {"func.yaml": REPO / "func.yaml"} | {
    f"functions/{name}/func.yaml": REPO / "functions" / name / "func.yaml" for name in FUNCTIONS
}
# `{{ configMap:NAME }}` (every key as a variable) or `{{ configMap:NAME:KEY }}` / `{{ secret:NAME:KEY }}`.
_REFERENCE = re.compile(r"^\{\{\s*(configMap|secret):([\w.-]+)(?::([\w.-]+))?\s*\}\}$")


def _load(path: Path) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(path.read_text())
    return document


def _validator() -> jsonschema.Draft4Validator:
    schema = json.loads((shared_schemas() / "func_yaml-schema.json").read_text())
    return jsonschema.Draft4Validator(schema, format_checker=jsonschema.Draft4Validator.FORMAT_CHECKER)


@pytest.mark.parametrize("name", FUNC_FILES)
def test_func_yaml_is_valid_for_kn_func(name: str) -> None:
    document = _load(FUNC_FILES[name])
    errors = [
        f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in _validator().iter_errors(document)
    ]
    assert not errors, errors
    assert document["specVersion"] == "0.36.0"
    datetime.fromisoformat(document["created"])  # required, and a date-time


def test_func_schema_refuses_unknown_keys() -> None:
    document = copy.deepcopy(_load(FUNC_FILES["func.yaml"]))
    document["deploy"]["minScale"] = 1
    assert list(_validator().iter_errors(document))
    document = copy.deepcopy(_load(FUNC_FILES["func.yaml"]))
    del document["created"]
    assert list(_validator().iter_errors(document))


def test_root_func_yaml_is_the_submit_function() -> None:
    assert _load(REPO / "func.yaml") == _load(REPO / "functions" / "submit" / "func.yaml")


def _func_env(func: dict[str, Any], docs: list[Manifest], namespace: str) -> dict[str, str]:
    """The environment kn func gives the container, with ConfigMap references resolved from `docs` and
    Secret references kept symbolic."""
    env: dict[str, str] = {}
    for item in func["run"]["envs"]:
        match = _REFERENCE.match(item["value"])
        if match is None:
            env[item["name"]] = item["value"]
            continue
        kind, name, key = match.groups()
        if kind == "secret":
            assert key is not None, "a whole Secret as variables would put secrets in the environment"
            env[item["name"]] = f"secret:{name}:{key}"
            continue
        configmap = find(docs, "ConfigMap", namespace, name, "")
        assert configmap is not None, f"func.yaml refers to ConfigMap {name}, which the manifests lack"
        if key is None:
            env.update(configmap["data"])
        else:
            env[item["name"]] = configmap["data"][key]
    return env


def _ksvc_env(ksvc: Manifest, docs: list[Manifest]) -> dict[str, str]:
    container = ksvc["spec"]["template"]["spec"]["containers"][0]
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        configmap = find(docs, "ConfigMap", ksvc["metadata"]["namespace"], source["configMapRef"]["name"], "")
        assert configmap is not None
        env.update(configmap["data"])
    env.update({item["name"]: item["value"] for item in container.get("env", [])})
    return env


def _ksvc_mounts(ksvc: Manifest) -> dict[tuple[str, str], str]:
    """(secret|configMap, object name) -> mount path."""
    pod = ksvc["spec"]["template"]["spec"]
    paths = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    mounts = {}
    for volume in pod["volumes"]:
        if "secret" in volume:
            mounts[("secret", volume["secret"]["secretName"])] = paths[volume["name"]]
        else:
            mounts[("configMap", volume["configMap"]["name"])] = paths[volume["name"]]
    return mounts


@pytest.mark.parametrize("function", FUNCTIONS)
def test_kn_func_deploys_what_kustomize_deploys(rendered: Rendered, function: str) -> None:
    """func.yaml describes the production Service: compared with the prod overlay."""
    docs = rendered["prod"]
    func = _load(REPO / "functions" / function / "func.yaml")
    ksvc = next(s for s in knative_services(docs) if s["metadata"]["name"] == function)
    namespace = ksvc["metadata"]["namespace"]
    assert func["name"] == function
    assert func["namespace"] == namespace

    assert _func_env(func, docs, namespace) == _ksvc_env(ksvc, docs)
    func_mounts = {
        ("secret" if "secret" in v else "configMap", v.get("secret") or v["configMap"]): v["path"]
        for v in func["run"]["volumes"]
    }
    assert func_mounts == _ksvc_mounts(ksvc)

    deploy = func["deploy"]
    assert deploy["serviceAccountName"] == ksvc["spec"]["template"]["spec"]["serviceAccountName"]
    labels = {label["key"]: label["value"] for label in deploy["labels"]}
    assert labels == ksvc["metadata"]["labels"]
    container = ksvc["spec"]["template"]["spec"]["containers"][0]
    assert deploy["healthEndpoints"] == {
        "liveness": container["livenessProbe"]["httpGet"]["path"],
        "readiness": container["readinessProbe"]["httpGet"]["path"],
    }
    annotations = ksvc["spec"]["template"]["metadata"]["annotations"]
    assert deploy["options"]["scale"] == {
        "min": int(annotations["autoscaling.knative.dev/min-scale"]),
        "max": int(annotations["autoscaling.knative.dev/max-scale"]),
    }
    assert deploy["options"]["resources"] == container["resources"]
    assert func["image"].rpartition(":")[0] == container["image"].rpartition(":")[0]
