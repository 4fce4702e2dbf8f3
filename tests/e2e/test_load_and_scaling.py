"""Concurrency and scale to zero on a real ``xpipe up``."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from support.waiting import wait_until

from xpipe.devstack.running import RunningStack
from xpipe.templates import service_name

pytestmark = pytest.mark.slow


def test_fifty_concurrent_submissions_are_each_registered_exactly_once(stack: RunningStack) -> None:
    event_ids = [str(uuid.uuid4()) for _ in range(50)]
    # Every event is sent twice, concurrently (a retried delivery): still one job per event.
    sends = event_ids + event_ids[::-1]
    with ThreadPoolExecutor(16) as pool:
        job_ids = list(pool.map(lambda eid: stack.submit("e2e-quick", {"n": eid}, event_id=eid), sends))
    by_event = dict(zip(sends[:50], job_ids[:50], strict=True))
    assert len(set(by_event.values())) == 50
    assert dict(zip(sends[50:], job_ids[50:], strict=True)) == by_event
    listed = stack.journal().list_jobs({"template": "e2e-quick"}, limit=500).jobs
    assert sorted(j["jobId"] for j in listed) == sorted(by_event.values())
    with ThreadPoolExecutor(8) as pool:
        states = list(pool.map(lambda job: stack.wait_finished(job, 150)["state"], by_event.values()))
    assert states == ["SUCCEEDED"] * 50


def replicas(stack: RunningStack, service: str) -> int:
    answer = httpx.get(f"{stack.layout.step_host_url}/services/{service}", timeout=5, trust_env=False)
    answer.raise_for_status()
    return int(answer.json()["replicas"])


def test_a_step_service_scaled_to_zero_is_started_again_by_the_next_event(
    stack: RunningStack, tmp_path: Path
) -> None:
    service = service_name("e2e-marks", "one")
    first = stack.submit("e2e-marks", {"marks": str(tmp_path / "a")})
    assert stack.wait_finished(first, 60)["state"] == "SUCCEEDED"
    wait_until(lambda: replicas(stack, service) == 0, 30, f"{service} to scale to zero")
    second = stack.submit("e2e-marks", {"marks": str(tmp_path / "b")})
    job = stack.wait_finished(second, 60)
    assert job["state"] == "SUCCEEDED"
    assert (tmp_path / "b").read_text().startswith(f"{second} one 1")
