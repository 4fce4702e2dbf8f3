"""What ``xpipe up`` prepares and wires, checked without starting it: secrets, tokens, ports, and the
routes the router takes through ``knative/base`` plus the local step Trigger."""

from __future__ import annotations

import stat
from pathlib import Path

import yaml
from cloudevents.http import CloudEvent

from xpipe.auth import SCOPES, TokenRegistry, token_digest
from xpipe.devstack.manifests import ServiceTable, load_topology
from xpipe.devstack.router import attributes_of
from xpipe.devstack.stack import (
    FUNCTIONS,
    LOCAL_MANIFESTS,
    MANIFESTS,
    STEP_HOST_SERVICE,
    StackLayout,
    component_specs,
    prepare,
)


def test_prepare_keeps_only_the_token_digest_in_the_tokens_file(tmp_path: Path) -> None:
    layout = StackLayout(tmp_path / "data")
    token = prepare(layout, "dev-token-123")
    assert token == "dev-token-123"
    entries = yaml.safe_load(layout.tokens_file.read_text())
    assert entries == [{"name": "xpipe-up", "scope": "admin", "sha256": token_digest("dev-token-123")}]
    assert "dev-token-123" not in layout.tokens_file.read_text()
    registry = TokenRegistry.load(layout.tokens_file)
    assert all(registry.authorize("dev-token-123", scope).name == "xpipe-up" for scope in SCOPES)
    for private in (layout.secret_file, layout.token_file, layout.tokens_file):
        assert stat.S_IMODE(private.stat().st_mode) == 0o600


def test_prepare_makes_the_secret_and_a_token_once(tmp_path: Path) -> None:
    layout = StackLayout(tmp_path)
    first = prepare(layout, None)
    secret = layout.secret_file.read_text()
    assert len(secret.strip()) == 64
    assert prepare(layout, None) == first
    assert layout.secret_file.read_text() == secret


def test_ports_follow_the_base_port(tmp_path: Path) -> None:
    layout = StackLayout(tmp_path, base_port=9000)
    specs = {spec.name: spec for spec in component_specs(layout, ping_interval_s=2)}
    assert specs["router"].endpoint == "http://127.0.0.1:9000"
    assert [specs[name].endpoint for name in FUNCTIONS] == [f"http://127.0.0.1:{9001 + i}" for i in range(3)]
    assert specs["journal"].endpoint == "127.0.0.1:9004"
    assert specs["step-host"].endpoint == "http://127.0.0.1:9005"
    assert list(specs) == ["journal", "step-host", *FUNCTIONS, "router"]  # dependencies first
    assert specs["submit"].env["K_SINK"] == "http://127.0.0.1:9000"
    assert specs["submit"].env["XPIPE_JOURNAL"] == "127.0.0.1:9004"
    # as in knative/base: the broker's subscribers take tokenless deliveries, the public submit never does
    assert [specs[name].env.get("XPIPE_TRUST_CLUSTER_DELIVERIES") for name in FUNCTIONS] == [
        None,
        "true",
        "true",
    ]


def test_the_base_manifests_route_every_xpipe_event_locally(tmp_path: Path) -> None:
    layout = StackLayout(tmp_path)
    services = {name: layout.function_url(name) for name in FUNCTIONS}
    services[STEP_HOST_SERVICE] = layout.step_host_url
    topology = load_topology([MANIFESTS, LOCAL_MANIFESTS], ServiceTable(services), ping_interval_s=1)
    [broker] = topology.brokers

    def routes(event_type: str, **extensions: str) -> set[str]:
        attrs = attributes_of(CloudEvent({"type": event_type, "source": "/t", **extensions}, None))
        return {str(t.subscriber.url) for t in topology.triggers_of(broker) if t.matches(attrs)}

    relay, rollback = layout.function_url("health-relay"), layout.function_url("rollback")
    assert routes("com.xpipe.step.run", xpipestep="demo-ok-build") == {layout.step_host_url}
    assert routes("com.xpipe.step.heartbeat") == {relay}
    assert routes("com.xpipe.step.finished") == {relay}
    assert routes("dev.knative.sources.ping") == {relay}
    assert routes("com.xpipe.job.rollback.requested") == {rollback}
    assert routes("com.xpipe.job.diagnostic.requested") == {rollback}
    assert [p.sink.broker for p in topology.ping_sources] == [broker]
    assert all(t.dead_letter is not None and t.dead_letter.url == relay for t in topology.triggers)
