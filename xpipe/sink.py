"""Posting CloudEvents to ``K_SINK`` (the broker) over keep-alive HTTP/1.1 connections, one per thread.

Every function request that causes a directive publishes it here, so this is on submit's hot path.
``http.client`` cost about 150 us of CPU per publish, most of it in adding headers one ``putheader`` at a
time and in parsing the response headers through the ``email`` package; submit spent a quarter of its
CPU there. A publish needs little of HTTP: one POST with a ``Content-Length`` body, and of the answer
only its status and how its body ends. So the request is written in one buffer and the response read
with a per-connection buffered reader (about 40 us). The answer's body is read and discarded, whatever
its framing (``Content-Length``, chunked, or up to the close of the connection), so that a kept
connection stays in step.

Header names and values are checked as ``http.client`` checks them: a name that is not an HTTP token, or
a value with a line break or NUL, raises ``ValueError`` before anything is sent (no header injection).
"""

from __future__ import annotations

import re
import socket
import ssl
import threading
from collections.abc import Mapping
from io import BufferedReader
from urllib.parse import urlsplit

# Limits on what the sink may answer (those of http.client): a line, and the number of header lines.
MAX_LINE_BYTES = 65536
MAX_HEADER_LINES = 100
_DISCARD_CHUNK = 64 * 1024
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_VALUE = re.compile(r"[\r\n\x00]")


class BadSinkResponse(Exception):
    """The sink's answer is not HTTP/1.x as this client reads it (the connection is then dropped)."""


def _request_head(path: str, host_header: str) -> bytes:
    return f"POST {path} HTTP/1.1\r\nHost: {host_header}\r\nAccept-Encoding: identity\r\n".encode("ascii")


def encode_headers(headers: Mapping[str, str]) -> bytes:
    """The header lines of ``headers`` (latin-1, as http.client encodes them); ``ValueError`` if illegal."""
    lines = []
    for name, value in headers.items():
        if not _TOKEN.fullmatch(name):
            raise ValueError(f"invalid header name {name!r}")
        if _BAD_VALUE.search(value):
            raise ValueError(f"invalid value for header {name!r}: it holds a line break or NUL")
        lines.append(f"{name}: {value}\r\n")
    return "".join(lines).encode("latin-1")


class _Connection:
    """One open connection: its socket and the buffered reader of its answers."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reader = sock.makefile("rb")

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


def _line(reader: BufferedReader) -> bytes:
    line = reader.readline(MAX_LINE_BYTES + 1)
    if len(line) > MAX_LINE_BYTES:
        raise BadSinkResponse("the sink answered a line longer than 64 KiB")
    return line


def _discard(reader: BufferedReader, count: int) -> None:
    while count > 0:
        chunk = reader.read(min(count, _DISCARD_CHUNK))
        if not chunk:
            raise BadSinkResponse("the sink closed the connection inside a response body")
        count -= len(chunk)


def _discard_chunked(reader: BufferedReader) -> None:
    while True:
        size_text = _line(reader).split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise BadSinkResponse(f"bad chunk size {size_text[:20]!r} in the sink's answer") from None
        if size < 0:
            raise BadSinkResponse("negative chunk size in the sink's answer")
        if size == 0:
            break
        _discard(reader, size + 2)  # the chunk and its CRLF
    for _ in range(MAX_HEADER_LINES + 1):  # trailer lines, up to the empty line
        if _line(reader) in (b"\r\n", b"\n", b""):
            return
    raise BadSinkResponse("too many trailer lines in the sink's answer")


def _read_head(reader: BufferedReader) -> tuple[bytes, int, int | None, bool, bytes]:
    """One answer's status line and headers: version, status, Content-Length, chunked, Connection."""
    status_line = _line(reader)
    if not status_line:
        # What a connection the sink closed while idle looks like: retried once on a fresh one.
        raise ConnectionResetError("the sink closed the connection without answering")
    parts = status_line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise BadSinkResponse(f"bad status line from the sink: {status_line[:60]!r}")
    version, status = parts[0], int(parts[1])
    if not 100 <= status <= 999:
        raise BadSinkResponse(f"bad status {status} from the sink")
    length: int | None = None
    chunked = False
    connection = b""
    for _ in range(MAX_HEADER_LINES + 1):
        line = _line(reader)
        if line in (b"\r\n", b"\n"):
            return version, status, length, chunked, connection
        name, sep, value = line.partition(b":")
        if not sep:
            raise BadSinkResponse(f"bad header line from the sink: {line[:60]!r}")
        name = name.strip().lower()
        if name == b"content-length":
            text = value.strip()
            if not text.isdigit():
                raise BadSinkResponse(f"bad Content-Length {text[:20]!r} from the sink")
            length = int(text)
        elif name == b"transfer-encoding":
            chunked = value.strip().lower().endswith(b"chunked")
        elif name == b"connection":
            connection = value.strip().lower()
    raise BadSinkResponse(f"more than {MAX_HEADER_LINES} header lines from the sink")


def read_response(reader: BufferedReader) -> tuple[int, bool]:
    """Read one answer (skipping interim 1xx ones): its status, and whether the connection may be kept."""
    version, status, length, chunked, connection = _read_head(reader)
    while 100 <= status < 200:
        if status == 101:
            raise BadSinkResponse("the sink switched protocols")
        version, status, length, chunked, connection = _read_head(reader)  # the final answer follows
    tokens = {token.strip() for token in connection.split(b",")}
    keep = b"close" not in tokens if version == b"HTTP/1.1" else b"keep-alive" in tokens
    if status in (204, 304):
        return status, keep
    if chunked:
        _discard_chunked(reader)
    elif length is not None:
        _discard(reader, length)
    else:  # the body ends when the sink closes the connection
        while reader.read(_DISCARD_CHUNK):
            pass
        keep = False
    return status, keep


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
        default_port = 443 if self._https else 80
        self._host = parts.hostname
        self._port = parts.port or default_port
        host = f"[{self._host}]" if ":" in self._host else self._host
        host_header = host if self._port == default_port else f"{host}:{self._port}"
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._head = _request_head(path, host_header)
        self._timeout = timeout_seconds
        self._local = threading.local()
        self._context: ssl.SSLContext | None = None

    def _connection(self) -> tuple[_Connection, bool]:
        connection: _Connection | None = getattr(self._local, "connection", None)
        if connection is not None:
            return connection, True
        sock = socket.create_connection((self._host, self._port), timeout=self._timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._https:
                if self._context is None:
                    self._context = ssl.create_default_context()
                sock = self._context.wrap_socket(sock, server_hostname=self._host)
        except BaseException:
            sock.close()
            raise
        connection = _Connection(sock)
        self._local.connection = connection
        return connection, False

    def _drop(self) -> None:
        connection: _Connection | None = getattr(self._local, "connection", None)
        self._local.connection = None
        if connection is not None:
            connection.close()

    def post(self, headers: Mapping[str, str], body: bytes) -> int:
        """POST ``body``; the sink's status code. ``OSError``/``BadSinkResponse`` when it cannot be reached
        or answers nonsense; ``ValueError`` for a header that cannot be sent."""
        message = b"".join(
            (self._head, b"Content-Length: %d\r\n" % len(body), encode_headers(headers), b"\r\n", body)
        )
        for attempt in (1, 2):
            connection, reused = self._connection()
            try:
                connection.sock.sendall(message)
                status, keep = read_response(connection.reader)
            except (OSError, BadSinkResponse):
                self._drop()
                if attempt == 1 and reused:
                    continue  # the sink closed the idle connection: try once on a fresh one
                raise
            if not keep:
                self._drop()
            return status
        raise AssertionError("unreachable")

    def close(self) -> None:
        self._drop()
