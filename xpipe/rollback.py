"""Countermeasures: carrying out the rollback, revert and diagnose directives the journal sends.

The journal directs the whole rollback saga (JOBS.md §7); this module only performs one action per
event and reports its outcome as a fact:

- ``rollback`` -> ``ROLLBACK_STARTED``: the journal fixes the saga plan and dispatches the first
  compensation as an ordinary step run (compensations need nothing more from this function);
- ``revert`` -> pin the Knative Service's traffic to its previous ready revision through the backend,
  then ``REVERT_FINISHED`` with the outcome;
- ``restore`` (a job succeeded) -> traffic of each Service its plan may revert follows the latest
  revision again (``restore_traffic``), then ``RESTORE_FINISHED`` with the outcome;
- ``diagnose`` -> collect pods, container states, restarts, events and log tails through the backend,
  then ``DIAGNOSTIC_REPORT`` (cut to fit one journal record);
- ``com.xpipe.step.cancel`` (a ``cancel`` directive, JOBS.md §9) -> stop the instance running the attempt
  through the backend (``stop_attempt``). Nothing is committed: the journal already ended the attempt
  (``ATTEMPT_CANCELLED``), and the step runtime's ``cancelled`` reply is the late fact it accepts.

Side effects and redelivery: a revert's target depends only on the service's revisions (the one that
served before the newest deploy; a pinned service keeps its pin), so a redelivered or concurrent revert
converges on the same pin and every commit of its outcome records that pin. Before acting the function
still reads the job and acts only while the journal waits for that directive's action (the saga action
is ``running`` with this directive id, or the diagnosis is ``requested``). A cancel likewise
acts only on an attempt the journal shows as cancelled, and takes the pod from the journal's view, so a
forged or stale delivery cannot stop a live attempt.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from cloudevents.http import CloudEvent

from vms_adapter.errors import ProtocolError
from xpipe import logs
from xpipe.auth import Caller
from xpipe.backends.base import BackendError, ExecutionBackend
from xpipe.errors import MalformedEvent
from xpipe.event_names import EXT_STEP, JOB_DIAGNOSTIC_REQUESTED, JOB_ROLLBACK_REQUESTED, STEP_CANCEL
from xpipe.http import event_data
from xpipe.journal import MAX_RECORD_BYTES, JobJournal, idempotency_key
from xpipe.outbox import Outbox

if TYPE_CHECKING:
    from xpipe.events import JobDiagnosticRequested, JobRollbackRequested

# The payload models (pydantic) are imported where an event needs one, not at start-up: loading pydantic
# and building them is about a third of a function's cold start (xpipe/event_names.py).

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
    from pydantic import ValidationError  # noqa: PLC0415 - see above

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


def _attempt_view(view: dict[str, Any], label: str, number: int) -> dict[str, Any] | None:
    """The job view's entry for attempt `number` of step label `label` (`<name>:compensate` included)."""
    name, _, suffix = label.partition(":")
    for step in view.get("steps") or []:
        if not isinstance(step, dict) or step.get("name") != name:
            continue
        holder = step.get("compensation") if suffix == "compensate" else step
        for attempt in (holder or {}).get("attempts") or []:
            if isinstance(attempt, dict) and attempt.get("attempt") == number:
                return attempt
    return None


class Countermeasures:
    """Performs the journal's rollback, revert, diagnose and cancel directives (committing the outcomes
    of the first three)."""

    def __init__(self, journal: JobJournal, outbox: Outbox, backend: Callable[[], ExecutionBackend]) -> None:
        self.journal = journal
        self.outbox = outbox
        self.backend = backend

    def handle(self, event: CloudEvent, caller: Caller) -> None:
        """Carry out the event's directive and commit its outcome; 202 when done."""
        key = idempotency_key(event["source"], event["id"])
        log.debug("countermeasure requested", extra={"eventType": event["type"], "caller": caller.name})
        if event["type"] == JOB_ROLLBACK_REQUESTED:
            from xpipe.events import JobRollbackRequested  # noqa: PLC0415 - see above

            job_id, directive = _directive(event, JobRollbackRequested)
            logs.bind_job(job_id)
            action = directive["action"]
            if action == "rollback":
                self._commit(job_id, "ROLLBACK_STARTED", {"directive": directive["id"]}, key)
            elif action == "revert":
                self._revert(job_id, directive, key)
            elif action == "restore":
                self._restore(job_id, directive, key)
            else:
                raise MalformedEvent(f"unknown rollback action {action!r}")
        elif event["type"] == JOB_DIAGNOSTIC_REQUESTED:
            from xpipe.events import JobDiagnosticRequested  # noqa: PLC0415 - see above

            job_id, directive = _directive(event, JobDiagnosticRequested)
            logs.bind_job(job_id)
            if directive["action"] != "diagnose":
                raise MalformedEvent(f"unknown diagnostic action {directive['action']!r}")
            self._diagnose(job_id, directive, key)
        elif event["type"] == STEP_CANCEL:
            self._cancel(event)
        else:
            raise MalformedEvent(f"rollback does not handle {event['type']!r} events")

    def _cancel(self, event: CloudEvent) -> None:
        from pydantic import ValidationError  # noqa: PLC0415 - see above

        from xpipe.events import StepCancel  # noqa: PLC0415

        try:
            cancel = StepCancel.model_validate(event_data(event))
        except ValidationError as exc:
            first = exc.errors()[0]
            raise MalformedEvent(f"data.{'.'.join(str(p) for p in first['loc'])}: {first['msg']}") from None
        service = event.get(EXT_STEP)
        if not isinstance(service, str) or not service:
            raise MalformedEvent(f"a step.cancel names the step service in the {EXT_STEP} extension")
        logs.bind_job(cancel.job_id)
        extra = {"service": service, "attempt": f"{cancel.step}/{cancel.attempt}"}
        found = _attempt_view(self.journal.job(cancel.job_id), cancel.step, cancel.attempt)
        if found is None or found.get("outcome") != "cancelled":
            # Not (or no longer shown as) an attempt the journal cancelled: never stop a live attempt.
            log.warning("cancel of an attempt the journal did not cancel; ignored", extra=extra)
            return
        pod = found.get("pod") if isinstance(found.get("pod"), str) else None
        stopped = self.backend().stop_attempt(service, pod, cancel.job_id, cancel.step, cancel.attempt)
        log.info("cancelled attempt stopped" if stopped else "cancelled attempt: nothing left to stop",
                 extra={**extra, "pod": pod})  # fmt: skip

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

    @staticmethod
    def _directed_revert(view: dict[str, Any], directive_id: str) -> tuple[str, str, str] | None:
        """(step, service, namespace) of the revert the journal directs with this id and still waits
        for, taken from the job's plan, or None. The event's own step/service/namespace are never used:
        a forged or stale event could otherwise pin any Service the function may patch."""
        rollback = view.get("rollback") or {}
        for action in rollback.get("actions") or []:
            if not isinstance(action, dict) or action.get("directiveId") != directive_id:
                continue
            if action.get("kind") != "revert" or action.get("status") != "running":
                return None
            for step in view.get("steps") or []:
                if not isinstance(step, dict) or step.get("name") != action.get("step"):
                    continue
                target = step.get("revert") or {}
                service, namespace = target.get("service"), target.get("namespace")
                if isinstance(service, str) and service and isinstance(namespace, str) and namespace:
                    return str(step["name"]), service, namespace
            return None
        return None

    def _revert(self, job_id: str, directive: dict[str, Any], key: str) -> None:
        directed = self._directed_revert(self.journal.job(job_id), directive["id"])
        if directed is None:
            log.info(
                "revert not directed by the journal (unknown, done or timed out); ignored",
                extra={"directive": directive["id"]},
            )
            return
        step, service, namespace = directed
        data: dict[str, Any] = {"step": step}
        try:
            state = self.backend().revert_traffic(namespace, service, at=self.journal.clock())
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

    def _restore(self, job_id: str, directive: dict[str, Any], key: str) -> None:
        """Traffic of the Services a succeeded job's plan may revert follows their latest revision again
        (JOBS.md §7). The targets come from the journal's view of the job, never from the event; a
        directive the journal did not give, or one already reported, changes nothing."""
        view = self.journal.job(job_id)
        restore = view.get("restore") or {}
        extra = {"directive": directive["id"]}
        if restore.get("directiveId") != directive["id"]:
            log.warning("restore not directed by the journal; ignored", extra=extra)
            return
        for entry in view.get("history") or []:
            data = entry.get("data") if isinstance(entry, dict) else None
            if entry.get("type") == "RESTORE_FINISHED" and (data or {}).get("directive") == directive["id"]:
                # Already done: a late redelivery must not undo a revert that a later job made since.
                log.info("restore already reported; ignored", extra=extra)
                return
        requested_at = restore.get("requestedAt")
        if isinstance(requested_at, bool) or not isinstance(requested_at, (int, float)):
            raise ProtocolError("the journal's view of the restore has no requestedAt time")  # a 502
        results: list[dict[str, Any]] = []
        for target in restore.get("targets") or []:
            service, namespace = target.get("service"), target.get("namespace")
            if not (isinstance(service, str) and isinstance(namespace, str)):
                continue
            try:
                # A pin made after the restore was requested (another job's revert) is kept.
                state = self.backend().restore_traffic(namespace, service, requested_at=float(requested_at))
            except BackendError as error:
                if error.retryable:
                    raise  # 503: Knative redelivers; restore is idempotent
                results.append({"service": service, "namespace": namespace, "error": type(error).__name__,
                                "message": str(error)[:300]})  # fmt: skip
            else:
                results.append(state.to_json_dict())
        outcome = "failed" if any("error" in r for r in results) else "succeeded"
        log.info("restore carried out", extra={**extra, "outcome": outcome, "targets": len(results)})
        data = {"directive": directive["id"], "outcome": outcome, "details": {"targets": results}}
        self._commit(job_id, "RESTORE_FINISHED", data, key)

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
        # The pods the job's attempts named, from the journal's view (never from the event).
        pods = sorted(
            {
                attempt["pod"]
                for step in view.get("steps") or []
                if isinstance(step, dict)
                for attempt in step.get("attempts") or []
                if isinstance(attempt, dict) and isinstance(attempt.get("pod"), str)
            }
        )
        report.setdefault("pods", pods)
        self._commit(job_id, "DIAGNOSTIC_REPORT", {"report": fit_report(report)}, key)

    def _commit(self, job_id: str, record_type: str, data: dict[str, Any], key: str) -> None:
        committed = self.journal.record(job_id, [{"type": record_type, "data": data}], key=key)
        self.outbox.deliver(committed.directives)
