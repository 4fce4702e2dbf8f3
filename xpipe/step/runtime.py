"""StepRuntime: one attempt at a time, each attempt run exactly once per process.

Knative delivers at least once, so the same `step.run` (same job, step and attempt) can arrive again
while its command runs or after it ended. The runtime keys attempts by (jobId, step, attempt): a
duplicate never starts the command again, it waits for the same attempt and gets the same
`step.finished` (same CloudEvent id). A *different* attempt while one runs is refused as busy (429):
the service runs with `containerConcurrency: 1`, so this only happens when something bypasses that,
and the broker retries a 429.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import IO

import httpx
from cloudevents.http import CloudEvent

from xpipe.events import StepFinished, StepHeartbeat, StepOutcome, StepRun
from xpipe.params import NAME_PATTERN, ParamError, render_argv, render_env
from xpipe.step.command import CommandResult, CommandRun
from xpipe.step.config import RuntimeConfig
from xpipe.step.emit import EventStamp, HeartbeatSender
from xpipe.step.limits import stop_margin_seconds

log = logging.getLogger("xpipe.step.runtime")

# Finished attempts remembered for duplicate deliveries (a pod serves one run at a time, so a handful is
# plenty; the bound keeps a long-lived pod's memory flat).
REMEMBERED_ATTEMPTS = 256

_PARAM_NAME = re.compile(NAME_PATTERN)
_OUTCOMES: dict[str, StepOutcome] = {"deadline": "timed-out", "cancelled": "cancelled"}


class RuntimeBusy(Exception):
    """Another attempt is running in this process."""


class RuntimeDraining(Exception):
    """The runtime is shutting down and takes no new attempts."""


@dataclass(frozen=True)
class AttemptKey:
    job_id: str
    step: str
    attempt: int

    def __str__(self) -> str:
        return f"{self.job_id}/{self.step}/{self.attempt}"


class Attempt:
    """One attempt: runs in its own thread; any number of requests may wait for its `step.finished`."""

    def __init__(self, key: AttemptKey) -> None:
        self.key = key
        self.done = threading.Event()
        self.finished: CloudEvent | None = None
        self.command: CommandRun | None = None
        self.cancel_requested = False
        self._lock = threading.Lock()

    def cancel(self) -> None:
        with self._lock:
            self.cancel_requested = True
            command = self.command
        if command is not None:
            command.cancel()

    def attach(self, command: CommandRun) -> None:
        with self._lock:
            self.command = command
            cancelled = self.cancel_requested
        if cancelled:
            command.cancel()


class StepRuntime:
    """Runs `step.run` attempts of one step service's command."""

    def __init__(
        self,
        config: RuntimeConfig,
        environ: Mapping[str, str] | None = None,
        forward_output: IO[bytes] | None = None,
    ) -> None:
        self.config = config
        self._base_env = dict(os.environ if environ is None else environ)
        self._forward = forward_output if forward_output is not None else sys.stdout.buffer
        self._stamp = EventStamp(config.service, config.ce_overrides)
        timeout = config.heartbeat_timeout_seconds
        self._client = httpx.Client(timeout=httpx.Timeout(timeout, connect=timeout))
        self._lock = threading.Lock()
        self._attempts: OrderedDict[AttemptKey, Attempt] = OrderedDict()
        self._current: Attempt | None = None
        self._draining = False
        margin = stop_margin_seconds(config.stop_grace_seconds)
        if config.timeout_seconds is not None and config.timeout_seconds <= margin:
            log.warning(
                "the time-out leaves no time to run: every run will end timed-out",
                extra={"timeoutSeconds": config.timeout_seconds, "stopMarginSeconds": margin},
            )

    @property
    def draining(self) -> bool:
        return self._draining

    @property
    def busy(self) -> bool:
        with self._lock:
            return self._current is not None and not self._current.done.is_set()

    def submit(self, run: StepRun) -> Attempt:
        """The attempt for `run`: the existing one for a duplicate, else a new one started now."""
        key = AttemptKey(run.job_id, run.step, run.attempt)
        with self._lock:
            existing = self._attempts.get(key)
            if existing is not None:
                log.info("duplicate step.run joins the existing attempt", extra={"attempt": str(key)})
                return existing
            if self._draining:
                raise RuntimeDraining
            if self._current is not None and not self._current.done.is_set():
                raise RuntimeBusy(str(self._current.key))
            attempt = Attempt(key)
            self._attempts[key] = attempt
            while len(self._attempts) > REMEMBERED_ATTEMPTS:
                self._attempts.popitem(last=False)
            self._current = attempt
        threading.Thread(target=self._run, args=(attempt, run), name=f"attempt-{key}", daemon=True).start()
        return attempt

    def drain(self) -> Attempt | None:
        """Stop taking attempts and cancel the running one (SIGTERM); returns it so a caller can wait."""
        with self._lock:
            self._draining = True
            current = self._current
        if current is not None and not current.done.is_set():
            log.info("cancelling the running attempt", extra={"attempt": str(current.key)})
            current.cancel()
            return current
        return None

    def close(self) -> None:
        self._client.close()

    # --- one attempt -------------------------------------------------------------------------------

    def _deadline(self, run: StepRun) -> float | None:
        """When to stop the command (monotonic): the stop margin before the run's time limit, which is the
        earlier of step.run's deadline and the timeout, so the reply is out by the limit (see limits)."""
        candidates: list[float] = []
        now_monotonic = time.monotonic()
        if run.deadline is not None:
            deadline = run.deadline if run.deadline.tzinfo else run.deadline.replace(tzinfo=timezone.utc)
            candidates.append(now_monotonic + (deadline - datetime.now(timezone.utc)).total_seconds())
        if self.config.timeout_seconds is not None:
            candidates.append(now_monotonic + self.config.timeout_seconds)
        if not candidates:
            return None
        return min(candidates) - stop_margin_seconds(self.config.stop_grace_seconds)

    def _run(self, attempt: Attempt, run: StepRun) -> None:
        extra = {"attempt": str(attempt.key), "xpipejob": run.job_id}
        try:
            result = self._execute(attempt, run)
        except Exception as error:  # the reply must always come, whatever went wrong here
            log.exception("attempt failed inside the runtime", extra=extra)
            result = CommandResult("exited", None, 0.0, f"step runtime error: {type(error).__name__}")
        outcome: StepOutcome = _OUTCOMES.get(
            result.ending, "succeeded" if result.exit_code == 0 else "failed"
        )
        finished = StepFinished(
            job_id=run.job_id,
            step=run.step,
            attempt=run.attempt,
            outcome=outcome,
            exit_code=result.exit_code,
            duration_seconds=round(result.duration_seconds, 3),
            summary=result.output_tail,
            pod=self.config.pod,
        )
        attempt.finished = self._stamp.finished(finished)
        log.info(
            "attempt finished",
            extra={
                **extra,
                "outcome": outcome,
                "exitCode": result.exit_code,
                "durationSeconds": result.duration_seconds,
            },
        )
        attempt.done.set()

    def _execute(self, attempt: Attempt, run: StepRun) -> CommandResult:
        deadline = self._deadline(run)
        if deadline is not None and deadline <= time.monotonic():
            margin = stop_margin_seconds(self.config.stop_grace_seconds)
            return CommandResult(
                "deadline",
                None,
                0.0,
                f"no time left to run: the time limit is less than {margin:g}s away (stop grace plus reply)",
            )
        try:
            argv = render_argv(self.config.argv, run.params)
            rendered_env = render_env(self.config.env, run.params)
        except ParamError as error:
            return CommandResult("exited", None, 0.0, f"cannot render the command: {error}")
        env = dict(self._base_env)
        env.update(
            {
                f"XPIPE_PARAM_{name.upper()}": value
                for name, value in run.params.items()
                if _PARAM_NAME.fullmatch(name)
            }
        )
        env.update({"XPIPE_JOB_ID": run.job_id, "XPIPE_STEP": run.step, "XPIPE_ATTEMPT": str(run.attempt)})
        env.update(rendered_env)
        log.info("attempt starting", extra={"attempt": str(attempt.key), "xpipejob": run.job_id})
        command = CommandRun(argv, env, deadline, self.config.stop_grace_seconds, self._forward)
        attempt.attach(command)
        heartbeat = self._heartbeat(run, command)
        try:
            return command.wait()
        finally:
            if heartbeat is not None:
                heartbeat.stop()

    def _heartbeat(self, run: StepRun, command: CommandRun) -> HeartbeatSender | None:
        if not self.config.sink or command.pid is None:
            return None
        started = time.monotonic()

        def make_event() -> CloudEvent:
            beat = StepHeartbeat(
                job_id=run.job_id,
                step=run.step,
                attempt=run.attempt,
                pod=self.config.pod,
                details={"pid": command.pid, "elapsedSeconds": round(time.monotonic() - started, 3)},
            )
            return self._stamp.heartbeat(beat)

        sender = HeartbeatSender(self._client, self.config.sink, make_event, self.config.heartbeat_seconds)
        sender.start()
        return sender
