"""Delivering the journal's directives: publish each to ``K_SINK`` as a CloudEvent, then acknowledge it.

This is the cluster half of the transactional outbox (ARCHITECTURE §2.3, JOBS.md §10). The journal
writes a decision and its directives in one transaction and hands the directives back in the commit
reply (or in a ``SWEEP``); a function publishes each directive's ``event`` verbatim, with the directive
id as the CloudEvent id so receivers deduplicate, and then ``ACK``s the ids that the sink accepted.

Acknowledgements are batched on a background thread: one ``ACK`` (one journal transaction) covers every
directive published meanwhile by all of the process's request threads, and the request does not wait
for it. Nothing is lost by that: a directive refused by the sink, or published but never acknowledged
(the process died first, or the ``ACK`` failed), stays unacknowledged, and the next sweep hands it out
again; receivers deduplicate on the stable id. Delivery is at least once, and a publish failure is
logged rather than failing the request whose facts are already durable.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from cloudevents.http import CloudEvent

from xpipe.sink import BadSinkResponse, SinkConnections

log = logging.getLogger("xpipe.outbox")

# Attributes a directive's event may set besides `data` and its extensions.
_EVENT_ATTRIBUTES = ("type", "source", "subject", "time", "dataschema")
MAX_ACK_IDS = 1000  # the journal's limit per ACK
ACK_FLUSH_SECONDS = 2.0  # how long a stopping process waits for its last acknowledgements
# How long the first queued id waits for others to join its ACK. Each ACK is a journal transaction: at
# 5 ms a loaded submit sent one per ~6 requests, at 50 ms one per ~30, and the wait costs nothing but
# a later acknowledgement (redelivery waits XPIPE_REDELIVERY_SECONDS, 60 s by default).
ACK_BATCH_WINDOW_SECONDS = 0.05
ACK_BATCH_IDS = 64  # ...unless this many are already queued


class Acknowledger(Protocol):
    """What the outbox needs of the journal: marking directives delivered."""

    def acknowledge(self, ids: Sequence[str]) -> None: ...


class PublishFailed(Exception):
    """The sink did not accept an event (network error or a non-2xx answer)."""


@dataclass
class DeliveryReport:
    """What happened to a batch of directives (for logs and tests)."""

    published: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


def directive_event(directive: Mapping[str, Any], overrides: Mapping[str, str]) -> CloudEvent:
    """The CloudEvent of a directive: its ``event`` verbatim, with the directive id as the event id.

    ``K_CE_OVERRIDES`` extensions are added, but never replace what the journal set: routing depends on
    ``xpipejob``/``xpipestep``, and receivers deduplicate on ``source`` + ``id``.
    """
    spec = directive["event"]
    attributes: dict[str, Any] = dict(overrides)
    attributes.update({"specversion": "1.0", "datacontenttype": "application/json"})
    attributes.update(spec.get("extensions") or {})
    for name in _EVENT_ATTRIBUTES:
        if spec.get(name) is not None:
            attributes[name] = spec[name]
    attributes["id"] = directive["id"]
    return CloudEvent(attributes, spec.get("data"))


def binary_message(event: CloudEvent) -> tuple[dict[str, str], bytes]:
    """``event`` in HTTP binary mode: the headers and body ``cloudevents.conversion.to_binary`` gives.

    Written out because the SDK's conversion (an intermediate event object, attribute by attribute)
    cost about as much CPU as the rest of a publish; every function request encodes one or two events.
    Same output: ``content-type`` from ``datacontenttype``, ``ce-<name>`` for every other attribute
    that is set, and the data as JSON (bytes as they are, no data as an empty body).
    """
    headers: dict[str, str] = {}
    for name, value in event.get_attributes().items():
        if value is None:
            continue
        if name == "datacontenttype":
            headers["content-type"] = str(value)
        else:
            headers["ce-" + name] = str(value)
    data = event.get_data()
    if data is None:
        return headers, b""
    if isinstance(data, bytes):
        return headers, data
    return headers, json.dumps(data).encode()


class AckBatcher:
    """Acknowledges directive ids in batches from one background thread (started on first use).

    The thread is started lazily, and again if the process was forked (gunicorn loads the function in
    its arbiter and forks the worker), so that it always runs in the process that serves requests.
    """

    def __init__(self, journal: Acknowledger) -> None:
        self._journal = journal
        self._pending: list[str] = []
        self._in_flight = 0
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None
        self._pid = 0
        self.acknowledged = 0
        atexit.register(self.flush, ACK_FLUSH_SECONDS)

    def add(self, ids: Sequence[str]) -> None:
        """Queue ids for the next ``ACK``; returns at once."""
        with self._changed:
            # Wake the thread only when that changes what it waits for (the first id of a batch, or a
            # full batch): a wake-up per request cost each request a thread switch.
            wake = not self._pending or len(self._pending) + len(ids) >= ACK_BATCH_IDS
            self._pending.extend(ids)
            if self._thread is None or self._pid != os.getpid() or not self._thread.is_alive():
                self._pid = os.getpid()
                self._thread = threading.Thread(target=self._run, name="xpipe-ack", daemon=True)
                self._thread.start()
            elif wake:
                self._changed.notify_all()

    def flush(self, timeout: float) -> bool:
        """Wait until every queued id has been sent (acknowledged or given up); False on time-out."""
        with self._changed:
            return self._changed.wait_for(lambda: not self._pending and not self._in_flight, timeout)

    def _run(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: bool(self._pending))
                # Like group commit: give concurrent requests a moment to add theirs, so that one ACK
                # (one journal transaction) covers many directives under load.
                self._changed.wait_for(lambda: len(self._pending) >= ACK_BATCH_IDS, ACK_BATCH_WINDOW_SECONDS)
                batch, self._pending = self._pending[:MAX_ACK_IDS], self._pending[MAX_ACK_IDS:]
                self._in_flight = len(batch)
            try:
                self._journal.acknowledge(batch)
                self.acknowledged += len(batch)
            except Exception as exc:  # the facts are durable; an unacknowledged directive is redelivered
                log.warning(
                    "directives published but not acknowledged; the next sweep redelivers them",
                    extra={
                        "directives": batch[:20],
                        "count": len(batch),
                        "reason": f"{type(exc).__name__}: {exc}",
                    },
                )
            finally:
                with self._changed:
                    self._in_flight = 0
                    self._changed.notify_all()


class Outbox:
    """Publishes directives to one sink over keep-alive connections and acknowledges what went out."""

    def __init__(
        self,
        sink: str,
        journal: Acknowledger,
        *,
        timeout_seconds: float,
        overrides: Mapping[str, str] | None = None,
    ) -> None:
        self.sink = sink
        self.acks = AckBatcher(journal)
        self._overrides = dict(overrides or {})
        self._connections = SinkConnections(sink, timeout_seconds)

    def publish(self, event: CloudEvent) -> None:
        """POST one event in binary mode; ``PublishFailed`` unless the sink answers 2xx."""
        headers, body = binary_message(event)
        try:
            status = self._connections.post(headers, body)
        except (OSError, BadSinkResponse) as exc:
            raise PublishFailed(f"{type(exc).__name__} posting to the sink") from None
        except ValueError as exc:  # an attribute that cannot be an HTTP header: this event only
            raise PublishFailed(f"the event cannot be sent in binary mode: {exc}") from None
        if not 200 <= status < 300:
            raise PublishFailed(f"the sink answered {status}")

    def deliver(self, directives: Sequence[Mapping[str, Any]]) -> DeliveryReport:
        """Publish every directive, then queue the accepted ones for acknowledgement."""
        report = DeliveryReport()
        for directive in directives:
            event = directive_event(directive, self._overrides)
            try:
                self.publish(event)
            except PublishFailed as exc:
                report.failed.append(directive["id"])
                log.warning(
                    "directive not published; the next sweep redelivers it",
                    extra={"directive": directive["id"], "eventType": event["type"], "reason": str(exc)},
                )
                continue
            report.published.append(directive["id"])
        if report.published:
            self.acks.add(report.published)
        return report

    def close(self) -> None:
        self.acks.flush(ACK_FLUSH_SECONDS)
        self._connections.close()
