"""The service keeps the cycle collector off its state (``vms_adapter.server.heap``): it collects, then
freezes what survived, at start-up and every ``SETTLE_EVERY`` transactions."""

from __future__ import annotations

import gc
import threading
import weakref
from collections.abc import Iterator

import pytest
from journal_service import JournalServer

from vms_adapter.server.heap import SETTLE_EVERY, FrozenHeap


@pytest.fixture
def heap() -> Iterator[FrozenHeap]:
    yield FrozenHeap(every=3)
    gc.unfreeze()  # the test process's objects go back to the collector's care


class _Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the collector can free it


def test_a_settle_frees_garbage_cycles_before_it_freezes_what_is_left(heap: FrozenHeap) -> None:
    cycle = _Node()
    gone = weakref.ref(cycle)
    kept = [{"job": "j-00000001"}]
    del cycle
    heap.settle()
    assert gone() is None  # collected, not frozen for ever
    assert gc.get_freeze_count() > 0
    assert kept == [{"job": "j-00000001"}]
    assert heap.stats()["gcSettles"] == 1


def test_it_settles_once_every_so_many_transactions(heap: FrozenHeap) -> None:
    settled = []
    for transactions in (1, 2, 3, 4, 5, 7, 9, 10):
        heap.after(transactions)
        settled.append(heap.settles)
    assert settled == [0, 0, 1, 1, 1, 2, 2, 3]


def test_the_service_settles_at_start_and_after_every_thousand_transactions(journal: JournalServer) -> None:
    with journal.client() as client:
        assert client.stats()["gcSettles"] == 1  # the recovered (here: empty) state, at start-up
        per_thread = SETTLE_EVERY // 8 + 5

        def commit_many(thread: int) -> None:
            for n in range(per_thread):
                client.commit(None, [{"type": "x-a"}], idempotency_key=f"heap-{thread}-{n}")

        threads = [threading.Thread(target=commit_many, args=(t,)) for t in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not any(thread.is_alive() for thread in threads)
        stats = client.stats()
        assert stats["transactions"] == 8 * per_thread
        assert stats["gcSettles"] == 2
        assert stats["gcFrozenObjects"] > 0
        # Frozen or not, the state answers as before: the next seq, and a retried key's first result.
        assert client.commit(None, [{"type": "x-a"}], idempotency_key="after").seq == stats["lastSeq"] + 1
        assert client.commit(None, [{"type": "x-a"}], idempotency_key="heap-0-0").duplicate
