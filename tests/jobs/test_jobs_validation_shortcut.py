"""The shortcuts of validation (heart-beats, plans) accept only what the field-by-field reading accepts.

``check_fact`` first asks ``_plainly_valid_lease_fact`` (a few lines for the common, well-formed
``HEARTBEAT``/``STEP_STARTED``) and only otherwise reads the record field by field (``read_fact``), which
words every refusal. A shortcut that accepted more would let a bad record through unannounced.
"""

from __future__ import annotations

import json
import math
from collections import UserDict
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vms_adapter.server.jobs.validation import (
    _plainly_valid_lease_fact,
    _plainly_valid_plan,
    check_fact,
    read_fact,
    read_plan,
)
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


# -- the plan ----------------------------------------------------------------------------------------

PLAN_VALUES: list[Any] = [
    *BOUNDARIES,
    *(
        "x" * 63,
        "x" * 64,
        "x" * 63 + "\n",
        "x" * 256,
        "x" * 257,
        "build",
        "build\n",
        "bad name",
        "ok.name_-1",
    ),
    *(86_400, 86_401, 100, 101, 1000, 1001, 0.0001, 86_400.0, 86_400.5, 2**63),
    *("rollback", "none", "Rollback", "knative-traffic", "other"),
    {"service": "undo", "timeoutSeconds": 5},
    {"kind": "knative-traffic", "service": "svc", "namespace": "ns"},
    {"notReadySeconds": 1.0, "maxRestarts": 1},
]


def a_plan() -> dict[str, Any]:
    def step(name: str) -> dict[str, Any]:
        return {
            "name": name,
            "service": f"svc-{name}",
            "timeoutSeconds": 300,
            "retries": 1,
            "backoffSeconds": 1.5,
            "backoffFactor": 2,
            "heartbeatTimeoutSeconds": 30.0,
            "health": {"notReadySeconds": 60.0, "maxRestarts": 2},
            "compensate": {"service": f"svc-{name}-undo", "timeoutSeconds": 120},
            "revert": {"kind": "knative-traffic", "service": name, "namespace": "shop"},
        }

    return {
        "template": "deploy",
        "templateDigest": "",
        "params": {"service": "shop"},
        "requestedBy": "tests",
        "onFailure": "rollback",
        "steps": [step("build"), step("deploy")],
    }


def plan_accepted(data: Any) -> bool:
    try:
        read_plan(data)
    except ModelRejection:
        return False
    return True


def places(plan: dict[str, Any]) -> list[tuple[dict[str, Any], str]]:
    """Every (object, field) of a plan that the reading checks, plus one unknown field per object (of
    what is still an object after earlier edits)."""
    found: list[tuple[dict[str, Any], str]] = [(plan, key) for key in [*plan, "extra"]]
    if isinstance(plan.get("params"), dict):
        found += [(plan["params"], key) for key in [*plan["params"], "x" * 129, ""]]
    steps = plan.get("steps")
    for step in steps if isinstance(steps, list) else []:
        if isinstance(step, dict):
            found += [(step, key) for key in [*step, "extra"]]
            for inner in ("health", "compensate", "revert"):
                if isinstance(step.get(inner), dict):
                    found += [(step[inner], key) for key in [*step[inner], "extra"]]
    return found


def test_the_plan_shortcut_takes_a_well_formed_plan() -> None:
    assert _plainly_valid_plan(a_plan())
    assert plan_accepted(a_plan())


def test_the_plan_shortcut_accepts_no_single_field_the_reading_refuses() -> None:
    """Every field of every object of a plan, removed or set to each value on or beside a bound."""
    for index in range(len(places(a_plan()))):
        for value in ["<removed>", *PLAN_VALUES]:
            plan = a_plan()
            target, key = places(plan)[index]
            if value == "<removed>":
                target.pop(key, None)
            else:
                target[key] = value
            if _plainly_valid_plan(plan):
                assert plan_accepted(plan), (key, value)


def test_the_plan_shortcut_leaves_duplicates_steps_and_large_params_to_the_reading() -> None:
    plan = a_plan()
    plan["steps"][1]["name"] = "build"
    assert not _plainly_valid_plan(plan)
    plan = a_plan()
    plan["steps"] = plan["steps"] * 33  # 66 steps
    assert not _plainly_valid_plan(plan)
    plan = a_plan()
    plan["params"] = {f"p{i}": "x" * 1000 for i in range(16)}  # may exceed 16,000 bytes of JSON
    assert not _plainly_valid_plan(plan)
    assert plan_accepted(plan) == (len(json.dumps(plan["params"])) <= 16_000)


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_the_plan_shortcut_accepts_only_what_the_reading_accepts(data: st.DataObject) -> None:
    plan = a_plan()
    for _ in range(data.draw(st.integers(1, 3))):
        spots = places(plan)
        target, key = spots[data.draw(st.integers(0, len(spots) - 1))]
        value = data.draw(st.one_of(st.just("<removed>"), st.sampled_from(PLAN_VALUES), st.floats()))
        if value == "<removed>":
            target.pop(key, None)
        else:
            target[key] = value
    if _plainly_valid_plan(plan):
        assert plan_accepted(plan), plan
