"""Posting CloudEvents to ``K_SINK`` (the broker) over keep-alive HTTP/1.1 connections, one per thread.

Every submit and every step event costs one publish, so its CPU counts (submit's throughput target is
measured against a function that does nothing). ``http.client`` spent about 150 us of CPU a publish,
most of it adding headers one ``putheader`` at a time and parsing the answer's headers through the
``email`` package; this client spends about a third of that:

- the request is written as one buffer and sent with one system call, after every header name and
  value has been checked (nothing is sent when one could inject a header or a second framing);
- the answer is read by ``httptools`` (llhttp, the parser of Node.js and uvicorn), which handles the
  framing: sized, chunked with trailers, close-delimited, interim ``1xx`` answers, ``204``. Only what
  the outbox needs comes back to Python: the final status and whether the connection may be kept.

Whatever is wrong, the rule is the same: a status is returned only for the answer to *this* request.
A kept connection with anything unread on it (a stray answer, the sink's close) is not reused, and a
connection is dropped whenever an exchange did not finish cleanly. One deadline bounds the whole
``post``: connecting, the TLS handshake, sending, the answer and the one retry (DNS excepted).
"""

from __future__ import annotations

import re
import select
import socket
import ssl
import threading
import time
from collections.abc import Mapping
from urllib.parse import urlsplit

import httptools

MAX_HEADERS = 100  # as http.client: a sink answering more is broken
MAX_HEAD_BYTES = 64 * 1024  # status line and headers of one answer
_RECV_BYTES = 64 * 1024
# RFC 9110 §5.6.2: a field name is a token.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# RFC 9110 §5.5: a field value holds no control character but tab. A line break would end the header
# early (injection).
_UNSENDABLE_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# A space or control character would break the request line (RFC 3986 asks for percent-encoding).
_UNSENDABLE_URL = re.compile(r"[\x00-\x20\x7f]")
# Headers this client writes itself: a caller's copy would be a second framing (request smuggling).
_OWN_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection"})
# What reusing a connection the sink closed while idle raises: a reset, a broken pipe, or the close
# before any answer (see _at_close). A time-out or a garbled answer is not retried.
_IDLE_CLOSE = (ConnectionError, ssl.SSLEOFError, ssl.SSLZeroReturnError)


class BadSinkResponse(Exception):
    """The sink's answer is not HTTP/1.x or breaks a limit (the connection is then dropped)."""


class _Trailing(Exception):
    """Bytes follow the final answer (the connection is then dropped, the answer stands)."""


class _Answer:
    """The parser's callbacks for one exchange: what the final answer said, and when it has ended.

    Only the callbacks defined here cost a call into Python; the body is skipped inside llhttp.
    """

    __slots__ = (
        "complete",
        "fed",
        "framed",
        "head_bytes",
        "head_seen",
        "head_start",
        "headers",
        "keep_alive",
        "parser",
        "status",
        "trailing",
    )

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.complete = False
        self.keep_alive = False
        self.trailing = False  # bytes after the final answer: the connection is not reused
        self.fed = 0  # bytes received before the chunk being parsed
        self._begin_head()

    def _begin_head(self) -> None:
        # Each answer (an interim one, then the final one) has a head of its own, limited on its own.
        self.framed = False  # Content-Length or chunked: the answer does not end at the close
        self.headers = 0
        self.head_bytes = 0
        self.head_seen = False
        self.head_start = self.fed

    def on_message_begin(self) -> None:
        if self.complete:
            self.trailing = True
            raise _Trailing  # stops the parser: nothing after the final answer is read as part of it
        self._begin_head()

    def on_status(self, reason: bytes) -> None:
        self._count(len(reason))

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers += 1
        if self.headers > MAX_HEADERS:
            raise BadSinkResponse(f"more than {MAX_HEADERS} headers")
        self._count(len(name) + len(value))
        lowered = name.lower()
        # RFC 9112 §6.3: a body is framed by Content-Length or a final chunked coding; otherwise it ends
        # at the close.
        if lowered == b"content-length" or (
            lowered == b"transfer-encoding" and value.rstrip().lower().endswith(b"chunked")
        ):
            self.framed = True

    def _count(self, size: int) -> None:
        self.head_bytes += size
        if self.head_bytes > MAX_HEAD_BYTES:
            raise BadSinkResponse(f"an answer's head exceeds {MAX_HEAD_BYTES} bytes")

    def on_headers_complete(self) -> None:
        self.head_seen = True
        self.status = self.parser.get_status_code()
        if not 100 <= self.status <= 599 or self.parser.get_http_version() not in ("1.0", "1.1"):
            raise BadSinkResponse(
                f"not an HTTP/1.x answer (HTTP/{self.parser.get_http_version()} {self.status})"
            )

    def on_message_complete(self) -> None:
        # An interim answer (100 Continue, 103 Early Hints) is followed by the final one.
        if self.status >= 200 and not self.complete:
            self.complete = True
            self.keep_alive = self.parser.should_keep_alive()


def _request_head(method_line: bytes, fixed: bytes, headers: Mapping[str, str], length: int) -> bytes:
    """The request's head; ``ValueError`` for a header that cannot be sent (then nothing is)."""
    lines = [method_line, fixed]
    for name, value in headers.items():
        if not _TOKEN.fullmatch(name):
            raise ValueError(f"header name {name!r} is not an HTTP token")
        if name.lower() in _OWN_HEADERS:
            raise ValueError(f"header {name!r} is written by the client itself")
        if _UNSENDABLE_VALUE.search(value):
            raise ValueError(f"the value of header {name!r} contains a control character")
        try:
            lines.append(f"{name}: {value}\r\n".encode("latin-1"))
        except UnicodeEncodeError:
            raise ValueError(f"the value of header {name!r} is not latin-1: percent-encode it") from None
    lines.append(b"Content-Length: %d\r\n\r\n" % length)
    return b"".join(lines)


def _has_unread(sock: socket.socket) -> bool:
    """Whether a kept connection has something waiting before we have asked anything: a stray answer,
    or the sink's close. Either way it must not carry the next request."""
    if isinstance(sock, ssl.SSLSocket) and sock.pending():
        return True
    poller = select.poll()
    poller.register(sock, select.POLLIN | select.POLLPRI)
    return bool(poller.poll(0))


class SinkConnections:
    """Keep-alive HTTP connections to the sink, one per request thread.

    A connection the sink closed while idle fails on reuse; the event is then sent once more on a fresh
    connection, which is safe because receivers deduplicate on the event id.
    """

    def __init__(self, sink: str, timeout_seconds: float) -> None:
        # Messages never echo the URL: it may hold user:password.
        parts = urlsplit(sink)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("the sink's URL is not an http(s) URL with a host")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._https else 80)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        authority = parts.netloc.rsplit("@", 1)[-1]  # never send credentials in Host
        if _UNSENDABLE_URL.search(path + authority):
            raise ValueError("the sink's URL holds a space or control character: percent-encode it")
        self._method_line = f"POST {path} HTTP/1.1\r\n".encode("ascii")
        self._fixed = f"Host: {authority}\r\n".encode("idna" if not authority.isascii() else "ascii")
        self._timeout = timeout_seconds
        self._local = threading.local()
        self._context: ssl.SSLContext | None = None

    def _connect(self, deadline: float) -> socket.socket:
        sock = socket.create_connection((self._host, self._port), timeout=_left(deadline, self._timeout))
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._https:
                if self._context is None:
                    self._context = ssl.create_default_context()
                sock.settimeout(_left(deadline, self._timeout))  # the handshake's share of the deadline
                sock = self._context.wrap_socket(sock, server_hostname=self._host)
        except BaseException:
            sock.close()
            raise
        return sock

    def _drop(self) -> None:
        sock: socket.socket | None = getattr(self._local, "sock", None)
        self._local.sock = None
        if sock is not None:
            sock.close()

    def post(self, headers: Mapping[str, str], body: bytes) -> int:
        """POST ``body``; the sink's status code. ``OSError``/``BadSinkResponse`` when it cannot be reached
        or answers nonsense; ``ValueError`` for a header that cannot be sent."""
        message = _request_head(self._method_line, self._fixed, headers, len(body)) + body
        deadline = time.monotonic() + self._timeout
        for attempt in (1, 2):
            sock: socket.socket | None = getattr(self._local, "sock", None)
            if sock is not None and _has_unread(sock):
                self._drop()
                sock = None
            reused = sock is not None
            try:
                if sock is None:
                    sock = self._local.sock = self._connect(deadline)
                answer = self._exchange(sock, message, deadline)
            except (OSError, BadSinkResponse) as exc:
                self._drop()
                if attempt == 1 and reused and isinstance(exc, _IDLE_CLOSE):
                    continue  # the sink closed the idle connection: try once on a fresh one
                raise
            except BaseException:  # interrupted mid-exchange: its answer may still come on this socket
                self._drop()
                raise
            if not answer.keep_alive or answer.trailing:
                self._drop()
            return answer.status
        raise AssertionError("unreachable")

    def _exchange(self, sock: socket.socket, message: bytes, deadline: float) -> _Answer:
        # SSLSocket.sendall applies its time-out to each write: a message is one or two TLS records.
        sock.settimeout(_left(deadline, self._timeout))
        sock.sendall(message)
        answer = _Answer()
        received = 0
        while True:
            sock.settimeout(_left(deadline, self._timeout))
            data = sock.recv(_RECV_BYTES)
            if not data:
                return _at_close(answer, received)
            answer.fed = received
            received += len(data)
            try:
                answer.parser.feed_data(data)
            except httptools.HttpParserUpgrade:
                raise BadSinkResponse("the sink switched protocols") from None
            except httptools.HttpParserError as exc:
                if answer.complete:  # bytes after a final answer that closes the connection: it stands
                    break
                cause = exc.__context__ if isinstance(exc.__context__, BadSinkResponse) else None
                raise BadSinkResponse(str(cause) if cause else f"not an HTTP/1.x answer: {exc}") from None
            if answer.complete:
                break
            if not answer.head_seen and received - answer.head_start > MAX_HEAD_BYTES:
                raise BadSinkResponse(f"an answer's head exceeds {MAX_HEAD_BYTES} bytes")  # still unparsed
        return answer

    def close(self) -> None:
        self._drop()


def _left(deadline: float, timeout: float) -> float:
    """Seconds left until ``deadline``; ``TimeoutError`` once none are."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError(f"the sink did not answer within {timeout:g}s")
    return left


def _at_close(answer: _Answer, received: int) -> _Answer:
    """The answer when the sink has closed the connection: complete only if its body ends at the close."""
    if received == 0:
        raise ConnectionResetError("the sink closed the connection without answering")
    if answer.head_seen and not answer.framed and answer.status >= 200:
        answer.complete = True
        answer.keep_alive = False
        return answer
    raise BadSinkResponse("the sink closed the connection in the middle of its answer")
