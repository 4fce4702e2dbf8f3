"""Telling the operator when the service loop stops turning (a hung fsync, above all).

The one loop thread (``front.py``) does everything, so while it is stuck nothing is answered, PING
included, and it cannot say so itself. The main thread, which otherwise only waits for signals, looks
every half second when the loop last turned and logs a warning once it has not turned for
``STALL_WARN_S``, naming the segment when the loop is inside its write or fsync (the disk, or the
storage under it, is not completing writes: nothing can be acknowledged until it does). The warning repeats
every ``STALL_REPEAT_S`` while the stall lasts, and a last line says when the loop turns again.

Standard library only: this module runs on VSI Python 3.10 for OpenVMS.
"""

from __future__ import annotations

import logging

from vms_adapter.server.front import JournalFront
from vms_adapter.server.segments import SegmentWriter

log = logging.getLogger("xpipe.journal.stall")

STALL_WARN_S = 5.0  # a healthy loop turns at least every WATCHDOG_S (0.1 s)
STALL_REPEAT_S = 30.0


class StallWatch:
    """Called from the main thread with the monotonic time; logs the loop's stalls (module docstring)."""

    def __init__(
        self,
        front: JournalFront,
        segments: SegmentWriter,
        *,
        warn_after_s: float = STALL_WARN_S,
        repeat_s: float = STALL_REPEAT_S,
    ) -> None:
        self.front = front
        self.segments = segments
        self.warn_after_s = warn_after_s
        self.repeat_s = repeat_s
        self._stalled_turn: float | None = None  # the loop's last turn before the stall being reported
        self._warned_at = 0.0

    def check(self, now: float) -> None:
        turned = self.front.turned_at
        if self._stalled_turn is not None and turned != self._stalled_turn:
            log.warning("the service loop turns again after a stall of %.1f s", turned - self._stalled_turn)
            self._stalled_turn = None
        stalled = now - turned
        if stalled < self.warn_after_s:
            return
        if self._stalled_turn is not None and now - self._warned_at < self.repeat_s:
            return
        self._stalled_turn, self._warned_at = turned, now
        storing = self.segments.storing
        where = (
            f"it is waiting for the write or fsync of {storing}: the disk is not completing writes"
            if storing is not None
            else "it is not writing the journal (a long snapshot encoding, or a bug)"
        )
        log.warning(
            "the service loop has not turned for %.0f s; %s. Every client waits meanwhile, PING included",
            stalled,
            where,
        )
