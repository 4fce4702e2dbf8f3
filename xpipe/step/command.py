"""One run of the step's command: start it without a shell, keep its output's tail, stop it on demand.

The command runs in its own process group, so stopping it (deadline, cancellation) reaches whatever it
started too: SIGTERM to the group, then SIGKILL after a grace period. After every run, however it ended,
what is left of the group and every process re-parented to the runtime (a `setsid` daemon, an orphan) is
killed and reaped (`leftovers`), so nothing it starts outlives the run (on Linux; elsewhere the group
only): pods and local step processes are reused by the next job.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any, Literal

from xpipe.events import SUMMARY_MAX_BYTES
from xpipe.step.leftovers import kill_leftovers
from xpipe.step.limits import OUTPUT_DRAIN_SECONDS

log = logging.getLogger("xpipe.step.command")

Ending = Literal["exited", "deadline", "cancelled"]
_READ_CHUNK = 8192
# The command gets its own process group, so a stop reaches its children too, but stays in the runtime's
# session, so whoever stops that session (the local step host, when a runtime dies) reaches it as well
# (start_new_session would hide it from the host). `process_group=` is Python 3.11+; on 3.10 the child
# calls setpgid itself before exec.
_OWN_PROCESS_GROUP: dict[str, Any] = (
    {"process_group": 0} if sys.version_info >= (3, 11) else {"preexec_fn": os.setpgrp}
)
# Exit codes a shell would report, used when the command cannot even be started.
EXIT_NOT_FOUND = 127
EXIT_NOT_EXECUTABLE = 126


@dataclass(frozen=True)
class CommandResult:
    """How the command ended: `ending` says why, `exit_code` is negative (-N) when killed by signal N."""

    ending: Ending
    exit_code: int | None
    duration_seconds: float
    output_tail: str


class OutputTail:
    """Reads the command's combined stdout/stderr, forwards it to our stdout and keeps the last bytes."""

    def __init__(self, stream: IO[bytes], forward: IO[bytes] | None, limit: int = SUMMARY_MAX_BYTES) -> None:
        self._stream = stream
        self._forward = forward
        self._limit = limit
        self._tail = bytearray()
        self._thread = threading.Thread(target=self._pump, name="step-output", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        fd = self._stream.fileno()
        while chunk := os.read(fd, _READ_CHUNK):
            self._tail += chunk
            if len(self._tail) > self._limit:
                del self._tail[: len(self._tail) - self._limit]
            if self._forward is not None:
                try:
                    self._forward.write(chunk)
                    self._forward.flush()
                except (OSError, ValueError):
                    self._forward = None
        self._stream.close()

    def text(self, join_timeout: float) -> str:
        """The tail decoded as UTF-8; a character cut in half at the front is replaced, not an error."""
        self._thread.join(join_timeout)
        text = bytes(self._tail).decode("utf-8", errors="replace")
        # Replacement characters can make the text longer in bytes; the summary is bounded in characters.
        return text[-self._limit :]


class CommandRun:
    """A started command. `wait` blocks until it ends; `cancel` may be called from any thread."""

    def __init__(
        self,
        argv: Sequence[str],
        env: Mapping[str, str],
        deadline: float | None,
        stop_grace_seconds: float,
        forward_output: IO[bytes] | None = None,
    ) -> None:
        """Start `argv` now; `deadline` is a `time.monotonic()` value or None for no deadline."""
        self._deadline = deadline
        self._grace = stop_grace_seconds
        self._wake = threading.Event()
        self._exited = threading.Event()
        self._cancel_requested = False
        self._started = time.monotonic()
        self._start_error: CommandResult | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._output: OutputTail | None = None
        try:
            self._process = subprocess.Popen(
                list(argv),
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                close_fds=True,
                **_OWN_PROCESS_GROUP,
            )
        except FileNotFoundError:
            self._start_error = self._not_started(EXIT_NOT_FOUND, f"command not found: {argv[0]!r}")
        except PermissionError:
            self._start_error = self._not_started(EXIT_NOT_EXECUTABLE, f"command not executable: {argv[0]!r}")
        except OSError as error:
            self._start_error = self._not_started(EXIT_NOT_EXECUTABLE, f"cannot start {argv[0]!r}: {error}")
        if self._process is not None:
            assert self._process.stdout is not None
            self._output = OutputTail(self._process.stdout, forward_output)
            threading.Thread(target=self._reap, name="step-reaper", daemon=True).start()

    def _not_started(self, code: int, message: str) -> CommandResult:
        log.warning("command did not start", extra={"reason": message})
        return CommandResult("exited", code, time.monotonic() - self._started, message)

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def _reap(self) -> None:
        assert self._process is not None
        self._process.wait()
        self._exited.set()
        self._wake.set()

    def cancel(self) -> None:
        """Ask the run to stop (SIGTERM, then SIGKILL after the grace period); `wait` reports `cancelled`."""
        self._cancel_requested = True
        self._wake.set()

    def _signal_group(self, signum: signal.Signals) -> None:
        assert self._process is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):  # the group is already gone
            os.killpg(self._process.pid, signum)

    def _stop(self) -> None:
        self._signal_group(signal.SIGTERM)
        if not self._exited.wait(self._grace):
            log.warning("command ignored SIGTERM, killing it", extra={"pid": self.pid})
            self._signal_group(signal.SIGKILL)
            self._exited.wait()

    def wait(self) -> CommandResult:
        """Block until the command has ended (on its own, at the deadline, or cancelled)."""
        if self._start_error is not None:
            return self._start_error
        assert self._process is not None
        assert self._output is not None
        ending: Ending = "exited"
        while not self._exited.is_set():
            remaining = None if self._deadline is None else self._deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                ending = "deadline"
                break
            self._wake.wait(remaining)
            self._wake.clear()
            if self._cancel_requested and not self._exited.is_set():
                ending = "cancelled"
                break
        if ending != "exited":
            self._stop()
        # Leftovers (a background child, a daemonised grandchild) must not outlive the run, nor hold the
        # output pipe and with it the reply.
        kill_leftovers(self._process.pid)
        duration = time.monotonic() - self._started
        tail = self._output.text(join_timeout=OUTPUT_DRAIN_SECONDS)
        return CommandResult(ending, self._process.returncode, duration, tail)
