"""Reading binary mode directly gives the event the CloudEvents SDK's ``from_http`` gives."""

from __future__ import annotations

from typing import Any

import pytest
from cloudevents.http import from_http
from hypothesis import given, settings
from hypothesis import strategies as st

from xpipe.cloudevent_reader import read_cloudevent
from xpipe.errors import MalformedEvent

_names = st.sampled_from(
    ["ce-id", "ce-source", "ce-type", "ce-specversion", "ce-subject", "ce-time", "ce-dataschema",
     "ce-datacontenttype", "content-type", "ce-xpipejob", "Ce-Id", "CE-TYPE", "ce-", "ce-data",
     "ce-extensions", "x-token-xpipe", "ce-ext1"]
)  # fmt: skip
_values = st.sampled_from(["1.0", "0.3", "2.0", "", "a", "/s", "application/json", "text/plain"])
_bodies = st.sampled_from(
    [b"", b"{}", b'{"a": [1, 2.5, null]}', b'""', b"null", b"[1]", b"not json", b"\xff\xfe", b'"text"', b"7"]
)


def _outcome(read: Any, headers: dict[str, str], body: bytes) -> tuple[str, Any]:
    try:
        event = read(headers, body)
    except Exception:  # the SDK's own exceptions, or MalformedEvent
        return "refused", None
    attributes = dict(event.get_attributes())
    if "ce-time" not in {k.lower() for k in headers}:
        attributes.pop("time")  # filled in with the current time
    return "read", (attributes, event.get_data())


@settings(max_examples=200, deadline=None)
@given(
    base=st.booleans(),
    extra=st.lists(st.tuples(_names, _values), max_size=6),
    body=_bodies,
)
def test_reads_what_the_sdk_reads_and_refuses_what_it_refuses(
    base: bool, extra: list[tuple[str, str]], body: bytes
) -> None:
    headers = {"ce-specversion": "1.0", "ce-id": "e-1", "ce-source": "/s", "ce-type": "t"} if base else {}
    headers.update(extra)
    assert _outcome(read_cloudevent, headers, body) == _outcome(from_http, headers, body)


def test_attribute_order_and_extensions_match_the_sdk() -> None:
    headers = {
        "ce-xpipejob": "j-1", "content-type": "application/json", "ce-type": "t",
        "ce-time": "2026-01-01T00:00:00Z", "ce-source": "/s", "ce-id": "1", "ce-specversion": "1.0",
        "ce-subject": "sub",
    }  # fmt: skip
    ours, sdk = read_cloudevent(headers, b'{"k": 1}'), from_http(headers, b'{"k": 1}')
    assert list(ours.get_attributes().items()) == list(sdk.get_attributes().items())
    assert ours.get_data() == sdk.get_data() == {"k": 1}


def test_deep_nesting_is_a_malformed_event() -> None:
    headers = {"ce-specversion": "1.0", "ce-id": "1", "ce-source": "/s", "ce-type": "t"}
    with pytest.raises(MalformedEvent, match="nested too deeply"):
        read_cloudevent(headers, b"[" * 100_000 + b"]" * 100_000)
