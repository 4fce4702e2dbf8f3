"""The CloudEvents XPipe sends and receives: type names, extension attributes and payload models.

Payloads are strict pydantic models with camelCase JSON keys, so a Magento developer reads the same
names in the docs, on the wire and in the journal. Unknown keys are refused: a typo in a field name is
a 400, not a silently ignored parameter.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

# The names (event types, extension attributes) live in the stdlib-only xpipe.event_names; they are
# re-exported here so that `from xpipe.events import ...` keeps giving every name of the contract.
from xpipe.event_names import (
    APISERVER_PREFIX,
    EXT_ERROR_CODE,
    EXT_ERROR_DATA,
    EXT_ERROR_DEST,
    EXT_JOB,
    EXT_STEP,
    JOB_DIAGNOSTIC_REQUESTED,
    JOB_FINISHED,
    JOB_REGISTERED,
    JOB_ROLLBACK_REQUESTED,
    PING,
    PIPELINE_SUBMIT,
    STEP_CANCEL,
    STEP_FINISHED,
    STEP_HEARTBEAT,
    STEP_RUN,
)

__all__ = [
    "APISERVER_PREFIX",
    "EXT_ERROR_CODE",
    "EXT_ERROR_DATA",
    "EXT_ERROR_DEST",
    "EXT_JOB",
    "EXT_STEP",
    "JOB_DIAGNOSTIC_REQUESTED",
    "JOB_FINISHED",
    "JOB_REGISTERED",
    "JOB_ROLLBACK_REQUESTED",
    "PING",
    "PIPELINE_SUBMIT",
    "STEP_CANCEL",
    "STEP_FINISHED",
    "STEP_HEARTBEAT",
    "STEP_RUN",
    "SUMMARY_MAX_BYTES",
    "EventData",
    "JobDiagnosticRequested",
    "JobFinished",
    "JobRegistered",
    "JobRollbackRequested",
    "ParamValue",
    "PipelineSubmit",
    "StepCancel",
    "StepFinished",
    "StepHeartbeat",
    "StepOutcome",
    "StepRun",
]

ParamValue = str | int | float | bool
StepOutcome = Literal["succeeded", "failed", "cancelled", "timed-out"]

# The last bytes of a step's output kept in `step.finished` (enough for a failing test's tail).
SUMMARY_MAX_BYTES = 4096


class EventData(BaseModel):
    """Base for payloads: camelCase on the wire, snake_case in Python, unknown keys refused."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        # Validators are built on first use, not at import: a function only ever validates the few
        # event types it receives, and its cold start stays short.
        defer_build=True,
    )

    def to_json_dict(self) -> dict[str, Any]:
        """The payload as it goes on the wire (camelCase keys, JSON types)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class PipelineSubmit(EventData):
    """`com.xpipe.pipeline.submit`: run a template with these parameters."""

    template: str = Field(min_length=1, max_length=128)
    params: dict[str, ParamValue] = Field(default_factory=dict)
    requested_by: str = Field(min_length=1, max_length=256)


class JobRegistered(EventData):
    """`com.xpipe.job.registered`: submit's reply once the job is durably in the journal."""

    job_id: str
    state: str
    journal_seq: int


class StepRun(EventData):
    """`com.xpipe.step.run`: run one attempt of one step; params become the command's environment."""

    job_id: str
    step: str
    attempt: int = Field(ge=1)
    params: dict[str, str] = Field(default_factory=dict)
    deadline: datetime | None = None


class StepHeartbeat(EventData):
    """`com.xpipe.step.heartbeat`: the attempt is alive on this pod (pods are reused across jobs)."""

    job_id: str
    step: str
    attempt: int = Field(ge=1)
    pod: str
    progress: float | None = Field(default=None, ge=0.0, le=1.0)
    details: dict[str, Any] | None = None


class StepFinished(EventData):
    """`com.xpipe.step.finished`: the step runtime's reply when the command has ended."""

    job_id: str
    step: str
    attempt: int = Field(ge=1)
    outcome: StepOutcome
    exit_code: int | None = None
    duration_seconds: float | None = Field(default=None, ge=0.0)
    summary: str = Field(default="", max_length=SUMMARY_MAX_BYTES)
    pod: str | None = None


class StepCancel(EventData):
    """`com.xpipe.step.cancel`: the job was cancelled while this attempt may be running; stop it.

    Routed to the rollback function, not to the step Service: a busy step pod (containerConcurrency 1)
    would never receive it. `pod` is the pod the attempt's heart-beats named, when there was one.
    """

    job_id: str
    step: str
    attempt: int = Field(ge=1)
    reason: str
    pod: str | None = None


class JobRollbackRequested(EventData):
    """`com.xpipe.job.rollback.requested`: the journal decided to roll the job back."""

    job_id: str
    reason: str
    directive: dict[str, Any] | None = None


class JobDiagnosticRequested(EventData):
    """`com.xpipe.job.diagnostic.requested`: the journal wants a diagnostic report for the job."""

    job_id: str
    reason: str
    directive: dict[str, Any] | None = None


class JobFinished(EventData):
    """`com.xpipe.job.finished`: the job reached a terminal state (for webhooks and Magento)."""

    job_id: str
    outcome: str
