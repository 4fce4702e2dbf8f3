"""Test harness for the step runtime: a real `xpipe-step` process and a real HTTP sink for its events."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from cloudevents.http import CloudEvent
from support.processes import stop_process
from support.waiting import wait_until

STEP_PROGRAM = str(Path(__file__).with_name("step_program.py"))
PROGRAM_ARGV = [sys.executable, STEP_PROGRAM, "{{ params.action }}", "{{ params.arg }}", "{{ params.out }}"]
OVERRIDES = '{"extensions": {"xpipecluster": "test-cluster"}}'


def heartbeats_of(job_id: str) -> Callable[[CloudEvent], bool]:
    return lambda event: event["type"] == "com.xpipe.step.heartbeat" and event.get_data()["jobId"] == job_id


@dataclass
class RuntimeProcess:
    """A running `xpipe-step` process and a client to send it step.run events."""

    process: subprocess.Popen[bytes]
    url: str
    client: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=30.0))

    def post_run(
        self, job_id: str, params: dict[str, str], attempt: int = 1, deadline: str | None = None
    ) -> httpx.Response:
        data: dict[str, Any] = {"jobId": job_id, "step": "build", "attempt": attempt, "params": params}
        if deadline is not None:
            data["deadline"] = deadline
        headers = {
            "ce-specversion": "1.0",
            "ce-type": "com.xpipe.step.run",
            "ce-source": "/test",
            "ce-id": str(uuid.uuid4()),
            "ce-xpipejob": job_id,
            "ce-xpipestep": "demo-build",
        }
        return self.client.post(self.url, headers=headers, json=data)

    def stop(self) -> int:
        stop_process(self.process, 10.0)
        self.client.close()
        return self.process.returncode


def start_runtime(
    sink_url: str, *options: str, argv: list[str] | None = None, log_file: Path | None = None
) -> RuntimeProcess:
    """Start `python -m xpipe.step` on a socket we bound (port 0), ready when this returns.

    With `log_file`, the runtime's own log (JSON lines on stderr) goes there, for tests that wait on it.
    """
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    env = {
        **os.environ,
        "K_SINK": sink_url,
        "K_CE_OVERRIDES": OVERRIDES,
        "HOSTNAME": "pod-under-test",
        "GREETING": "inherited",
    }
    command = [
        sys.executable, "-m", "xpipe.step", "--listen-fd", str(listener.fileno()),
        "--service", "demo-build", "--heartbeat-seconds", "0.2", "--stop-grace-seconds", "0.5",
        *options, "--", *(argv or PROGRAM_ARGV),
    ]  # fmt: skip
    if log_file is None:
        process = subprocess.Popen(command, env=env, pass_fds=[listener.fileno()])
    else:
        with log_file.open("ab") as stderr:
            process = subprocess.Popen(command, env=env, pass_fds=[listener.fileno()], stderr=stderr)
    listener.close()
    runtime = RuntimeProcess(process, f"http://127.0.0.1:{port}/")
    deadline = time.monotonic() + 15
    while True:  # the socket already listens, so this only waits for the runtime to accept
        try:
            if runtime.client.get(runtime.url + "health/readiness", timeout=5).status_code == 200:
                return runtime
        except httpx.TransportError:
            pass
        assert process.poll() is None, "the step runtime exited during start-up"
        assert time.monotonic() < deadline, "the step runtime did not become ready"
        time.sleep(0.05)


def release_fifo(fifo: Path, timeout: float = 10.0) -> None:
    """Let a command blocked reading `fifo` (step_program's `block`) go on: open it for writing and close."""

    def opened() -> bool:
        try:
            descriptor = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as error:
            if error.errno == errno.ENXIO:  # no reader yet
                return False
            raise
        os.close(descriptor)
        return True

    wait_until(opened, timeout_s=timeout, what=f"a reader of {fifo}")
