"""Reading one CloudEvent from an HTTP request's headers and body, the same way in every xpipe server.

The functions (Flask under functions-framework) and the step runtime (the standard library's HTTP
server) both answer a request that cannot be read as a CloudEvent with a final 400: a dropped connection
or a 500 would make the broker retry what can never succeed.
"""

from __future__ import annotations

from collections.abc import Mapping

from cloudevents.exceptions import GenericException
from cloudevents.http import CloudEvent, from_http

from xpipe.errors import MalformedEvent

MAX_REASON_CHARS = 200


def read_cloudevent(headers: Mapping[str, str], body: bytes) -> CloudEvent:
    """The CloudEvent in binary or structured mode, or `MalformedEvent` saying why it cannot be read."""
    try:
        return from_http(dict(headers), body)
    except GenericException as exc:
        raise MalformedEvent(f"malformed CloudEvent: {_short(exc)}") from None
    except RecursionError:
        raise MalformedEvent("malformed CloudEvent: JSON nested too deeply") from None
    except (ValueError, TypeError, KeyError) as exc:
        raise MalformedEvent(f"malformed CloudEvent: {_short(exc)}") from None


def _short(error: BaseException) -> str:
    text = str(error).replace("\n", " ")
    return text if len(text) <= MAX_REASON_CHARS else text[:MAX_REASON_CHARS] + "..."
