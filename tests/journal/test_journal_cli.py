"""``xpipe-journal verify`` and ``dump`` on real journals written by a real service."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from journal_service import ROOT, JournalServer, exit_of, spawn, start

from vms_adapter.server import reader


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vms_adapter.server.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def written_journal(tmp_path: Path, servers: list[JournalServer]) -> tuple[Path, str]:
    data_dir = tmp_path / "j"
    server = start(data_dir)
    servers.append(server)
    with server.client() as client:
        first = client.commit(None, [{"type": "x-a", "data": {"n": 1}}], idempotency_key="one")
        client.commit(None, [{"type": "x-b", "data": {"n": 2}}], idempotency_key="two")
        client.commit(
            first.job_id, [{"type": "x-c", "data": {"n": 3}}, {"type": "x-d"}], idempotency_key="three"
        )
    assert server.stop() == 0
    return data_dir, first.job_id


def test_verify_reports_a_sound_journal(tmp_path: Path, servers: list[JournalServer]) -> None:
    data_dir, _ = written_journal(tmp_path, servers)
    result = cli("verify", str(data_dir))
    assert result.returncode == 0, result.stderr
    assert "sound: 1 segment(s), 3 transaction(s), 4 record(s), seq 1..4, 2 job(s)" in result.stdout
    assert "snap-0000000000000004.json at seq 4: ok" in result.stdout


def test_verify_names_the_first_bad_file_and_offset(tmp_path: Path, servers: list[JournalServer]) -> None:
    data_dir, _ = written_journal(tmp_path, servers)
    (name,) = reader.list_segments(str(data_dir))
    segment = data_dir / name
    data = bytearray(segment.read_bytes())
    ends = [tx.end_offset for tx in reader.scan_segment(bytes(data), name).transactions]
    data[ends[0] + 40] ^= 0x01
    segment.write_bytes(bytes(data))
    result = cli("verify", str(data_dir))
    assert result.returncode == 1
    assert f"CORRUPT: {segment} at byte offset {ends[0]}" in result.stderr


def test_verify_notes_a_torn_tail_without_cutting_it(tmp_path: Path, servers: list[JournalServer]) -> None:
    data_dir, _ = written_journal(tmp_path, servers)
    (name,) = reader.list_segments(str(data_dir))
    segment = data_dir / name
    segment.write_bytes(segment.read_bytes()[:-5])
    size = segment.stat().st_size
    result = cli("verify", str(data_dir))
    assert result.returncode == 0
    assert "torn tail" in result.stdout
    assert segment.stat().st_size == size


def test_dump_prints_committed_records_in_seq_order(tmp_path: Path, servers: list[JournalServer]) -> None:
    data_dir, job = written_journal(tmp_path, servers)
    result = cli("dump", str(data_dir))
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["seq"] for line in lines] == [1, 2, 3, 4]
    assert lines[0]["jobId"] == job
    assert lines[0]["type"] == "x-a"
    assert lines[0]["data"] == {"n": 1}
    assert lines[0]["idempotencyKey"] == "one"
    assert lines[2]["time"] == lines[3]["time"], "records of one transaction share its commit time"
    assert set(lines[0]) == {"seq", "jobId", "type", "data", "time", "idempotencyKey"}
    only = cli("dump", str(data_dir), "--job", job)
    assert [json.loads(line)["seq"] for line in only.stdout.splitlines()] == [1, 3, 4]


def test_a_too_short_secret_is_refused_without_echoing_it(
    tmp_path: Path, servers: list[JournalServer]
) -> None:
    server = spawn(tmp_path / "j", secret=b"tiny-secret")
    servers.append(server)
    assert exit_of(server) == 1
    assert "shorter than 16 bytes" in server.stderr()
    assert "tiny-secret" not in server.stderr()


@pytest.mark.parametrize(
    "args", [("--port", "not-a-number"), ("--no-such-option",), ("--max-connections", "0")], ids=str
)
def test_a_bad_option_is_a_configuration_error_not_the_corrupt_journal_exit_code(
    tmp_path: Path, args: tuple[str, ...]
) -> None:
    """Before: argparse's own exit status 2, which docs/journal.md defines as "the journal is corrupt"."""
    for command in (["-m", "vms_adapter.server"], ["-m", "vms_adapter.server.cli", "serve"]):
        result = subprocess.run(
            [sys.executable, *command, "--data-dir", str(tmp_path / "j"), *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 1, result.stderr
        assert "xpipe-journal" in result.stderr
        assert not (tmp_path / "j").exists(), "nothing is created for a refused configuration"
