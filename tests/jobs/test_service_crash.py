"""Crash in the middle of many jobs: clients drive jobs concurrently, the service is killed with SIGKILL,
restarted, and every acknowledged fact is reflected in the recovered jobs, no step has two live
attempts, and every job can be driven on to SUCCEEDED from where it stopped."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from vms_adapter.client import JournalClient
from vms_adapter.errors import JournalError

from .driver import plan, step
from .service_process import ServiceProcess

CLIENTS = 8
ACKED_BEFORE_KILL = 120
DEADLINE_S = 30.0


@pytest.fixture
def processes() -> Iterator[list[ServiceProcess]]:
    started: list[ServiceProcess] = []
    yield started
    for process in started:
        process.kill()


def _live(view: dict[str, Any]) -> list[tuple[str, int]]:
    return [(s["name"], a["attempt"]) for s in view["steps"] for a in s["attempts"] if a["outcome"] is None]


@pytest.mark.slow
def test_sigkill_during_concurrent_jobs_loses_no_acknowledged_fact(
    tmp_path: Path, processes: list[ServiceProcess]
) -> None:
    data_dir = tmp_path / "journal"
    first = ServiceProcess(data_dir, "--snapshot-every", "50")
    processes.append(first)
    the_plan = plan(step("build"), step("test"), step("deploy"))
    acked: list[tuple[str, str, str]] = []  # (job, record type, step) of every acknowledged commit
    progress = threading.Condition()
    stop = threading.Event()

    def drive(index: int) -> None:
        client = JournalClient("127.0.0.1", first.port, retry_deadline=0.5, read_timeout=5.0, pool_size=1)
        n = 0
        try:
            while not stop.is_set():
                job = client.commit(
                    None, [{"type": "JOB_REGISTERED", "data": the_plan}], idempotency_key=f"c{index}-{n}"
                ).job_id
                with progress:
                    acked.append((job, "JOB_REGISTERED", ""))
                    progress.notify_all()
                for name in ("build", "test", "deploy"):
                    for kind, data in (
                        ("HEARTBEAT", {"step": name, "attempt": 1, "pod": f"pod-{index}"}),
                        ("STEP_FINISHED", {"step": name, "attempt": 1, "outcome": "succeeded"}),
                    ):
                        n += 1
                        client.commit(job, [{"type": kind, "data": data}], idempotency_key=f"c{index}-{n}")
                        with progress:
                            acked.append((job, kind, name))
                            progress.notify_all()
                n += 1
        except JournalError:
            pass  # the service died under us: what was acknowledged must survive
        finally:
            client.close()

    threads = [threading.Thread(target=drive, args=(i,), daemon=True) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    with progress:
        enough = progress.wait_for(lambda: len(acked) >= ACKED_BEFORE_KILL, timeout=DEADLINE_S)
    assert enough, "the clients made no progress"
    first.kill()
    stop.set()
    for thread in threads:
        thread.join(DEADLINE_S)
        assert not thread.is_alive()

    second = ServiceProcess(data_dir)
    processes.append(second)
    with second.client() as client:
        jobs = sorted({job for job, _, _ in acked})
        for job in jobs:
            view = client.read_job(job)
            assert len(_live(view)) <= 1, view
            statuses = {s["name"]: s["status"] for s in view["steps"]}
            for _, kind, name in (a for a in acked if a[0] == job):
                if kind == "STEP_FINISHED":
                    assert statuses[name] == "succeeded", (job, name, view["state"])
                if kind == "HEARTBEAT":
                    assert statuses[name] in ("running", "succeeded"), (job, name, statuses)
            # Drive it on from where it is.
            for _ in range(3):
                live = _live(client.read_job(job))
                if not live:
                    break
                name, attempt = live[0]
                client.commit(
                    job,
                    [
                        {
                            "type": "STEP_FINISHED",
                            "data": {"step": name, "attempt": attempt, "outcome": "succeeded"},
                        }
                    ],
                    idempotency_key=f"after-{job}-{name}",
                )
            assert client.read_job(job)["state"] == "SUCCEEDED"
    second.stop()
