"""Strict checks of record data: every field typed and bounded, unknown keys refused, errors naming the field.

A bad record is refused with ``INVALID_RECORD`` before it can touch the state, so the fold can trust the
shapes it reads. Field paths in messages use the wire's camelCase names (``steps[1].retries``).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

from vms_adapter.server.model import ModelRejection

from . import records as rt
from .states import ON_FAILURE

INVALID_RECORD = "INVALID_RECORD"

MAX_STEPS = 64
MAX_RETRIES = 100
MAX_SECONDS = 86_400
MAX_TEXT = 256
MAX_NAME = 253
MAX_SUMMARY = 4096
# Params travel in every step.run directive, which must fit a commit reply (one 32,000-byte frame).
MAX_PARAMS_BYTES = 16_000
STEP_NAME = re.compile(r"[A-Za-z0-9._-]{1,63}")  # fullmatch: "$" would let "build\n" through
OUTCOMES = ("succeeded", "failed", "cancelled", "timed-out")
REVERT_OUTCOMES = ("succeeded", "failed")


class Fields:
    """Reads one JSON object for one record type, raising ``INVALID_RECORD`` naming ``path.field``."""

    def __init__(self, record_type: str, data: object, path: str = "") -> None:
        self.record_type = record_type
        self.path = path
        # (Decoded JSON is a dict, which answers first: the abstract Mapping check is slow.)
        if isinstance(data, (dict, Mapping)):
            self.data: Mapping[str, Any] = data
        else:
            self.fail(path or "data", "must be an object")

    def fail(self, field: str, problem: str) -> Any:
        raise ModelRejection(
            INVALID_RECORD, f"{self.record_type}: {field}: {problem}", details={"field": field}
        )

    def name(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def only(self, *allowed: str) -> None:
        for key in self.data:
            if key not in allowed:
                unknown = sorted(k for k in self.data if k not in allowed)
                self.fail(self.name(str(unknown[0])), "unknown field")

    def has(self, key: str) -> bool:
        return self.data.get(key) is not None

    def text(self, key: str, *, min_len: int = 1, max_len: int = MAX_TEXT, optional: bool = False) -> str:
        value = self.data.get(key)
        if value is None and optional:
            return ""
        if not isinstance(value, str):
            return str(self.fail(self.name(key), "must be a string"))
        if not min_len <= len(value) <= max_len:
            self.fail(self.name(key), f"must be {min_len} to {max_len} characters")
        return value

    def integer(self, key: str, low: int, high: int, *, optional: bool = False) -> int | None:
        value = self.data.get(key)
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            return int(self.fail(self.name(key), "must be an integer"))
        if not low <= value <= high:
            self.fail(self.name(key), f"must be an integer from {low} to {high}")
        return value

    def number(
        self, key: str, low: float, high: float, *, above: bool = False, optional: bool = False
    ) -> float | None:
        value = self.data.get(key)
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return float(self.fail(self.name(key), "must be a finite number"))
        if value < low or value > high or (above and value <= low):
            bound = f"above {low}" if above else f"at least {low}"
            self.fail(self.name(key), f"must be a number {bound} and at most {high}")
        return float(value)

    def boolean(self, key: str) -> bool:
        value = self.data.get(key)
        if not isinstance(value, bool):
            return bool(self.fail(self.name(key), "must be true or false"))
        return value

    def choice(self, key: str, choices: tuple[str, ...]) -> str:
        value = self.data.get(key)
        if value not in choices:
            self.fail(self.name(key), f"must be one of {', '.join(choices)}")
        return str(value)

    def obj(self, key: str, *, optional: bool = False) -> Fields | None:
        value = self.data.get(key)
        if value is None and optional:
            return None
        if not isinstance(value, (dict, Mapping)):
            self.fail(self.name(key), "must be an object")
        return Fields(self.record_type, value, self.name(key))

    def items(self, key: str, *, max_items: int, min_items: int = 0) -> list[Any]:
        value = self.data.get(key)
        if not isinstance(value, list):
            return list(self.fail(self.name(key), "must be a list"))
        if not min_items <= len(value) <= max_items:
            self.fail(self.name(key), f"must have {min_items} to {max_items} items")
        return value


# A plan's and a step's fields, in the order a refusal lists them; the sets are the fast path's check.
_PLAN_FIELDS = ("template", "templateDigest", "params", "requestedBy", "onFailure", "steps")
_STEP_FIELDS = (
    "name",
    "service",
    "timeoutSeconds",
    "retries",
    "backoffSeconds",
    "backoffFactor",
    "heartbeatTimeoutSeconds",
    "health",
    "compensate",
    "revert",
)
_PLAN_KEYS = frozenset(_PLAN_FIELDS)
_STEP_KEYS = frozenset(_STEP_FIELDS)
_HEALTH_KEYS = frozenset({"notReadySeconds", "maxRestarts"})
_COMPENSATE_KEYS = frozenset({"service", "timeoutSeconds"})
_REVERT_KEYS = frozenset({"kind", "service", "namespace"})


def _is_text(value: object, low: int, high: int) -> bool:
    return type(value) is str and low <= len(value) <= high


def _is_integer(value: object, low: int, high: int) -> bool:
    return type(value) is int and low <= value <= high


def _is_number(value: object, low: float, high: float) -> bool:
    return (type(value) is float or type(value) is int) and low <= value <= high  # NaN fails both


def _plainly_valid_step(step: object, names: set[str]) -> bool:
    if type(step) is not dict or step.keys() != _STEP_KEYS:
        return False
    name, health = step["name"], step["health"]
    compensate, revert = step["compensate"], step["revert"]
    heartbeat = step["heartbeatTimeoutSeconds"]
    return (
        _is_text(name, 1, 63)
        and STEP_NAME.fullmatch(name) is not None
        and name not in names
        and _is_text(step["service"], 1, MAX_NAME)
        and _is_integer(step["timeoutSeconds"], 1, MAX_SECONDS)
        and _is_integer(step["retries"], 0, MAX_RETRIES)
        and _is_number(step["backoffSeconds"], 0, MAX_SECONDS)
        and _is_number(step["backoffFactor"], 1, 100)
        and _is_number(heartbeat, 0, MAX_SECONDS)
        and heartbeat > 0
        and type(health) is dict
        and health.keys() == _HEALTH_KEYS
        and _is_number(health["notReadySeconds"], 0, MAX_SECONDS)
        and _is_integer(health["maxRestarts"], 0, 1000)
        and (
            compensate is None
            or (
                type(compensate) is dict
                and compensate.keys() == _COMPENSATE_KEYS
                and _is_text(compensate["service"], 1, MAX_NAME)
                and _is_integer(compensate["timeoutSeconds"], 1, MAX_SECONDS)
            )
        )
        and (
            revert is None
            or (
                type(revert) is dict
                and revert.keys() == _REVERT_KEYS
                and revert["kind"] == "knative-traffic"
                and _is_text(revert["service"], 1, MAX_NAME)
                and _is_text(revert["namespace"], 1, MAX_NAME)
            )
        )
    )


def _plainly_valid_plan(data: object) -> bool:
    """True when a plan is certainly valid, checked directly (every ``JOB_REGISTERED``, so every submit,
    pays for this). Anything else, including what is valid in a rarer way (a mapping that is not a
    dict, params that may exceed their limit), takes ``read_plan``'s field-by-field reading, which
    words the refusal: this accepts only what ``read_plan`` accepts
    (tests/jobs/test_jobs_validation_shortcut.py)."""
    if type(data) is not dict or data.keys() != _PLAN_KEYS:
        return False
    params, steps = data["params"], data["steps"]
    if not (
        _is_text(data["template"], 1, MAX_TEXT)
        and _is_text(data["templateDigest"], 0, MAX_TEXT)
        and _is_text(data["requestedBy"], 1, MAX_TEXT)
        and data["onFailure"] in ON_FAILURE
        and type(params) is dict
        and type(steps) is list
        and 1 <= len(steps) <= MAX_STEPS
    ):
        return False
    most = 2  # as read_plan bounds the params' JSON (left to it when they might exceed the limit)
    for key, value in params.items():
        if not (_is_text(key, 1, 128) and _is_text(value, 0, MAX_PARAMS_BYTES)):
            return False
        most += 12 * (len(key) + len(value)) + 8
    if most > MAX_PARAMS_BYTES:
        return False
    names: set[str] = set()
    for step in steps:
        if not _plainly_valid_step(step, names):
            return False
        names.add(step["name"])
    return True


def check_plan(data: object) -> None:
    """The resolved plan of ``JOB_REGISTERED`` (JOBS.md §4)."""
    if not _plainly_valid_plan(data):
        read_plan(data)


def read_plan(data: object) -> None:
    """``check_plan`` field by field: raises ``INVALID_RECORD`` naming the first field that is wrong."""
    plan = Fields(rt.JOB_REGISTERED, data)
    plan.only(*_PLAN_FIELDS)
    plan.text("template")
    plan.text("templateDigest", min_len=0)
    plan.text("requestedBy")
    plan.choice("onFailure", ON_FAILURE)
    params = plan.obj("params")
    assert params is not None
    # json.dumps writes a character as at most 12 (two escapes, beyond the BMP), plus 8 per item (quotes,
    # ": " and ", "): only params that might exceed the limit are encoded to measure them.
    most = 2
    for key in params.data:
        if not isinstance(key, str) or not 1 <= len(key) <= 128:
            params.fail(params.name(str(key)), "parameter names must be 1 to 128 characters")
        most += 12 * (len(key) + len(params.text(key, min_len=0, max_len=MAX_PARAMS_BYTES))) + 8
    if most > MAX_PARAMS_BYTES and len(json.dumps(params.data)) > MAX_PARAMS_BYTES:
        plan.fail("params", f"must be at most {MAX_PARAMS_BYTES} bytes of JSON (every step.run carries them)")
    seen: set[str] = set()
    for index, raw in enumerate(plan.items("steps", min_items=1, max_items=MAX_STEPS)):
        step = Fields(rt.JOB_REGISTERED, raw, f"steps[{index}]")
        step.only(*_STEP_FIELDS)
        name = step.text("name", max_len=63)
        if not STEP_NAME.fullmatch(name):
            step.fail(step.name("name"), "must use only A-Z a-z 0-9 . _ -")
        if name in seen:
            step.fail(step.name("name"), f"duplicate step name {name!r}")
        seen.add(name)
        step.text("service", max_len=MAX_NAME)
        step.integer("timeoutSeconds", 1, MAX_SECONDS)
        step.integer("retries", 0, MAX_RETRIES)
        step.number("backoffSeconds", 0, MAX_SECONDS)
        step.number("backoffFactor", 1, 100)
        step.number("heartbeatTimeoutSeconds", 0, MAX_SECONDS, above=True)
        health = step.obj("health")
        assert health is not None
        health.only("notReadySeconds", "maxRestarts")
        health.number("notReadySeconds", 0, MAX_SECONDS)
        health.integer("maxRestarts", 0, 1000)
        if "compensate" not in step.data or "revert" not in step.data:
            step.fail(step.name("compensate" if "compensate" not in step.data else "revert"), "is required")
        compensate = step.obj("compensate", optional=True)
        if compensate is not None:
            compensate.only("service", "timeoutSeconds")
            compensate.text("service", max_len=MAX_NAME)
            compensate.integer("timeoutSeconds", 1, MAX_SECONDS)
        revert = step.obj("revert", optional=True)
        if revert is not None:
            revert.only("kind", "service", "namespace")
            revert.choice("kind", ("knative-traffic",))
            revert.text("service", max_len=MAX_NAME)
            revert.text("namespace", max_len=MAX_NAME)


def _job_id_matches(fields: Fields, job_id: str) -> None:
    if "jobId" in fields.data and fields.data["jobId"] != job_id:
        fields.fail("jobId", f"names job {fields.data['jobId']!r} but the record is for job {job_id!r}")


def _attempt_fields(fields: Fields) -> None:
    fields.text("step", max_len=128)
    fields.integer("attempt", 1, 1_000_000)


_LEASE_FACT_KEYS = {
    rt.HEARTBEAT: frozenset({"jobId", "step", "attempt", "pod", "progress", "details"}),
    rt.STEP_STARTED: frozenset({"jobId", "step", "attempt", "pod"}),
}


def _plainly_valid_lease_fact(record_type: str, job_id: str, data: object) -> bool:
    """True when a ``HEARTBEAT`` or ``STEP_STARTED`` is certainly valid, checked in a few lines: they are
    most of the traffic. Anything else (including what is valid in a rarer way, such as a ``details``
    mapping that is not a dict) takes ``read_fact``'s field-by-field reading, which words the refusal; so
    this only ever accepts what ``read_fact`` accepts (tests/jobs/test_jobs_validation_shortcut.py)."""
    allowed = _LEASE_FACT_KEYS.get(record_type)
    if allowed is None or type(data) is not dict or not data.keys() <= allowed:
        return False
    step, attempt, pod = data.get("step"), data.get("attempt"), data.get("pod")
    progress, details = data.get("progress"), data.get("details")
    return (
        type(step) is str
        and 1 <= len(step) <= 128
        and type(attempt) is int
        and 1 <= attempt <= 1_000_000
        and type(pod) is str
        and 1 <= len(pod) <= MAX_NAME
        and (progress is None or (type(progress) in (int, float) and 0 <= progress <= 1))
        and (details is None or type(details) is dict)
        and data.get("jobId", job_id) == job_id
    )


def check_fact(record_type: str, job_id: str, data: object) -> None:
    """The data of every fact except ``JOB_REGISTERED`` (JOBS.md §5.1)."""
    if not _plainly_valid_lease_fact(record_type, job_id, data):
        read_fact(record_type, job_id, data)


def read_fact(record_type: str, job_id: str, data: object) -> None:
    """``check_fact`` field by field: raises ``INVALID_RECORD`` naming the first field that is wrong."""
    fields = Fields(record_type, data)
    if record_type == rt.STEP_STARTED:
        fields.only("jobId", "step", "attempt", "pod")
        _attempt_fields(fields)
        fields.text("pod", max_len=MAX_NAME)
    elif record_type == rt.HEARTBEAT:
        fields.only("jobId", "step", "attempt", "pod", "progress", "details")
        _attempt_fields(fields)
        fields.text("pod", max_len=MAX_NAME)
        fields.number("progress", 0, 1, optional=True)
        fields.obj("details", optional=True)
    elif record_type == rt.STEP_FINISHED:
        fields.only("jobId", "step", "attempt", "outcome", "exitCode", "durationSeconds", "summary", "pod")
        _attempt_fields(fields)
        fields.choice("outcome", OUTCOMES)
        fields.integer("exitCode", -(2**31), 2**32, optional=True)
        fields.number("durationSeconds", 0, 10 * MAX_SECONDS, optional=True)
        fields.text("summary", min_len=0, max_len=MAX_SUMMARY, optional=True)
        fields.text("pod", max_len=MAX_NAME, optional=True)
    elif record_type == rt.HEALTH:
        fields.only("jobId", "pod", "phase", "ready", "containers", "observedAt")
        fields.text("pod", max_len=MAX_NAME)
        fields.text("phase", max_len=64)
        fields.boolean("ready")
        for index, raw in enumerate(fields.items("containers", max_items=64)):
            container = Fields(record_type, raw, f"containers[{index}]")
            container.only("name", "ready", "restartCount", "state")
            container.text("name", max_len=MAX_NAME)
            container.boolean("ready")
            container.integer("restartCount", 0, 1_000_000)
            if container.data.get("state") is not None and not isinstance(
                container.data["state"], (str, Mapping)
            ):
                container.fail(container.name("state"), "must be a string or an object")
        if "observedAt" in fields.data and not isinstance(fields.data["observedAt"], (str, int, float)):
            fields.fail("observedAt", "must be a timestamp (string or number)")
    elif record_type == rt.DEAD_LETTER:
        fields.only("jobId", "event", "errorCode", "errorDest", "errorData")
        event = fields.obj("event")
        assert event is not None
        event.text("type", max_len=MAX_NAME)
        event.text("id", max_len=MAX_NAME, optional=True)
        fields.integer("errorCode", 0, 999, optional=True)
        fields.text("errorDest", max_len=2048, optional=True)
        fields.text("errorData", min_len=0, max_len=4096, optional=True)
    elif record_type == rt.ROLLBACK_STARTED:
        fields.only("jobId", "directive")
        fields.text("directive", max_len=MAX_NAME, optional=True)
    elif record_type == rt.REVERT_FINISHED:
        fields.only("jobId", "step", "outcome", "revision", "details")
        fields.text("step", max_len=63)
        fields.choice("outcome", REVERT_OUTCOMES)
        fields.text("revision", max_len=MAX_NAME, optional=True)
        fields.obj("details", optional=True)
    elif record_type == rt.RESTORE_FINISHED:
        fields.only("jobId", "directive", "outcome", "details")
        fields.text("directive", max_len=MAX_NAME)
        fields.choice("outcome", REVERT_OUTCOMES)
        fields.obj("details", optional=True)
    elif record_type == rt.DIAGNOSTIC_REPORT:
        fields.only("jobId", "report")
        fields.obj("report")
    elif record_type == rt.JOB_CANCELLED:
        fields.only("jobId", "reason", "thenRollback")
        fields.text("reason", max_len=1024)
        fields.boolean("thenRollback")
    _job_id_matches(fields, job_id)
