"""The local backend: a real local step host process starting real step processes, over loopback HTTP."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from support.processes import stop_process
from support.waiting import wait_until

from xpipe.backends.base import BackendUnavailable, InvalidSpec, NotFound, StepServiceSpec
from xpipe.backends.local import LocalBackend

IDLE_SECONDS = 1.5  # long enough that a loaded machine still sees the process warm right after a run


class HeartbeatSink:
    """Stands in for the local router as K_SINK: remembers the pods that sent heart-beats."""

    def __init__(self) -> None:
        self.pods: list[str] = []
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                sink.pods.append(body["pod"])
                self.send_response(202)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1})
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@dataclass
class Host:
    process: subprocess.Popen[bytes]
    url: str

    def stop(self) -> int:
        stop_process(self.process, 20.0)
        return self.process.returncode


def start_host(*options: str) -> Host:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    port = listener.getsockname()[1]
    command = [
        sys.executable,
        "-m",
        "xpipe.backends.local_host",
        "--listen-fd",
        str(listener.fileno()),
        *options,
    ]
    process = subprocess.Popen(command, pass_fds=[listener.fileno()])
    listener.close()
    host = Host(process, f"http://127.0.0.1:{port}")
    assert httpx.get(f"{host.url}/health/readiness", timeout=15).status_code == 200
    return host


@pytest.fixture(scope="module")
def sink() -> Iterator[HeartbeatSink]:
    receiver = HeartbeatSink()
    yield receiver
    receiver.close()


@pytest.fixture(scope="module")
def host(sink: HeartbeatSink) -> Iterator[Host]:
    running = start_host(
        "--sink",
        sink.url,
        "--idle-seconds",
        str(IDLE_SECONDS),
        "--max-processes",
        "2",
        "--stop-grace-seconds",
        "1",
    )
    yield running
    assert running.stop() == 0


@pytest.fixture
def backend(host: Host) -> Iterator[LocalBackend]:
    client = LocalBackend(host.url, backoff_seconds=0.01)
    yield client
    client.close()


def python_step(name: str, code: str, digest: str = "d1") -> StepServiceSpec:
    return StepServiceSpec(
        name=name,
        template="local-test",
        step=name,
        image="",
        argv=(sys.executable, "-c", code, "{{ params.arg }}"),
        env={"GREETING": "hi {{ params.arg }}"},
        timeout_seconds=60,
        template_digest=digest,
        heartbeat_seconds=0.2,
    )


def step_run(host: Host, service: str, arg: str, job: str | None = None, attempt: int = 1) -> httpx.Response:
    job = job or f"job-{uuid.uuid4().hex[:8]}"
    headers = {
        "ce-specversion": "1.0", "ce-type": "com.xpipe.step.run", "ce-source": "/router",
        "ce-id": str(uuid.uuid4()), "ce-xpipestep": service, "ce-xpipejob": job,
    }  # fmt: skip
    data = {"jobId": job, "step": service, "attempt": attempt, "params": {"arg": arg}}
    return httpx.post(f"{host.url}/", headers=headers, json=data, timeout=60)


def replicas(backend: LocalBackend, name: str) -> int:
    return next(s["replicas"] for s in backend.services() if s["name"] == name)


def test_scale_from_zero_on_first_event_and_back_to_zero_when_idle(
    backend: LocalBackend, host: Host, sink: HeartbeatSink
) -> None:
    code = "import os, sys, time; time.sleep(0.5); print(os.environ['GREETING'], sys.argv[1])"
    assert backend.ensure_step_service(python_step("scaler", code)) is True
    assert backend.ensure_step_service(python_step("scaler", code)) is False  # same digest: nothing to do
    assert replicas(backend, "scaler") == 0

    reply = step_run(host, "scaler", "; rm -rf /")
    assert reply.status_code == 200
    assert reply.headers["ce-type"] == "com.xpipe.step.finished"
    finished = reply.json()
    assert finished["outcome"] == "succeeded"
    assert "hi ; rm -rf / ; rm -rf /" in finished["summary"]
    assert replicas(backend, "scaler") == 1  # still warm right after the run
    first_pod = finished["pod"]
    assert first_pod in sink.pods  # heart-beats went to K_SINK from that process

    wait_until(lambda: replicas(backend, "scaler") == 0, what="scale to zero after the idle window")
    report = backend.collect_diagnostics("job-x", ["scaler", "ghost"])
    entry = report["services"]["scaler"]
    assert [e["event"] for e in entry["events"]][-2:] == ["scaled up", "scaled down"]
    assert entry["pods"][0]["state"] == "exited"
    assert entry["pods"][0]["stoppedByHost"] is True
    assert "attempt finished" in entry["pods"][0]["logTail"]
    assert any("ghost" in error for error in report["errors"])

    again = step_run(host, "scaler", "again")  # scaled to zero, so this starts a new process
    assert again.json()["outcome"] == "succeeded"
    assert again.json()["pod"] != first_pod


def test_duplicate_step_run_is_answered_once(backend: LocalBackend, host: Host, tmp_path: Path) -> None:
    out = tmp_path / "runs"
    code = f"import sys, time; open({str(out)!r}, 'a').write('run\\n'); time.sleep(0.3)"
    backend.ensure_step_service(python_step("dedupe", code))
    replies: list[httpx.Response] = []
    threads = [
        threading.Thread(target=lambda: replies.append(step_run(host, "dedupe", "x", job="job-dup")))
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    later = step_run(host, "dedupe", "x", job="job-dup")
    assert {r.status_code for r in [*replies, later]} == {200}
    assert len({r.headers["ce-id"] for r in [*replies, later]}) == 1
    assert out.read_text() == "run\n"


def test_revert_and_restore_change_which_revision_runs(backend: LocalBackend, host: Host) -> None:
    backend.ensure_step_service(python_step("versions", "print('version one')", digest="v1"))
    assert backend.ensure_step_service(python_step("versions", "print('version two')", digest="v2")) is True
    assert "version two" in step_run(host, "versions", "a").json()["summary"]

    state = backend.revert_traffic("xpipe-steps", "versions", at=100.0)
    assert state.pinned_revision == "versions-00001"
    assert state.latest_ready_revision == "versions-00002"
    assert state.pinned_at == 100.0
    assert "version one" in step_run(host, "versions", "b").json()["summary"]
    # A repeated revert (a redelivery) keeps the pin instead of walking further back.
    assert backend.revert_traffic("xpipe-steps", "versions", at=100.0).pinned_revision == "versions-00001"

    restored = backend.restore_traffic("xpipe-steps", "versions", requested_at=150.0)
    assert (restored.pinned_revision, restored.pinned_at) == (None, None)
    assert "version two" in step_run(host, "versions", "c").json()["summary"]


def test_a_restore_requested_before_the_newest_revert_keeps_the_pin(
    backend: LocalBackend, host: Host
) -> None:
    backend.ensure_step_service(python_step("pinned", "print('one')", digest="v1"))
    backend.ensure_step_service(python_step("pinned", "print('two')", digest="v2"))
    backend.revert_traffic("xpipe-steps", "pinned", at=100.0)
    # A second job's revert of the pinned service keeps the pin and moves its time forward.
    assert backend.revert_traffic("xpipe-steps", "pinned", at=200.0).pinned_at == 200.0
    assert backend.revert_traffic("xpipe-steps", "pinned", at=150.0).pinned_at == 200.0  # a late one

    # A job that succeeded before the newest revert asks to restore: the pin stays.
    kept = backend.restore_traffic("xpipe-steps", "pinned", requested_at=199.0)
    assert (kept.pinned_revision, kept.pinned_at) == ("pinned-00001", 200.0)
    assert "one" in step_run(host, "pinned", "a").json()["summary"]

    assert backend.restore_traffic("xpipe-steps", "pinned", requested_at=201.0).pinned_revision is None
    assert "two" in step_run(host, "pinned", "b").json()["summary"]


@pytest.mark.parametrize("body", [None, {}, {"at": "soon"}, {"at": True}, {"at": None}, [1.0]])
def test_a_revert_without_a_journal_time_is_refused_and_changes_nothing(host: Host, body: Any) -> None:
    for digest in ("v1", "v2"):
        spec = python_step("untimed", "print(1)", digest=digest).to_json_dict()
        assert httpx.put(f"{host.url}/services/untimed", json=spec, timeout=10).status_code == 200
    reply = httpx.post(f"{host.url}/services/untimed/revert", json=body, timeout=10)
    assert reply.status_code == 400
    assert "'at'" in reply.json()["message"]
    assert httpx.get(f"{host.url}/services/untimed", timeout=10).json()["pinnedRevision"] is None


def test_process_cap_answers_429_when_every_process_is_busy(
    backend: LocalBackend, host: Host, tmp_path: Path
) -> None:
    # Each command runs until the test releases it (bounded to 30 s): both stay busy however slow the
    # machine is, so the two runs overlap for certain.
    release = tmp_path / "release"
    code = (
        "import os, sys, time\n"
        "deadline = time.monotonic() + 30\n"
        "while not os.path.exists(sys.argv[1]) and time.monotonic() < deadline:\n"
        "    time.sleep(0.05)\n"
    )
    backend.ensure_step_service(python_step("busy", code))
    # Processes of earlier tests count against the cap until they have exited (even while the idle
    # reaper stops them): start from zero, so that the two runs get the two slots.
    wait_until(lambda: all(s["replicas"] == 0 for s in backend.services()), what="every service at zero")
    replies: list[httpx.Response] = []
    threads = [
        threading.Thread(target=lambda: replies.append(step_run(host, "busy", str(release))))
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: replicas(backend, "busy") == 2, what="two busy processes")
        refused = step_run(host, "busy", "y")
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "1"
    finally:
        release.write_text("go")
        for thread in threads:
            thread.join(60)
    assert [r.json()["outcome"] for r in replies] == ["succeeded", "succeeded"]


def test_stopping_a_running_attempt_answers_its_held_request_cancelled(
    backend: LocalBackend, host: Host, tmp_path: Path
) -> None:
    pid_file = tmp_path / "command-pid"
    code = "import os, sys, time; open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(60)"
    backend.ensure_step_service(python_step("long", code))
    replies: list[httpx.Response] = []
    request = threading.Thread(
        target=lambda: replies.append(step_run(host, "long", str(pid_file), job="job-c"))
    )
    request.start()
    wait_until(lambda: pid_file.exists() and pid_file.read_text() != "", what="the command to run")
    service = next(s for s in backend.services() if s["name"] == "long")
    (process,) = [p for p in service["processes"] if p["state"] == "busy"]

    started = time.monotonic()
    assert backend.stop_attempt("long", process["pod"], "job-c", "long", 1) is True
    request.join(20)
    assert not request.is_alive(), "the held step.run was not answered"
    assert time.monotonic() - started < 15, "a 60 s command was not cut short"
    (reply,) = replies
    assert reply.status_code == 200
    assert reply.headers["ce-type"] == "com.xpipe.step.finished"
    assert reply.json()["outcome"] == "cancelled"
    assert reply.json()["pod"] == process["pod"]
    command = Path(f"/proc/{pid_file.read_text()}")
    wait_until(lambda: not command.exists(), timeout_s=5.0, what="the command to be gone")
    assert replicas(backend, "long") == 0  # the stopped process exited, like a deleted pod

    # Idempotent: the attempt has ended, and an attempt that never ran here has nothing to stop.
    assert backend.stop_attempt("long", process["pod"], "job-c", "long", 1) is False
    assert backend.stop_attempt("long", None, "job-never", "long", 1) is False


@pytest.mark.parametrize(
    "body",
    [
        {"service": "long", "jobId": "j", "step": "s"},
        {"service": "", "jobId": "j", "step": "s", "attempt": 1},
        {"service": "long", "jobId": "j", "step": "s", "attempt": True},
        {"service": "long", "jobId": "j", "step": "s", "attempt": 0},
        [1],
    ],
    ids=["no-attempt", "empty-service", "bool-attempt", "attempt-zero", "not-an-object"],
)
def test_a_stop_request_must_name_the_attempt(host: Host, body: Any) -> None:
    response = httpx.post(f"{host.url}/attempts/stop", json=body, timeout=10)
    assert response.status_code == 400
    assert response.json()["message"]


def test_a_service_with_one_revision_has_nothing_to_revert_to(backend: LocalBackend) -> None:
    backend.ensure_step_service(python_step("single", "print('only')", digest="v1"))
    with pytest.raises(NotFound):
        backend.revert_traffic("xpipe-steps", "single", at=1.0)


def test_bad_requests_and_unknown_services(backend: LocalBackend, host: Host) -> None:
    assert step_run(host, "no-such-service", "x").status_code == 404
    assert httpx.post(f"{host.url}/", json={"jobId": "j"}).status_code == 415
    deep = b'{"specversion": "1.0", "id": "1", "source": "/t", "type": "t", "data": ' + b"[" * 5000
    structured = {"content-type": "application/cloudevents+json"}
    refused = httpx.post(f"{host.url}/", content=deep + b"]" * 5000 + b"}", headers=structured)
    assert (refused.status_code, "malformed CloudEvent" in refused.text) == (400, True)
    with pytest.raises(InvalidSpec):
        backend._request("PUT", "/services/x", json={"name": "x"})  # the host refuses an incomplete spec
    with pytest.raises(NotFound):
        backend.revert_traffic("other-namespace", "versions", at=1.0)


def test_an_unreachable_host_is_unavailable_and_diagnostics_still_answer() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    backend = LocalBackend(f"http://127.0.0.1:{port}", backoff_seconds=0.01)
    with pytest.raises(BackendUnavailable):
        backend.ensure_step_service(python_step("x", "pass"))
    report = backend.collect_diagnostics("job-1", ["x"])
    assert report["errors"]
    backend.close()


def test_state_file_keeps_services_across_a_host_restart(tmp_path: Path) -> None:
    state = tmp_path / "host.json"
    first = start_host("--state-file", str(state), "--idle-seconds", "5")
    try:
        LocalBackend(first.url).ensure_step_service(python_step("kept", "print('kept')"))
        LocalBackend(first.url).ensure_step_service(python_step("pin", "print('one')", digest="v1"))
        LocalBackend(first.url).ensure_step_service(python_step("pin", "print('two')", digest="v2"))
        LocalBackend(first.url).revert_traffic("xpipe-steps", "pin", at=50.0)
    finally:
        assert first.stop() == 0
    second = start_host("--state-file", str(state), "--idle-seconds", "5")
    try:
        backend = LocalBackend(second.url)
        assert backend.ensure_step_service(python_step("kept", "print('kept')")) is False
        assert "kept" in step_run(second, "kept", "x").json()["summary"]
        # The pin and its journal time survive too: an earlier restore still leaves it alone.
        kept = backend.restore_traffic("xpipe-steps", "pin", requested_at=49.0)
        assert (kept.pinned_revision, kept.pinned_at) == ("pin-00001", 50.0)
    finally:
        assert second.stop() == 0


def test_a_step_process_killed_mid_run_loses_the_attempt_once_and_is_a_recorded_crash(
    backend: LocalBackend, host: Host, tmp_path: Path
) -> None:
    code = (
        "import os, sys, time; open(sys.argv[1], 'w').write(str(os.getpid())); "
        "time.sleep(3 if 'first' in sys.argv[1] else 0)"
    )
    backend.ensure_step_service(python_step("crashy", code))
    command_pid = tmp_path / "first-pid"
    replies: list[httpx.Response] = []
    request = threading.Thread(
        target=lambda: replies.append(step_run(host, "crashy", str(command_pid), job="job-crash"))
    )
    request.start()

    def busy_pid() -> int | None:
        service = next(s for s in backend.services() if s["name"] == "crashy")
        return next((p["pid"] for p in service["processes"] if p["state"] == "busy"), None)

    wait_until(lambda: command_pid.exists() and command_pid.read_text() != "", what="the command to run")
    pid = busy_pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    request.join(30)
    # The attempt died with its process (as with a pod): delivered, not re-run; the journal's lease decides.
    assert (replies[0].status_code, replies[0].content) == (202, b"")
    first_command = command_pid.read_text()
    command_pid.write_text("")
    redelivered = step_run(host, "crashy", str(command_pid), job="job-crash")  # the same attempt again
    assert redelivered.status_code == 202
    assert command_pid.read_text() == ""  # ... did not run the command again
    wait_until(lambda: replicas(backend, "crashy") == 0, what="the dead process to be dropped")
    entry = backend.collect_diagnostics("job-crash", ["crashy"])["services"]["crashy"]
    assert entry["restarts"] == 1
    assert entry["events"][-1]["event"] == "process crashed"
    assert entry["pods"][-1]["exitCode"] == -signal.SIGKILL
    # The next delivery starts a fresh process.
    # The command does not outlive its runtime (as in a container): gone well before its 3 s sleep ends.
    orphan = Path(f"/proc/{first_command}")
    wait_until(lambda: not orphan.exists(), timeout_s=2.0, what="the crashed runtime's command to be killed")
    assert step_run(host, "crashy", str(tmp_path / "second-pid"), job="job-after-crash").status_code == 200


def test_step_processes_do_not_outlive_a_killed_host() -> None:
    doomed = start_host("--idle-seconds", "60")
    backend = LocalBackend(doomed.url)
    backend.ensure_step_service(python_step("orphan", "print('ok')"))
    assert step_run(doomed, "orphan", "x").status_code == 200
    pid = backend.services()[0]["processes"][0]["pid"]
    backend.close()
    doomed.process.kill()
    doomed.process.wait(10)
    wait_until(lambda: not Path(f"/proc/{pid}").exists(), timeout_s=10, what="the step process to exit")
