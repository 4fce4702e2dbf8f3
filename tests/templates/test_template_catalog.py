"""The template catalog as a specification: what loads, what is refused at start-up (naming file and
field), how params are validated, and the exact plan a submit stores in JOB_REGISTERED."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xpipe.errors import CatalogError, InvalidParams, UnknownTemplate
from xpipe.params import render_argv
from xpipe.templates import BUILTIN_TEMPLATES_DIR, Catalog, resolve, service_name, validate_params

MAX_TIMEOUT = 600


def builtin() -> Catalog:
    return Catalog.load(BUILTIN_TEMPLATES_DIR, max_revision_timeout_seconds=MAX_TIMEOUT)


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text)
    return path


MINIMAL = """
name: tiny
params:
  target: {type: string, required: true, pattern: "[a-z]+"}
  count: {type: integer, default: 2}
  ratio: {type: number, default: 0.5}
  dry: {type: boolean, default: false}
steps:
  - name: one
    argv: ["echo", "{{ params.target }}"]
    env: {COUNT: "{{ params.count }}"}
"""


def load_one(tmp_path: Path, text: str, *, max_timeout: int = MAX_TIMEOUT) -> Catalog:
    write(tmp_path, "t.yaml", text)
    return Catalog.load(tmp_path, max_revision_timeout_seconds=max_timeout)


def test_builtin_catalog_holds_the_three_demo_templates() -> None:
    assert builtin().names() == ["demo-fail", "demo-hang", "demo-ok"]


def test_demo_fail_compensates_step_one_and_demo_hang_rolls_back_and_diagnoses() -> None:
    catalog = builtin()
    fail = catalog.get("demo-fail")
    assert [s.name for s in fail.steps] == ["reserve", "migrate", "activate"]
    assert fail.steps[0].compensate is not None
    assert fail.on_failure == "rollback"
    assert catalog.get("demo-hang").on_failure == "rollback-and-diagnose"
    assert len(catalog.get("demo-ok").steps) == 3


def test_resolved_plan_has_the_exact_job_registered_shape() -> None:
    template = builtin().get("demo-fail")
    job = resolve(template, {"exitCode": 4}, requested_by="magento:admin", default_image="img:1")
    plan = job.plan
    assert set(plan) == {"template", "templateDigest", "params", "requestedBy", "onFailure", "steps"}
    assert plan["template"] == "demo-fail"
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", plan["templateDigest"])
    assert plan["params"] == {"exitCode": "4"}
    assert plan["requestedBy"] == "magento:admin"
    first, second, _ = plan["steps"]
    assert set(first) == {
        "name", "service", "timeoutSeconds", "retries", "backoffSeconds", "backoffFactor",
        "heartbeatTimeoutSeconds", "health", "compensate", "revert",
    }  # fmt: skip
    assert first["compensate"] == {"service": service_name("demo-fail", "reserve", compensation=True),
                                   "timeoutSeconds": 30}  # fmt: skip
    assert first["health"] == {"notReadySeconds": 60, "maxRestarts": 3}
    assert first["revert"] is None
    assert second["compensate"] is None
    assert (second["retries"], second["backoffSeconds"], second["backoffFactor"]) == (1, 0.5, 2.0)
    # One service per step plus one for the compensation, all distinct, each with the template digest.
    names = [s.name for s in job.services]
    assert len(names) == 4 == len(set(names))
    assert {s.template_digest for s in job.services} == {plan["templateDigest"]}
    assert all(s.image == "img:1" for s in job.services)


def test_service_names_are_deterministic_dns1035_and_at_most_49_chars() -> None:
    long_template, long_step = "t" * 40, "s" * 40
    name = service_name(long_template, long_step)
    assert name == service_name(long_template, long_step)
    assert len(name) <= 49
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name)
    assert service_name(long_template, long_step, compensation=True) != name


@settings(max_examples=60, deadline=None)
@given(
    template=st.from_regex(r"[a-z]([a-z0-9-]{0,38}[a-z0-9])?", fullmatch=True),
    step=st.from_regex(r"[a-z]([a-z0-9-]{0,38}[a-z0-9])?", fullmatch=True),
)
def test_every_valid_template_and_step_name_gives_a_valid_service_name(template: str, step: str) -> None:
    for compensation in (False, True):
        name = service_name(template, step, compensation=compensation)
        assert len(name) <= 49
        assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name)


def test_a_hostile_param_reaches_the_step_as_one_literal_argv_element() -> None:
    template = builtin().get("demo-ok")
    hostile = "; rm -rf / $(reboot) `id` && echo"
    job = resolve(template, {"message": hostile}, requested_by="x", default_image="img")
    prepare = job.services[0]
    argv = render_argv(prepare.argv, job.plan["params"])
    assert len(argv) == len(prepare.argv)
    assert argv[-1] == hostile


def test_params_defaults_and_strict_types(tmp_path: Path) -> None:
    template = load_one(tmp_path, MINIMAL).get("tiny")
    assert validate_params(template, {"target": "abc"}) == {
        "target": "abc", "count": "2", "ratio": "0.5", "dry": "false",
    }  # fmt: skip
    assert validate_params(template, {"target": "x", "count": 7, "ratio": 3, "dry": True})["dry"] == "true"


@pytest.mark.parametrize(
    ("params", "param", "reason"),
    [
        ({}, "target", "required"),
        ({"target": "abc", "bogus": 1}, "bogus", "not a param"),
        ({"target": "ABC"}, "target", "pattern"),
        ({"target": 5}, "target", "must be a string"),
        ({"target": "abc", "count": "3"}, "count", "must be an integer"),
        ({"target": "abc", "count": True}, "count", "got bool"),
        ({"target": "abc", "count": 1.5}, "count", "must be an integer"),
        ({"target": "abc", "ratio": float("nan")}, "ratio", "finite"),
        ({"target": "abc", "dry": "yes"}, "dry", "must be a boolean"),
        ({"target": "a" * 2000}, "target", "longer than"),
    ],
)
def test_bad_params_are_refused_naming_the_param(
    tmp_path: Path, params: dict[str, object], param: str, reason: str
) -> None:
    template = load_one(tmp_path, MINIMAL).get("tiny")
    with pytest.raises(InvalidParams) as caught:
        validate_params(template, params)
    assert caught.value.param == param
    assert reason in caught.value.reason
    assert repr(param) in str(caught.value)


OPTION_PRONE = """
name: opts
params:
  path: {type: string}
  suffix: {type: string}
  inline: {type: string}
  branch: {type: string, pattern: "-?[a-z]+"}
  undo: {type: string}
  depth: {type: integer, default: 1}
steps:
  - name: one
    argv: ["kubectl", "apply", "-f", "{{ params.path }}", "{{params.suffix}}.yaml",
           "--note={{ params.inline }}", "--", "{{ params.branch }}", "{{ params.depth }}"]
    env: {NOTE: "{{ params.inline }}"}
    compensate:
      argv: ["git", "revert", "{{ params.undo }}"]
"""


@pytest.mark.parametrize("param", ["path", "suffix", "undo"])
def test_a_param_that_starts_an_argv_element_may_not_start_with_a_dash(tmp_path: Path, param: str) -> None:
    """``--kubeconfig=...`` as a whole argument would become an option of the command."""
    template = load_one(tmp_path, OPTION_PRONE).get("opts")
    with pytest.raises(InvalidParams) as caught:
        validate_params(template, {param: "--kubeconfig=/tmp/evil"})
    assert caught.value.param == param
    assert "starts with '-'" in caught.value.reason


def test_a_dash_is_fine_inside_an_element_under_a_pattern_or_in_a_number(tmp_path: Path) -> None:
    template = load_one(tmp_path, OPTION_PRONE).get("opts")
    values = {"path": "a-b", "inline": "-x", "branch": "-main", "depth": -3}
    resolved = validate_params(template, values)
    assert (resolved["path"], resolved["inline"], resolved["branch"], resolved["depth"]) == (
        "a-b", "-x", "-main", "-3",
    )  # fmt: skip


def test_unknown_template_is_refused_by_name() -> None:
    with pytest.raises(UnknownTemplate, match="'nope'"):
        builtin().get("nope")


BROKEN = [
    ("name: Bad_Name\nsteps: [{name: a, argv: [x]}]\n", "name", "pattern"),
    ("name: t\nsteps: []\n", "steps", "at least 1"),
    ("name: t\nsteps: [{name: a, argv: [x], timeoutSeconds: nine}]\n", "steps[0].timeoutSeconds", "integer"),
    ("name: t\nsteps: [{name: a, argv: [x], timeoutSeconds: 5}]\n", "steps[0].timeoutSeconds", "10"),
    ("name: t\nsteps: [{name: a, argv: [x], retires: 2}]\n", "steps[0].retires", "Extra inputs"),
    ("name: t\nonFailure: panic\nsteps: [{name: a, argv: [x]}]\n", "onFailure", ""),
    ("name: t\nsteps: [{name: a, argv: [x], timeoutSeconds: 601}]\n", "steps[0].timeoutSeconds",
     "max-revision-timeout-seconds"),
    ("name: t\nsteps: [{name: a, argv: [x], compensate: {argv: [y], timeoutSeconds: 900}}]\n",
     "steps[0].compensate.timeoutSeconds", "max-revision-timeout-seconds"),
    ("name: t\nsteps: [{name: a, argv: [x, '{{ params.who }}']}]\n", "steps[0].argv[1]", "undeclared param"),
    ("name: t\nsteps: [{name: a, argv: [x], env: {A: '{{ params.who }}'}}]\n", "steps[0].env.A",
     "undeclared"),
    ("name: t\nsteps: [{name: a, argv: [x, '{{ params.bad-name }}']}]\n", "steps[0].argv[1]", "malformed"),
    ("name: t\nsteps: [{name: a, argv: [x], env: {'1BAD': v}}]\n", "steps[0].env.1BAD",
     "environment variable"),
    # A final newline is not part of a name ("$" alone would let it through).
    ('name: t\nsteps: [{name: a, argv: [x], env: {"A\\n": v}}]\n', "steps[0].env.A\n",
     "environment variable"),
    ('name: t\nparams: {"p\\n": {}}\nsteps: [{name: a, argv: [x]}]\n', "params", "must match"),
    ("name: t\nparams: {p: {type: integer, pattern: 'x'}}\nsteps: [{name: a, argv: [x]}]\n", "params.p",
     "pattern applies"),
    ("name: t\nparams: {p: {type: integer, default: 'x'}}\nsteps: [{name: a, argv: [x]}]\n", "params.p",
     "default"),
    ("name: t\nparams: {p: {pattern: '(['}}\nsteps: [{name: a, argv: [x]}]\n", "params.p.pattern",
     "regular expression"),
    ("name: t\nsteps: [{name: a, argv: [x]}, {name: a, argv: [y]}]\n", "steps", "twice"),
    ("name: t\nsteps: [{name: a, argv: [x], revert: {kind: knative-traffic, service: Shop, namespace: n}}]\n",
     "steps[0].revert.service", "pattern"),
    ("- just\n- a list\n", "", "one mapping"),
    ("name: [unclosed\n", "", "not valid YAML"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "field", "reason"), BROKEN)
def test_a_broken_template_is_refused_at_load_naming_file_and_field(
    tmp_path: Path, text: str, field: str, reason: str
) -> None:
    path = write(tmp_path, "broken.yaml", text)
    with pytest.raises(CatalogError) as caught:
        Catalog.load(tmp_path, max_revision_timeout_seconds=MAX_TIMEOUT)
    assert caught.value.file == str(path)
    assert caught.value.field == field
    assert reason in caught.value.reason
    assert str(path) in str(caught.value)


def test_the_revision_timeout_limit_is_configurable(tmp_path: Path) -> None:
    text = "name: t\nsteps: [{name: a, argv: [x], timeoutSeconds: 900}]\n"
    assert "t" in load_one(tmp_path, text, max_timeout=1200)
    with pytest.raises(CatalogError, match="max-revision-timeout-seconds"):
        load_one(tmp_path, text, max_timeout=600)


def test_duplicate_template_names_and_colliding_services_are_refused(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", "name: t\nsteps: [{name: a, argv: [x]}]\n")
    write(tmp_path, "b.yaml", "name: t\nsteps: [{name: b, argv: [x]}]\n")
    with pytest.raises(CatalogError, match="also defined in"):
        Catalog.load(tmp_path, max_revision_timeout_seconds=MAX_TIMEOUT)
    (tmp_path / "b.yaml").write_text("name: t-a\nsteps: [{name: b, argv: [x]}]\n")
    (tmp_path / "a.yaml").write_text("name: t\nsteps: [{name: a-b, argv: [x]}]\n")
    with pytest.raises(CatalogError, match="collides") as caught:
        Catalog.load(tmp_path, max_revision_timeout_seconds=MAX_TIMEOUT)
    assert caught.value.field == "steps[0].name"


def test_an_empty_or_missing_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="no template files"):
        Catalog.load(tmp_path, max_revision_timeout_seconds=MAX_TIMEOUT)
    with pytest.raises(CatalogError, match="does not exist"):
        Catalog.load(tmp_path / "missing", max_revision_timeout_seconds=MAX_TIMEOUT)


def test_other_double_braces_pass_through_untouched(tmp_path: Path) -> None:
    text = "name: t\nsteps: [{name: a, argv: [kubectl, '-o', 'go-template={{ .metadata.name }}']}]\n"
    job = resolve(load_one(tmp_path, text).get("t"), {}, requested_by="x", default_image="i")
    assert render_argv(job.services[0].argv, job.plan["params"])[-1] == "go-template={{ .metadata.name }}"
