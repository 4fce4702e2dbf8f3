"""The service loop under hostile or unusual clients (the review of the one-loop front): each test is a
real service process on 127.0.0.1 with the fast limits of ``journal_service`` (frame time-out 1.5 s)."""

from __future__ import annotations

import contextlib
import functools
import os
import resource
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from journal_service import ROOT, JournalServer, start
from test_journal_service import RAW_TIMEOUT_S, RawConnection, _self_signed

from vms_adapter import protocol
from vms_adapter.protocol import Opcode

FRAME_TIMEOUT_S = 1.5  # journal_service.FAST_LIMITS


def test_an_error_that_would_echo_a_huge_key_is_cut_and_the_service_keeps_serving(
    journal: JournalServer,
) -> None:
    """Before: the error repeating a 20,000-character unknown key did not fit a frame; encoding it raised
    inside the loop and stopped the service (exit 3), before any authentication."""
    unauthenticated = RawConnection(journal, hello=False)
    try:
        hello = {"protocol": 1, "nonce": protocol.new_nonce(), "k" * 20_000: 1}
        unauthenticated.sock.sendall(protocol.encode_frame(Opcode.HELLO, 1, hello))
        reply = unauthenticated.read()
        assert reply.is_error
        assert reply.body["code"] == "BAD_REQUEST"
        assert len(reply.body["field"]) < 100
    finally:
        unauthenticated.close()
    raw = RawConnection(journal)
    try:
        body = {"idempotencyKey": "k", "records": [{"type": "x-a"}], "x" * 20_000: 1}
        raw.sock.sendall(protocol.encode_frame(Opcode.COMMIT, 2, body))
        reply = raw.read()
        assert reply.is_error
        assert reply.body["code"] == "BAD_REQUEST"
        raw.sock.sendall(protocol.encode_frame(Opcode.PING, 3, {}))
        assert not raw.read().is_error  # the connection is still in step
    finally:
        raw.close()
    with journal.client() as client:
        assert client.stats()["lastSeq"] == 0  # the refused commit changed nothing
    assert journal.proc.poll() is None


def test_connections_closed_after_an_error_leave_nothing_behind(journal: JournalServer) -> None:
    """Before: a connection that ended on an error frame whose last bytes went out when the socket became
    writable again was closed but left registered; the next socket to reuse its descriptor stopped the
    service (KeyError from the selector)."""
    for _ in range(2):
        sock = _small_window_connection(journal)
        with sock:  # megabytes of replies: more than the kernel's buffers, so the service's sends block
            stats = b"".join(protocol.encode_frame(Opcode.STATS, 10 + i, {}) for i in range(15_000))
            sender = threading.Thread(target=sock.sendall, args=(stats + b"BAD!" + bytes(14),), daemon=True)
            sender.start()
            time.sleep(0.5)  # pacing: let the service's sends back up before this side starts reading
            while sock.recv(4096):  # everything, to the end the service gives it, slowly enough that
                time.sleep(0.001)  # its sends block and the last bytes go out on writability
            sender.join(RAW_TIMEOUT_S)
        with journal.client() as client:  # new sockets (reusing descriptors) are served
            assert client.ping() > 0
    assert journal.proc.poll() is None


def _small_window_connection(journal: JournalServer) -> socket.socket:
    """An authenticated raw connection with a 4 KiB receive buffer, so that the service's sends block."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(RAW_TIMEOUT_S)
    sock.connect((journal.host, journal.port))
    buffer = bytearray()
    greeting = protocol.read_frame(functools.partial(_take, sock, buffer))
    assert greeting.opcode == Opcode.HELLO
    sock.sendall(protocol.encode_frame(Opcode.HELLO, 1, {"protocol": 1, "nonce": protocol.new_nonce()}))
    assert not protocol.read_frame(functools.partial(_take, sock, buffer)).is_error
    return sock


def _take(sock: socket.socket, buffer: bytearray, count: int) -> bytes:
    while len(buffer) < count:
        chunk = sock.recv(65536)
        if not chunk:
            raise EOFError
        buffer += chunk
    data = bytes(buffer[:count])
    del buffer[:count]
    return data


def test_a_client_busy_for_longer_than_the_frame_time_out_is_not_cut_off(journal: JournalServer) -> None:
    """Before: the frame time-out counted from the first byte after an empty buffer, so a client whose
    writes keep ending part-way through a frame was cut although it was answered every few ms."""
    raw = RawConnection(journal)
    ping = protocol.encode_frame(Opcode.PING, 5, {})
    half = len(ping) // 2
    sent = 0
    try:
        raw.sock.sendall(ping[:half])
        started = time.monotonic()
        while time.monotonic() - started < 2 * FRAME_TIMEOUT_S:
            raw.sock.sendall(ping[half:] + ping[:half])  # every write ends half-way through a frame
            sent += 1
            time.sleep(0.01)  # pacing: a steady client, not a burst
        raw.sock.sendall(ping[half:])
        sent += 1
        replies = [raw.read() for _ in range(sent)]
        assert all(not reply.is_error for reply in replies)
    finally:
        raw.close()


def test_a_half_closed_client_gets_every_reply(journal: JournalServer) -> None:
    """A client may send its last request and shut down its side: the requests already sent are answered.
    Before: the end of stream dropped the connection with requests and replies still buffered."""
    sock = _small_window_connection(journal)
    count = 20_000  # megabytes of STATS replies, read slowly: replies are still unsent at the end of stream
    try:
        frames = b"".join(protocol.encode_frame(Opcode.STATS, 10 + i, {}) for i in range(count))

        def send_then_half_close() -> None:
            sock.sendall(frames)
            sock.shutdown(socket.SHUT_WR)

        sender = threading.Thread(target=send_then_half_close, daemon=True)
        sender.start()
        buffer = bytearray()
        ids = []
        for index in range(count):
            ids.append(protocol.read_frame(functools.partial(_take, sock, buffer)).request_id)
            if index % 20 == 0:
                time.sleep(0.001)  # pacing: a slow reader
        sender.join(RAW_TIMEOUT_S)
        assert ids == [10 + i for i in range(count)]
        assert sock.recv(1) == b""  # then the service closes
    finally:
        sock.close()


@pytest.mark.skipif(sys.platform != "linux", reason="reads the service's CPU time from /proc")
def test_running_out_of_descriptors_pauses_accepting_without_spinning(tmp_path: Path) -> None:
    """Before: with accept() failing (EMFILE) the listener stayed readable and watched, and the loop spun
    at 100% CPU for as long as descriptors were short."""

    def few_descriptors() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (24, 24))

    err_path = tmp_path / "stderr"
    with open(err_path, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "vms_adapter.server", "--data-dir", str(tmp_path / "j"), "--port", "0"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            preexec_fn=few_descriptors,  # noqa: PLW1509 -- only setrlimit, before exec
        )
    clients: list[socket.socket] = []
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline().strip().rpartition(":")[2])
        for _ in range(40):  # more than the service can hold: the kernel's backlog keeps the rest
            with contextlib.suppress(OSError):
                clients.append(socket.create_connection(("127.0.0.1", port), timeout=RAW_TIMEOUT_S))
        deadline = time.monotonic() + RAW_TIMEOUT_S
        while "accept failed" not in err_path.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "accept failed" in err_path.read_text()
        before = _cpu_seconds(proc.pid)
        time.sleep(2.0)  # measuring what the service does meanwhile, not waiting for it
        assert _cpu_seconds(proc.pid) - before < 1.0, "the loop spins while accept() fails"
    finally:
        for client in clients:
            client.close()
        proc.terminate()
        assert proc.wait(RAW_TIMEOUT_S) == 0


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.skipif(shutil.which("openssl") is None, reason="the openssl command makes the test certificate")
def test_a_tls_peer_dripping_its_handshake_is_cut_off(tmp_path: Path, servers: list[JournalServer]) -> None:
    """Before: every partial TLS record reset the connection's clock, so a peer dripping its ClientHello
    byte by byte held a connection slot for as long as it liked, unauthenticated."""
    cert, key = _self_signed(tmp_path)
    server = start(tmp_path / "j", "--tls-cert", str(cert), "--tls-key", str(key))
    servers.append(server)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    client_hello = outgoing.read()
    sock = socket.create_connection((server.host, server.port), timeout=RAW_TIMEOUT_S)
    sock.setblocking(False)
    started = time.monotonic()
    cut = False
    try:
        for index in range(len(client_hello)):
            if time.monotonic() - started > 4 * FRAME_TIMEOUT_S:
                break  # the drip goes on beyond twice the handshake and HELLO budget
            try:
                sock.send(client_hello[index : index + 1])
                cut = sock.recv(1) == b""  # the service sends nothing before the ClientHello is whole
            except BlockingIOError:
                pass
            except OSError:
                cut = True
            if cut:
                break
            time.sleep(0.05)  # pacing the drip
    finally:
        sock.close()
    assert cut, "the dripping peer was still connected"
