"""submit, served by the real functions-framework against a real journal and the local step host: every
status code of ARCHITECTURE §5, with the journal checked unchanged wherever nothing may be written."""

from __future__ import annotations

import json
import select
import socket
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from cloudevents.http import CloudEvent, from_http
from functions_harness import (
    ADMIN_TOKEN,
    RELAY_TOKEN,
    SUBMIT_TOKEN,
    EventSink,
    FunctionServer,
    JournalProcess,
    StepHost,
    cloud_event,
    function_env,
    journal_counts,
    wait_for_directive,
)

from vms_adapter.client import JournalClient
from xpipe.events import EXT_JOB, EXT_STEP, JOB_REGISTERED, PIPELINE_SUBMIT, STEP_FINISHED, STEP_RUN


def submit_event(template: str = "demo-ok", params: dict[str, Any] | None = None, **data: Any) -> CloudEvent:
    body = {"template": template, "params": params or {}, "requestedBy": "magento:admin", **data}
    return cloud_event(PIPELINE_SUBMIT, body, source="/magento/shop-1")


def registered(response: httpx.Response) -> CloudEvent:
    assert response.status_code == 200, response.text
    assert response.headers["ce-type"] == JOB_REGISTERED
    assert response.headers["content-type"].startswith("application/json")
    return from_http(dict(response.headers), response.content)


@pytest.mark.parametrize("structured", [False, True], ids=["binary", "structured"])
def test_submit_registers_the_job_replies_binary_and_dispatches_step_one(
    submit: FunctionServer, client: JournalClient, sink: EventSink, structured: bool
) -> None:
    reply = registered(submit.post(submit_event(), token=SUBMIT_TOKEN, structured=structured))
    data = reply.get_data()
    assert isinstance(data, dict)
    assert set(data) == {"jobId", "state", "journalSeq"}
    assert data["state"] == "PENDING"
    assert reply[EXT_JOB] == data["jobId"]
    view = client.read_job(data["jobId"])
    assert view["template"] == "demo-ok"
    assert view["requestedBy"] == "magento:admin"
    (run,) = sink.wait_for(lambda e: e["type"] == STEP_RUN and e.get(EXT_JOB) == data["jobId"])
    assert run.get(EXT_STEP) == "demo-ok-prepare"
    wait_for_directive(client, data["jobId"], run["id"], "acked")


def test_the_same_submit_delivered_twice_registers_one_job(
    submit: FunctionServer, client: JournalClient
) -> None:
    event = submit_event()
    first = registered(submit.post(event, token=SUBMIT_TOKEN))
    jobs_after_first = journal_counts(client)[0]
    second = registered(submit.post(event, token=SUBMIT_TOKEN))
    assert (second.get_data() or {})["jobId"] == (first.get_data() or {})["jobId"]
    assert second["id"] == first["id"]
    assert journal_counts(client)[0] == jobs_after_first


@pytest.mark.parametrize(
    "change",
    [{"template": "demo-fail"}, {"params": {"message": "other"}}, {"requestedBy": "magento:someone-else"}],
    ids=["template", "params", "requested-by"],
)
def test_an_event_id_reused_for_a_different_submission_is_a_422_and_writes_nothing(
    submit: FunctionServer, client: JournalClient, change: dict[str, Any]
) -> None:
    event = submit_event()
    first = registered(submit.post(event, token=SUBMIT_TOKEN))
    before = journal_counts(client)
    other = CloudEvent(dict(event.get_attributes()), {**(event.get_data() or {}), **change})
    response = submit.post(other, token=SUBMIT_TOKEN)
    assert response.status_code == 422, response.text
    assert response.json()["error"] == "ReusedEventId"
    assert event["id"] in response.json()["message"]
    assert "already used for a different submission" in response.json()["message"]
    assert journal_counts(client) == before
    again = registered(submit.post(event, token=SUBMIT_TOKEN))  # the original still deduplicates
    assert (again.get_data() or {})["jobId"] == (first.get_data() or {})["jobId"]


def test_admin_may_submit(submit: FunctionServer) -> None:
    registered(submit.post(submit_event(), token=ADMIN_TOKEN))


def test_a_hostile_param_reaches_the_step_as_one_literal_argv_element(
    submit: FunctionServer, sink: EventSink, step_host: StepHost
) -> None:
    hostile = "; rm -rf / && echo pwned $(id) `id`"
    reply = registered(submit.post(submit_event(params={"message": hostile}), token=SUBMIT_TOKEN))
    job_id = (reply.get_data() or {})["jobId"]
    (run,) = sink.wait_for(lambda e: e["type"] == STEP_RUN and e.get(EXT_JOB) == job_id)
    assert (run.get_data() or {})["params"]["message"] == hostile
    finished = step_host.deliver(run)
    assert finished["type"] == STEP_FINISHED
    result = finished.get_data() or {}
    assert result["outcome"] == "succeeded", result
    assert f"prepare argv: {[hostile]!r}" in result["summary"]


def raw_post(submit: FunctionServer, body: bytes, headers: dict[str, str]) -> httpx.Response:
    return submit.http.post("/", content=body, headers=headers)


def ce_headers(token: str | None = SUBMIT_TOKEN, **extra: str) -> dict[str, str]:
    headers = {"ce-specversion": "1.0", "ce-id": str(uuid.uuid4()), "ce-source": "/tests",
               "ce-type": PIPELINE_SUBMIT, "content-type": "application/json", **extra}  # fmt: skip
    if token is not None:
        headers["X-Token-XPipe"] = token
    return headers


def deep(levels: int) -> bytes:
    return (
        b'{"template": "demo-ok", "requestedBy": "x", "params": {"a": '
        + b"[" * levels
        + b"]" * levels
        + b"}}"
    )


GOOD = b'{"template": "demo-ok", "requestedBy": "x"}'
REFUSALS: list[tuple[str, bytes, dict[str, str], int]] = [
    ("not-json", b"this is not json", ce_headers(), 400),
    ("json-array", b'[{"template": "demo-ok"}]', ce_headers(), 400),
    ("json-string", b'"demo-ok"', ce_headers(), 400),
    ("missing-requested-by", b'{"template": "demo-ok"}', ce_headers(), 400),
    ("unknown-field", b'{"template": "demo-ok", "requestedBy": "x", "priority": 1}', ce_headers(), 400),
    ("wrong-event-type", GOOD, ce_headers(**{"ce-type": "com.x"}), 400),
    ("missing-ce-id", GOOD,
     {k: v for k, v in ce_headers().items() if k != "ce-id"}, 400),
    ("deep-nesting", deep(100_000), ce_headers(), 400),
    ("nested-param", deep(3), ce_headers(), 422),
    ("not-a-cloudevent", GOOD,
     {"content-type": "application/json", "X-Token-XPipe": SUBMIT_TOKEN}, 415),
    ("unknown-template", b'{"template": "nope", "requestedBy": "x"}', ce_headers(), 422),
    ("unknown-param", b'{"template": "demo-ok", "requestedBy": "x", "params": {"bogus": 1}}',
     ce_headers(), 422),
    ("mistyped-param", b'{"template": "demo-ok", "requestedBy": "x", "params": {"message": 5}}',
     ce_headers(), 422),
    ("missing-token", GOOD, ce_headers(token=None), 401),
    ("wrong-token", GOOD, ce_headers(token="nope"), 401),
    ("token-prefix", GOOD, ce_headers(token=SUBMIT_TOKEN[:-1]), 401),
    ("wrong-scope", GOOD, ce_headers(token=RELAY_TOKEN), 403),
    # The refused body is left unread, so gunicorn drops the connection after the 413 (without saying
    # so); the client says it will not reuse it.
    ("huge-body", b"{" + b" " * (2 * 1024 * 1024) + b"}", ce_headers(Connection="close"), 413),
]  # fmt: skip


@pytest.mark.parametrize(
    ("body", "headers", "status"), [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS]
)
def test_refused_requests_get_a_final_4xx_and_change_nothing(
    submit: FunctionServer, client: JournalClient, body: bytes, headers: dict[str, str], status: int
) -> None:
    before = journal_counts(client)
    response = raw_post(submit, body, headers)
    assert response.status_code == status, response.text
    error = response.json()
    assert error["message"]
    assert "ce-type" not in response.headers  # an error is never a CloudEvent reply
    for secret in (SUBMIT_TOKEN, RELAY_TOKEN, SUBMIT_TOKEN[:-1]):
        assert secret not in response.text
    assert journal_counts(client) == before


def test_bad_params_are_named_in_the_422(submit: FunctionServer) -> None:
    response = submit.post(submit_event(params={"message": "x" * 500}), token=SUBMIT_TOKEN)
    assert response.status_code == 422
    assert "'message'" in response.json()["message"]


def test_a_param_that_would_become_an_option_is_a_422_naming_it(
    submit: FunctionServer, client: JournalClient
) -> None:
    before = journal_counts(client)
    response = submit.post(submit_event(params={"message": "--kubeconfig=/tmp/x"}), token=SUBMIT_TOKEN)
    assert response.status_code == 422, response.text
    assert "'message'" in response.json()["message"]
    assert journal_counts(client) == before


REFUSAL_DEADLINE = 5.0  # seconds a refusal may take; a server waiting for the whole body never answers


def raw_request_head(submit: FunctionServer, headers: dict[str, str]) -> bytes:
    lines = ["POST / HTTP/1.1", f"Host: 127.0.0.1:{submit.port}", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def status_line(connection: socket.socket) -> bytes:
    """The response's first line, read within the refusal deadline (empty if the server closed first)."""
    connection.settimeout(REFUSAL_DEADLINE)
    received = b""
    while b"\r\n" not in received:
        try:
            chunk = connection.recv(4096)
        except TimeoutError:
            raise AssertionError(f"no answer within {REFUSAL_DEADLINE}s") from None
        if not chunk:
            break
        received += chunk
    return received.split(b"\r\n", 1)[0]


EARLY_REFUSALS = [
    ("413-too-large", {**ce_headers(), "Content-Length": "50000000"}, 413),
    ("401-no-token", {**ce_headers(token=None), "Content-Length": "500000"}, 401),
    ("403-wrong-scope", {**ce_headers(token=RELAY_TOKEN), "Content-Length": "500000"}, 403),
    ("415-not-a-cloudevent",
     {"content-type": "application/json", "X-Token-XPipe": SUBMIT_TOKEN, "Content-Length": "500000"}, 415),
]  # fmt: skip


@pytest.mark.parametrize(
    ("headers", "status"), [r[1:] for r in EARLY_REFUSALS], ids=[r[0] for r in EARLY_REFUSALS]
)
def test_a_refusal_is_answered_before_the_announced_body_is_sent(
    submit: FunctionServer, client: JournalClient, headers: dict[str, str], status: int
) -> None:
    before = journal_counts(client)
    with socket.create_connection(("127.0.0.1", submit.port), timeout=REFUSAL_DEADLINE) as connection:
        connection.sendall(raw_request_head(submit, headers) + b'{"template": ')  # and nothing more
        assert status_line(connection).startswith(b"HTTP/1.1 %d" % status)
    assert journal_counts(client) == before


def test_a_chunked_body_over_the_limit_is_refused_without_reading_it_all(
    submit: FunctionServer, client: JournalClient
) -> None:
    """The 413 must arrive while the sender still holds most of the body (the limit is 1 MiB)."""
    before = journal_counts(client)
    chunk = b" " * 65536
    total_chunks = 128  # 8 MiB, never announced in a Content-Length
    headers = {**ce_headers(), "Transfer-Encoding": "chunked"}
    sent = 0
    with socket.create_connection(("127.0.0.1", submit.port), timeout=REFUSAL_DEADLINE) as connection:
        connection.sendall(raw_request_head(submit, headers) + b"1\r\n{\r\n")
        deadline = time.monotonic() + 4 * REFUSAL_DEADLINE
        answered = False
        while sent < total_chunks and time.monotonic() < deadline:
            readable, _, _ = select.select([connection], [], [], 0.05)  # bounded wait for an early answer
            if readable:
                answered = True
                break
            connection.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
            sent += 1
        assert answered, f"no answer before the whole body ({sent} chunks of 64 KiB) was sent"
        assert sent < total_chunks // 2
        assert status_line(connection).startswith(b"HTTP/1.1 413")
    assert journal_counts(client) == before


def test_a_64_kib_header_is_refused_cleanly_and_changes_nothing(
    submit: FunctionServer, client: JournalClient
) -> None:
    before = journal_counts(client)
    response = raw_post(submit, b'{"template": "demo-ok", "requestedBy": "x"}', ce_headers(token="t" * 65536))
    assert 400 <= response.status_code < 500
    assert journal_counts(client) == before
    assert submit.http.get("/health/liveness").status_code == 200  # the server survived it


def test_health_endpoints_answer_and_other_methods_are_refused(submit: FunctionServer) -> None:
    assert submit.http.get("/health/liveness").status_code == 200
    assert submit.http.get("/health/readiness").status_code == 200
    assert submit.http.get("/").status_code == 405


def test_logs_are_json_lines_with_event_ids_and_never_a_token(submit: FunctionServer) -> None:
    event = submit_event()
    registered(submit.post(event, token=SUBMIT_TOKEN))
    wrong_token = ce_headers(token=SUBMIT_TOKEN + "x")
    raw_post(submit, b"{}", wrong_token)
    text = submit.wait_for_log(wrong_token["ce-id"])  # the later request's line: both are written
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    # One line per handled request, carrying what submit learned: the job, its template, the journal seq.
    handled = [
        line for line in lines if line.get("eventId") == event["id"] and line["logger"].startswith("xpipe")
    ]
    assert [line["msg"] for line in handled] == ["event handled"]
    assert handled[0]["jobId"].startswith("j-")
    assert handled[0]["template"] == "demo-ok"
    assert handled[0]["duplicate"] is False
    assert handled[0]["seq"] >= 1
    assert handled[0]["status"] == 200
    # The fields belong to that request only: the refused request after it names none of them.
    refused = [line for line in lines if line.get("eventId") == wrong_token["ce-id"]]
    assert [line["msg"] for line in refused] == ["event refused"]
    assert "template" not in refused[0]
    assert "jobId" not in refused[0]
    assert SUBMIT_TOKEN not in text


def test_a_broken_catalog_stops_submit_at_start_up_naming_file_and_field(
    journal: JournalProcess, sink: EventSink, tokens: Path, workdir: Path, step_host: StepHost
) -> None:
    broken = workdir / "broken-templates"
    broken.mkdir()
    (broken / "deploy.yaml").write_text(
        "name: deploy\nsteps: [{name: build, argv: [make], timeoutSeconds: 900}]\n"
    )
    env = function_env(
        journal, sink, tokens, XPIPE_BACKEND="local", XPIPE_LOCAL_STEP_HOST=step_host.url,
        XPIPE_TEMPLATES_DIR=str(broken),
    )  # fmt: skip
    server = FunctionServer("submit", env, workdir / "broken-submit.log")
    try:
        assert server.process.wait(timeout=30) != 0
    finally:
        server.stop()
    log = server.log()
    assert f"{broken / 'deploy.yaml'}: steps[0].timeoutSeconds" in log
    assert "max-revision-timeout-seconds" in log
