"""Drive ``xpipe up`` from outside, as a user would: start it as a process, wait for ``ready``, submit
pipelines to the submit function, read jobs from the journal, and stop it.

Used by ``make demo``, the end-to-end tests and ``bench/e2e.py``, so that all three exercise the real
command rather than an in-process shortcut.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import httpx
from cloudevents.conversion import to_binary
from cloudevents.http import CloudEvent, from_http

from vms_adapter.client import JournalClient
from vms_adapter.errors import TOO_LARGE, Rejected
from xpipe.auth import HEADER
from xpipe.devstack.errors import DevstackError
from xpipe.devstack.stack import DEFAULT_MAX_STEP_PROCESSES, StackLayout

READY_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 30.0
PORTS_PER_STACK = 6
POLL_S = 0.2
TERMINAL = frozenset({"SUCCEEDED", "ROLLED_BACK", "ROLLBACK_FAILED", "CANCELLED", "FAILED"})


def free_base_port(attempts: int = 50) -> int:
    """A base port P with P..P+5 free on loopback right now (random, to keep parallel stacks apart)."""
    rng = random.Random()  # noqa: S311 - not security
    for _ in range(attempts):
        base = rng.randrange(20_000, 60_000)
        sockets: list[socket.socket] = []
        try:
            for port in range(base, base + PORTS_PER_STACK):
                sock = socket.socket()
                sockets.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise DevstackError("no free block of ports found")


def is_finished(job: Mapping[str, Any]) -> bool:
    return bool(job.get("finished")) or (job.get("state") in TERMINAL and job.get("state") != "FAILED")


class RunningStack:
    """One ``xpipe up`` process and what it prints."""

    def __init__(
        self,
        data_dir: Path,
        *,
        base_port: int | None = None,
        token: str | None = None,
        ping_interval_s: float = 1.0,
        templates_dir: Path | None = None,
        step_idle_s: float = 30.0,
        max_step_processes: int = DEFAULT_MAX_STEP_PROCESSES,
        extra_env: Mapping[str, str] | None = None,
        echo: IO[str] | None = None,
    ) -> None:
        self.layout = StackLayout(
            data_dir,
            base_port or free_base_port(),
            templates_dir,
            step_idle_s=step_idle_s,
            max_step_processes=max_step_processes,
        )
        self.token = token or uuid.uuid4().hex
        self.ping_interval_s = ping_interval_s
        self._extra_env = dict(extra_env or {})
        self._echo = echo
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self.process: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None
        self._client: JournalClient | None = None

    # lifecycle --------------------------------------------------------------------------------------------

    def start(self, timeout_s: float = READY_TIMEOUT_S) -> RunningStack:
        argv = [
            sys.executable, "-m", "xpipe.cli", "--data-dir", str(self.layout.data_dir),
            "up", "--base-port", str(self.layout.base_port),
            "--ping-interval", f"{self.ping_interval_s:g}",
            "--step-idle-seconds", f"{self.layout.step_idle_s:g}",
            "--max-step-processes", str(self.layout.max_step_processes),
        ]  # fmt: skip
        if self.layout.templates_dir is not None:
            argv += ["--templates-dir", str(self.layout.templates_dir)]
        self.process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **self._extra_env, "XPIPE_TOKEN": self.token},  # not in argv: ps shows argv
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, name="xpipe-up-output", daemon=True)
        self._reader.start()
        try:
            self.wait_line(r"^ready$", timeout_s)
        except BaseException:  # Ctrl-C included: `xpipe up` runs in its own session, nothing else stops it
            self.stop()
            raise
        return self

    def _read(self) -> None:
        assert self.process is not None
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if self._echo is not None:
                self._echo.write(line)
                self._echo.flush()
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_line(self, pattern: str, timeout_s: float, *, after: int = 0) -> str:
        """The first output line (from index ``after``) matching ``pattern``; ``DevstackError`` after
        ``timeout_s`` or when ``xpipe up`` exited."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while True:
                for line in self.lines[after:]:
                    if regex.search(line):
                        return line
                assert self.process is not None
                if self.process.poll() is not None and not (self._reader and self._reader.is_alive()):
                    raise DevstackError(f"xpipe up exited ({self.process.returncode}): {self.lines[-15:]}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise DevstackError(
                        f"no line matching {pattern!r} within {timeout_s:g} s: {self.lines[-15:]}"
                    )
                self._changed.wait(min(left, 0.5))

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM ``xpipe up`` and wait for it; SIGKILL its group if it overstays. Returns its exit code."""
        if self._client is not None:
            self._client.close()
            self._client = None
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
        if self._reader is not None:
            self._reader.join(5)
        return self.process.returncode

    def __enter__(self) -> RunningStack:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    # what runs ----------------------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        state: dict[str, Any] = json.loads((self.layout.data_dir / "stack.json").read_text())
        return state

    def pid(self, component: str) -> int:
        pid = self.state()["components"][component]["pid"]
        if not isinstance(pid, int):
            raise DevstackError(f"{component} has no process")
        return pid

    # talking to it ------------------------------------------------------------------------------------------

    def journal(self) -> JournalClient:
        if self._client is None:
            host, port = self.layout.journal_address
            secret = self.layout.secret_file.read_bytes().strip()
            self._client = JournalClient(host, port, secret=secret, retry_deadline=20.0)
        return self._client

    def submit(
        self,
        template: str,
        params: Mapping[str, Any] | None = None,
        *,
        event_id: str | None = None,
        timeout_s: float = 60.0,
    ) -> str:
        """Send ``com.xpipe.pipeline.submit`` to the submit function; return the registered job id.
        Retries what Knative would retry, with the same event id (registered once)."""
        event = CloudEvent(
            {
                "type": "com.xpipe.pipeline.submit",
                "source": "/xpipe/devstack",
                "id": event_id or str(uuid.uuid4()),
                "datacontenttype": "application/json",
            },
            {"template": template, "params": dict(params or {}), "requestedBy": "devstack"},
        )
        headers, body = to_binary(event)
        headers[HEADER] = self.token
        deadline = time.monotonic() + timeout_s
        url = self.layout.function_url("submit")
        while True:
            try:
                response = httpx.post(url, headers=headers, content=body, timeout=30.0, trust_env=False)
                if response.status_code == 200:
                    reply = from_http(dict(response.headers), response.content)
                    return str(reply.data["jobId"])
                if response.status_code not in (404, 408, 409, 429) and response.status_code < 500:
                    raise DevstackError(
                        f"submit refused {template}: {response.status_code} {response.text[:300]}"
                    )
                problem = f"HTTP {response.status_code}"
            except httpx.TransportError as exc:
                problem = type(exc).__name__
            if time.monotonic() > deadline:
                raise DevstackError(f"submit of {template} kept failing ({problem})")
            time.sleep(POLL_S)

    def job(self, job_id: str) -> dict[str, Any]:
        """The journal's whole view of the job (READ_JOB)."""
        return self.journal().read_job(job_id)

    def summaries(self, template: str | None = None) -> dict[str, dict[str, Any]]:
        """Every job's summary (LIST_JOBS, all pages) by job id: small, whatever a job's history holds."""
        found: dict[str, dict[str, Any]] = {}
        after: str | None = None
        while True:
            page = self.journal().list_jobs({"template": template} if template else {}, after=after, limit=50)
            found.update({str(job["jobId"]): job for job in page.jobs})
            after = page.next_cursor
            if after is None:
                return found

    def progress(self, job_id: str) -> dict[str, Any]:
        """The job's view, or its summary when the view is too large for one journal frame."""
        try:
            return self.job(job_id)
        except Rejected as exc:
            if exc.code != TOO_LARGE:
                raise
            return self.summaries().get(job_id, {"jobId": job_id})

    def wait_finished(self, job_id: str, timeout_s: float) -> dict[str, Any]:
        """Wait until the job is finished, then return its whole view."""
        deadline = time.monotonic() + timeout_s
        while True:
            seen = self.progress(job_id)
            if is_finished(seen):
                return self.job(job_id)
            if time.monotonic() > deadline:
                raise DevstackError(f"job {job_id} still {seen.get('state')} after {timeout_s:g} s")
            time.sleep(POLL_S)
