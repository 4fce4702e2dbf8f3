"""The outbox's HTTP client for the sink (llhttp through ``httptools``, kept alive per thread), against a
scripted server: every way an answer may end, and every limit on one.

The server answers each request with canned bytes (per connection, in order), records what it received
and how many connections were opened, so each test states what reached the sink and whether the
client kept, dropped or retried its connection.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from xpipe.sink import MAX_HEAD_BYTES, BadSinkResponse, SinkConnections

IO_TIMEOUT_S = 5.0
HEADERS = {"ce-id": "d-1", "ce-type": "com.xpipe.step.run", "content-type": "application/json"}
ACCEPTED = b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n"
CREATED = b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"


class AcceptingSink:
    """Accepts connections on 127.0.0.1, counts them, and serves each on a thread of its own."""

    path = "/"

    def __init__(self) -> None:
        self.connections = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}{self.path}"
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._acceptor = threading.Thread(target=self._accept, daemon=True)
        self._acceptor.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            index = self.connections
            self.connections += 1
            thread = threading.Thread(target=self._serve, args=(conn, index), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _serve(self, conn: socket.socket, index: int) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self._stop.set()
        self._acceptor.join(IO_TIMEOUT_S)
        for thread in self._threads:
            thread.join(IO_TIMEOUT_S)
        self._listener.close()


class ScriptedSink(AcceptingSink):
    """Connection ``n`` answers its requests with ``script[n]`` (then closes)."""

    path = "/events?x=1"

    def __init__(self, script: list[list[bytes]]) -> None:
        self.script = script
        self.requests: list[tuple[int, bytes, bytes]] = []  # (connection, head, body)
        super().__init__()

    def _serve(self, conn: socket.socket, index: int) -> None:
        conn.settimeout(IO_TIMEOUT_S)
        reader = conn.makefile("rb")
        with conn, reader:
            for answer in self.script[index] if index < len(self.script) else []:
                head = b""
                while not head.endswith(b"\r\n\r\n"):
                    line = reader.readline()
                    if not line:
                        return
                    head += line
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                )
                self.requests.append((index, head, reader.read(length)))
                conn.sendall(answer)


@pytest.fixture
def scripted() -> Iterator[list[ScriptedSink]]:
    made: list[ScriptedSink] = []
    yield made
    for sink in made:
        sink.close()


def _sink(made: list[ScriptedSink], script: list[list[bytes]]) -> tuple[ScriptedSink, SinkConnections]:
    sink = ScriptedSink(script)
    made.append(sink)
    return sink, SinkConnections(sink.url, IO_TIMEOUT_S)


def test_a_request_carries_the_path_host_length_and_every_header(scripted: list[ScriptedSink]) -> None:
    sink, client = _sink(scripted, [[ACCEPTED]])
    assert client.post(HEADERS, b'{"a": 1}') == 202
    _, head, body = sink.requests[0]
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /events?x=1 HTTP/1.1"
    assert f"Host: {sink.url.split('/')[2]}" in lines
    assert "Content-Length: 8" in lines
    assert {"ce-id: d-1", "ce-type: com.xpipe.step.run", "content-type: application/json"} <= set(lines)
    assert body == b'{"a": 1}'


@pytest.mark.parametrize(
    "first_answer",
    [
        ACCEPTED,
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
        b"HTTP/1.1 202 Accepted\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3;x=y\r\nabc\r\n2\r\nde\r\n0\r\nT: 1\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 204 No Content\r\n\r\n",
        b"HTTP/1.0 202 Accepted\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok",
    ],
    ids=["empty", "sized-body", "chunked-with-trailer", "interim-100", "no-content", "http10-keep-alive"],
)
def test_a_kept_connection_serves_the_next_event(scripted: list[ScriptedSink], first_answer: bytes) -> None:
    sink, client = _sink(scripted, [[first_answer, ACCEPTED]])
    assert client.post(HEADERS, b"{}") in (200, 202, 204)
    assert client.post(HEADERS, b"{}") == 202
    assert [connection for connection, _, _ in sink.requests] == [0, 0]
    assert sink.connections == 1


@pytest.mark.parametrize(
    "first_answer",
    [
        b"HTTP/1.1 202 Accepted\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.0 202 Accepted\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 202 Accepted\r\n\r\nbody until the close",
        b"HTTP/1.1 202 Accepted\r\nTransfer-Encoding: gzip\r\n\r\nbody until the close",
        b"HTTP/1.1 202 Accepted\r\nConnection: close\r\nContent-Length: 0\r\n\r\nstray bytes",
    ],
    ids=["connection-close", "http10", "close-delimited-body", "close-delimited-gzip", "bytes-after-close"],
)
def test_a_connection_the_sink_ends_is_not_reused(scripted: list[ScriptedSink], first_answer: bytes) -> None:
    sink, client = _sink(scripted, [[first_answer], [ACCEPTED]])
    assert client.post(HEADERS, b"{}") == 202
    assert client.post(HEADERS, b"{}") == 202
    assert [connection for connection, _, _ in sink.requests] == [0, 1]


def test_an_idle_connection_the_sink_closed_is_retried_once_on_a_fresh_one(
    scripted: list[ScriptedSink],
) -> None:
    # Connection 0 answers once and is then closed by the sink without a word (an idle time-out).
    sink, client = _sink(scripted, [[ACCEPTED], [ACCEPTED]])
    assert client.post(HEADERS, b"{}") == 202
    assert client.post(HEADERS, b'{"second": true}') == 202
    assert [(connection, body) for connection, _, body in sink.requests] == [
        (0, b"{}"),
        (1, b'{"second": true}'),
    ]


def test_a_fresh_connection_closed_without_an_answer_fails(scripted: list[ScriptedSink]) -> None:
    sink, client = _sink(scripted, [[]])  # accepts, then closes before answering anything
    with pytest.raises(OSError):
        client.post(HEADERS, b"{}")
    assert sink.connections == 1  # a fresh connection is not retried


@pytest.mark.parametrize(
    "answer",
    [
        b"SMTP ready\r\n\r\n",
        b"HTTP/1.1 2x2 Odd\r\n\r\n",
        b"HTTP/1.1 202 Accepted\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 202 Accepted\r\nContent-Length: 10\r\n\r\nshort",
        b"HTTP/1.1 202 Accepted\r\n" + b"X-A: 1\r\n" * 101 + b"\r\n",
        b"HTTP/1.1 202 Accepted\r\nX-Big: " + b"x" * MAX_HEAD_BYTES + b"\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
        b"HTTP/1.1 202 Acc",
        b"HTTP/2.0 202 Accepted\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 099 Odd\r\n\r\n" + ACCEPTED,
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 202 Accepted\r\nX-Big: "
        + b"x" * MAX_HEAD_BYTES
        + b"\r\n\r\n",
    ],
    ids=[
        "not-http",
        "bad-status",
        "bad-chunk",
        "truncated",
        "headers",
        "head-too-long",
        "switching-protocols",
        "closed-mid-head",
        "http2",
        "status-below-100",
        "head-too-long-after-interim",
    ],
)
def test_a_nonsense_answer_is_an_error_and_the_connection_is_dropped(
    scripted: list[ScriptedSink], answer: bytes
) -> None:
    sink, client = _sink(scripted, [[answer], [ACCEPTED]])
    with pytest.raises(BadSinkResponse):
        client.post(HEADERS, b"{}")
    assert client.post(HEADERS, b"{}") == 202
    assert sink.connections == 2


@pytest.mark.parametrize(
    "headers",
    [
        {"ce-id": "d-1\r\nX-Injected: 1"},
        {"ce-id": "d\n1"},
        {"ce-id": "d\x001"},
        {"ce-id:": "x"},
        {"ce id": "x"},
        {"": "x"},
        {"ce-id": "€"},
        {"ce-id": "d\x0b1"},
        {"Content-Length": "5"},
        {"transfer-encoding": "chunked"},
        {"Host": "elsewhere"},
    ],
    ids=[
        "crlf-in-value",
        "lf-in-value",
        "nul-in-value",
        "colon-in-name",
        "space-in-name",
        "empty-name",
        "not-latin-1",
        "control-character",
        "own-content-length",
        "own-transfer-encoding",
        "own-host",
    ],
)
def test_a_header_that_cannot_be_sent_is_refused_before_anything_is_sent(
    scripted: list[ScriptedSink], headers: dict[str, str]
) -> None:
    sink, client = _sink(scripted, [[ACCEPTED]])
    with pytest.raises(ValueError):
        client.post(headers, b"{}")
    assert sink.connections == 0


def test_bytes_after_the_final_answer_end_the_connection(scripted: list[ScriptedSink]) -> None:
    # A second, unasked-for answer in the same packet: reusing the connection would read it as the next
    # request's answer.
    stray = b"HTTP/1.1 500 Stray\r\nContent-Length: 0\r\n\r\n"
    sink, client = _sink(scripted, [[ACCEPTED + stray], [ACCEPTED]])
    assert client.post(HEADERS, b"{}") == 202
    assert client.post(HEADERS, b"{}") == 202
    assert [connection for connection, _, _ in sink.requests] == [0, 1]


class SilentSink(AcceptingSink):
    """On each connection, answers the first request with ``drip``, one byte every ``gap_s``, and then
    says nothing more."""

    def __init__(self, drip: bytes, gap_s: float) -> None:
        self._drip, self._gap_s = drip, gap_s
        super().__init__()

    def _serve(self, conn: socket.socket, index: int) -> None:
        with conn, contextlib.suppress(OSError):  # the client hangs up when its time is out
            conn.recv(65536)
            for byte in self._drip:
                if self._stop.wait(self._gap_s):
                    return
                conn.sendall(bytes([byte]))
            self._stop.wait(IO_TIMEOUT_S)


@pytest.mark.parametrize(
    "drip", [b"", b"HTTP/1.1 202 Accepted\r\n" + b"X-A: 1\r\n" * 50], ids=["silent", "trickling"]
)
def test_an_answer_must_arrive_within_the_time_out_however_it_trickles(drip: bytes) -> None:
    # The time-out bounds the whole exchange, not each read: a sink sending a byte every 20 ms (well
    # within a per-read time-out) is still cut off.
    sink = SilentSink(drip, gap_s=0.02)
    try:
        client = SinkConnections(sink.url, timeout_seconds=0.5)
        began = time.monotonic()
        with pytest.raises(TimeoutError):
            client.post(HEADERS, b"{}")
        assert time.monotonic() - began < IO_TIMEOUT_S
    finally:
        sink.close()


def test_a_kept_connection_that_times_out_is_not_retried() -> None:
    # Only a connection the sink closed while idle is retried; a sink too slow to answer is not asked
    # twice (that would double the wait of the request thread).
    sink = SilentSink(ACCEPTED, gap_s=0.0)
    try:
        client = SinkConnections(sink.url, timeout_seconds=0.5)
        assert client.post(HEADERS, b"{}") == 202
        with pytest.raises(TimeoutError):
            client.post(HEADERS, b"{}")
        assert sink.connections == 1
    finally:
        sink.close()


@pytest.mark.parametrize(
    "url", ["ftp://u:s3cret@broker/", "http:///path", "http://u:s3cret@broker/a b", "http://broker/\r\nX: 1"]
)
def test_a_sink_url_that_cannot_be_sent_is_refused_without_echoing_it(url: str) -> None:
    with pytest.raises(ValueError, match="the sink's URL") as refused:
        SinkConnections(url, IO_TIMEOUT_S)
    assert "s3cret" not in str(refused.value)


class SequencedSink(AcceptingSink):
    """Connection ``n`` is served by ``behaviours[n]``; any later one answers each request with ``later``."""

    def __init__(self, behaviours: list[Callable[[socket.socket], None]], later: bytes = CREATED) -> None:
        self._behaviours, self._later = behaviours, later
        super().__init__()

    def _serve(self, conn: socket.socket, index: int) -> None:
        with conn, contextlib.suppress(OSError):
            conn.settimeout(IO_TIMEOUT_S)
            if index < len(self._behaviours):
                self._behaviours[index](conn)
                return
            while conn.recv(65536):
                conn.sendall(self._later)


@contextlib.contextmanager
def holding(first: Callable[[socket.socket], None]) -> Iterator[SequencedSink]:
    """A sink whose first connection runs ``first``; later ones answer 201."""
    sink = SequencedSink([first])
    try:
        yield sink
    finally:
        sink.close()


def test_a_stray_answer_that_comes_later_is_never_taken_for_the_next_requests() -> None:
    # The sink answers, then sends a second, unasked-for answer in a packet of its own. Reusing the
    # connection would read that stray 202 as the answer to the next event, which the sink refuses.
    answered, stray_sent = threading.Event(), threading.Event()

    def first(conn: socket.socket) -> None:
        conn.recv(65536)
        conn.sendall(ACCEPTED)
        answered.wait(IO_TIMEOUT_S)  # the client has read that answer: the stray comes on its own
        conn.sendall(ACCEPTED)  # the stray (on loopback it is in the client's buffer once sent)
        stray_sent.set()
        while conn.recv(65536):
            conn.sendall(b"HTTP/1.1 503 Refused\r\nContent-Length: 0\r\n\r\n")

    with holding(first) as sink:
        client = SinkConnections(sink.url, IO_TIMEOUT_S)
        assert client.post(HEADERS, b"{1}") == 202
        answered.set()
        assert stray_sent.wait(IO_TIMEOUT_S)
        assert client.post(HEADERS, b"{2}") == 201  # answered on a fresh connection
        assert sink.connections == 2
        client.close()


class Interrupted(BaseException):
    """What a signal handler raises in the middle of a publish (as gevent or KeyboardInterrupt would)."""


def test_a_publish_interrupted_mid_exchange_never_leaves_its_answer_to_the_next() -> None:
    requested = threading.Event()

    def first(conn: socket.socket) -> None:
        conn.recv(65536)
        requested.set()
        os.kill(os.getpid(), signal.SIGUSR1)  # interrupts the client's wait for this answer
        if conn.recv(65536):  # a second request on this connection gets the late 202 first, then 503
            conn.sendall(ACCEPTED + b"HTTP/1.1 503 Refused\r\nContent-Length: 0\r\n\r\n")

    def interrupt(signum: int, frame: object) -> None:
        raise Interrupted

    previous = signal.signal(signal.SIGUSR1, interrupt)
    try:
        with holding(first) as sink:
            client = SinkConnections(sink.url, IO_TIMEOUT_S)
            with pytest.raises(Interrupted):
                client.post(HEADERS, b"{1}")
            assert requested.is_set()
            assert client.post(HEADERS, b"{2}") == 201
            assert sink.connections == 2
            client.close()
    finally:
        signal.signal(signal.SIGUSR1, previous)


def test_the_retry_gets_only_what_is_left_of_the_time_out() -> None:
    # The kept connection is held for 0.6 of the time-out and then closed unanswered; the fresh one would
    # answer after another 0.6. One deadline covers both: the publish fails at the time-out.
    timeout_s = 1.0
    stop = threading.Event()

    def first(conn: socket.socket) -> None:
        conn.recv(65536)
        conn.sendall(ACCEPTED)
        conn.recv(65536)
        stop.wait(0.6 * timeout_s)  # a slow sink, not a synchronisation

    def later(conn: socket.socket) -> None:
        conn.recv(65536)
        stop.wait(0.6 * timeout_s)
        conn.sendall(ACCEPTED)

    sink = SequencedSink([first, later])
    try:
        client = SinkConnections(sink.url, timeout_s)
        assert client.post(HEADERS, b"{1}") == 202
        began = time.monotonic()
        with pytest.raises(TimeoutError):
            client.post(HEADERS, b"{2}")
        assert time.monotonic() - began < 1.1 * timeout_s + 0.5
        assert sink.connections == 2  # it was retried, within the same deadline
    finally:
        stop.set()
        sink.close()


def test_an_unfinished_head_after_an_interim_answer_is_cut_off_at_the_limit() -> None:
    # llhttp keeps an unfinished header in memory until its line ends: the byte count bounds it.
    def first(conn: socket.socket) -> None:
        conn.recv(65536)
        conn.sendall(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 202 Accepted\r\nX-Big: " + b"x" * 2 * MAX_HEAD_BYTES
        )
        conn.recv(65536)  # holds the connection open until the client gives up on it

    with holding(first) as sink:
        client = SinkConnections(sink.url, IO_TIMEOUT_S)
        began = time.monotonic()
        with pytest.raises(BadSinkResponse, match="head exceeds"):
            client.post(HEADERS, b"{}")
        assert time.monotonic() - began < IO_TIMEOUT_S  # refused, not timed out
