"""The journal goes away and comes back: functions answer 503 (Knative redelivers), report not ready, and
the redelivered event then takes effect exactly once."""

from __future__ import annotations

from cloudevents.http import from_http
from functions_harness import (
    SUBMIT_TOKEN,
    EventSink,
    FunctionServer,
    JournalProcess,
    cloud_event,
    journal_counts,
)

from xpipe.events import PIPELINE_SUBMIT


def test_journal_down_gives_503_and_the_retried_event_registers_one_job(
    submit: FunctionServer, journal: JournalProcess
) -> None:
    event = cloud_event(PIPELINE_SUBMIT, {"template": "demo-ok", "requestedBy": "magento:admin"})
    with journal.client() as client:
        jobs_before = journal_counts(client)[0]
    journal.stop()
    try:
        response = submit.post(event, token=SUBMIT_TOKEN)
        assert response.status_code == 503, response.text
        assert "ce-type" not in response.headers
        assert submit.http.get("/health/readiness").status_code == 503
        assert submit.http.get("/health/liveness").status_code == 200
    finally:
        journal.start()  # same port, same data directory
    submit.wait_until("/health/readiness")
    first = submit.post(event, token=SUBMIT_TOKEN)
    assert first.status_code == 200, first.text
    again = submit.post(event, token=SUBMIT_TOKEN)
    assert again.status_code == 200
    job_id = (from_http(dict(first.headers), first.content).get_data() or {})["jobId"]
    assert (from_http(dict(again.headers), again.content).get_data() or {})["jobId"] == job_id
    with journal.client() as client:
        assert journal_counts(client)[0] == jobs_before + 1
        assert client.read_job(job_id)["state"] == "PENDING"


def test_a_broker_that_refuses_does_not_fail_a_durable_submit(
    submit: FunctionServer, journal: JournalProcess, sink: EventSink
) -> None:
    event = cloud_event(PIPELINE_SUBMIT, {"template": "demo-ok", "requestedBy": "magento:admin"})
    sink.status = 503
    try:
        response = submit.post(event, token=SUBMIT_TOKEN)
    finally:
        sink.status = 202
    assert response.status_code == 200  # the job is durable; the sweep republishes the dispatch
    job_id = (from_http(dict(response.headers), response.content).get_data() or {})["jobId"]
    with journal.client() as client:
        statuses = [d["status"] for d in client.read_job(job_id)["directives"]]
    assert statuses == ["pending"]
