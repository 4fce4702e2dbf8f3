"""The health relay: what the cluster observes about running steps, recorded as facts in the journal.

Five kinds of event reach health-relay, and each becomes one commit (JOBS.md §5.1):

- ``com.xpipe.step.heartbeat`` -> ``HEARTBEAT`` (renews the attempt's lease, claims the pod);
- ``com.xpipe.step.finished`` -> ``STEP_FINISHED`` (the journal decides what follows);
- ApiServerSource pod events (``dev.knative.apiserver.resource.*``, pods labelled ``xpipe.io/step``)
  -> ``HEALTH`` under ``pod/<name>``: the journal attributes it to the attempt holding the pod;
- ``dev.knative.sources.ping`` -> ``SWEEP``: expired leases and due retries become directives, and
  directives not yet acknowledged are handed out again;
- any event carrying ``knativeerrordest`` (a dead letter from the broker) -> ``DEAD_LETTER``, so that
  nothing is dropped silently.

Whatever directives a commit or sweep returns are published and acknowledged through the outbox. The
relay decides nothing itself.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from cloudevents.http import CloudEvent

from xpipe import logs
from xpipe.auth import Caller
from xpipe.errors import MalformedEvent
from xpipe.event_names import (
    APISERVER_PREFIX,
    EXT_ERROR_CODE,
    EXT_ERROR_DATA,
    EXT_ERROR_DEST,
    EXT_JOB,
    PING,
    STEP_FINISHED,
    STEP_HEARTBEAT,
)
from xpipe.http import event_data
from xpipe.journal import MAX_KEY_CHARS, MAX_RECORD_BYTES, JobJournal, idempotency_key
from xpipe.outbox import Outbox

if TYPE_CHECKING:
    from pydantic import BaseModel

# The payload models (pydantic) are imported where an event needs one, not at start-up: loading pydantic
# and building them is about a third of a function's cold start (xpipe/event_names.py).

log = logging.getLogger("xpipe.relay")

STEP_LABEL = "xpipe.io/step"
DEAD_LETTER_JOB = "dead-letters"  # journal id for dead letters that name no job
_CE_CORE = {"id", "type", "source", "specversion", "subject", "time", "datacontenttype", "dataschema"}


def _model(model: type[BaseModel], event: CloudEvent) -> Any:
    from pydantic import ValidationError  # noqa: PLC0415 - see above

    try:
        return model.model_validate(event_data(event))
    except ValidationError as exc:
        first = exc.errors()[0]
        raise MalformedEvent(f"data.{'.'.join(str(p) for p in first['loc'])}: {first['msg']}") from None


def _fact(data: dict[str, Any], drop: tuple[str, ...] = ("jobId",)) -> dict[str, Any]:
    return {key: value for key, value in data.items() if key not in drop}


def pod_health(pod: dict[str, Any], observed_at: float) -> dict[str, Any] | None:
    """The ``HEALTH`` data of an ApiServerSource pod object, or None for a pod that is not a step's."""
    metadata = pod.get("metadata")
    if not isinstance(metadata, dict):
        raise MalformedEvent("pod event without metadata")
    labels = metadata.get("labels") or {}
    if not isinstance(labels, dict) or STEP_LABEL not in labels:
        return None
    name = metadata.get("name")
    if not isinstance(name, str) or not name:
        raise MalformedEvent("pod event without metadata.name")
    status = pod.get("status") if isinstance(pod.get("status"), dict) else {}
    assert isinstance(status, dict)
    conditions = status.get("conditions") if isinstance(status.get("conditions"), list) else []
    assert isinstance(conditions, list)
    ready = any(
        isinstance(c, dict) and c.get("type") == "Ready" and c.get("status") == "True" for c in conditions
    )
    containers = []
    for item in status.get("containerStatuses") or []:
        if not isinstance(item, dict):
            continue
        state = item.get("state")
        restarts = item.get("restartCount", 0)
        containers.append(
            {
                "name": str(item.get("name", "")),
                "ready": item.get("ready") is True,
                "restartCount": restarts
                if isinstance(restarts, int) and not isinstance(restarts, bool)
                else 0,
                "state": next(iter(state), "unknown") if isinstance(state, dict) and state else "unknown",
            }
        )
    phase = status.get("phase")
    return {
        "pod": name,
        "phase": phase if isinstance(phase, str) and phase else "Unknown",
        "ready": ready,
        "containers": containers,
        "observedAt": observed_at,
    }


def _event_time(event: CloudEvent) -> float:
    raw = event.get("time")
    if isinstance(raw, str):
        try:
            return datetime.fromisoformat(raw.replace("Z", "+00:00")).timestamp()
        except ValueError:
            pass
    return datetime.now(timezone.utc).timestamp()


def dead_letter(event: CloudEvent) -> tuple[str, dict[str, Any]]:
    """The job id and ``DEAD_LETTER`` data of a dead-lettered event (data dropped if it cannot fit)."""
    attributes = dict(event.get_attributes())
    extensions = {
        k: str(v) for k, v in attributes.items() if k not in _CE_CORE and not k.startswith("knativeerror")
    }
    original: dict[str, Any] = {"id": event["id"], "type": event["type"], "source": event["source"]}
    if attributes.get("subject"):
        original["subject"] = attributes["subject"]
    if extensions:
        original["extensions"] = extensions
    data = event.get_data()
    if isinstance(data, bytes | bytearray):  # not JSON: keep it readable rather than lose it
        data = bytes(data).decode("utf-8", "replace")
    if data is not None and len(json.dumps(data, default=str)) <= MAX_RECORD_BYTES // 2:
        original["data"] = json.loads(json.dumps(data, default=str))
    record: dict[str, Any] = {"event": original}
    code = attributes.get(EXT_ERROR_CODE)
    if code is not None:
        with contextlib.suppress(TypeError, ValueError):  # not a number: keep the rest of the letter
            record["errorCode"] = int(code)
    if attributes.get(EXT_ERROR_DEST):
        record["errorDest"] = str(attributes[EXT_ERROR_DEST])[:1024]
    if attributes.get(EXT_ERROR_DATA):
        record["errorData"] = str(attributes[EXT_ERROR_DATA])[:2048]
    job_id = attributes.get(EXT_JOB)
    return (str(job_id) if job_id else DEAD_LETTER_JOB), record


def dead_letter_key(event: CloudEvent) -> str:
    """``dead-letter <knativeerrordest> <source> <id>``: one letter per failed destination of an event.

    The original event's ``source id`` alone is no key: the journal's keys are global, so the same event
    dead-lettered by two subscribers would be one letter, and the fact that it already committed under
    that key (a step's finish, say) would swallow the letter too. Hashed when too long or not printable.
    """
    parts = (str(event[EXT_ERROR_DEST]), str(event["source"]), str(event["id"]))
    key = "dead-letter " + " ".join(parts)
    if len(key) <= MAX_KEY_CHARS and key.isprintable():
        return key
    digest = hashlib.sha256("\0".join(parts).encode("utf-8", "surrogatepass")).hexdigest()
    return f"dead-letter sha256:{digest}"


class HealthRelay:
    """Turns cluster observations into journal facts and delivers what the journal decides."""

    def __init__(self, journal: JobJournal, outbox: Outbox, *, redelivery_seconds: float) -> None:
        self.journal = journal
        self.outbox = outbox
        self.redelivery_seconds = redelivery_seconds

    def handle(self, event: CloudEvent, caller: Caller) -> None:
        """Record the event's fact (or sweep, for a ping); always answers 202 when it succeeds."""
        key = idempotency_key(event["source"], event["id"])
        kind = event["type"]
        if EXT_ERROR_DEST in event:
            job_id, data = dead_letter(event)
            logs.bind_job(job_id)
            log.warning(
                "dead letter journaled",
                extra={"deadType": kind, "errorCode": data.get("errorCode"), "caller": caller.name},
            )
            self._commit(job_id, "DEAD_LETTER", data, dead_letter_key(event))
        elif kind == STEP_HEARTBEAT:
            from xpipe.events import StepHeartbeat  # noqa: PLC0415 - see above

            beat: StepHeartbeat = _model(StepHeartbeat, event)
            logs.bind_job(beat.job_id)
            self._commit(beat.job_id, "HEARTBEAT", _fact(beat.to_json_dict()), key)
        elif kind == STEP_FINISHED:
            from xpipe.events import StepFinished  # noqa: PLC0415 - see above

            finished: StepFinished = _model(StepFinished, event)
            logs.bind_job(finished.job_id)
            self._commit(finished.job_id, "STEP_FINISHED", _fact(finished.to_json_dict()), key)
        elif kind.startswith(APISERVER_PREFIX):
            health = pod_health(event_data(event), _event_time(event))
            if health is not None:
                self._commit(f"pod/{health['pod']}", "HEALTH", health, key)
        elif kind == PING:
            directives = self.journal.sweep(redelivery_seconds=self.redelivery_seconds)
            report = self.outbox.deliver(directives)
            log.info("swept", extra={"published": len(report.published), "failed": len(report.failed)})
        else:
            raise MalformedEvent(f"health-relay does not handle {kind!r} events")

    def _commit(self, job_id: str, record_type: str, data: dict[str, Any], key: str) -> None:
        committed = self.journal.record(job_id, [{"type": record_type, "data": data}], key=key)
        self.outbox.deliver(committed.directives)
