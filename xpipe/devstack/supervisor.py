"""Runs the local stack's processes as a kubelet runs pods: start them, wait for their health checks,
restart one that dies with a growing back-off, and stop them all without leaving a process behind.

Each component runs in its own process group (``start_new_session``), so stopping it reaches what it
started too (gunicorn workers, step processes); on Linux the child also gets SIGTERM if the supervisor
itself dies (``PR_SET_PDEATHSIG``). Every wait is bounded: SIGTERM, then SIGKILL after a grace period.
The supervisor writes ``stack.json`` (pids, endpoints, restarts) into the data directory so the CLI and
the end-to-end tests can find the processes.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

from xpipe.devstack.errors import DevstackError

INITIAL_BACKOFF_S = 0.5
MAX_BACKOFF_S = 10.0
# A component that stayed up this long has its back-off reset (the kubelet waits 10 minutes; dev is faster).
STABLE_AFTER_S = 30.0
HEALTH_PROBE_TIMEOUT_S = 1.0
MONITOR_PERIOD_S = 0.2
STOP_GRACE_S = 10.0
_PR_SET_PDEATHSIG = 1


class ComponentFailed(DevstackError):
    """A component did not become healthy in time, or exited while the stack was starting."""


@dataclass(frozen=True)
class ComponentSpec:
    """How to run one component and how to tell that it is healthy."""

    name: str
    argv: Sequence[str]
    env: Mapping[str, str]
    endpoint: str  # what the user is told: a URL or HOST:PORT
    health_url: str | None = None  # HTTP GET answering 200 means healthy
    health_tcp: tuple[str, int] | None = None  # else: a TCP connect succeeding
    cwd: Path | None = None


@dataclass
class Component:
    """One running (or restarting) component."""

    spec: ComponentSpec
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restarts: int = 0
    backoff_s: float = INITIAL_BACKOFF_S
    restart_at: float | None = None
    healthy: bool = False
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None


def _die_with_parent() -> None:
    """In the child, before exec: ask Linux to send SIGTERM if the supervisor dies."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def probe(spec: ComponentSpec) -> bool:
    """One bounded health check."""
    if spec.health_url is not None:
        try:
            return (
                httpx.get(spec.health_url, timeout=HEALTH_PROBE_TIMEOUT_S, trust_env=False).status_code == 200
            )
        except httpx.HTTPError:
            return False
    if spec.health_tcp is not None:
        try:
            with socket.create_connection(spec.health_tcp, timeout=HEALTH_PROBE_TIMEOUT_S):
                return True
        except OSError:
            return False
    return True


def describe_exit(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
        return f"killed by signal {-code}"
    return f"exit code {code}"


class Supervisor:
    """Starts, watches and stops a list of components; reports through ``say`` (one line each)."""

    def __init__(
        self,
        specs: Sequence[ComponentSpec],
        data_dir: Path,
        *,
        say: Callable[[str], None] | None = None,
        extra_state: Mapping[str, Any] | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.log_dir = data_dir / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.components = [Component(spec, self.log_dir / f"{spec.name}.log") for spec in specs]
        self._say = say or (lambda line: print(line, flush=True))
        self._extra_state = dict(extra_state or {})
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    # processes ------------------------------------------------------------------------------------------

    def _spawn(self, component: Component) -> None:
        spec = component.spec
        if component._log is None:
            component._log = component.log_path.open("ab")
        component._log.write(f"\n--- {time.strftime('%Y-%m-%dT%H:%M:%S')} starting {spec.name}\n".encode())
        component._log.flush()
        component.process = subprocess.Popen(
            list(spec.argv),
            env=dict(spec.env),
            cwd=spec.cwd,
            stdin=subprocess.DEVNULL,
            stdout=component._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,  # noqa: PLW1509
        )
        component.started_at = time.monotonic()
        component.healthy = False
        component.restart_at = None

    def _signal_group(self, component: Component, signum: int) -> None:
        if component.process is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(component.process.pid, signum)

    def write_state(self) -> None:
        """``stack.json``: pids, endpoints and restart counts, replaced atomically."""
        state = {
            **self._extra_state,
            "supervisor_pid": os.getpid(),
            "components": {
                c.spec.name: {
                    "pid": c.pid,
                    "endpoint": c.spec.endpoint,
                    "restarts": c.restarts,
                    "healthy": c.healthy,
                    "log": str(c.log_path),
                }
                for c in self.components
            },
        }
        tmp = self.data_dir / "stack.json.tmp"
        tmp.write_text(json.dumps(state, indent=2, sort_keys=True))
        tmp.replace(self.data_dir / "stack.json")

    # start ----------------------------------------------------------------------------------------------

    def start(self, timeout_s: float, cancel: threading.Event | None = None) -> None:
        """Start every component in order, each once the previous one is healthy (the journal before the
        functions that need it). ``ComponentFailed`` names the first that does not come up in time, or
        says that ``cancel`` (Ctrl-C) was set meanwhile."""
        deadline = time.monotonic() + timeout_s
        cancel = cancel or self._stopping
        for component in self.components:
            self._spawn(component)
            self._say(f"  started {component.spec.name} (pid {component.pid})")
            self.write_state()
            while not probe(component.spec):
                assert component.process is not None
                code = component.process.poll()
                if code is not None:
                    raise ComponentFailed(
                        f"{component.spec.name} exited while starting ({describe_exit(code)}); "
                        f"see {component.log_path}"
                    )
                if time.monotonic() > deadline:
                    raise ComponentFailed(
                        f"{component.spec.name} was not healthy within {timeout_s:g} s; "
                        f"see {component.log_path}"
                    )
                if cancel.wait(0.1) or self._stopping.is_set():
                    raise ComponentFailed("stopped while starting")
            component.healthy = True
            self.write_state()

    # watch ----------------------------------------------------------------------------------------------

    def check_once(self) -> None:
        """One pass of the watch loop: notice deaths, restart what is due, notice recoveries."""
        now = time.monotonic()
        for component in self.components:
            process = component.process
            if process is None:
                continue
            code = process.poll()
            if code is not None and component.restart_at is None:
                if now - component.started_at > STABLE_AFTER_S:
                    component.backoff_s = INITIAL_BACKOFF_S
                component.restart_at = now + component.backoff_s
                component.healthy = False
                self._signal_group(component, signal.SIGKILL)  # whatever it left behind in its group
                self._say(
                    f"{component.spec.name} {describe_exit(code)}; restarting in {component.backoff_s:g} s "
                    f"(restart {component.restarts + 1})"
                )
                component.backoff_s = min(component.backoff_s * 2, MAX_BACKOFF_S)
                self.write_state()
            elif code is not None and component.restart_at is not None and now >= component.restart_at:
                component.restarts += 1
                self._spawn(component)
                self._say(f"{component.spec.name} restarted (pid {component.pid})")
                self.write_state()
            elif code is None and not component.healthy and component.restarts and probe(component.spec):
                component.healthy = True
                self._say(f"{component.spec.name} is healthy again")
                self.write_state()

    def watch(self, stop: threading.Event) -> None:
        """Keep the stack running until ``stop`` is set."""
        while not stop.wait(MONITOR_PERIOD_S):
            with self._lock:
                self.check_once()

    # stop -----------------------------------------------------------------------------------------------

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """Stop in reverse start order: the last component (the router: nothing new is delivered) gets
        SIGTERM and up to half of ``grace_s`` on its own, so its last deliveries still find the others
        running; then all the rest together, in the remaining time; SIGKILL for what is left. Every
        process group is gone on return."""
        self._stopping.set()
        with self._lock:
            deadline = time.monotonic() + grace_s
            order = list(reversed(self.components))
            for tier, tier_deadline in ((order[:1], time.monotonic() + grace_s / 2), (order[1:], deadline)):
                for component in tier:
                    self._signal_group(component, signal.SIGTERM)
                for component in tier:
                    if component.process is None:
                        continue
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        component.process.wait(max(0.0, tier_deadline - time.monotonic()))
            for component in self.components:
                self._signal_group(component, signal.SIGKILL)  # stragglers in the group, if any
                if component.process is not None and component.process.poll() is None:
                    component.process.kill()
                    component.process.wait(5)
                if component._log is not None:
                    component._log.close()
                    component._log = None
            with contextlib.suppress(OSError):
                (self.data_dir / "stack.json").unlink()
