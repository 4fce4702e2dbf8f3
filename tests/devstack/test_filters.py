"""Trigger filters, both dialects, as a table: (filter spec, event attributes, delivered?)."""

from __future__ import annotations

from typing import Any

import pytest

from xpipe.devstack.errors import ManifestError
from xpipe.devstack.filters import compile_trigger_filter

STEP_RUN = {"type": "com.xpipe.step.run", "source": "/xpipe/journal", "xpipestep": "demo-ok-build", "id": "1"}

CASES: list[tuple[str, dict[str, Any], dict[str, str], bool]] = [
    ("no filter matches all", {}, STEP_RUN, True),
    ("legacy exact", {"filter": {"attributes": {"type": "com.xpipe.step.run"}}}, STEP_RUN, True),
    (
        "legacy two attrs",
        {"filter": {"attributes": {"type": "com.xpipe.step.run", "xpipestep": "x"}}},
        STEP_RUN,
        False,
    ),
    ("legacy empty value is any", {"filter": {"attributes": {"xpipestep": ""}}}, STEP_RUN, True),
    ("legacy missing extension", {"filter": {"attributes": {"xpipejob": "j1"}}}, STEP_RUN, False),
    ("exact", {"filters": [{"exact": {"type": "com.xpipe.step.run"}}]}, STEP_RUN, True),
    ("exact is case sensitive", {"filters": [{"exact": {"type": "COM.xpipe.step.run"}}]}, STEP_RUN, False),
    ("prefix", {"filters": [{"prefix": {"type": "com.xpipe.step."}}]}, STEP_RUN, True),
    ("prefix miss", {"filters": [{"prefix": {"type": "com.xpipe.job."}}]}, STEP_RUN, False),
    ("prefix on absent attribute", {"filters": [{"prefix": {"subject": "a"}}]}, STEP_RUN, False),
    ("suffix", {"filters": [{"suffix": {"xpipestep": "-build"}}]}, STEP_RUN, True),
    ("suffix miss", {"filters": [{"suffix": {"xpipestep": "-test"}}]}, STEP_RUN, False),
    (
        "list is a conjunction",
        {"filters": [{"prefix": {"type": "com."}}, {"exact": {"source": "/x"}}]},
        STEP_RUN,
        False,
    ),
    (
        "all",
        {"filters": [{"all": [{"prefix": {"type": "com.xpipe"}}, {"suffix": {"type": ".run"}}]}]},
        STEP_RUN,
        True,
    ),
    (
        "any",
        {"filters": [{"any": [{"exact": {"type": "nope"}}, {"exact": {"xpipestep": "demo-ok-build"}}]}]},
        STEP_RUN,
        True,
    ),
    (
        "any none",
        {"filters": [{"any": [{"exact": {"type": "a"}}, {"exact": {"type": "b"}}]}]},
        STEP_RUN,
        False,
    ),
    ("not", {"filters": [{"not": {"exact": {"type": "com.xpipe.step.run"}}}]}, STEP_RUN, False),
    ("not not", {"filters": [{"not": {"not": {"prefix": {"type": "com."}}}}]}, STEP_RUN, True),
    (
        "filters win over filter",
        {"filter": {"attributes": {"type": "other"}}, "filters": [{"exact": {"type": "com.xpipe.step.run"}}]},
        STEP_RUN,
        True,
    ),
    ("empty filters list matches all", {"filters": []}, STEP_RUN, True),
]


@pytest.mark.parametrize(("spec", "attrs", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_trigger_filter_table(spec: dict[str, Any], attrs: dict[str, str], expected: bool) -> None:
    assert compile_trigger_filter(spec, "t")(attrs) is expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"filters": [{"cesql": "type = 'a'"}]}, "cesql filter dialect is not supported"),
        ({"filters": [{"exact": {"type": "a"}, "prefix": {"type": "b"}}]}, "exactly one"),
        ({"filters": [{"regex": {"type": "a"}}]}, "unknown filter dialect 'regex'"),
        ({"filters": [{"exact": {}}]}, "non-empty mapping"),
        ({"filters": [{"exact": {"type": ""}}]}, "non-empty string"),
        ({"filters": [{"all": []}]}, "non-empty list"),
        ({"filters": {"exact": {"type": "a"}}}, "must be a list"),
        ({"filter": {"attributes": {"type": 3}}}, "map attribute names to strings"),
    ],
)
def test_bad_filters_are_refused_at_load_time(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        compile_trigger_filter(spec, "t")
