"""The step runtime's time budget: when it must start stopping a command so its reply still arrives.

Knative's queue-proxy cuts a request at the Service's `timeoutSeconds`; a reply that arrives later is
lost, the broker retries, and the command may run again on another pod. So a run's time limit (the
step.run's `deadline` or `--timeout-seconds`, whichever comes first) is the time by which the reply must
be out, and the runtime stops the command `stop_margin_seconds(grace)` before it: SIGTERM, the stop grace,
SIGKILL, then leftovers killed, the output drained and the reply written, within `REPLY_MARGIN_SECONDS`.
"""

from __future__ import annotations

# After SIGKILL: how long the runtime keeps killing and reaping what the command left behind.
LEFTOVER_KILL_SECONDS = 1.0
# Then how long the output's last bytes may take; a leftover still holding the pipe delays us this much.
OUTPUT_DRAIN_SECONDS = 0.5
# Then writing the reply (through queue-proxy, in a cluster).
REPLY_WRITE_SECONDS = 0.5
REPLY_MARGIN_SECONDS = LEFTOVER_KILL_SECONDS + OUTPUT_DRAIN_SECONDS + REPLY_WRITE_SECONDS

# The shortest step `timeoutSeconds` worth accepting in a template: with the Knative backend's 3 s stop
# grace a 10 s step still runs its command for 5 s before it is stopped, and a local step (5 s grace) for
# 3 s. Below it a step spends most or all of its time being stopped. Template validation enforces it.
MIN_TIMEOUT_SECONDS = 10


def stop_margin_seconds(stop_grace_seconds: float) -> float:
    """How long before its time limit a run's command gets SIGTERM, so the reply is out by the limit."""
    return stop_grace_seconds + REPLY_MARGIN_SECONDS
