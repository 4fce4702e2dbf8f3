"""The TCP front of the journal service: one loop thread serves every connection and the group commit.

Each round of the loop:

1. waits (``selectors``) until a socket is ready or the next watchdog check is due;
2. accepts new connections and reads what every ready connection has sent;
3. answers every complete request: reads from the in-memory state, writes staged into the open group;
4. makes the group durable with ONE write and ONE fsync (``GroupCommit.flush``);
5. only then releases the round's replies and sends them;
6. cuts a full segment or takes a due snapshot, if one is due (after the replies, so it delays no one).

Requests that arrive during the fsync wait in the kernel's socket buffers and form the next group, so
the fsync is shared without any hand-off between threads. This is the whole design's reason: on a disk
whose fsync takes a tenth of a millisecond, the CPython thread hand-offs of a thread-per-connection
server (connection thread -> writer thread -> connection thread) cost more than the fsync itself, and
32 threads contending for the interpreter lock cost more again.

One thread also means one owner: the journal's state is touched only here, so there are no locks.
Nothing in the loop blocks except the fsync: sockets are non-blocking, a connection's waits have
deadlines (``Connection.deadline``) that the watchdog checks every ``WATCHDOG_S``:

- ``idle_timeout_s``: how long a connection may wait between frames;
- ``frame_timeout_s``: once a frame's first byte arrived, the whole frame (and the TLS handshake, the
  HELLO exchange, and sending a reply) must complete within this;
- ``max_connections``: beyond it a new connection gets an ``OVERLOADED`` error frame and is closed;
- a header announcing more than ``MAX_BODY_BYTES`` gets ``TOO_LARGE`` and is closed before any body is
  read. Every decode problem is answered with an error frame, then the connection is closed.

``selectors`` picks epoll on Linux and select() on OpenVMS, where select works on sockets only, which is
all this loop waits on (select's FD_SETSIZE, usually 1024 there, bounds ``max_connections``).

Standard library only: this module runs on VSI Python 3.10 for OpenVMS.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import selectors
import socket
import ssl
import threading
import time
from typing import Any

from vms_adapter import protocol
from vms_adapter.errors import OVERLOADED
from vms_adapter.protocol import Opcode
from vms_adapter.server.connection import Connection, ConnectionClosed, Limits
from vms_adapter.server.operations import Operations

log = logging.getLogger("xpipe.journal.front")

WATCHDOG_S = 0.1  # how often connection deadlines and the stop flag are checked (time-outs are this precise)
ACCEPT_BATCH = 64  # connections accepted per round, so a connection storm cannot starve the others
ACCEPT_PAUSE_S = 0.5  # after accept() fails (say EMFILE), before trying again
# Fairness: a connection gets at most this many requests answered per round, and a round stops taking
# up connections after this long (they come first next round), so that one pipelining client, or a
# burst of expensive requests, cannot hold up the others, new connections, time-outs or a stop.
FRAMES_PER_ROUND = 64
ROUND_BUDGET_S = 0.05
SELECT_FD_LIMIT = 1024  # select()'s FD_SETSIZE (where it is the only selector): sockets beyond are refused
_TRANSIENT_ACCEPT_ERRORS = frozenset(
    code for code in (getattr(errno, "ECONNABORTED", None), getattr(errno, "EPROTO", None)) if code
)
_READ, _WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE


class JournalFront:
    """The listening socket, the connections and the loop that serves them (see the module docstring)."""

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
        self.writer = operations.writer
        self.tls = tls
        self.max_connections = max_connections
        self.limits = Limits(secret=secret, idle_timeout_s=idle_timeout_s, frame_timeout_s=frame_timeout_s)
        self.stopping = stopping or threading.Event()
        self.failure: str | None = None  # set if the loop itself failed (a bug): the service must not go on
        self.accepted = 0
        self.refused = 0
        self._connections: set[Connection] = set()
        self._ready: list[Connection] = []  # requests already buffered: serve them without waiting
        self._accept_paused_until = 0.0
        self.turned_at = time.monotonic()  # when the loop last began a round (read by the stall watch)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.listener.bind((host, port))
            self.listener.listen(128)
            self.listener.setblocking(False)
        except OSError:
            self.listener.close()
            raise
        self.address: tuple[str, int] = self.listener.getsockname()[:2]
        self._selector = selectors.DefaultSelector()

    def stats(self) -> dict[str, Any]:
        return {"connections": len(self._connections), "accepted": self.accepted, "refused": self.refused}

    # -- the loop ----------------------------------------------------------------------------------------

    def serve_until_stopped(self) -> None:
        """Serve until ``stopping`` is set; then answer what was already received and close everything.

        A bug that escapes the loop is a fail-stop like a storage failure: the state may hold staged
        transactions that were never written, so the service exits without a snapshot and start-up
        recovery reads what really reached the disk.
        """
        try:
            self._selector.register(self.listener, _READ, None)
            next_check = time.monotonic() + WATCHDOG_S
            while not self.stopping.is_set():
                now = self.turned_at = time.monotonic()
                timeout = 0.0 if self._ready else max(0.0, min(next_check - now, WATCHDOG_S))
                events = self._selector.select(timeout)
                now = time.monotonic()
                active, self._ready = self._ready, []
                for key, mask in events:
                    connection = key.data
                    if connection is None:
                        self._accept(now)
                    elif self._wake(connection, mask, now):
                        active.append(connection)
                self._serve_round(active, now)
                if now >= next_check:
                    self._expire(now)
                    self._resume_accepting(now)
                    next_check = now + WATCHDOG_S
            self._serve_round([c for c in self._connections if not c.closed], time.monotonic())
        except Exception as exc:
            log.critical("the service loop failed", exc_info=exc)
            self.failure = f"the service loop failed: {exc!r}"
            self.writer.fail_stop(self.failure)
            self.stopping.set()
        finally:
            self._close_all()

    def _wake(self, connection: Connection, mask: int, now: float) -> bool:
        """Let ``connection`` do what its socket is ready for; False if that ended it."""
        try:
            if mask & _WRITE:
                connection.on_writable(now)
            if mask & _READ:
                connection.on_readable(now)
        except (ConnectionClosed, OSError) as exc:
            self._drop(connection, exc)
            return False
        except Exception:  # a bug concerning this connection: end it, keep serving the others
            log.exception("connection %s failed", connection.peer)
            self._forget(connection)
            return False
        if connection.finished:
            self._forget(connection)
            return False
        return True

    def _serve_round(self, active: list[Connection], now: float) -> None:
        """Answer the active connections' requests, make the group durable, then release the replies."""
        until = time.monotonic() + ROUND_BUDGET_S
        served: list[Connection] = []
        seen: set[int] = set()
        for connection in active:
            if connection.closed or id(connection) in seen:
                continue
            seen.add(id(connection))
            if served and time.monotonic() > until:
                self._ready.append(connection)  # first in line next round
                continue
            try:
                if connection.tls_pending():
                    connection.on_readable(now)
                connection.handle_frames(now, FRAMES_PER_ROUND, until)
            except (ConnectionClosed, OSError) as exc:
                self._drop(connection, exc)
                continue
            except Exception:  # the journal's state stays whole: a transaction is staged entirely or not
                log.exception("connection %s failed", connection.peer)
                self._forget(connection)
                continue
            served.append(connection)
        durable = self.writer.flush()
        now = time.monotonic()  # after the fsync: the deadlines of what follows count from here
        for connection in served:
            if durable:
                connection.release_held()
            else:
                connection.fail_held()
            self._send(connection, now)
            if not connection.closed and connection.backlogged:
                self._ready.append(connection)
        if not durable:
            self.stopping.set()
        self.writer.between_groups()  # after the replies: a segment cut or snapshot delays no one

    def _send(self, connection: Connection, now: float) -> None:
        try:
            connection.send(now)
        except OSError as exc:
            self._drop(connection, exc)
            return
        except Exception:
            log.exception("connection %s failed", connection.peer)
            self._forget(connection)
            return
        if connection.finished:
            self._forget(connection)
        else:
            self._watch(connection)

    # -- connections -------------------------------------------------------------------------------------

    def _accept(self, now: float) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                sock, peer = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _TRANSIENT_ACCEPT_ERRORS:  # that peer gave up already
                    continue
                # Out of descriptors, say: stop watching the listener for a while (it stays readable,
                # so watching it would spin), and serve the connections there are.
                log.warning("accept failed: %s; pausing new connections for %g s", exc, ACCEPT_PAUSE_S)
                self._selector.unregister(self.listener)
                self._accept_paused_until = now + ACCEPT_PAUSE_S
                return
            self._admit(sock, f"{peer[0]}:{peer[1]}", now)

    def _resume_accepting(self, now: float) -> None:
        if self._accept_paused_until and now >= self._accept_paused_until:
            self._accept_paused_until = 0.0
            self._selector.register(self.listener, _READ, None)

    def _admit(self, sock: socket.socket, peer: str, now: float) -> None:
        """Start serving an accepted socket. Whatever goes wrong here concerns this one peer (one that
        connected and reset at once makes ``wrap_socket`` raise ECONNRESET): it must never escape into
        the loop, which would stop the whole service."""
        if len(self._connections) >= self.max_connections or (
            isinstance(self._selector, selectors.SelectSelector) and sock.fileno() >= SELECT_FD_LIMIT
        ):
            self.refused += 1
            self._refuse(sock, peer)
            return
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.tls is not None:
                sock = self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        except OSError as exc:
            log.info("connection %s dropped before it was served: %s", peer, exc)
            sock.close()
            return
        connection = Connection(sock, peer, self.limits, self.operations.handle, now)
        self.accepted += 1
        self._connections.add(connection)
        self._send(connection, now)  # the greeting (after the TLS handshake, when there is one)

    def _refuse(self, sock: socket.socket, peer: str) -> None:
        log.warning("refusing %s: %d connections already", peer, self.max_connections)
        body = protocol.error_body(OVERLOADED, "too many connections", retryable=True)
        frame = protocol.encode_frame(Opcode.HELLO, 0, body, flags=protocol.FLAG_REPLY | protocol.FLAG_ERROR)
        try:
            sock.setblocking(False)
            if self.tls is None:  # over TLS the frame cannot be sent before a handshake; just close
                sock.send(frame)  # a fresh socket's buffer takes it whole; if not, the close says enough
        except OSError:
            pass
        finally:
            sock.close()

    def _watch(self, connection: Connection) -> None:
        """Keep the selector's interest in ``connection`` in step with what it waits for."""
        read, write = connection.wanted_events()
        events = (_READ if read else 0) | (_WRITE if write else 0)
        if events == connection.registered_events:
            return
        if connection.registered_events == 0:
            self._selector.register(connection.sock, events, connection)
        elif events == 0:
            self._selector.unregister(connection.sock)
        else:
            self._selector.modify(connection.sock, events, connection)
        connection.registered_events = events

    def _expire(self, now: float) -> None:
        for connection in [c for c in self._connections if c.deadline() < now]:
            log.info("connection %s timed out", connection.peer)
            self._forget(connection)

    def _drop(self, connection: Connection, reason: BaseException) -> None:
        log.debug("connection %s ended: %s", connection.peer, reason)
        self._forget(connection)

    def _forget(self, connection: Connection) -> None:
        if connection.registered_events:
            with contextlib.suppress(KeyError, ValueError, OSError):
                self._selector.unregister(connection.sock)
            connection.registered_events = 0
        connection.close()
        self._connections.discard(connection)

    def _close_all(self) -> None:
        for connection in list(self._connections):
            self._forget(connection)
        if not self._accept_paused_until:
            with contextlib.suppress(KeyError, ValueError, OSError):
                self._selector.unregister(self.listener)
        self._selector.close()
        self.listener.close()
