"""The shapes of the state the journal keeps per job, as JSON-ready typed dictionaries.

The state is plain JSON on purpose: a snapshot is the state itself (``dump_state``), ``decide`` works on
a cheap copy of one job, and an OpenVMS reimplementation can read a snapshot without Python.
"""

from __future__ import annotations

from typing import Any, TypedDict


class HealthView(TypedDict):
    """The last pod health attributed to an attempt."""

    phase: str
    ready: bool
    attemptRestarts: int
    observedAt: Any
    notReadySince: float | None  # journal time of the first not-ready observation of the current run


class Attempt(TypedDict):
    step: str  # the step label: a step name, or "<name>:compensate"
    attempt: int
    directiveId: str
    dueAt: float
    deadline: float
    leaseUntil: float
    pod: str | None
    claimedAt: float | None
    startedAt: float | None
    lastHeartbeatAt: float | None
    heartbeats: int
    progress: float | None
    outcome: str | None  # None while the attempt is live
    reason: str | None
    exitCode: int | None
    durationSeconds: float | None
    summary: str | None
    endedAt: float | None
    health: HealthView | None


class Directive(TypedDict):
    id: str
    jobId: str
    kind: str
    dueAt: float
    event: dict[str, Any]
    status: str  # pending | acked | withdrawn
    createdAt: float
    settledAt: float | None


class SagaAction(TypedDict):
    kind: str  # compensate | revert
    step: str  # the step name
    status: str  # pending | running | succeeded | failed
    directiveId: str | None
    deadline: float | None


class Rollback(TypedDict):
    status: str  # requested | started | rolled-back | failed
    reason: str
    requestedAt: float
    deadline: float
    directiveId: str
    startedAt: float | None
    completedAt: float | None
    actions: list[SagaAction]


class Diagnosis(TypedDict):
    status: str  # requested | reported | timed-out
    reason: str
    requestedAt: float
    deadline: float
    directiveId: str
    reportedAt: float | None
    report: dict[str, Any] | None


class Failure(TypedDict):
    step: str
    attempt: int
    reason: str
    at: float


class Cancellation(TypedDict):
    reason: str
    thenRollback: bool
    at: float


class Job(TypedDict):
    jobId: str
    plan: dict[str, Any]
    state: str
    finished: bool
    registeredAt: float
    registeredSeq: int
    updatedAt: float
    finishedAt: float | None
    nextDirective: int
    attempts: dict[str, list[Attempt]]  # step label -> attempts in order
    succeeded: list[str]  # step names that succeeded, in the order they did
    directives: dict[str, Directive]
    failure: Failure | None
    cancel: Cancellation | None
    rollback: Rollback | None
    diagnosis: Diagnosis | None


class Pod(TypedDict):
    """What the journal knows about one pod: its holder and its restart count."""

    holder: list[Any] | None  # [jobId, step label, attempt] of the live attempt that claimed it
    restarts: int | None  # the sum of container restart counts at the last observation
    baseline: int | None  # restarts when the holder claimed the pod (None: not observed yet)
    observedAt: Any


class HistoryEntry(TypedDict):
    seq: int
    type: str
    data: dict[str, Any]
    time: float
