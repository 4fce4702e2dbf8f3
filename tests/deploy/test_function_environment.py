"""The manifests against the code that consumes them: the functions' configuration accepts the
environment the Services give them, the template catalog accepts the templates ConfigMap, and the local
router honours the same Broker, Triggers and PingSource as the cluster."""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any

import pytest

from xpipe import config as function_config
from xpipe.devstack.manifests import ServiceTable, load_topology
from xpipe.templates import Catalog

from .event_routes import BROKER_ROUTES
from .rendering import KNATIVE, Manifest, find, knative_services, of_kind

Rendered = dict[str, list[Manifest]]
# What a SinkBinding injects: the MT broker's ingress URL of the Broker default in xpipe-steps.
BROKER_URL = "http://broker-ingress.knative-eventing.svc.cluster.local/xpipe-steps/default"


def _service_environment(ksvc: Manifest, docs: list[Manifest], mounts: dict[str, Path]) -> dict[str, str]:
    """The container's environment as Kubernetes builds it, with mounted paths mapped under `mounts`."""
    container = ksvc["spec"]["template"]["spec"]["containers"][0]
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        configmap = find(docs, "ConfigMap", ksvc["metadata"]["namespace"], source["configMapRef"]["name"], "")
        assert configmap is not None
        env.update(configmap["data"])
    env.update({item["name"]: item["value"] for item in container.get("env", [])})
    env["K_SINK"] = BROKER_URL
    env["PORT"] = "8080"
    for key, value in list(env.items()):
        for mount_path, local in mounts.items():
            if value == mount_path or value.startswith(mount_path + "/"):
                env[key] = str(local) + value[len(mount_path) :]
    return env


def _materialise_mounts(
    ksvc: Manifest, docs: list[Manifest], root: Path, real_secrets: bool
) -> dict[str, Path]:
    """Write each mounted Secret/ConfigMap into `root` as kubelet would; returns mount path -> folder.

    With `real_secrets` the Secret templates' placeholders are replaced by values a deployer would put."""
    pod = ksvc["spec"]["template"]["spec"]
    paths = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    namespace = ksvc["metadata"]["namespace"]
    mounts: dict[str, Path] = {}
    for volume in pod["volumes"]:
        folder = root / volume["name"]
        folder.mkdir()
        if "configMap" in volume:
            source = find(docs, "ConfigMap", namespace, volume["configMap"]["name"], "")
            assert source is not None
            files: dict[str, Any] = dict(source["data"])
        else:
            source = find(docs, "Secret", namespace, volume["secret"]["secretName"], "")
            assert source is not None
            files = {key: base64.b64decode(value).decode() for key, value in source["data"].items()}
            if real_secrets:
                files = {
                    key: re.sub(r"REPLACE-WITH-[A-Z0-9-]+", _filled, text) for key, text in files.items()
                }
        for key, text in files.items():
            (folder / key).write_text(text)
        mounts[paths[volume["name"]]] = folder
    return mounts


def _filled(match: re.Match[str]) -> str:
    """A deployer's value for a placeholder: a digest where a digest goes, a secret elsewhere."""
    placeholder = match.group(0)
    seed = sum(map(ord, placeholder))
    return f"{seed:064x}" if "SHA256" in placeholder else "journal-shared-secret-for-tests"


@pytest.mark.parametrize("target", ["dev", "prod"])
def test_functions_accept_the_environment_their_services_give_them(
    rendered: Rendered, target: str, tmp_path: Path
) -> None:
    docs = rendered[target]
    for ksvc in knative_services(docs):
        root = tmp_path / ksvc["metadata"]["name"]
        root.mkdir()
        env = _service_environment(ksvc, docs, _materialise_mounts(ksvc, docs, root, real_secrets=True))
        loaded = function_config.load(env)
        assert loaded.backend == "knative"
        assert loaded.steps_namespace == "xpipe-steps"
        assert loaded.broker == "default"
        assert (loaded.journal_host, loaded.journal_port) == ("journal.openvms.example.internal", 7430)
        assert loaded.journal_tls is True
        assert loaded.journal_secret == b"journal-shared-secret-for-tests"
        assert loaded.max_body_bytes == 1024 * 1024
        assert loaded.log_level == ("DEBUG" if target == "dev" else "INFO")
        assert loaded.step_image.endswith(":dev" if target == "dev" else ":0.1.0")
        assert loaded.tokens_file.is_file()
        catalog = Catalog.load(
            loaded.templates_dir, max_revision_timeout_seconds=loaded.max_revision_timeout_seconds
        )
        assert {"demo-ok", "demo-fail", "demo-hang"} <= set(catalog.names())


def test_every_variable_the_manifests_set_is_one_the_functions_read(rendered: Rendered) -> None:
    """`xpipe.config` ignores variables it does not know, so a misspelt name would be silently lost."""
    source = Path(function_config.__file__).read_text()
    known = set(re.findall(r'"((?:XPIPE|K)_[A-Z_]+)"', source))
    docs = rendered["base"]
    for name in ("xpipe-journal", "xpipe-functions"):
        configmap = find(docs, "ConfigMap", "xpipe", name, "")
        assert configmap is not None
        unknown = set(configmap["data"]) - known
        assert not unknown, f"ConfigMap {name} sets {sorted(unknown)}, which xpipe.config does not read"


def test_local_router_honours_the_same_broker_triggers_and_ping_source() -> None:
    services = ServiceTable({name: f"http://127.0.0.1:{9000 + i}" for i, name in enumerate(BROKER_ROUTES)})
    topology = load_topology([KNATIVE / "base"], services)
    assert set(topology.brokers) == {("xpipe-steps", "default")}
    broker = topology.brokers[("xpipe-steps", "default")]
    assert broker.dead_letter is not None
    assert broker.dead_letter.url == "http://127.0.0.1:9000"  # health-relay
    routed = {trigger.subscriber.label for trigger in topology.triggers}
    assert routed == {f"Service/{name}" for name in BROKER_ROUTES}
    assert len(topology.triggers) == sum(len(types) for types in BROKER_ROUTES.values())
    (ping,) = topology.ping_sources
    assert ping.sink.broker == ("xpipe-steps", "default")


def test_base_objects_the_router_reads_are_the_ones_kustomize_renders(rendered: Rendered) -> None:
    """The router reads the base files directly (no kustomize): names and namespaces must agree."""
    services = ServiceTable({name: "http://127.0.0.1:9" for name in BROKER_ROUTES})
    topology = load_topology([KNATIVE / "base"], services)
    rendered_triggers = {
        (t["metadata"]["namespace"], t["metadata"]["name"]) for t in of_kind(rendered["base"], "Trigger")
    }
    assert {(t.namespace, t.name) for t in topology.triggers} == rendered_triggers
