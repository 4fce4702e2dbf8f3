"""A successful job undoes any revert pin on the Services its plan may revert (JOBS.md §7): the journal
directs a `restore`, the rollback function reports `RESTORE_FINISHED`."""

from __future__ import annotations

from typing import Any

import pytest

from vms_adapter.server.model import ModelRejection

from .driver import T0, Driver, plan, step


def succeed(d: Driver, the_plan: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    job, _ = d.register(the_plan)
    directives: list[dict[str, Any]] = []
    for entry in the_plan["steps"]:
        directives = d.fact(job, "STEP_FINISHED", T0 + 1, step=entry["name"], attempt=1, outcome="succeeded")
    return job, directives


def test_a_succeeded_job_with_a_revert_target_directs_one_restore_before_finishing() -> None:
    d = Driver()
    job, directives = succeed(
        d, plan(step("build"), step("deploy", revert=True), step("verify", revert=True))
    )
    assert d.types(job)[-2:] == ["RESTORE_REQUESTED", "JOB_FINISHED"]
    assert [x["kind"] for x in directives] == ["restore", "finished"]
    restore = directives[0]
    assert restore["event"]["type"] == "com.xpipe.job.rollback.requested"
    # The event names only the job and the directive; the targets are in the journal's view.
    assert restore["event"]["data"] == {
        "jobId": job,
        "reason": restore["event"]["data"]["reason"],
        "directive": {"id": restore["id"], "action": "restore"},
    }
    view = d.view(job)
    assert view["state"] == "SUCCEEDED"
    assert view["restore"] == {
        "directiveId": restore["id"],
        "status": "pending",
        "requestedAt": T0 + 1,
        "targets": [
            {"kind": "knative-traffic", "service": "deploy", "namespace": "shop"},
            {"kind": "knative-traffic", "service": "verify", "namespace": "shop"},
        ],
    }


def test_a_job_without_revert_targets_directs_no_restore() -> None:
    d = Driver()
    job, directives = succeed(d, plan(step("build")))
    assert [x["kind"] for x in directives] == ["finished"]
    assert "RESTORE_REQUESTED" not in d.types(job)
    assert d.view(job)["restore"] is None


def test_a_failed_or_rolled_back_job_directs_no_restore() -> None:
    d = Driver()
    job, _ = d.register(plan(step("deploy", revert=True), step("verify"), on_failure="none"))
    d.fact(job, "STEP_FINISHED", T0 + 1, step="deploy", attempt=1, outcome="succeeded")
    d.fact(job, "STEP_FINISHED", T0 + 2, step="verify", attempt=1, outcome="failed")
    assert d.state(job) == "FAILED"
    assert "RESTORE_REQUESTED" not in d.types(job)


def test_the_restore_outcome_is_recorded_and_changes_nothing_else() -> None:
    d = Driver()
    job, directives = succeed(d, plan(step("deploy", revert=True)))
    restore_id = directives[0]["id"]
    before = d.model.dump_state()["jobs"][job]
    for _ in range(2):  # a redelivered restore reports again: accepted, written, nothing changes
        committed, follow = d.commit(
            job, [("RESTORE_FINISHED", {"directive": restore_id, "outcome": "succeeded"})]
        )
        assert [r.type for r in committed] == ["RESTORE_FINISHED"]
        assert follow == []
    after = d.model.dump_state()["jobs"][job]
    assert {**after, "updatedAt": None} == {**before, "updatedAt": None}
    assert d.types(job).count("RESTORE_FINISHED") == 2
    # A restore directive is never withdrawn: it is for the Services, not for the finished job.
    d.ack([restore_id])
    assert d.view(job)["restore"]["status"] == "acked"
    assert d.replayed().dump_state() == d.model.dump_state()


@pytest.mark.parametrize(
    ("data", "code"),
    [
        ({"directive": "j1/d99", "outcome": "succeeded"}, "INVALID_TRANSITION"),
        ({"directive": "j1/d1", "outcome": "succeeded"}, "INVALID_TRANSITION"),  # a dispatch, not a restore
        ({"directive": "j1/d2", "outcome": "maybe"}, "INVALID_RECORD"),
        ({"outcome": "succeeded"}, "INVALID_RECORD"),
        ({"directive": "j1/d2", "outcome": "succeeded", "service": "other"}, "INVALID_RECORD"),
    ],
)
def test_a_restore_outcome_must_name_a_restore_directive_of_the_job(data: dict[str, Any], code: str) -> None:
    d = Driver()
    job, directives = succeed(d, plan(step("deploy", revert=True)))
    assert directives[0]["id"] == "j1/d2"
    before = d.model.dump_state()
    with pytest.raises(ModelRejection) as caught:
        d.commit(job, [("RESTORE_FINISHED", data)])
    assert caught.value.code == code
    assert d.model.dump_state() == before
