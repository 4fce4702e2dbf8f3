"""Submitting a pipeline: from ``com.xpipe.pipeline.submit`` to a durable job and its first step run.

Order matters for "bad input changes nothing": the event and its params are validated completely before
anything happens; the step services are ensured next (idempotent, cached by template digest, so a job is
never registered whose steps cannot be deployed); only then is ``JOB_REGISTERED`` committed — the single
point after which the job exists. Its directives (dispatch step 1) go to the outbox, and the reply tells
the caller the job id. A redelivered submit carries the same idempotency key and gets the same job id;
a *different* submission that reuses an event's source and id is refused (422), never answered with the
job the first one registered.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cloudevents.http import CloudEvent
from pydantic_core import CoreConfig, SchemaValidator, ValidationError
from pydantic_core import core_schema as cs

from xpipe import logs
from xpipe.auth import Caller
from xpipe.backends.base import ExecutionBackend, StepServiceSpec
from xpipe.errors import InvalidParams, MalformedEvent, UnprocessableRequest
from xpipe.event_names import EXT_JOB, JOB_REGISTERED, PIPELINE_SUBMIT
from xpipe.http import event_data
from xpipe.journal import JobJournal, idempotency_key
from xpipe.outbox import Outbox
from xpipe.templates import Catalog, resolve

REPLY_SOURCE = "/xpipe/submit"
REGISTERED_STATE = "PENDING"
# How long a step service ensured by this process is trusted before it is ensured again. Ensuring is
# idempotent but costs a round trip per service (an API server, or the local step host); re-ensuring
# periodically heals a backend that lost it (a step host restarted without its state file).
ENSURED_TRUST_SECONDS = 60.0
# What makes two submits the same submission: a redelivery must match the registered job on all of them.
SUBMISSION_FIELDS = ("template", "params", "requestedBy")


class ReusedEventId(UnprocessableRequest):
    """A submit whose ``source`` and ``id`` registered a job already, but asking for something else."""


@dataclass(frozen=True)
class SubmitData:
    """The data of ``com.xpipe.pipeline.submit``: the payload ``xpipe.events.PipelineSubmit`` defines."""

    template: str
    params: dict[str, str | int | float | bool]
    requested_by: str


# ``xpipe.events.PipelineSubmit`` (the contract) declared as its pydantic-core schema: the same checks,
# by the same engine, with the same messages, but without importing pydantic, which would add about
# 45 ms of CPU to submit's first request (the template catalog no longer loads it at start-up).
# tests/functions/test_submit_payload.py holds the two to the same schema.
SUBMIT_DATA_SCHEMA = cs.typed_dict_schema(
    {
        "template": cs.typed_dict_field(
            cs.str_schema(min_length=1, max_length=128), validation_alias="template"
        ),
        "params": cs.typed_dict_field(
            cs.with_default_schema(
                cs.dict_schema(
                    cs.str_schema(),
                    cs.union_schema([cs.str_schema(), cs.int_schema(), cs.float_schema(), cs.bool_schema()]),
                ),
                default_factory=dict,
                default_factory_takes_data=False,
            ),
            validation_alias="params",
            required=False,
        ),
        "requested_by": cs.typed_dict_field(
            cs.str_schema(min_length=1, max_length=256), validation_alias="requestedBy"
        ),
    },
    extra_behavior="forbid",
    config=CoreConfig(extra_fields_behavior="forbid", validate_by_alias=True, validate_by_name=True),
)
_SUBMIT_DATA = SchemaValidator(SUBMIT_DATA_SCHEMA)


def parse_submit(event: CloudEvent) -> SubmitData:
    """The submit payload; a wrong type or shape is a 400, a param value of no JSON scalar type a 422."""
    if event["type"] != PIPELINE_SUBMIT:
        raise MalformedEvent(f"submit accepts {PIPELINE_SUBMIT} events, not {event['type']!r}")
    try:
        return SubmitData(**_SUBMIT_DATA.validate_python(event_data(event)))
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = [str(part) for part in first["loc"]]
        if len(loc) >= 2 and loc[0] == "params":
            raise InvalidParams(loc[1], "must be a string, number or boolean") from None
        raise MalformedEvent(f"data.{'.'.join(loc)}: {first['msg']}") from None


class Submission:
    """Validates, ensures step services, registers the job and dispatches its first step."""

    def __init__(
        self,
        catalog: Catalog,
        backend: Callable[[], ExecutionBackend],
        journal: JobJournal,
        outbox: Outbox,
        *,
        image: str,
    ) -> None:
        self.catalog = catalog
        self.backend = backend
        self.journal = journal
        self.outbox = outbox
        self.image = image
        self._ensured: dict[tuple[str, str], float] = {}
        self._ensured_lock = threading.Lock()

    def _ensure(self, services: tuple[StepServiceSpec, ...]) -> None:
        """Ensure every step service, skipping those this process ensured recently at the same digest."""
        now = time.monotonic()
        for service in services:
            key = (service.name, service.template_digest)
            with self._ensured_lock:
                fresh = now - self._ensured.get(key, -ENSURED_TRUST_SECONDS) < ENSURED_TRUST_SECONDS
            if not fresh:
                self.backend().ensure_step_service(service)
                with self._ensured_lock:
                    self._ensured[key] = now

    def _check_same_submission(self, event: CloudEvent, plan: dict[str, Any], job_id: str) -> None:
        """Refuse a duplicate key whose content differs from its registered job (read on duplicates only)."""
        view = self.journal.job(job_id)
        differing = [name for name in SUBMISSION_FIELDS if view.get(name) != plan[name]]
        if differing:
            raise ReusedEventId(
                f"event id {event['id']!r} from source {event['source']!r} was already used for a different "
                f"submission (job {job_id}; differs in {', '.join(differing)}): send a new event id"
            )

    def handle(self, event: CloudEvent, caller: Caller) -> CloudEvent:  # noqa: ARG002 - the endpoint logs it
        """Register the job the event asks for; the reply is ``com.xpipe.job.registered``."""
        submit = parse_submit(event)
        template = self.catalog.get(submit.template)
        job = resolve(template, submit.params, requested_by=submit.requested_by, default_image=self.image)
        self._ensure(job.services)
        committed = self.journal.register(job.plan, key=idempotency_key(event["source"], event["id"]))
        logs.bind_job(committed.job_id)
        # On the request's "event handled" line (one line per request: see xpipe.logs).
        logs.bind_fields(template=template.name, duplicate=committed.duplicate, seq=committed.seq)
        if committed.duplicate:
            self._check_same_submission(event, job.plan, committed.job_id)
        self.outbox.deliver(committed.directives)
        # The data of xpipe.events.JobRegistered (written out: see SUBMIT_DATA_SCHEMA).
        registered = {
            "jobId": committed.job_id,
            "state": committed.state or REGISTERED_STATE,
            "journalSeq": committed.seq,
        }
        return CloudEvent(
            {
                "type": JOB_REGISTERED,
                "source": REPLY_SOURCE,
                # Stable per job, so a redelivered submit's reply is deduplicated downstream.
                "id": f"{committed.job_id}/registered",
                "subject": committed.job_id,
                "datacontenttype": "application/json",
                EXT_JOB: committed.job_id,
            },
            registered,
        )
