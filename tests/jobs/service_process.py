"""A real journal service process for the job tests: ``python -m vms_adapter.server`` on 127.0.0.1:0.

Start-up waits (bounded) for the ``listening on HOST:PORT`` line; ``kill`` is SIGKILL (no flush, no
clean-up), ``stop`` is SIGTERM with a bounded wait. Every process started here is gone after the test.
"""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

from vms_adapter.client import JournalClient

ROOT = Path(__file__).resolve().parents[2]
START_DEADLINE_S = 20.0
STOP_DEADLINE_S = 15.0


class ServiceProcess:
    def __init__(self, data_dir: Path, *args: str) -> None:
        self.data_dir = data_dir
        self.stderr_path = data_dir.parent / f"{data_dir.name}-{time.monotonic_ns()}.stderr"
        self.lines: queue.Queue[str] = queue.Queue()
        command = [sys.executable, "-m", "vms_adapter.server", "--data-dir", str(data_dir)]
        command += ["--host", "127.0.0.1", "--port", "0", "--log-level", "WARNING", *args]
        with open(self.stderr_path, "w") as err:
            self.proc = subprocess.Popen(
                command,
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            )
        assert self.proc.stdout is not None
        threading.Thread(target=self._pump, args=(self.proc.stdout,), daemon=True).start()
        self.port = self._wait_listening()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.put(line.rstrip("\n"))

    def _wait_listening(self) -> int:
        deadline = time.monotonic() + START_DEADLINE_S
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                if self.proc.poll() is not None:
                    raise AssertionError(f"the service exited: {self.stderr_path.read_text()}") from None
                continue
            if line.startswith("listening on "):
                return int(line.rpartition(":")[2])
        self.kill()
        raise AssertionError(f"no 'listening on' within {START_DEADLINE_S} s: {self.stderr_path.read_text()}")

    def client(self) -> JournalClient:
        return JournalClient("127.0.0.1", self.port, retry_deadline=5.0, read_timeout=10.0)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(STOP_DEADLINE_S)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(STOP_DEADLINE_S)
            except subprocess.TimeoutExpired:
                self.kill()
