"""Rendering the kustomize targets and finding objects in the result, for the deployment tests.

The schemas are the team's shared copies of upstream files (`../shared/schemas` next to the repository);
they are read in place, never copied into the project. Rendering uses `kubectl kustomize`, the same
renderer as `kubectl apply -k`.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
KNATIVE = REPO / "knative"
# Everything a platform engineer can apply: the base, its platform half (the `kn func` way) and overlays.
RENDER_TARGETS = {
    "base": KNATIVE / "base",
    "platform": KNATIVE / "base" / "platform",
    "dev": KNATIVE / "overlays" / "dev",
    "prod": KNATIVE / "overlays" / "prod",
}
OVERLAYS = ("dev", "prod")
RENDER_TIMEOUT_S = 60.0

Manifest = dict[str, Any]


def shared_schemas() -> Path:
    """`../shared/schemas` relative to the repository root; fails the test clearly when it is missing."""
    path = REPO.parent / "shared" / "schemas"
    if not path.is_dir():
        pytest.fail(
            f"the shared schemas are missing: expected {path} (../shared/schemas next to the repository "
            "root, holding func_yaml-schema.json and knative/*.yaml). Check out the team's shared folder "
            "beside the repository; the deployment tests validate against it and never copy it."
        )
    return path


def kubectl() -> str:
    """The kubectl binary, or a skip with the reason when this machine has none."""
    found = shutil.which("kubectl")
    if found is None:
        pytest.skip(
            "kubectl is not on PATH: `kubectl kustomize` renders the overlays (install kubectl 1.27+)"
        )
    return found


def render(target: Path) -> list[Manifest]:
    """The objects `kubectl kustomize target` produces; a render error fails with kustomize's message."""
    result = subprocess.run(
        [kubectl(), "kustomize", str(target)],
        capture_output=True,
        text=True,
        timeout=RENDER_TIMEOUT_S,
        check=False,
    )
    if result.returncode != 0:
        where = target.relative_to(REPO) if target.is_relative_to(REPO) else target
        pytest.fail(f"kubectl kustomize {where} failed:\n{result.stderr}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def ident(doc: Manifest) -> str:
    """`Kind namespace/name`, for messages."""
    meta = doc.get("metadata", {})
    return f"{doc.get('kind')} {meta.get('namespace', '-')}/{meta.get('name')}"


def of_kind(docs: list[Manifest], kind: str, api_group: str | None = None) -> list[Manifest]:
    """The objects of a kind (and API group, when given: "" is the core group)."""
    found = []
    for doc in docs:
        group = str(doc.get("apiVersion", "")).rpartition("/")[0]
        if doc.get("kind") == kind and (api_group is None or group == api_group):
            found.append(doc)
    return found


def knative_services(docs: list[Manifest]) -> list[Manifest]:
    return of_kind(docs, "Service", "serving.knative.dev")


def find(
    docs: list[Manifest], kind: str, namespace: str, name: str, api_group: str | None = None
) -> Manifest | None:
    for doc in of_kind(docs, kind, api_group):
        meta = doc["metadata"]
        if meta.get("namespace") == namespace and meta.get("name") == name:
            return doc
    return None
