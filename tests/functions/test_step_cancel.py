"""Step cancellation end to end with the local backend: a cancelled job's `com.xpipe.step.cancel` reaches
the rollback function (real functions-framework), which stops the attempt through the local step host
(real step runtime, a real 60 s command); the held step.run answers `cancelled`, and the journal (a real
service) accepts that late result without a change. A cancel the journal did not direct stops nothing."""

from __future__ import annotations

import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from cloudevents.http import CloudEvent
from functions_harness import (
    RELAY_TOKEN,
    EventSink,
    FunctionServer,
    StepHost,
    cloud_event,
    journal_counts,
)

from vms_adapter.client import JournalClient
from xpipe.backends.base import StepServiceSpec
from xpipe.events import EXT_JOB, EXT_STEP, STEP_CANCEL, STEP_HEARTBEAT, STEP_RUN
from xpipe.outbox import directive_event

# A step that runs far longer than any test waits: only a stop can end it in time.
LONG_COMMAND = "import os, sys, time; open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(60)"
CANCEL_DEADLINE_SECONDS = 15.0


def commit(client: JournalClient, job_id: str | None, record_type: str, data: dict[str, Any]) -> Any:
    return client.commit(job_id, [{"type": record_type, "data": data}], idempotency_key=f"t {uuid.uuid4()}")


class RunningAttempt:
    """A registered job whose step 1 runs LONG_COMMAND in the local step host, its step.run held open."""

    def __init__(self, client: JournalClient, step_host: StepHost, sink: EventSink, pid_file: Path) -> None:
        self.service = f"xp-cancel-{uuid.uuid4().hex[:8]}"
        spec = StepServiceSpec(
            name=self.service, template="cancel-test", step="long", image="",
            argv=(sys.executable, "-c", LONG_COMMAND, str(pid_file)), env={}, timeout_seconds=120,
            template_digest="sha256:cancel", heartbeat_seconds=0.5,
        )  # fmt: skip
        assert step_host.http.put(f"/services/{self.service}", json=spec.to_json_dict()).status_code == 200
        plan = {
            "template": "cancel-test", "templateDigest": "sha256:cancel", "params": {},
            "requestedBy": "tests", "onFailure": "none",
            "steps": [{"name": "long", "service": self.service, "timeoutSeconds": 120, "retries": 0,
                       "backoffSeconds": 0, "backoffFactor": 1, "heartbeatTimeoutSeconds": 30,
                       "health": {"notReadySeconds": 60, "maxRestarts": 3}, "compensate": None,
                       "revert": None}],
        }  # fmt: skip
        registered = commit(client, None, "JOB_REGISTERED", plan)
        self.job_id: str = registered.job_id
        (dispatch,) = [d for d in registered.directives if d["kind"] == "dispatch"]
        run = directive_event(dispatch, {})
        assert run["type"] == STEP_RUN
        self.replies: list[CloudEvent] = []
        self._thread = threading.Thread(target=lambda: self.replies.append(step_host.deliver(run)))
        self._thread.start()
        # Play health-relay for the first heart-beat, so the journal knows the attempt's pod.
        (beat,) = sink.wait_for(
            lambda e: e["type"] == STEP_HEARTBEAT and (e.get_data() or {}).get("jobId") == self.job_id
        )[:1]
        self.pod: str = beat.get_data()["pod"]
        commit(client, self.job_id, "HEARTBEAT", {"step": "long", "attempt": 1, "pod": self.pod})
        deadline = time.monotonic() + 15
        while not (pid_file.exists() and pid_file.read_text()):
            assert time.monotonic() < deadline, "the step's command did not start"
            time.sleep(0.05)  # poll interval while waiting on a condition with a deadline
        self.command_pid = int(pid_file.read_text())

    def answered(self, timeout: float) -> CloudEvent | None:
        self._thread.join(timeout)
        return None if self._thread.is_alive() else self.replies[0]

    def process_state(self, step_host: StepHost) -> list[str]:
        described = step_host.http.get(f"/services/{self.service}").json()
        return [p["state"] for p in described["processes"]]


def test_a_cancelled_jobs_running_step_is_stopped_and_answers_cancelled(
    rollback: FunctionServer, client: JournalClient, step_host: StepHost, sink: EventSink, tmp_path: Path
) -> None:
    attempt = RunningAttempt(client, step_host, sink, tmp_path / "pid")
    cancelled = commit(client, attempt.job_id, "JOB_CANCELLED", {"reason": "operator", "thenRollback": False})
    (cancel,) = [d for d in cancelled.directives if d["kind"] == "cancel"]
    event = directive_event(cancel, {})
    assert event["type"] == STEP_CANCEL
    assert event[EXT_STEP] == attempt.service
    assert event.get_data() == {
        "jobId": attempt.job_id, "step": "long", "attempt": 1, "reason": "operator", "pod": attempt.pod
    }  # fmt: skip

    started = time.monotonic()
    before = journal_counts(client)
    assert rollback.post(event, token=RELAY_TOKEN).status_code == 202
    finished = attempt.answered(CANCEL_DEADLINE_SECONDS)
    assert finished is not None, f"the held step.run was not answered within {CANCEL_DEADLINE_SECONDS} s"
    assert time.monotonic() - started < CANCEL_DEADLINE_SECONDS
    data = finished.get_data()
    assert (data["jobId"], data["step"], data["attempt"]) == (attempt.job_id, "long", 1)
    assert data["outcome"] == "cancelled"
    assert data["pod"] == attempt.pod
    assert not Path(f"/proc/{attempt.command_pid}").exists() or _is_zombie(attempt.command_pid)
    assert journal_counts(client) == before  # the rollback function commits nothing for a cancel

    # The late result is the fact the journal accepts without a change (as health-relay would commit it).
    late = {"step": "long", "attempt": 1, "outcome": "cancelled", "pod": attempt.pod}
    assert not commit(client, attempt.job_id, "STEP_FINISHED", late).directives
    view = client.read_job(attempt.job_id)
    assert view["state"] == "CANCELLED"
    assert view["steps"][0]["attempts"][0]["outcome"] == "cancelled"

    # The broker redelivers the cancel: nothing is left to stop, nothing is written.
    before = journal_counts(client)
    assert rollback.post(event, token=RELAY_TOKEN).status_code == 202
    assert journal_counts(client) == before


def test_a_cancel_the_journal_did_not_direct_stops_nothing(
    rollback: FunctionServer, client: JournalClient, step_host: StepHost, sink: EventSink, tmp_path: Path
) -> None:
    attempt = RunningAttempt(client, step_host, sink, tmp_path / "pid")
    forged = cloud_event(
        STEP_CANCEL,
        {"jobId": attempt.job_id, "step": "long", "attempt": 1, "reason": "forged", "pod": attempt.pod},
        **{EXT_JOB: attempt.job_id, EXT_STEP: attempt.service},
    )
    assert rollback.post(forged, token=RELAY_TOKEN).status_code == 202
    assert attempt.answered(0.5) is None, "a live attempt was stopped by a cancel the journal never sent"
    assert attempt.process_state(step_host) == ["busy"]
    assert client.read_job(attempt.job_id)["state"] == "RUNNING"

    # The real cancel ends it (and the test's 60 s command with it).
    cancelled = commit(client, attempt.job_id, "JOB_CANCELLED", {"reason": "done", "thenRollback": False})
    (cancel,) = [d for d in cancelled.directives if d["kind"] == "cancel"]
    assert rollback.post(directive_event(cancel, {}), token=RELAY_TOKEN).status_code == 202
    finished = attempt.answered(CANCEL_DEADLINE_SECONDS)
    assert finished is not None
    assert finished.get_data()["outcome"] == "cancelled"


@pytest.mark.parametrize(
    ("data", "extensions"),
    [
        ({"jobId": "j", "step": "s", "attempt": 0, "reason": "r"}, {EXT_STEP: "svc"}),
        ({"jobId": "j", "step": "s", "attempt": 1}, {EXT_STEP: "svc"}),
        ({"jobId": "j", "step": "s", "attempt": 1, "reason": "r", "extra": 1}, {EXT_STEP: "svc"}),
        ({"jobId": "j", "step": "s", "attempt": 1, "reason": "r"}, {}),
    ],
    ids=["attempt-zero", "no-reason", "unknown-key", "no-service"],
)
def test_a_malformed_cancel_is_a_400_that_writes_nothing(
    rollback: FunctionServer, client: JournalClient, data: dict[str, Any], extensions: dict[str, str]
) -> None:
    before = journal_counts(client)
    response = rollback.post(cloud_event(STEP_CANCEL, data, **extensions), token=RELAY_TOKEN)
    assert response.status_code == 400, response.text
    assert journal_counts(client) == before


def _is_zombie(pid: int) -> bool:
    """A stopped command may linger as a zombie until its parent (gone too) is reaped by init."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True
