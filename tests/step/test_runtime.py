"""The step runtime end to end: a real `xpipe-step` process running real commands, a real HTTP sink."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest
from cloudevents.http import from_http
from step_harness import RuntimeProcess, heartbeats_of, release_fifo, start_runtime
from support.event_sink import EventSink
from support.waiting import wait_until

STEP_RUN_HEADERS = {
    "ce-specversion": "1.0", "ce-type": "com.xpipe.step.run", "ce-source": "/test", "ce-id": "escape",
}  # fmt: skip


def finished_of(response: httpx.Response) -> tuple[dict[str, str], dict[str, object]]:
    """The reply as CloudEvent attributes and data; asserts it is a binary-mode step.finished."""
    assert response.status_code == 200, response.text
    assert response.headers["ce-type"] == "com.xpipe.step.finished"
    assert response.headers["content-type"] == "application/json"
    event = from_http(dict(response.headers), response.content)
    return dict(event.get_attributes()), event.get_data()


def test_success_replies_finished_with_output_tail_and_routing_extensions(
    runtime: RuntimeProcess, tmp_path: Path
) -> None:
    response = runtime.post_run("job-ok", {"action": "exit", "arg": "0", "out": str(tmp_path / "x")})
    attributes, data = finished_of(response)
    assert data["outcome"] == "succeeded"
    assert data["exitCode"] == 0
    assert data["pod"] == "pod-under-test"
    assert "step_program exit 0" in str(data["summary"])
    assert attributes["xpipejob"] == "job-ok"
    assert attributes["xpipestep"] == "demo-build"
    assert attributes["xpipecluster"] == "test-cluster"  # K_CE_OVERRIDES applies to the reply too


def test_failing_exit_code_is_reported_with_stderr_in_the_summary(
    runtime: RuntimeProcess, tmp_path: Path
) -> None:
    _, data = finished_of(runtime.post_run("job-fail", {"action": "exit", "arg": "3", "out": str(tmp_path)}))
    assert data["outcome"] == "failed"
    assert data["exitCode"] == 3
    assert "failing on purpose" in str(data["summary"])


def test_hostile_param_reaches_the_command_as_one_literal_argv_element(
    runtime: RuntimeProcess, tmp_path: Path
) -> None:
    out = tmp_path / "argv.json"
    hostile = "; rm -rf / $(id) `id` {{ params.out }}"
    _, data = finished_of(
        runtime.post_run("job-hostile", {"action": "argv", "arg": hostile, "out": str(out)})
    )
    assert data["outcome"] == "succeeded"
    seen = json.loads(out.read_text())
    assert seen["argv"] == ["argv", hostile, str(out)]
    assert seen["env"]["GREETING_RENDERED"] == f"hello {hostile}"  # service env rendered per run
    assert seen["env"]["GREETING"] == "inherited"
    assert seen["env"]["XPIPE_PARAM_ARG"] == hostile
    assert seen["env"]["XPIPE_JOB_ID"] == "job-hostile"
    assert seen["env"]["XPIPE_ATTEMPT"] == "1"


def test_missing_param_fails_the_attempt_without_running_anything(
    runtime: RuntimeProcess, tmp_path: Path
) -> None:
    out = tmp_path / "never"
    _, data = finished_of(runtime.post_run("job-missing", {"action": "sleep", "out": str(out)}))
    assert data["outcome"] == "failed"
    assert "exitCode" not in data
    assert "'arg'" in str(data["summary"])
    assert not out.exists()


def test_hang_past_deadline_is_killed_and_its_heartbeats_stop(
    runtime: RuntimeProcess, sink: EventSink, tmp_path: Path
) -> None:
    # The stop margin is the grace (0.5 s) plus 2 s for the reply: the command runs for 1.5 s.
    deadline = datetime.now(timezone.utc) + timedelta(seconds=4)
    params = {"action": "hang", "arg": "0", "out": str(tmp_path / "pids")}
    _, data = finished_of(runtime.post_run("job-hang", params, deadline=deadline.isoformat()))
    # SIGTERM, the grace and SIGKILL all happened early enough for the reply to beat the deadline (Knative
    # cuts the request at its time-out, and a reply after it would be lost and the run retried).
    assert datetime.now(timezone.utc) < deadline
    assert data["outcome"] == "timed-out"
    assert data["exitCode"] == -9  # it ignored SIGTERM, so the grace period ended in SIGKILL
    beats = sink.matching(heartbeats_of("job-hang"))
    assert len(beats) >= 2
    first = beats[0]
    assert first["xpipestep"] == "demo-build"
    assert first["xpipejob"] == "job-hang"
    assert first["xpipecluster"] == "test-cluster"
    assert first.get_data()["pod"] == "pod-under-test"
    assert first.get_data()["attempt"] == 1
    # The next run's heart-beats arriving proves time has passed; the killed one sent none meanwhile.
    finished_of(
        runtime.post_run("job-after-hang", {"action": "sleep", "arg": "0.5", "out": str(tmp_path / "s")})
    )
    sink.wait_for(heartbeats_of("job-after-hang"), count=2)
    assert len(sink.matching(heartbeats_of("job-hang"))) == len(beats)
    pid = int((tmp_path / "pids").read_text().split()[0])
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]


def test_deadline_already_passed_runs_nothing(runtime: RuntimeProcess, tmp_path: Path) -> None:
    past = (datetime.now(timezone.utc) - timedelta(seconds=1)).isoformat()
    out = tmp_path / "never"
    _, data = finished_of(
        runtime.post_run("job-late", {"action": "sleep", "arg": "0", "out": str(out)}, deadline=past)
    )
    assert data["outcome"] == "timed-out"
    assert not out.exists()


def test_a_deadline_closer_than_the_stop_margin_runs_nothing(runtime: RuntimeProcess, tmp_path: Path) -> None:
    # The margin is the grace (0.5 s) plus 2 s: a command started now could not be stopped and replied
    # for by the deadline.
    soon = (datetime.now(timezone.utc) + timedelta(seconds=1.5)).isoformat()
    out = tmp_path / "never"
    _, data = finished_of(
        runtime.post_run("job-too-soon", {"action": "sleep", "arg": "0", "out": str(out)}, deadline=soon)
    )
    assert data["outcome"] == "timed-out"
    assert "no time left to run" in str(data["summary"])
    assert not out.exists()


def test_duplicate_step_run_runs_the_command_once_and_gets_the_same_reply(
    sink: EventSink, tmp_path: Path
) -> None:
    # The command blocks until the test releases it, so the duplicate surely arrives while it runs.
    log_file = tmp_path / "runtime.log"
    runtime = start_runtime(sink.url, log_file=log_file)
    try:
        out, fifo = tmp_path / "runs", tmp_path / "go"
        os.mkfifo(fifo)
        params = {"action": "block", "arg": str(fifo), "out": str(out)}
        replies: list[httpx.Response] = []

        def post_in_background() -> threading.Thread:
            thread = threading.Thread(target=lambda: replies.append(runtime.post_run("job-dup", params)))
            thread.start()
            return thread

        first = post_in_background()
        wait_until(lambda: out.exists() and out.read_text().endswith("\n"), what="the command to start")
        busy = runtime.post_run("job-other", params)  # a different attempt meanwhile: one run per instance
        assert busy.status_code == 429
        assert busy.headers["retry-after"] == "1"
        during = post_in_background()
        wait_until(
            lambda: "duplicate step.run joins the existing attempt" in log_file.read_text(),
            what="the duplicate to join the running attempt",
        )
        release_fifo(fifo)
        first.join(30)
        during.join(30)
        assert len(replies) == 2
        after = runtime.post_run("job-dup", params)  # after the run: the remembered reply
        ids = {reply.headers["ce-id"] for reply in [*replies, after]}
        assert len(ids) == 1
        assert {reply.content for reply in [*replies, after]} == {after.content}
        assert finished_of(after)[1]["outcome"] == "succeeded"
        assert len(out.read_text().splitlines()) == 1
        # A new attempt of the same step is a different run.
        _, data = finished_of(
            runtime.post_run("job-dup", {**params, "action": "sleep", "arg": "0"}, attempt=2)
        )
        assert data["attempt"] == 2
        assert len(out.read_text().splitlines()) == 2
    finally:
        runtime.stop()


def test_bad_requests_get_precise_statuses_and_start_nothing(runtime: RuntimeProcess, tmp_path: Path) -> None:
    client, url = runtime.client, runtime.url
    valid = {
        "jobId": "j",
        "step": "s",
        "attempt": 1,
        "params": {"action": "sleep", "arg": "0", "out": str(tmp_path / "x")},
    }
    ce = {"ce-specversion": "1.0", "ce-source": "/t", "ce-id": "1", "ce-type": "com.xpipe.step.run"}
    assert client.post(url, json=valid).status_code == 415
    assert (
        client.post(
            url, content=b"{not json", headers={"content-type": "application/cloudevents+json"}
        ).status_code
        == 400
    )
    assert (
        client.post(url, json=valid, headers={**ce, "ce-type": "com.xpipe.step.heartbeat"}).status_code == 400
    )
    assert client.post(url, json={**valid, "attempt": 0}, headers=ce).status_code == 400
    assert client.post(url, json={**valid, "surprise": 1}, headers=ce).status_code == 400
    assert client.post(url, json=[1, 2], headers=ce).status_code == 400
    assert client.post(url, content=b"x" * (1024 * 1024 + 1), headers=ce).status_code == 413
    assert client.post(url + "other", json=valid, headers=ce).status_code == 404
    assert not (tmp_path / "x").exists()
    assert client.get(url + "health/liveness").status_code == 200
    assert client.get(url + "health/readiness").status_code == 200


def test_structured_mode_is_accepted(runtime: RuntimeProcess, tmp_path: Path) -> None:
    envelope = {
        "specversion": "1.0", "type": "com.xpipe.step.run", "source": "/t", "id": "structured-1",
        "datacontenttype": "application/json",
        "data": {"jobId": "job-structured", "step": "build", "attempt": 1,
                 "params": {"action": "exit", "arg": "0", "out": str(tmp_path)}},
    }  # fmt: skip
    response = runtime.client.post(
        runtime.url, content=json.dumps(envelope), headers={"content-type": "application/cloudevents+json"}
    )
    _, data = finished_of(response)
    assert data["outcome"] == "succeeded"


def test_sigterm_cancels_the_running_command_and_still_replies(sink: EventSink, tmp_path: Path) -> None:
    runtime = start_runtime(sink.url)
    try:
        replies: list[httpx.Response] = []
        params = {"action": "hang", "arg": "0", "out": str(tmp_path / "pids")}
        request = threading.Thread(target=lambda: replies.append(runtime.post_run("job-term", params)))
        request.start()
        pids = tmp_path / "pids"
        wait_until(lambda: pids.exists() and pids.read_text().endswith("\n"), what="the command to start")
        runtime.process.terminate()
        request.join(30)
        _, data = finished_of(replies[0])
        assert data["outcome"] == "cancelled"
        assert runtime.process.wait(10) == 0
        pid = int((tmp_path / "pids").read_text().split()[0])
        assert not Path(f"/proc/{pid}").exists()
    finally:
        runtime.stop()


def test_an_unreachable_sink_never_fails_the_step(tmp_path: Path) -> None:
    runtime = start_runtime(closed_port_url())
    try:
        _, data = finished_of(
            runtime.post_run("job-nosink", {"action": "sleep", "arg": "0.5", "out": str(tmp_path / "s")})
        )
        assert data["outcome"] == "succeeded"
    finally:
        runtime.stop()


def closed_port_url() -> str:
    """A loopback URL on a port that was free a moment ago and has nothing listening."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def test_runtime_refuses_to_start_without_a_command() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "xpipe.step"], check=False, capture_output=True, timeout=30, env=os.environ
    )
    assert result.returncode == 2
    assert b"no command" in result.stderr


def test_malformed_ce_overrides_refuse_to_start() -> None:
    env = {**os.environ, "K_CE_OVERRIDES": "{not json"}
    command = [sys.executable, "-m", "xpipe.step", "--", "true"]
    result = subprocess.run(command, check=False, capture_output=True, timeout=30, env=env)
    assert result.returncode == 2
    assert b"K_CE_OVERRIDES" in result.stderr


def test_a_command_that_cannot_start_fails_with_127(sink: EventSink) -> None:
    runtime = start_runtime(sink.url, argv=["/nonexistent/step-command", "{{ params.arg }}"])
    try:
        _, data = finished_of(runtime.post_run("job-missing-binary", {"arg": "x"}))
        assert data["outcome"] == "failed"
        assert data["exitCode"] == 127
        assert "command not found" in str(data["summary"])
    finally:
        runtime.stop()


def test_deeply_nested_json_is_a_final_400_not_a_dropped_connection(
    runtime: RuntimeProcess, tmp_path: Path
) -> None:
    deep = "[" * 100_000 + "]" * 100_000
    structured = (
        '{"specversion": "1.0", "type": "com.xpipe.step.run", "source": "/t", "id": "deep-1", '
        f'"datacontenttype": "application/json", "data": {deep}}}'
    )
    ce = {"ce-specversion": "1.0", "ce-source": "/t", "ce-id": "deep-2", "ce-type": "com.xpipe.step.run"}
    for content, headers in [
        (structured, {"content-type": "application/cloudevents+json"}),
        (deep, {**ce, "content-type": "application/json"}),
    ]:
        response = runtime.client.post(runtime.url, content=content, headers=headers)
        assert response.status_code == 400, response.text
        assert response.json()["message"].startswith("malformed CloudEvent")
    # The runtime still serves runs afterwards.
    _, data = finished_of(
        runtime.post_run("job-after-deep", {"action": "exit", "arg": "0", "out": str(tmp_path)})
    )
    assert data["outcome"] == "succeeded"


def process_gone(pid: int) -> bool:
    """Neither running nor a zombie waiting to be reaped."""
    return not Path(f"/proc/{pid}").exists()


@pytest.mark.parametrize("how", ["setsid", "group"])
def test_leftovers_holding_the_output_pipe_neither_delay_the_reply_nor_outlive_the_run(
    sink: EventSink, tmp_path: Path, how: str
) -> None:
    # A grace period far longer than the client's time-out: waiting on the pipe for it would fail the test.
    runtime = start_runtime(sink.url, "--stop-grace-seconds", "120")
    try:
        out = tmp_path / "leftover"
        response = runtime.client.post(
            runtime.url,
            headers=STEP_RUN_HEADERS,
            json={"jobId": f"job-escape-{how}", "step": "build", "attempt": 1,
                  "params": {"action": "escape", "arg": how, "out": str(out)}},
            timeout=20,
        )  # fmt: skip
        _, data = finished_of(response)
        assert data["outcome"] == "succeeded"
        leftover = int(out.read_text())
        wait_until(
            lambda: process_gone(leftover), timeout_s=5, what=f"leftover {leftover} to be killed and reaped"
        )
        assert runtime.client.get(runtime.url + "health/readiness").status_code == 200
    finally:
        runtime.stop()
