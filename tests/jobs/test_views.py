"""The job view and the job listing (JOBS.md §11), and snapshots of the whole state (§12)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from vms_adapter.protocol import MAX_BODY_BYTES
from vms_adapter.server.jobs import JobStateMachine
from vms_adapter.server.model import ModelRejection

from .driver import T0, Driver, plan, step


def test_job_view_shows_steps_attempts_directives_and_history() -> None:
    d = Driver()
    job, _ = d.register(plan(step("build", compensate=True), step("deploy", revert=True)))
    d.fact(job, "STEP_STARTED", T0 + 1, step="build", attempt=1, pod="pod-1")
    for second in (2, 3, 4):
        d.fact(job, "HEARTBEAT", T0 + second, step="build", attempt=1, pod="pod-1", progress=0.5)
    d.commit(job, [("x-order", {"order": "100042"})], T0 + 5)
    d.fact(
        job, "STEP_FINISHED", T0 + 6, step="build", attempt=1, outcome="succeeded", exitCode=0, summary="ok"
    )
    view = d.view(job)
    assert view["state"] == "RUNNING"
    assert view["currentStep"] == "deploy"
    assert (view["template"], view["requestedBy"], view["params"]) == (
        "deploy-service",
        "tests",
        {"service": "shop"},
    )
    build, deploy = view["steps"]
    assert (build["status"], deploy["status"]) == ("succeeded", "dispatched")
    attempt = build["attempts"][0]
    assert attempt["pod"] == "pod-1"
    assert (attempt["startedAt"], attempt["lastHeartbeatAt"], attempt["heartbeats"]) == (T0 + 1, T0 + 4, 3)
    assert (attempt["outcome"], attempt["exitCode"], attempt["summary"]) == ("succeeded", 0, "ok")
    assert build["compensation"] == {"service": "svc-build-undo", "attempts": [], "attemptsOmitted": 0}
    assert deploy["revert"] == {"kind": "knative-traffic", "service": "deploy", "namespace": "shop"}
    # build's dispatch was never acknowledged, but its attempt is over: it will not be redelivered.
    assert [(x["kind"], x["status"]) for x in view["directives"]] == [
        ("dispatch", "withdrawn"),
        ("dispatch", "pending"),
    ]
    # Repeated heart-beats of one attempt are counted in the attempt, not listed.
    assert [h["type"] for h in view["history"]] == [
        "JOB_REGISTERED",
        "STEP_DISPATCHED",
        "STEP_STARTED",
        "HEARTBEAT",
        "x-order",
        "STEP_FINISHED",
        "STEP_DISPATCHED",
    ]
    assert view["history"][4]["data"] == {"order": "100042"}


def _jobs(d: Driver, count: int, **kinds: Any) -> list[str]:
    return [d.register(plan(**kinds), T0 + len(d.records))[0] for _ in range(count)]


def test_listing_is_newest_first_paginated_with_an_opaque_cursor() -> None:
    d = Driver()
    jobs = _jobs(d, 7)
    seen: list[str] = []
    after = None
    for _ in range(10):
        page, after = d.model.list_jobs({}, after, 3)
        seen += [j["jobId"] for j in page]
        if after is None:
            break
    assert seen == list(reversed(jobs))
    page, cursor = d.model.list_jobs({}, None, 7)
    assert cursor is None
    assert set(page[0]) == {
        "jobId",
        "template",
        "state",
        "finished",
        "registeredAt",
        "updatedAt",
        "requestedBy",
        "currentStep",
    }


def test_listing_filters_by_state_template_and_registration_time() -> None:
    d = Driver()
    early = d.register(plan(), T0)[0]
    other = plan()
    other["template"] = "reindex"
    reindex = d.register(other, T0 + 100)[0]
    late = d.register(plan(), T0 + 200)[0]
    d.fact(late, "STEP_FINISHED", T0 + 201, step="build", attempt=1, outcome="succeeded")

    def ids(filters: dict[str, Any]) -> list[str]:
        return [j["jobId"] for j in d.model.list_jobs(filters, None, 100)[0]]

    assert ids({"state": "SUCCEEDED"}) == [late]
    assert ids({"state": ["PENDING", "SUCCEEDED"]}) == [late, reindex, early]
    assert ids({"template": "reindex"}) == [reindex]
    assert ids({"since": T0 + 100}) == [late, reindex]
    assert ids({"since": T0 + 50, "until": T0 + 200}) == [reindex]


@pytest.mark.parametrize(
    ("filters", "after", "limit", "words"),
    [
        ({"colour": "red"}, None, 10, "colour: unknown"),
        ({"state": "DONE"}, None, 10, "state"),
        ({"state": ["PENDING", 3]}, None, 10, "state"),
        ({"template": 3}, None, 10, "template"),
        ({"since": "yesterday"}, None, 10, "since"),
        ({}, "zzz", 10, "cursor"),
        ({}, "rnothex", 10, "cursor"),
        ({}, None, 0, "limit"),
    ],
)
def test_bad_listing_requests_are_refused_precisely(
    filters: dict[str, Any], after: str | None, limit: int, words: str
) -> None:
    d = Driver()
    _jobs(d, 2)
    with pytest.raises(ModelRejection) as caught:
        d.model.list_jobs(filters, after, limit)
    assert caught.value.code == "BAD_REQUEST"
    assert words in caught.value.message


def test_a_snapshot_restores_everything_including_pods_and_the_outbox() -> None:
    d = Driver()
    job, directives = d.register(plan(step("build", max_restarts=0)))
    d.fact(job, "HEARTBEAT", T0 + 1, step="build", attempt=1, pod="pod-1")
    restored = JobStateMachine()
    restored.load_state(d.model.dump_state())
    assert restored.dump_state() == d.model.dump_state()
    assert restored.job_view(job) == d.model.job_view(job)
    assert [x["id"] for x in restored.due_directives(T0 + 2, 60)] == [directives[0]["id"]]
    d.model = restored
    health = {
        "pod": "pod-1",
        "phase": "Running",
        "ready": True,
        "containers": [{"name": "c", "ready": True, "restartCount": 1, "state": "running"}],
    }
    committed, _ = d.commit("pod/pod-1", [("HEALTH", health)], T0 + 3)
    # The claim survived the snapshot; the pod had not been observed before it, so no restart counts yet.
    assert [(r.job_id, r.type) for r in committed] == [(job, "HEALTH")]
    with pytest.raises(ValueError, match="format"):
        JobStateMachine().load_state({"format": 99})


def test_a_big_job_view_still_fits_one_reply_frame() -> None:
    d = Driver()
    steps = [step(f"s{i}", compensate=True, retries=3, backoff=0) for i in range(12)]
    job, _ = d.register(plan(*steps))
    for i in range(12):
        for attempt in (1, 2, 3):
            for _ in range(3):
                d.fact(job, "HEARTBEAT", T0 + i, step=f"s{i}", attempt=attempt, pod=f"p{attempt}")
            outcome = "succeeded" if attempt == 3 else "failed"
            d.fact(
                job,
                "STEP_FINISHED",
                T0 + i,
                step=f"s{i}",
                attempt=attempt,
                outcome=outcome,
                summary="é" * 4096,
            )
    view = d.view(job)
    assert len(json.dumps({"job": view, "version": 999})) <= MAX_BODY_BYTES
    assert view["state"] == "SUCCEEDED"
    assert view["historyOmitted"] > 0
    # What is kept is the newest history, ending with the job's last record.
    assert view["history"][-1]["type"] == "JOB_FINISHED"
    assert view["history"][-1]["seq"] == d.records[-1].seq
    last = view["steps"][-1]
    assert last["attempts"][-1]["summaryTruncated"] is True
    assert last["attempts"][-1]["summary"] in ("é" * 512, "é" * 64, "")  # the tail, as far as it fits
    assert last["attemptsOmitted"] == 2
    assert [d["status"] for d in view["directives"]] == ["pending"]  # the finished directive
    assert view["directivesOmitted"] == 36


def test_a_small_job_view_is_complete() -> None:
    d = Driver()
    job, _ = d.register(plan(step("build", retries=1)))
    d.fact(job, "STEP_FINISHED", T0 + 1, step="build", attempt=1, outcome="failed", summary="boom")
    view = d.view(job)
    assert view["historyOmitted"] == 0
    assert len(view["history"]) == len(d.types(job))
    assert view["steps"][0]["attemptsOmitted"] == 0
    assert view["steps"][0]["attempts"][0]["summary"] == "boom"
    assert "summaryTruncated" not in view["steps"][0]["attempts"][0]


def test_a_listing_page_never_outgrows_a_reply_frame() -> None:
    d = Driver()
    big = plan()
    big["requestedBy"] = "r" * 256
    jobs = [d.register(big, T0)[0] for _ in range(300)]
    page, cursor = d.model.list_jobs({}, None, 1000)
    assert cursor is not None
    assert 0 < len(page) < 300
    assert len(json.dumps({"jobs": page, "next": cursor})) <= MAX_BODY_BYTES
    seen = [j["jobId"] for j in page]
    while cursor is not None:
        page, cursor = d.model.list_jobs({}, cursor, 1000)
        seen += [j["jobId"] for j in page]
    assert seen == list(reversed(jobs))
