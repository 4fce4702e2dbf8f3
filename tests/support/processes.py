"""Stopping a test's real processes: SIGTERM, then SIGKILL after a grace period, always bounded."""

from __future__ import annotations

import signal
import subprocess

KILL_WAIT_S = 5.0


def stop_process(process: subprocess.Popen[bytes] | subprocess.Popen[str], grace_s: float) -> None:
    """Ask ``process`` to stop (SIGTERM); kill it if it has not exited within ``grace_s``."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=KILL_WAIT_S)
