"""What every XPipe function does around its own work: probes, limits, auth, parsing, logs, errors.

A function module (``functions/<name>/main.py``) builds one ``Endpoint`` at import time — so a broken
configuration, tokens file or template catalog stops the process before it ever reports ready — and
hands each request to ``Endpoint.serve`` with its domain handler. ``serve`` answers the health probes,
refuses what is too large, unauthenticated, forbidden or not a CloudEvent before any domain code runs,
sheds load beyond ``XPIPE_MAX_IN_FLIGHT`` with 429, tags every log line with the CloudEvent id, and
turns whatever the handler raises into a status code through ``xpipe.http.status_for``.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cloudevents.http import CloudEvent
from flask import Request, Response

from vms_adapter.client import JournalClient
from xpipe import config as configuration
from xpipe import logs
from xpipe.auth import HEADER, Caller, Scope, TokenRegistry
from xpipe.backends.base import ExecutionBackend
from xpipe.errors import ConfigurationError, Overloaded, PayloadTooLarge
from xpipe.http import (
    accepted,
    error_response,
    parse_event,
    read_body,
    reply,
    require_cloudevent,
    status_for,
    unbuffered,
)
from xpipe.journal import JobJournal
from xpipe.outbox import Outbox

if TYPE_CHECKING:
    from xpipe.templates import Catalog

log = logging.getLogger("xpipe.endpoint")

LIVENESS_PATH = "/health/liveness"
READINESS_PATH = "/health/readiness"
JOURNAL_CONNECT_TIMEOUT_SECONDS = 2.0
PROBE_TIMEOUT_SECONDS = 0.8  # under the kubelet's default probe time-out of 1 s

# A handler returns the reply event (200) or None (202 Accepted).
Handler = Callable[[CloudEvent, Caller], CloudEvent | None]


@dataclass
class Endpoint:
    """One function's HTTP front: owns its configuration, token registry, journal and outbox."""

    name: str
    scope: Scope
    config: configuration.FunctionConfig
    tokens: TokenRegistry
    journal: JobJournal
    outbox: Outbox

    def __post_init__(self) -> None:
        self._in_flight = threading.BoundedSemaphore(self.config.max_in_flight)
        self._backend: ExecutionBackend | None = None
        self._backend_lock = threading.Lock()

    @classmethod
    def from_env(
        cls, name: str, scope: Scope, *, needs_backend: bool = False, cluster_local: bool = False
    ) -> Endpoint:
        """Build everything from the environment; raises (and so refuses to start) if anything is wrong.

        ``cluster_local`` says the function is reachable only inside the cluster, so it may trust
        deliveries without a token when ``XPIPE_TRUST_CLUSTER_DELIVERIES`` says so; a public function
        (submit) refuses to start with that setting.
        """
        config = configuration.load()
        if config.trust_cluster_deliveries and not cluster_local:
            raise ConfigurationError(
                f"{configuration.TRUST_CLUSTER_DELIVERIES}=true is refused by {name}: it is reachable from "
                "outside the cluster, so every request must carry X-Token-XPipe"
            )
        logs.configure(name, config.log_level)
        tls = _tls_context(config)
        client = JournalClient(
            config.journal_host,
            config.journal_port,
            secret=config.journal_secret,
            tls=tls,
            connect_timeout=min(JOURNAL_CONNECT_TIMEOUT_SECONDS, config.journal_timeout_seconds),
            read_timeout=config.journal_timeout_seconds,
            retry_deadline=config.journal_retry_seconds,
        )
        probe_client = JournalClient(
            config.journal_host,
            config.journal_port,
            secret=config.journal_secret,
            tls=tls,
            connect_timeout=PROBE_TIMEOUT_SECONDS,
            read_timeout=PROBE_TIMEOUT_SECONDS,
            retry_deadline=PROBE_TIMEOUT_SECONDS,  # the budget for connecting; one attempt only
            max_attempts=1,
            pool_size=1,
        )
        journal = JobJournal(client, probe_client)
        if needs_backend:
            check_backend(config)
        endpoint = cls(
            name=name,
            scope=scope,
            config=config,
            tokens=TokenRegistry.load(config.tokens_file),
            journal=journal,
            outbox=Outbox(
                config.sink,
                journal,
                timeout_seconds=config.publish_timeout_seconds,
                overrides=config.ce_overrides,
            ),
        )
        log.info(
            "function configured",
            extra={"journal": f"{config.journal_host}:{config.journal_port}", "sink": config.sink,
                   "backend": config.backend, "tokens": len(endpoint.tokens),
                   "trustClusterDeliveries": config.trust_cluster_deliveries},
        )  # fmt: skip
        return endpoint

    def catalog(self) -> Catalog:
        """The template catalog, validated now (submit calls this at start-up)."""
        from xpipe.templates import Catalog  # noqa: PLC0415 - only submit needs templates

        catalog = Catalog.load(
            self.config.templates_dir, max_revision_timeout_seconds=self.config.max_revision_timeout_seconds
        )
        log.info("template catalog loaded", extra={"templates": catalog.names()})
        return catalog

    def backend(self) -> ExecutionBackend:
        """The execution backend named by ``XPIPE_BACKEND``, built on first use.

        Built lazily so that the HTTP clients it holds (and the kubernetes client's slow import) neither
        lengthen the cold start nor get created before gunicorn forks the serving process.
        """
        with self._backend_lock:
            if self._backend is None:
                self._backend = build_backend(self.config)
            return self._backend

    def serve(self, request: Request, handler: Handler) -> Response:
        """Answer one HTTP request to the function (see the module docstring for the order of checks)."""
        if request.path == LIVENESS_PATH:
            return unbuffered("ok\n", 200, "text/plain")
        if request.path == READINESS_PATH:
            return self._readiness()
        if request.method != "POST":
            return unbuffered("CloudEvents are POSTed\n", 405, "text/plain", {"Allow": "POST"})
        if not self._in_flight.acquire(blocking=False):
            return self._refuse(Overloaded(f"more than {self.config.max_in_flight} requests in flight"), None)
        try:
            with logs.event_context(request.headers.get("ce-id")):
                return self._handle(request, handler)
        finally:
            self._in_flight.release()

    def _handle(self, request: Request, handler: Handler) -> Response:
        started = time.monotonic()
        caller: Caller | None = None
        event: CloudEvent | None = None
        try:
            length = request.content_length
            if length is not None and length > self.config.max_body_bytes:  # refused before auth or reading
                raise PayloadTooLarge(
                    f"body of {length} bytes exceeds the limit of {self.config.max_body_bytes}"
                )
            caller = self.tokens.authorize(
                request.headers.get(HEADER), self.scope, trust_missing=self.config.trust_cluster_deliveries
            )
            require_cloudevent(request)  # a 415 is decided on headers: before reading the body
            event = parse_event(request, read_body(request, self.config.max_body_bytes))
            logs.bind_event(event["id"])  # structured mode: the id was not in a header
            answer = handler(event, caller)
            response = reply(answer) if answer is not None else accepted()
            log.info(
                "event handled",
                extra={"eventType": event["type"], "status": response.status_code, "caller": caller.name,
                       "ms": round((time.monotonic() - started) * 1000, 1)},
            )  # fmt: skip
            return response
        except Exception as error:
            return self._refuse(error, event, caller, started)

    def _refuse(
        self,
        error: Exception,
        event: CloudEvent | None,
        caller: Caller | None = None,
        started: float | None = None,
    ) -> Response:
        status = status_for(error)
        extra = {
            "status": status,
            "eventType": None if event is None else event["type"],
            "caller": None if caller is None else caller.name,
            "reason": f"{type(error).__name__}: {error}",
        }
        if started is not None:
            extra["ms"] = round((time.monotonic() - started) * 1000, 1)
        if status == 500:
            log.error("event failed", extra=extra, exc_info=error)
        elif status >= 500 or status in (409, 429):
            log.warning("event not handled now; the sender retries", extra=extra)
        else:
            log.info("event refused", extra=extra)
        return error_response(error)

    def _readiness(self) -> Response:
        try:
            self.journal.probe()
        except Exception as error:
            log.warning(
                "not ready: journal unreachable", extra={"reason": f"{type(error).__name__}: {error}"}
            )
            return unbuffered("journal unavailable\n", 503, "text/plain")
        return unbuffered("ready\n", 200, "text/plain")


def _tls_context(config: configuration.FunctionConfig) -> ssl.SSLContext | None:
    if not config.journal_tls:
        return None
    cafile = None if config.journal_ca_file is None else str(config.journal_ca_file)
    return ssl.create_default_context(cafile=cafile)


def check_backend(config: configuration.FunctionConfig) -> None:
    """Refuse to start when the configured backend lacks a setting it needs (checked without building it)."""
    if config.backend == "local" and config.local_step_host is None:
        raise ConfigurationError(
            "XPIPE_LOCAL_STEP_HOST is not set: the local backend needs the step host's URL"
        )


def build_backend(config: configuration.FunctionConfig) -> ExecutionBackend:
    """The ``local`` or ``knative`` backend, configured from the function's environment."""
    if config.backend == "knative":
        from xpipe.backends.knative import KnativeBackend  # noqa: PLC0415 - keeps cold starts fast

        return KnativeBackend(
            namespace=config.steps_namespace,
            broker=config.broker,
            kubeconfig=config.kubeconfig,
        )
    from xpipe.backends.local import LocalBackend  # noqa: PLC0415

    if config.local_step_host is None:
        raise ConfigurationError(
            "XPIPE_LOCAL_STEP_HOST is not set: the local backend needs the step host's URL"
        )
    return LocalBackend(config.local_step_host, config.steps_namespace)
