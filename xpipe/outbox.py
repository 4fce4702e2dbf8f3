"""Delivering the journal's directives: publish each to ``K_SINK`` as a CloudEvent, then acknowledge it.

This is the cluster half of the transactional outbox (ARCHITECTURE §2.3, JOBS.md §10). The journal
writes a decision and its directives in one transaction and hands the directives back in the commit
reply (or in a ``SWEEP``); a function publishes each directive's ``event`` verbatim, with the directive
id as the CloudEvent id so receivers deduplicate, and then ``ACK``s the ids that the sink accepted.

A directive the sink refused, or one published but not acknowledged (the function died in between),
stays unacknowledged: the next sweep hands it out again. Delivery is therefore at least once, never
lost, and a publish failure is logged rather than failing the request whose facts are already durable.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx
from cloudevents.conversion import to_binary
from cloudevents.http import CloudEvent

log = logging.getLogger("xpipe.outbox")

# Attributes a directive's event may set besides `data` and its extensions.
_EVENT_ATTRIBUTES = ("type", "source", "subject", "time", "dataschema")


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
    acknowledged: bool = False


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


class Outbox:
    """Publishes directives to one sink over a pooled HTTP client and acknowledges what went out."""

    def __init__(
        self, sink: str, *, timeout_seconds: float, overrides: Mapping[str, str] | None = None
    ) -> None:
        self.sink = sink
        self._overrides = dict(overrides or {})
        self._http = httpx.Client(timeout=timeout_seconds, follow_redirects=False)

    def publish(self, event: CloudEvent) -> None:
        """POST one event in binary mode; ``PublishFailed`` unless the sink answers 2xx."""
        headers, body = to_binary(event)
        try:
            response = self._http.post(self.sink, headers=headers, content=body)
        except httpx.HTTPError as exc:
            raise PublishFailed(f"{type(exc).__name__} posting to the sink") from None
        if not response.is_success:
            raise PublishFailed(f"the sink answered {response.status_code}")

    def deliver(self, directives: Sequence[Mapping[str, Any]], journal: Acknowledger) -> DeliveryReport:
        """Publish every directive, then acknowledge those the sink accepted (one ``ACK`` for all)."""
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
            try:
                journal.acknowledge(report.published)
                report.acknowledged = True
            except Exception as exc:  # the facts are durable; an unacknowledged directive is redelivered
                log.warning(
                    "directives published but not acknowledged; receivers deduplicate the redelivery",
                    extra={"directives": report.published, "reason": f"{type(exc).__name__}: {exc}"},
                )
        return report

    def close(self) -> None:
        self._http.close()
