"""The heart-beat shortcut of validation accepts only what the field-by-field reading accepts.

``check_fact`` first asks ``_plainly_valid_lease_fact`` (a few lines for the common, well-formed
``HEARTBEAT``/``STEP_STARTED``) and only otherwise reads the record field by field (``read_fact``), which
words every refusal. A shortcut that accepted more would let a bad record through unannounced.
"""

from __future__ import annotations

import math
from collections import UserDict
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vms_adapter.server.jobs.validation import _plainly_valid_lease_fact, check_fact, read_fact
from vms_adapter.server.model import ModelRejection

JOB = "j-00000001"
KINDS = ("HEARTBEAT", "STEP_STARTED")

# Values on and beside every bound the reading checks, then anything.
BOUNDARIES: list[Any] = [
    *("", "x" * 128, "x" * 129, "x" * 253, "x" * 254),
    *(0, 1, -1, 2, 1_000_000, 1_000_001, 0.0, -0.0, 1.0, 1.0000001, 1.5, -0.5, math.nan, math.inf),
    *(True, False, None, {}, {"a": 1}, UserDict({"a": 1}), [], JOB, "j-other"),
]
values = st.one_of(st.sampled_from(BOUNDARIES), st.text(max_size=3), st.floats())
keys = st.sampled_from(["jobId", "step", "attempt", "pod", "progress", "details", "extra", "Step"])
# A well-formed heart-beat with up to three fields replaced, removed or added: near misses, mostly.
edits = st.lists(st.tuples(keys, st.one_of(st.just("<removed>"), values)), min_size=1, max_size=3)


@st.composite
def records(draw: st.DrawFn) -> dict[str, Any]:
    data: dict[str, Any] = {"step": "build", "attempt": 1, "pod": "pod-a", "progress": 0.5}
    for key, value in draw(edits):
        if value == "<removed>":
            data.pop(key, None)
        else:
            data[key] = value
    return data


def accepted(kind: str, data: Any) -> bool:
    try:
        read_fact(kind, JOB, data)
    except ModelRejection:
        return False
    return True


FIELDS = ["jobId", "step", "attempt", "pod", "progress", "details", "extra"]
BASES = {
    "HEARTBEAT": {"step": "build", "attempt": 1, "pod": "pod-a", "progress": 0.5, "details": {}},
    "STEP_STARTED": {"step": "build", "attempt": 1, "pod": "pod-a"},
}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("field", FIELDS)
def test_the_shortcut_accepts_no_single_field_the_reading_refuses(kind: str, field: str) -> None:
    """Every field of a well-formed fact, removed or set to each value on or beside a bound."""
    for value in ["<removed>", *BOUNDARIES]:
        data = dict(BASES[kind])
        if value == "<removed>":
            data.pop(field, None)
        else:
            data[field] = value
        if _plainly_valid_lease_fact(kind, JOB, data):
            assert accepted(kind, data), data


@settings(max_examples=500, deadline=None)
@given(kind=st.sampled_from(KINDS), data=records())
def test_the_shortcut_accepts_only_what_the_field_by_field_reading_accepts(kind: str, data: Any) -> None:
    if _plainly_valid_lease_fact(kind, JOB, data):
        assert accepted(kind, data), data


@settings(max_examples=300, deadline=None)
@given(
    kind=st.sampled_from(KINDS),
    step=st.text(min_size=1, max_size=128),
    attempt=st.integers(1, 1_000_000),
    pod=st.text(min_size=1, max_size=253),
    progress=st.one_of(st.none(), st.floats(0, 1)),
)
def test_well_formed_heartbeats_take_the_shortcut(
    kind: str, step: str, attempt: int, pod: str, progress: float | None
) -> None:
    data: dict[str, Any] = {"step": step, "attempt": attempt, "pod": pod}
    if kind == "HEARTBEAT":
        data["progress"] = progress
    assert _plainly_valid_lease_fact(kind, JOB, data)
    assert accepted(kind, data)


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"step": "build", "attempt": 1, "pod": "p", "progress": 1.5}, "progress"),
        ({"step": "build", "attempt": True, "pod": "p"}, "attempt"),
        ({"step": "build", "attempt": 1, "pod": "p", "extra": 1}, "extra"),
        ({"step": "build", "attempt": 1, "pod": "p", "jobId": "j-other"}, "jobId"),
        ({"step": "build", "attempt": 1, "pod": ""}, "pod"),
        ({"step": "build", "attempt": 1, "pod": "p", "progress": math.nan}, "progress"),
    ],
)
def test_a_bad_heartbeat_is_refused_naming_the_field(data: dict[str, Any], field: str) -> None:
    with pytest.raises(ModelRejection) as refused:
        check_fact("HEARTBEAT", JOB, data)
    assert refused.value.code == "INVALID_RECORD"
    assert refused.value.details == {"field": field}
    assert refused.value.message.startswith(f"HEARTBEAT: {field}: ")
