"""The journal service over TCP: every operation round-trips, limits cut off bad clients without
affecting others, authentication is mutual, TLS works. Each test talks to a real service process."""

from __future__ import annotations

import contextlib
import shutil
import socket
import ssl
import struct
import subprocess
import threading
import time
import zlib
from pathlib import Path
from typing import Any

import pytest
from journal_service import JournalServer, start

from vms_adapter import protocol
from vms_adapter.client import JournalClient
from vms_adapter.errors import AuthenticationFailed, Conflict, JournalUnavailable, Rejected
from vms_adapter.protocol import Opcode

SECRET = b"s3cret-for-tests-0123456789"
RAW_TIMEOUT_S = 10.0


class RawConnection:
    """A hand-driven protocol peer, for behaviour the client library would never produce."""

    def __init__(self, server: JournalServer, *, hello: bool = True, secret: bytes | None = None) -> None:
        self.sock = socket.create_connection((server.host, server.port), timeout=RAW_TIMEOUT_S)
        self.greeting = self.read()
        if hello:
            nonce = protocol.new_nonce()
            body: dict[str, Any] = {"protocol": 1, "client": "raw", "nonce": nonce}
            if secret is not None:
                server_nonce = bytes.fromhex(self.greeting.body["nonce"])
                body["proof"] = protocol.hello_proof(
                    secret, protocol.CLIENT_PROOF_TAG, server_nonce, bytes.fromhex(nonce)
                )
            self.sock.sendall(protocol.encode_frame(Opcode.HELLO, 1, body))
            reply = self.read()
            assert reply.is_reply
            assert not reply.is_error, reply.body

    def read_exact(self, count: int) -> bytes:
        data = b""
        while len(data) < count:
            chunk = self.sock.recv(count - len(data))
            if not chunk:
                raise EOFError
            data += chunk
        return data

    def read(self) -> protocol.Frame:
        return protocol.read_frame(self.read_exact)

    def closed_by_server(self) -> bool:
        """True once the server has closed (EOF); bounded by the socket time-out."""
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()


def test_every_operation_round_trips(journal: JournalServer) -> None:
    with journal.client() as client:
        created = client.commit(
            None, [{"type": "x-note", "data": {"text": "grüezi"}}], idempotency_key="op-1"
        )
        assert created.job_id.startswith("j-")
        assert (created.seq, created.version, created.duplicate) == (1, 1, False)
        assert isinstance(created.directives, list)
        more = client.commit(
            created.job_id,
            [{"type": "x-a"}, {"type": "x-b", "data": {}}],
            idempotency_key="op-2",
            expected_version=1,
        )
        assert (more.seq, more.version) == (3, 2)
        with pytest.raises(Rejected) as missing:
            client.read_job("j-99999999")
        assert missing.value.code == "NOT_FOUND"
        page = client.list_jobs({}, limit=10)
        assert page.next_cursor is None
        assert all("version" in job for job in page.jobs)
        swept = client.sweep(redelivery_after=30)
        assert isinstance(swept.directives, list)
        with pytest.raises(Rejected):
            client.ack(["no-such-directive"])
        stats = client.stats()
        assert stats["lastSeq"] == 3
        assert stats["transactions"] == 2
        assert client.ping() > 0


def test_a_retried_key_returns_the_original_result(journal: JournalServer) -> None:
    with journal.client() as client:
        original = client.commit(None, [{"type": "x-a"}], idempotency_key="retry-me")
        client.commit(None, [{"type": "x-a"}], idempotency_key="other")
        again = client.commit(None, [{"type": "x-a"}], idempotency_key="retry-me")
        assert again.duplicate
        assert (again.job_id, again.seq, again.version) == (original.job_id, original.seq, original.version)


def test_a_stale_expected_version_is_a_conflict_with_the_current_version(journal: JournalServer) -> None:
    with journal.client() as client:
        job = client.commit(None, [{"type": "x-a"}], idempotency_key="c1").job_id
        client.commit(job, [{"type": "x-a"}], idempotency_key="c2")
        with pytest.raises(Conflict) as caught:
            client.commit(job, [{"type": "x-a"}], idempotency_key="c3", expected_version=1)
        assert caught.value.current_version == 2
        assert client.stats()["lastSeq"] == 2


def _nested(levels: int) -> dict[str, Any]:
    """An object nesting ``levels`` levels deep (itself counting as one)."""
    data: dict[str, Any] = {}
    for _ in range(levels - 1):
        data = {"a": data}
    return data


def test_record_data_nested_close_to_the_interpreter_limit_is_refused_and_the_service_keeps_serving(
    journal: JournalServer,
) -> None:
    """About 986 levels fit in a frame and decoded, then failed to encode in the writer thread: one such
    commit stopped the whole service."""
    text = "{}"
    for _ in range(985):
        text = '{"a":' + text + "}"
    body = ('{"idempotencyKey":"deep","records":[{"type":"x-deep","data":' + text + "}]}").encode()
    raw = RawConnection(journal)
    try:
        raw.sock.sendall(protocol.frame_with_body(Opcode.COMMIT, 2, body))
        reply = raw.read()
        assert (reply.is_error, reply.body["code"]) == (True, "BAD_REQUEST"), reply.body
    finally:
        raw.close()
    assert _commit_works(journal, "after-deep")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (
            {"jobId": None, "idempotencyKey": "k", "records": [{"type": "x-a"}], "expectedVerison": 1},
            "expectedVerison",
        ),
        ({"jobId": None, "idempotencyKey": "", "records": [{"type": "x-a"}]}, "idempotencyKey"),
        ({"jobId": None, "idempotencyKey": "k" * 257, "records": [{"type": "x-a"}]}, "idempotencyKey"),
        ({"jobId": None, "idempotencyKey": "k", "records": []}, "records"),
        (
            {"jobId": None, "idempotencyKey": "k", "records": [{"type": "x-a", "data": [1]}]},
            "records[0].data",
        ),
        (
            {"jobId": None, "idempotencyKey": "k", "records": [{"type": "x-a", "data": _nested(65)}]},
            "records[0].data",
        ),
        ({"jobId": None, "idempotencyKey": "k", "records": [{"type": 5}]}, "records[0].type"),
        (
            {"jobId": None, "idempotencyKey": "k", "expectedVersion": True, "records": [{"type": "x"}]},
            "expectedVersion",
        ),
    ],
)
def test_a_bad_commit_gets_a_precise_error_and_changes_nothing(
    journal: JournalServer, body: dict[str, Any], field: str
) -> None:
    raw = RawConnection(journal)
    try:
        raw.sock.sendall(protocol.encode_frame(Opcode.COMMIT, 2, body))
        reply = raw.read()
        assert reply.is_error
        assert reply.body["code"] == "BAD_REQUEST"
        assert reply.body["retryable"] is False
        assert reply.body["field"] == field
        raw.sock.sendall(protocol.encode_frame(Opcode.STATS, 3, {}))
        assert raw.read().body["lastSeq"] == 0, "the connection stays usable and nothing was written"
    finally:
        raw.close()


def test_an_unknown_operation_is_answered_and_the_connection_stays_usable(journal: JournalServer) -> None:
    raw = RawConnection(journal)
    try:
        raw.sock.sendall(protocol.encode_frame(99, 5, {}))
        reply = raw.read()
        assert (reply.is_error, reply.request_id, reply.body["code"]) == (True, 5, "UNKNOWN_OPERATION")
        raw.sock.sendall(protocol.encode_frame(Opcode.PING, 6, {}))
        assert raw.read().request_id == 6
    finally:
        raw.close()


def test_pipelined_requests_are_answered_in_order(journal: JournalServer) -> None:
    raw = RawConnection(journal)
    try:
        frames = [
            protocol.encode_frame(
                Opcode.COMMIT, 10 + i, {"idempotencyKey": f"p{i}", "records": [{"type": "x-a"}]}
            )
            for i in range(5)
        ]
        raw.sock.sendall(b"".join(frames) + protocol.encode_frame(Opcode.PING, 99, {}))
        replies = [raw.read() for _ in range(6)]
        assert [r.request_id for r in replies] == [10, 11, 12, 13, 14, 99]
        assert [r.body["seq"] for r in replies[:5]] == [1, 2, 3, 4, 5]
    finally:
        raw.close()


def _commit_works(server: JournalServer, key: str) -> bool:
    with server.client(retry_deadline=3.0) as client:
        return client.commit(None, [{"type": "x-a"}], idempotency_key=key).seq > 0


def test_a_silent_client_is_cut_off_without_affecting_others(journal: JournalServer) -> None:
    silent = RawConnection(journal, hello=False)  # never says HELLO
    idle = RawConnection(journal)  # authenticated, then silent
    stalled = RawConnection(journal)  # starts a frame and stops half-way
    try:
        stalled.sock.sendall(protocol.encode_frame(Opcode.PING, 2, {})[:7])
        assert _commit_works(journal, "while-silent")
        assert silent.closed_by_server()
        assert stalled.closed_by_server()
        assert idle.closed_by_server()
        assert _commit_works(journal, "after-silent")
    finally:
        for raw in (silent, idle, stalled):
            raw.close()


def test_a_client_that_never_reads_its_replies_is_cut_off_without_affecting_others(
    journal: JournalServer,
) -> None:
    """Pipelined requests whose replies are never read: the service stops reading that connection once
    its unsent replies reach their bound, keeps serving everyone else, and cuts it off when its send
    has made no progress for the frame time-out."""
    greedy = RawConnection(journal)
    try:
        greedy.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        greedy.sock.setblocking(False)
        ping = protocol.encode_frame(Opcode.PING, 7, {})
        sent, deadline = 0, time.monotonic() + RAW_TIMEOUT_S
        while time.monotonic() < deadline:  # until the service stops reading (our send buffer fills)
            try:
                sent += greedy.sock.send(ping * 512)
            except BlockingIOError:
                break
            except OSError:
                break  # already cut off
        assert sent > 0
        with journal.client() as observer:
            assert observer.commit(None, [{"type": "x-a"}], idempotency_key="while-greedy").seq > 0
            # The observer's own connection is the only other one: wait for the greedy one to be dropped.
            deadline = time.monotonic() + RAW_TIMEOUT_S
            while observer.stats()["connections"] > 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert observer.stats()["connections"] == 1
            assert observer.commit(None, [{"type": "x-a"}], idempotency_key="after-greedy").seq > 0
    finally:
        greedy.close()


def test_a_long_pipelined_burst_is_answered_completely_and_in_order(journal: JournalServer) -> None:
    """40,000 requests in one burst (megabytes of replies, more than one connection may have unsent):
    every one is answered, in order, while the client reads at its own pace."""
    raw = RawConnection(journal)
    count = 40_000  # about 2.4 MB of PING replies
    try:
        frames = b"".join(protocol.encode_frame(Opcode.PING, 1 + i, {}) for i in range(count))
        sender = threading.Thread(target=raw.sock.sendall, args=(frames,), daemon=True)
        sender.start()
        ids = [raw.read().request_id for _ in range(count)]  # each read bounded by the socket time-out
        sender.join(RAW_TIMEOUT_S)
        assert ids == list(range(1, count + 1))
    finally:
        raw.close()


def test_concurrent_commits_share_fsyncs(journal: JournalServer) -> None:
    """Group commit: commits that arrive together are made durable by one write and one fsync."""
    raws = [RawConnection(journal) for _ in range(8)]
    try:
        with journal.client() as client:
            before = client.stats()
        for round_ in range(5):
            for index, raw in enumerate(raws):
                body = {"idempotencyKey": f"g{round_}-{index}", "records": [{"type": "x-a"}]}
                raw.sock.sendall(protocol.encode_frame(Opcode.COMMIT, 1, body))
            for raw in raws:
                reply = raw.read()
                assert not reply.is_error, reply.body
        with journal.client() as client:
            after = client.stats()
        assert after["lastSeq"] - before["lastSeq"] == 40
        assert after["writerTransactions"] - before["writerTransactions"] == 40
        assert after["groups"] - before["groups"] < 40
        assert after["fsyncs"] - before["fsyncs"] == after["groups"] - before["groups"]
    finally:
        for raw in raws:
            raw.close()


def test_an_oversized_frame_is_refused_before_its_body_is_read(journal: JournalServer) -> None:
    raw = RawConnection(journal)
    try:
        header = struct.pack(">2sBBHIII", b"XJ", 1, Opcode.COMMIT, 0, 7, 40_000, 0)
        raw.sock.sendall(header + b"{" * 100)
        reply = raw.read()
        assert reply.is_error
        assert reply.body["code"] == "TOO_LARGE"
        assert raw.closed_by_server()
        assert _commit_works(journal, "after-oversized")
    finally:
        raw.close()


def test_a_corrupt_frame_gets_an_error_frame_then_the_connection_is_closed(journal: JournalServer) -> None:
    raw = RawConnection(journal)
    try:
        body = b'{"idempotencyKey":"x"}'
        raw.sock.sendall(
            struct.pack(">2sBBHIII", b"XJ", 1, Opcode.COMMIT, 0, 8, len(body), zlib.crc32(body) ^ 1) + body
        )
        reply = raw.read()
        assert reply.is_error
        assert reply.body["code"] == "BAD_REQUEST"
        assert raw.closed_by_server()
    finally:
        raw.close()


def test_the_client_refuses_a_body_over_the_frame_limit_without_sending_it(journal: JournalServer) -> None:
    with journal.client() as client:
        with pytest.raises(Rejected) as caught:
            client.commit(None, [{"type": "x-a", "data": {"pad": "x" * 40_000}}], idempotency_key="big")
        assert caught.value.code == "TOO_LARGE"
        assert client.stats()["lastSeq"] == 0


def test_connections_beyond_the_limit_get_overloaded(tmp_path: Path, servers: list[JournalServer]) -> None:
    server = start(tmp_path / "j", "--max-connections", "2")
    servers.append(server)
    held = [RawConnection(server), RawConnection(server)]
    try:
        with (
            pytest.raises(JournalUnavailable) as caught,
            server.client(retry_deadline=0.5, max_attempts=2) as client,
        ):
            client.ping()
        assert caught.value.code == "OVERLOADED"
    finally:
        for raw in held:
            raw.close()


def test_authentication_is_mutual_and_a_bad_secret_is_refused(
    tmp_path: Path, servers: list[JournalServer]
) -> None:
    server = start(tmp_path / "j", secret=SECRET)
    servers.append(server)
    with server.client() as client:
        assert client.commit(None, [{"type": "x-a"}], idempotency_key="authed").seq == 1
    for wrong in (b"not-the-secret-at-all", None):
        with (
            pytest.raises(AuthenticationFailed),
            JournalClient(server.host, server.port, secret=wrong, retry_deadline=1.0) as client,
        ):
            client.ping()
    raw = RawConnection(server, hello=False)
    try:
        raw.sock.sendall(protocol.encode_frame(Opcode.STATS, 1, {}))
        reply = raw.read()
        assert (reply.is_error, reply.body["code"]) == (True, "UNAUTHORIZED")
        assert raw.closed_by_server()
    finally:
        raw.close()
    server.stop()
    assert SECRET.decode() not in server.stderr()


def test_a_client_with_a_secret_refuses_a_server_that_cannot_prove_it(journal: JournalServer) -> None:
    with pytest.raises(AuthenticationFailed), journal.client(secret=SECRET, retry_deadline=1.0) as client:
        client.ping()


def test_an_unreachable_journal_is_unavailable_after_a_bounded_retry(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with (
        pytest.raises(JournalUnavailable) as caught,
        JournalClient("127.0.0.1", port, retry_deadline=0.5, connect_timeout=0.2) as client,
    ):
        client.ping()
    assert caught.value.code == "CONNECT_FAILED"


def test_concurrent_clients_share_a_pool_safely(journal: JournalServer) -> None:
    results: list[int] = []
    errors: list[BaseException] = []
    with journal.client(pool_size=4) as client:

        def work(n: int) -> None:
            try:
                for i in range(10):
                    results.append(client.commit(None, [{"type": "x-a"}], idempotency_key=f"t{n}-{i}").seq)
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert not errors
        assert sorted(results) == list(range(1, 81))
        assert client.stats()["connections"] <= 4


@pytest.mark.skipif(
    shutil.which("openssl") is None, reason="the openssl command is needed to make a test certificate"
)
def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A throw-away certificate and key for 127.0.0.1."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost"),
            *("-addext", "subjectAltName=IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


def test_peers_that_reset_right_after_connecting_do_not_stop_a_tls_service(
    tmp_path: Path, servers: list[JournalServer]
) -> None:
    """Before: wrap_socket raised ECONNRESET in the accept loop and the service exited 1 ('cannot
    listen'); any unauthenticated peer could stop the journal."""
    cert, key = _self_signed(tmp_path)
    server = start(tmp_path / "j", "--tls-cert", str(cert), "--tls-key", str(key))
    servers.append(server)
    resets = [socket.create_connection((server.host, server.port), timeout=RAW_TIMEOUT_S) for _ in range(20)]
    for sock in resets:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()  # RST, most of them before the service has accepted them
    with server.client(tls=ssl.create_default_context(cafile=str(cert))) as client:
        assert client.commit(None, [{"type": "x-a"}], idempotency_key="after-resets").seq == 1
    assert server.proc.poll() is None
    assert server.stop() == 0


def test_a_tls_peer_that_never_finishes_its_handshake_is_cut_off(
    tmp_path: Path, servers: list[JournalServer]
) -> None:
    cert, key = _self_signed(tmp_path)
    server = start(tmp_path / "j", "--tls-cert", str(cert), "--tls-key", str(key))
    servers.append(server)
    silent = socket.create_connection((server.host, server.port), timeout=RAW_TIMEOUT_S)
    try:
        silent.sendall(b"\x16\x03\x01")  # the first bytes of a ClientHello, then nothing
        with server.client(tls=ssl.create_default_context(cafile=str(cert))) as client:
            assert client.commit(None, [{"type": "x-a"}], idempotency_key="beside-silent").seq == 1
        with contextlib.suppress(ConnectionResetError):  # EOF or a reset: either way, cut off
            assert silent.recv(1) == b""
    finally:
        silent.close()


def test_tls_round_trip_with_authentication(tmp_path: Path, servers: list[JournalServer]) -> None:
    cert, key = _self_signed(tmp_path)
    server = start(tmp_path / "j", "--tls-cert", str(cert), "--tls-key", str(key), secret=SECRET)
    servers.append(server)
    trusted = ssl.create_default_context(cafile=str(cert))
    with server.client(tls=trusted) as client:
        assert client.commit(None, [{"type": "x-a"}], idempotency_key="tls").seq == 1
        assert client.stats()["lastSeq"] == 1
    with (
        pytest.raises(AuthenticationFailed) as caught,
        server.client(tls=ssl.create_default_context(), retry_deadline=1.0) as client,
    ):
        client.ping()
    assert caught.value.code == "TLS_FAILED"
