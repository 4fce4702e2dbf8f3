"""The resolved plan is validated strictly; each error names the field and nothing is written (JOBS.md §4)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from vms_adapter.server.model import ModelRejection

from .driver import Driver, plan, step

Mutation = Callable[[dict[str, Any]], None]


def _set(path: str, value: Any) -> Mutation:
    def mutate(p: dict[str, Any]) -> None:
        target: Any = p
        keys = path.split(".")
        for key in keys[:-1]:
            target = target[int(key)] if key.isdigit() else target[key]
        last = keys[-1]
        if value is _DELETE:
            del target[last]
        else:
            target[last] = value

    return mutate


_DELETE = object()

BAD_PLANS = [
    (_set("template", ""), "template"),
    (_set("template", 7), "template"),
    (_set("requestedBy", _DELETE), "requestedBy"),
    (_set("onFailure", "retry"), "onFailure"),
    (_set("params", {"tag": 3}), "params.tag"),
    (_set("params", []), "params"),
    (_set("params", {f"p{i}": "v" * 1000 for i in range(17)}), "params"),
    (_set("steps", []), "steps"),
    (_set("extra", 1), "extra"),
    (_set("steps.0.name", "a:b"), "steps[0].name"),
    (_set("steps.0.name", "build\n"), "steps[0].name"),  # "$" alone would let a final newline through
    (_set("steps.1.name", "build"), "steps[1].name"),
    (_set("steps.0.service", ""), "steps[0].service"),
    (_set("steps.0.timeoutSeconds", 0), "steps[0].timeoutSeconds"),
    (_set("steps.0.timeoutSeconds", 1.5), "steps[0].timeoutSeconds"),
    (_set("steps.0.retries", -1), "steps[0].retries"),
    (_set("steps.0.retries", True), "steps[0].retries"),
    (_set("steps.0.backoffSeconds", float("nan")), "steps[0].backoffSeconds"),
    (_set("steps.0.backoffFactor", 0.5), "steps[0].backoffFactor"),
    (_set("steps.0.heartbeatTimeoutSeconds", 0), "steps[0].heartbeatTimeoutSeconds"),
    (_set("steps.0.health.maxRestarts", -2), "steps[0].health.maxRestarts"),
    (_set("steps.0.health.notReady", 1), "steps[0].health.notReady"),
    (_set("steps.1.compensate", {"service": "x"}), "steps[1].compensate.timeoutSeconds"),
    (_set("steps.1.revert", {"kind": "helm", "service": "s", "namespace": "n"}), "steps[1].revert.kind"),
    (_set("steps.1.revert", _DELETE), "steps[1].revert"),
    (_set("steps.0.image", "nginx"), "steps[0].image"),
]


@pytest.mark.parametrize(("mutate", "field"), BAD_PLANS, ids=[f for _, f in BAD_PLANS])
def test_bad_plan_is_refused_naming_the_field(mutate: Mutation, field: str) -> None:
    good = plan(step("build"), step("deploy", compensate=True, revert=True))
    bad = copy.deepcopy(good)
    mutate(bad)
    d = Driver()
    with pytest.raises(ModelRejection) as caught:
        d.register(bad)
    assert caught.value.code == "INVALID_RECORD"
    assert caught.value.details["field"] == field
    assert f"JOB_REGISTERED: {field}:" in caught.value.message
    assert d.records == []
    d.register(good)  # the good plan passes


def test_plan_from_integers_where_numbers_are_expected_is_accepted() -> None:
    p = plan(step("build"))
    p["steps"][0]["backoffSeconds"] = 5
    p["steps"][0]["heartbeatTimeoutSeconds"] = 30
    d = Driver()
    job, _ = d.register(p)
    assert d.state(job) == "PENDING"
