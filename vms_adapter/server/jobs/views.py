"""Read models: the job view an operator reads and the paginated job listing (JOBS.md §11)."""

from __future__ import annotations

import json
from bisect import bisect_left
from collections.abc import Sequence
from typing import Any

from vms_adapter.protocol import MAX_BODY_BYTES
from vms_adapter.server.model import ModelRejection

from .fold import live_attempts
from .plan import compensation_of, revert_targets
from .shapes import Attempt, HistoryEntry, Job
from .states import ALL_STATES

BAD_REQUEST = "BAD_REQUEST"
FILTERS = ("state", "template", "since", "until")
CURSOR_PREFIX = "r"
# A READ_JOB or LIST_JOBS reply must fit one frame body; leave room for the reply's envelope.
VIEW_MAX_BYTES = MAX_BODY_BYTES - 4_000
LIST_MAX_BYTES = MAX_BODY_BYTES - 6_000  # the journal adds a version to each summary
VIEW_SUMMARY_CHARS = 512


def _size(value: Any) -> int:
    """Bytes of ``value`` as JSON (escaped ASCII, with spaces: at least what any encoder writes)."""
    return len(json.dumps(value))


def _attempt_view(attempt: Attempt, summary_chars: int | None) -> dict[str, Any]:
    view = {k: v for k, v in attempt.items() if k not in ("step", "claimedAt")}
    view["health"] = dict(attempt["health"]) if attempt["health"] is not None else None
    summary = attempt["summary"]
    if summary_chars is not None and summary is not None and len(summary) > summary_chars:
        view["summary"] = summary[len(summary) - summary_chars :]  # the tail is where a failure shows
        view["summaryTruncated"] = True
    return view


def _attempts(attempts: Sequence[Attempt], summary_chars: int | None, last_only: bool) -> dict[str, Any]:
    shown = attempts[-1:] if last_only else attempts
    return {
        "attempts": [_attempt_view(a, summary_chars) for a in shown],
        "attemptsOmitted": len(attempts) - len(shown),
    }


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


# Ever smaller views, tried in turn until one fits: (summary characters kept or None for all, only the
# last attempt of each step, only the directives still pending).
_FITTINGS = (
    (None, False, False),
    (VIEW_SUMMARY_CHARS, False, False),
    (VIEW_SUMMARY_CHARS, True, False),
    (64, True, True),
    (0, True, True),
)


def job_view(job: Job, history: Sequence[HistoryEntry]) -> dict[str, Any]:
    """The view, fitted into ``VIEW_MAX_BYTES``: if needed, summaries are cut to their tail, only the last
    attempt of each step and the pending directives are shown, and the oldest history entries are left
    out; every omission is counted in the view (``attemptsOmitted``, ``directivesOmitted``,
    ``historyOmitted``), and ``xpipe-journal dump --job`` has everything."""
    for summary_chars, last_only, pending_only in _FITTINGS:
        view = _base_view(job, summary_chars, last_only, pending_only)
        used = _size(view)
        if used <= VIEW_MAX_BYTES:
            break
    kept: list[dict[str, Any]] = []
    for entry in reversed(history):
        used += _size(entry) + 2
        if used > VIEW_MAX_BYTES:
            break
        kept.append(dict(entry))
    kept.reverse()
    view["history"] = kept
    view["historyOmitted"] = len(history) - len(kept)
    return view


def _base_view(job: Job, summary_chars: int | None, last_only: bool, pending_only: bool) -> dict[str, Any]:
    plan = job["plan"]
    steps = []
    for step in plan["steps"]:
        compensation = None
        if step["compensate"] is not None:
            runs = job["attempts"].get(compensation_of(step), [])
            compensation = {
                "service": step["compensate"]["service"],
                **_attempts(runs, summary_chars, last_only),
            }
        steps.append(
            {
                "name": step["name"],
                "service": step["service"],
                "status": step_status(job, step["name"]),
                **_attempts(job["attempts"].get(step["name"], []), summary_chars, last_only),
                "compensation": compensation,
                "revert": step["revert"],
            }
        )
    rollback = job["rollback"]
    diagnosis = job["diagnosis"]
    directives = [d for d in job["directives"].values() if not pending_only or d["status"] == "pending"]
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
        "restore": _restore_view(job),
        "steps": steps,
        "directives": [
            {
                **{k: d[k] for k in ("id", "kind", "dueAt", "status", "createdAt", "settledAt")},
                "eventType": d["event"]["type"],
            }
            for d in directives
        ],
        "directivesOmitted": len(job["directives"]) - len(directives),
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
    """Newest registration first; ``order`` is (registration seq, job id) in ascending seq. A page ends at
    ``limit`` jobs or when one more would not fit a reply frame, whichever comes first."""
    states, template, since, until = parse_filters(filters)
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise _reject("list limit: must be a positive integer")
    end = len(order) if after is None else bisect_left(order, (decode_cursor(after), ""))
    page: list[dict[str, Any]] = []
    last_seq = 0
    used = 0
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
        item = summary(job)
        used += _size(item) + 2
        if len(page) == limit or (page and used > LIST_MAX_BYTES):
            return page, encode_cursor(last_seq)
        page.append(item)
        last_seq = seq
    return page, None


def _restore_view(job: Job) -> dict[str, Any] | None:
    """The restore a successful job directed (JOBS.md §7): its directive and its targets, from the plan."""
    for directive in job["directives"].values():
        if directive["kind"] == "restore":
            return {
                "directiveId": directive["id"],
                "status": directive["status"],
                "requestedAt": directive["createdAt"],
                "targets": revert_targets(job["plan"]),
            }
    return None
