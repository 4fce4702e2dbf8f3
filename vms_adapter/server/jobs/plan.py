"""Reading the resolved plan of a job: steps by name, compensation labels, back-off (JOBS.md §4, §6)."""

from __future__ import annotations

from typing import Any, NamedTuple

from .records import compensation_label
from .shapes import Job

COMPENSATE_SUFFIX = ":compensate"


class Runnable(NamedTuple):
    """What an attempt of a step label runs: a step, or a step's compensation. (A named tuple: it is
    looked up several times per commit, and a frozen dataclass costs three times as much to build.)"""

    label: str
    step: dict[str, Any]
    service: str
    timeout_s: int
    compensation: bool


def runnable(job: Job, label: str) -> Runnable | None:
    """The step or compensation a label names in this job's plan, or None."""
    name = label[: -len(COMPENSATE_SUFFIX)] if label.endswith(COMPENSATE_SUFFIX) else label
    step = step_named(job, name)
    if step is None:
        return None
    if name == label:
        return Runnable(label, step, step["service"], step["timeoutSeconds"], False)
    if step["compensate"] is None:
        return None
    return Runnable(label, step, step["compensate"]["service"], step["compensate"]["timeoutSeconds"], True)


def step_of(job: Job, label: str) -> dict[str, Any] | None:
    """The plan step a label belongs to (the step itself, or the step of a compensation): what a
    heart-beat needs, without building a ``Runnable``."""
    return step_named(job, label[: -len(COMPENSATE_SUFFIX)] if label.endswith(COMPENSATE_SUFFIX) else label)


def step_named(job: Job, name: str) -> dict[str, Any] | None:
    for step in job["plan"]["steps"]:
        if step["name"] == name:
            return step  # type: ignore[no-any-return]
    return None


def backoff_s(step: dict[str, Any], failed_attempt: int) -> float:
    """The wait before retry n (after attempt n failed): backoffSeconds * backoffFactor ** (n-1)."""
    return float(step["backoffSeconds"]) * float(step["backoffFactor"]) ** (failed_attempt - 1)


def compensation_of(step: dict[str, Any]) -> str:
    return compensation_label(step["name"])


def revert_targets(plan: dict[str, Any]) -> list[dict[str, str]]:
    """The distinct Knative traffic targets the plan's steps may revert, in plan order (JOBS.md §7)."""
    targets: list[dict[str, str]] = []
    for step in plan["steps"]:
        target = step["revert"]
        if target is None:
            continue
        entry = {"kind": target["kind"], "service": target["service"], "namespace": target["namespace"]}
        if entry not in targets:
            targets.append(entry)
    return targets
