"""The service loop in process: the real ``Connection`` over a real socket pair, in front of the real
operations and journal, driven step by step the way the loop drives it; and the loop's own fail-stop."""

from __future__ import annotations

import io
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from journal_service import in_process_front

from vms_adapter import protocol
from vms_adapter.client import JournalClient
from vms_adapter.protocol import Opcode
from vms_adapter.server import connection as connection_module
from vms_adapter.server import service, snapshots
from vms_adapter.server.connection import Connection, Limits
from vms_adapter.server.journal import Journal, StorageOptions
from vms_adapter.server.open_model import OpenModel
from vms_adapter.server.operations import Operations
from vms_adapter.server.writer import GroupCommit

TIMEOUT_S = 10.0


class Peer:
    """The client end of the pair: blocking, bounded by a time-out."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sock.settimeout(TIMEOUT_S)
        self._buffer = b""

    def read_exact(self, count: int) -> bytes:
        while len(self._buffer) < count:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError
            self._buffer += chunk
        data, self._buffer = self._buffer[:count], self._buffer[count:]
        return data

    def read(self) -> protocol.Frame:
        return protocol.read_frame(self.read_exact)

    def ready_ids(self) -> list[int]:
        """Request ids of every complete reply that has arrived, without waiting for more."""
        self.sock.setblocking(False)
        try:
            while True:
                try:
                    chunk = self.sock.recv(65536)
                except BlockingIOError:
                    break
                if not chunk:
                    break
                self._buffer += chunk
        finally:
            self.sock.settimeout(TIMEOUT_S)
        ids = []
        while len(self._buffer) >= protocol.HEADER_BYTES:
            header = protocol.decode_header(self._buffer[: protocol.HEADER_BYTES])
            if len(self._buffer) < protocol.HEADER_BYTES + header.body_length:
                break
            ids.append(self.read().request_id)
        return ids


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[Connection, Peer, GroupCommit]]:
    journal = Journal.open(str(tmp_path / "j"), OpenModel, StorageOptions())
    writer = GroupCommit(journal)
    operations = Operations(journal, writer)
    server_end, client_end = socket.socketpair()
    server_end.setblocking(False)
    limits = Limits(secret=None, idle_timeout_s=30.0, frame_timeout_s=5.0)
    connection = Connection(server_end, "pair", limits, operations.handle, 0.0)
    peer = Peer(client_end)
    try:
        connection.send(0.0)  # the greeting
        peer.read()
        hello = {"protocol": 1, "nonce": protocol.new_nonce()}
        peer.sock.sendall(protocol.encode_frame(Opcode.HELLO, 1, hello))
        serve(connection, writer)
        assert not peer.read().is_error
        yield connection, peer, writer
    finally:
        connection.close()
        peer.sock.close()
        journal.close()


def serve(connection: Connection, writer: GroupCommit, *, read: bool = True) -> None:
    """One round of the loop for this connection: read, answer, make durable, release, send."""
    if read:
        connection.on_readable(0.0)
    connection.handle_frames(0.0, 1000)
    assert writer.flush()
    connection.release_held()
    connection.send(0.0)


def test_requests_left_unhandled_at_the_output_bound_are_reported_as_backlogged(
    pair: tuple[Connection, Peer, GroupCommit], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: the check read the body length from the CRC field, so a connection that stopped at the
    bound with complete requests buffered was not served again until it sent more: its client waited
    for replies that never came."""
    connection, peer, writer = pair
    monkeypatch.setattr(connection_module, "MAX_OUTPUT_BYTES", 200)
    count = 30
    peer.sock.sendall(b"".join(protocol.encode_frame(Opcode.PING, 10 + i, {}) for i in range(count)))
    serve(connection, writer)
    answered = peer.ready_ids()
    assert len(answered) < count  # the bound stopped the first round
    for _ in range(count):  # bounded: every round answers at least one more request
        if len(answered) == count:
            break
        assert connection.backlogged, f"{count - len(answered)} requests buffered but not reported"
        serve(connection, writer, read=False)
        answered += peer.ready_ids()
    assert answered == [10 + i for i in range(count)]


def test_a_commit_staged_but_not_made_durable_gets_unavailable_not_its_reply(
    pair: tuple[Connection, Peer, GroupCommit],
) -> None:
    connection, peer, _ = pair
    body = {"idempotencyKey": "k1", "records": [{"type": "x-a"}]}
    peer.sock.sendall(protocol.encode_frame(Opcode.COMMIT, 5, body))
    connection.on_readable(0.0)
    connection.handle_frames(0.0, 1000)
    connection.fail_held()  # what the loop does when the group's write or fsync failed
    connection.send(0.0)
    reply = peer.read()
    assert reply.request_id == 5
    assert reply.is_error
    assert reply.body["code"] == "UNAVAILABLE"
    assert reply.body["retryable"] is True


def test_a_round_answers_at_most_its_budget_of_one_connections_requests(
    pair: tuple[Connection, Peer, GroupCommit],
) -> None:
    """Fairness: one pipelining connection cannot hold the loop. Before: every buffered request was
    answered in one round (a burst of expensive LIST_JOBS kept another client's PING waiting 76 s)."""
    connection, peer, writer = pair
    peer.sock.sendall(b"".join(protocol.encode_frame(Opcode.PING, 10 + i, {}) for i in range(30)))
    connection.on_readable(0.0)
    connection.handle_frames(0.0, 8)
    assert writer.flush()
    connection.release_held()
    connection.send(0.0)
    assert peer.ready_ids() == [10 + i for i in range(8)]
    assert connection.backlogged
    connection.handle_frames(0.0, 8, until=0.0)  # the round's time is up: one request, then stop
    assert writer.flush()
    connection.release_held()
    connection.send(0.0)
    assert peer.ready_ids() == [18]


def test_a_failure_of_the_loop_itself_is_a_fail_stop_without_snapshot(tmp_path: Path) -> None:
    """Before: an exception that ended the loop left ``fatal`` empty, so the shutdown snapshotted state
    that could hold staged transactions never written; after a restart a retried key came back as a
    duplicate of a commit that was not on disk."""
    journal = Journal.open(str(tmp_path / "j"), OpenModel, StorageOptions())
    fatal: list[str] = []
    writer = GroupCommit(journal, on_fatal=fatal.append)
    operations = Operations(journal, writer)
    front = in_process_front(operations)
    loop = threading.Thread(target=front.serve_until_stopped, daemon=True)
    loop.start()
    with JournalClient("127.0.0.1", front.address[1], retry_deadline=2.0) as client:
        assert client.commit(None, [{"type": "x-a"}], idempotency_key="k1").seq == 1

        def failing_select(timeout: float | None = None) -> list[object]:
            raise OSError(9, "Bad file descriptor")  # what select() says of a closed descriptor

        front._selector.select = failing_select  # type: ignore[method-assign,assignment]
        loop.join(TIMEOUT_S)
    assert not loop.is_alive()
    assert front.failure is not None
    assert len(fatal) == 1
    assert "service loop failed" in fatal[0]
    err = io.StringIO()
    assert service.shut_down(journal, loop, fatal, err=err) == service.EXIT_STORAGE_FAILED
    assert "no snapshot" in err.getvalue()
    assert snapshots.list_snapshots(str(tmp_path / "j")) == []
