"""The journal's exception hierarchy, shared by the client library and the service.

One base class, then one family per thing a caller does differently about it:

- ``JournalUnavailable``: try again later (connect failure, time-out, lost connection, the server said
  ``UNAVAILABLE`` or ``OVERLOADED``). A commit retried with the same idempotency key is safe.
- ``Conflict``: the job moved on (``expectedVersion`` did not match); re-read, decide again.
- ``Rejected``: the request itself is wrong (bad request, invalid transition, unknown job, too large);
  sending it again gives the same answer. ``AuthenticationFailed`` is a rejection of the credentials.
- ``ProtocolError``: the bytes on the wire do not follow protocol v1; the connection is unusable.

Wire error codes live here too, so that the mapping from an error reply to an exception is written once
(``error_from_reply``). Standard library only: the service runs on VSI Python 3.10 for OpenVMS.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Error codes carried in the "code" key of an error reply (see PROTOCOL.md, "Errors").
BAD_REQUEST = "BAD_REQUEST"
UNAUTHORIZED = "UNAUTHORIZED"
CONFLICT = "CONFLICT"
REJECTED = "REJECTED"
NOT_FOUND = "NOT_FOUND"
TOO_LARGE = "TOO_LARGE"
UNAVAILABLE = "UNAVAILABLE"
OVERLOADED = "OVERLOADED"
INTERNAL = "INTERNAL"
UNSUPPORTED_VERSION = "UNSUPPORTED_VERSION"
UNKNOWN_OPERATION = "UNKNOWN_OPERATION"

# Codes only the client produces (never sent on the wire), so that callers can tell causes apart.
CONNECT_FAILED = "CONNECT_FAILED"
TIMEOUT = "TIMEOUT"
CONNECTION_LOST = "CONNECTION_LOST"
TLS_FAILED = "TLS_FAILED"
BAD_FRAME = "BAD_FRAME"

RETRYABLE_CODES = frozenset({UNAVAILABLE, OVERLOADED})


class JournalError(Exception):
    """Something went wrong talking to the journal; ``code`` says what, ``retryable`` whether to retry."""

    default_code = INTERNAL
    default_retryable = False

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        retryable: bool | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.retryable = self.default_retryable if retryable is None else retryable
        self.details: dict[str, Any] = dict(details or {})

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class JournalUnavailable(JournalError):
    """The journal cannot be reached or cannot serve now; retrying later (same idempotency key) is safe."""

    default_code = UNAVAILABLE
    default_retryable = True


class Conflict(JournalError):
    """The job's version is not the ``expectedVersion`` the caller sent; ``current_version`` is."""

    default_code = CONFLICT

    def __init__(
        self, message: str, *, current_version: int, details: Mapping[str, Any] | None = None
    ) -> None:
        merged = dict(details or {})
        merged["currentVersion"] = current_version
        super().__init__(message, code=CONFLICT, retryable=False, details=merged)
        self.current_version = current_version


class Rejected(JournalError):
    """The journal refused the request as wrong (bad request, invalid transition, not found, too large)."""

    default_code = REJECTED


class AuthenticationFailed(Rejected):
    """The shared secret did not match (either side), or the server's TLS identity could not be verified."""

    default_code = UNAUTHORIZED


class ProtocolError(JournalError):
    """Bytes that do not follow protocol v1 (bad magic, CRC, length, JSON); the connection is dropped."""

    default_code = BAD_FRAME


_PROTOCOL_CODES = frozenset({UNSUPPORTED_VERSION, UNKNOWN_OPERATION})


def error_from_reply(body: Mapping[str, Any]) -> JournalError:
    """The exception an error reply stands for (the one place wire codes become exception classes)."""
    code = body.get("code")
    message = body.get("message")
    code = code if isinstance(code, str) and code else INTERNAL
    message = message if isinstance(message, str) else "(no message)"
    details = {k: v for k, v in body.items() if k not in ("code", "message", "retryable")}
    retryable = body.get("retryable") is True or code in RETRYABLE_CODES
    if retryable:
        return JournalUnavailable(message, code=code, details=details)
    if code == CONFLICT:
        current = details.get("currentVersion")
        if isinstance(current, int) and not isinstance(current, bool):
            return Conflict(message, current_version=current, details=details)
        return ProtocolError(f"CONFLICT reply without an integer currentVersion: {message}")
    if code == UNAUTHORIZED:
        return AuthenticationFailed(message, code=code, details=details)
    if code in _PROTOCOL_CODES:
        return ProtocolError(message, code=code, details=details)
    if code == INTERNAL:
        return JournalError(message, code=code, details=details)
    return Rejected(message, code=code, details=details)
