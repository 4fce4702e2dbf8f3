"""Outbox entries: the CloudEvents the functions publish on the journal's behalf (JOBS.md §10).

Event types and payload keys mirror ``xpipe/events.py``; they are repeated here as strings because the
OpenVMS side never imports ``xpipe``.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Any

from .shapes import Job

SOURCE = "/xpipe/journal"
STEP_RUN = "com.xpipe.step.run"
STEP_CANCEL = "com.xpipe.step.cancel"
JOB_ROLLBACK_REQUESTED = "com.xpipe.job.rollback.requested"
JOB_DIAGNOSTIC_REQUESTED = "com.xpipe.job.diagnostic.requested"
JOB_FINISHED = "com.xpipe.job.finished"
EXT_JOB = "xpipejob"
EXT_STEP = "xpipestep"

# Directive kinds.
DISPATCH = "dispatch"
CANCEL = "cancel"
ROLLBACK = "rollback"
REVERT = "revert"
DIAGNOSE = "diagnose"
RESTORE = "restore"
FINISHED = "finished"
# A restore outlives its job (it is for the Services, not the job): never withdrawn either.
NEVER_WITHDRAWN = frozenset({CANCEL, RESTORE, FINISHED})


# Whole seconds -> their "YYYY-MM-DDTHH:MM:SS" text, for the last few seconds seen: the deadlines of
# dispatches made within a second mostly share their second, and in the service loop the datetime
# conversion costs several microseconds (its code is cold between calls).
_SECOND_TEXT: dict[int, str] = {}
_SECOND_TEXT_KEPT = 64


def iso_utc(unix_seconds: float) -> str:
    """``2026-11-25T13:25:00.250Z``: the form ``step.run`` carries its deadline in. The same text as
    ``datetime.fromtimestamp(s, timezone.utc).isoformat(timespec="milliseconds")`` with ``Z``: the
    fraction rounded half-even to microseconds (carrying into the second), then cut to milliseconds."""
    fraction, whole = math.modf(unix_seconds)
    micros = round(fraction * 1e6)
    second = int(whole)
    if micros >= 1_000_000:
        micros -= 1_000_000
        second += 1
    elif micros < 0:
        micros += 1_000_000
        second -= 1
    text = _SECOND_TEXT.get(second)
    if text is None:
        if len(_SECOND_TEXT) >= _SECOND_TEXT_KEPT:
            _SECOND_TEXT.clear()
        text = _SECOND_TEXT[second] = datetime.fromtimestamp(second, tz=timezone.utc).strftime(
            "%Y-%m-%dT%H:%M:%S"
        )
    return f"{text}.{micros // 1000:03d}Z"


def next_id(job: Job) -> str:
    return f"{job['jobId']}/d{job['nextDirective']}"


def job_of(directive_id: str) -> str:
    """The job id a directive id belongs to (``<jobId>/d<n>``); job ids may themselves contain ``/``."""
    job_id, sep, counter = directive_id.rpartition("/d")
    return job_id if sep and counter.isdigit() else ""


def counter_of(directive_id: str) -> int:
    return int(directive_id.rpartition("/d")[2])


def entry(job: Job, kind: str, due_at: float, event: dict[str, Any]) -> dict[str, Any]:
    """A new directive for ``job`` (the id takes the job's next directive number)."""
    return {"id": next_id(job), "jobId": job["jobId"], "kind": kind, "dueAt": due_at, "event": event}


def _event(
    job: Job, event_type: str, data: dict[str, Any], *, service: str | None = None, subject: str | None = None
) -> dict[str, Any]:
    extensions = {EXT_JOB: job["jobId"]}
    if service is not None:
        extensions[EXT_STEP] = service
    event: dict[str, Any] = {"type": event_type, "source": SOURCE, "extensions": extensions, "data": data}
    if subject is not None:
        event["subject"] = subject
    return event


def dispatch(
    job: Job, label: str, service: str, attempt: int, *, due_at: float, deadline: float
) -> dict[str, Any]:
    data = {
        "jobId": job["jobId"],
        "step": label,
        "attempt": attempt,
        "params": dict(job["plan"]["params"]),
        "deadline": iso_utc(deadline),
    }
    event = _event(job, STEP_RUN, data, service=service, subject=f"{label}/{attempt}")
    return entry(job, DISPATCH, due_at, event)


def cancel(
    job: Job, label: str, service: str, attempt: int, *, reason: str, pod: str | None, now: float
) -> dict[str, Any]:
    """Stop a running attempt. ``pod`` (the pod its heart-beats named, if any) tells the executor which
    instance to stop: the step Service itself cannot be asked, its busy pod takes no second request."""
    data: dict[str, Any] = {"jobId": job["jobId"], "step": label, "attempt": attempt, "reason": reason}
    if pod is not None:
        data["pod"] = pod
    event = _event(job, STEP_CANCEL, data, service=service, subject=f"{label}/{attempt}")
    return entry(job, CANCEL, now, event)


def rollback(job: Job, reason: str, now: float) -> dict[str, Any]:
    ident = next_id(job)
    data = {"jobId": job["jobId"], "reason": reason, "directive": {"id": ident, "action": "rollback"}}
    return entry(job, ROLLBACK, now, _event(job, JOB_ROLLBACK_REQUESTED, data))


def revert(job: Job, step: dict[str, Any], now: float) -> dict[str, Any]:
    ident = next_id(job)
    target = step["revert"]
    directive = {
        "id": ident,
        "action": "revert",
        "step": step["name"],
        "kind": target["kind"],
        "service": target["service"],
        "namespace": target["namespace"],
    }
    data = {"jobId": job["jobId"], "reason": f"revert step {step['name']}", "directive": directive}
    return entry(job, REVERT, now, _event(job, JOB_ROLLBACK_REQUESTED, data, subject=step["name"]))


def restore(job: Job, now: float) -> dict[str, Any]:
    """Traffic of the Services this job deployed follows their latest revision again. The event names
    only the job and the directive: the function takes the targets from the job's view (never from the
    event, which a forger could fill in)."""
    ident = next_id(job)
    reason = "the job succeeded: its Services' traffic follows the latest revision again"
    data = {"jobId": job["jobId"], "reason": reason, "directive": {"id": ident, "action": "restore"}}
    return entry(job, RESTORE, now, _event(job, JOB_ROLLBACK_REQUESTED, data))


def diagnose(job: Job, reason: str, now: float) -> dict[str, Any]:
    ident = next_id(job)
    pods = sorted({a["pod"] for runs in job["attempts"].values() for a in runs if a["pod"]})
    steps = [label for label, runs in job["attempts"].items() if runs]
    directive = {"id": ident, "action": "diagnose", "pods": pods, "steps": steps}
    data = {"jobId": job["jobId"], "reason": reason, "directive": directive}
    return entry(job, DIAGNOSE, now, _event(job, JOB_DIAGNOSTIC_REQUESTED, data))


def finished(job: Job, state: str, now: float) -> dict[str, Any]:
    data = {"jobId": job["jobId"], "outcome": state}
    return entry(job, FINISHED, now, _event(job, JOB_FINISHED, data))
