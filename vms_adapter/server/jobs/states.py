"""Job states and the transitions between them (JOBS.md §3).

The table is the specification the fold is checked against: ``evolve`` asserts nothing, but the tests
walk every pair of states and every record type through it.
"""

from __future__ import annotations

PENDING = "PENDING"
RUNNING = "RUNNING"
SUCCEEDED = "SUCCEEDED"
FAILED = "FAILED"
ROLLING_BACK = "ROLLING_BACK"
ROLLED_BACK = "ROLLED_BACK"
ROLLBACK_FAILED = "ROLLBACK_FAILED"
CANCELLED = "CANCELLED"

ALL_STATES = (PENDING, RUNNING, SUCCEEDED, FAILED, ROLLING_BACK, ROLLED_BACK, ROLLBACK_FAILED, CANCELLED)

# States in which a job is always finished; FAILED is finished only once JOB_FINISHED says so.
FINAL_STATES = frozenset({SUCCEEDED, ROLLED_BACK, ROLLBACK_FAILED})

# Every state change the fold may make: (from, to).
TRANSITIONS = frozenset(
    {
        (PENDING, RUNNING),
        (PENDING, FAILED),  # the first attempt's lease expired, or its dispatch was dead-lettered
        (PENDING, CANCELLED),
        (RUNNING, SUCCEEDED),
        (RUNNING, FAILED),
        (RUNNING, CANCELLED),
        (FAILED, ROLLING_BACK),
        (FAILED, ROLLBACK_FAILED),  # the rollback was requested but never started
        (CANCELLED, ROLLING_BACK),
        (CANCELLED, ROLLBACK_FAILED),
        (ROLLING_BACK, ROLLED_BACK),
        (ROLLING_BACK, ROLLBACK_FAILED),
    }
)

# onFailure policies.
ON_FAILURE = ("rollback", "diagnose", "rollback-and-diagnose", "none")


def wants_rollback(on_failure: str) -> bool:
    return on_failure in ("rollback", "rollback-and-diagnose")


def wants_diagnosis(on_failure: str) -> bool:
    return on_failure in ("diagnose", "rollback-and-diagnose")
