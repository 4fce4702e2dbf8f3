"""`xpipe-step [OPTIONS] -- COMMAND [ARGS...]`: the step container's entry point.

SIGTERM (Knative scaling a pod down, the local step host stopping an idle process, `kubectl delete`)
drains: readiness turns 503, the running command is stopped (SIGTERM, SIGKILL after the grace period),
its held request is answered with `cancelled`, and only then does the process exit.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from xpipe.step import log as step_log
from xpipe.step.config import ConfigError, load
from xpipe.step.leftovers import become_subreaper
from xpipe.step.runtime import StepRuntime
from xpipe.step.server import StepHTTPServer

log = logging.getLogger("xpipe.step")

# After the cancelled reply is handed to the connection, how long we wait for it to be written.
REPLY_FLUSH_SECONDS = 5.0
PARENT_CHECK_SECONDS = 0.5


def _watch_parent(stopping: threading.Event) -> None:
    """Stop like on SIGTERM once the parent (the local step host) is gone: no process outlives its host."""
    parent = os.getppid()
    while not stopping.wait(PARENT_CHECK_SECONDS):
        if os.getppid() != parent:
            log.warning("parent process gone, stopping", extra={"parent": parent})
            os.kill(os.getpid(), signal.SIGTERM)
            return


def _drain_then_stop(server: StepHTTPServer, runtime: StepRuntime) -> None:
    attempt = runtime.drain()
    if attempt is not None:
        attempt.done.wait(runtime.config.stop_grace_seconds + REPLY_FLUSH_SECONDS)
    if not server.wait_answered(REPLY_FLUSH_SECONDS):
        log.warning("exiting with requests still unanswered")
    server.shutdown()


def main(argv: Sequence[str] | None = None) -> int:
    step_log.configure("xpipe-step")
    try:
        config = load(sys.argv[1:] if argv is None else argv, os.environ)
    except ConfigError as error:
        log.error("cannot start the step runtime", extra={"reason": str(error)})
        return 2
    # Orphans of a command come to us (as they would to PID 1 in a container) and are killed after the run.
    become_subreaper()
    runtime = StepRuntime(config)
    try:
        server = StepHTTPServer((config.host, config.port), runtime, config.listen_fd)
    except OSError as error:
        log.error("cannot listen", extra={"host": config.host, "port": config.port, "reason": str(error)})
        return 2
    stopping = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        # serve_forever runs in this (main) thread, so shutdown must be asked from another one.
        if not stopping.is_set():
            stopping.set()
            log.info("stopping", extra={"signal": signal.Signals(signum).name})
            threading.Thread(target=_drain_then_stop, args=(server, runtime), name="drain").start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if config.exit_with_parent:
        threading.Thread(target=_watch_parent, args=(stopping,), name="parent-watch", daemon=True).start()
    host, port = server.server_address[:2]
    log.info(
        "step runtime listening",
        extra={"host": host, "port": port, "service": config.service, "pod": config.pod, "sink": config.sink},
    )
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        runtime.close()
    log.info("step runtime stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
