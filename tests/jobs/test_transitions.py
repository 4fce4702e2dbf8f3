"""Every transition of the job state machine, valid and invalid, as a table (JOBS.md §3, §5).

Each row starts a job in a named situation, commits one fact and checks the state, the derived records
written in the same transaction, and (for refusals) the error code, that the message names the job, its
state and the record, and that nothing changed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from vms_adapter.server.jobs.states import TRANSITIONS
from vms_adapter.server.model import ModelRejection

from .driver import T0, Driver, plan, step

Setup = Callable[[Driver], str]


def finish(
    d: Driver, job: str, name: str, outcome: str = "succeeded", attempt: int = 1, at: float = 0.0
) -> None:
    d.fact(job, "STEP_FINISHED", T0 + at, step=name, attempt=attempt, outcome=outcome)


def pending(d: Driver) -> str:
    return d.register(plan(step("build"), step("deploy")))[0]


def pending_one_step(d: Driver) -> str:
    return d.register(plan(step("build")))[0]


def running(d: Driver) -> str:
    job = pending(d)
    d.fact(job, "HEARTBEAT", T0 + 1, step="build", attempt=1, pod="pod-a")
    return job


def running_with_retries(d: Driver) -> str:
    job = d.register(plan(step("build", retries=2, backoff=5, factor=2)))[0]
    d.fact(job, "HEARTBEAT", T0 + 1, step="build", attempt=1, pod="pod-a")
    return job


def failing(on_failure: str) -> Setup:
    """The last step of a two-step job is running and will fail for good; build (compensable) succeeded."""

    def setup(d: Driver) -> str:
        job = d.register(
            plan(step("build", compensate=True), step("deploy", revert=True), on_failure=on_failure)
        )[0]
        finish(d, job, "build", at=1)
        return job

    return setup


def failed_awaiting(on_failure: str) -> Setup:
    def setup(d: Driver) -> str:
        job = failing(on_failure)(d)
        finish(d, job, "deploy", "failed", at=2)
        return job

    return setup


def failed_without_compensations(d: Driver) -> str:
    job = d.register(plan(step("build"), on_failure="rollback"))[0]
    finish(d, job, "build", "failed", at=1)
    return job


def rolling_back(d: Driver) -> str:
    """ROLLING_BACK with build's compensation (attempt 1) in flight."""
    job = failed_awaiting("rollback")(d)
    d.fact(job, "ROLLBACK_STARTED", T0 + 3)
    return job


def reverting(d: Driver) -> str:
    """ROLLING_BACK with deploy's revert directed (deploy succeeded, test failed)."""
    job = d.register(plan(step("deploy", revert=True), step("test"), on_failure="rollback"))[0]
    finish(d, job, "deploy", at=1)
    finish(d, job, "test", "failed", at=2)
    d.fact(job, "ROLLBACK_STARTED", T0 + 3)
    return job


def succeeded(d: Driver) -> str:
    job = pending_one_step(d)
    finish(d, job, "build", at=1)
    return job


def failed_finished(d: Driver) -> str:
    job = pending_one_step(d)
    finish(d, job, "build", "failed", at=1)
    return job


def rolled_back(d: Driver) -> str:
    job = rolling_back(d)
    finish(d, job, "build:compensate", at=4)
    return job


def cancelled(d: Driver) -> str:
    job = running(d)
    d.fact(job, "JOB_CANCELLED", T0 + 2, reason="operator", thenRollback=False)
    return job


def cancelled_then_rollback(d: Driver) -> str:
    job = failing("none")(d)
    d.fact(job, "JOB_CANCELLED", T0 + 2, reason="operator", thenRollback=True)
    return job


VALID: list[tuple[str, Setup, str, dict[str, Any], str, list[str]]] = [
    # (row id, setup, fact type, fact data, state after, derived records written with the fact)
    ("pending-heartbeat", pending, "HEARTBEAT", {"step": "build", "attempt": 1, "pod": "p"}, "RUNNING", []),
    ("pending-started", pending, "STEP_STARTED", {"step": "build", "attempt": 1, "pod": "p"}, "RUNNING", []),
    (
        "pending-finished-last-step",
        pending_one_step,
        "STEP_FINISHED",
        {"step": "build", "attempt": 1, "outcome": "succeeded"},
        "SUCCEEDED",
        ["JOB_FINISHED"],
    ),
    (
        "running-step-succeeded",
        running,
        "STEP_FINISHED",
        {"step": "build", "attempt": 1, "outcome": "succeeded"},
        "RUNNING",
        ["STEP_DISPATCHED"],
    ),
    (
        "running-step-failed-retry",
        running_with_retries,
        "STEP_FINISHED",
        {"step": "build", "attempt": 1, "outcome": "failed", "exitCode": 1},
        "RUNNING",
        ["STEP_DISPATCHED"],
    ),
    (
        "running-step-timed-out-no-retries-none",
        running,
        "STEP_FINISHED",
        {"step": "build", "attempt": 1, "outcome": "timed-out"},
        "FAILED",
        ["JOB_FAILED", "JOB_FINISHED"],
    ),
    (
        "running-failed-diagnose",
        failing("diagnose"),
        "STEP_FINISHED",
        {"step": "deploy", "attempt": 1, "outcome": "failed"},
        "FAILED",
        ["JOB_FAILED", "DIAGNOSTIC_REQUESTED"],
    ),
    (
        "running-failed-rollback",
        failing("rollback"),
        "STEP_FINISHED",
        {"step": "deploy", "attempt": 1, "outcome": "failed"},
        "FAILED",
        ["JOB_FAILED", "ROLLBACK_REQUESTED"],
    ),
    (
        "running-failed-rollback-and-diagnose",
        failing("rollback-and-diagnose"),
        "STEP_FINISHED",
        {"step": "deploy", "attempt": 1, "outcome": "cancelled"},
        "FAILED",
        ["JOB_FAILED", "ROLLBACK_REQUESTED", "DIAGNOSTIC_REQUESTED"],
    ),
    (
        "pending-dead-lettered-dispatch",
        pending_one_step,
        "DEAD_LETTER",
        {"event": {"id": "j1/d1", "type": "com.xpipe.step.run"}, "errorCode": 404},
        "FAILED",
        ["JOB_FAILED", "JOB_FINISHED"],
    ),
    (
        "pending-cancelled",
        pending,
        "JOB_CANCELLED",
        {"reason": "not wanted", "thenRollback": False},
        "CANCELLED",
        ["ATTEMPT_CANCELLED", "JOB_FINISHED"],
    ),
    (
        "running-cancelled-then-rollback",
        failing("none"),
        "JOB_CANCELLED",
        {"reason": "not wanted", "thenRollback": True},
        "CANCELLED",
        ["ATTEMPT_CANCELLED", "ROLLBACK_REQUESTED"],
    ),
    (
        "failed-rollback-started",
        failed_awaiting("rollback"),
        "ROLLBACK_STARTED",
        {},
        "ROLLING_BACK",
        ["STEP_DISPATCHED"],
    ),
    (
        "failed-rollback-started-nothing-to-undo",
        failed_without_compensations,
        "ROLLBACK_STARTED",
        {"directive": "j1/d2"},
        "ROLLED_BACK",
        ["ROLLBACK_COMPLETED", "JOB_FINISHED"],
    ),
    (
        "cancelled-rollback-started",
        cancelled_then_rollback,
        "ROLLBACK_STARTED",
        {},
        "ROLLING_BACK",
        ["STEP_DISPATCHED"],
    ),
    (
        "failed-diagnostic-report",
        failed_awaiting("diagnose"),
        "DIAGNOSTIC_REPORT",
        {"report": {"pods": []}},
        "FAILED",
        ["JOB_FINISHED"],
    ),
    (
        "rolling-back-diagnostic-report-before-saga-end",
        lambda d: (j := failed_awaiting("rollback-and-diagnose")(d), d.fact(j, "ROLLBACK_STARTED", T0 + 3))[
            0
        ],
        "DIAGNOSTIC_REPORT",
        {"report": {}},
        "ROLLING_BACK",
        [],
    ),
    (
        "rolling-back-compensated",
        rolling_back,
        "STEP_FINISHED",
        {"step": "build:compensate", "attempt": 1, "outcome": "succeeded"},
        "ROLLED_BACK",
        ["ROLLBACK_COMPLETED", "JOB_FINISHED"],
    ),
    (
        "rolling-back-compensation-failed",
        rolling_back,
        "STEP_FINISHED",
        {"step": "build:compensate", "attempt": 1, "outcome": "failed"},
        "ROLLBACK_FAILED",
        ["ROLLBACK_COMPLETED", "JOB_FINISHED"],
    ),
    (
        "rolling-back-revert-succeeded",
        reverting,
        "REVERT_FINISHED",
        {"step": "deploy", "outcome": "succeeded", "revision": "deploy-00001"},
        "ROLLED_BACK",
        ["ROLLBACK_COMPLETED", "JOB_FINISHED"],
    ),
    (
        "rolling-back-revert-failed",
        reverting,
        "REVERT_FINISHED",
        {"step": "deploy", "outcome": "failed"},
        "ROLLBACK_FAILED",
        ["ROLLBACK_COMPLETED", "JOB_FINISHED"],
    ),
    ("running-annotation", running, "x-order", {"order": "100042"}, "RUNNING", []),
    ("succeeded-annotation", succeeded, "x-audit", {"by": "ops"}, "SUCCEEDED", []),
]

IDEMPOTENT: list[tuple[str, Setup, str, dict[str, Any]]] = [
    ("late-heartbeat", succeeded, "HEARTBEAT", {"step": "build", "attempt": 1, "pod": "p"}),
    ("late-started", succeeded, "STEP_STARTED", {"step": "build", "attempt": 1, "pod": "p"}),
    ("second-finished", succeeded, "STEP_FINISHED", {"step": "build", "attempt": 1, "outcome": "failed"}),
    (
        "finished-after-cancel",
        cancelled,
        "STEP_FINISHED",
        {"step": "build", "attempt": 1, "outcome": "succeeded"},
    ),
    ("second-cancel", cancelled, "JOB_CANCELLED", {"reason": "again", "thenRollback": True}),
    ("second-rollback-started", rolling_back, "ROLLBACK_STARTED", {}),
    ("rollback-started-after-end", rolled_back, "ROLLBACK_STARTED", {}),
    (
        "second-diagnostic-report",
        lambda d: (j := failed_awaiting("diagnose")(d), d.fact(j, "DIAGNOSTIC_REPORT", T0 + 3, report={}))[0],
        "DIAGNOSTIC_REPORT",
        {"report": {"again": True}},
    ),
    (
        "second-revert-finished",
        lambda d: (
            j := reverting(d),
            d.fact(j, "REVERT_FINISHED", T0 + 4, step="deploy", outcome="succeeded"),
        )[0],
        "REVERT_FINISHED",
        {"step": "deploy", "outcome": "failed"},
    ),
    ("dead-letter-of-other-event", running, "DEAD_LETTER", {"event": {"type": "com.xpipe.job.finished"}}),
]

INVALID: list[tuple[str, Setup, str, dict[str, Any], str, str]] = [
    # (row id, setup, fact type, fact data, error code, words the message must contain)
    ("register-twice", pending, "JOB_REGISTERED", plan(), "INVALID_TRANSITION", "already registered"),
    (
        "heartbeat-never-dispatched",
        pending,
        "HEARTBEAT",
        {"step": "build", "attempt": 2, "pod": "p"},
        "INVALID_TRANSITION",
        "attempt 2 of step build was never dispatched",
    ),
    (
        "heartbeat-next-step-not-dispatched",
        running,
        "HEARTBEAT",
        {"step": "deploy", "attempt": 1, "pod": "p"},
        "INVALID_TRANSITION",
        "never dispatched",
    ),
    (
        "finished-unknown-step",
        running,
        "STEP_FINISHED",
        {"step": "lint", "attempt": 1, "outcome": "succeeded"},
        "INVALID_TRANSITION",
        "no step lint",
    ),
    (
        "compensation-of-uncompensable-step",
        running,
        "STEP_FINISHED",
        {"step": "build:compensate", "attempt": 1, "outcome": "succeeded"},
        "INVALID_TRANSITION",
        "no step build:compensate",
    ),
    ("rollback-started-while-running", running, "ROLLBACK_STARTED", {}, "INVALID_TRANSITION", "no rollback"),
    (
        "rollback-started-wrong-directive",
        failed_awaiting("rollback"),
        "ROLLBACK_STARTED",
        {"directive": "j1/d99"},
        "INVALID_TRANSITION",
        "not j1/d99",
    ),
    (
        "rollback-started-policy-none",
        failed_finished,
        "ROLLBACK_STARTED",
        {},
        "INVALID_TRANSITION",
        "no rollback",
    ),
    (
        "report-while-running",
        running,
        "DIAGNOSTIC_REPORT",
        {"report": {}},
        "INVALID_TRANSITION",
        "no diagnosis",
    ),
    (
        "report-not-requested",
        failed_awaiting("rollback"),
        "DIAGNOSTIC_REPORT",
        {"report": {}},
        "INVALID_TRANSITION",
        "no diagnosis",
    ),
    (
        "revert-while-running",
        running,
        "REVERT_FINISHED",
        {"step": "deploy", "outcome": "succeeded"},
        "INVALID_TRANSITION",
        "no revert of step deploy",
    ),
    (
        "revert-not-directed-yet",
        rolling_back,
        "REVERT_FINISHED",
        {"step": "deploy", "outcome": "succeeded"},
        "INVALID_TRANSITION",
        "no revert of step deploy",
    ),
    (
        "cancel-succeeded",
        succeeded,
        "JOB_CANCELLED",
        {"reason": "r", "thenRollback": False},
        "INVALID_TRANSITION",
        "",
    ),
    (
        "cancel-failed",
        failed_finished,
        "JOB_CANCELLED",
        {"reason": "r", "thenRollback": False},
        "INVALID_TRANSITION",
        "",
    ),
    (
        "cancel-awaiting-rollback",
        failed_awaiting("rollback"),
        "JOB_CANCELLED",
        {"reason": "r", "thenRollback": False},
        "INVALID_TRANSITION",
        "",
    ),
    (
        "cancel-rolling-back",
        rolling_back,
        "JOB_CANCELLED",
        {"reason": "r", "thenRollback": True},
        "INVALID_TRANSITION",
        "",
    ),
    (
        "cancel-rolled-back",
        rolled_back,
        "JOB_CANCELLED",
        {"reason": "r", "thenRollback": True},
        "INVALID_TRANSITION",
        "",
    ),
    (
        "client-writes-dispatch",
        running,
        "STEP_DISPATCHED",
        {"step": "build"},
        "INVALID_RECORD",
        "only by the journal",
    ),
    (
        "client-writes-finished",
        running,
        "JOB_FINISHED",
        {"state": "SUCCEEDED"},
        "INVALID_RECORD",
        "only by the journal",
    ),
    ("unknown-type", running, "STEP_PAUSED", {}, "INVALID_RECORD", "unknown record type"),
    (
        "heartbeat-bad-progress",
        running,
        "HEARTBEAT",
        {"step": "build", "attempt": 1, "pod": "p", "progress": 2},
        "INVALID_RECORD",
        "progress",
    ),
    (
        "finished-bad-outcome",
        running,
        "STEP_FINISHED",
        {"step": "build", "attempt": 1, "outcome": "exploded"},
        "INVALID_RECORD",
        "outcome",
    ),
    (
        "heartbeat-unknown-field",
        running,
        "HEARTBEAT",
        {"step": "build", "attempt": 1, "pod": "p", "podName": "p"},
        "INVALID_RECORD",
        "podName: unknown field",
    ),
    (
        "heartbeat-other-job-id",
        running,
        "HEARTBEAT",
        {"jobId": "j9", "step": "build", "attempt": 1, "pod": "p"},
        "INVALID_RECORD",
        "jobId",
    ),
]


@pytest.mark.parametrize(
    ("setup", "kind", "data", "after", "derived"), [row[1:] for row in VALID], ids=[row[0] for row in VALID]
)
def test_valid_transition(
    setup: Setup, kind: str, data: dict[str, Any], after: str, derived: list[str]
) -> None:
    d = Driver()
    job = setup(d)
    committed, _ = d.commit(job, [(kind, data)], T0 + 10)
    assert d.state(job) == after
    assert [r.type for r in committed] == [kind, *derived]
    assert d.replayed().dump_state() == d.model.dump_state()


@pytest.mark.parametrize(
    ("setup", "kind", "data"), [row[1:] for row in IDEMPOTENT], ids=[row[0] for row in IDEMPOTENT]
)
def test_late_or_repeated_fact_is_accepted_and_changes_nothing(
    setup: Setup, kind: str, data: dict[str, Any]
) -> None:
    d = Driver()
    job = setup(d)
    before = d.model.dump_state()["jobs"][job]
    before_view = d.view(job)
    committed, directives = d.commit(job, [(kind, data)], T0 + 10)
    assert [r.type for r in committed] == [kind]
    assert directives == []
    after = d.model.dump_state()["jobs"][job]
    after["updatedAt"] = before["updatedAt"]
    assert after == before
    assert d.view(job)["steps"] == before_view["steps"]


@pytest.mark.parametrize(
    ("setup", "kind", "data", "code", "words"), [row[1:] for row in INVALID], ids=[row[0] for row in INVALID]
)
def test_invalid_transition_is_refused_and_changes_nothing(
    setup: Setup, kind: str, data: dict[str, Any], code: str, words: str
) -> None:
    d = Driver()
    job = setup(d)
    before = d.model.dump_state()
    with pytest.raises(ModelRejection) as caught:
        d.commit(job, [(kind, data)], T0 + 10)
    assert caught.value.code == code
    assert words in caught.value.message
    if code == "INVALID_TRANSITION":
        state = d.state(job)
        assert f"job {job} is {state}: {kind} refused" in caught.value.message
    assert d.model.dump_state() == before


def test_unknown_job_is_refused_but_annotations_and_dead_letters_are_not() -> None:
    d = Driver()
    with pytest.raises(ModelRejection) as caught:
        d.commit("nope", [("HEARTBEAT", {"step": "build", "attempt": 1, "pod": "p"})])
    assert caught.value.code == "UNKNOWN_JOB"
    assert "nope" in caught.value.message
    committed, _ = d.commit("nope", [("x-note", {"any": "thing"})])
    assert [r.job_id for r in committed] == ["nope"]
    committed, _ = d.commit("nope", [("DEAD_LETTER", {"event": {"type": "com.xpipe.step.run", "id": "x"}})])
    assert d.state("nope") is None
    assert d.model.job_view("nope") is None


def test_a_refused_record_refuses_the_whole_transaction() -> None:
    d = Driver()
    job = running(d)
    before = d.model.dump_state()
    good = ("STEP_FINISHED", {"step": "build", "attempt": 1, "outcome": "succeeded"})
    bad = ("HEARTBEAT", {"step": "deploy", "attempt": 2, "pod": "p"})
    with pytest.raises(ModelRejection):
        d.commit(job, [good, bad], T0 + 5)
    assert d.model.dump_state() == before


def test_several_facts_in_one_transaction_are_decided_in_order() -> None:
    d = Driver()
    job = pending(d)
    committed, directives = d.commit(
        job,
        [
            ("HEARTBEAT", {"step": "build", "attempt": 1, "pod": "p"}),
            ("STEP_FINISHED", {"step": "build", "attempt": 1, "outcome": "succeeded"}),
            ("HEARTBEAT", {"step": "deploy", "attempt": 1, "pod": "p"}),
            ("STEP_FINISHED", {"step": "deploy", "attempt": 1, "outcome": "succeeded"}),
        ],
        T0 + 5,
    )
    assert [r.type for r in committed] == [
        "HEARTBEAT",
        "STEP_FINISHED",
        "STEP_DISPATCHED",
        "HEARTBEAT",
        "STEP_FINISHED",
        "JOB_FINISHED",
    ]
    assert d.state(job) == "SUCCEEDED"
    # deploy's dispatch ended within the transaction, so it is withdrawn before it could be handed out.
    assert [x["kind"] for x in directives] == ["finished"]


def test_the_table_covers_every_transition_and_only_those() -> None:
    """The valid rows (setups included) walk the whole diagram of JOBS.md §3 and never leave it."""
    seen: set[tuple[str | None, str | None]] = set()
    for _, setup, kind, data, _, _ in VALID:
        d = Driver()
        job = setup(d)
        d.commit(job, [(kind, data)], T0 + 10)
        seen |= d.transitions
    clock_only = {
        # Reached only through the clock (a rollback request nobody starts); see test_leases_and_health.py.
        ("FAILED", "ROLLBACK_FAILED"),
        ("CANCELLED", "ROLLBACK_FAILED"),
    }
    assert seen <= TRANSITIONS
    assert TRANSITIONS - seen == clock_only


# The whole matrix: every situation x every fact, with the verdict JOBS.md §5.1 gives.
# "apply" = accepted and the job changed; "same" = accepted idempotently, nothing changed; else the code.
FACTS: dict[str, tuple[str, dict[str, Any]]] = {
    "heartbeat": ("HEARTBEAT", {"step": "build", "attempt": 1, "pod": "p"}),
    "finished": ("STEP_FINISHED", {"step": "build", "attempt": 1, "outcome": "failed"}),
    "cancel": ("JOB_CANCELLED", {"reason": "r", "thenRollback": False}),
    "rollback-started": ("ROLLBACK_STARTED", {}),
    "report": ("DIAGNOSTIC_REPORT", {"report": {}}),
    "revert-finished": ("REVERT_FINISHED", {"step": "build", "outcome": "succeeded"}),
    "annotation": ("x-note", {"text": "hello"}),
    "register": ("JOB_REGISTERED", plan()),
    "derived": ("ROLLBACK_COMPLETED", {"outcome": "rolled-back"}),
    # No situation here has a restore directive (only a succeeded job with a revert target has one).
    "restore-finished": ("RESTORE_FINISHED", {"directive": "j1/d1", "outcome": "succeeded"}),
}
T, R, C = "INVALID_TRANSITION", "INVALID_RECORD", "apply"
MATRIX: dict[str, tuple[Setup, list[str]]] = {
    # situation: (setup, verdicts in FACTS order)
    "pending": (pending, [C, C, C, T, T, T, "same", T, R, T]),
    "running": (running, [C, C, C, T, T, T, "same", T, R, T]),
    "failed-awaiting-rollback": (failed_awaiting("rollback"), ["same", "same", T, C, T, T, "same", T, R, T]),
    "failed-awaiting-diagnosis": (failed_awaiting("diagnose"), ["same", "same", T, T, C, T, "same", T, R, T]),
    "rolling-back": (rolling_back, ["same", "same", T, "same", T, T, "same", T, R, T]),
    "succeeded": (succeeded, ["same", "same", T, T, T, T, "same", T, R, T]),
    "failed": (failed_finished, ["same", "same", T, T, T, T, "same", T, R, T]),
    "rolled-back": (rolled_back, ["same", "same", T, "same", T, T, "same", T, R, T]),
    "cancelled": (cancelled, ["same", "same", "same", T, T, T, "same", T, R, T]),
    "cancelled-awaiting-rollback": (
        cancelled_then_rollback,
        ["same", "same", "same", C, T, T, "same", T, R, T],
    ),
}
CELLS = [
    (situation, fact, setup, verdicts[index])
    for situation, (setup, verdicts) in MATRIX.items()
    for index, fact in enumerate(FACTS)
]


@pytest.mark.parametrize(
    ("setup", "fact", "verdict"),
    [(c[2], c[1], c[3]) for c in CELLS],
    ids=[f"{c[0]}-{c[1]}" for c in CELLS],
)
def test_every_fact_in_every_situation(setup: Setup, fact: str, verdict: str) -> None:
    d = Driver()
    job = setup(d)
    kind, data = FACTS[fact]
    before = d.model.dump_state()
    if verdict in (T, R):
        with pytest.raises(ModelRejection) as caught:
            d.commit(job, [(kind, data)], T0 + 10)
        assert caught.value.code == verdict
        assert d.model.dump_state() == before
        return
    committed, _ = d.commit(job, [(kind, data)], T0 + 10)
    assert committed[0].type == kind
    after = d.model.dump_state()["jobs"][job]
    after["updatedAt"] = before["jobs"][job]["updatedAt"]
    changed = after != before["jobs"][job]
    assert changed == (verdict == C)
