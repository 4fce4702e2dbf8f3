"""XPIPE_TRUST_CLUSTER_DELIVERIES: Broker deliveries carry no X-Token-XPipe, so health-relay (and rollback)
may accept a request without the header as a cluster delivery; a request with a token is still checked,
the default still demands one, and submit, which is public, refuses to start with the setting.

Real functions-framework servers against a real journal, as the other function tests."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cloudevents.http import CloudEvent
from functions_harness import (
    RELAY_TOKEN,
    START_TIMEOUT,
    SUBMIT_TOKEN,
    EventSink,
    FunctionServer,
    JournalProcess,
    cloud_event,
    function_env,
    journal_counts,
)

from vms_adapter.client import JournalClient
from xpipe.events import EXT_JOB, STEP_HEARTBEAT
from xpipe.templates import BUILTIN_TEMPLATES_DIR, Catalog, resolve

TRUST = "XPIPE_TRUST_CLUSTER_DELIVERIES"


@pytest.fixture(scope="module")
def trusting_relay(
    journal: JournalProcess, sink: EventSink, tokens: Path, workdir: Path
) -> Iterator[FunctionServer]:
    env = function_env(journal, sink, tokens, **{TRUST: "true"})
    server = FunctionServer("health-relay", env, workdir / "relay-trusting.log")
    server.wait_until("/health/readiness")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def strict_relay(
    journal: JournalProcess, sink: EventSink, tokens: Path, workdir: Path
) -> Iterator[FunctionServer]:
    server = FunctionServer("health-relay", function_env(journal, sink, tokens), workdir / "relay-strict.log")
    server.wait_until("/health/readiness")
    yield server
    server.stop()


def _register(client: JournalClient) -> str:
    catalog = Catalog.load(BUILTIN_TEMPLATES_DIR, max_revision_timeout_seconds=600)
    job = resolve(catalog.get("demo-ok"), {}, requested_by="tests", default_image="img")
    result = client.commit(
        None, [{"type": "JOB_REGISTERED", "data": job.plan}], idempotency_key=f"tests {uuid.uuid4()}"
    )
    client.ack([d["id"] for d in result.directives])
    return result.job_id


def _heartbeat(job_id: str) -> CloudEvent:
    data = {"jobId": job_id, "step": "prepare", "attempt": 1, "pod": "pod-trusted", "progress": 0.25}
    return cloud_event(STEP_HEARTBEAT, data, **{EXT_JOB: job_id})


def _heartbeats(client: JournalClient, job_id: str) -> list[dict[str, Any]]:
    return [e for e in client.read_job(job_id)["history"] if e["type"] == "HEARTBEAT"]


def test_a_trusted_relay_journals_a_heartbeat_delivered_without_a_token(
    trusting_relay: FunctionServer, client: JournalClient
) -> None:
    job_id = _register(client)
    response = trusting_relay.post(_heartbeat(job_id), token=None)
    assert response.status_code == 202, response.text
    assert _heartbeats(client, job_id), "the heart-beat was not journaled"
    view = client.read_job(job_id)
    assert view["state"] == "RUNNING"
    assert view["steps"][0]["attempts"][0]["pod"] == "pod-trusted"
    trusting_relay.wait_for_log('"caller": "cluster-delivery"')


@pytest.mark.parametrize(
    ("token", "status"),
    [("wrong-token", 401), ("", 401), (RELAY_TOKEN[:-1], 401), (SUBMIT_TOKEN, 403)],
    ids=["wrong", "empty", "prefix", "other-scope"],
)
def test_a_trusted_relay_still_checks_a_presented_token(
    trusting_relay: FunctionServer, client: JournalClient, token: str, status: int
) -> None:
    job_id = _register(client)
    before = journal_counts(client)
    response = trusting_relay.post(_heartbeat(job_id), token=token)
    assert response.status_code == status, response.text
    assert journal_counts(client) == before
    assert not _heartbeats(client, job_id)


def test_a_trusted_relay_accepts_the_right_token_too(
    trusting_relay: FunctionServer, client: JournalClient
) -> None:
    job_id = _register(client)
    assert trusting_relay.post(_heartbeat(job_id), token=RELAY_TOKEN).status_code == 202
    assert _heartbeats(client, job_id)


def test_by_default_a_delivery_without_a_token_is_refused(
    strict_relay: FunctionServer, client: JournalClient
) -> None:
    job_id = _register(client)
    before = journal_counts(client)
    response = strict_relay.post(_heartbeat(job_id), token=None)
    assert response.status_code == 401
    assert "X-Token-XPipe" in response.json()["message"]
    assert journal_counts(client) == before
    assert not _heartbeats(client, job_id)


def test_submit_refuses_to_start_when_told_to_trust_cluster_deliveries(
    journal: JournalProcess, sink: EventSink, tokens: Path, workdir: Path
) -> None:
    env = function_env(journal, sink, tokens, XPIPE_LOCAL_STEP_HOST="http://127.0.0.1:9", **{TRUST: "true"})
    server = FunctionServer("submit", env, workdir / "submit-trusting.log")
    try:
        server.process.wait(timeout=START_TIMEOUT)
        assert server.process.returncode != 0
        assert f"{TRUST}=true is refused by submit" in server.log()
    finally:
        server.stop()


def test_a_relay_refuses_to_start_with_a_misspelt_trust_value(
    journal: JournalProcess, sink: EventSink, tokens: Path, workdir: Path
) -> None:
    env = function_env(journal, sink, tokens, **{TRUST: "yes"})
    server = FunctionServer("health-relay", env, workdir / "relay-misspelt.log")
    try:
        server.process.wait(timeout=START_TIMEOUT)
        assert server.process.returncode != 0
        assert f"{TRUST}='yes' must be true or false" in server.log()
    finally:
        server.stop()
