"""The three demo outcomes on a real ``xpipe up``."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from xpipe.devstack.running import RunningStack

pytestmark = pytest.mark.slow


def test_the_three_demo_pipelines_end_as_designed(stack: RunningStack) -> None:
    jobs = {name: stack.submit(name) for name in ("demo-ok", "demo-fail", "demo-hang")}
    with ThreadPoolExecutor(3) as pool:
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

    hang = views["demo-hang"]
    assert hang["state"] == "ROLLED_BACK"
    assert hang["steps"][1]["attempts"][0]["reason"] == "lease-expired"
    assert hang["diagnosis"]["status"] == "reported"
    assert "demo-hang-stall" in hang["diagnosis"]["report"]["services"]
