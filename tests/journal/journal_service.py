"""Helpers for the journal tests: a REAL service process on 127.0.0.1, started on a free port (port 0).

The fixture reads ``listening on HOST:PORT`` from the service's stdout with a deadline, so a service
that never comes up fails the test instead of hanging it. Every process is stopped (SIGTERM, then
SIGKILL after a deadline) when the test ends.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vms_adapter.client import JournalClient
from vms_adapter.server.front import JournalFront
from vms_adapter.server.operations import Operations

ROOT = Path(__file__).resolve().parents[2]
START_DEADLINE_S = 20.0
STOP_DEADLINE_S = 15.0
# Short time-outs so that the limits can be observed quickly.
FAST_LIMITS = ("--idle-timeout", "3", "--frame-timeout", "1.5", "--log-level", "WARNING")


@dataclass
class JournalServer:
    """A running service process and how to reach it."""

    data_dir: Path
    proc: subprocess.Popen[str]
    stderr_path: Path
    host: str = "127.0.0.1"
    port: int = 0
    secret: bytes | None = None
    lines: queue.Queue[str] = field(default_factory=queue.Queue)

    def client(self, **options: Any) -> JournalClient:
        options.setdefault("secret", self.secret)
        options.setdefault("retry_deadline", 5.0)
        options.setdefault("read_timeout", 10.0)
        return JournalClient(self.host, self.port, **options)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stop(self) -> int:
        """SIGTERM and wait for a clean exit (bounded)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(STOP_DEADLINE_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(STOP_DEADLINE_S)
            raise AssertionError("the journal service did not stop within the deadline") from None

    def kill(self) -> None:
        """kill -9: no flush, no clean-up."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(STOP_DEADLINE_S)


def _pump(stream: Any, lines: queue.Queue[str]) -> None:
    for line in stream:
        lines.put(line.rstrip("\n"))


def spawn(
    data_dir: Path, *args: str, python: str = sys.executable, secret: bytes | None = None
) -> JournalServer:
    """Start the service process (not waiting for it)."""
    extra = list(args)
    if secret is not None:
        secret_file = data_dir.parent / f"{data_dir.name}-secret.txt"
        secret_file.write_bytes(secret + b"\n")
        extra += ["--secret-file", str(secret_file)]
    stderr_path = data_dir.parent / f"{data_dir.name}-{time.monotonic_ns()}.stderr"
    with open(stderr_path, "w") as err:
        proc = subprocess.Popen(
            [
                python,
                "-m",
                "vms_adapter.server",
                "--data-dir",
                str(data_dir),
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                *list(FAST_LIMITS),
                *extra,
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
    server = JournalServer(data_dir=data_dir, proc=proc, stderr_path=stderr_path, secret=secret)
    threading.Thread(target=_pump, args=(proc.stdout, server.lines), daemon=True).start()
    return server


def wait_listening(server: JournalServer) -> JournalServer:
    """Wait (bounded) for the ``listening on`` line and take the port from it."""
    deadline = time.monotonic() + START_DEADLINE_S
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            server.kill()
            raise AssertionError(f"no 'listening on' within {START_DEADLINE_S} s; stderr:\n{server.stderr()}")
        try:
            line = server.lines.get(timeout=min(left, 0.5))
        except queue.Empty:
            if server.proc.poll() is not None:
                raise AssertionError(
                    f"the service exited with {server.proc.returncode}:\n{server.stderr()}"
                ) from None
            continue
        if line.startswith("listening on "):
            host, _, port = line.removeprefix("listening on ").rpartition(":")
            assert host == "127.0.0.1"
            server.port = int(port)
            return server


def start(data_dir: Path, *args: str, **options: Any) -> JournalServer:
    return wait_listening(spawn(data_dir, *args, **options))


def exit_of(server: JournalServer) -> int:
    """The exit code of a service expected to stop by itself (bounded wait)."""
    try:
        return server.proc.wait(START_DEADLINE_S)
    except subprocess.TimeoutExpired:
        server.kill()
        raise AssertionError("the service did not exit") from None


def in_process_front(operations: Operations, stopping: threading.Event | None = None) -> JournalFront:
    """The service's real front in this process (for tests that reach into its loop), listening on a
    free port of 127.0.0.1, not serving yet: run ``serve_until_stopped`` on a thread."""
    return JournalFront(
        operations,
        host="127.0.0.1",
        port=0,
        secret=None,
        tls=None,
        max_connections=8,
        idle_timeout_s=30.0,
        frame_timeout_s=5.0,
        stopping=stopping,
    )
