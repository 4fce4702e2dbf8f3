"""Placeholder rendering: the contract shared by template validation and the step runtime."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xpipe.params import (
    MalformedPlaceholder,
    MissingParam,
    leading_placeholder,
    placeholders,
    render,
    render_argv,
    render_env,
)


def test_placeholders_lists_each_name_once() -> None:
    assert placeholders("{{ params.a }}-{{params.b}}-{{  params.a  }}") == {"a", "b"}


def test_text_without_placeholders_is_unchanged_including_other_braces() -> None:
    text = "-o=go-template={{ .metadata.name }}"
    assert placeholders(text) == set()
    assert render(text, {}) == text


def test_leading_placeholder_names_the_param_that_opens_the_text() -> None:
    assert leading_placeholder("{{ params.path }}") == "path"
    assert leading_placeholder("{{params.a}}{{ params.b }}.yaml") == "a"
    assert leading_placeholder("--file={{ params.path }}") is None
    assert leading_placeholder(" {{ params.path }}") is None  # a leading space is never an option
    with pytest.raises(MalformedPlaceholder):
        leading_placeholder("{{ params.bad-name }}")


def test_missing_param_is_a_typed_error_naming_it() -> None:
    with pytest.raises(MissingParam) as caught:
        render("--to={{ params.target }}", {"other": "x"})
    assert caught.value.name == "target"


@pytest.mark.parametrize("text", ["{{ params.a-b }}", "{{ params. }}", "{{ params.a }", "{{params.1x}}"])
def test_malformed_placeholder_is_refused(text: str) -> None:
    with pytest.raises(MalformedPlaceholder):
        placeholders(text)
    with pytest.raises(MalformedPlaceholder):
        render(text, {"a": "x"})


def test_hostile_value_stays_one_argv_element_and_is_not_rescanned() -> None:
    argv = ["echo", "{{ params.msg }}", "tail"]
    hostile = "; rm -rf / {{ params.other }} $(id)"
    assert render_argv(argv, {"msg": hostile, "other": "NO"}) == ["echo", hostile, "tail"]


def test_env_values_are_rendered_and_names_are_not() -> None:
    env = {"TARGET_{{ params.x }}": "{{ params.x }}", "FIXED": "1"}
    assert render_env(env, {"x": "prod"}) == {"TARGET_{{ params.x }}": "prod", "FIXED": "1"}


def test_scalars_render_as_json_like_text() -> None:
    assert (
        render("{{ params.a }} {{ params.b }} {{ params.c }}", {"a": True, "b": 3, "c": 1.5}) == "true 3 1.5"
    )


@settings(max_examples=60, deadline=None)
@given(prefix=st.text(max_size=20), value=st.text(max_size=40), suffix=st.text(max_size=20))
def test_rendering_inserts_the_value_verbatim(prefix: str, value: str, suffix: str) -> None:
    if "{{" in prefix + suffix or prefix.endswith("{") or suffix.startswith("}"):
        return
    assert render(f"{prefix}{{{{ params.v }}}}{suffix}", {"v": value}) == f"{prefix}{value}{suffix}"
