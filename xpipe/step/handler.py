"""HTTP/1.1 plumbing shared by the step runtime's and the local step host's standard-library servers."""

from __future__ import annotations

import json
import logging
import socket
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import Any

from cloudevents.http import CloudEvent

from xpipe.cloudevent_reader import read_cloudevent
from xpipe.errors import MalformedEvent
from xpipe.events import STEP_RUN

log = logging.getLogger("xpipe.step.http")


def is_cloudevent_request(headers: Any) -> bool:
    """Binary mode (a `ce-specversion` header) or structured mode (`application/cloudevents+json`)."""
    if headers.get("ce-specversion"):
        return True
    content_type = (headers.get("content-type") or "").split(";")[0].strip().lower()
    return content_type == "application/cloudevents+json"


class RequestHandler(BaseHTTPRequestHandler):
    """Keep-alive, replies sent without Nagle's delay, and the access log at debug level as JSON."""

    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        # Headers and body leave in separate writes; without TCP_NODELAY, Nagle's algorithm and the
        # client's delayed ACK hold the body back for about 40 ms on every reply.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http", extra={"line": format % args})

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body:
            self.wfile.write(body)

    def _error(self, status: HTTPStatus, message: str, headers: dict[str, str] | None = None) -> None:
        body = json.dumps({"error": status.phrase, "message": message}).encode()
        log.info("request refused", extra={"status": int(status), "reason": message[:300]})
        self._send(int(status), body, {"Content-Type": "application/json", **(headers or {})})

    def _step_run(self, body: bytes) -> CloudEvent | None:
        """The request's `com.xpipe.step.run` CloudEvent, or None once a final 415 or 400 was sent."""
        if not is_cloudevent_request(self.headers):
            self._error(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "not a CloudEvent (binary or structured mode)")
            return None
        try:
            event = read_cloudevent(dict(self.headers.items()), body)
        except MalformedEvent as error:
            self._error(HTTPStatus.BAD_REQUEST, str(error))
            return None
        if event["type"] != STEP_RUN:
            self._error(
                HTTPStatus.BAD_REQUEST, f"unexpected event type {event['type']!r}; expected {STEP_RUN}"
            )
            return None
        return event
