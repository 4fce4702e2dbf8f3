"""``xpipe.http.error_response``: which messages reach the caller, and which headers an error carries.

A pure mapping from an exception to an answer, so it is checked directly; the served behaviour is in
the function tests."""

from __future__ import annotations

import json

import pytest

from vms_adapter import errors as journal
from xpipe.backends import base as backend
from xpipe.errors import InvalidParams, Overloaded
from xpipe.http import RETRY_AFTER_SECONDS, error_response


def body(error: Exception) -> tuple[int, dict[str, str]]:
    response = error_response(error)
    return response.status_code, json.loads(b"".join(response.response))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("error", "status", "message"),
    [
        (InvalidParams("message", "required"), 422, "'message'"),
        (journal.JournalUnavailable("journal at 127.0.0.1:1 refused the connection"), 503, "refused"),
        (backend.BackendUnavailable("the API server answered 503"), 503, "answered 503"),
        (Overloaded("more than 2 requests in flight"), 429, "in flight"),
    ],
)
def test_request_journal_and_backend_errors_explain_themselves(
    error: Exception, status: int, message: str
) -> None:
    assert body(error)[0] == status
    assert message in body(error)[1]["message"]


def test_a_bug_answers_internal_error_and_keeps_its_text_to_the_log() -> None:
    status, answer = body(RuntimeError("/var/run/secrets/token not readable"))
    assert status == 500
    assert answer == {"error": "RuntimeError", "message": "internal error"}


def test_only_a_429_carries_retry_after_and_every_error_is_streamed() -> None:
    assert error_response(Overloaded("busy")).headers["Retry-After"] == str(RETRY_AFTER_SECONDS)
    refused = error_response(InvalidParams("message", "required"))
    assert "Retry-After" not in refused.headers
    assert refused.is_streamed  # so functions-framework does not read the request body first
