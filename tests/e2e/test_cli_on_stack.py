"""The ``xpipe`` command against a running ``xpipe up``, run as a user runs it (a subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.waiting import wait_until

from xpipe.devstack.running import RunningStack

pytestmark = pytest.mark.slow


def xpipe(stack: RunningStack, *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "XPIPE_DATA_DIR": str(stack.layout.data_dir), "COLUMNS": "200"}
    env.pop("XPIPE_TOKEN", None)
    return subprocess.run(
        [sys.executable, "-m", "xpipe.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout_s,
        check=False,
    )


def test_submit_wait_then_list_and_show_as_json(stack: RunningStack) -> None:
    done = xpipe(stack, "submit", "demo-ok", "-p", "message=; rm -rf /", "--wait", "--output", "json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["state"] == "SUCCEEDED"
    job_id = result["jobId"]

    listed = xpipe(stack, "jobs", "--state", "SUCCEEDED", "--output", "json")
    assert listed.returncode == 0, listed.stderr
    jobs = json.loads(listed.stdout)
    assert isinstance(jobs, list)
    mine = [j for j in jobs if j["jobId"] == job_id]
    assert mine == [{**mine[0], "jobId": job_id, "template": "demo-ok", "state": "SUCCEEDED"}]
    assert all(j["state"] == "SUCCEEDED" for j in jobs)

    shown = xpipe(stack, "job", "show", job_id, "--output", "json")
    view = json.loads(shown.stdout)
    assert view["params"] == {"message": "; rm -rf /"}  # one literal value, never a shell
    assert "prepare argv: ['; rm -rf /']" in view["steps"][0]["attempts"][0]["summary"]

    table = xpipe(stack, "job", "show", job_id)
    assert table.returncode == 0
    assert "SUCCEEDED" in table.stdout
    assert "STEP_FINISHED" in table.stdout


def test_watch_follows_a_job_until_it_is_finished(stack: RunningStack) -> None:
    job_id = stack.submit("demo-fail")
    watched = xpipe(stack, "job", "watch", job_id, "--timeout", "90")
    assert watched.returncode == 1  # the job did not succeed
    assert "ROLLED_BACK" in watched.stdout
    assert "reserve:compensate" in watched.stdout


def test_cancel_a_running_job(stack: RunningStack, tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    job_id = stack.submit("e2e-marks", {"marks": str(marks), "sleep": "20"})
    wait_until(marks.exists, 60, "step one to start")
    cancelled = xpipe(stack, "job", "cancel", job_id, "--reason", "test")
    assert cancelled.returncode == 0, cancelled.stderr
    job = stack.wait_finished(job_id, 60)
    assert job["state"] == "CANCELLED"

    def first_attempt_outcome() -> object:
        return stack.job(job_id)["steps"][0]["attempts"][0].get("outcome")

    # The step sleeps 20 s: a cancel that reached it ends the attempt `cancelled` long before that.
    wait_until(lambda: first_attempt_outcome() == "cancelled", 12, "the running attempt to be stopped")


def test_bad_input_gets_a_precise_error(stack: RunningStack) -> None:
    unknown = xpipe(stack, "submit", "no-such-template")
    assert unknown.returncode == 1
    assert "422" in unknown.stderr
    missing = xpipe(stack, "job", "show", "j-99999999")
    assert missing.returncode == 1
    assert "j-99999999" in missing.stderr


def test_templates_and_journal_verify(stack: RunningStack) -> None:
    templates = json.loads(xpipe(stack, "templates", "--output", "json").stdout)
    assert {"demo-ok", "demo-fail", "demo-hang"} <= {t["name"] for t in templates}
    verified = xpipe(stack, "journal", "verify")
    assert verified.returncode == 0, verified.stderr
    assert "sound" in verified.stdout
