"""Waiting on a condition with a deadline: the one way tests synchronise with real processes."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

DEFAULT_TIMEOUT_S = 10.0
POLL_INTERVAL_S = 0.02


def wait_until(
    condition: Callable[[], bool],
    timeout_s: float = DEFAULT_TIMEOUT_S,
    what: str = "condition",
    *,
    interval_s: float = POLL_INTERVAL_S,
) -> None:
    """Poll ``condition`` until it holds; fail the test, naming ``what``, once ``timeout_s`` has passed.

    The sleep between polls is only the polling interval, never the synchronisation itself: the
    condition decides, the deadline bounds it.
    """
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(interval_s)
