"""The stall watch: a service loop stuck in a journal write is reported, and so is its recovery.

The loop really is stuck: the segment's descriptor is swapped for the write end of a full pipe, so the
next group's ``os.write`` blocks in the kernel as it would on a disk that stopped completing writes.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

import pytest
from journal_service import in_process_front
from support.waiting import wait_until

from vms_adapter.client import JournalClient
from vms_adapter.server.journal import Journal, StorageOptions
from vms_adapter.server.open_model import OpenModel
from vms_adapter.server.operations import Operations
from vms_adapter.server.stall import StallWatch
from vms_adapter.server.writer import GroupCommit


def full_pipe() -> tuple[int, int]:
    """A pipe whose buffer is full: the next blocking write to its write end waits for a reader."""
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    try:
        while True:
            os.write(write_end, b"\0" * 65536)
    except BlockingIOError:
        pass
    os.set_blocking(write_end, True)
    return read_end, write_end


def drain(fd: int) -> None:
    os.set_blocking(fd, False)
    try:
        while os.read(fd, 1 << 20):
            pass
    except BlockingIOError:
        pass


def test_a_loop_stuck_in_a_journal_write_is_reported_until_it_turns_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="xpipe.journal.stall")

    def warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "xpipe.journal.stall"]

    journal = Journal.open(str(tmp_path / "j"), OpenModel, StorageOptions())
    writer = GroupCommit(journal)
    operations = Operations(journal, writer)
    stopping = threading.Event()
    front = in_process_front(operations, stopping)
    watch = StallWatch(front, journal.segments, warn_after_s=0.5, repeat_s=60.0)
    loop = threading.Thread(target=front.serve_until_stopped, daemon=True)
    loop.start()
    # Fault injection: the segment's descriptor becomes a full pipe (the disk stops completing writes).
    segment_fd = journal.segments._fd
    read_end, write_end = full_pipe()
    journal.segments._fd = write_end
    replies: list[int] = []
    client = JournalClient("127.0.0.1", front.address[1], read_timeout=30.0, max_attempts=1)
    committer = threading.Thread(
        target=lambda: replies.append(
            client.commit(None, [{"type": "x-note", "data": {}}], idempotency_key="stalled").seq
        )
    )
    try:
        watch.check(time.monotonic())
        assert not warnings()  # a turning loop is not reported
        committer.start()
        wait_until(lambda: journal.segments.storing is not None, what="the group write to start")

        def reported(text: str) -> bool:
            watch.check(time.monotonic())
            return any(text in message for message in warnings())

        wait_until(lambda: reported("has not turned for"), what="the stall warning", timeout_s=10.0)
        (warning,) = warnings()
        assert f"waiting for the write or fsync of {journal.segments.name}" in warning
        watch.check(time.monotonic())
        assert len(warnings()) == 1  # repeated only every repeat_s
        assert not replies  # nothing is acknowledged while the write hangs

        journal.segments._fd = segment_fd  # the fsync that follows goes to the real file
        drain(read_end)  # the disk completes the write
        committer.join(30)
        assert replies
        wait_until(lambda: reported("turns again after a stall of"), what="the recovery line", timeout_s=10.0)
    finally:
        journal.segments._fd = segment_fd
        drain(read_end)
        stopping.set()
        loop.join(30)
        client.close()
        os.close(read_end)
        os.close(write_end)
        journal.close()
    assert not loop.is_alive()
