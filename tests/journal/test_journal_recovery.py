"""Crash and damage, against real service processes: kill -9 under load, torn tails, bit flips, salvage."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections import defaultdict
from pathlib import Path

import pytest
from journal_service import ROOT, JournalServer, exit_of, spawn, start

from vms_adapter.client import CommitResult
from vms_adapter.errors import JournalError
from vms_adapter.server import reader

CLIENTS = 16
LOAD_BEFORE_KILL = 300  # acknowledged commits before the kill (the kill lands while more are in flight)
LOAD_DEADLINE_S = 60.0


def dump(data_dir: Path) -> list[dict[str, object]]:
    result = subprocess.run(
        [sys.executable, "-m", "vms_adapter.server.cli", "dump", str(data_dir)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return [json.loads(line) for line in result.stdout.splitlines()]


@pytest.mark.slow
def test_kill_9_under_concurrent_load_loses_no_acknowledged_commit(
    tmp_path: Path, servers: list[JournalServer]
) -> None:
    data_dir = tmp_path / "j"
    server = start(data_dir, "--snapshot-every", "50")
    servers.append(server)
    acknowledged: dict[str, CommitResult] = {}
    lock = threading.Lock()
    enough = threading.Event()
    stop = threading.Event()

    def load(n: int) -> None:
        with server.client(retry_deadline=1.0, pool_size=1) as client:
            i = 0
            while not stop.is_set():
                key = f"c{n}-{i}"
                records = [{"type": "x-part", "data": {"key": key, "part": p}} for p in range(3)]
                try:
                    result = client.commit(None, records, idempotency_key=key)
                except JournalError:
                    return  # the server is gone
                with lock:
                    acknowledged[key] = result
                    if len(acknowledged) >= LOAD_BEFORE_KILL:
                        enough.set()
                i += 1

    threads = [threading.Thread(target=load, args=(n,)) for n in range(CLIENTS)]
    for thread in threads:
        thread.start()
    assert enough.wait(LOAD_DEADLINE_S), "the load did not reach its target in time"
    server.kill()  # SIGKILL while all clients have commits in flight
    stop.set()
    for thread in threads:
        thread.join(LOAD_DEADLINE_S)
    assert not any(t.is_alive() for t in threads)
    with lock:
        acked = dict(acknowledged)

    by_key: dict[str, list[dict[str, object]]] = defaultdict(list)
    for line in dump(data_dir):
        by_key[str(line["idempotencyKey"])].append(line)
    for key, _result in acked.items():
        lines = by_key.get(key)
        assert lines, f"acknowledged commit {key} is missing after the crash"
    for key, lines in by_key.items():
        seqs = [int(str(line["seq"])) for line in lines]
        parts = [line["data"]["part"] for line in lines]  # type: ignore[index]
        assert parts == [0, 1, 2], f"{key}: a partial or duplicated transaction is visible: {parts}"
        assert seqs == list(range(seqs[0], seqs[0] + 3))
        if key in acked:
            assert seqs[-1] == acked[key].seq

    restarted = start(data_dir)
    servers.append(restarted)
    with restarted.client() as client:
        for key in list(acked)[:: max(1, len(acked) // 40)]:
            again = client.commit(None, [{"type": "x-part", "data": {}}], idempotency_key=key)
            assert again.duplicate
            assert (again.seq, again.job_id) == (acked[key].seq, acked[key].job_id)
        fresh = client.commit(None, [{"type": "x-after"}], idempotency_key="after-crash")
        assert fresh.seq == max(int(str(line["seq"])) for lines in by_key.values() for line in lines) + 1
        assert not fresh.duplicate
    assert restarted.stop() == 0


def test_a_torn_last_transaction_is_cut_on_restart(tmp_path: Path, servers: list[JournalServer]) -> None:
    data_dir = tmp_path / "j"
    server = start(data_dir)
    servers.append(server)
    with server.client() as client:
        kept = client.commit(None, [{"type": "x-a"}], idempotency_key="kept")
        client.commit(None, [{"type": "x-a"}, {"type": "x-b"}], idempotency_key="torn")
    server.kill()
    (name,) = reader.list_segments(str(data_dir))
    segment = data_dir / name
    data = segment.read_bytes()
    ends = [tx.end_offset for tx in reader.scan_segment(data, name).transactions]
    cut_at = (ends[0] + ends[1]) // 2
    segment.write_bytes(data[:cut_at])
    restarted = start(data_dir)
    servers.append(restarted)
    with restarted.client() as client:
        assert client.stats()["lastSeq"] == kept.seq
        again = client.commit(None, [{"type": "x-a"}, {"type": "x-b"}], idempotency_key="torn")
        assert not again.duplicate, "the torn transaction was never acknowledged, so its key is free"
    assert restarted.stop() == 0
    assert (
        f"cut torn tail of {cut_at - ends[0]} bytes from {segment} at offset {ends[0]}" in restarted.stderr()
    )


def test_a_bit_flip_mid_file_refuses_start_and_salvage_keeps_the_sound_prefix(
    tmp_path: Path, servers: list[JournalServer]
) -> None:
    data_dir = tmp_path / "j"
    server = start(data_dir)
    servers.append(server)
    with server.client() as client:
        for i in range(5):
            client.commit(None, [{"type": "x-a", "data": {"i": i}}], idempotency_key=f"k{i}")
    assert server.stop() == 0
    for snapshot in data_dir.glob("snap-*.json"):
        snapshot.unlink()  # make start-up read the damaged range (a snapshot would skip it)
    (name,) = reader.list_segments(str(data_dir))
    segment = data_dir / name
    data = bytearray(segment.read_bytes())
    ends = [tx.end_offset for tx in reader.scan_segment(bytes(data), name).transactions]
    data[ends[1] + 30] ^= 0x04  # inside the third transaction
    segment.write_bytes(bytes(data))

    refused = spawn(data_dir)
    servers.append(refused)
    assert exit_of(refused) == 2
    message = refused.stderr()
    assert f"{segment} at byte offset {ends[1]}" in message
    assert "--salvage" in message

    salvaged = start(data_dir, "--salvage")
    servers.append(salvaged)
    with salvaged.client() as client:
        assert client.stats()["lastSeq"] == 2
        assert client.commit(None, [{"type": "x-a"}], idempotency_key="k1").duplicate
    assert salvaged.stop() == 0
    assert "salvaged" in salvaged.stderr()
    assert list(data_dir.glob("salvage-*.bad"))


def test_sigterm_under_load_answers_or_refuses_every_commit_and_loses_none(
    tmp_path: Path, servers: list[JournalServer]
) -> None:
    data_dir = tmp_path / "j"
    server = start(data_dir)
    servers.append(server)
    acknowledged: dict[str, int] = {}
    lock = threading.Lock()
    enough = threading.Event()

    def load(n: int) -> None:
        with server.client(retry_deadline=0.5, pool_size=1) as client:
            for i in range(10_000):
                key = f"t{n}-{i}"
                try:
                    seq = client.commit(
                        None, [{"type": "x-a", "data": {"key": key}}], idempotency_key=key
                    ).seq
                except JournalError:
                    return
                with lock:
                    acknowledged[key] = seq
                    if len(acknowledged) >= 100:
                        enough.set()

    threads = [threading.Thread(target=load, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    assert enough.wait(LOAD_DEADLINE_S)
    assert server.stop() == 0, server.stderr()
    for thread in threads:
        thread.join(LOAD_DEADLINE_S)
    assert not any(t.is_alive() for t in threads)
    committed = {str(line["idempotencyKey"]): line["seq"] for line in dump(data_dir)}
    with lock:
        for key, seq in acknowledged.items():
            assert committed.get(key) == seq, key
    assert list(data_dir.glob("snap-*.json")), "a clean stop writes a snapshot"
