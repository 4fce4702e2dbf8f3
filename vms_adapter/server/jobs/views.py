"""Read models: the job view an operator reads and the paginated job listing (JOBS.md §11)."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from typing import Any

from vms_adapter.server.model import ModelRejection

from .fold import live_attempts
from .plan import compensation_of
from .shapes import Attempt, HistoryEntry, Job
from .states import ALL_STATES

BAD_REQUEST = "BAD_REQUEST"
FILTERS = ("state", "template", "since", "until")
CURSOR_PREFIX = "r"


def _attempt_view(attempt: Attempt) -> dict[str, Any]:
    view = {k: v for k, v in attempt.items() if k not in ("step", "claimedAt")}
    view["health"] = dict(attempt["health"]) if attempt["health"] is not None else None
    return view


def step_status(job: Job, name: str) -> str:
    if name in job["succeeded"]:
        return "succeeded"
    attempts = job["attempts"].get(name, [])
    if not attempts:
        return "waiting"
    last = attempts[-1]
    if last["outcome"] is None:
        started = last["startedAt"] is not None or last["lastHeartbeatAt"] is not None
        return "running" if started else "dispatched"
    return "cancelled" if last["outcome"] == "cancelled" else "failed"


def current_step(job: Job) -> str | None:
    live = live_attempts(job)
    if live:
        return live[0]["step"]
    for step in job["plan"]["steps"]:
        if step["name"] not in job["succeeded"]:
            return str(step["name"])
    return None


def job_view(job: Job, history: Sequence[HistoryEntry]) -> dict[str, Any]:
    plan = job["plan"]
    steps = []
    for step in plan["steps"]:
        compensation = None
        if step["compensate"] is not None:
            runs = job["attempts"].get(compensation_of(step), [])
            compensation = {
                "service": step["compensate"]["service"],
                "attempts": [_attempt_view(a) for a in runs],
            }
        steps.append(
            {
                "name": step["name"],
                "service": step["service"],
                "status": step_status(job, step["name"]),
                "attempts": [_attempt_view(a) for a in job["attempts"].get(step["name"], [])],
                "compensation": compensation,
                "revert": step["revert"],
            }
        )
    rollback = job["rollback"]
    diagnosis = job["diagnosis"]
    return {
        "jobId": job["jobId"],
        "state": job["state"],
        "finished": job["finished"],
        "template": plan["template"],
        "templateDigest": plan["templateDigest"],
        "params": dict(plan["params"]),
        "requestedBy": plan["requestedBy"],
        "onFailure": plan["onFailure"],
        "registeredAt": job["registeredAt"],
        "updatedAt": job["updatedAt"],
        "finishedAt": job["finishedAt"],
        "currentStep": current_step(job),
        "failure": dict(job["failure"]) if job["failure"] else None,
        "cancel": dict(job["cancel"]) if job["cancel"] else None,
        "rollback": None
        if rollback is None
        else {**rollback, "actions": [dict(a) for a in rollback["actions"]]},
        "diagnosis": dict(diagnosis) if diagnosis else None,
        "steps": steps,
        "directives": [
            {k: d[k] for k in ("id", "kind", "dueAt", "status", "createdAt", "settledAt", "event")}
            for d in job["directives"].values()
        ],
        "history": [dict(h) for h in history],
    }


def summary(job: Job) -> dict[str, Any]:
    plan = job["plan"]
    return {
        "jobId": job["jobId"],
        "template": plan["template"],
        "state": job["state"],
        "finished": job["finished"],
        "registeredAt": job["registeredAt"],
        "updatedAt": job["updatedAt"],
        "requestedBy": plan["requestedBy"],
        "currentStep": current_step(job),
    }


def _reject(message: str) -> ModelRejection:
    return ModelRejection(BAD_REQUEST, message)


def _time_filter(filters: dict[str, Any], key: str) -> float | None:
    value = filters.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _reject(f"list filter {key}: must be a Unix time in seconds")
    return float(value)


Filters = tuple[frozenset[str] | None, str | None, float | None, float | None]


def parse_filters(filters: dict[str, Any]) -> Filters:
    """(states, template, since, until) from a LIST_JOBS filter object; unknown keys refused."""
    if not isinstance(filters, dict):
        raise _reject("list filters: must be an object")
    unknown = sorted(k for k in filters if k not in FILTERS)
    if unknown:
        raise _reject(f"list filter {unknown[0]}: unknown (known: {', '.join(FILTERS)})")
    states: frozenset[str] | None = None
    raw = filters.get("state")
    if raw is not None:
        names = [raw] if isinstance(raw, str) else raw
        if not isinstance(names, list) or not all(isinstance(n, str) and n in ALL_STATES for n in names):
            raise _reject(f"list filter state: must be one of {', '.join(ALL_STATES)} or a list of them")
        states = frozenset(names)
    template = filters.get("template")
    if template is not None and not isinstance(template, str):
        raise _reject("list filter template: must be a string")
    return states, template, _time_filter(filters, "since"), _time_filter(filters, "until")


def encode_cursor(seq: int) -> str:
    return f"{CURSOR_PREFIX}{seq:x}"


def decode_cursor(cursor: str) -> int:
    if not isinstance(cursor, str) or not cursor.startswith(CURSOR_PREFIX):
        raise _reject(f"list cursor {cursor!r}: not a cursor this journal issued")
    try:
        return int(cursor[len(CURSOR_PREFIX) :], 16)
    except ValueError:
        raise _reject(f"list cursor {cursor!r}: not a cursor this journal issued") from None


def list_page(
    jobs: dict[str, Job],
    order: Sequence[tuple[int, str]],
    filters: dict[str, Any],
    after: str | None,
    limit: int,
) -> tuple[list[dict[str, Any]], str | None]:
    """Newest registration first; ``order`` is (registration seq, job id) in ascending seq."""
    states, template, since, until = parse_filters(filters)
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise _reject("list limit: must be a positive integer")
    end = len(order) if after is None else bisect_left(order, (decode_cursor(after), ""))
    page: list[dict[str, Any]] = []
    last_seq = 0
    for index in range(end - 1, -1, -1):
        seq, job_id = order[index]
        job = jobs[job_id]
        if states is not None and job["state"] not in states:
            continue
        if template is not None and job["plan"]["template"] != template:
            continue
        if since is not None and job["registeredAt"] < since:
            continue
        if until is not None and job["registeredAt"] >= until:
            continue
        if len(page) == limit:
            return page, encode_cursor(last_seq)
        page.append(summary(job))
        last_seq = seq
    return page, None
