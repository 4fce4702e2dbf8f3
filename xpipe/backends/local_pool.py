"""The local step host's state: step services, their revisions, and the step processes that serve them.

This is Knative Serving shrunk to one machine. Each step service keeps one revision per applied template
digest; traffic goes to the latest revision unless a revert pinned an older one. A step process is the
real step runtime (`python -m xpipe.step`) on a loopback socket the host binds and hands over, so the
host can connect before the process has finished starting (the kernel queues the connection), exactly
like a request waiting at Knative's activator during a cold start. A process serves one run at a time
(`containerConcurrency: 1`), is started on demand (scale from zero) and stopped after an idle window
(scale to zero), with a cap on live processes across all services.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import IO, Any

from xpipe.backends.base import InvalidSpec, NotFound, StepServiceSpec, TrafficState
from xpipe.step.leftovers import session_members

log = logging.getLogger("xpipe.backends.local_host")

LOG_TAIL_LINES = 200
EXITED_PROCESSES_KEPT = 20
HOST_EVENTS_KEPT = 500
CRASH_SETTLE_SECONDS = 1.0


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


class HostBusy(Exception):
    """Every process slot is taken by a running step; the caller should answer 429 (retried)."""


@dataclass(frozen=True)
class Revision:
    """One applied version of a step service (a template digest)."""

    name: str
    spec: StepServiceSpec
    created_at: str


@dataclass
class LocalService:
    """A step service: its revisions, oldest first, and where its traffic goes."""

    name: str
    revisions: list[Revision] = field(default_factory=list)
    pinned: str | None = None
    pinned_at: float | None = None  # journal time of the newest revert holding the pin
    restarts: int = 0

    @property
    def latest(self) -> Revision:
        return self.revisions[-1]

    @property
    def serving(self) -> Revision:
        if self.pinned is not None:
            for revision in self.revisions:
                if revision.name == self.pinned:
                    return revision
        return self.latest

    def traffic(self, namespace: str) -> TrafficState:
        pinned_at = self.pinned_at if self.pinned is not None else None
        return TrafficState(namespace, self.name, self.pinned, self.latest.name, pinned_at)


class StepProcess:
    """One running step runtime serving one revision; busy with at most one attempt at a time."""

    def __init__(
        self, revision: Revision, sink: str | None, instance: int, stop_grace_seconds: float
    ) -> None:
        spec = revision.spec
        self.revision = revision
        self.pod = f"{revision.name}-local-{instance}"
        self.stop_grace_seconds = stop_grace_seconds
        self.busy_with: str | None = None
        self.idle_since = time.monotonic()
        self.started_at = _now()
        self.stopped_by_host = False
        self.stopping = False
        self.exit_code: int | None = None
        self.output: collections.deque[str] = collections.deque(maxlen=LOG_TAIL_LINES)
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/"
        command = [
            sys.executable, "-m", "xpipe.step",
            "--listen-fd", str(listener.fileno()),
            "--exit-with-parent",
            "--service", spec.name,
            "--heartbeat-seconds", f"{spec.heartbeat_seconds:g}",
            "--stop-grace-seconds", f"{stop_grace_seconds:g}",
            "--timeout-seconds", str(spec.timeout_seconds),
        ]  # fmt: skip
        for name, value in sorted(spec.env.items()):
            command += ["--env", f"{name}={value}"]
        command += ["--", *spec.argv]
        env = {key: value for key, value in os.environ.items() if key not in ("K_SINK", "K_CE_OVERRIDES")}
        env.update({"K_SERVICE": spec.name, "K_REVISION": revision.name, "HOSTNAME": self.pod})
        if sink:
            env["K_SINK"] = sink
        try:
            self.process = subprocess.Popen(
                command,
                env=env,
                pass_fds=[listener.fileno()],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C in a terminal reaches the host, which stops us in order
            )
        finally:
            # The child has its own copy; if it dies, queued connections are refused instead of hanging.
            listener.close()
        assert self.process.stdout is not None
        threading.Thread(target=self._collect_output, args=(self.process.stdout,), daemon=True).start()

    def _collect_output(self, stream: IO[bytes]) -> None:
        for raw in stream:
            self.output.append(raw.decode("utf-8", errors="replace").rstrip("\n"))
        stream.close()

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        if self.process.poll() is None:
            return True
        self.exit_code = self.process.returncode
        return False

    def kill_session(self) -> None:
        """SIGKILL whatever is left in the runtime's session (a command whose runtime died).

        In a pod the container's processes die together; here the session plays the container's part.
        Linux only (/proc); elsewhere leftovers of a crashed runtime finish on their own.
        """
        for member in session_members(self.pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(member, signal.SIGKILL)

    def settle(self, timeout: float) -> None:
        """Wait up to `timeout` for the process to exit on its own."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout)

    def stop(self) -> None:
        """SIGTERM (the runtime drains), then SIGKILL if it does not exit within its grace period."""
        if self.process.poll() is None:
            self.stopped_by_host = True  # a process found already dead crashed on its own
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(self.stop_grace_seconds + 5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.exit_code = self.process.returncode
        self.kill_session()

    def describe(self) -> dict[str, Any]:
        return {
            "pod": self.pod,
            "pid": self.pid,
            "port": self.port,
            "revision": self.revision.name,
            "state": "exited"
            if self.exit_code is not None
            else ("stopping" if self.stopping else ("busy" if self.busy_with else "idle")),
            "attempt": self.busy_with,
            "startedAt": self.started_at,
            "exitCode": self.exit_code,
            "stoppedByHost": self.stopped_by_host,
        }


class StepHost:
    """Registry of step services plus their processes: dispatch, scale up on demand, scale down when idle."""

    def __init__(
        self,
        sink: str | None,
        idle_seconds: float,
        max_processes: int,
        namespace: str = "xpipe-steps",
        stop_grace_seconds: float = 5.0,
    ) -> None:
        if idle_seconds <= 0 or max_processes < 1:
            raise ValueError("idle_seconds must be positive and max_processes at least 1")
        self.sink = sink
        self.idle_seconds = idle_seconds
        self.max_processes = max_processes
        self.namespace = namespace
        self.stop_grace_seconds = stop_grace_seconds
        self._lock = threading.RLock()
        self._services: dict[str, LocalService] = {}
        self._processes: list[StepProcess] = []
        self._exited: collections.deque[tuple[str, StepProcess]] = collections.deque(
            maxlen=EXITED_PROCESSES_KEPT
        )
        self._events: collections.deque[dict[str, Any]] = collections.deque(maxlen=HOST_EVENTS_KEPT)
        self._instances = 0
        self._stopping = threading.Event()
        self._reaper = threading.Thread(target=self._reap_loop, name="idle-reaper", daemon=True)

    def start(self) -> None:
        self._reaper.start()

    # --- events and logging ------------------------------------------------------------------------

    def _record(self, message: str, service: str, **fields: Any) -> None:
        entry = {"time": _now(), "service": service, "event": message, **fields}
        self._events.append(entry)
        log.info(message, extra={k: v for k, v in entry.items() if k not in ("event", "time")})

    # --- service registry --------------------------------------------------------------------------

    def ensure(self, spec: StepServiceSpec) -> tuple[bool, str]:
        """Register `spec`; a new digest becomes a new revision. Returns (applied, latest revision name)."""
        retired: list[StepProcess] = []
        with self._lock:
            service = self._services.setdefault(spec.name, LocalService(spec.name))
            if service.revisions and service.latest.spec.template_digest == spec.template_digest:
                return False, service.latest.name
            revision = Revision(f"{spec.name}-{len(service.revisions) + 1:05d}", spec, _now())
            service.revisions.append(revision)
            retired = self._retire_unserved(service)
        self._record(
            "revision created", spec.name, revision=revision.name, templateDigest=spec.template_digest
        )
        self._stop_all(retired, "revision no longer serves traffic")
        return True, revision.name

    def remove(self, name: str) -> None:
        with self._lock:
            service = self._services.pop(name, None)
            processes = self._mark_stopping(
                [p for p in self._processes if p.revision.spec.name == name and p.busy_with is None]
            )
        if service is not None:
            self._record("service removed", name)
        self._stop_all(processes, "service removed")

    def service(self, name: str) -> LocalService:
        with self._lock:
            service = self._services.get(name)
            if service is None:
                raise NotFound(f"no step service {name!r} on this host")
            return service

    def services(self) -> list[LocalService]:
        with self._lock:
            return list(self._services.values())

    def revert(self, name: str, at: float) -> TrafficState:
        with self._lock:
            service = self.service(name)
            # A pinned service keeps its pin; otherwise the revision before the newest one (see
            # ExecutionBackend.revert_traffic): a repeated or concurrent revert is a fixed point. The pin
            # remembers the newest revert's journal time, which a later restore compares with its own.
            if service.pinned is None:
                if len(service.revisions) < 2:
                    raise NotFound(f"service {name!r} has no earlier revision to revert to")
                service.pinned = service.revisions[-2].name
                service.pinned_at = at
            else:
                service.pinned_at = max(service.pinned_at or at, at)
            retired = self._retire_unserved(service)
            state = service.traffic(self.namespace)
        self._record("traffic pinned", name, revision=service.pinned)
        self._stop_all(retired, "revision no longer serves traffic")
        return state

    def restore(self, name: str, requested_at: float) -> TrafficState:
        with self._lock:
            service = self.service(name)
            if service.pinned is not None and (service.pinned_at or 0.0) > requested_at:
                # Another job reverted after this restore was requested: its pin stands.
                state = service.traffic(self.namespace)
                self._record("traffic pin kept: a newer revert holds it", name, revision=service.pinned)
                return state
            service.pinned, service.pinned_at = None, None
            retired = self._retire_unserved(service)
            state = service.traffic(self.namespace)
        self._record("traffic follows the latest revision", name, revision=service.latest.name)
        self._stop_all(retired, "revision no longer serves traffic")
        return state

    def _retire_unserved(self, service: LocalService) -> list[StepProcess]:
        """Idle processes of revisions that no longer take traffic (busy ones retire when released)."""
        serving = service.serving.name
        return self._mark_stopping(
            [
                p
                for p in self._processes
                if p.revision.spec.name == service.name and p.revision.name != serving and p.busy_with is None
            ]
        )

    def _mark_stopping(self, processes: list[StepProcess]) -> list[StepProcess]:
        """Take processes out of dispatch; they stay listed (like a terminating pod) until they exited."""
        chosen = [p for p in processes if not p.stopping]
        for process in chosen:
            process.stopping = True
        return chosen

    # --- dispatch ----------------------------------------------------------------------------------

    def acquire(self, name: str, attempt: str) -> StepProcess:
        """A process of `name`'s serving revision, now busy with `attempt`: an idle one, or a new one."""
        evicted: StepProcess | None = None
        with self._lock:
            service = self.service(name)
            serving = service.serving
            for process in self._processes:
                if (
                    process.revision is serving
                    and process.busy_with is None
                    and not process.stopping
                    and process.alive()
                ):
                    process.busy_with = attempt
                    return process
            if len(self._processes) >= self.max_processes:
                idle = [p for p in self._processes if p.busy_with is None and not p.stopping]
                if not idle:
                    raise HostBusy(f"all {self.max_processes} step processes are busy")
                evicted = min(idle, key=lambda p: p.idle_since)
                self._mark_stopping([evicted])
            try:
                process = self._spawn(serving)
            except OSError as error:
                raise InvalidSpec(f"cannot start a step process for {name!r}: {error}") from None
            process.busy_with = attempt
        if evicted is not None:
            self._stop_all([evicted], "evicted to make room (process cap)")
        return process

    def _spawn(self, revision: Revision) -> StepProcess:
        self._instances += 1
        process = StepProcess(revision, self.sink, self._instances, self.stop_grace_seconds)
        self._processes.append(process)
        replicas = sum(1 for p in self._processes if p.revision.spec.name == revision.spec.name)
        self._record(
            "scaled up",
            revision.spec.name,
            revision=revision.name,
            pod=process.pod,
            pid=process.pid,
            replicas=replicas,
        )
        return process

    def release(self, process: StepProcess, failed: bool = False) -> None:
        """The attempt's reply is back (or the process failed): idle again, or gone."""
        retire = False
        if failed:
            # The connection breaks while a dying process is still exiting: give it a moment, so a
            # crash is recorded as a crash and not as a stop by the host.
            process.settle(CRASH_SETTLE_SECONDS)
        with self._lock:
            process.busy_with = None
            process.idle_since = time.monotonic()
            service = self._services.get(process.revision.spec.name)
            unserved = service is None or service.serving is not process.revision
            if process in self._processes and (failed or unserved or not process.alive()):
                retire = bool(self._mark_stopping([process]))
        if retire:
            self._stop_all([process], "process failed" if failed else "revision no longer serves traffic")

    # --- cancellation ------------------------------------------------------------------------------

    def stop_attempt(self, name: str, attempt: str) -> StepProcess | None:
        """Stop the process of service `name` busy with `attempt` (the key `acquire` was given).

        SIGTERM makes its runtime kill the command and answer the held request with `cancelled`; the
        process then exits (like a deleted pod) and the next run starts a fresh one. Returns the stopped
        process, or None when no process runs that attempt (it ended, or never started here).
        """
        with self._lock:
            chosen = self._mark_stopping(
                [p for p in self._processes if p.revision.spec.name == name and p.busy_with == attempt]
            )
        self._stop_all(chosen, "attempt cancelled")
        return chosen[0] if chosen else None

    # --- scale to zero -----------------------------------------------------------------------------

    def _reap_loop(self) -> None:
        interval = min(1.0, self.idle_seconds / 4)
        while not self._stopping.wait(interval):
            try:
                self.reap()
            except Exception:  # the reaper must outlive any single failure
                log.exception("idle reaper failed")

    def reap(self) -> None:
        """Stop processes idle longer than the window; notice processes that died on their own."""
        now = time.monotonic()
        idle: list[StepProcess] = []
        crashed: list[StepProcess] = []
        with self._lock:
            for process in list(self._processes):
                if process.stopping:
                    continue
                if not process.alive():
                    self._processes.remove(process)
                    crashed.append(process)
                elif process.busy_with is None and now - process.idle_since >= self.idle_seconds:
                    idle.extend(self._mark_stopping([process]))
        for process in crashed:
            self._note_exit(process, "process exited unexpectedly")
        self._stop_all(idle, "idle")

    def _stop_all(self, processes: list[StepProcess], reason: str) -> None:
        for process in processes:
            process.stop()
            with self._lock:
                if process in self._processes:
                    self._processes.remove(process)
            self._note_exit(process, reason)

    def _note_exit(self, process: StepProcess, reason: str) -> None:
        name = process.revision.spec.name
        with self._lock:
            self._exited.append((name, process))
            if not process.stopped_by_host and name in self._services:
                self._services[name].restarts += 1
            replicas = sum(1 for p in self._processes if p.revision.spec.name == name)
        message = "scaled down" if process.stopped_by_host else "process crashed"
        self._record(
            message,
            name,
            reason=reason,
            pod=process.pod,
            pid=process.pid,
            exitCode=process.exit_code,
            replicas=replicas,
        )

    def close(self) -> None:
        """Stop the reaper and every process (busy ones are cancelled by their runtime and answer)."""
        self._stopping.set()
        with self._lock:
            processes = self._mark_stopping(list(self._processes))
        self._stop_all(processes, "host stopping")

    # --- views -------------------------------------------------------------------------------------

    def processes_of(self, name: str) -> Iterator[StepProcess]:
        with self._lock:
            return iter([p for p in self._processes if p.revision.spec.name == name])

    def describe(self, service: LocalService) -> dict[str, Any]:
        with self._lock:
            live = [p.describe() for p in self._processes if p.revision.spec.name == service.name]
            return {
                "name": service.name,
                "spec": service.latest.spec.to_json_dict(),
                "revisions": [
                    {"name": r.name, "templateDigest": r.spec.template_digest, "createdAt": r.created_at}
                    for r in service.revisions
                ],
                "latestRevision": service.latest.name,
                "pinnedRevision": service.pinned,
                "servingRevision": service.serving.name,
                "replicas": len(live),
                "processes": live,
                "restarts": service.restarts,
            }

    def diagnostics(self, names: list[str], since: datetime | None) -> tuple[dict[str, Any], list[str]]:
        errors: list[str] = []
        report: dict[str, Any] = {}
        with self._lock:
            for name in names:
                service = self._services.get(name)
                if service is None:
                    errors.append(f"service {name}: no step service {name!r} on this host")
                    continue
                live = [p for p in self._processes if p.revision.spec.name == name]
                exited = [p for owner, p in self._exited if owner == name]
                report[name] = {
                    "servingRevision": service.serving.name,
                    "pinnedRevision": service.pinned,
                    "restarts": service.restarts,
                    "pods": [
                        {**p.describe(), "logTail": "\n".join(list(p.output)[-50:])} for p in [*live, *exited]
                    ],
                    "events": [
                        e
                        for e in self._events
                        if e["service"] == name
                        and (since is None or datetime.fromisoformat(e["time"]) >= since)
                    ],
                }
        return report, errors

    def restore_state(self, services: Mapping[str, Any]) -> None:
        """Load services saved by `saved_state` (the host's state file survives a restart)."""
        with self._lock:
            for name, saved in services.items():
                service = LocalService(
                    name, pinned=saved.get("pinnedRevision"), pinned_at=saved.get("pinnedAt")
                )
                for raw in saved.get("revisions", []):
                    spec = StepServiceSpec.from_json_dict(raw["spec"])
                    service.revisions.append(Revision(raw["name"], spec, raw["createdAt"]))
                if service.revisions:
                    self._services[name] = service

    def saved_state(self) -> dict[str, Any]:
        with self._lock:
            return {
                name: {
                    "pinnedRevision": service.pinned,
                    "pinnedAt": service.pinned_at,
                    "revisions": [
                        {"name": r.name, "createdAt": r.created_at, "spec": r.spec.to_json_dict()}
                        for r in service.revisions
                    ],
                }
                for name, service in self._services.items()
            }
