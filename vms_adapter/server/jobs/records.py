"""Record type names, who may write them, and the limits of the state machine (JOBS.md §5).

Facts are committed by functions; derived records are written only by the journal, in the transaction
whose facts caused them. Keeping the two sets here, in one place, is what lets ``decide`` refuse a client
that tries to write a decision.
"""

from __future__ import annotations

# Facts (committed by functions).
JOB_REGISTERED = "JOB_REGISTERED"
STEP_STARTED = "STEP_STARTED"
HEARTBEAT = "HEARTBEAT"
STEP_FINISHED = "STEP_FINISHED"
HEALTH = "HEALTH"
DEAD_LETTER = "DEAD_LETTER"
ROLLBACK_STARTED = "ROLLBACK_STARTED"
REVERT_FINISHED = "REVERT_FINISHED"
DIAGNOSTIC_REPORT = "DIAGNOSTIC_REPORT"
JOB_CANCELLED = "JOB_CANCELLED"
RESTORE_FINISHED = "RESTORE_FINISHED"

# Derived records (written only by the journal).
STEP_DISPATCHED = "STEP_DISPATCHED"
ATTEMPT_FAILED = "ATTEMPT_FAILED"
ATTEMPT_CANCELLED = "ATTEMPT_CANCELLED"
JOB_FAILED = "JOB_FAILED"
ROLLBACK_REQUESTED = "ROLLBACK_REQUESTED"
DIAGNOSTIC_REQUESTED = "DIAGNOSTIC_REQUESTED"
REVERT_REQUESTED = "REVERT_REQUESTED"
RESTORE_REQUESTED = "RESTORE_REQUESTED"
ROLLBACK_COMPLETED = "ROLLBACK_COMPLETED"
ACTION_TIMED_OUT = "ACTION_TIMED_OUT"
DIRECTIVES_ACKED = "DIRECTIVES_ACKED"
JOB_FINISHED = "JOB_FINISHED"

FACTS = frozenset(
    {
        JOB_REGISTERED,
        STEP_STARTED,
        HEARTBEAT,
        STEP_FINISHED,
        HEALTH,
        DEAD_LETTER,
        ROLLBACK_STARTED,
        REVERT_FINISHED,
        DIAGNOSTIC_REPORT,
        JOB_CANCELLED,
        RESTORE_FINISHED,
    }
)
DERIVED = frozenset(
    {
        STEP_DISPATCHED,
        ATTEMPT_FAILED,
        ATTEMPT_CANCELLED,
        JOB_FAILED,
        ROLLBACK_REQUESTED,
        DIAGNOSTIC_REQUESTED,
        REVERT_REQUESTED,
        RESTORE_REQUESTED,
        ROLLBACK_COMPLETED,
        ACTION_TIMED_OUT,
        DIRECTIVES_ACKED,
        JOB_FINISHED,
    }
)

ANNOTATION_PREFIX = "x-"
# HEALTH is committed per pod, under this reserved job id prefix ("pod/<podName>").
POD_JOB_PREFIX = "pod/"

# Until an attempt's first STEP_STARTED or HEARTBEAT its lease is at least this long from the dispatch's
# due time: a step run may wait in queues first (a cold start, the broker's retries when every instance
# is busy, Knative's activator, the local step host's 429s), and that wait is not a stalled step.
DISPATCH_ALLOWANCE_S = 60.0
# A function asked to act (start a rollback, revert, diagnose) must report back within this time.
ACTION_TIMEOUT_S = 600.0
# A runaway chain of decisions in one transaction is a bug, not a workload: stop it loudly.
MAX_DECISIONS_PER_TRANSACTION = 1000


def is_annotation(record_type: str) -> bool:
    """``x-`` records: accepted for any job id, never change state."""
    return record_type.startswith(ANNOTATION_PREFIX)


def compensation_label(step_name: str) -> str:
    """The step label of a step's compensation (step names never contain ``:``)."""
    return f"{step_name}:compensate"
