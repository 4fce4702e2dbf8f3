"""The state machine inside the real journal service: a SIGKILL in the middle of a job, then a restart,
and the job goes on where it was (recovered from the segments, or from a snapshot plus the tail)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from vms_adapter.client import JournalClient
from vms_adapter.errors import Rejected

from .driver import plan, step
from .service_process import ServiceProcess


@pytest.fixture
def processes() -> Iterator[list[ServiceProcess]]:
    started: list[ServiceProcess] = []
    yield started
    for process in started:
        process.kill()


def fact(client: JournalClient, job: str, key: str, kind: str, **data: Any) -> list[dict[str, Any]]:
    return client.commit(job, [{"type": kind, "data": data}], idempotency_key=key).directives


@pytest.mark.parametrize("snapshot_every", [2, 100_000], ids=["snapshot-and-tail", "segments-only"])
def test_a_job_goes_on_where_it_was_after_sigkill_and_restart(
    tmp_path: Path, processes: list[ServiceProcess], snapshot_every: int
) -> None:
    data_dir = tmp_path / "journal"
    args = ("--snapshot-every", str(snapshot_every))
    first = ServiceProcess(data_dir, *args)
    processes.append(first)
    the_plan = plan(step("build", compensate=True), step("deploy", heartbeat=600, timeout=3600))
    with first.client() as client:
        registered = client.commit(
            None, [{"type": "JOB_REGISTERED", "data": the_plan}], idempotency_key="reg"
        )
        job = registered.job_id
        assert registered.state == "PENDING"
        assert [d["event"]["data"]["step"] for d in registered.directives] == ["build"]
        fact(client, job, "hb-1", "HEARTBEAT", step="build", attempt=1, pod="pod-1")
        finished = client.commit(
            job,
            [{"type": "STEP_FINISHED", "data": {"step": "build", "attempt": 1, "outcome": "succeeded"}}],
            idempotency_key="fin-build",
        )
        assert [d["event"]["data"]["step"] for d in finished.directives] == ["deploy"]
        fact(client, job, "hb-2", "HEARTBEAT", step="deploy", attempt=1, pod="pod-2")
        client.ack([registered.directives[0]["id"]])
        before = client.read_job(job)
    first.kill()

    second = ServiceProcess(data_dir, *args)
    processes.append(second)
    with second.client() as client:
        after = client.read_job(job)
        assert after == before
        assert after["state"] == "RUNNING"
        assert [s["status"] for s in after["steps"]] == ["succeeded", "running"]
        # A retried commit returns its original result, directives included.
        again = client.commit(
            job,
            [{"type": "STEP_FINISHED", "data": {"step": "build", "attempt": 1, "outcome": "succeeded"}}],
            idempotency_key="fin-build",
        )
        assert again.duplicate
        assert again.directives == finished.directives
        # The pod the running attempt claimed before the crash is still attributed to it.
        health = {
            "pod": "pod-2",
            "phase": "Running",
            "ready": True,
            "containers": [{"name": "user-container", "ready": True, "restartCount": 0, "state": "running"}],
            "observedAt": "2026-11-25T13:00:00Z",
        }
        client.commit("pod/pod-2", [{"type": "HEALTH", "data": health}], idempotency_key="health-1")
        assert client.read_job(job)["steps"][1]["attempts"][0]["health"]["ready"] is True
        # Hand-out times are not journaled: the first sweep redelivers every unacknowledged entry.
        swept = client.sweep(redelivery_after=60)
        assert sorted(d["id"] for d in swept.directives) == sorted(d["id"] for d in finished.directives)
        done = fact(client, job, "fin-deploy", "STEP_FINISHED", step="deploy", attempt=1, outcome="succeeded")
        assert [(d["kind"], d["event"]["data"]) for d in done] == [
            ("finished", {"jobId": job, "outcome": "SUCCEEDED"})
        ]
        client.ack([d["id"] for d in finished.directives + done])
        assert client.sweep(redelivery_after=0).directives == []
        assert client.read_job(job)["state"] == "SUCCEEDED"
        page = client.list_jobs({"state": "SUCCEEDED", "template": "deploy-service"})
        assert [j["jobId"] for j in page.jobs] == [job]
    second.stop()


def test_refusals_reach_the_client_with_their_code_and_change_nothing(
    tmp_path: Path, processes: list[ServiceProcess]
) -> None:
    service = ServiceProcess(tmp_path / "journal")
    processes.append(service)
    with service.client() as client:
        job = client.commit(None, [{"type": "JOB_REGISTERED", "data": plan()}], idempotency_key="reg").job_id
        version = client.read_job(job)["version"]
        with pytest.raises(Rejected) as caught:
            fact(client, job, "bad", "HEARTBEAT", step="build", attempt=7, pod="p")
        assert caught.value.code == "INVALID_TRANSITION"
        assert f"job {job} is PENDING: HEARTBEAT refused" in caught.value.message
        with pytest.raises(Rejected) as caught:
            client.commit(
                None, [{"type": "JOB_REGISTERED", "data": {"template": ""}}], idempotency_key="bad-2"
            )
        assert caught.value.code == "INVALID_RECORD"
        with pytest.raises(Rejected) as caught:
            client.list_jobs({"colour": "red"})
        assert caught.value.code == "BAD_REQUEST"
        assert client.read_job(job)["version"] == version
    service.stop()


def test_a_sweep_through_the_service_expires_leases_and_hands_out_the_retry(
    tmp_path: Path, processes: list[ServiceProcess]
) -> None:
    service = ServiceProcess(tmp_path / "journal", "--allow-clock-override")
    processes.append(service)
    with service.client() as client:
        the_plan = plan(step("build", retries=1, backoff=0, heartbeat=5))
        registered = client.commit(
            None, [{"type": "JOB_REGISTERED", "data": the_plan}], idempotency_key="reg"
        )
        job = registered.job_id
        client.ack([d["id"] for d in registered.directives])
        lease_until = client.read_job(job)["steps"][0]["attempts"][0]["leaseUntil"]
        swept = client.sweep(now=lease_until + 1, redelivery_after=60)
        assert swept.records == 2  # ATTEMPT_FAILED and the retry's STEP_DISPATCHED
        assert [(d["kind"], d["event"]["data"]["attempt"]) for d in swept.directives] == [("dispatch", 2)]
        view = client.read_job(job)
        assert view["steps"][0]["attempts"][0]["reason"] == "lease-expired"
        assert view["state"] == "PENDING"
        # Within the redelivery interval the same sweep hands out nothing new.
        assert client.sweep(now=lease_until + 2, redelivery_after=60).directives == []
    service.stop()


def test_a_client_cannot_move_the_sweep_clock_unless_the_service_allows_it(
    tmp_path: Path, processes: list[ServiceProcess]
) -> None:
    service = ServiceProcess(tmp_path / "journal")
    processes.append(service)
    with service.client() as client:
        registered = client.commit(
            None, [{"type": "JOB_REGISTERED", "data": plan(step("build"))}], idempotency_key="reg"
        )
        before = client.read_job(registered.job_id)
        with pytest.raises(Rejected) as caught:
            client.sweep(now=before["steps"][0]["attempts"][0]["leaseUntil"] + 3600, redelivery_after=60)
        assert caught.value.code == "BAD_REQUEST"
        assert "--allow-clock-override" in caught.value.message
        after = client.read_job(registered.job_id)
        assert (after["state"], after["version"]) == (before["state"], before["version"])
    service.stop()
