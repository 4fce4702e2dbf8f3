"""The outbox's and the replies' binary-mode encoding gives what the CloudEvents SDK's ``to_binary`` gives."""

from __future__ import annotations

import json
from typing import Any

from cloudevents.conversion import to_binary
from cloudevents.http import CloudEvent, from_http
from hypothesis import given, settings
from hypothesis import strategies as st

from xpipe.outbox import binary_message, directive_event

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
_ext_names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=10).filter(
    lambda name: name not in {"id", "source", "type", "specversion", "datacontenttype", "time", "subject"}
)


def _sdk(event: CloudEvent) -> tuple[dict[str, str], bytes]:
    headers, body = to_binary(event)
    return {k: str(v) for k, v in headers.items()}, body or b""


@settings(max_examples=60, deadline=None)
@given(
    data=_json,
    subject=st.none() | st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=12),
    extensions=st.dictionaries(_ext_names, st.text(alphabet="abc-/ 1", max_size=8), max_size=3),
)
def test_same_headers_and_body_as_the_sdk(data: Any, subject: str | None, extensions: dict[str, str]) -> None:
    attributes = {"type": "com.xpipe.step.run", "source": "/xpipe/journal", "id": "d-1", **extensions}
    if subject is not None:
        attributes["subject"] = subject
    attributes["datacontenttype"] = "application/json"
    event = CloudEvent(attributes, data)
    assert binary_message(event) == _sdk(event)


def test_event_without_content_type_or_data_and_with_bytes() -> None:
    bare = CloudEvent({"type": "t", "source": "/s", "id": "1"}, None)
    assert binary_message(bare) == _sdk(bare)
    assert "content-type" not in binary_message(bare)[0]
    raw = CloudEvent({"type": "t", "source": "/s", "id": "2", "datacontenttype": "text/plain"}, b"\x00raw")
    assert binary_message(raw) == _sdk(raw)


def test_a_directive_round_trips_through_binary_mode() -> None:
    directive = {
        "id": "dir-7",
        "event": {
            "type": "com.xpipe.step.run", "source": "/xpipe/journal", "subject": "job-1",
            "extensions": {"xpipejob": "job-1", "xpipestep": "build"}, "data": {"step": "build", "n": 1},
        },
    }  # fmt: skip
    headers, body = binary_message(directive_event(directive, {"cluster": "c1"}))
    back = from_http(headers, body)
    assert back["id"] == "dir-7"
    assert back["xpipestep"] == "build"
    assert back["cluster"] == "c1"
    assert back.get_data() == {"step": "build", "n": 1}
    assert json.loads(body) == {"step": "build", "n": 1}
