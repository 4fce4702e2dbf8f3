"""The transactional outbox: ids, events, hand-out, redelivery, acknowledgement, withdrawal (JOBS.md §10)."""

from __future__ import annotations

import json

import pytest

from vms_adapter.protocol import MAX_BODY_BYTES
from vms_adapter.server.jobs.records import DISPATCH_ALLOWANCE_S
from vms_adapter.server.model import ModelRejection

from .driver import T0, Driver, plan, step


def test_registration_yields_the_dispatch_of_step_one_in_the_commit_reply() -> None:
    d = Driver()
    job, directives = d.register(plan(step("build", timeout=120), params={"service": "shop", "tag": "v2"}))
    assert directives == [
        {
            "id": f"{job}/d1",
            "jobId": job,
            "kind": "dispatch",
            "dueAt": T0,
            "event": {
                "type": "com.xpipe.step.run",
                "source": "/xpipe/journal",
                "subject": "build/1",
                "extensions": {"xpipejob": job, "xpipestep": "svc-build"},
                "data": {
                    "jobId": job,
                    "step": "build",
                    "attempt": 1,
                    "params": {"service": "shop", "tag": "v2"},
                    "deadline": "2025-11-24T16:02:00.000Z",
                },
            },
        }
    ]


def test_unacknowledged_directives_are_redelivered_after_the_interval_until_acknowledged() -> None:
    d = Driver()
    job, directives = d.register(plan(step("build", heartbeat=10_000, timeout=10_000)))
    ident = directives[0]["id"]
    assert d.sweep(T0 + 59, redelivery_s=60)[1] == []  # handed out in the commit reply 59 s ago
    assert [x["id"] for x in d.sweep(T0 + 60, redelivery_s=60)[1]] == [ident]
    assert d.sweep(T0 + 61, redelivery_s=60)[1] == []
    assert [x["id"] for x in d.sweep(T0 + 120, redelivery_s=60)[1]] == [ident]
    acked = d.ack([ident], T0 + 121)
    assert [(r.job_id, r.type, r.data) for r in acked] == [(job, "DIRECTIVES_ACKED", {"ids": [ident]})]
    assert d.sweep(T0 + 1000, redelivery_s=60)[1] == []
    assert d.view(job)["directives"][0]["status"] == "acked"


def test_acknowledging_twice_writes_nothing_and_unknown_ids_are_refused() -> None:
    d = Driver()
    job, directives = d.register(plan())
    ident = directives[0]["id"]
    assert len(d.ack([ident, ident])) == 1
    assert d.ack([ident]) == []
    for bad in (f"{job}/d99", "nojob/d1", "garbage"):
        with pytest.raises(ModelRejection) as caught:
            d.ack([ident, bad])
        assert caught.value.code == "UNKNOWN_DIRECTIVE"
        assert bad in caught.value.message


def test_ack_groups_ids_by_job() -> None:
    d = Driver()
    first, a = d.register(plan())
    second, b = d.register(plan())
    records = d.ack([a[0]["id"], b[0]["id"]])
    assert sorted(r.job_id for r in records) == sorted([first, second])


def test_the_dispatch_of_an_attempt_that_ended_is_withdrawn_not_redelivered() -> None:
    d = Driver()
    job, directives = d.register(plan(step("build", retries=1, backoff=0)))
    _, due = d.sweep(
        T0 + DISPATCH_ALLOWANCE_S + 1
    )  # lease expired: attempt 2 dispatched, attempt 1's dispatch withdrawn
    assert [(x["kind"], x["event"]["data"]["attempt"]) for x in due] == [("dispatch", 2)]
    statuses = {x["id"]: x["status"] for x in d.view(job)["directives"]}
    assert statuses[directives[0]["id"]] == "withdrawn"
    assert d.ack([directives[0]["id"]]) == []  # acknowledging a withdrawn entry is a no-op


def test_cancel_sends_a_cancel_directive_to_the_running_attempt() -> None:
    d = Driver()
    job, _ = d.register(plan(step("build"), step("deploy")))
    d.fact(job, "HEARTBEAT", T0 + 1, step="build", attempt=1, pod="p")
    directives = d.fact(job, "JOB_CANCELLED", T0 + 2, reason="operator asked", thenRollback=False)
    assert [x["kind"] for x in directives] == ["cancel", "finished"]
    cancel = directives[0]["event"]
    assert cancel["type"] == "com.xpipe.step.cancel"
    assert cancel["extensions"] == {"xpipejob": job, "xpipestep": "svc-build"}
    assert cancel["data"] == {
        "jobId": job, "step": "build", "attempt": 1, "reason": "operator asked", "pod": "p"
    }  # fmt: skip
    assert directives[1]["event"]["data"] == {"jobId": job, "outcome": "CANCELLED"}
    assert d.view(job)["steps"][0]["attempts"][0]["outcome"] == "cancelled"


def test_cancel_of_an_attempt_that_never_beat_names_no_pod() -> None:
    d = Driver()
    job, _ = d.register(plan(step("build")))
    directives = d.fact(job, "JOB_CANCELLED", T0 + 1, reason="stop", thenRollback=False)
    assert directives[0]["kind"] == "cancel"
    assert directives[0]["event"]["data"] == {"jobId": job, "step": "build", "attempt": 1, "reason": "stop"}


def test_cancel_of_a_retry_not_yet_due_withdraws_its_dispatch_and_sends_no_cancel() -> None:
    d = Driver()
    job, _ = d.register(plan(step("build", retries=1, backoff=100)))
    d.fact(job, "STEP_FINISHED", T0 + 1, step="build", attempt=1, outcome="failed")
    directives = d.fact(job, "JOB_CANCELLED", T0 + 2, reason="stop", thenRollback=False)
    assert [x["kind"] for x in directives] == ["finished"]
    assert [x["kind"] for x in d.sweep(T0 + 500)[1]] == ["finished"]  # the retry's dispatch never goes out


def test_cancel_then_rollback_compensates_what_succeeded() -> None:
    d = Driver()
    job, _ = d.register(
        plan(step("a", compensate=True), step("b", compensate=True), step("c", compensate=True))
    )
    d.fact(job, "STEP_FINISHED", T0 + 1, step="a", attempt=1, outcome="succeeded")
    d.fact(job, "STEP_FINISHED", T0 + 2, step="b", attempt=1, outcome="succeeded")
    directives = d.fact(job, "JOB_CANCELLED", T0 + 3, reason="stop", thenRollback=True)
    assert [x["kind"] for x in directives] == ["cancel", "rollback"]
    rollback = directives[1]["event"]
    assert rollback["type"] == "com.xpipe.job.rollback.requested"
    assert rollback["data"]["directive"] == {"id": directives[1]["id"], "action": "rollback"}
    order = []
    directives = d.fact(job, "ROLLBACK_STARTED", T0 + 4, directive=directives[1]["id"])
    while directives and directives[0]["kind"] == "dispatch":
        label = directives[0]["event"]["data"]["step"]
        order.append(label)
        directives = d.fact(job, "STEP_FINISHED", T0 + 5, step=label, attempt=1, outcome="succeeded")
    assert order == ["b:compensate", "a:compensate"]
    assert d.state(job) == "ROLLED_BACK"
    assert [x["event"]["data"]["outcome"] for x in directives] == ["ROLLED_BACK"]


def test_revert_directive_names_the_knative_target() -> None:
    d = Driver()
    job, _ = d.register(
        plan(step("deploy", revert=True, compensate=True), step("test"), on_failure="rollback")
    )
    d.fact(job, "STEP_FINISHED", T0 + 1, step="deploy", attempt=1, outcome="succeeded")
    d.fact(job, "STEP_FINISHED", T0 + 2, step="test", attempt=1, outcome="failed")
    directives = d.fact(job, "ROLLBACK_STARTED", T0 + 3)
    assert [x["event"]["data"]["step"] for x in directives] == ["deploy:compensate"]  # compensation first
    directives = d.fact(
        job, "STEP_FINISHED", T0 + 4, step="deploy:compensate", attempt=1, outcome="succeeded"
    )
    assert [x["kind"] for x in directives] == ["revert"]
    assert directives[0]["event"]["data"]["directive"] == {
        "id": directives[0]["id"],
        "action": "revert",
        "step": "deploy",
        "kind": "knative-traffic",
        "service": "deploy",
        "namespace": "shop",
    }


def test_directives_of_returns_only_due_entries_of_the_given_records() -> None:
    d = Driver()
    job, _ = d.register(plan(step("build", retries=1, backoff=30)))
    committed, directives = d.commit(
        job, [("STEP_FINISHED", {"step": "build", "attempt": 1, "outcome": "failed"})], T0 + 1
    )
    assert [r.type for r in committed] == ["STEP_FINISHED", "STEP_DISPATCHED"]
    assert directives == []  # the retry is due in 30 s: a later sweep hands it out
    assert [x["kind"] for x in d.sweep(T0 + 31)[1]] == ["dispatch"]


def test_a_sweep_hands_out_no_more_than_fit_one_reply_and_the_rest_next_time() -> None:
    d = Driver()
    jobs = [d.register(plan(step("build", heartbeat=10_000, timeout=10_000)), T0)[0] for _ in range(120)]
    first = d.model.due_directives(T0 + 100, 60)
    assert 0 < len(first) < 120
    assert len(json.dumps({"seq": None, "records": 0, "directives": first})) <= MAX_BODY_BYTES
    second = d.model.due_directives(T0 + 101, 60)
    rest = d.model.due_directives(T0 + 102, 60)
    handed = [x["jobId"] for x in first + second + rest]
    assert sorted(handed) == sorted(jobs)
    assert handed[: len(first)] == jobs[: len(first)]  # oldest first
