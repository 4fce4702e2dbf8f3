"""``JournalClient``: the cluster side's connection to the OpenVMS journal.

A thread-safe pool of authenticated connections (mutual HELLO proof, optional TLS). A lost connection,
a time-out or an ``UNAVAILABLE`` / ``OVERLOADED`` answer is retried with jittered exponential back-off
on a fresh connection, sending the same request again, which for ``commit`` means the same idempotency
key, so a commit that did reach the journal comes back as its original result (``duplicate=True``)
instead of happening twice. A new attempt starts only before ``retry_deadline`` has passed (and at most
``max_attempts`` times); waiting for a pool slot and connecting stay within that budget, but the
attempt's reply may take up to ``read_timeout`` more, so a call lasts at most about
``retry_deadline + read_timeout``.

Socket, TLS and decode errors become the typed errors of ``vms_adapter.errors`` in one place,
``map_exceptions``; callers never see an ``OSError``.
"""

from __future__ import annotations

import contextlib
import random
import socket
import ssl
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from vms_adapter import protocol
from vms_adapter.errors import (
    BAD_FRAME,
    BAD_REQUEST,
    CONNECT_FAILED,
    CONNECTION_LOST,
    TIMEOUT,
    TLS_FAILED,
    UNAUTHORIZED,
    AuthenticationFailed,
    JournalError,
    JournalUnavailable,
    ProtocolError,
    Rejected,
    error_from_reply,
)
from vms_adapter.protocol import Opcode

BACKOFF_BASE_S = 0.05
BACKOFF_CAP_S = 1.0
CLIENT_NAME = "vms_adapter.client"


@dataclass(frozen=True)
class CommitResult:
    """A durable commit: the seq of its last record, the job's version after it, and its directives."""

    job_id: str
    seq: int
    version: int
    duplicate: bool
    state: str | None
    directives: list[dict[str, Any]]


@dataclass(frozen=True)
class JobPage:
    """One page of ``list_jobs``; pass ``next_cursor`` as ``after`` for the next page (None: the end)."""

    jobs: list[dict[str, Any]]
    next_cursor: str | None


@dataclass(frozen=True)
class SweepResult:
    """What a sweep committed (``seq`` None when nothing) and the directives due for (re)publishing."""

    seq: int | None
    records: int
    directives: list[dict[str, Any]]


@dataclass(frozen=True)
class AckResult:
    acknowledged: int
    seq: int | None


@contextlib.contextmanager
def map_exceptions(action: str) -> Iterator[None]:
    """Turn socket, TLS and time-out errors into the journal's typed errors (the only place this happens)."""
    try:
        yield
    except JournalError:
        raise
    except ssl.SSLCertVerificationError as exc:
        raise AuthenticationFailed(
            f"{action}: the server's TLS certificate is not trusted ({exc.verify_message})", code=TLS_FAILED
        ) from None
    except ssl.SSLError as exc:
        raise JournalUnavailable(f"{action}: TLS error ({exc.reason or exc})", code=TLS_FAILED) from None
    except TimeoutError:
        raise JournalUnavailable(f"{action}: timed out", code=TIMEOUT) from None
    except ConnectionRefusedError:
        raise JournalUnavailable(f"{action}: connection refused", code=CONNECT_FAILED) from None
    except OSError as exc:
        raise JournalUnavailable(
            f"{action}: {exc.strerror or exc.__class__.__name__}", code=CONNECTION_LOST
        ) from None


RECV_BYTES = 65536


class _Connection:
    """One authenticated connection; used by one thread at a time (the pool guarantees it)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._next_id = 1
        self._buffer = bytearray()

    @classmethod
    def open(
        cls,
        host: str,
        port: int,
        *,
        secret: bytes | None,
        tls: ssl.SSLContext | None,
        server_hostname: str | None,
        connect_timeout: float,
    ) -> _Connection:
        with map_exceptions(f"connecting to the journal at {host}:{port}"):
            sock = socket.create_connection((host, port), timeout=connect_timeout)
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if tls is not None:
                    sock = tls.wrap_socket(sock, server_hostname=server_hostname or host)
                connection = cls(sock)
                connection._hello(secret, time.monotonic() + connect_timeout)
            except BaseException:
                sock.close()
                raise
        return connection

    def _read(self, deadline: float) -> protocol.Frame:
        """The next frame; reads are buffered (one ``recv`` usually brings the whole reply)."""
        self._fill(protocol.HEADER_BYTES, deadline)
        buffer = self._buffer
        header = protocol.decode_header(bytes(buffer[: protocol.HEADER_BYTES]))
        end = protocol.HEADER_BYTES + header.body_length
        self._fill(end, deadline)
        body = bytes(buffer[protocol.HEADER_BYTES : end])
        del buffer[:end]
        decoded = protocol.decode_body(header, body)
        return protocol.Frame(header.opcode, header.request_id, decoded, header.flags)

    def _fill(self, count: int, deadline: float) -> None:
        """Read until the buffer holds ``count`` bytes, by the deadline."""
        while len(self._buffer) < count:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            self.sock.settimeout(left)
            chunk = self.sock.recv(RECV_BYTES)
            if not chunk:
                raise JournalUnavailable("the journal closed the connection", code=CONNECTION_LOST)
            self._buffer += chunk

    def _hello(self, secret: bytes | None, deadline: float) -> None:
        greeting = self._read(deadline)
        if greeting.is_error:
            raise error_from_reply(greeting.body)
        if greeting.opcode != Opcode.HELLO or not greeting.is_reply or greeting.request_id != 0:
            raise ProtocolError("the server did not open with a HELLO greeting")
        server_nonce = protocol.parse_nonce(greeting.body.get("nonce"))
        auth = greeting.body.get("auth")
        if auth == protocol.AUTH_HMAC_SHA256 and secret is None:
            raise AuthenticationFailed("the journal requires a shared secret and none is configured")
        if auth == protocol.AUTH_NONE and secret is not None:
            raise AuthenticationFailed("the journal does not prove it knows the shared secret; refusing it")
        if auth not in (protocol.AUTH_HMAC_SHA256, protocol.AUTH_NONE):
            raise ProtocolError(f"unknown HELLO auth method {auth!r}")
        client_nonce = protocol.new_nonce()
        body: dict[str, Any] = {
            "protocol": protocol.PROTOCOL_VERSION,
            "client": CLIENT_NAME,
            "nonce": client_nonce,
        }
        if secret is not None:
            body["proof"] = protocol.hello_proof(
                secret, protocol.CLIENT_PROOF_TAG, server_nonce, bytes.fromhex(client_nonce)
            )
        reply = self.call(Opcode.HELLO, protocol.encode_body(body), deadline)
        if secret is not None:
            expected = protocol.hello_proof(
                secret, protocol.SERVER_PROOF_TAG, server_nonce, bytes.fromhex(client_nonce)
            )
            if not protocol.proof_matches(expected, reply.get("proof")):
                raise AuthenticationFailed(
                    "the journal's HELLO proof is wrong: it does not know the shared secret"
                )

    def call(self, opcode: int, body: bytes, deadline: float) -> dict[str, Any]:
        """Send one request (pre-encoded body) and return the reply body; error replies raise."""
        request_id = self._next_id
        self._next_id = 1 if request_id >= protocol.MAX_REQUEST_ID else request_id + 1
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        self.sock.settimeout(left)
        self.sock.sendall(protocol.frame_with_body(opcode, request_id, body))
        reply = self._read(deadline)
        if reply.is_error and reply.request_id == 0:
            raise error_from_reply(reply.body)  # the server gave up on the connection
        if not reply.is_reply or reply.request_id != request_id or reply.opcode != opcode:
            raise ProtocolError(
                f"reply out of step: expected a reply to request {request_id}, "
                f"got opcode {reply.opcode} request {reply.request_id} flags 0x{reply.flags:x}"
            )
        if reply.is_error:
            raise error_from_reply(reply.body)
        return reply.body

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def _reusable_after(error: JournalError) -> bool:
    """Whether a connection is still in step after ``error`` (an ordinary error reply keeps it)."""
    if isinstance(error, ProtocolError) or error.code in (UNAUTHORIZED, CONNECTION_LOST, TIMEOUT, TLS_FAILED):
        return False
    return not error.retryable


class JournalClient:
    """Pooled, authenticated, retrying client of the journal service (see the module docstring)."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        secret: str | bytes | None = None,
        tls: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
        retry_deadline: float = 15.0,
        max_attempts: int = 8,
        pool_size: int = 8,
    ) -> None:
        self.host = host
        self.port = port
        self._secret = secret.encode("utf-8") if isinstance(secret, str) else secret
        self._tls = tls
        self._server_hostname = server_hostname
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.retry_deadline = retry_deadline
        self.max_attempts = max_attempts
        self._slots = threading.BoundedSemaphore(pool_size)
        self._idle: list[_Connection] = []
        self._lock = threading.Lock()
        self._closed = False

    def __repr__(self) -> str:  # never shows the secret
        return f"JournalClient({self.host!r}, {self.port}, tls={self._tls is not None})"

    # -- pool and retries ------------------------------------------------------------------------------

    def _checkout(self, deadline: float) -> _Connection:
        if not self._slots.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise JournalUnavailable("no pooled connection became free in time", code=TIMEOUT)
        try:
            with self._lock:
                if self._closed:
                    raise JournalError("the client is closed", code="CLIENT_CLOSED")
                if self._idle:
                    return self._idle.pop()
            return _Connection.open(
                self.host,
                self.port,
                secret=self._secret,
                tls=self._tls,
                server_hostname=self._server_hostname,
                connect_timeout=min(self.connect_timeout, max(0.001, deadline - time.monotonic())),
            )
        except BaseException:
            self._slots.release()
            raise

    def _checkin(self, connection: _Connection, reusable: bool) -> None:
        with self._lock:
            if reusable and not self._closed:
                self._idle.append(connection)
                connection = None  # type: ignore[assignment]
        if connection is not None:
            connection.close()
        self._slots.release()

    def _request(self, opcode: Opcode, body: Mapping[str, Any]) -> dict[str, Any]:
        try:
            encoded = protocol.encode_body(body)
        except ProtocolError as exc:  # the caller's data cannot be sent: a bad request, not a wire fault
            raise Rejected(exc.message, code=exc.code if exc.code != BAD_FRAME else BAD_REQUEST) from None
        budget_end = time.monotonic() + self.retry_deadline
        attempt = 0
        while True:
            attempt += 1
            try:
                connection = self._checkout(budget_end)
                reusable = False
                try:
                    with map_exceptions(f"{opcode.name} to the journal at {self.host}:{self.port}"):
                        reply = connection.call(opcode, encoded, time.monotonic() + self.read_timeout)
                    reusable = True
                    return reply
                except JournalError as exc:
                    reusable = _reusable_after(exc)
                    raise
                finally:
                    self._checkin(connection, reusable)
            except JournalUnavailable as exc:
                if not exc.retryable:
                    raise
                left = budget_end - time.monotonic()
                if attempt >= self.max_attempts or left <= 0:
                    raise
                backoff = random.uniform(0, min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** (attempt - 1)))  # noqa: S311
                time.sleep(min(backoff, left))

    # -- operations ------------------------------------------------------------------------------------

    def commit(
        self,
        job_id: str | None,
        records: Sequence[Mapping[str, Any]],
        *,
        idempotency_key: str,
        expected_version: int | None = None,
    ) -> CommitResult:
        """Append ``records`` to ``job_id`` (None: a new job) as one durable transaction."""
        body = {
            "jobId": job_id,
            "idempotencyKey": idempotency_key,
            "expectedVersion": expected_version,
            "records": [dict(record) for record in records],
        }
        reply = self._request(Opcode.COMMIT, body)
        try:
            return CommitResult(
                job_id=str(reply["jobId"]),
                seq=int(reply["seq"]),
                version=int(reply["version"]),
                duplicate=bool(reply["duplicate"]),
                state=reply.get("state"),
                directives=list(reply.get("directives") or []),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(f"malformed COMMIT reply: {exc!r}") from None

    def read_job(self, job_id: str) -> dict[str, Any]:
        """Everything the journal knows about one job; ``Rejected`` with code ``NOT_FOUND`` if unknown."""
        job = self._request(Opcode.READ_JOB, {"jobId": job_id}).get("job")
        if not isinstance(job, dict):
            raise ProtocolError("malformed READ_JOB reply")
        return job

    def list_jobs(
        self, filters: Mapping[str, Any] | None = None, *, after: str | None = None, limit: int = 100
    ) -> JobPage:
        reply = self._request(
            Opcode.LIST_JOBS, {"filters": dict(filters or {}), "after": after, "limit": limit}
        )
        jobs, cursor = reply.get("jobs"), reply.get("next")
        if not isinstance(jobs, list) or not (cursor is None or isinstance(cursor, str)):
            raise ProtocolError("malformed LIST_JOBS reply")
        return JobPage(jobs, cursor)

    def sweep(self, *, now: float | None = None, redelivery_after: float = 60.0) -> SweepResult:
        reply = self._request(Opcode.SWEEP, {"now": now, "redeliveryAfter": redelivery_after})
        try:
            return SweepResult(reply.get("seq"), int(reply["records"]), list(reply["directives"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(f"malformed SWEEP reply: {exc!r}") from None

    def ack(self, directive_ids: Sequence[str]) -> AckResult:
        reply = self._request(Opcode.ACK, {"ids": list(directive_ids)})
        try:
            return AckResult(int(reply["acknowledged"]), reply.get("seq"))
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(f"malformed ACK reply: {exc!r}") from None

    def stats(self) -> dict[str, Any]:
        return self._request(Opcode.STATS, {})

    def ping(self) -> float:
        """Round-trip to the journal; returns the server's clock (Unix seconds)."""
        reply = self._request(Opcode.PING, {})
        server_time = reply.get("time")
        if not isinstance(server_time, (int, float)):
            raise ProtocolError("malformed PING reply")
        return float(server_time)

    def close(self) -> None:
        """Close pooled connections; calls after this raise ``JournalError`` (code ``CLIENT_CLOSED``)."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()

    def __enter__(self) -> JournalClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
