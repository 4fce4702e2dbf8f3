"""Model-based test: random interleavings of registrations, facts, duplicates, health, sweeps at random
times, acknowledgements and restarts, with the invariants of JOBS.md checked after every step.

A restart rebuilds the state machine either by replaying every committed record (recovery from the
segments) or from ``dump_state``/``load_state`` (recovery from a snapshot).
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from vms_adapter.server.jobs import JobStateMachine
from vms_adapter.server.model import ModelRejection

from .driver import T0, Driver, plan, step

FINAL = {"SUCCEEDED", "FAILED", "ROLLED_BACK", "ROLLBACK_FAILED", "CANCELLED"}
OUTCOMES = ("succeeded",) * 5 + ("failed", "timed-out", "cancelled")
PODS = ("pod-a", "pod-b", "pod-c")

steps_strategy: st.SearchStrategy[list[dict[str, Any]]] = st.lists(
    st.fixed_dictionaries(
        {
            "retries": st.integers(0, 2),
            "backoff": st.sampled_from([0.0, 3.0]),
            "compensate": st.sampled_from([True, True, False]),
            "revert": st.booleans(),
            "max_restarts": st.integers(0, 2),
        }
    ),
    min_size=1,
    max_size=4,
)


class JobJournal(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.d = Driver()
        self.now = T0
        self.jobs: list[str] = []
        self.finished_as: dict[str, str] = {}
        self.facts: list[tuple[str, str, dict[str, Any]]] = []  # accepted facts, for duplicates
        self.handed_out: list[str] = []

    # -- helpers -----------------------------------------------------------------------------------

    def view(self, job: str) -> dict[str, Any]:
        return self.d.view(job)

    def live(self, job: str) -> list[tuple[str, int]]:
        found = []
        for s in self.view(job)["steps"]:
            for a in s["attempts"]:
                if a["outcome"] is None:
                    found.append((s["name"], a["attempt"]))
            for a in (s["compensation"] or {}).get("attempts", []):
                if a["outcome"] is None:
                    found.append((f"{s['name']}:compensate", a["attempt"]))
        return found

    def commit_fact(self, job: str, kind: str, data: dict[str, Any]) -> None:
        _, directives = self.d.commit(job, [(kind, data)], self.now)
        self.facts.append((job, kind, data))
        self.handed_out.extend(x["id"] for x in directives)

    # -- rules -------------------------------------------------------------------------------------

    @initialize(
        size=st.integers(2, 4),
        retries=st.integers(0, 1),
        on_failure=st.sampled_from(["rollback", "rollback-and-diagnose"]),
    )
    def first_job(self, size: int, retries: int, on_failure: str) -> None:
        """A job whose rollback has something to compensate, so the saga is exercised in most runs."""
        self.register([{"retries": retries, "compensate": True}] * size, on_failure)

    @precondition(lambda self: self.jobs)
    @rule(data=st.data(), successes_first=st.integers(0, 3))
    def the_current_step_fails_for_good(self, data: st.DataObject, successes_first: int) -> None:
        """Some steps succeed, then one fails until it runs out of attempts; the rollback starts."""
        job = data.draw(st.sampled_from(self.jobs))
        for _ in range(successes_first):
            live = self.live(job)
            if not live:
                return
            label, attempt = live[0]
            self.commit_fact(
                job, "STEP_FINISHED", {"step": label, "attempt": attempt, "outcome": "succeeded"}
            )
        for _ in range(5):
            live = self.live(job)
            if not live:
                break
            label, attempt = live[0]
            self.commit_fact(job, "STEP_FINISHED", {"step": label, "attempt": attempt, "outcome": "failed"})
        rollback = self.view(job)["rollback"]
        if rollback is not None and rollback["status"] == "requested":  # the rollback function is prompt
            self.commit_fact(job, "ROLLBACK_STARTED", {})

    @rule(
        specs=steps_strategy,
        on_failure=st.sampled_from(["none", "diagnose", "rollback", "rollback-and-diagnose"]),
    )
    def register(self, specs: list[dict[str, Any]], on_failure: str) -> None:
        steps = [step(f"s{i}", heartbeat=10, timeout=40, **spec) for i, spec in enumerate(specs)]
        job, directives = self.d.register(plan(*steps, on_failure=on_failure), self.now)
        assert [x["kind"] for x in directives] == ["dispatch"]
        self.jobs.append(job)
        self.handed_out.extend(x["id"] for x in directives)

    @rule(seconds=st.sampled_from([0.5, 3.0, 9.0, 15.0, 45.0]))
    def time_passes(self, seconds: float) -> None:
        self.now += seconds

    def live_anywhere(self) -> list[tuple[str, str, int]]:
        return [(job, label, attempt) for job in self.jobs for label, attempt in self.live(job)]

    @precondition(lambda self: self.jobs)
    @rule(data=st.data(), pod=st.sampled_from(PODS), started=st.booleans())
    def heartbeat(self, data: st.DataObject, pod: str, started: bool) -> None:
        live = self.live_anywhere()
        if live:
            job, label, attempt = data.draw(st.sampled_from(live))
            kind = "STEP_STARTED" if started else "HEARTBEAT"
            self.commit_fact(job, kind, {"step": label, "attempt": attempt, "pod": pod})

    @precondition(lambda self: self.jobs)
    @rule(data=st.data(), outcome=st.sampled_from(OUTCOMES))
    def step_finishes(self, data: st.DataObject, outcome: str) -> None:
        live = self.live_anywhere()
        if live:
            job, label, attempt = data.draw(st.sampled_from(live))
            self.commit_fact(job, "STEP_FINISHED", {"step": label, "attempt": attempt, "outcome": outcome})

    @precondition(lambda self: self.jobs)
    @rule(data=st.data(), outcomes=st.lists(st.sampled_from(OUTCOMES), min_size=1, max_size=6))
    def job_progresses(self, data: st.DataObject, outcomes: list[str]) -> None:
        """Several attempts of one job report in a row (a job moves on in one rule)."""
        job = data.draw(st.sampled_from(self.jobs))
        for outcome in outcomes:
            rollback = self.view(job)["rollback"]
            if rollback is not None and rollback["status"] == "requested":
                self.commit_fact(job, "ROLLBACK_STARTED", {})
            live = self.live(job)
            if not live:
                return
            label, attempt = live[0]
            self.commit_fact(job, "HEARTBEAT", {"step": label, "attempt": attempt, "pod": "pod-a"})
            self.commit_fact(job, "STEP_FINISHED", {"step": label, "attempt": attempt, "outcome": outcome})

    @precondition(lambda self: self.facts)
    @rule(data=st.data())
    def duplicate_fact(self, data: st.DataObject) -> None:
        """At-least-once delivery: any fact may arrive again, and is accepted."""
        job, kind, fact = data.draw(st.sampled_from(self.facts))
        before = self.view(job)["state"]
        self.d.commit(job, [(kind, fact)], self.now)
        if job in self.finished_as:
            assert self.view(job)["state"] == before

    @precondition(lambda self: self.jobs)
    @rule(data=st.data(), then_rollback=st.booleans(), really=st.sampled_from([False, False, True]))
    def cancel(self, data: st.DataObject, then_rollback: bool, really: bool) -> None:
        if not really:  # cancels are rarer than progress, or few jobs would get far
            return
        job = data.draw(st.sampled_from(self.jobs))
        view = self.view(job)
        fact = {"reason": "test", "thenRollback": then_rollback}
        if view["state"] in ("PENDING", "RUNNING") or view["cancel"] is not None:
            self.commit_fact(job, "JOB_CANCELLED", fact)
        else:
            with pytest.raises(ModelRejection) as refused:
                self.commit_fact(job, "JOB_CANCELLED", fact)
            assert refused.value.code == "INVALID_TRANSITION"

    @precondition(lambda self: self.jobs)
    @rule(data=st.data(), succeed=st.booleans())
    def rollback_function_acts(self, data: st.DataObject, succeed: bool) -> None:
        """What the rollback function does for the job's open requests."""
        waiting = [
            j for j in self.jobs if not self.view(j)["finished"] and self.view(j)["state"] != "RUNNING"
        ]
        if not waiting:
            return
        job = data.draw(st.sampled_from(waiting))
        view = self.view(job)
        rollback, diagnosis = view["rollback"], view["diagnosis"]
        if rollback is not None and rollback["status"] == "requested":
            self.commit_fact(job, "ROLLBACK_STARTED", {})
        elif rollback is not None and rollback["status"] == "started":
            running = [a for a in rollback["actions"] if a["kind"] == "revert" and a["status"] == "running"]
            if running:
                outcome = "succeeded" if succeed else "failed"
                self.commit_fact(job, "REVERT_FINISHED", {"step": running[0]["step"], "outcome": outcome})
        if diagnosis is not None and diagnosis["status"] == "requested":
            self.commit_fact(job, "DIAGNOSTIC_REPORT", {"report": {"pods": []}})

    @precondition(lambda self: self.jobs)
    @rule(pod=st.sampled_from(PODS), ready=st.booleans(), restarts=st.integers(0, 4))
    def pod_health(self, pod: str, ready: bool, restarts: int) -> None:
        health = {
            "pod": pod,
            "phase": "Running",
            "ready": ready,
            "containers": [{"name": "c", "ready": ready, "restartCount": restarts, "state": "running"}],
            "observedAt": self.now,
        }
        _, directives = self.d.commit(f"pod/{pod}", [("HEALTH", health)], self.now)
        self.handed_out.extend(x["id"] for x in directives)

    @rule(redelivery=st.sampled_from([0.0, 30.0]))
    def sweep(self, redelivery: float) -> None:
        _, due = self.d.sweep(self.now, redelivery)
        self.handed_out.extend(x["id"] for x in due)

    @precondition(lambda self: self.handed_out)
    @rule(data=st.data())
    def acknowledge(self, data: st.DataObject) -> None:
        ids = data.draw(st.lists(st.sampled_from(self.handed_out), min_size=1, max_size=4))
        self.d.ack(ids, self.now)

    @rule(from_snapshot=st.booleans())
    def restart(self, from_snapshot: bool) -> None:
        if from_snapshot:
            fresh = JobStateMachine()
            fresh.load_state(self.d.model.dump_state())
        else:
            fresh = self.d.replayed()
        assert fresh.dump_state() == self.d.model.dump_state()
        self.d.model = fresh

    # -- invariants --------------------------------------------------------------------------------

    @invariant()
    def replaying_the_journal_yields_the_live_state(self) -> None:
        assert self.d.replayed().dump_state() == self.d.model.dump_state()

    @invariant()
    def a_finished_job_stays_in_its_one_final_state(self) -> None:
        for job in self.jobs:
            view = self.view(job)
            finishes = [r for r in self.d.records if r.job_id == job and r.type == "JOB_FINISHED"]
            assert len(finishes) <= 1
            if job in self.finished_as:
                assert view["finished"]
                assert view["state"] == self.finished_as[job]
            elif view["finished"]:
                assert view["state"] in FINAL
                assert finishes[0].data["state"] == view["state"]
                self.finished_as[job] = view["state"]

    @invariant()
    def never_two_live_attempts(self) -> None:
        for job in self.jobs:
            live = self.live(job)
            assert len(live) <= 1, (job, live)
            if self.view(job)["finished"]:
                assert live == []

    @invariant()
    def rollback_compensates_exactly_the_succeeded_steps_in_reverse(self) -> None:
        for job in self.jobs:
            view = self.view(job)
            succeeded = [s for s in view["steps"] if s["status"] == "succeeded"]
            expected = [s["name"] for s in reversed(succeeded) if s["compensation"] is not None]
            dispatched = [
                r.data["step"].split(":")[0]
                for r in self.d.records
                if r.job_id == job
                and r.type == "STEP_DISPATCHED"
                and r.data["step"].endswith(":compensate")
                and r.data["attempt"] == 1
            ]
            assert dispatched == expected[: len(dispatched)]
            if view["state"] == "ROLLED_BACK":
                assert dispatched == expected

    @invariant()
    def the_outbox_index_matches_the_jobs(self) -> None:
        """Every pending due directive is handed out by a sweep (here: a fresh model from a snapshot)."""
        fresh = JobStateMachine()
        fresh.load_state(self.d.model.dump_state())
        due = {x["id"] for x in fresh.due_directives(self.now, 0.0)}
        pending = {
            x["id"]
            for job in self.jobs
            for x in self.view(job)["directives"]
            if x["status"] == "pending" and x["dueAt"] <= self.now
        }
        assert due == pending

    def teardown(self) -> None:
        """Let time run out: every job must reach exactly one final state."""
        for _ in range(40):
            open_jobs = [j for j in self.jobs if not self.view(j)["finished"]]
            if not open_jobs:
                break
            self.now += 700.0
            for job in open_jobs:
                view = self.view(job)
                if view["rollback"] is not None and view["rollback"]["status"] == "requested":
                    self.d.commit(job, [("ROLLBACK_STARTED", {})], self.now)
            self.d.sweep(self.now, 0.0)
        assert all(self.view(j)["finished"] for j in self.jobs)
        assert all(self.view(j)["state"] in FINAL for j in self.jobs)
        self.d.model.due_directives(self.now, 0.0)  # everything still pending is handed out


JobJournal.TestCase.settings = settings(
    max_examples=100,
    stateful_step_count=35,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_job_journal = JobJournal.TestCase
