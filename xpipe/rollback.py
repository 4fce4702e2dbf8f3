"""Countermeasures: carrying out the rollback, revert and diagnose directives the journal sends.

The journal directs the whole rollback saga (JOBS.md §7); this module only performs one action per
event and reports its outcome as a fact:

- ``rollback`` -> ``ROLLBACK_STARTED``: the journal fixes the saga plan and dispatches the first
  compensation as an ordinary step run (compensations need nothing more from this function);
- ``revert`` -> pin the Knative Service's traffic to its previous ready revision through the backend,
  then ``REVERT_FINISHED`` with the outcome;
- ``diagnose`` -> collect pods, container states, restarts, events and log tails through the backend,
  then ``DIAGNOSTIC_REPORT`` (cut to fit one journal record).

Side effects and redelivery: a revert moves the pin one revision back each time it is done, so before
acting the function reads the job and acts only while the journal still waits for that directive's
action (the saga action is ``running`` with this directive id, or the diagnosis is ``requested``). What
remains is the narrow window between the backend call and the commit of its outcome.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from cloudevents.http import CloudEvent
from pydantic import ValidationError

from xpipe import logs
from xpipe.auth import Caller
from xpipe.backends.base import BackendError, ExecutionBackend
from xpipe.errors import MalformedEvent
from xpipe.events import (
    JOB_DIAGNOSTIC_REQUESTED,
    JOB_ROLLBACK_REQUESTED,
    JobDiagnosticRequested,
    JobRollbackRequested,
)
from xpipe.http import event_data
from xpipe.journal import MAX_RECORD_BYTES, JobJournal, idempotency_key
from xpipe.outbox import Outbox

log = logging.getLogger("xpipe.rollback")

_TRUNCATED = "...[truncated]"


def fit_report(report: dict[str, Any], max_bytes: int = MAX_RECORD_BYTES) -> dict[str, Any]:
    """The report, with its longest strings (log tails) cut from the front until it fits ``max_bytes``."""

    def size(value: Any) -> int:
        return len(json.dumps(value, default=str).encode())

    def cut(value: Any, limit: int) -> Any:
        if isinstance(value, str) and len(value) > limit:
            return _TRUNCATED + value[-limit:]  # keep the end: a log's last lines say why it failed
        if isinstance(value, dict):
            return {k: cut(v, limit) for k, v in value.items()}
        if isinstance(value, list):
            return [cut(v, limit) for v in value]
        return value

    current: dict[str, Any] = json.loads(json.dumps(report, default=str))
    limit = 4096
    while size(current) > max_bytes and limit >= 64:
        current = cut(current, limit)
        limit //= 2
    if size(current) > max_bytes:
        current = {
            "jobId": report.get("jobId"),
            "truncated": True,
            "note": f"the diagnostic report did not fit one journal record ({max_bytes} bytes)",
            "errors": [str(e)[:200] for e in (report.get("errors") or [])][:20],
        }
    return current


def _directive(
    event: CloudEvent, model: type[JobRollbackRequested | JobDiagnosticRequested]
) -> tuple[str, dict[str, Any]]:
    try:
        request = model.model_validate(event_data(event))
    except ValidationError as exc:
        first = exc.errors()[0]
        raise MalformedEvent(f"data.{'.'.join(str(p) for p in first['loc'])}: {first['msg']}") from None
    directive = request.directive
    if (
        not directive
        or not isinstance(directive.get("id"), str)
        or not isinstance(directive.get("action"), str)
    ):
        raise MalformedEvent("data.directive must carry the journal's directive id and action")
    return request.job_id, dict(directive)


class Countermeasures:
    """Performs the journal's rollback, revert and diagnose directives and commits their outcomes."""

    def __init__(self, journal: JobJournal, outbox: Outbox, backend: Callable[[], ExecutionBackend]) -> None:
        self.journal = journal
        self.outbox = outbox
        self.backend = backend

    def handle(self, event: CloudEvent, caller: Caller) -> None:
        """Carry out the event's directive and commit its outcome; 202 when done."""
        key = idempotency_key(event["source"], event["id"])
        log.debug("countermeasure requested", extra={"eventType": event["type"], "caller": caller.name})
        if event["type"] == JOB_ROLLBACK_REQUESTED:
            job_id, directive = _directive(event, JobRollbackRequested)
            logs.bind_job(job_id)
            action = directive["action"]
            if action == "rollback":
                self._commit(job_id, "ROLLBACK_STARTED", {"directive": directive["id"]}, key)
            elif action == "revert":
                self._revert(job_id, directive, key)
            else:
                raise MalformedEvent(f"unknown rollback action {action!r}")
        elif event["type"] == JOB_DIAGNOSTIC_REQUESTED:
            job_id, directive = _directive(event, JobDiagnosticRequested)
            logs.bind_job(job_id)
            if directive["action"] != "diagnose":
                raise MalformedEvent(f"unknown diagnostic action {directive['action']!r}")
            self._diagnose(job_id, directive, key)
        else:
            raise MalformedEvent(f"rollback does not handle {event['type']!r} events")

    @staticmethod
    def _still_directed(view: dict[str, Any], directive_id: str) -> bool:
        """Whether the journal still waits for this directive's action (a running saga action or a
        requested diagnosis); False once its outcome was committed, timed out or the saga moved on."""
        rollback = view.get("rollback") or {}
        for action in rollback.get("actions") or []:
            if isinstance(action, dict) and action.get("directiveId") == directive_id:
                return action.get("status") == "running"
        diagnosis = view.get("diagnosis") or {}
        if diagnosis.get("directiveId") == directive_id:
            return diagnosis.get("status") == "requested"
        return False

    def _revert(self, job_id: str, directive: dict[str, Any], key: str) -> None:
        step, service, namespace = directive.get("step"), directive.get("service"), directive.get("namespace")
        if not all(isinstance(v, str) and v for v in (step, service, namespace)):
            raise MalformedEvent("a revert directive names step, service and namespace")
        assert isinstance(step, str)
        assert isinstance(service, str)
        assert isinstance(namespace, str)
        if not self._still_directed(self.journal.job(job_id), directive["id"]):
            log.info(
                "revert no longer directed (done or timed out); ignored", extra={"directive": directive["id"]}
            )
            return
        data: dict[str, Any] = {"step": step}
        try:
            state = self.backend().revert_traffic(namespace, service)
        except BackendError as error:
            if error.retryable:
                raise  # 503: Knative redelivers; the journal times the action out if it never succeeds
            data.update(
                outcome="failed", details={"error": type(error).__name__, "message": str(error)[:500]}
            )
        else:
            data.update(outcome="succeeded", details=state.to_json_dict())
            if state.pinned_revision:
                data["revision"] = state.pinned_revision
        log.info(
            "revert carried out",
            extra={"service": service, "namespace": namespace, "outcome": data["outcome"]},
        )
        self._commit(job_id, "REVERT_FINISHED", data, key)

    def _diagnose(self, job_id: str, directive: dict[str, Any], key: str) -> None:
        view = self.journal.job(job_id)
        if not self._still_directed(view, directive["id"]):
            log.info(
                "diagnosis no longer directed (done or timed out); ignored",
                extra={"directive": directive["id"]},
            )
            return
        services: list[str] = []
        for step in view.get("steps") or []:
            if isinstance(step, dict) and isinstance(step.get("service"), str):
                services.append(step["service"])
        report = self.backend().collect_diagnostics(job_id, services)
        report.setdefault("pods", directive.get("pods") or [])
        self._commit(job_id, "DIAGNOSTIC_REPORT", {"report": fit_report(report)}, key)

    def _commit(self, job_id: str, record_type: str, data: dict[str, Any], key: str) -> None:
        committed = self.journal.record(job_id, [{"type": record_type, "data": data}], key=key)
        self.outbox.deliver(committed.directives)
