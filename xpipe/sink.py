"""Posting CloudEvents to ``K_SINK`` (the broker) over keep-alive HTTP/1.1 connections, one per thread.

``http.client`` from the standard library does the HTTP. A hand-written client measured about 100 us
less CPU per publish (``http.client`` adds headers one ``putheader`` at a time and parses the answer's
headers through the ``email`` package), but the publish is one POST per submitted job or step event,
and keeping an HTTP parser of our own correct (framing, interim answers, header injection) is not worth
that; ``h11`` measured about the same as ``http.client``.

A header name that is not an HTTP token, or a value with a line break or NUL, raises ``ValueError``
before anything is sent (``http.client``'s own check: no header injection).
"""

from __future__ import annotations

import http.client
import ssl
import threading
from collections.abc import Mapping
from urllib.parse import urlsplit


class BadSinkResponse(Exception):
    """The sink's answer is not HTTP/1.x as ``http.client`` reads it (the connection is then dropped)."""


class SinkConnections:
    """Keep-alive HTTP connections to the sink, one per request thread.

    A connection the sink closed while idle fails on reuse; the event is then sent once more on a fresh
    connection, which is safe because receivers deduplicate on the event id.
    """

    def __init__(self, sink: str, timeout_seconds: float) -> None:
        parts = urlsplit(sink)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"sink {sink!r} is not an http(s) URL")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port
        self._path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._timeout = timeout_seconds
        self._local = threading.local()
        self._context: ssl.SSLContext | None = None

    def _connection(self) -> http.client.HTTPConnection:
        connection: http.client.HTTPConnection | None = getattr(self._local, "connection", None)
        if connection is None:
            if self._https:
                if self._context is None:
                    self._context = ssl.create_default_context()
                connection = http.client.HTTPSConnection(
                    self._host, self._port, timeout=self._timeout, context=self._context
                )
            else:
                connection = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)
            self._local.connection = connection
        return connection

    def _drop(self) -> None:
        connection = getattr(self._local, "connection", None)
        self._local.connection = None
        if connection is not None:
            connection.close()

    def post(self, headers: Mapping[str, str], body: bytes) -> int:
        """POST ``body``; the sink's status code. ``OSError``/``BadSinkResponse`` when it cannot be reached
        or answers nonsense; ``ValueError`` for a header that cannot be sent."""
        for attempt in (1, 2):
            connection = self._connection()
            reused = connection.sock is not None
            try:
                connection.request("POST", self._path, body=body, headers=dict(headers))
                response = connection.getresponse()
                response.read()
            except ValueError:  # a header that cannot be sent: nothing was
                self._drop()
                raise
            except (OSError, http.client.HTTPException) as exc:
                self._drop()
                if attempt == 1 and reused:
                    continue  # the sink closed the idle connection: try once on a fresh one
                if isinstance(exc, http.client.HTTPException):
                    raise BadSinkResponse(f"{type(exc).__name__} from the sink") from None
                raise
            if response.will_close:
                self._drop()
            return response.status
        raise AssertionError("unreachable")

    def close(self) -> None:
        self._drop()
