"""Reading one CloudEvent from an HTTP request's headers and body, the same way in every xpipe server.

The functions (Flask under functions-framework) and the step runtime (the standard library's HTTP
server) both answer a request that cannot be read as a CloudEvent with a final 400: a dropped connection
or a 500 would make the broker retry what can never succeed.

Binary mode with ``specversion`` 1.0 (what the broker delivers and what xpipe sends) is read directly:
the SDK's ``from_http`` builds an intermediate event object attribute by attribute and cost about as much
CPU as the rest of reading a request. The result is the event ``from_http`` returns: the same
attributes, extensions and data (JSON when the body parses as JSON, else the bytes as they are, none
for an empty body). Everything else (structured mode, other spec versions, missing or unusual
attributes) goes through ``from_http``, which also words its refusals.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from cloudevents.exceptions import GenericException
from cloudevents.http import CloudEvent, from_http

from xpipe.errors import MalformedEvent

MAX_REASON_CHARS = 200
# Context attributes of CloudEvents 1.0, in the order from_http lists them.
_CORE_ATTRIBUTES = ("specversion", "id", "source", "type", "datacontenttype", "dataschema", "subject", "time")
_CORE = frozenset(_CORE_ATTRIBUTES)
_REQUIRED = frozenset(("specversion", "id", "source", "type"))
# ce- names the SDK treats specially (the payload, its extension map): left to it.
_SDK_ONLY = frozenset(("", "data", "extensions"))


def read_cloudevent(headers: Mapping[str, str], body: bytes) -> CloudEvent:
    """The CloudEvent in binary or structured mode, or `MalformedEvent` saying why it cannot be read."""
    try:
        event = _read_binary(headers, body)
        return event if event is not None else from_http(dict(headers), body)
    except GenericException as exc:
        raise MalformedEvent(f"malformed CloudEvent: {_short(exc)}") from None
    except RecursionError:
        raise MalformedEvent("malformed CloudEvent: JSON nested too deeply") from None
    except (ValueError, TypeError, KeyError) as exc:
        raise MalformedEvent(f"malformed CloudEvent: {_short(exc)}") from None


def _read_binary(headers: Mapping[str, str], body: bytes) -> CloudEvent | None:
    """A binary-mode 1.0 event read as ``from_http`` reads it, or None to leave the request to the SDK."""
    core: dict[str, str] = {}
    extensions: dict[str, str] = {}
    for key, value in headers.items():
        name = key.lower()
        if name == "content-type":
            core["datacontenttype"] = value
        elif name.startswith("ce-"):
            attribute = name[3:]
            if attribute in _CORE:
                core[attribute] = value
            elif attribute in _SDK_ONLY:
                return None
            else:
                extensions[attribute] = value
    if core.get("specversion") != "1.0" or not core.keys() >= _REQUIRED:
        return None
    attributes: dict[str, Any] = {name: core[name] for name in _CORE_ATTRIBUTES if name in core}
    attributes.update(extensions)
    return CloudEvent(attributes, _data(body))


def _data(body: bytes) -> Any:
    """The SDK's reading of a binary-mode body: JSON if it parses, else the bytes; empty means none."""
    if not body:
        return None
    try:
        data = json.loads(body)  # a RecursionError (deep nesting) is refused by read_cloudevent
    except (json.JSONDecodeError, TypeError, UnicodeDecodeError):
        return body
    return None if data == "" else data


def _short(error: BaseException) -> str:
    text = str(error).replace("\n", " ")
    return text if len(text) <= MAX_REASON_CHARS else text[:MAX_REASON_CHARS] + "..."
