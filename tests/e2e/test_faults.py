"""Crashes on a real ``xpipe up``: the journal and a function killed with SIGKILL mid-pipeline, restarted by
the supervisor; every job still finishes as it would have, and no step attempt runs twice."""

from __future__ import annotations

import os
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from support.waiting import wait_until

from xpipe.devstack.running import RunningStack

pytestmark = pytest.mark.slow


def marks(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def assert_each_step_ran_once(job: dict[str, Any], path: Path) -> None:
    job_id = job["jobId"]
    lines = [line for line in marks(path) if line.startswith(f"{job_id} ")]
    assert sorted(lines) == sorted(f"{job_id} {step} 1" for step in ("one", "two", "three")), lines
    finished = Counter(r["data"]["step"] for r in job["history"] if r["type"] == "STEP_FINISHED")
    assert finished == {"one": 1, "two": 1, "three": 1}


def finished_once_per_attempt(job: dict[str, Any]) -> bool:
    """No attempt reported twice: a step run a second time would send a second STEP_FINISHED (another
    CloudEvent id, so not deduplicated), while a redelivered report is deduplicated by its id."""
    counts = Counter(
        (r["data"]["step"], r["data"]["attempt"]) for r in job["history"] if r["type"] == "STEP_FINISHED"
    )
    return bool(counts) and set(counts.values()) == {1}


def test_journal_killed_mid_pipeline_then_restarted(stack: RunningStack, tmp_path: Path) -> None:
    path = tmp_path / "marks"
    job_id = stack.submit("e2e-marks", {"marks": str(path), "sleep": "1.5"})
    others = {name: stack.submit(name) for name in ("demo-ok", "demo-fail")}
    wait_until(lambda: any(" one " in line for line in marks(path)), 60, "step one to start")
    seen = len(stack.lines)
    os.kill(stack.pid("journal"), signal.SIGKILL)
    stack.wait_line(r"^journal killed by SIGKILL; restarting", 10, after=seen)
    stack.wait_line(r"^journal is healthy again", 30, after=seen)
    job = stack.wait_finished(job_id, 120)
    assert job["state"] == "SUCCEEDED"
    assert_each_step_ran_once(job, path)
    ok, fail = (stack.wait_finished(others[name], 120) for name in ("demo-ok", "demo-fail"))
    assert ok["state"] == "SUCCEEDED"
    assert fail["state"] == "ROLLED_BACK"
    assert [(a["kind"], a["step"], a["status"]) for a in fail["rollback"]["actions"]] == [
        ("compensate", "reserve", "succeeded")
    ]
    assert finished_once_per_attempt(ok)
    assert finished_once_per_attempt(fail)


def test_function_killed_mid_request_is_retried_by_the_router(stack: RunningStack, tmp_path: Path) -> None:
    path = tmp_path / "marks"
    job_id = stack.submit("e2e-marks", {"marks": str(path), "sleep": "1.5"})
    wait_until(lambda: any(" two " in line for line in marks(path)), 60, "step two to start")
    seen = len(stack.lines)
    # health-relay takes step two's heart-beats and its finished reply: kill its whole process group
    # (gunicorn master and worker) while step two runs.
    os.killpg(stack.pid("health-relay"), signal.SIGKILL)
    stack.wait_line(r"^health-relay killed by SIGKILL; restarting", 10, after=seen)
    job = stack.wait_finished(job_id, 120)
    assert job["state"] == "SUCCEEDED"
    assert_each_step_ran_once(job, path)
    stack.wait_line(r"^health-relay is healthy again", 30, after=seen)
