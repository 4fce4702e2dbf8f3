"""The backend contract's values: step service names and specs refuse what a platform would refuse."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xpipe.backends.base import MAX_SERVICE_NAME_LENGTH, InvalidSpec, StepServiceSpec, step_service_name

DNS_1035 = r"[a-z]([-a-z0-9]*[a-z0-9])?"


def spec(**overrides: object) -> StepServiceSpec:
    fields: dict[str, object] = {
        "name": "demo-ok-build", "template": "demo-ok", "step": "build", "image": "img", "argv": ("make",),
        "env": {"A": "{{ params.a }}"}, "timeout_seconds": 30, "template_digest": "sha256:1",
    }  # fmt: skip
    fields.update(overrides)
    return StepServiceSpec(**fields)  # type: ignore[arg-type]


def test_readable_names_stay_readable() -> None:
    assert step_service_name("demo-ok", "build") == "demo-ok-build"


@settings(max_examples=80, deadline=None)
@given(template=st.text(min_size=1, max_size=80), step=st.text(min_size=1, max_size=80))
def test_any_template_and_step_give_a_valid_stable_name(template: str, step: str) -> None:
    name = step_service_name(template, step)
    assert len(name) <= MAX_SERVICE_NAME_LENGTH
    assert re.fullmatch(DNS_1035, name)
    assert name == step_service_name(template, step)


def test_long_names_that_share_a_prefix_do_not_collide() -> None:
    long = "t" * 60
    assert step_service_name(long, "a") != step_service_name(long, "b")


@pytest.mark.parametrize(
    "overrides",
    [
        {"name": "Upper"},
        {"name": "x" * (MAX_SERVICE_NAME_LENGTH + 1)},
        {"name": "1abc"},
        {"argv": ()},
        {"env": {"BAD-NAME": "x"}},
        {"timeout_seconds": 0},
        {"template_digest": ""},
        {"heartbeat_seconds": 0},
    ],
)
def test_invalid_specs_are_refused(overrides: dict[str, object]) -> None:
    with pytest.raises(InvalidSpec):
        spec(**overrides)


def test_spec_round_trips_through_json_and_is_frozen() -> None:
    original = spec()
    assert StepServiceSpec.from_json_dict(original.to_json_dict()) == original
    with pytest.raises(TypeError):
        original.env["B"] = "x"  # type: ignore[index]


def test_json_spec_missing_a_field_names_it() -> None:
    document = spec().to_json_dict()
    del document["argv"]
    with pytest.raises(InvalidSpec, match="argv"):
        StepServiceSpec.from_json_dict(document)


def test_json_argv_must_be_a_list_not_a_string() -> None:
    document = spec().to_json_dict() | {"argv": "make deploy"}
    with pytest.raises(InvalidSpec, match="argv"):
        StepServiceSpec.from_json_dict(document)
