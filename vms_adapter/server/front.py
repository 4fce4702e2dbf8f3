"""The TCP front: accept connections, authenticate them (HELLO), read frames, answer in order.

Threads and blocking sockets, because VSI Python on OpenVMS has no fork, poll or epoll. Each connection
has its own thread, and every blocking call has a deadline that a watchdog thread enforces (by shutting
the socket down), so a silent or slow client holds only its own thread and only until a time-out:

- ``idle_timeout_s``: how long a connection may wait between frames;
- ``frame_timeout_s``: once a frame's first byte arrived, the whole frame (and the TLS handshake, the
  HELLO exchange, and sending a reply) must complete within this;
- ``max_connections``: beyond it a new connection gets an ``OVERLOADED`` error frame and is closed;
- a header announcing more than ``MAX_BODY_BYTES`` gets ``TOO_LARGE`` and is closed before any body is
  read. Every decode problem is answered with an error frame, then the connection is closed.

Standard library only: this module runs on VSI Python 3.10 for OpenVMS.
"""

from __future__ import annotations

import contextlib
import logging
import math
import socket
import ssl
import threading
import time
from typing import Any

from vms_adapter import protocol
from vms_adapter.errors import (
    BAD_FRAME,
    BAD_REQUEST,
    INTERNAL,
    OVERLOADED,
    UNAUTHORIZED,
    UNSUPPORTED_VERSION,
    JournalError,
    ProtocolError,
)
from vms_adapter.protocol import Frame, Opcode
from vms_adapter.server.operations import Operations

log = logging.getLogger("xpipe.journal.front")

ACCEPT_POLL_S = 0.2  # how often the accept loop looks at the stop flag
RECV_BYTES = 65536
WATCHDOG_S = 0.1  # how often connection deadlines are checked (time-outs are this precise)
SERVER_NAME = "xpipe-journal"
HELLO_KEYS = frozenset({"protocol", "client", "nonce", "proof"})


class ConnectionClosed(Exception):
    """The peer closed the connection (at a frame boundary, or in the middle of one)."""


class Connection:
    """One client connection, served by its own thread.

    The socket stays in blocking mode (no per-call time-out: with one, CPython polls before every
    ``recv`` and ``send``, doubling the system calls and GIL hand-overs). Instead the connection
    publishes ``deadline``, the monotonic time its current wait must end by, and the front's watchdog
    shuts down the socket of any connection past it, which ends the blocked call.
    """

    def __init__(self, front: JournalFront, sock: socket.socket, peer: str) -> None:
        self.front = front
        self.sock = sock
        self.peer = peer
        self.authenticated = False
        self.deadline = math.inf  # read by the watchdog thread
        self.timed_out = False
        self._buffer = bytearray()

    def expire(self) -> None:
        """Called by the watchdog: end whatever blocking call the connection is in."""
        self.timed_out = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

    # -- socket primitives, each bounded by the published deadline ------------------------------------

    def _recv(self, deadline: float) -> bytes:
        self.deadline = deadline
        chunk = self.sock.recv(RECV_BYTES)
        self.deadline = math.inf
        if self.timed_out:
            raise TimeoutError("time-out")
        return chunk

    def _need(self, count: int, deadline: float) -> None:
        """Read until the buffer holds ``count`` bytes, within the frame deadline."""
        while len(self._buffer) < count:
            chunk = self._recv(deadline)
            if not chunk:
                raise ConnectionClosed(f"peer closed in the middle of a frame ({len(self._buffer)} bytes)")
            self._buffer += chunk

    def _send(self, frame: bytes) -> None:
        self.deadline = time.monotonic() + self.front.frame_timeout_s
        try:
            self.sock.sendall(frame)
        finally:
            self.deadline = math.inf
        if self.timed_out:
            raise TimeoutError("time-out while sending")

    def _read_frame(self, idle_s: float) -> Frame:
        """The next frame; waiting for it to start is bounded by ``idle_s``, the rest by the frame time-out.

        Reads are buffered (one ``recv`` usually brings a whole frame, or several pipelined ones).
        """
        if not self._buffer:
            chunk = self._recv(time.monotonic() + idle_s)
            if not chunk:
                raise ConnectionClosed("peer closed")
            self._buffer += chunk
        deadline = time.monotonic() + self.front.frame_timeout_s
        self._need(protocol.HEADER_BYTES, deadline)
        header = protocol.decode_header(bytes(self._buffer[: protocol.HEADER_BYTES]))
        end = protocol.HEADER_BYTES + header.body_length
        self._need(end, deadline)
        body = bytes(self._buffer[protocol.HEADER_BYTES : end])
        del self._buffer[:end]
        return Frame(header.opcode, header.request_id, protocol.decode_body(header, body), header.flags)

    def _reply(self, request: Frame, body: dict[str, Any]) -> None:
        try:
            data = protocol.encode_frame(request.opcode, request.request_id, body, flags=protocol.FLAG_REPLY)
        except ProtocolError as exc:
            self._error(
                request.opcode,
                request.request_id,
                JournalError(f"reply not sendable: {exc.message}", code=exc.code),
            )
            return
        self._send(data)

    def _error(self, opcode: int, request_id: int, exc: JournalError) -> None:
        code = BAD_REQUEST if exc.code == BAD_FRAME else exc.code
        body = protocol.error_body(code, exc.message, retryable=exc.retryable, details=exc.details)
        self._send(
            protocol.encode_frame(opcode, request_id, body, flags=protocol.FLAG_REPLY | protocol.FLAG_ERROR)
        )

    # -- the conversation ----------------------------------------------------------------------------

    def serve(self) -> None:
        try:
            self._serve()
        except (ConnectionClosed, TimeoutError, OSError) as exc:
            log.debug("connection %s ended: %s", self.peer, exc)
        except Exception:
            log.exception("connection %s failed", self.peer)
        finally:
            self.front.forget(self)
            with contextlib.suppress(OSError):
                self.sock.close()

    def _serve(self) -> None:
        self.sock.settimeout(None)
        if isinstance(self.sock, ssl.SSLSocket):
            self.deadline = time.monotonic() + self.front.frame_timeout_s
            try:
                self.sock.do_handshake()
            except ssl.SSLError as exc:
                log.info("TLS handshake with %s failed: %s", self.peer, exc.reason or exc)
                return
            finally:
                self.deadline = math.inf
        server_nonce = protocol.new_nonce()
        auth = protocol.AUTH_HMAC_SHA256 if self.front.secret else protocol.AUTH_NONE
        greeting = {
            "protocol": protocol.PROTOCOL_VERSION,
            "server": SERVER_NAME,
            "nonce": server_nonce,
            "auth": auth,
        }
        self._send(protocol.encode_frame(Opcode.HELLO, 0, greeting, flags=protocol.FLAG_REPLY))
        idle = self.front.frame_timeout_s  # the HELLO must follow promptly
        while not self.front.stopping.is_set():
            try:
                request = self._read_frame(idle)
            except ProtocolError as exc:
                self._error(0, 0, exc)
                log.info("connection %s: bad frame: %s", self.peer, exc.message)
                return
            if request.is_reply:
                self._error(
                    request.opcode,
                    request.request_id,
                    JournalError("clients send requests, not replies", code=BAD_REQUEST),
                )
                return
            if not self.authenticated:
                if not self._hello(request, server_nonce):
                    return
                idle = self.front.idle_timeout_s
                continue
            self._dispatch(request)

    def _hello(self, request: Frame, server_nonce: str) -> bool:
        """Check the client's HELLO; on success answer with the server's proof."""
        if request.opcode != Opcode.HELLO:
            self._error(
                request.opcode, request.request_id, JournalError("HELLO must come first", code=UNAUTHORIZED)
            )
            return False
        body = request.body
        unknown = sorted(set(body) - HELLO_KEYS)
        if unknown:
            error = JournalError(
                f"HELLO: unknown key {unknown[0]!r}", code=BAD_REQUEST, details={"field": unknown[0]}
            )
            self._error(request.opcode, request.request_id, error)
            return False
        try:
            client_nonce = protocol.parse_nonce(body.get("nonce"))
        except ProtocolError as exc:
            self._error(request.opcode, request.request_id, JournalError(exc.message, code=BAD_REQUEST))
            return False
        if body.get("protocol") != protocol.PROTOCOL_VERSION:
            error = JournalError(
                f"this server speaks protocol {protocol.PROTOCOL_VERSION}", code=UNSUPPORTED_VERSION
            )
            self._error(request.opcode, request.request_id, error)
            return False
        reply: dict[str, Any] = {"protocol": protocol.PROTOCOL_VERSION, "server": SERVER_NAME}
        secret = self.front.secret
        if secret:
            expected = protocol.hello_proof(
                secret, protocol.CLIENT_PROOF_TAG, bytes.fromhex(server_nonce), client_nonce
            )
            if not protocol.proof_matches(expected, body.get("proof")):
                log.warning("connection %s: HELLO with a wrong or missing proof", self.peer)
                self._error(
                    request.opcode,
                    request.request_id,
                    JournalError("authentication failed", code=UNAUTHORIZED),
                )
                return False
            reply["proof"] = protocol.hello_proof(
                secret, protocol.SERVER_PROOF_TAG, bytes.fromhex(server_nonce), client_nonce
            )
        self.authenticated = True
        self._reply(request, reply)
        return True

    def _dispatch(self, request: Frame) -> None:
        if request.opcode == Opcode.HELLO:
            self._error(
                request.opcode, request.request_id, JournalError("already authenticated", code=BAD_REQUEST)
            )
            return
        try:
            reply = self.front.operations.handle(request.opcode, request.body)
        except JournalError as exc:
            self._error(request.opcode, request.request_id, exc)
            return
        except Exception:
            log.exception("operation %s failed", request.opcode)
            self._error(request.opcode, request.request_id, JournalError("internal error", code=INTERNAL))
            return
        self._reply(request, reply)


class JournalFront:
    """The listening socket, the accept loop and the set of live connections."""

    def __init__(
        self,
        operations: Operations,
        *,
        host: str,
        port: int,
        secret: bytes | None,
        tls: ssl.SSLContext | None,
        max_connections: int,
        idle_timeout_s: float,
        frame_timeout_s: float,
        stopping: threading.Event | None = None,
    ) -> None:
        self.operations = operations
        self.secret = secret
        self.tls = tls
        self.max_connections = max_connections
        self.idle_timeout_s = idle_timeout_s
        self.frame_timeout_s = frame_timeout_s
        self.stopping = stopping or threading.Event()
        self._lock = threading.Lock()
        self._connections: set[Connection] = set()
        self._threads: set[threading.Thread] = set()
        self.accepted = 0
        self.refused = 0
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.listener = socket.socket(family, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((host, port))
        self.listener.listen(128)
        self.listener.settimeout(ACCEPT_POLL_S)
        self.address: tuple[str, int] = self.listener.getsockname()[:2]

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"connections": len(self._connections), "accepted": self.accepted, "refused": self.refused}

    def forget(self, connection: Connection) -> None:
        with self._lock:
            self._connections.discard(connection)
            self._threads.discard(threading.current_thread())

    def _watch(self) -> None:
        """Enforce every connection's published deadline (idle, frame, handshake and send time-outs)."""
        while not self.stopping.wait(WATCHDOG_S):
            now = time.monotonic()
            with self._lock:
                late = [c for c in self._connections if c.deadline < now]
            for connection in late:
                log.info("connection %s timed out", connection.peer)
                connection.expire()

    def serve_until_stopped(self) -> None:
        """Accept until ``stopping`` is set (the accept loop polls it every ``ACCEPT_POLL_S``)."""
        watchdog = threading.Thread(target=self._watch, name="journal-watchdog", daemon=True)
        watchdog.start()
        while not self.stopping.is_set():
            try:
                sock, peer = self.listener.accept()
            except TimeoutError:
                continue
            except OSError as exc:
                if self.stopping.is_set():
                    break
                log.warning("accept failed: %s", exc)
                continue
            self._admit(sock, f"{peer[0]}:{peer[1]}")
        self.listener.close()

    def _admit(self, sock: socket.socket, peer: str) -> None:
        """Hand an accepted socket to its own thread. Whatever goes wrong here concerns this one peer
        (one that connected and reset at once makes ``wrap_socket`` raise ECONNRESET): it must never
        escape into the accept loop, which would stop the whole service."""
        with self._lock:
            full = len(self._connections) >= self.max_connections
            if full:
                self.refused += 1
        if full:
            self._refuse(sock, peer)
            return
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.tls is not None:
                sock = self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        except OSError as exc:
            log.info("connection %s dropped before it was served: %s", peer, exc)
            sock.close()
            return
        connection = Connection(self, sock, peer)
        thread = threading.Thread(target=connection.serve, name=f"conn-{peer}", daemon=True)
        with self._lock:
            self.accepted += 1
            self._connections.add(connection)
            self._threads.add(thread)
        try:
            thread.start()
        except RuntimeError as exc:  # "can't start new thread": refuse this one, keep serving the others
            log.warning("connection %s dropped: %s", peer, exc)
            with self._lock:
                self._connections.discard(connection)
                self._threads.discard(thread)
            sock.close()

    def _refuse(self, sock: socket.socket, peer: str) -> None:
        log.warning("refusing %s: %d connections already", peer, self.max_connections)
        body = protocol.error_body(OVERLOADED, "too many connections", retryable=True)
        try:
            sock.settimeout(1.0)
            if self.tls is None:  # over TLS the frame cannot be sent before a handshake; just close
                sock.sendall(
                    protocol.encode_frame(
                        Opcode.HELLO, 0, body, flags=protocol.FLAG_REPLY | protocol.FLAG_ERROR
                    )
                )
        except OSError:
            pass
        finally:
            sock.close()

    def close_connections(self, timeout_s: float) -> None:
        """Shut every connection down and wait (bounded) for their threads."""
        with self._lock:
            connections = list(self._connections)
            threads = list(self._threads)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.sock.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + timeout_s
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
