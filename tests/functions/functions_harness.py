"""Real parts for the function tests: a journal service process, a CloudEvent sink standing in for the
broker (K_SINK), and a function served by the real functions-framework (gunicorn) in a subprocess."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
from cloudevents.conversion import to_binary, to_structured
from cloudevents.http import CloudEvent, from_http
from support.event_sink import EventSink
from support.processes import stop_process
from support.waiting import wait_until

from vms_adapter.client import JournalClient
from xpipe.auth import token_digest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
FUNCTIONS_FRAMEWORK = str(BIN / "functions-framework")
START_TIMEOUT = 30.0

SUBMIT_TOKEN = "submit-token-" + "s" * 24
RELAY_TOKEN = "relay-token-" + "r" * 24
ADMIN_TOKEN = "admin-token-" + "a" * 24


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def write_tokens(path: Path) -> Path:
    entries = [
        {"name": "magento", "scope": "submit", "sha256": token_digest(SUBMIT_TOKEN)},
        {"name": "broker", "scope": "relay", "sha256": token_digest(RELAY_TOKEN)},
        {"name": "ops", "scope": "admin", "sha256": token_digest(ADMIN_TOKEN)},
    ]
    path.write_text(json.dumps(entries))  # JSON is YAML
    return path


class JournalProcess:
    """``python -m vms_adapter.server`` on 127.0.0.1; restartable on the same port and data directory."""

    def __init__(self, data_dir: Path, log_path: Path, extra_args: tuple[str, ...] = ()) -> None:
        self.data_dir = data_dir
        self.log_path = log_path
        self.extra_args = extra_args
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> JournalProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "vms_adapter.server", "--data-dir", str(self.data_dir),
             "--host", "127.0.0.1", "--port", str(self.port), *self.extra_args],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=log,
        )  # fmt: skip
        log.close()
        assert self.process.stdout is not None
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            line = self.process.stdout.readline().decode()
            if not line:
                break
            match = re.search(r"listening on [\d.]+:(\d+)", line)
            if match:
                self.port = int(match.group(1))
                return self
        self.stop()
        raise AssertionError(f"journal did not start; see {self.log_path}")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client(self) -> JournalClient:
        return JournalClient("127.0.0.1", self.port, retry_deadline=2.0)

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process, 15.0)
        if self.process is not None and self.process.stdout is not None:
            self.process.stdout.close()
        self.process = None


class FunctionServer:
    """One function served by ``functions-framework`` (gunicorn) in a subprocess on a free port."""

    def __init__(self, name: str, env: Mapping[str, str], log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("XPIPE_", "K_"))}
        self.env.update({"PYTHONUNBUFFERED": "1", "THREADS": "8", **env})
        self.port_retries = 3
        self._start()

    def _start(self) -> None:
        # functions-framework takes a port number, not a socket: the free port may be taken by another
        # process before gunicorn binds it, and then wait_until starts over on another port.
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [FUNCTIONS_FRAMEWORK, "--target", "handle", "--source", f"functions/{self.name}/main.py",
                 "--host", "127.0.0.1", "--port", str(self.port)],
                cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        self.http = httpx.Client(base_url=self.url, timeout=30.0)

    def wait_until(self, path: str, timeout: float = START_TIMEOUT) -> FunctionServer:
        """Poll ``path`` until it answers 200; fail with the server's log if it exits or time runs out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                latest = self.log_path.read_bytes()[self._log_offset :]
                if b"Address already in use" in latest and self.port_retries > 0:
                    self.port_retries -= 1
                    self.http.close()
                    self._start()
                    continue
                raise AssertionError(f"{self.name} exited {self.process.returncode}:\n{self.log()}")
            try:
                if self.http.get(path, timeout=2.0).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.05)  # poll interval while waiting on a condition with a deadline
        self.stop()  # a fixture that fails here never reaches its own stop(): do not leave the server behind
        raise AssertionError(f"{self.name} not answering 200 on {path} within {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def wait_for_log(self, text: str, timeout: float = 10.0) -> str:
        """The whole log once ``text`` is in it: INFO lines are written in batches, up to 50 ms late."""
        wait_until(
            lambda: text in self.log_path.read_text(errors="replace"),
            timeout,
            f"{text!r} in {self.name}'s log",
        )
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        self.http.close()
        stop_process(self.process, 15.0)

    def post(
        self,
        event: CloudEvent,
        *,
        token: str | None,
        structured: bool = False,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        head, body = to_structured(event) if structured else to_binary(event)
        all_headers = dict(head)
        if token is not None:
            all_headers["X-Token-XPipe"] = token
        all_headers.update(headers or {})
        return self.http.post("/", headers=all_headers, content=body)


def cloud_event(event_type: str, data: Any, *, source: str = "/tests", **attributes: Any) -> CloudEvent:
    return CloudEvent(
        {"type": event_type, "source": source, "id": str(uuid.uuid4()), "datacontenttype": "application/json",
         **attributes},
        data,
    )  # fmt: skip


def journal_counts(client: JournalClient) -> tuple[int, int]:
    """(job ids, committed idempotency keys): what must stay unchanged when a request is refused.

    Every fact a function commits carries an idempotency key, so a refused or deduplicated request
    leaves both numbers unchanged. ``lastSeq`` is no measure: acknowledgements of earlier requests'
    directives are batched in the background and may land at any time (they carry no key).
    """
    stats = client.stats()
    return int(stats["jobs"]), int(stats["idempotencyKeys"])


def function_env(journal: JournalProcess, sink: EventSink, tokens: Path, **extra: str) -> dict[str, str]:
    return {
        "XPIPE_JOURNAL": journal.address,
        "XPIPE_TOKENS_FILE": str(tokens),
        "K_SINK": sink.url,
        "XPIPE_JOURNAL_RETRY_SECONDS": "0.5",
        "XPIPE_JOURNAL_TIMEOUT_SECONDS": "5",
        "XPIPE_PUBLISH_TIMEOUT_SECONDS": "2",
        **extra,
    }


class StepHost:
    """The local step host (``python -m xpipe.backends.local_host``): runs step services as processes."""

    def __init__(self, sink_url: str, log_path: Path) -> None:
        # The test binds the port and hands the listening socket over: no window for another to take it.
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        self.port = int(listener.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        with log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "xpipe.backends.local_host", "--listen-fd", str(listener.fileno()),
                 "--sink", sink_url],
                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, pass_fds=(listener.fileno(),),
            )  # fmt: skip
        listener.close()
        self.log_path = log_path
        self.http = httpx.Client(base_url=self.url, timeout=60.0)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"step host exited:\n{log_path.read_text()[-4000:]}")
            try:
                if self.http.get("/health/readiness", timeout=2.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)  # poll interval while waiting on a condition with a deadline
        raise AssertionError("step host did not become healthy")

    def deliver(self, run: CloudEvent) -> CloudEvent:
        """Deliver a ``step.run`` as the router would and return the step's ``step.finished`` reply."""
        headers, body = to_binary(run)
        response = self.http.post("/", headers=headers, content=body)
        assert response.status_code == 200, response.text
        return from_http(dict(response.headers), response.content)

    def stop(self) -> None:
        self.http.close()
        stop_process(self.process, 20.0)


def wait_for_directive(client: JournalClient, job_id: str, directive_id: str, status: str) -> None:
    """Acknowledgements are batched in the background: wait (bounded) until the journal shows ``status``."""
    deadline = time.monotonic() + 10.0
    seen = None
    while time.monotonic() < deadline:
        seen = {d["id"]: d["status"] for d in client.read_job(job_id)["directives"]}.get(directive_id)
        if seen == status:
            return
        time.sleep(0.02)  # poll interval while waiting on a condition with a deadline
    raise AssertionError(f"directive {directive_id} of {job_id} is {seen!r}, not {status!r}, after 10 s")
