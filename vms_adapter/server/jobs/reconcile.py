"""The reconciler: given a job's folded state, the one record that must be written next (JOBS.md §6–§9).

``decide`` and ``sweep`` alternate folding and asking this module until it answers None, so every
consequence of a fact lands in the fact's own transaction. It answers one record at a time because each
directive takes the job's next directive number, which only the fold advances.
"""

from __future__ import annotations

from typing import Any

from . import directives as dv
from . import records as rt
from . import states as st
from .fold import current_action, live_attempts
from .plan import backoff_s, compensation_of, revert_targets, runnable, step_named
from .shapes import Attempt, Job

Next = tuple[str, dict[str, Any]]


def next_record(job: Job, now: float) -> Next | None:
    """The next derived record for ``job`` at ``now``, or None when the job waits for a fact or the clock."""
    if job["finished"]:
        return None
    state = job["state"]
    if state in (st.PENDING, st.RUNNING):
        return _forward(job, now)
    if state == st.CANCELLED:
        live = live_attempts(job)
        if live:
            return _cancel_attempt(job, live[0], now)
    if state in (st.FAILED, st.CANCELLED):
        return _policy(job, now)
    if state == st.ROLLING_BACK:
        return _saga(job, now)
    return None


def _forward(job: Job, now: float) -> Next | None:
    for step in job["plan"]["steps"]:
        if step["name"] not in job["succeeded"]:
            break
    else:
        targets = revert_targets(job["plan"])
        if targets and not any(d["kind"] == dv.RESTORE for d in job["directives"].values()):
            # A successful deploy undoes any revert pin on the Services it deploys (JOBS.md §7).
            return rt.RESTORE_REQUESTED, {"targets": targets, "directive": dv.restore(job, now)}
        return _finish(job, st.SUCCEEDED, now)
    attempts = job["attempts"].get(step["name"], [])
    if attempts and attempts[-1]["outcome"] is None:
        return None
    retry = _retry(job, step["name"], attempts, step, now)
    if retry is not None:
        return retry
    last = attempts[-1]
    reason = last["reason"] or f"attempt ended {last['outcome']}"
    return rt.JOB_FAILED, {"step": step["name"], "attempt": last["attempt"], "reason": reason}


def _retry(job: Job, label: str, attempts: list[Attempt], step: dict[str, Any], now: float) -> Next | None:
    """Dispatch the first attempt, or the next after a failed one while retries remain; else None."""
    if not attempts:
        return _dispatch(job, label, 1, now)
    last = attempts[-1]
    if last["attempt"] <= step["retries"]:
        return _dispatch(job, label, last["attempt"] + 1, now + backoff_s(step, last["attempt"]))
    return None


def _dispatch(job: Job, label: str, number: int, due_at: float) -> Next:
    run = runnable(job, label)
    assert run is not None
    deadline = due_at + run.timeout_s
    # The first lease allows for the time the run spends queued before it can send a heart-beat.
    lease_until = due_at + max(float(run.step["heartbeatTimeoutSeconds"]), rt.DISPATCH_ALLOWANCE_S)
    directive = dv.dispatch(job, label, run.service, number, due_at=due_at, deadline=deadline)
    data = {
        "step": label,
        "attempt": number,
        "dueAt": due_at,
        "deadline": deadline,
        "leaseUntil": lease_until,
        "directive": directive,
    }
    return rt.STEP_DISPATCHED, data


def _cancel_attempt(job: Job, attempt: Attempt, now: float) -> Next:
    data: dict[str, Any] = {"step": attempt["step"], "attempt": attempt["attempt"]}
    if attempt["dueAt"] <= now:  # the dispatch may have been delivered: tell the step to stop
        run = runnable(job, attempt["step"])
        assert run is not None
        assert job["cancel"] is not None
        reason = job["cancel"]["reason"]
        data["directive"] = dv.cancel(
            job, attempt["step"], run.service, attempt["attempt"], reason=reason, pod=attempt["pod"], now=now
        )
    return rt.ATTEMPT_CANCELLED, data


def _diagnosis_settled(job: Job) -> bool:
    diagnosis = job["diagnosis"]
    return diagnosis is None or diagnosis["status"] != "requested"


def _policy(job: Job, now: float) -> Next | None:
    """FAILED or CANCELLED: request what onFailure (or thenRollback) asks for, finish when it is done."""
    cancelled = job["state"] == st.CANCELLED
    cancel = job["cancel"]
    on_failure = job["plan"]["onFailure"]
    if cancelled:
        rollback_wanted = cancel is not None and cancel["thenRollback"]
    else:
        rollback_wanted = st.wants_rollback(on_failure)
    diagnosis_wanted = not cancelled and st.wants_diagnosis(on_failure)
    reason = _reason(job)
    if rollback_wanted and job["rollback"] is None:
        return rt.ROLLBACK_REQUESTED, {
            "reason": reason,
            "deadline": now + rt.ACTION_TIMEOUT_S,
            "directive": dv.rollback(job, reason, now),
        }
    if diagnosis_wanted and job["diagnosis"] is None:
        return rt.DIAGNOSTIC_REQUESTED, {
            "reason": reason,
            "deadline": now + rt.ACTION_TIMEOUT_S,
            "directive": dv.diagnose(job, reason, now),
        }
    if not _diagnosis_settled(job):
        return None
    rollback = job["rollback"]
    if rollback_wanted:
        # Waiting for ROLLBACK_STARTED, unless the request timed out unanswered.
        return _finish(job, st.ROLLBACK_FAILED, now) if rollback and rollback["status"] == "failed" else None
    return _finish(job, st.CANCELLED if cancelled else st.FAILED, now)


def _reason(job: Job) -> str:
    if job["cancel"] is not None:
        return f"job cancelled: {job['cancel']['reason']}"
    failure = job["failure"]
    if failure is None:
        return "job failed"
    return f"step {failure['step']} failed (attempt {failure['attempt']}): {failure['reason']}"


def _saga(job: Job, now: float) -> Next | None:
    rollback = job["rollback"]
    assert rollback is not None
    if rollback["status"] == "started":
        action = current_action(job)
        if action is None:
            return rt.ROLLBACK_COMPLETED, {"outcome": "rolled-back", "reason": "every action succeeded"}
        step = step_named(job, action["step"])
        assert step is not None
        if action["kind"] == "compensate":
            label = compensation_of(step)
            attempts = job["attempts"].get(label, [])
            if attempts and attempts[-1]["outcome"] is None:
                return None
            retry = _retry(job, label, attempts, step, now)
            if retry is not None:
                return retry
            return rt.ROLLBACK_COMPLETED, {
                "outcome": "failed",
                "reason": f"compensation of step {step['name']} failed after {len(attempts)} attempt(s)",
            }
        if action["status"] == "pending":
            return rt.REVERT_REQUESTED, {
                "step": step["name"],
                "deadline": now + rt.ACTION_TIMEOUT_S,
                "directive": dv.revert(job, step, now),
            }
        if action["status"] == "failed":
            reason = f"revert of step {step['name']} failed"
            return rt.ROLLBACK_COMPLETED, {"outcome": "failed", "reason": reason}
        return None
    if not _diagnosis_settled(job):
        return None
    final = st.ROLLED_BACK if rollback["status"] == "rolled-back" else st.ROLLBACK_FAILED
    return _finish(job, final, now)


def _finish(job: Job, state: str, now: float) -> Next:
    return rt.JOB_FINISHED, {"state": state, "directive": dv.finished(job, state, now)}
