"""The fold: one committed record applied to one job's state (JOBS.md §5–§9).

Deterministic by construction: every time comes from the record's commit time ``t`` or from values
``decide`` wrote into the record's data, so recovery (which replays records through this same code)
rebuilds the live state exactly. It trusts the record: ``decide`` validated facts and wrote the derived
records itself, and a fact that no longer applies (a late heart-beat) is simply ignored here too.
"""

from __future__ import annotations

from typing import Any

from . import directives as dv
from . import records as rt
from . import states as st
from .plan import runnable, step_named, step_of
from .shapes import Attempt, Directive, Job, SagaAction


def new_job(job_id: str, plan: dict[str, Any], seq: int, t: float) -> Job:
    return {
        "jobId": job_id,
        "plan": plan,
        "state": st.PENDING,
        "finished": False,
        "registeredAt": t,
        "registeredSeq": seq,
        "updatedAt": t,
        "finishedAt": None,
        "nextDirective": 1,
        "attempts": {},
        "succeeded": [],
        "directives": {},
        "failure": None,
        "cancel": None,
        "rollback": None,
        "diagnosis": None,
    }


def find_attempt(job: Job, label: str, number: int) -> Attempt | None:
    attempts = job["attempts"].get(label)
    if attempts is None or not 1 <= number <= len(attempts):
        return None
    return attempts[number - 1]


def live_attempts(job: Job) -> list[Attempt]:
    return [a for attempts in job["attempts"].values() for a in attempts if a["outcome"] is None]


def current_action(job: Job) -> SagaAction | None:
    """The saga action in progress or next to run (the first one not succeeded)."""
    rollback = job["rollback"]
    if rollback is None:
        return None
    for action in rollback["actions"]:
        if action["status"] != "succeeded":
            return action
    return None


def saga_plan(job: Job) -> list[SagaAction]:
    """The steps that succeeded, in reverse order: compensation first, then revert (JOBS.md §7)."""
    actions: list[SagaAction] = []
    for name in reversed(job["succeeded"]):
        step = step_named(job, name)
        assert step is not None
        for kind in ("compensate", "revert"):
            if step[kind] is not None:
                actions.append(
                    {"kind": kind, "step": name, "status": "pending", "directiveId": None, "deadline": None}
                )
    return actions


def _add_directive(job: Job, directive: dict[str, Any], t: float) -> None:
    entry: Directive = {
        "id": directive["id"],
        "jobId": directive["jobId"],
        "kind": directive["kind"],
        "dueAt": directive["dueAt"],
        "event": directive["event"],
        "status": "pending",
        "createdAt": t,
        "settledAt": None,
    }
    job["directives"][entry["id"]] = entry
    job["nextDirective"] = max(job["nextDirective"], dv.counter_of(entry["id"]) + 1)


def _end(attempt: Attempt, outcome: str, reason: str | None, t: float) -> None:
    attempt["outcome"] = outcome
    attempt["reason"] = reason
    attempt["endedAt"] = t


def _touch_running(job: Job) -> None:
    if job["state"] == st.PENDING:
        job["state"] = st.RUNNING


def _step_finished(job: Job, data: dict[str, Any], t: float) -> None:
    attempt = find_attempt(job, data["step"], data["attempt"])
    if attempt is None or attempt["outcome"] is not None:
        return
    _touch_running(job)
    outcome = data["outcome"]
    _end(attempt, outcome, None if outcome == "succeeded" else f"step reported {outcome}", t)
    attempt["exitCode"] = data.get("exitCode")
    attempt["durationSeconds"] = data.get("durationSeconds")
    attempt["summary"] = data.get("summary")
    if data.get("pod") and attempt["pod"] is None:
        attempt["pod"] = data["pod"]
    if outcome != "succeeded":
        return
    run = runnable(job, data["step"])
    assert run is not None
    if not run.compensation:
        if run.step["name"] not in job["succeeded"]:
            job["succeeded"].append(run.step["name"])
        return
    action = current_action(job)
    if action is not None and action["kind"] == "compensate" and action["step"] == run.step["name"]:
        action["status"] = "succeeded"


def _health(job: Job, data: dict[str, Any], t: float) -> None:
    attempt = find_attempt(job, data["step"], data["attempt"])
    if attempt is None or attempt["outcome"] is not None:
        return
    previous = attempt["health"]
    since = None
    if not data["ready"]:
        since = previous["notReadySince"] if previous and previous["notReadySince"] is not None else t
    attempt["health"] = {
        "phase": data["phase"],
        "ready": data["ready"],
        "attemptRestarts": data["attemptRestarts"],
        "observedAt": data.get("observedAt"),
        "notReadySince": since,
    }


def _dead_letter(job: Job, data: dict[str, Any], t: float) -> None:
    event = data["event"]
    if event.get("type") != dv.STEP_RUN:
        return
    for attempt in live_attempts(job):
        if attempt["directiveId"] == event.get("id"):
            _end(attempt, "failed", "dead-letter", t)


def _withdraw_obsolete(job: Job, t: float) -> None:
    """Pending directives whose purpose is over are never delivered again (JOBS.md §10)."""
    live = {a["directiveId"] for a in live_attempts(job)}
    rollback, diagnosis = job["rollback"], job["diagnosis"]
    running_reverts = {
        a["directiveId"] for a in (rollback["actions"] if rollback else []) if a["status"] == "running"
    }
    for directive in job["directives"].values():
        if directive["status"] != "pending" or directive["kind"] in dv.NEVER_WITHDRAWN:
            continue
        kind = directive["kind"]
        obsolete = (
            (kind == dv.DISPATCH and directive["id"] not in live)
            or (kind == dv.ROLLBACK and (rollback is None or rollback["status"] != "requested"))
            or (kind == dv.REVERT and directive["id"] not in running_reverts)
            or (kind == dv.DIAGNOSE and (diagnosis is None or diagnosis["status"] != "requested"))
        )
        if obsolete:
            directive["status"] = "withdrawn"
            directive["settledAt"] = t


def renew(job: Job, attempt: Attempt, record_type: str, data: dict[str, Any], t: float) -> None:
    """``STEP_STARTED`` or ``HEARTBEAT`` of a live ``attempt``: the pod claimed, the lease renewed, the
    progress kept. (The journal's lease-fact path calls this directly, having found the attempt.)"""
    if job["state"] == st.PENDING:  # (_touch_running and _claim, written out: this runs per heart-beat)
        job["state"] = st.RUNNING
    pod = data.get("pod")
    if pod and attempt["pod"] != pod:
        attempt["pod"] = pod
        attempt["claimedAt"] = t
        attempt["health"] = None
    step = step_of(job, attempt["step"])
    assert step is not None
    renewed = t + float(step["heartbeatTimeoutSeconds"])
    first = attempt["startedAt"] is None and attempt["heartbeats"] == 0
    # The first sign of life ends the dispatch allowance: from then on the heart-beat timeout alone.
    attempt["leaseUntil"] = renewed if first else max(attempt["leaseUntil"], renewed)
    if record_type == rt.STEP_STARTED:
        attempt["startedAt"] = attempt["startedAt"] or t
    else:
        attempt["lastHeartbeatAt"] = t
        attempt["heartbeats"] += 1
        if data.get("progress") is not None:
            attempt["progress"] = data["progress"]
    job["updatedAt"] = t


# Records that never end the purpose of a directive (they end no attempt and no action).
_PURPOSE_NEUTRAL = frozenset({rt.STEP_STARTED, rt.HEARTBEAT, rt.HEALTH, rt.DIRECTIVES_ACKED})


def fold(job: Job, record_type: str, data: dict[str, Any], t: float) -> None:
    """Apply one committed record (not ``JOB_REGISTERED``, not an annotation) to ``job``."""
    if record_type == rt.STEP_DISPATCHED:
        label = data["step"]
        attempt: Attempt = {
            "step": label,
            "attempt": data["attempt"],
            "directiveId": data["directive"]["id"],
            "dueAt": data["dueAt"],
            "deadline": data["deadline"],
            "leaseUntil": data["leaseUntil"],
            "pod": None,
            "claimedAt": None,
            "startedAt": None,
            "lastHeartbeatAt": None,
            "heartbeats": 0,
            "progress": None,
            "outcome": None,
            "reason": None,
            "exitCode": None,
            "durationSeconds": None,
            "summary": None,
            "endedAt": None,
            "health": None,
        }
        job["attempts"].setdefault(label, []).append(attempt)
        _add_directive(job, data["directive"], t)
        action = current_action(job)
        if label.endswith(":compensate") and action is not None and action["kind"] == "compensate":
            action["status"] = "running"
    elif record_type in (rt.STEP_STARTED, rt.HEARTBEAT):
        found = find_attempt(job, data["step"], data["attempt"])
        if found is not None and found["outcome"] is None:
            renew(job, found, record_type, data, t)
        return  # nothing else changes: no directive's purpose ends with a sign of life
    elif record_type == rt.STEP_FINISHED:
        _step_finished(job, data, t)
    elif record_type == rt.ATTEMPT_FAILED:
        found = find_attempt(job, data["step"], data["attempt"])
        if found is not None and found["outcome"] is None:
            _end(found, data["outcome"], data["reason"], t)
    elif record_type == rt.ATTEMPT_CANCELLED:
        found = find_attempt(job, data["step"], data["attempt"])
        if found is not None and found["outcome"] is None:
            _end(found, "cancelled", "job cancelled", t)
        if data.get("directive"):
            _add_directive(job, data["directive"], t)
    elif record_type == rt.HEALTH:
        _health(job, data, t)
    elif record_type == rt.DEAD_LETTER:
        _dead_letter(job, data, t)
    elif record_type == rt.JOB_FAILED:
        job["state"] = st.FAILED
        job["failure"] = {"step": data["step"], "attempt": data["attempt"], "reason": data["reason"], "at": t}
    elif record_type == rt.ROLLBACK_REQUESTED:
        job["rollback"] = {
            "status": "requested",
            "reason": data["reason"],
            "requestedAt": t,
            "deadline": data["deadline"],
            "directiveId": data["directive"]["id"],
            "startedAt": None,
            "completedAt": None,
            "actions": [],
        }
        _add_directive(job, data["directive"], t)
    elif record_type == rt.ROLLBACK_STARTED:
        rollback = job["rollback"]
        if rollback is None or rollback["status"] != "requested":
            return
        rollback["status"] = "started"
        rollback["startedAt"] = t
        rollback["actions"] = saga_plan(job)
        job["state"] = st.ROLLING_BACK
    elif record_type == rt.REVERT_REQUESTED:
        action = current_action(job)
        if action is not None and action["kind"] == "revert" and action["step"] == data["step"]:
            action["status"] = "running"
            action["directiveId"] = data["directive"]["id"]
            action["deadline"] = data["deadline"]
        _add_directive(job, data["directive"], t)
    elif record_type == rt.RESTORE_REQUESTED:
        _add_directive(job, data["directive"], t)
    elif record_type == rt.REVERT_FINISHED:
        action = current_action(job)
        if (
            action is not None
            and action["kind"] == "revert"
            and action["step"] == data["step"]
            and action["status"] == "running"
        ):
            action["status"] = "succeeded" if data["outcome"] == "succeeded" else "failed"
    elif record_type == rt.ROLLBACK_COMPLETED:
        rollback = job["rollback"]
        assert rollback is not None
        rollback["status"] = "rolled-back" if data["outcome"] == "rolled-back" else "failed"
        rollback["completedAt"] = t
        action = current_action(job)
        if action is not None and action["status"] == "running":
            action["status"] = "failed"
    elif record_type == rt.DIAGNOSTIC_REQUESTED:
        job["diagnosis"] = {
            "status": "requested",
            "reason": data["reason"],
            "requestedAt": t,
            "deadline": data["deadline"],
            "directiveId": data["directive"]["id"],
            "reportedAt": None,
            "report": None,
        }
        _add_directive(job, data["directive"], t)
    elif record_type == rt.DIAGNOSTIC_REPORT:
        diagnosis = job["diagnosis"]
        if diagnosis is not None and diagnosis["status"] == "requested":
            diagnosis["status"] = "reported"
            diagnosis["reportedAt"] = t
            diagnosis["report"] = data["report"]
    elif record_type == rt.ACTION_TIMED_OUT:
        _action_timed_out(job, data["action"], t)
    elif record_type == rt.JOB_CANCELLED:
        if job["state"] in (st.PENDING, st.RUNNING):
            job["state"] = st.CANCELLED
            job["cancel"] = {"reason": data["reason"], "thenRollback": data["thenRollback"], "at": t}
    elif record_type == rt.DIRECTIVES_ACKED:
        for ident in data["ids"]:
            directive = job["directives"].get(ident)
            if directive is not None and directive["status"] == "pending":
                directive["status"] = "acked"
                directive["settledAt"] = t
    elif record_type == rt.JOB_FINISHED:
        job["state"] = data["state"]
        job["finished"] = True
        job["finishedAt"] = t
        _add_directive(job, data["directive"], t)
    job["updatedAt"] = t
    if record_type not in _PURPOSE_NEUTRAL:
        _withdraw_obsolete(job, t)


def _action_timed_out(job: Job, action_name: str, t: float) -> None:
    rollback, diagnosis = job["rollback"], job["diagnosis"]
    if action_name == "rollback-start" and rollback is not None and rollback["status"] == "requested":
        rollback["status"] = "failed"
        rollback["completedAt"] = t
    elif action_name == "revert":
        action = current_action(job)
        if action is not None and action["kind"] == "revert" and action["status"] == "running":
            action["status"] = "failed"
    elif action_name == "diagnosis" and diagnosis is not None and diagnosis["status"] == "requested":
        diagnosis["status"] = "timed-out"
        diagnosis["reportedAt"] = t
