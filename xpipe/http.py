"""HTTP for the functions: reading a CloudEvent safely, the two kinds of answer, and the ONE error mapping.

ARCHITECTURE §5 in code. A function answers either ``200`` with a binary-mode CloudEvent (a *reply*: the
broker routes it on) or ``202`` with an empty body (accepted, nothing to say). Everything else is an error,
and which error decides whether Knative redelivers: 400/401/403/413/415/422 are final (nothing was
written), 409/429/5xx are retried (idempotency keys make the retry safe). ``status_for`` is the only
place where an exception becomes a status code: the xpipe domain's errors, the journal client's and the
execution backends'.

The body is never read past ``max_body_bytes``: a ``Content-Length`` above it is refused before reading,
and a body without one (chunked) is read to one byte past the limit at most. Every answer given before the
body is read (errors, health probes, 405) is *streamed*: functions-framework's after-request hook reads the
whole request body into memory after any non-streamed response, which would make a refusal wait for (and
buffer) the very body it refuses; gunicorn discards an unread body without keeping it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from cloudevents.http import CloudEvent
from flask import Request, Response

from vms_adapter import errors as journal
from xpipe.backends import base as backend
from xpipe.cloudevent_reader import read_cloudevent
from xpipe.errors import (
    Forbidden,
    MalformedEvent,
    NotACloudEvent,
    Overloaded,
    PayloadTooLarge,
    RequestError,
    Unauthenticated,
    UnprocessableRequest,
)
from xpipe.outbox import binary_message

log = logging.getLogger("xpipe.http")

STRUCTURED_CONTENT_TYPE = "application/cloudevents+json"
BATCH_CONTENT_TYPE = "application/cloudevents-batch+json"
_READ_CHUNK = 64 * 1024
# The Retry-After of a 429 (overloaded): about the time the requests in flight need to finish, so a
# sender that honours the header retries once there is room, and loses little time if it never is.
RETRY_AFTER_SECONDS = 1

_REQUEST_STATUS: list[tuple[type[RequestError], int]] = [
    (MalformedEvent, 400),
    (Unauthenticated, 401),
    (Forbidden, 403),
    (PayloadTooLarge, 413),
    (NotACloudEvent, 415),
    (UnprocessableRequest, 422),
]


def status_for(error: BaseException) -> int:
    """The HTTP status a function answers for ``error`` (and so whether Knative redelivers the event)."""
    for kind, status in _REQUEST_STATUS:
        if isinstance(error, kind):
            return status
    if isinstance(error, RequestError):
        return 400
    if isinstance(error, Overloaded):
        return 429
    if isinstance(error, journal.JournalUnavailable):
        return 429 if error.code == journal.OVERLOADED else 503
    if isinstance(error, journal.Conflict):
        return 409  # the job moved on concurrently: redelivery decides again
    if isinstance(error, journal.AuthenticationFailed):
        return 503  # our journal secret is wrong: an operator must fix it; keep the event for later
    if isinstance(error, journal.Rejected):
        return 413 if error.code == journal.TOO_LARGE else 422
    if isinstance(error, journal.ProtocolError):
        return 502
    if isinstance(error, journal.JournalError):
        return 503
    if isinstance(error, backend.BackendUnavailable | backend.Conflict):
        return 503
    if isinstance(error, backend.InvalidSpec | backend.NotFound):
        return 422
    return 500  # PermissionDenied (RBAC), programming errors: retried, and logged loudly


def error_code_for(error: BaseException) -> str:
    """A short machine-readable name for the error body (``UnknownTemplate``, ``JOURNAL_UNAVAILABLE``)."""
    if isinstance(error, journal.JournalError):
        return f"JOURNAL_{error.code}"
    return type(error).__name__


def error_response(error: BaseException) -> Response:
    """A JSON error body ``{"error", "message"}`` with the mapped status (never a CloudEvent).

    The message is the error's own for request errors and for the journal's and the backends' (they are
    written for the caller and carry no secrets); anything else is a bug, whose text stays in the log.
    """
    status = status_for(error)
    explained = status < 500 or isinstance(error, journal.JournalError | backend.BackendError)
    message = str(error) if explained else "internal error"
    body = json.dumps({"error": error_code_for(error), "message": message})
    headers = {"Retry-After": str(RETRY_AFTER_SECONDS)} if status == 429 else None
    return unbuffered(body, status, "application/json", headers)


def unbuffered(body: str, status: int, mimetype: str, headers: dict[str, str] | None = None) -> Response:
    """A response that does not make functions-framework read the unread request body first.

    Its after-request hook skips streamed responses only, so the body is given as an iterator.
    """
    payload = body.encode()
    all_headers = {"Content-Length": str(len(payload)), **(headers or {})}
    return Response(iter([payload]), status=status, mimetype=mimetype, headers=all_headers)


def reply(event: CloudEvent) -> Response:
    """200 with ``event`` in binary mode: the broker treats it as a new event and routes it."""
    if "datacontenttype" not in event:
        event["datacontenttype"] = "application/json"
    headers, body = binary_message(event)
    return Response(body, status=200, headers=headers)


def accepted() -> Response:
    """202 with an empty body: done, and nothing to route on."""
    return Response(b"", status=202)


def read_body(request: Request, max_body_bytes: int) -> bytes:
    """The request body, refusing (413) anything over ``max_body_bytes`` without reading all of it."""
    length = request.content_length
    if length is not None and length > max_body_bytes:
        raise PayloadTooLarge(f"body of {length} bytes exceeds the limit of {max_body_bytes} bytes")
    stream = request.stream
    if length is not None:
        # The WSGI input ends at Content-Length: a body of the declared size is usually one read.
        first = stream.read(length)
        if len(first) == length:
            return first
        chunks, size = [first], len(first)
    else:
        chunks, size = [], 0
    while True:
        chunk = stream.read(min(_READ_CHUNK, max_body_bytes + 1 - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
        if size > max_body_bytes:
            raise PayloadTooLarge(f"body exceeds the limit of {max_body_bytes} bytes")
    return b"".join(chunks)


def _is_cloudevent(request: Request) -> bool:
    mimetype = (request.mimetype or "").lower()
    return "ce-specversion" in request.headers or mimetype in (STRUCTURED_CONTENT_TYPE, BATCH_CONTENT_TYPE)


def require_cloudevent(request: Request) -> None:
    """415 unless the headers announce one CloudEvent; decided on headers alone, before the body is read."""
    if not _is_cloudevent(request):
        raise NotACloudEvent(
            "not a CloudEvent: send binary mode (ce-* headers) or structured mode "
            f"(Content-Type: {STRUCTURED_CONTENT_TYPE})"
        )
    if (request.mimetype or "").lower() == BATCH_CONTENT_TYPE:
        raise NotACloudEvent("batched CloudEvents are not accepted: send one event per request")


def parse_event(request: Request, body: bytes) -> CloudEvent:
    """The CloudEvent of a request in binary or structured mode; 415 if it is none, 400 if malformed.

    The data is not checked here (a dead letter may carry anything); ``event_data`` requires the JSON
    object every xpipe payload is.
    """
    require_cloudevent(request)
    return read_cloudevent(cloudevent_headers(request.environ), body)


def cloudevent_headers(environ: Mapping[str, Any]) -> dict[str, str]:
    """The request headers a CloudEvent is read from (``content-type`` and ``ce-*``), lower-case.

    Taken from the WSGI environ in one pass: werkzeug's header view builds every header's name anew.
    """
    headers: dict[str, str] = {}
    for key, value in environ.items():
        if key.startswith("HTTP_CE_"):
            headers["ce-" + key[8:].lower().replace("_", "-")] = value
        elif key == "CONTENT_TYPE":
            headers["content-type"] = value
    return headers


def event_data(event: CloudEvent) -> dict[str, Any]:
    """The event's data, which must be a JSON object: a JSON array, a string or non-JSON bytes are a 400."""
    data = event.get_data()
    if not isinstance(data, dict):
        raise MalformedEvent("CloudEvent data must be a JSON object")
    return data
