"""The service keeps the cycle collector off its state (``vms_adapter.server.heap``): it collects, then
freezes what survived, at start-up and every ``SETTLE_EVERY`` transactions."""

from __future__ import annotations

import gc
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from journal_service import JournalServer, start

from vms_adapter.server.heap import SETTLE_EVERY, FrozenHeap
from vms_adapter.server.journal import Journal, StorageOptions
from vms_adapter.server.open_model import OpenModel
from vms_adapter.server.writer import CommitRequest, GroupCommit, IncomingRecord

DEADLINE_S = 60.0


@pytest.fixture
def heap() -> Iterator[FrozenHeap]:
    gc.unfreeze()
    yield FrozenHeap(every=3)
    gc.unfreeze()  # the test process's objects go back to the collector's care


class _Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the collector can free it


def test_a_settle_frees_garbage_cycles_before_it_freezes_what_is_left(heap: FrozenHeap) -> None:
    cycle = _Node()
    gone = weakref.ref(cycle)
    del cycle
    assert heap.settle()
    assert gone() is None  # collected, not frozen for ever
    assert heap.frozen == gc.get_freeze_count()
    assert heap.stats()["gcSettles"] == 1


def test_a_settle_while_another_collection_runs_freezes_nothing(heap: FrozenHeap) -> None:
    """gc.collect() returns without collecting while a collection is under way (another thread's, or
    one whose callback runs here): freezing then would keep that moment's garbage cycles for ever."""
    inside: list[bool] = []

    def during_collection(phase: str, info: dict[str, Any]) -> None:
        if phase == "start" and not inside:
            inside.append(heap.settle())

    gc.callbacks.append(during_collection)
    try:
        gc.collect()
    finally:
        gc.callbacks.remove(during_collection)
    assert inside == [False]
    assert (heap.settles, heap.frozen, gc.get_freeze_count()) == (0, 0, 0)


def test_it_settles_once_every_so_many_transactions(heap: FrozenHeap) -> None:
    settled = []
    for transactions in (1, 2, 3, 4, 5, 7, 9, 10):
        heap.after(transactions)
        settled.append(heap.settles)
    assert settled == [0, 0, 1, 1, 1, 2, 2, 3]


def _commit(writer: GroupCommit, key: str) -> dict[str, Any]:
    return writer.commit_now(CommitRequest(None, key, None, [IncomingRecord("x-a", {})]))


def test_the_upkeep_follows_each_group_but_never_a_fail_stop(tmp_path: Path) -> None:
    class UndumpableModel(OpenModel):
        def snapshot_json(self) -> str:
            raise RuntimeError("state cannot be dumped")

    told: list[int] = []
    healthy = Journal.open(str(tmp_path / "ok"), OpenModel, StorageOptions())
    failing = Journal.open(str(tmp_path / "bad"), UndumpableModel, StorageOptions(snapshot_every=1))
    try:
        writer = GroupCommit(healthy, upkeep=told.append)
        _commit(writer, "k1")
        _commit(writer, "k2")
        assert told == [1, 2]
        stopped: list[str] = []
        writer = GroupCommit(failing, on_fatal=stopped.append, upkeep=told.append)
        _commit(writer, "k1")  # durable; the snapshot after it fails and stops the journal
        assert stopped
        assert failing.failed is not None
        assert told == [1, 2]
    finally:
        healthy.close()
        failing.close()


def test_an_upkeep_that_fails_stops_nothing(tmp_path: Path) -> None:
    def broken(transactions: int) -> None:
        raise RuntimeError("upkeep bug")

    journal = Journal.open(str(tmp_path / "j"), OpenModel, StorageOptions())
    try:
        writer = GroupCommit(journal, upkeep=broken)
        assert _commit(writer, "k1")["seq"] == 1
        assert _commit(writer, "k2")["seq"] == 2
        assert journal.failed is None
    finally:
        journal.close()


def test_the_service_settles_at_start_and_after_every_thousand_transactions(
    tmp_path: Path, servers: list[JournalServer]
) -> None:
    journal = start(tmp_path / "journal")
    servers.append(journal)
    per_thread = SETTLE_EVERY // 8 + 5
    with journal.client() as client:
        first = client.stats()
        assert first["gcSettles"] == 1  # the (here: empty) state, at start-up

        def commit_many(thread: int) -> None:
            for n in range(per_thread):
                client.commit(None, [{"type": "x-a"}], idempotency_key=f"heap-{thread}-{n}")

        threads = [threading.Thread(target=commit_many, args=(t,)) for t in range(8)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + DEADLINE_S
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        assert not any(thread.is_alive() for thread in threads)
        stats = client.stats()
        assert stats["transactions"] == 8 * per_thread
        assert stats["gcSettles"] == 2
        # Frozen or not, the state answers as before: the next seq, and a retried key's first result.
        assert client.commit(None, [{"type": "x-a"}], idempotency_key="after").seq == stats["lastSeq"] + 1
        assert client.commit(None, [{"type": "x-a"}], idempotency_key="heap-0-0").duplicate
    assert journal.stop() == 0
    # Restarted, the service freezes the recovered state (a thousand jobs and keys) before serving.
    again = start(tmp_path / "journal")
    servers.append(again)
    with again.client() as client:
        recovered = client.stats()
    assert recovered["gcSettles"] == 1
    assert recovered["gcFrozenObjects"] > first["gcFrozenObjects"] + 8 * per_thread
