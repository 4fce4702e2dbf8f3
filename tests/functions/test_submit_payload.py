"""submit reads its payload with a pydantic-core schema (no pydantic at run time): it must accept, refuse and
word exactly what the contract's model, ``xpipe.events.PipelineSubmit``, accepts, refuses and words."""

from __future__ import annotations

from typing import Any

import pytest
from cloudevents.http import CloudEvent
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from xpipe.errors import InvalidParams, MalformedEvent
from xpipe.events import PIPELINE_SUBMIT, PipelineSubmit
from xpipe.submission import SUBMIT_DATA_SCHEMA, SubmitData, parse_submit


def contract_fields() -> dict[str, Any]:
    PipelineSubmit.model_rebuild(force=True)  # the model defers building its schema until first use
    schema = PipelineSubmit.__pydantic_core_schema__
    assert schema["type"] == "model"
    return dict(schema["schema"]["fields"])


def test_the_schema_declares_the_contract_models_fields_constraints_and_aliases() -> None:
    contract = contract_fields()
    ours = SUBMIT_DATA_SCHEMA["fields"]
    assert set(ours) == set(contract)
    for name, field in contract.items():
        assert ours[name]["schema"] == field["schema"], name
        assert ours[name]["validation_alias"] == field["validation_alias"], name
    contract_config = PipelineSubmit.__pydantic_core_schema__["config"]
    ours_config = SUBMIT_DATA_SCHEMA["config"]
    for key in ("extra_fields_behavior", "validate_by_alias", "validate_by_name", "strict"):
        assert ours_config.get(key) == contract_config.get(key), key


def submit(data: object) -> CloudEvent:
    return CloudEvent({"type": PIPELINE_SUBMIT, "source": "/test", "id": "1"}, data)


def outcome_of_parse(data: dict[str, Any]) -> tuple[str, Any]:
    try:
        parsed = parse_submit(submit(data))
    except InvalidParams as exc:
        return "params", exc.param
    except MalformedEvent as exc:
        return "malformed", str(exc)
    return "ok", (parsed.template, parsed.params, parsed.requested_by)


def outcome_of_contract(data: dict[str, Any]) -> tuple[str, Any]:
    try:
        model = PipelineSubmit.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = [str(part) for part in first["loc"]]
        if len(loc) >= 2 and loc[0] == "params":
            return "params", loc[1]
        return "malformed", f"data.{'.'.join(loc)}: {first['msg']}"
    return "ok", (model.template, model.params, model.requested_by)


SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=6))
VALUES = st.one_of(
    SCALARS,
    st.text(min_size=120, max_size=270),
    st.lists(SCALARS, max_size=2),
    st.dictionaries(st.text(max_size=4), SCALARS, max_size=3),
)
KEYS = st.sampled_from(["template", "params", "requestedBy", "requested_by", "extra", "Template"])


@settings(max_examples=300, deadline=None)
@given(data=st.dictionaries(KEYS, VALUES, max_size=4))
def test_any_payload_gets_the_contract_models_outcome(data: dict[str, Any]) -> None:
    assert outcome_of_parse(data) == outcome_of_contract(data)


@pytest.mark.parametrize(
    "data",
    [
        {"template": "demo-ok", "params": {"a": "x", "b": 1, "c": 1.5, "d": True}, "requestedBy": "me"},
        {"template": "demo-ok", "requested_by": "me"},
        {"template": "t" * 128, "requestedBy": "r" * 256},
        {"template": "t" * 129, "requestedBy": "me"},
        {"template": "", "requestedBy": "me"},
        {"template": "demo-ok", "requestedBy": "r" * 257},
        {"template": "demo-ok", "params": {"a": None}, "requestedBy": "me"},
        {"template": "demo-ok", "params": {"a": [1]}, "requestedBy": "me"},
        {"template": "demo-ok", "params": [], "requestedBy": "me"},
        {"template": 5, "requestedBy": "me"},
        {"template": "demo-ok"},
        {"template": "demo-ok", "requestedBy": "me", "priority": 1},
    ],
)
def test_boundaries_and_refusals_match_the_contract_model(data: dict[str, Any]) -> None:
    assert outcome_of_parse(data) == outcome_of_contract(data)


def test_a_valid_payload_becomes_submit_data_with_params_kept_as_typed() -> None:
    data = {"template": "demo-ok", "params": {"n": 3, "ok": True}, "requestedBy": "me"}
    parsed = parse_submit(submit(data))
    assert parsed == SubmitData(template="demo-ok", params={"n": 3, "ok": True}, requested_by="me")
    assert type(parsed.params["n"]) is int
    assert type(parsed.params["ok"]) is bool
