"""``decide``, ``sweep`` and ``acknowledge`` never change the live state, and the snapshot text kept per job
always equals a fresh encoding of the state.

Both properties are shortcuts the state machine takes for speed: deciding works on a copy of only the
parts of a job the fold changes (``_clone``), and each job's JSON (and its history's, separately) is kept
until a committed record changes it. A shortcut that is wrong would show here first: the model-based test
compares the live state with a replay through that same kept text, so a copy sharing something the fold
changes, or text kept past a change, could pass there unseen.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import invariant

from vms_adapter.server.jobs import JobStateMachine
from vms_adapter.server.model import ModelRejection

from .driver import T0, Driver, plan, step
from .test_model_based import JobJournal

T = TypeVar("T")


def live_state(model: JobStateMachine) -> str:
    """The model's state encoded afresh (none of the text it keeps for snapshots)."""
    state = {"jobs": model._jobs, "history": model._history, "pods": model._pods}
    return json.dumps(state, sort_keys=True)


def unchanged(model: JobStateMachine, question: Callable[[], T]) -> T:
    before = live_state(model)
    try:
        return question()
    finally:
        assert live_state(model) == before, "deciding changed the live state"


@contextlib.contextmanager
def checked(model: JobStateMachine, method: str) -> Iterator[None]:
    """While inside, every call of ``model.<method>`` is checked to leave the live state unchanged."""
    original = getattr(model, method)
    setattr(model, method, lambda *args: unchanged(model, lambda: original(*args)))
    try:
        yield
    finally:
        delattr(model, method)


class PurityCheckingDriver(Driver):
    """A ``Driver`` that checks every decision left the live state as it was (refusals included)."""

    def commit(
        self, job_id: str, items: list[tuple[str, dict[str, Any]]], now: float = T0
    ) -> tuple[list[Any], list[dict[str, Any]]]:
        with checked(self.model, "decide"):
            return super().commit(job_id, items, now)

    def sweep(self, now: float, redelivery_s: float = 60.0) -> tuple[list[Any], list[dict[str, Any]]]:
        with checked(self.model, "sweep"):
            return super().sweep(now, redelivery_s)

    def ack(self, ids: list[str], now: float = T0) -> list[Any]:
        with checked(self.model, "acknowledge"):
            return super().ack(ids, now)


class PureDecisions(JobJournal):
    """The model-based test's random interleavings, with the two shortcuts checked after every step."""

    def __init__(self) -> None:
        super().__init__()
        self.d = PurityCheckingDriver()

    @invariant()
    def the_kept_snapshot_text_is_the_state(self) -> None:
        model = self.d.model
        kept = json.loads(model.snapshot_json())
        assert json.dumps(kept, sort_keys=True) == json.dumps(
            {"format": kept["format"], **json.loads(live_state(model))}, sort_keys=True
        )


PureDecisions.TestCase.settings = settings(
    max_examples=40,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_decisions_leave_the_live_state_alone = PureDecisions.TestCase


def test_a_refused_fact_leaves_the_live_state_alone() -> None:
    d = PurityCheckingDriver()
    job, _ = d.register(plan(step("build", retries=1), step("test")))
    d.fact(job, "HEARTBEAT", step="build", attempt=1, pod="p1")
    before = live_state(d.model)
    for kind, data in [
        ("STEP_FINISHED", {"step": "build", "attempt": 3, "outcome": "succeeded"}),
        ("HEARTBEAT", {"step": "nope", "attempt": 1, "pod": "p1"}),
        ("ROLLBACK_STARTED", {}),
    ]:
        # The first fact changes the scratch copy (attempt 1 fails, attempt 2 is dispatched), then the
        # second is refused: the whole transaction is.
        failed = ("STEP_FINISHED", {"step": "build", "attempt": 1, "outcome": "failed"})
        with pytest.raises(ModelRejection) as refused:
            d.commit(job, [failed, (kind, data)])
        assert refused.value.code == "INVALID_TRANSITION"
        assert live_state(d.model) == before


def test_a_heartbeat_keeps_the_history_text_and_an_annotation_keeps_the_job_text() -> None:
    """The kept text is dropped only for what a record changed: a heart-beat after the first changes the
    job (its lease) but not its history; an annotation changes the history but not the job."""
    d = Driver()
    job, _ = d.register(plan(step("build")))
    d.fact(job, "HEARTBEAT", step="build", attempt=1, pod="p1")
    d.model.snapshot_json()
    kept_history = d.model._history_json[job]
    d.fact(job, "HEARTBEAT", T0 + 5, step="build", attempt=1, pod="p1")
    assert job not in d.model._job_json
    assert d.model._history_json[job] is kept_history
    d.model.snapshot_json()
    kept_job = d.model._job_json[job]
    d.commit(job, [("x-note", {"text": "hello"})], T0 + 6)
    assert d.model._job_json[job] is kept_job
    assert job not in d.model._history_json
    assert json.loads(d.model.snapshot_json())["history"][job][-1]["type"] == "x-note"


@pytest.mark.parametrize("jobs", [0, 1, 3])
def test_the_snapshot_text_is_the_compact_encoding_of_the_state(jobs: int) -> None:
    """Byte for byte what one encoding of the whole state gives, with no job, one job and several."""
    d = Driver()
    for n in range(jobs):
        job, _ = d.register(plan(step("build"), step("test")))
        d.commit(job, [("x-note", {"n": n})], T0 + n)
    model = d.model
    state = {"format": json.loads(model.snapshot_json())["format"], "jobs": model._jobs}
    state |= {"history": model._history, "pods": model._pods}
    compact = json.dumps(state, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    assert model.snapshot_json() == compact
    assert model.snapshot_json() == compact  # again, from the kept text
