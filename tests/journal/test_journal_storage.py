"""Storage, in process: the real Journal, group commit and reader on real files (no sockets).

Torn tails are checked at every byte offset and bit flips at every bit, on bytes, which is what makes
"every offset" affordable; test_journal_recovery.py repeats the important cases against real restarts.
"""

from __future__ import annotations

import errno
import io
import json
import os
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from vms_adapter.errors import Conflict, JournalError, JournalUnavailable, Rejected
from vms_adapter.server import reader, service, snapshots
from vms_adapter.server import wal_format as fmt
from vms_adapter.server.journal import Journal, StorageOptions
from vms_adapter.server.model import Record
from vms_adapter.server.open_model import OpenModel
from vms_adapter.server.state import JournalState
from vms_adapter.server.writer import CommitRequest, GroupCommit, IncomingRecord

TIMEOUT_S = 10.0


class Running:
    """A journal opened in process with its group commit (each commit its own group)."""

    def __init__(self, path: Path, **options: Any) -> None:
        self.journal = Journal.open(str(path), OpenModel, StorageOptions(**options))
        self.writer = GroupCommit(self.journal)

    def commit(
        self, key: str, job_id: str | None = None, *types: str, expected: int | None = None
    ) -> dict[str, Any]:
        records = [
            IncomingRecord(type=t, data={"key": key, "part": i}) for i, t in enumerate(types or ("x-a",))
        ]
        return self.writer.commit_now(CommitRequest(job_id, key, expected, records))

    def close(self) -> None:
        self.journal.close()


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Running]:
    journal = Running(tmp_path / "j")
    yield journal
    journal.close()


def segment_bytes(path: Path) -> tuple[str, bytes]:
    (name,) = reader.list_segments(str(path))
    return name, (path / name).read_bytes()


def transaction_ends(data: bytes, name: str) -> list[int]:
    scan = reader.scan_segment(data, name)
    assert scan.damage is None
    return [tx.end_offset for tx in scan.transactions]


def test_records_get_consecutive_seqs_and_jobs_get_readable_ids(running: Running) -> None:
    first = running.commit("k1", None, "x-a", "x-b")
    second = running.commit("k2", None, "x-a")
    assert (first["jobId"], first["seq"], first["version"]) == ("j-00000001", 2, 1)
    assert (second["jobId"], second["seq"], second["version"]) == ("j-00000002", 3, 1)
    third = running.commit("k3", "j-00000001", "x-c")
    assert (third["seq"], third["version"]) == (4, 2)


def test_a_repeated_key_returns_the_original_reply_marked_duplicate(running: Running) -> None:
    original = running.commit("same", None, "x-a")
    again = running.commit("same", None, "x-a")
    assert again == {**original, "duplicate": True}
    assert running.journal.state.last_seq == 1


def test_a_stale_expected_version_is_a_conflict_and_writes_nothing(running: Running) -> None:
    job = running.commit("k1")["jobId"]
    with pytest.raises(Conflict) as caught:
        running.commit("k2", job, "x-a", expected=0)
    assert caught.value.current_version == 1
    assert running.journal.state.last_seq == 1
    assert running.commit("k3", job, "x-a", expected=1)["version"] == 2


def test_read_and_list_show_the_model_view_plus_the_storage_version(running: Running) -> None:
    job = running.commit("k1", None, "x-a", "x-b")["jobId"]
    running.commit("k2", None, "x-a")
    view = running.journal.read_job(job)
    assert view["version"] == 1
    assert [r["type"] for r in view["records"]] == ["x-a", "x-b"]
    page = running.journal.list_jobs({}, None, 1)
    assert [j["jobId"] for j in page["jobs"]] == [job]
    assert page["jobs"][0]["version"] == 1
    rest = running.journal.list_jobs({}, page["next"], 10)
    assert [j["jobId"] for j in rest["jobs"]] == ["j-00000002"]
    assert rest["next"] is None
    with pytest.raises(Rejected) as caught:
        running.journal.read_job("j-99999999")
    assert caught.value.code == "NOT_FOUND"


def test_state_and_keys_survive_reopening_with_and_without_a_snapshot(tmp_path: Path) -> None:
    first = Running(tmp_path / "j", snapshot_every=3)
    replies = [first.commit(f"k{i}", None, "x-a") for i in range(7)]
    first.close()  # the writer took snapshots on the way
    assert snapshots.list_snapshots(str(tmp_path / "j"))
    for drop_snapshots in (False, True):
        if drop_snapshots:
            for _, name in snapshots.list_snapshots(str(tmp_path / "j")):
                os.remove(tmp_path / "j" / name)
        again = Running(tmp_path / "j", snapshot_every=3)
        try:
            assert again.journal.state.last_seq == 7
            assert again.commit("k4", None, "x-a") == {**replies[4], "duplicate": True}
            assert again.journal.read_job("j-00000003")["records"][0]["data"] == {"key": "k2", "part": 0}
        finally:
            again.close()
    third = Running(tmp_path / "j")
    try:
        assert third.commit("new", None, "x-a")["jobId"] == "j-00000008", "the job counter must persist"
    finally:
        third.close()


def test_segments_are_cut_at_the_size_limit_and_replayed_in_order(tmp_path: Path) -> None:
    first = Running(tmp_path / "j", segment_bytes=400)
    for i in range(12):
        first.commit(f"k{i}", None, "x-a")
    first.close()
    names = reader.list_segments(str(tmp_path / "j"))
    assert len(names) > 2
    assert all(fmt.SEGMENT_NAME.match(n) and n.count(".") == 1 for n in names)
    seqs: list[int] = []
    reader.replay(
        str(tmp_path / "j"), lambda tx: seqs.extend(r.seq for r in tx.records), mode=reader.READ_ONLY
    )
    assert seqs == list(range(1, 13))


def test_expired_idempotency_keys_are_forgotten(tmp_path: Path) -> None:
    first = Running(tmp_path / "j", key_retention_s=1e-6)
    original = first.commit("k")
    assert first.journal.state.keys  # kept until pruned
    first.close()
    again = Running(tmp_path / "j", key_retention_s=1e-6)
    try:
        assert not again.journal.state.keys
        assert again.commit("k")["seq"] == original["seq"] + 1
    finally:
        again.close()


def test_a_key_reused_after_its_retention_does_not_stop_the_pruning_of_older_keys() -> None:
    state = JournalState()
    for seq, (key, at) in enumerate([("a", 0.0), ("b", 1.0), ("a", 100.0)], start=1):
        record = Record(seq, "j-00000001", "x-a", {}, at)
        state.apply([record], {"time": at, "key": key, "reply": {"seq": seq}})
    assert state.forget_keys_before(50.0) == 1
    assert list(state.keys) == ["a"]
    assert state.keys["a"].reply == {"seq": 3}


def test_truncation_at_every_byte_offset_recovers_exactly_the_complete_transactions(running: Running) -> None:
    for i in range(4):
        running.commit(f"k{i}", None, *(["x-a", "x-b"] if i % 2 else ["x-a"]))
    name, data = segment_bytes(Path(running.journal.data_dir))
    ends = transaction_ends(data, name)
    assert len(ends) == 4
    assert ends[-1] == len(data)
    for cut in range(len(data) + 1):
        scan = reader.scan_segment(data[:cut], name)
        complete = [end for end in ends if end <= cut]
        assert [tx.end_offset for tx in scan.transactions] == complete, cut
        if cut < fmt.SEGMENT_HEADER_BYTES:
            assert scan.damage is not None
            assert scan.damage.torn
        elif cut in ends or cut == fmt.SEGMENT_HEADER_BYTES:
            assert scan.damage is None, cut
        else:
            assert scan.damage is not None, cut
            assert scan.damage.torn, (cut, scan.damage)
            assert scan.damage.offset == (complete[-1] if complete else fmt.SEGMENT_HEADER_BYTES)


def test_a_zero_filled_tail_is_torn_but_garbage_is_corruption(running: Running) -> None:
    running.commit("k1")
    name, data = segment_bytes(Path(running.journal.data_dir))
    zeroed = reader.scan_segment(data + bytes(100), name)
    assert zeroed.damage is not None
    assert zeroed.damage.torn
    assert zeroed.damage.offset == len(data)
    garbage = reader.scan_segment(data + b"\x00" * 20 + b"garbage" + bytes(20), name)
    assert garbage.damage is not None
    assert not garbage.damage.torn
    assert garbage.damage.offset == len(data)


def test_a_last_transaction_whose_final_sectors_are_zeros_is_a_torn_tail(tmp_path: Path) -> None:
    """Power loss can leave the last sectors of an unfinished write as zeros inside the new file size.
    Before: the CRC mismatch made that corruption, and an ordinary crash stopped start-up (exit 2)."""
    first = Running(tmp_path / "j")
    first.commit("k1", None, "x-a")
    first.writer.commit_now(CommitRequest(None, "k2", None, [IncomingRecord("x-a", {"pad": "p" * 3000})]))
    first.close()
    name, data = segment_bytes(tmp_path / "j")
    kept_end = transaction_ends(data, name)[0]
    sector = reader.SECTOR_BYTES
    for zeros_from in (len(data) // sector * sector, (kept_end // sector + 1) * sector):
        torn = data[:zeros_from] + bytes(len(data) - zeros_from)
        scan = reader.scan_segment(torn, name)
        assert scan.damage is not None
        assert (scan.damage.torn, scan.damage.offset) == (True, kept_end), scan.damage
    # One zeroed sector with non-zero bytes after it is damage, not a crash's leftover.
    middle = (kept_end // sector + 2) * sector
    holed = data[:middle] + bytes(sector) + data[middle + sector :]
    damage = reader.scan_segment(holed, name).damage
    assert damage is not None
    assert (damage.torn, damage.offset) == (False, kept_end)
    (tmp_path / "j" / name).write_bytes(data[: len(data) // sector * sector] + bytes(len(data) % sector))
    reopened = Journal.open(str(tmp_path / "j"), OpenModel, StorageOptions())
    try:
        assert reopened.state.last_seq == 1
        assert any("cut torn tail" in action for action in reopened.recovery)
    finally:
        reopened.close()


def test_a_new_last_segment_that_is_all_zeros_is_removed_as_torn(tmp_path: Path) -> None:
    """A segment is fsynced (file and directory) before anything is written to it, so one that holds
    only zeros never held an acknowledged commit. Before: 'bad segment magic', refusing to start."""
    first = Running(tmp_path / "j")
    first.commit("k1")
    first.close()
    empty = tmp_path / "j" / fmt.segment_name(2)
    empty.write_bytes(bytes(fmt.SEGMENT_HEADER_BYTES))
    reopened = Journal.open(str(tmp_path / "j"), OpenModel, StorageOptions())
    try:
        assert reopened.state.last_seq == 1
        assert not empty.exists()
        assert any("removed" in action for action in reopened.recovery)
    finally:
        reopened.close()


def test_every_single_bit_flip_is_detected_as_corruption(running: Running) -> None:
    running.commit("k1", None, "x-a", "x-b")
    running.commit("k2", None, "x-a")
    name, data = segment_bytes(Path(running.journal.data_dir))
    for position in range(len(data)):
        for bit in range(8):
            damaged = bytearray(data)
            damaged[position] ^= 1 << bit
            scan = reader.scan_segment(bytes(damaged), name)
            assert scan.damage is not None, (position, bit)
            assert not scan.damage.torn, (position, bit, scan.damage)
            assert scan.damage.offset <= position


def test_repair_cuts_a_torn_tail_and_says_what_it_cut(tmp_path: Path) -> None:
    first = Running(tmp_path / "j")
    first.commit("k1")
    first.commit("k2", None, "x-a", "x-b")
    first.close()
    name, data = segment_bytes(tmp_path / "j")
    ends = transaction_ends(data, name)
    (tmp_path / "j" / name).write_bytes(data[: ends[0] + 7])
    for _, snap in snapshots.list_snapshots(str(tmp_path / "j")):
        os.remove(tmp_path / "j" / snap)
    again = Running(tmp_path / "j")
    try:
        assert again.journal.state.last_seq == 1
        assert any("cut torn tail of 7 bytes" in action for action in again.journal.recovery)
        assert (tmp_path / "j" / name).stat().st_size == ends[0]
        assert again.commit("k2", None, "x-a")["seq"] == 2, "a cut transaction was never acknowledged"
    finally:
        again.close()


def test_corruption_refuses_to_open_and_salvage_keeps_the_sound_prefix(tmp_path: Path) -> None:
    first = Running(tmp_path / "j", segment_bytes=500)
    for i in range(9):
        first.commit(f"k{i}", None, "x-a")
    first.close()
    names = reader.list_segments(str(tmp_path / "j"))
    assert len(names) >= 3
    victim = tmp_path / "j" / names[1]
    data = bytearray(victim.read_bytes())
    ends = transaction_ends(bytes(data), names[1])
    assert len(ends) >= 2
    before = len(transaction_ends((tmp_path / "j" / names[0]).read_bytes(), names[0])) + 1
    data[ends[0] + 20] ^= 0x10  # inside the second transaction of the second segment
    victim.write_bytes(bytes(data))
    with pytest.raises(reader.CorruptJournal) as caught:
        Journal.open(str(tmp_path / "j"), OpenModel, StorageOptions())
    assert caught.value.path == str(victim)
    assert caught.value.offset == ends[0]
    salvaged = Journal.open(str(tmp_path / "j"), OpenModel, StorageOptions(), salvage=True)
    try:
        assert salvaged.state.last_seq == before  # one record per transaction
        assert victim.stat().st_size == ends[0]
        aside = sorted(p.name for p in (tmp_path / "j").iterdir() if p.name.startswith("salvage-"))
        assert aside
        assert all(n.endswith(".bad") and n.count(".") == 1 for n in aside)
        assert any("salvaged" in action for action in salvaged.recovery)
        assert reader.list_segments(str(tmp_path / "j"))[-1] == names[1]
    finally:
        salvaged.close()


def test_a_record_the_encoder_cannot_nest_is_refused_without_stopping_the_journal(running: Running) -> None:
    data: dict[str, Any] = {}
    for _ in range(5000):  # beyond the interpreter's recursion limit
        data = {"a": data}
    deep = CommitRequest(None, "deep", None, [IncomingRecord("x-a", data)])
    with pytest.raises(JournalError) as caught:
        running.writer.commit_now(deep)
    assert caught.value.code == "INTERNAL"
    assert running.journal.failed is None
    assert running.commit("after")["seq"] == 1


def test_a_failure_between_groups_stops_the_journal(tmp_path: Path) -> None:
    """Before: an exception other than StorageFailure in after_group (here a snapshot the model cannot
    dump) ended the writer thread silently; every later commit waited out its time-out, for ever. It
    must be a fail-stop like a storage failure."""

    class UndumpableModel(OpenModel):
        def snapshot_json(self) -> str:
            raise RuntimeError("state cannot be dumped")

    stopped: list[str] = []
    journal = Journal.open(str(tmp_path / "j"), UndumpableModel, StorageOptions(snapshot_every=1))
    writer = GroupCommit(journal, on_fatal=stopped.append)
    try:
        first = CommitRequest(None, "k1", None, [IncomingRecord("x-a", {})])
        assert writer.commit_now(first)["seq"] == 1
        with pytest.raises(JournalUnavailable, match="stopping"):  # not "did not complete within"
            writer.commit_now(CommitRequest(None, "k2", None, [IncomingRecord("x-a", {})]))
        assert len(stopped) == 1
        assert "state cannot be dumped" in stopped[0]
        with pytest.raises(JournalUnavailable, match="stopping"):  # and it stays stopped
            writer.commit_now(CommitRequest(None, "k3", None, [IncomingRecord("x-a", {})]))
    finally:
        journal.close()


def test_a_shutdown_that_outlasts_the_loop_grace_takes_no_snapshot_of_undurable_state(
    tmp_path: Path,
) -> None:
    """Before: after the grace period the main thread snapshotted and closed the journal while the writer
    was still between evolve and fsync; the snapshot held a record that never became durable. Here the
    service loop thread is stuck staging a transaction."""
    inside, release = threading.Event(), threading.Event()

    class SlowModel(OpenModel):
        def evolve(self, record: Any) -> None:
            super().evolve(record)
            if record.type == "x-slow":
                inside.set()
                release.wait(TIMEOUT_S)

    path = str(tmp_path / "j")
    journal = Journal.open(path, SlowModel, StorageOptions())
    writer = GroupCommit(journal)
    job = writer.commit_now(CommitRequest(None, "k1", None, [IncomingRecord("x-a", {})]))["jobId"]
    slow = threading.Thread(
        target=writer.commit_now, args=(CommitRequest(job, "k2", None, [IncomingRecord("x-slow", {})]),)
    )
    slow.start()
    try:
        assert inside.wait(TIMEOUT_S)
        err = io.StringIO()
        code = service.shut_down(journal, slow, [], err=err, grace_s=0.2)
        assert code == service.EXIT_STORAGE_FAILED
        assert "did not finish" in err.getvalue()
        assert snapshots.list_snapshots(path) == []
    finally:
        release.set()
        slow.join(TIMEOUT_S)
    assert not slow.is_alive()
    journal.close()
    reopened = Journal.open(path, OpenModel, StorageOptions())
    try:
        assert [r["seq"] for r in reopened.read_job(job)["records"]] == list(
            range(1, reopened.state.last_seq + 1)
        )
    finally:
        reopened.close()


def _fsync_failing_on_directories(error: int, seen: list[str] | None = None) -> Callable[[int], None]:
    """os.fsync that fails with ``error`` for directories (a real EIO cannot be provoked on demand) and
    records what it was asked to sync."""
    real = os.fsync

    def fsync(fd: int) -> None:
        if seen is not None:
            seen.append(os.readlink(f"/proc/self/fd/{fd}"))
        if error and stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(error, os.strerror(error))
        real(fd)

    return fsync


def test_a_directory_fsync_that_fails_is_not_ignored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: any error of a directory fsync was swallowed, so the service went on acknowledging commits
    into a new segment whose directory entry a crash could still lose."""
    monkeypatch.setattr(os, "fsync", _fsync_failing_on_directories(errno.EINVAL))
    reader.fsync_directory(str(tmp_path))  # "not supported here" stays a no-op
    stopped: list[str] = []
    journal = Journal.open(str(tmp_path / "j"), OpenModel, StorageOptions(segment_bytes=64))
    writer = GroupCommit(journal, on_fatal=stopped.append)
    try:
        monkeypatch.setattr(os, "fsync", _fsync_failing_on_directories(errno.EIO))
        first = CommitRequest(None, "k1", None, [IncomingRecord("x-a", {})])
        assert writer.commit_now(first)["seq"] == 1  # durable in the first segment; then the cut fails
        with pytest.raises(JournalUnavailable, match="stopping"):
            writer.commit_now(CommitRequest(None, "k2", None, [IncomingRecord("x-a", {})]))
        assert len(stopped) == 1
        assert "cannot create segment" in stopped[0]
    finally:
        journal.close()


def test_start_up_makes_the_recovered_tail_durable_before_serving(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process killed between write and fsync leaves a complete transaction in the page cache only;
    recovery counts it as committed, so it must be fsynced before a duplicate reply relies on it."""
    first = Running(tmp_path / "j")
    first.commit("k1")
    first.close()
    (name,) = reader.list_segments(str(tmp_path / "j"))
    synced: list[str] = []
    monkeypatch.setattr(os, "fsync", _fsync_failing_on_directories(0, synced))
    journal = Journal.open(str(tmp_path / "j"), OpenModel, StorageOptions())
    try:
        assert str(tmp_path / "j" / name) in synced
        assert str(tmp_path / "j") in synced
    finally:
        journal.close()


def test_a_second_salvage_at_the_same_place_keeps_what_the_first_moved_aside(tmp_path: Path) -> None:
    """Before: both salvages wrote salvage-seg-...-at-<offset>.bad, the second overwriting the first."""
    path = tmp_path / "j"
    moved: list[bytes] = []
    for round_ in range(2):
        running = Running(path)
        for i in range(3):
            running.commit(f"r{round_}-k{i}", None, "x-a")
        running.close()
        name, data = segment_bytes(path)
        first_end = transaction_ends(data, name)[0]
        damaged = bytearray(data)
        damaged[first_end + 20] ^= 0x10  # the second transaction, at the same offset both times
        (path / name).write_bytes(bytes(damaged))
        moved.append(bytes(damaged[first_end:]))
        Journal.open(str(path), OpenModel, StorageOptions(), salvage=True).close()
    aside = sorted(p for p in path.iterdir() if p.name.startswith("salvage-"))
    assert [p.name.count(".") for p in aside] == [1, 1]
    assert sorted(p.read_bytes() for p in aside) == sorted(moved)


def test_salvage_makes_the_moved_aside_copy_durable_before_cutting_the_segment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: the segment was truncated (and fsynced) while the new .bad file's directory entry was
    not yet durable, so a crash then could lose the only copy of the moved-aside bytes."""
    path = tmp_path / "j"
    running = Running(path)
    for i in range(3):
        running.commit(f"k{i}", None, "x-a")
    running.close()
    name, data = segment_bytes(path)
    damaged = bytearray(data)
    damaged[transaction_ends(data, name)[0] + 20] ^= 0x10
    (path / name).write_bytes(bytes(damaged))
    synced: list[str] = []
    monkeypatch.setattr(os, "fsync", _fsync_failing_on_directories(0, synced))
    Journal.open(str(path), OpenModel, StorageOptions(), salvage=True).close()
    (aside,) = (p.name for p in path.iterdir() if p.name.startswith("salvage-"))
    first_cut = synced.index(str(path / name))
    assert str(path / aside) in synced[:first_cut]
    assert str(path) in synced[synced.index(str(path / aside)) : first_cut]


def test_a_failed_write_stops_the_journal_and_nothing_is_acknowledged_after_it(tmp_path: Path) -> None:
    stopped: list[str] = []
    journal = Journal.open(str(tmp_path / "j"), OpenModel, StorageOptions())
    writer = GroupCommit(journal, on_fatal=stopped.append)
    try:
        request = CommitRequest(None, "k1", None, [IncomingRecord("x-a", {})])
        assert writer.commit_now(request)["seq"] == 1
        fd = journal.segments._fd
        assert fd is not None
        os.close(fd)  # the next write fails with a real EBADF from the kernel
        with pytest.raises(JournalUnavailable):
            writer.commit_now(CommitRequest(None, "k2", None, [IncomingRecord("x-a", {})]))
        assert stopped
        assert "write or fsync" in stopped[0]
        with pytest.raises(JournalUnavailable):
            writer.commit_now(CommitRequest(None, "k3", None, [IncomingRecord("x-a", {})]))
        with pytest.raises(JournalUnavailable):
            journal.read_job("j-00000001")
    finally:
        journal.segments._fd = None
        journal.close()
    reopened = Running(tmp_path / "j")
    try:
        assert reopened.journal.state.last_seq == 1
        assert reopened.commit("k2")["duplicate"] is False
    finally:
        reopened.close()


def test_a_snapshot_the_model_cannot_load_is_skipped_for_a_full_replay(tmp_path: Path) -> None:
    first = Running(tmp_path / "j", snapshot_every=2)
    for i in range(5):
        first.commit(f"k{i}")
    first.close()
    assert snapshots.list_snapshots(str(tmp_path / "j"))

    class PickyModel(OpenModel):
        def load_state(self, data: dict[str, Any]) -> None:
            raise ValueError("state format 0 is not 1")

    journal = Journal.open(str(tmp_path / "j"), PickyModel, StorageOptions())
    try:
        assert journal.state.last_seq == 5
        assert journal.read_job("j-00000005")["version"] == 1
        assert journal.snapshot_seq == 0
    finally:
        journal.close()


def test_the_chunked_state_encoding_equals_the_plain_one(running: Running) -> None:
    for i in range(7):
        running.commit(f"k{i}", None, "x-a")
    state = running.journal.state
    for chunk in (1, 2, 3, 500):
        assert json.loads(state.dump_json(chunk)) == json.loads(json.dumps(state.dump()))
