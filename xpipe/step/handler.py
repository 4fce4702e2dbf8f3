"""HTTP/1.1 plumbing shared by the step runtime's and the local step host's standard-library servers."""

from __future__ import annotations

import logging
import socket
from http.server import BaseHTTPRequestHandler
from typing import Any

log = logging.getLogger("xpipe.step.http")


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
