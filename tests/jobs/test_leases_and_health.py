"""Leases, deadlines, retries with back-off, pod health attribution and function time-outs (JOBS.md §6–§9)."""

from __future__ import annotations

from typing import Any

from vms_adapter.server.jobs.records import ACTION_TIMEOUT_S, DISPATCH_ALLOWANCE_S

from .driver import T0, Driver, plan, step


def health(pod: str, *, ready: bool = True, restarts: int = 0, phase: str = "Running") -> dict[str, Any]:
    return {
        "pod": pod,
        "phase": phase,
        "ready": ready,
        "containers": [
            {"name": "user-container", "ready": ready, "restartCount": restarts, "state": "running"}
        ],
        "observedAt": "2026-11-25T13:00:00Z",
    }


def attempts(d: Driver, job: str, name: str = "build") -> list[dict[str, Any]]:
    for s in d.view(job)["steps"]:
        if s["name"] == name:
            return list(s["attempts"])
    raise AssertionError(name)


def test_first_lease_runs_from_the_dispatch_and_expiry_retries_after_backoff() -> None:
    d = Driver()
    job, directives = d.register(plan(step("build", retries=2, heartbeat=30, backoff=5, factor=3)))
    assert directives[0]["event"]["data"]["attempt"] == 1
    first = DISPATCH_ALLOWANCE_S  # the first lease allows for queueing: max(heart-beat timeout, allowance)
    assert first > 30
    assert d.sweep(T0 + first)[0] == []  # exactly at the lease end: still held
    records, _ = d.sweep(T0 + first + 1)
    assert [r.type for r in records] == ["ATTEMPT_FAILED", "STEP_DISPATCHED"]
    assert records[0].data["reason"] == "lease-expired"
    retry_due = T0 + first + 1 + 5
    assert records[1].data["dueAt"] == retry_due  # retry 1 waits backoffSeconds
    # Not due yet: the retry is not handed out; once due, a sweep returns it.
    assert [x["id"] for x in d.model.due_directives(retry_due - 1, 60)] == []
    due = d.model.due_directives(retry_due, 60)
    assert [(x["kind"], x["event"]["data"]["attempt"]) for x in due] == [("dispatch", 2)]
    # Attempt 2's lease starts at its due time; attempt 3 waits backoffSeconds * factor.
    records, _ = d.sweep(retry_due + first + 1)
    assert records[1].data["attempt"] == 3
    assert records[1].data["dueAt"] == retry_due + first + 1 + 15
    records, _ = d.sweep(retry_due + first + 1 + 15 + first + 1)
    assert [r.type for r in records] == ["ATTEMPT_FAILED", "JOB_FAILED", "JOB_FINISHED"]
    assert d.state(job) == "FAILED"


def test_a_heartbeat_timeout_longer_than_the_allowance_is_the_first_lease() -> None:
    d = Driver()
    d.register(plan(step("build", heartbeat=DISPATCH_ALLOWANCE_S + 30)))
    assert d.sweep(T0 + DISPATCH_ALLOWANCE_S + 30)[0] == []
    assert [r.type for r in d.sweep(T0 + DISPATCH_ALLOWANCE_S + 31)[0]][:1] == ["ATTEMPT_FAILED"]


def test_after_the_first_heartbeat_the_lease_is_the_heartbeat_timeout_alone() -> None:
    """A step that started, sent heart-beats and then stalled is not given the dispatch allowance."""
    d = Driver()
    job, _ = d.register(plan(step("build", heartbeat=10)))
    d.fact(job, "STEP_STARTED", T0 + 2, step="build", attempt=1, pod="p")
    d.fact(job, "HEARTBEAT", T0 + 5, step="build", attempt=1, pod="p")
    assert attempts(d, job)[0]["leaseUntil"] == T0 + 15
    assert d.sweep(T0 + 15)[0] == []
    records, _ = d.sweep(T0 + 16)
    assert records[0].data["reason"] == "lease-expired"
    assert d.replayed().dump_state() == d.model.dump_state()


def test_heartbeats_renew_the_lease() -> None:
    d = Driver()
    job, _ = d.register(plan(step("build", heartbeat=10)))
    for second in (5, 14, 23):
        d.fact(job, "HEARTBEAT", T0 + second, step="build", attempt=1, pod="p", progress=second / 100)
        assert d.sweep(T0 + second + 9)[0] == []
    assert [r.type for r in d.sweep(T0 + 34)[0]][:1] == ["ATTEMPT_FAILED"]
    attempt = attempts(d, job)[0]
    assert attempt["heartbeats"] == 3
    assert attempt["lastHeartbeatAt"] == T0 + 23
    assert attempt["progress"] == 0.23
    assert attempt["reason"] == "lease-expired"


def test_overrun_deadline_times_the_attempt_out_even_with_heartbeats() -> None:
    d = Driver()
    job, directives = d.register(plan(step("build", timeout=60, heartbeat=30)))
    assert directives[0]["event"]["data"]["deadline"].endswith("Z")
    for second in (20, 40, 60):
        d.fact(job, "HEARTBEAT", T0 + second, step="build", attempt=1, pod="p")
    records, _ = d.sweep(T0 + 61)
    assert records[0].data["outcome"] == "timed-out"
    assert records[0].data["reason"] == "deadline-exceeded"
    assert d.state(job) == "FAILED"


def test_late_heartbeat_of_an_expired_attempt_changes_nothing() -> None:
    d = Driver()
    job, _ = d.register(plan(step("build", retries=1)))
    d.sweep(T0 + 100)
    before = attempts(d, job)
    _, directives = d.commit(job, [("HEARTBEAT", {"step": "build", "attempt": 1, "pod": "p"})], T0 + 101)
    assert directives == []
    assert attempts(d, job) == before


def test_health_is_attributed_to_the_attempt_on_the_pod_and_idle_pods_are_ignored() -> None:
    d = Driver()
    job, _ = d.register(plan(step("build")))
    # Before any heart-beat names the pod, its health belongs to no job.
    committed, _ = d.commit("pod/p1", [("HEALTH", health("p1", restarts=3))], T0 + 1)
    assert [(r.job_id, r.type) for r in committed] == [("pod/p1", "HEALTH")]
    d.fact(job, "HEARTBEAT", T0 + 2, step="build", attempt=1, pod="p1")
    committed, _ = d.commit("pod/p1", [("HEALTH", health("p1", restarts=4))], T0 + 3)
    assert [(r.job_id, r.type) for r in committed] == [(job, "HEALTH")]
    assert committed[0].data["attemptRestarts"] == 1  # the 3 restarts before the claim do not count
    assert attempts(d, job)[0]["health"]["attemptRestarts"] == 1
    # Another pod's health never lands on this job.
    committed, _ = d.commit("pod/p2", [("HEALTH", health("p2", ready=False))], T0 + 4)
    assert committed[0].job_id == "pod/p2"


def test_restarts_above_the_threshold_fail_the_attempt_at_once() -> None:
    d = Driver()
    job, _ = d.register(plan(step("build", max_restarts=1)))
    d.fact(job, "HEARTBEAT", T0 + 1, step="build", attempt=1, pod="p1")
    d.commit("pod/p1", [("HEALTH", health("p1", restarts=0))], T0 + 2)
    d.commit("pod/p1", [("HEALTH", health("p1", restarts=1))], T0 + 3)
    assert d.state(job) == "RUNNING"
    committed, directives = d.commit("pod/p1", [("HEALTH", health("p1", restarts=2))], T0 + 4)
    assert [r.type for r in committed] == ["HEALTH", "ATTEMPT_FAILED", "JOB_FAILED", "JOB_FINISHED"]
    assert committed[1].data["reason"] == "restarts"
    assert [x["kind"] for x in directives] == ["finished"]


def test_not_ready_longer_than_tolerated_fails_the_attempt_and_ready_resets_the_clock() -> None:
    d = Driver()
    job, _ = d.register(plan(step("build", not_ready=20, heartbeat=1000, timeout=5000)))
    d.fact(job, "HEARTBEAT", T0 + 1, step="build", attempt=1, pod="p1")
    d.commit("pod/p1", [("HEALTH", health("p1", ready=False))], T0 + 10)
    d.commit("pod/p1", [("HEALTH", health("p1", ready=True))], T0 + 25)
    d.commit("pod/p1", [("HEALTH", health("p1", ready=False))], T0 + 30)
    assert d.sweep(T0 + 50)[0] == []  # 20 s not ready since T0+30: at the limit, not over it
    records, _ = d.sweep(T0 + 51)
    assert [r.type for r in records][:1] == ["ATTEMPT_FAILED"]
    assert records[0].data["reason"] == "not-ready"


def test_failed_pod_phase_fails_the_attempt() -> None:
    d = Driver()
    job, _ = d.register(plan(step("build")))
    d.fact(job, "STEP_STARTED", T0 + 1, step="build", attempt=1, pod="p1")
    committed, _ = d.commit("pod/p1", [("HEALTH", health("p1", phase="Failed", ready=False))], T0 + 2)
    assert committed[1].data["reason"] == "pod-failed"


def test_a_pod_reused_by_another_job_takes_its_health_with_it() -> None:
    d = Driver()
    first, _ = d.register(plan(step("build")))
    second, _ = d.register(plan(step("build")))
    d.fact(first, "HEARTBEAT", T0 + 1, step="build", attempt=1, pod="shared")
    d.commit("pod/shared", [("HEALTH", health("shared", restarts=1))], T0 + 2)
    d.fact(first, "STEP_FINISHED", T0 + 3, step="build", attempt=1, outcome="succeeded")
    # The pod is idle now: its health goes nowhere.
    assert (
        d.commit("pod/shared", [("HEALTH", health("shared", restarts=2))], T0 + 4)[0][0].job_id
        == "pod/shared"
    )
    d.fact(second, "HEARTBEAT", T0 + 5, step="build", attempt=1, pod="shared")
    committed, _ = d.commit("pod/shared", [("HEALTH", health("shared", restarts=2))], T0 + 6)
    assert committed[0].job_id == second
    assert committed[0].data["attemptRestarts"] == 0


def test_a_retry_never_overlaps_its_failed_attempt() -> None:
    d = Driver()
    job, _ = d.register(plan(step("build", retries=3, backoff=0)))
    d.fact(job, "STEP_FINISHED", T0 + 1, step="build", attempt=1, outcome="failed")
    live = [a for a in attempts(d, job) if a["outcome"] is None]
    assert [a["attempt"] for a in live] == [2]
    # A late success of attempt 1 does not revive it.
    d.fact(job, "STEP_FINISHED", T0 + 2, step="build", attempt=1, outcome="succeeded")
    assert [a["attempt"] for a in attempts(d, job) if a["outcome"] is None] == [2]
    assert d.view(job)["steps"][0]["status"] == "dispatched"


def test_compensation_attempts_have_leases_and_retries_too() -> None:
    d = Driver()
    job, _ = d.register(
        plan(step("build", compensate=True, retries=1, backoff=0), step("deploy"), on_failure="rollback")
    )
    d.fact(job, "STEP_FINISHED", T0 + 1, step="build", attempt=1, outcome="succeeded")
    d.fact(job, "STEP_FINISHED", T0 + 2, step="deploy", attempt=1, outcome="failed")
    _, directives = d.commit(job, [("ROLLBACK_STARTED", {})], T0 + 3)
    assert [(x["event"]["data"]["step"], x["event"]["extensions"]["xpipestep"]) for x in directives] == [
        ("build:compensate", "svc-build-undo")
    ]
    first = DISPATCH_ALLOWANCE_S + 1  # just past the first lease (the allowance: longer than 30 s)
    records, _ = d.sweep(T0 + 3 + first)
    assert [(r.type, r.data.get("attempt")) for r in records] == [
        ("ATTEMPT_FAILED", 1),
        ("STEP_DISPATCHED", 2),
    ]
    records, _ = d.sweep(T0 + 3 + first + first)
    assert [r.type for r in records] == ["ATTEMPT_FAILED", "ROLLBACK_COMPLETED", "JOB_FINISHED"]
    assert d.state(job) == "ROLLBACK_FAILED"


def test_a_rollback_request_nobody_starts_times_out_to_rollback_failed() -> None:
    d = Driver()
    job, _ = d.register(plan(step("build"), on_failure="rollback"))
    d.fact(job, "STEP_FINISHED", T0 + 1, step="build", attempt=1, outcome="failed")
    assert d.sweep(T0 + 1 + ACTION_TIMEOUT_S)[0] == []
    records, due = d.sweep(T0 + 2 + ACTION_TIMEOUT_S)
    assert [r.type for r in records] == ["ACTION_TIMED_OUT", "JOB_FINISHED"]
    assert d.state(job) == "ROLLBACK_FAILED"
    # The unanswered rollback directive is withdrawn; only the finished one is handed out.
    assert [x["kind"] for x in due] == ["finished"]


def test_cancel_then_rollback_that_nobody_starts_times_out_too() -> None:
    d = Driver()
    job, _ = d.register(plan(step("build")))
    d.fact(job, "JOB_CANCELLED", T0 + 1, reason="stop", thenRollback=True)
    records, _ = d.sweep(T0 + 2 + ACTION_TIMEOUT_S)
    assert [r.type for r in records] == ["ACTION_TIMED_OUT", "JOB_FINISHED"]
    assert d.state(job) == "ROLLBACK_FAILED"
    assert d.view(job)["cancel"]["reason"] == "stop"


def test_a_diagnosis_that_never_comes_times_out_and_the_job_finishes_failed() -> None:
    d = Driver()
    job, _ = d.register(plan(step("build"), on_failure="diagnose"))
    _, directives = d.commit(
        job, [("STEP_FINISHED", {"step": "build", "attempt": 1, "outcome": "failed"})], T0 + 1
    )
    diagnose = next(x for x in directives if x["kind"] == "diagnose")
    assert diagnose["event"]["type"] == "com.xpipe.job.diagnostic.requested"
    assert diagnose["event"]["data"]["directive"]["action"] == "diagnose"
    records, _ = d.sweep(T0 + 2 + ACTION_TIMEOUT_S)
    assert [r.type for r in records] == ["ACTION_TIMED_OUT", "JOB_FINISHED"]
    assert d.view(job)["finished"] is True
    assert d.view(job)["diagnosis"]["status"] == "timed-out"


def test_a_revert_nobody_reports_times_out_to_rollback_failed() -> None:
    d = Driver()
    job, _ = d.register(plan(step("deploy", revert=True), step("test"), on_failure="rollback"))
    d.fact(job, "STEP_FINISHED", T0 + 1, step="deploy", attempt=1, outcome="succeeded")
    d.fact(job, "STEP_FINISHED", T0 + 2, step="test", attempt=1, outcome="failed")
    d.fact(job, "ROLLBACK_STARTED", T0 + 3)
    records, _ = d.sweep(T0 + 4 + ACTION_TIMEOUT_S)
    assert [r.type for r in records] == ["ACTION_TIMED_OUT", "ROLLBACK_COMPLETED", "JOB_FINISHED"]
    assert d.state(job) == "ROLLBACK_FAILED"
