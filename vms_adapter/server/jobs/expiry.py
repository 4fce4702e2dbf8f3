"""What the clock implies: expired leases, overrun deadlines, bad health, unanswered requests.

See JOBS.md §6 and §8.

Used by ``sweep`` (and by ``decide`` for a ``HEALTH`` fact), always with an explicit ``now``: the fold
never reads a clock, these checks are the only place time passes.
"""

from __future__ import annotations

from typing import Any

from . import records as rt
from .fold import current_action, live_attempts
from .plan import runnable
from .shapes import Attempt, Job

Fact = tuple[str, dict[str, Any]]


def health_verdict(job: Job, attempt: Attempt, now: float) -> tuple[str, str] | None:
    """(reason, detail) when the attempt's pod health is out of its step's tolerance, else None."""
    health = attempt["health"]
    if health is None:
        return None
    run = runnable(job, attempt["step"])
    assert run is not None
    tolerance = run.step["health"]
    if health["phase"] == "Failed":
        return "pod-failed", f"pod {attempt['pod']} is in phase Failed"
    if health["attemptRestarts"] > tolerance["maxRestarts"]:
        return "restarts", (
            f"pod {attempt['pod']} restarted {health['attemptRestarts']} time(s) during the attempt,"
            f" more than maxRestarts {tolerance['maxRestarts']}"
        )
    since = health["notReadySince"]
    if since is not None and now - since > tolerance["notReadySeconds"]:
        return "not-ready", (
            f"pod {attempt['pod']} not ready for {now - since:.1f} s,"
            f" more than notReadySeconds {tolerance['notReadySeconds']}"
        )
    return None


def attempt_failure(job: Job, attempt: Attempt, now: float, *, health_only: bool = False) -> Fact | None:
    """The ``ATTEMPT_FAILED`` the clock or the pod's health implies for one live attempt, or None."""
    base = {"step": attempt["step"], "attempt": attempt["attempt"]}
    if not health_only:
        if now > attempt["deadline"]:
            detail = f"no finish by the deadline ({now - attempt['deadline']:.1f} s over)"
            return rt.ATTEMPT_FAILED, {
                **base,
                "outcome": "timed-out",
                "reason": "deadline-exceeded",
                "detail": detail,
            }
        if now > attempt["leaseUntil"]:
            detail = f"no heart-beat for {now - attempt['leaseUntil']:.1f} s past the lease"
            return rt.ATTEMPT_FAILED, {
                **base,
                "outcome": "failed",
                "reason": "lease-expired",
                "detail": detail,
            }
    verdict = health_verdict(job, attempt, now)
    if verdict is not None:
        return rt.ATTEMPT_FAILED, {**base, "outcome": "failed", "reason": verdict[0], "detail": verdict[1]}
    return None


def next_expiry(job: Job, now: float) -> Fact | None:
    """The first record the clock implies for ``job`` at ``now``, or None."""
    if job["finished"]:
        return None
    for attempt in live_attempts(job):
        failure = attempt_failure(job, attempt, now)
        if failure is not None:
            return failure
    rollback, diagnosis = job["rollback"], job["diagnosis"]
    if rollback is not None and rollback["status"] == "requested" and now > rollback["deadline"]:
        return rt.ACTION_TIMED_OUT, {"action": "rollback-start", "directive": rollback["directiveId"]}
    action = current_action(job)
    if (
        action is not None
        and action["kind"] == "revert"
        and action["status"] == "running"
        and action["deadline"] is not None
        and now > action["deadline"]
    ):
        return rt.ACTION_TIMED_OUT, {"action": "revert", "directive": action["directiveId"]}
    if diagnosis is not None and diagnosis["status"] == "requested" and now > diagnosis["deadline"]:
        return rt.ACTION_TIMED_OUT, {"action": "diagnosis", "directive": diagnosis["directiveId"]}
    return None
