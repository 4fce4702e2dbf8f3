"""health-relay, served by the real functions-framework against a real journal: heart-beats, finished
steps, pod health, sweeps and dead letters become journal facts, and the journal's directives reach the
broker (a real HTTP sink) and are acknowledged."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cloudevents.http import CloudEvent
from functions_harness import (
    ADMIN_TOKEN,
    RELAY_TOKEN,
    SUBMIT_TOKEN,
    EventSink,
    FunctionServer,
    JournalProcess,
    cloud_event,
    function_env,
    journal_counts,
    wait_for_directive,
)

from vms_adapter.client import JournalClient
from xpipe.events import EXT_JOB, EXT_STEP, PING, STEP_FINISHED, STEP_HEARTBEAT, STEP_RUN
from xpipe.http import RETRY_AFTER_SECONDS
from xpipe.templates import BUILTIN_TEMPLATES_DIR, Catalog, resolve


@pytest.fixture(scope="module")
def relay(journal: JournalProcess, sink: EventSink, tokens: Path, workdir: Path) -> Iterator[FunctionServer]:
    env = function_env(journal, sink, tokens, XPIPE_REDELIVERY_SECONDS="0")
    server = FunctionServer("health-relay", env, workdir / "health-relay.log").wait_until("/health/readiness")
    yield server
    server.stop()


def register(client: JournalClient, template: str = "demo-ok") -> tuple[str, list[dict[str, Any]]]:
    catalog = Catalog.load(BUILTIN_TEMPLATES_DIR, max_revision_timeout_seconds=600)
    job = resolve(catalog.get(template), {}, requested_by="tests", default_image="img")
    result = client.commit(
        None, [{"type": "JOB_REGISTERED", "data": job.plan}], idempotency_key=f"tests {uuid.uuid4()}"
    )
    assert result.directives, "the journal dispatches step 1 in the registration's transaction"
    client.ack([d["id"] for d in result.directives])
    return result.job_id, result.directives


def heartbeat(job_id: str, step: str = "prepare", attempt: int = 1, pod: str = "pod-a") -> CloudEvent:
    data = {"jobId": job_id, "step": step, "attempt": attempt, "pod": pod, "progress": 0.5}
    return cloud_event(STEP_HEARTBEAT, data, **{EXT_JOB: job_id})


def finished(job_id: str, step: str, attempt: int = 1, outcome: str = "succeeded") -> CloudEvent:
    data = {"jobId": job_id, "step": step, "attempt": attempt, "outcome": outcome, "exitCode": 0,
            "durationSeconds": 0.1, "summary": "ok", "pod": "pod-a"}  # fmt: skip
    return cloud_event(STEP_FINISHED, data, **{EXT_JOB: job_id})


def history_types(client: JournalClient, job_id: str) -> list[str]:
    return [entry["type"] for entry in client.read_job(job_id)["history"]]


@pytest.mark.parametrize("structured", [False, True], ids=["binary", "structured"])
def test_a_heartbeat_is_journaled_and_the_job_runs(
    relay: FunctionServer, client: JournalClient, structured: bool
) -> None:
    job_id, _ = register(client)
    response = relay.post(heartbeat(job_id), token=RELAY_TOKEN, structured=structured)
    assert response.status_code == 202
    assert response.content == b""
    view = client.read_job(job_id)
    assert view["state"] == "RUNNING"
    assert "HEARTBEAT" in history_types(client, job_id)


def test_a_duplicate_delivery_has_one_effect(relay: FunctionServer, client: JournalClient) -> None:
    job_id, _ = register(client)
    event = heartbeat(job_id)
    assert relay.post(event, token=RELAY_TOKEN).status_code == 202
    after_first = journal_counts(client)
    assert relay.post(event, token=RELAY_TOKEN).status_code == 202
    assert journal_counts(client) == after_first


def test_a_finished_step_publishes_the_next_dispatch_and_acknowledges_it(
    relay: FunctionServer, client: JournalClient, sink: EventSink
) -> None:
    job_id, _ = register(client)
    assert relay.post(finished(job_id, "prepare"), token=RELAY_TOKEN).status_code == 202
    (run,) = sink.wait_for(lambda e: e["type"] == STEP_RUN and e.get(EXT_JOB) == job_id)
    assert (run.get_data() or {})["step"] == "build"
    assert run.get(EXT_STEP) == "demo-ok-build"
    # The event id is the directive id (receivers dedupe on it); the directive gets acknowledged.
    wait_for_directive(client, job_id, run["id"], "acked")


def test_a_directive_the_broker_refused_is_published_again_by_the_next_ping(
    relay: FunctionServer, client: JournalClient, sink: EventSink
) -> None:
    job_id, _ = register(client)
    sink.status = 503
    try:
        assert relay.post(finished(job_id, "prepare"), token=RELAY_TOKEN).status_code == 202
    finally:
        sink.status = 202
    assert not sink.matching(lambda e: e.get(EXT_JOB) == job_id)
    ping = cloud_event(PING, {"tick": 1}, source="/apis/v1/namespaces/xpipe/pingsources/sweep")
    assert relay.post(ping, token=RELAY_TOKEN).status_code == 202
    (run,) = sink.wait_for(lambda e: e["type"] == STEP_RUN and e.get(EXT_JOB) == job_id)
    wait_for_directive(client, job_id, run["id"], "acked")


def pod_event(name: str, *, labelled: bool = True, ready: bool = True, restarts: int = 0) -> CloudEvent:
    labels = {"xpipe.io/step": "demo-ok-prepare"} if labelled else {"app": "other"}
    pod = {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "xpipe-steps", "labels": labels},
        "status": {
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            "containerStatuses": [{"name": "user-container", "ready": ready, "restartCount": restarts,
                                   "state": {"running": {"startedAt": "2026-11-25T13:00:00Z"}}}],
        },
    }  # fmt: skip
    return cloud_event("dev.knative.apiserver.resource.update", pod, source="https://kubernetes.default")


def test_pod_health_is_journaled_on_the_attempt_holding_the_pod(
    relay: FunctionServer, client: JournalClient
) -> None:
    job_id, _ = register(client)
    pod = f"pod-{uuid.uuid4().hex[:8]}"
    assert relay.post(heartbeat(job_id, pod=pod), token=RELAY_TOKEN).status_code == 202
    assert relay.post(pod_event(pod, ready=False, restarts=1), token=RELAY_TOKEN).status_code == 202
    health = [h for h in client.read_job(job_id)["history"] if h["type"] == "HEALTH"]
    assert len(health) == 1
    assert health[0]["data"]["pod"] == pod
    assert health[0]["data"]["ready"] is False


def test_a_pod_that_is_not_a_step_is_ignored(relay: FunctionServer, client: JournalClient) -> None:
    before = journal_counts(client)
    assert relay.post(pod_event("web-1", labelled=False), token=RELAY_TOKEN).status_code == 202
    assert journal_counts(client) == before


def test_a_dead_letter_is_journaled_not_dropped(relay: FunctionServer, client: JournalClient) -> None:
    job_id, directives = register(client)
    letter = cloud_event(
        STEP_RUN,
        directives[0]["event"]["data"],
        source="/xpipe/journal",
        **{EXT_JOB: job_id, EXT_STEP: "demo-ok-prepare", "knativeerrordest": "http://demo-ok-prepare/",
           "knativeerrorcode": "500", "knativeerrordata": "Ym9vbQ=="},
    )  # fmt: skip
    assert relay.post(letter, token=RELAY_TOKEN).status_code == 202
    (record,) = [h for h in client.read_job(job_id)["history"] if h["type"] == "DEAD_LETTER"]
    assert record["data"]["errorCode"] == 500
    assert record["data"]["event"]["type"] == STEP_RUN


def test_one_event_dead_lettered_by_two_subscribers_is_two_letters_and_a_redelivery_is_not(
    relay: FunctionServer, client: JournalClient
) -> None:
    job_id, directives = register(client)
    original = {"id": str(uuid.uuid4()), "source": "/xpipe/journal"}

    def letter(destination: str) -> CloudEvent:
        return cloud_event(
            STEP_RUN, directives[0]["event"]["data"],
            **{**original, EXT_JOB: job_id, "knativeerrordest": destination, "knativeerrorcode": "500"},
        )  # fmt: skip

    for destination in ("http://demo-ok-prepare/", "http://audit-log/", "http://audit-log/"):
        assert relay.post(letter(destination), token=RELAY_TOKEN).status_code == 202
    letters = [h["data"] for h in client.read_job(job_id)["history"] if h["type"] == "DEAD_LETTER"]
    assert sorted(d["errorDest"] for d in letters) == ["http://audit-log/", "http://demo-ok-prepare/"]
    assert all(d["event"]["id"] == original["id"] for d in letters)


def test_a_dead_letter_with_a_long_destination_still_gets_a_key(
    relay: FunctionServer, client: JournalClient
) -> None:
    job_id, directives = register(client)
    destination = "http://" + "d" * 300 + "/"
    event = cloud_event(
        STEP_RUN, directives[0]["event"]["data"],
        **{EXT_JOB: job_id, "knativeerrordest": destination, "knativeerrorcode": "500"},
    )  # fmt: skip
    assert relay.post(event, token=RELAY_TOKEN).status_code == 202
    assert relay.post(event, token=RELAY_TOKEN).status_code == 202
    assert [h["type"] for h in client.read_job(job_id)["history"]].count("DEAD_LETTER") == 1


def test_admin_may_relay_and_a_submit_token_may_not(relay: FunctionServer, client: JournalClient) -> None:
    job_id, _ = register(client)
    before = journal_counts(client)
    assert relay.post(heartbeat(job_id), token=SUBMIT_TOKEN).status_code == 403
    assert journal_counts(client) == before
    assert relay.post(heartbeat(job_id), token=ADMIN_TOKEN).status_code == 202


@pytest.mark.parametrize(
    ("make", "status"),
    [
        (lambda job: heartbeat("no-such-job"), 422),
        (lambda job: cloud_event(STEP_HEARTBEAT, {"jobId": job, "step": "prepare"}), 400),
        (lambda job: cloud_event(STEP_HEARTBEAT, {**(heartbeat(job).get_data() or {}), "extra": 1}), 400),
        (lambda job: heartbeat(job, attempt=7), 422),
        (lambda job: cloud_event("com.example.unrelated", {"x": 1}), 400),
    ],
    ids=["unknown-job", "missing-fields", "unknown-key", "attempt-never-dispatched", "unknown-type"],
)
def test_facts_the_journal_cannot_accept_are_final_4xx_and_write_nothing(
    relay: FunctionServer, client: JournalClient, make: Any, status: int
) -> None:
    job_id, _ = register(client)
    before = journal_counts(client)
    response = relay.post(make(job_id), token=RELAY_TOKEN)
    assert response.status_code == status, response.text
    assert response.json()["message"]
    assert journal_counts(client) == before


@pytest.fixture(scope="module")
def narrow_relay(
    journal: JournalProcess, tokens: Path, workdir: Path
) -> Iterator[tuple[FunctionServer, EventSink]]:
    """A relay that handles one request at a time, publishing to a sink whose gate the test controls."""
    gated = EventSink()
    env = function_env(journal, gated, tokens, XPIPE_MAX_IN_FLIGHT="1")
    server = FunctionServer("health-relay", env, workdir / "narrow-relay.log").wait_until("/health/readiness")
    yield server, gated
    gated.gate.set()
    server.stop()
    gated.close()


def test_requests_beyond_the_in_flight_limit_get_429_and_write_nothing(
    narrow_relay: tuple[FunctionServer, EventSink], client: JournalClient
) -> None:
    server, gated = narrow_relay
    job_id, _ = register(client)
    gated.gate.clear()
    answers: list[int] = []
    busy = threading.Thread(
        target=lambda: answers.append(server.post(finished(job_id, "prepare"), token=RELAY_TOKEN).status_code)
    )
    busy.start()
    try:
        gated.wait_held()  # the first request is now publishing, so it is in flight
        before = journal_counts(client)
        overflow = server.post(heartbeat(job_id, step="build"), token=RELAY_TOKEN)
        assert overflow.status_code == 429
        assert int(overflow.headers["Retry-After"]) == RETRY_AFTER_SECONDS  # when to try again
        assert journal_counts(client) == before
    finally:
        gated.gate.set()
        busy.join(timeout=20)
    assert answers == [202]


def test_a_dead_letter_that_is_not_json_is_journaled_too(
    relay: FunctionServer, client: JournalClient, journal: JournalProcess
) -> None:
    headers = {
        "ce-specversion": "1.0", "ce-id": str(uuid.uuid4()), "ce-source": "/magento/webhooks",
        "ce-type": "com.example.order.paid", "content-type": "text/plain", "X-Token-XPipe": RELAY_TOKEN,
        "ce-knativeerrordest": "http://magento-webhook/", "ce-knativeerrorcode": "502",
    }  # fmt: skip
    before = client.stats()["idempotencyKeys"]
    response = relay.http.post("/", headers=headers, content=b"order 1001 \xff paid")
    assert response.status_code == 202, response.text
    assert client.stats()["idempotencyKeys"] == before + 1
    # No job is registered under "dead-letters", so the record is read from the journal's files.
    dump = subprocess.run(
        [sys.executable, "-m", "vms_adapter.server.cli", "dump", str(journal.data_dir),
         "--job", "dead-letters"],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    records = [json.loads(line) for line in dump.stdout.splitlines()]
    letters = [
        r for r in records if r["type"] == "DEAD_LETTER" and r["data"]["event"]["id"] == headers["ce-id"]
    ]
    assert len(letters) == 1
    assert letters[0]["data"]["errorCode"] == 502
    assert "order 1001" in letters[0]["data"]["event"]["data"]
