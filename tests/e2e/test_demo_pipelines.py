"""The three demo outcomes on a real ``xpipe up``."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from xpipe.devstack.demo import journal_records
from xpipe.devstack.running import RunningStack, is_finished

pytestmark = pytest.mark.slow


def test_the_three_demo_pipelines_end_as_designed(stack: RunningStack) -> None:
    jobs = {name: stack.submit(name) for name in ("demo-ok", "demo-fail")}
    hang = stack.submit("demo-hang")
    with ThreadPoolExecutor(2) as pool:
        views = dict(
            zip(jobs, pool.map(lambda job: stack.wait_finished(job, 120), jobs.values()), strict=True)
        )

    assert views["demo-ok"]["state"] == "SUCCEEDED"
    assert [s["status"] for s in views["demo-ok"]["steps"]] == ["succeeded"] * 3

    fail = views["demo-fail"]
    assert fail["state"] == "ROLLED_BACK"
    assert [s["status"] for s in fail["steps"]] == ["succeeded", "failed", "waiting"]
    assert len(fail["steps"][1]["attempts"]) == 2  # one retry, then for good
    assert [(a["kind"], a["step"], a["status"]) for a in fail["rollback"]["actions"]] == [
        ("compensate", "reserve", "succeeded")
    ]

    # demo-hang's view (its history plus a diagnostic report with log tails) can exceed one journal
    # frame, so it is judged from its summary and from its records on disk.
    deadline = time.monotonic() + 120
    while not is_finished(stack.progress(hang)):
        assert time.monotonic() < deadline, "demo-hang did not finish in time"
        time.sleep(0.2)
    assert stack.progress(hang)["state"] == "ROLLED_BACK"
    records = journal_records(stack.layout.journal_dir, hang)
    [failed] = [r["data"] for r in records if r["type"] == "ATTEMPT_FAILED"]
    assert (failed["step"], failed["reason"]) == ("stall", "lease-expired")
    [report] = [r["data"]["report"] for r in records if r["type"] == "DIAGNOSTIC_REPORT"]
    assert "demo-hang-stall" in report["services"]
    assert [r["data"]["outcome"] for r in records if r["type"] == "ROLLBACK_COMPLETED"] == ["rolled-back"]
    compensation = [r["data"] for r in records if r["type"] == "STEP_FINISHED"][-1]
    assert (compensation["step"], compensation["outcome"]) == ("warm-up:compensate", "succeeded")
