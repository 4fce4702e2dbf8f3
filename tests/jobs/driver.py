"""Drives a ``JobStateMachine`` exactly as the journal's writer does: decide, assign seq and time, evolve.

This is the real component with the storage replaced by a list: what the tests check is the model's own
contract (``vms_adapter/server/model.py``), and ``replayed()`` rebuilds a fresh model from the committed
records the way recovery does.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import Any

from vms_adapter.server.jobs import JobStateMachine
from vms_adapter.server.model import NewRecord, Record

T0 = 1_764_000_000.0


def plan(
    *steps: dict[str, Any], on_failure: str = "none", params: dict[str, str] | None = None
) -> dict[str, Any]:
    return {
        "template": "deploy-service",
        "templateDigest": "sha256:0123",
        "params": {"service": "shop"} if params is None else params,
        "requestedBy": "tests",
        "onFailure": on_failure,
        "steps": list(steps) or [step("build")],
    }


def step(
    name: str,
    *,
    retries: int = 0,
    timeout: int = 300,
    heartbeat: float = 30.0,
    backoff: float = 5.0,
    factor: float = 2.0,
    not_ready: float = 60.0,
    max_restarts: int = 2,
    compensate: bool = False,
    revert: bool = False,
) -> dict[str, Any]:
    return {
        "name": name,
        "service": f"svc-{name}",
        "timeoutSeconds": timeout,
        "retries": retries,
        "backoffSeconds": backoff,
        "backoffFactor": factor,
        "heartbeatTimeoutSeconds": heartbeat,
        "health": {"notReadySeconds": not_ready, "maxRestarts": max_restarts},
        "compensate": {"service": f"svc-{name}-undo", "timeoutSeconds": 120} if compensate else None,
        "revert": {"kind": "knative-traffic", "service": name, "namespace": "shop"} if revert else None,
    }


class Driver:
    """A model plus the list of committed records (the journal without files)."""

    def __init__(self) -> None:
        self.model = JobStateMachine()
        self.records: list[Record] = []
        self.seq = 0
        self.jobs = (f"j{n}" for n in itertools.count(1))
        self.transitions: set[tuple[str | None, str | None]] = set()

    def _stage(self, decided: Iterable[NewRecord], now: float) -> list[Record]:
        committed = []
        for item in decided:
            self.seq += 1
            record = Record(self.seq, item.job_id, item.type, item.data, now)
            before = self.model.job_state(item.job_id)
            self.model.evolve(record)
            after = self.model.job_state(item.job_id)
            if before is not None and before != after:
                self.transitions.add((before, after))
            committed.append(record)
        self.records.extend(committed)
        return committed

    def commit(
        self, job_id: str, items: list[tuple[str, dict[str, Any]]], now: float = T0
    ) -> tuple[list[Record], list[dict[str, Any]]]:
        incoming = [NewRecord(job_id, kind, data) for kind, data in items]
        committed = self._stage(self.model.decide(job_id, incoming, now), now)
        return committed, self.model.directives_of(committed, now)

    def register(self, the_plan: dict[str, Any], now: float = T0) -> tuple[str, list[dict[str, Any]]]:
        job_id = next(self.jobs)
        _, directives = self.commit(job_id, [("JOB_REGISTERED", the_plan)], now)
        return job_id, directives

    def fact(self, job_id: str, kind: str, now: float = T0, **data: Any) -> list[dict[str, Any]]:
        return self.commit(job_id, [(kind, data)], now)[1]

    def sweep(self, now: float, redelivery_s: float = 60.0) -> tuple[list[Record], list[dict[str, Any]]]:
        committed = self._stage(self.model.sweep(now), now)
        return committed, self.model.due_directives(now, redelivery_s)

    def ack(self, ids: list[str], now: float = T0) -> list[Record]:
        return self._stage(self.model.acknowledge(ids, now), now)

    def state(self, job_id: str) -> str | None:
        return self.model.job_state(job_id)

    def view(self, job_id: str) -> dict[str, Any]:
        view = self.model.job_view(job_id)
        assert view is not None
        return view

    def replayed(self) -> JobStateMachine:
        fresh = JobStateMachine()
        for record in self.records:
            fresh.evolve(record)
        return fresh

    def types(self, job_id: str) -> list[str]:
        return [r.type for r in self.records if r.job_id == job_id]
