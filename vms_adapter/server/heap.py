"""Keeping CPython's cycle collector off the journal's state.

The service keeps every job in memory: 20,000 registered jobs are about a million objects the collector
tracks. A full collection walks all of them, and CPython starts one whenever the objects that survived
the younger collections have grown by a quarter, so the cost grows with the state. Measured in-process
(no I/O) on the commits submit sends, ``JOB_REGISTERED`` of ``demo-ok``: collections cost 50 to 110 us
of each commit's 120 to 230 us, and the longest stopped the loop for 35 ms at 4,000 jobs and 290 ms at
20,000.

The state is plain dicts, lists and strings without reference cycles: once an object has survived a
collection, a later one only walks it again to find it alive. So every ``SETTLE_EVERY`` transactions the
loop collects once (walking only what is new since the last time) and freezes the survivors
(``gc.freeze``, Python 3.7+); full collections then skip them. Reference counting still frees a frozen
object as soon as nothing holds it. With this, in the same measurement, the collector's share fell to
12 to 17 us a commit and the loop's longest stop to 7 to 15 ms, flat as the state grows.

The one thing a frozen object escapes is the cycle search: a frozen object that later becomes part of
a garbage cycle is kept, with everything it references. The collection just before each freeze finds
every cycle that is garbage at that moment; a settle whose collection did not run (another thread was
collecting) freezes nothing and is tried again after the next group. The service's state cannot hold
cycles (its encoders run with ``check_circular=False``, where a cycle would fail), and a run of the
whole service in one process, TLS, rejections, time-outs and snapshots included, left no cyclic garbage.

Standard library only: this module runs on VSI Python 3.10 for OpenVMS.
"""

from __future__ import annotations

import gc
from typing import Any

SETTLE_EVERY = 1000  # transactions between settles: the stop it costs grows with what is new since


def _full_collections() -> int:
    return int(gc.get_stats()[-1]["collections"])


class FrozenHeap:
    """Collects and freezes what survived, at start-up and then every ``every`` transactions."""

    def __init__(self, every: int = SETTLE_EVERY) -> None:
        self.every = every
        self.settles = 0
        self.frozen = 0  # objects frozen by the settles so far (some freed since)
        self._settled_at = 0  # the writer's transaction count at the last settle

    def settle(self) -> bool:
        """Collect everything not yet frozen, then freeze what is left: call it between groups. False
        when the collection did not run (another thread was collecting): nothing is frozen then."""
        before = _full_collections()
        gc.collect()
        if _full_collections() == before:
            return False
        # Every survivor is now in the oldest generation; counting them here walks only them
        # (gc.get_freeze_count would walk everything frozen so far).
        self.frozen += len(gc.get_objects(generation=2))
        gc.freeze()
        self.settles += 1
        return True

    def after(self, transactions: int) -> None:
        """Settle when ``every`` transactions were written since the last settle (``transactions``: the
        count so far)."""
        if transactions - self._settled_at >= self.every and self.settle():
            self._settled_at = transactions

    def stats(self) -> dict[str, Any]:
        return {
            "gcSettles": self.settles,
            "gcFrozenObjects": self.frozen,
            # The full collections CPython started by itself (each settle runs one of its own).
            "gcFullCollections": _full_collections() - self.settles,
        }
