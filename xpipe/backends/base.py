"""The execution backend interface: what the functions ask of the platform that runs step services.

The contract is written once, here, and implemented twice: `knative.KnativeBackend` (a Kubernetes API
server with Knative Serving and Eventing) and `local.LocalBackend` (the local step host, processes on
one machine). The functions only ever see `ExecutionBackend`, `StepServiceSpec`, the result types and
the `BackendError` hierarchy below, so they run unchanged against either.

Every method is synchronous (the functions are Flask apps served by gunicorn threads) and safe to call
from several threads at once. Backends take explicit constructor parameters and never read environment
variables; the functions' configuration module builds them from:

    XPIPE_BACKEND           local | knative
    XPIPE_STEPS_NAMESPACE   namespace of the step Services and their Triggers (default xpipe-steps)
    XPIPE_BROKER            broker the Triggers subscribe to (default "default")
    XPIPE_STEP_IMAGE        default image of step services built around the step runtime
    XPIPE_LOCAL_STEP_HOST   URL of the local step host (local backend)
    KUBECONFIG              a kubeconfig path; unset means in-cluster configuration (knative backend)
"""

from __future__ import annotations

import hashlib
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any

__all__ = [
    "DEFAULT_HEARTBEAT_SECONDS",
    "MAX_SERVICE_NAME_LENGTH",
    "BackendError",
    "BackendUnavailable",
    "Conflict",
    "CredentialsRefused",
    "ExecutionBackend",
    "InvalidSpec",
    "NotFound",
    "PermissionDenied",
    "StepServiceSpec",
    "TrafficState",
    "step_service_name",
]

# Knative names revisions `<service>-00001` and derives further names from them; 49 characters keeps
# every derived name within the 63-character DNS label limit.
MAX_SERVICE_NAME_LENGTH = 49
DEFAULT_HEARTBEAT_SECONDS = 10.0
_DNS_1035_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


# --- errors ------------------------------------------------------------------------------------------


class BackendError(Exception):
    """Base of every backend failure; `retryable` says whether the same call may succeed later."""

    retryable = False


class BackendUnavailable(BackendError):
    """The platform did not answer, or answered 429/5xx after the backend's own bounded retries."""

    retryable = True


class Conflict(BackendError):
    """A concurrent writer kept winning (409) after the backend's own bounded retries."""

    retryable = True


class PermissionDenied(BackendError):
    """The platform refused an operation (403); names the verb and resource the account lacks."""

    def __init__(self, verb: str, resource: str, namespace: str | None = None, detail: str = "") -> None:
        where = f" in namespace {namespace!r}" if namespace else ""
        message = f"permission denied: cannot {verb} {resource}{where}"
        super().__init__(f"{message} ({detail})" if detail else message)
        self.verb = verb
        self.resource = resource
        self.namespace = namespace


class CredentialsRefused(BackendError):
    """The platform did not accept the backend's credentials (401): an expired or revoked service
    account token, a kubeconfig for another cluster. Nothing the account may or may not do is known yet,
    so this is not PermissionDenied; an operator must fix the credentials."""

    def __init__(self, verb: str, resource: str, detail: str = "") -> None:
        message = f"the API server refused the credentials (401) for {verb} {resource}"
        super().__init__(f"{message}: {detail}" if detail else message)
        self.verb = verb
        self.resource = resource


class NotFound(BackendError):
    """The named service or revision does not exist (or no longer exists)."""


class InvalidSpec(BackendError):
    """The platform or the backend rejected the request as invalid; retrying will not help."""


# --- values ------------------------------------------------------------------------------------------


def step_service_name(template: str, step: str) -> str:
    """A stable DNS-1035 name for a template step's service, at most MAX_SERVICE_NAME_LENGTH characters.

    Readable when it fits (`<template>-<step>`, lower-cased, other characters as `-`); otherwise cut and
    suffixed with a short hash of the full pair, so two long names never collide.
    """
    raw = f"{template}-{step}".lower()
    cleaned = re.sub(r"[^a-z0-9-]+", "-", raw)
    cleaned = re.sub(r"-{2,}", "-", cleaned).strip("-")
    if not cleaned or not cleaned[0].isalpha():
        cleaned = f"s-{cleaned}".rstrip("-")
    if len(cleaned) <= MAX_SERVICE_NAME_LENGTH and cleaned == raw:
        return cleaned
    digest = hashlib.sha256(f"{template}\0{step}".encode()).hexdigest()[:8]
    head = cleaned[: MAX_SERVICE_NAME_LENGTH - len(digest) - 1].rstrip("-")
    return f"{head}-{digest}"


@dataclass(frozen=True)
class StepServiceSpec:
    """One template step's service: shared by every job of the template, so argv/env stay unrendered.

    `argv` elements and `env` values may hold `{{ params.NAME }}` placeholders (see `xpipe.params`); the
    step runtime renders them for each run. `template_digest` identifies the template version: applying
    the same name with the same digest again is a no-op.
    """

    name: str
    template: str
    step: str
    image: str
    argv: tuple[str, ...]
    env: Mapping[str, str]
    timeout_seconds: int
    template_digest: str
    heartbeat_seconds: float = DEFAULT_HEARTBEAT_SECONDS
    labels: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not _DNS_1035_LABEL.fullmatch(self.name) or len(self.name) > MAX_SERVICE_NAME_LENGTH:
            raise InvalidSpec(
                f"step service name {self.name!r} must be a DNS-1035 label of at most "
                f"{MAX_SERVICE_NAME_LENGTH} characters (lower-case letters, digits and '-', "
                "starting with a letter)"
            )
        if not self.argv or not all(isinstance(element, str) for element in self.argv):
            raise InvalidSpec(f"step service {self.name!r}: argv must be a non-empty sequence of strings")
        for env_name, value in self.env.items():
            if not _ENV_NAME.fullmatch(env_name) or not isinstance(value, str):
                raise InvalidSpec(f"step service {self.name!r}: invalid env entry {env_name!r}")
        if self.timeout_seconds <= 0:
            raise InvalidSpec(f"step service {self.name!r}: timeout_seconds must be positive")
        if self.heartbeat_seconds <= 0:
            raise InvalidSpec(f"step service {self.name!r}: heartbeat_seconds must be positive")
        if not self.template_digest:
            raise InvalidSpec(f"step service {self.name!r}: template_digest must not be empty")
        # Freeze what a caller might still hold a reference to.
        object.__setattr__(self, "argv", tuple(self.argv))
        object.__setattr__(self, "env", MappingProxyType(dict(self.env)))
        object.__setattr__(self, "labels", MappingProxyType(dict(self.labels)))

    def to_json_dict(self) -> dict[str, Any]:
        """JSON-ready form (the local step host's admin API carries specs this way)."""
        return {
            "name": self.name,
            "template": self.template,
            "step": self.step,
            "image": self.image,
            "argv": list(self.argv),
            "env": dict(self.env),
            "timeoutSeconds": self.timeout_seconds,
            "templateDigest": self.template_digest,
            "heartbeatSeconds": self.heartbeat_seconds,
            "labels": dict(self.labels),
        }

    @classmethod
    def from_json_dict(cls, data: Mapping[str, Any]) -> StepServiceSpec:
        """Inverse of `to_json_dict`; raises InvalidSpec naming the missing or mistyped field."""
        if not isinstance(data.get("argv"), list | tuple):
            raise InvalidSpec("step service spec: argv must be a list of strings")
        if not isinstance(data.get("env") or {}, Mapping):
            raise InvalidSpec("step service spec: env must be an object of strings")
        try:
            return cls(
                name=str(data["name"]),
                template=str(data["template"]),
                step=str(data["step"]),
                image=str(data.get("image", "")),
                argv=tuple(data["argv"]),
                env=dict(data.get("env") or {}),
                timeout_seconds=int(data["timeoutSeconds"]),
                template_digest=str(data["templateDigest"]),
                heartbeat_seconds=float(data.get("heartbeatSeconds", DEFAULT_HEARTBEAT_SECONDS)),
                labels=dict(data.get("labels") or {}),
            )
        except KeyError as missing:
            raise InvalidSpec(f"step service spec: missing field {missing.args[0]!r}") from None
        except (TypeError, ValueError) as bad:
            raise InvalidSpec(f"step service spec: {bad}") from None


@dataclass(frozen=True)
class TrafficState:
    """Where a service's traffic goes after a revert or restore.

    `pinned_revision` is the revision that now takes 100 % of the traffic, or None when traffic follows
    the latest ready revision again. `latest_ready_revision` is the service's newest ready revision.
    `pinned_at` is the journal time of the newest revert that holds the pin (None when not pinned): a
    restore requested before it leaves the pin alone (see `ExecutionBackend.restore_traffic`).
    """

    namespace: str
    service: str
    pinned_revision: str | None
    latest_ready_revision: str | None
    pinned_at: float | None = None

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "namespace": self.namespace,
            "service": self.service,
            "pinnedRevision": self.pinned_revision,
            "latestReadyRevision": self.latest_ready_revision,
            "pinnedAt": self.pinned_at,
        }


# --- the interface -----------------------------------------------------------------------------------


class ExecutionBackend(ABC):
    """Runs step services: scale-to-zero services that each wrap one template step's command.

    A step service receives `com.xpipe.step.run` events whose `xpipestep` extension equals its name
    (delivered by a Trigger, or by the local step host's dispatch), runs one attempt per request through
    the step runtime, and replies with `com.xpipe.step.finished`.

    Errors: every method raises only `BackendError` subclasses. `BackendUnavailable` and `Conflict` are
    retryable (the backend has already retried a bounded number of times with jittered backoff);
    `PermissionDenied` names what the account may not do; `NotFound` and `InvalidSpec` are final.
    """

    @property
    @abstractmethod
    def namespace(self) -> str:
        """The namespace step services and their Triggers live in."""

    @abstractmethod
    def ensure_step_service(self, spec: StepServiceSpec) -> bool:
        """Create or update the service and its Trigger so they match `spec`; idempotent.

        Returns True when something was applied, False when the same name and `template_digest` had
        already been applied (then nothing is sent). Safe to call for every submit of a template.
        """

    @abstractmethod
    def remove_step_service(self, name: str) -> None:
        """Delete the service and its Trigger; removing a service that does not exist is not an error."""

    @abstractmethod
    def revert_traffic(self, namespace: str, service: str, *, at: float) -> TrafficState:
        """Pin 100 % of `service`'s traffic to the revision that served before its newest deploy.

        The target is the newest ready revision older than the newest revision (ready or not: a deploy
        whose revision never became ready is still the one undone). An already pinned service keeps its
        pin (a deploy made while pinned never served). The target depends only on the revisions, so a
        repeated or concurrent revert converges on the same pin: it never walks further back. Raises
        NotFound when the service does not exist or has no earlier revision to revert to.

        `at` is the journal's clock when the revert is made; the pin remembers the newest such time
        (`TrafficState.pinned_at`), which `restore_traffic` compares with its own journal time.
        """

    @abstractmethod
    def restore_traffic(self, namespace: str, service: str, *, requested_at: float) -> TrafficState:
        """Send traffic to the latest ready revision again (undoes `revert_traffic`); idempotent.

        `requested_at` is the journal time at which the succeeded job asked for the restore. A pin made
        after it (`pinned_at > requested_at`: another job failed and reverted since) is kept, so a late
        restore never undoes a newer revert; the returned state then still names the pinned revision.
        """

    @abstractmethod
    def collect_diagnostics(
        self, job_id: str, services: Sequence[str], since: datetime | None = None
    ) -> dict[str, Any]:
        """A JSON-ready report on `services` for a job's diagnostic record.

        Keys: `jobId`, `backend`, `collectedAt` (RFC 3339), `services` (one entry per service: its
        pods/processes with phase, container states, restart counts and a log tail, plus recent
        events since `since`), and `errors` (what could not be collected and why: diagnostics are
        best effort and never fail because one part is unavailable).
        """

    @abstractmethod
    def stop_attempt(self, service: str, pod: str | None, job_id: str, step: str, attempt: int) -> bool:
        """Stop the instance of step service `service` that is running attempt `attempt` of `step` of
        job `job_id` (the journal cancelled it: a `com.xpipe.step.cancel` directive).

        The step Service cannot be asked itself: it runs one request per instance (containerConcurrency
        1), so a cancel sent to it would queue behind the busy instance or start a new one. The backend
        stops the instance from outside instead: the step runtime, on SIGTERM, kills its command (SIGKILL
        after its grace period) and answers the held `step.run` with `outcome: cancelled`, which the
        journal accepts as the late fact of an attempt it already ended.

        `pod` is the instance the attempt's heart-beats named (the journal's view of the attempt); it
        is None when the attempt never sent one. Idempotent: stopping an attempt that already ended, or
        whose instance is gone, is a no-op. Returns True when an instance was told to stop, False when
        there was nothing (left) to stop. The wait is bounded by the backend's grace period.
        """

    def close(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Release connections; the backend must not be used afterwards."""
