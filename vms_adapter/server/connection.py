"""One client connection of the journal service: buffers, TLS handshake, HELLO, frames in and replies out.

Every method runs in the service's one loop thread (``front.py``) on a non-blocking socket, so nothing
here may block: a read takes what the kernel has, a write sends what fits and keeps the rest. Replies
are not sent as they are made: they are *held* until the loop has made the round's group of
transactions durable (a read may have seen a staged transaction too), then ``release_held`` moves them
to the output, or ``fail_held`` turns them into ``UNAVAILABLE`` errors if the group could not be written.

The connection records when its current wait began (the idle gap between frames, a partial frame, a
blocked send, the TLS handshake); ``deadline`` turns that into the time the front's watchdog cuts it off.

Standard library only: this module runs on VSI Python 3.10 for OpenVMS.
"""

from __future__ import annotations

import contextlib
import logging
import math
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any

from vms_adapter import protocol
from vms_adapter.errors import (
    BAD_FRAME,
    BAD_REQUEST,
    INTERNAL,
    UNAUTHORIZED,
    UNSUPPORTED_VERSION,
    JournalError,
    JournalUnavailable,
    ProtocolError,
)
from vms_adapter.protocol import Frame, Opcode, echo

log = logging.getLogger("xpipe.journal.front")

RECV_BYTES = 65536
# Replies waiting to be sent beyond which the connection's further requests are left unread: a client
# that pipelines requests but never reads its replies holds this much memory, not more.
MAX_OUTPUT_BYTES = 1024 * 1024
SERVER_NAME = "xpipe-journal"
HELLO_KEYS = frozenset({"protocol", "client", "nonce", "proof"})

Handler = Callable[[int, dict[str, Any]], dict[str, Any]]


class ConnectionClosed(Exception):
    """The peer closed the connection (at a frame boundary, or in the middle of one)."""


class Limits:
    """What every connection is held to (and the shared secret it must prove it knows)."""

    __slots__ = ("frame_timeout_s", "idle_timeout_s", "secret")

    def __init__(self, *, secret: bytes | None, idle_timeout_s: float, frame_timeout_s: float) -> None:
        self.secret = secret
        self.idle_timeout_s = idle_timeout_s
        self.frame_timeout_s = frame_timeout_s


class Connection:
    """A client's socket and the state of its conversation (see the module docstring).

    The connection never closes its own socket: it says ``finished`` and the front, which also owns the
    selector registration, closes it.
    """

    def __init__(self, sock: socket.socket, peer: str, limits: Limits, handle: Handler, now: float) -> None:
        self.sock = sock
        self.peer = peer
        self.limits = limits
        self._handle = handle
        self.handshaking = isinstance(sock, ssl.SSLSocket)
        self.authenticated = False
        self.closing = False  # send what is queued (an error frame, the last replies), then finish
        self.closed = False
        self._eof = False  # the peer has finished sending (its buffered requests are still answered)
        self._inbuf = bytearray()
        self._out = bytearray()
        self._held: list[tuple[int, int, bytes]] = []  # (opcode, request id, reply frame)
        self._held_bytes = 0
        self._server_nonce = protocol.new_nonce()
        self._accepted_at = now
        self._progress_at = now  # the last progress: a frame started or answered, bytes sent
        self._send_blocked = False  # the last send could not write everything: wait for writability
        self._tls_wants_write = False  # the TLS layer must write before it can read on
        self.registered_events = 0  # what the front's selector watches for this socket
        if not self.handshaking:
            self._greet()

    # -- what the front's loop asks --------------------------------------------------------------------

    def wanted_events(self) -> tuple[bool, bool]:
        """(read, write): whether the loop should wake for this socket's readability / writability."""
        if self.closed:
            return False, False
        write = self._send_blocked or self._tls_wants_write
        read = (
            not self.closing
            and not self._eof
            and len(self._out) < MAX_OUTPUT_BYTES
            and not self._tls_wants_write
        )
        return read, write

    @property
    def finished(self) -> bool:
        """Nothing more to do: the front closes it."""
        return self.closing and not self._out and not self._held

    @property
    def backlogged(self) -> bool:
        """Whether requests are buffered that were not handled yet (round budget or output bound
        reached, or decrypted bytes the TLS layer holds)."""
        if self.closed or self.closing or self._tls_wants_write or len(self._out) >= MAX_OUTPUT_BYTES:
            return False
        return self.tls_pending() or self._request_buffered()

    def deadline(self) -> float:
        """The monotonic time by which the connection must have made progress, or be cut off.

        Before authentication: the TLS handshake and the HELLO exchange together, counted from the
        accept (a peer dripping them byte by byte gets no more). After it: a frame once started, and a
        reply once sending, must progress within the frame time-out (each frame answered and each send
        that moves bytes is progress); between frames, the idle time-out.
        """
        if not self.authenticated:
            return self._accepted_at + 2 * self.limits.frame_timeout_s
        if self._out or self._inbuf:
            return self._progress_at + self.limits.frame_timeout_s
        return self._progress_at + self.limits.idle_timeout_s

    def tls_pending(self) -> bool:
        """Decrypted bytes the TLS layer holds: the selector cannot see them, the loop must read them."""
        return isinstance(self.sock, ssl.SSLSocket) and not self.handshaking and self.sock.pending() > 0

    # -- reading ---------------------------------------------------------------------------------------

    def on_readable(self, now: float) -> None:
        """Take what the kernel (or the TLS layer) has; at end of stream, answer what is buffered, then
        finish (a client may half-close after its last request)."""
        if self.handshaking:
            self._continue_handshake(now)
            return
        if self._eof or self.closing:
            return
        try:
            chunk = self.sock.recv(RECV_BYTES)
        except (BlockingIOError, InterruptedError, ssl.SSLWantReadError):
            return
        except ssl.SSLWantWriteError:
            self._tls_wants_write = True
            return
        self._tls_wants_write = False
        if not chunk:
            self._eof = True
            return
        if not self._inbuf and not self._out:
            self._progress_at = now  # a frame has started: from now on the frame time-out applies
        self._inbuf += chunk

    def _complete_frame_buffered(self) -> bool:
        try:
            header = protocol.decode_header(bytes(self._inbuf[: protocol.HEADER_BYTES]))
        except ProtocolError:
            return True  # handle_frames answers it with an error frame
        return len(self._inbuf) >= protocol.HEADER_BYTES + header.body_length

    def handle_frames(self, now: float, budget: int, until: float = math.inf) -> None:
        """Answer up to ``budget`` complete frames buffered (replies are held), stopping early at the
        output bound or once the monotonic clock passes ``until`` (after at least one frame); what is
        left waits for the next round (``backlogged``)."""
        buffer = self._inbuf
        answered = 0
        while (
            answered < budget
            and (answered == 0 or time.monotonic() < until)
            and not self.closing
            and len(buffer) >= protocol.HEADER_BYTES
            and len(self._out) + self._held_bytes < MAX_OUTPUT_BYTES
        ):
            try:
                header = protocol.decode_header(bytes(buffer[: protocol.HEADER_BYTES]))
                end = protocol.HEADER_BYTES + header.body_length
                if len(buffer) < end:
                    break
                body = protocol.decode_body(header, bytes(buffer[protocol.HEADER_BYTES : end]))
            except ProtocolError as exc:
                log.info("connection %s: bad frame: %s", self.peer, exc.message)
                self._fail_request(0, 0, exc)
                self.closing = True
                return
            del buffer[:end]
            answered += 1
            self._answer(Frame(header.opcode, header.request_id, body, header.flags))
        if answered:
            self._progress_at = now
        if self._eof and not self.closing and not self._request_buffered():
            if buffer:
                log.debug("connection %s: peer closed in the middle of a frame", self.peer)
            self.closing = True  # nothing more can arrive: finish once the replies are out

    def _request_buffered(self) -> bool:
        return len(self._inbuf) >= protocol.HEADER_BYTES and self._complete_frame_buffered()

    def _answer(self, request: Frame) -> None:
        if request.is_reply:
            self._fail_request(
                request.opcode,
                request.request_id,
                JournalError("clients send requests, not replies", code=BAD_REQUEST),
            )
            self.closing = True
            return
        if not self.authenticated:
            self._hello(request)
            return
        if request.opcode == Opcode.HELLO:
            self._fail_request(
                request.opcode, request.request_id, JournalError("already authenticated", code=BAD_REQUEST)
            )
            return
        try:
            reply = self._handle(request.opcode, request.body)
        except JournalError as exc:
            self._fail_request(request.opcode, request.request_id, exc)
            return
        except Exception:
            log.exception("operation %s failed", request.opcode)
            self._fail_request(
                request.opcode, request.request_id, JournalError("internal error", code=INTERNAL)
            )
            return
        self._reply(request, reply)

    # -- HELLO -----------------------------------------------------------------------------------------

    def _greet(self) -> None:
        auth = protocol.AUTH_HMAC_SHA256 if self.limits.secret else protocol.AUTH_NONE
        greeting = {
            "protocol": protocol.PROTOCOL_VERSION,
            "server": SERVER_NAME,
            "nonce": self._server_nonce,
            "auth": auth,
        }
        self._out += protocol.encode_frame(Opcode.HELLO, 0, greeting, flags=protocol.FLAG_REPLY)

    def _hello(self, request: Frame) -> None:
        """Check the client's HELLO; on success answer with the server's proof, else refuse and close."""
        error = self._hello_error(request)
        if error is not None:
            self._fail_request(request.opcode, request.request_id, error)
            self.closing = True
            return
        reply: dict[str, Any] = {"protocol": protocol.PROTOCOL_VERSION, "server": SERVER_NAME}
        secret = self.limits.secret
        if secret:
            client_nonce = bytes.fromhex(request.body["nonce"])
            reply["proof"] = protocol.hello_proof(
                secret, protocol.SERVER_PROOF_TAG, bytes.fromhex(self._server_nonce), client_nonce
            )
        self.authenticated = True
        self._reply(request, reply)

    def _hello_error(self, request: Frame) -> JournalError | None:
        if request.opcode != Opcode.HELLO:
            return JournalError("HELLO must come first", code=UNAUTHORIZED)
        body = request.body
        unknown = sorted(set(body) - HELLO_KEYS)
        if unknown:
            key = echo(unknown[0])
            return JournalError(f"HELLO: unknown key {key!r}", code=BAD_REQUEST, details={"field": key})
        try:
            client_nonce = protocol.parse_nonce(body.get("nonce"))
        except ProtocolError as exc:
            return JournalError(exc.message, code=BAD_REQUEST)
        if body.get("protocol") != protocol.PROTOCOL_VERSION:
            return JournalError(
                f"this server speaks protocol {protocol.PROTOCOL_VERSION}", code=UNSUPPORTED_VERSION
            )
        secret = self.limits.secret
        if secret:
            expected = protocol.hello_proof(
                secret, protocol.CLIENT_PROOF_TAG, bytes.fromhex(self._server_nonce), client_nonce
            )
            if not protocol.proof_matches(expected, body.get("proof")):
                log.warning("connection %s: HELLO with a wrong or missing proof", self.peer)
                return JournalError("authentication failed", code=UNAUTHORIZED)
        return None

    # -- replies ---------------------------------------------------------------------------------------

    def _reply(self, request: Frame, body: dict[str, Any]) -> None:
        try:
            data = protocol.encode_frame(request.opcode, request.request_id, body, flags=protocol.FLAG_REPLY)
        except ProtocolError as exc:
            self._fail_request(
                request.opcode,
                request.request_id,
                JournalError(f"reply not sendable: {exc.message}", code=exc.code),
            )
            return
        self._hold(request.opcode, request.request_id, data)

    def _fail_request(self, opcode: int, request_id: int, exc: JournalError) -> None:
        self._hold(opcode, request_id, _error_frame(opcode, request_id, exc))

    def _hold(self, opcode: int, request_id: int, data: bytes) -> None:
        self._held.append((opcode, request_id, data))
        self._held_bytes += len(data)

    def release_held(self) -> None:
        """The round's group is durable: its replies may go out."""
        for _, _, data in self._held:
            self._out += data
        self._held.clear()
        self._held_bytes = 0

    def fail_held(self) -> None:
        """The round's group could not be made durable: no reply of it may claim success."""
        error = JournalUnavailable("journal storage failed; the service is stopping")
        for op, rid, _ in self._held:
            self._out += _error_frame(op, rid, error)
        self._held.clear()
        self._held_bytes = 0
        self.closing = True

    # -- writing ---------------------------------------------------------------------------------------

    def on_writable(self, now: float) -> None:
        if self.handshaking:
            self._continue_handshake(now)
        elif self._tls_wants_write:
            self._tls_wants_write = False  # the TLS layer can write again: read on
        self.send(now)

    def send(self, now: float) -> None:
        """Send what the kernel takes now; the rest waits for writability. Bytes sent are progress."""
        if self.handshaking or self.closed:
            return
        out = self._out
        sent_any = False
        blocked = False
        try:
            while out:
                sent = self.sock.send(out)
                del out[:sent]
                sent_any = sent_any or sent > 0
        except (BlockingIOError, InterruptedError, ssl.SSLWantWriteError):
            blocked = True
        except ssl.SSLWantReadError:
            pass  # the TLS layer needs the peer's bytes first: the next readable round sends on
        if sent_any:
            self._progress_at = now
        self._send_blocked = blocked and bool(out)

    # -- TLS -------------------------------------------------------------------------------------------

    def _continue_handshake(self, now: float) -> None:
        assert isinstance(self.sock, ssl.SSLSocket)
        try:
            self.sock.do_handshake()
        except ssl.SSLWantReadError:
            self._tls_wants_write = False
            return
        except ssl.SSLWantWriteError:
            self._tls_wants_write = True
            return
        except ssl.SSLError as exc:
            raise ConnectionClosed(f"TLS handshake failed: {exc.reason or exc}") from None
        self.handshaking = False
        self._tls_wants_write = False
        self._progress_at = now
        self._greet()

    def close(self) -> None:
        """Called by the front only (it unregisters the socket first)."""
        if not self.closed:
            self.closed = True
            with contextlib.suppress(OSError):
                self.sock.close()


def _error_frame(opcode: int, request_id: int, exc: JournalError) -> bytes:
    """The error reply for ``exc``; never raises. An error that echoes a client's oversized text (say, a
    20,000-character unknown key) would not fit a frame: then its details go and its message is cut."""
    code = BAD_REQUEST if exc.code == BAD_FRAME else exc.code
    flags = protocol.FLAG_REPLY | protocol.FLAG_ERROR
    body = protocol.error_body(code, exc.message, retryable=exc.retryable, details=exc.details)
    try:
        return protocol.encode_frame(opcode, request_id, body, flags=flags)
    except ProtocolError:
        short = protocol.error_body(code, exc.message[:200], retryable=exc.retryable)
        return protocol.encode_frame(opcode, request_id, short, flags=flags)
