"""Assembly of the journal service: model, journal, group commit, operations, TCP front; start and stop.

Standard library only: this module runs on VSI Python 3.10 for OpenVMS.
"""

from __future__ import annotations

import logging
import signal
import ssl
import sys
import threading
import time
from types import FrameType
from typing import TextIO

from vms_adapter.server.config import ConfigError, ServerConfig, read_secret
from vms_adapter.server.front import JournalFront
from vms_adapter.server.heap import FrozenHeap
from vms_adapter.server.jobs import JobStateMachine
from vms_adapter.server.journal import Journal
from vms_adapter.server.model import JobModel
from vms_adapter.server.operations import Operations
from vms_adapter.server.reader import CorruptJournal
from vms_adapter.server.segments import StorageFailure
from vms_adapter.server.stall import StallWatch
from vms_adapter.server.writer import GroupCommit

log = logging.getLogger("xpipe.journal")

EXIT_OK = 0
EXIT_CONFIG = 1
EXIT_CORRUPT = 2
EXIT_STORAGE_FAILED = 3
SHUTDOWN_GRACE_S = 10.0
MAIN_WAKE_S = 0.5  # how often the waiting main thread looks whether the loop thread is alive and turning


def build_model() -> JobModel:
    """The job model the service runs: the ONE place it is chosen."""
    return JobStateMachine()


def tls_context(cert: str, key: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # Renegotiation would let a write wait for a read on the loop's non-blocking sockets.
    context.options |= getattr(ssl, "OP_NO_RENEGOTIATION", 0)
    context.load_cert_chain(cert, key)
    return context


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level, logging.INFO),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def run(config: ServerConfig, *, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """Run the service until SIGTERM/SIGINT (exit 0) or a storage failure (exit 3)."""
    configure_logging(config.log_level)
    try:
        secret = read_secret(config.secret_file) if config.secret_file else None
        tls = tls_context(config.tls_cert, config.tls_key) if config.tls_cert and config.tls_key else None
    except (ConfigError, OSError, ssl.SSLError) as exc:
        print(f"xpipe-journal: {exc}", file=err)
        return EXIT_CONFIG
    try:
        journal = Journal.open(config.data_dir, build_model, config.storage, salvage=config.salvage)
    except CorruptJournal as exc:
        print(f"xpipe-journal: refusing to start: {exc}", file=err)
        print(
            "xpipe-journal: 'xpipe-journal verify' shows the damage; --salvage keeps the sound prefix",
            file=err,
        )
        return EXIT_CORRUPT
    except (RuntimeError, OSError, StorageFailure) as exc:
        print(f"xpipe-journal: cannot open the journal in {config.data_dir}: {exc}", file=err)
        return EXIT_CONFIG
    for action in journal.recovery:
        print(f"xpipe-journal: recovery: {action}", file=err)

    fatal: list[str] = []
    stopping = threading.Event()

    def on_fatal(reason: str) -> None:
        fatal.append(reason)
        stopping.set()

    heap = FrozenHeap()
    heap.settle()  # the recovered state, before the first client
    writer = GroupCommit(journal, on_fatal=on_fatal, upkeep=heap.after)
    operations = Operations(journal, writer, allow_clock_override=config.allow_clock_override)
    try:
        front = JournalFront(
            operations,
            host=config.host,
            port=config.port,
            secret=secret,
            tls=tls,
            max_connections=config.max_connections,
            idle_timeout_s=config.idle_timeout_s,
            frame_timeout_s=config.frame_timeout_s,
            stopping=stopping,
        )
    except OSError as exc:
        print(f"xpipe-journal: cannot listen on {config.host}:{config.port}: {exc}", file=err)
        journal.close()
        return EXIT_CONFIG
    operations.service_stats = lambda: {**front.stats(), **heap.stats()}

    def on_signal(signum: int, frame: FrameType | None) -> None:  # noqa: ARG001 -- signal handler signature
        stopping.set()

    for name in ("SIGTERM", "SIGINT"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), on_signal)
    loop = threading.Thread(target=front.serve_until_stopped, name="journal-loop", daemon=True)
    loop.start()
    host, port = front.address
    print(f"listening on {host}:{port}", file=out, flush=True)
    watch = StallWatch(front, journal.segments)
    while loop.is_alive() and not stopping.wait(MAIN_WAKE_S):
        watch.check(time.monotonic())  # otherwise the main thread only waits, so signals are handled promptly
    return shut_down(journal, loop, fatal, err=err)


def shut_down(
    journal: Journal,
    loop: threading.Thread,
    fatal: list[str],
    *,
    err: TextIO,
    grace_s: float = SHUTDOWN_GRACE_S,
) -> int:
    """Wait for the loop to answer what it received and close its connections; snapshot; the exit code.

    The snapshot and ``journal.close`` run only once the loop thread has ended: a loop still inside a
    write or fsync after the grace period may be between ``evolve`` and its fsync, so a snapshot then
    would record state that is not durable, and closing the segment under it could hand its file
    descriptor to another file. Then the service exits without them (the segments are authoritative).
    """
    log.info("stopping: finishing the current group")
    loop.join(grace_s)
    if loop.is_alive():
        print(
            f"xpipe-journal: the service loop did not finish within {grace_s:g} s; "
            "stopped without a snapshot",
            file=err,
        )
        return EXIT_STORAGE_FAILED
    if not fatal:
        journal.take_snapshot(background=False)
    journal.close()
    if fatal:
        print(f"xpipe-journal: stopped after a failure (no snapshot taken): {fatal[0]}", file=err)
        return EXIT_STORAGE_FAILED
    log.info("stopped cleanly at seq %d", journal.state.last_seq)
    return EXIT_OK
