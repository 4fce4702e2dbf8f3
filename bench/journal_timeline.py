"""Where a single client's durable commit spends its time: a timeline across client and service.

    .venv/bin/python bench/journal_timeline.py [--commits 3000] [--runs 3] [--no-write]

bench/journal.py measures the single-client p50 against the raw write+fsync of the disk (issue target:
at most 2x). This script shows why that ratio is what it is. It runs the real journal service in a
process of its own, with probes that stamp (``time.monotonic_ns``, one clock for every process on the
machine) when its loop wakes up, when it writes and fsyncs the group and when it sends the reply, and
drives it with the real ``JournalClient`` whose socket stamps when the request leaves and the reply
arrives. It prints the median of every leg of one commit, then splits the total into the system legs
(the loopback sends and the process wake-ups, the write and the fsync, with the few lines of the socket
and selector modules around those calls) and the journal's own Python on either side. The probes cost
a few microseconds; the split is what matters. Writes its section of docs/benchmarks.md.

Linux only (it relies on ``CLOCK_MONOTONIC`` being shared between processes).
"""

from __future__ import annotations

import argparse
import atexit
import bisect
import os
import platform
import selectors
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from report import announced_port, load_bench, write_section  # noqa: E402

from vms_adapter import JournalClient  # noqa: E402
from vms_adapter.server import cli, connection, segments  # noqa: E402

STOP_DEADLINE_S = 30.0

Events = dict[str, list[int]]


# -- the service, with probes ------------------------------------------------------------------------


def serve(data_dir: str, events_file: str) -> int:
    """Run the journal service (as ``python -m vms_adapter.server``) with timing probes installed."""
    stamps: list[tuple[str, int]] = []
    now = time.monotonic_ns

    class TimedOs:
        """``os`` as segments.py sees it: write and fsync stamped."""

        def __getattr__(self, name: str) -> Any:
            return getattr(os, name)

        @staticmethod
        def write(fd: int, data: Any) -> int:
            stamps.append(("write", now()))
            return os.write(fd, data)

        @staticmethod
        def fsync(fd: int) -> None:
            stamps.append(("fsync", now()))
            os.fsync(fd)
            stamps.append(("fsynced", now()))

    class TimedSelector(selectors.DefaultSelector):  # type: ignore[misc,valid-type]
        def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
            ready = super().select(timeout)
            if ready:
                stamps.append(("wake", now()))
            return ready

    plain_send = connection.Connection.send

    def timed_send(self: connection.Connection, at: float) -> None:
        stamps.append(("send", now()))
        plain_send(self, at)

    segments.os = TimedOs()  # type: ignore[assignment]
    selectors.DefaultSelector = TimedSelector  # type: ignore[misc]
    connection.Connection.send = timed_send  # type: ignore[method-assign]

    def dump() -> None:
        with open(events_file, "w", encoding="utf-8") as out:
            out.writelines(f"{name} {stamp}\n" for name, stamp in stamps)

    atexit.register(dump)
    return cli.main(["serve", "--data-dir", data_dir, "--port", "0", "--log-level", "WARNING"])


# -- the client, with probes -------------------------------------------------------------------------


class TimedSocket:
    """The client connection's socket: stamps when a request starts to leave and when a reply arrives."""

    def __init__(self, sock: Any, events: Events) -> None:
        self._sock = sock
        self._events = events

    def sendall(self, data: bytes) -> None:
        self._events["client send"].append(time.monotonic_ns())
        self._sock.sendall(data)

    def recv(self, size: int) -> bytes:
        chunk: bytes = self._sock.recv(size)
        self._events["client received"].append(time.monotonic_ns())
        return chunk

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def drive(commits: int, workdir: str, payload: str) -> tuple[Events, Events]:
    events_file = os.path.join(workdir, "service-events.txt")
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", os.path.join(workdir, "journal"), events_file],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        port = announced_port(proc, "the journal service")
        client_events: Events = {k: [] for k in ("call", "client send", "client received", "done")}
        with JournalClient("127.0.0.1", port, pool_size=1, read_timeout=30.0) as client:
            client.ping()  # connect and authenticate first; then wrap the pooled connection's socket
            pooled = client._idle[0]  # a measurement probe reaches into the pool; not an API use
            pooled.sock = TimedSocket(pooled.sock, client_events)  # type: ignore[assignment]
            for n in range(commits):
                client_events["call"].append(time.monotonic_ns())
                client.commit(
                    None,
                    [{"type": "x-bench", "data": {"client": 0, "n": n, "payload": payload}}],
                    idempotency_key=f"timeline-{os.getpid()}-{n}",
                )
                client_events["done"].append(time.monotonic_ns())
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(STOP_DEADLINE_S)
    service_events: Events = {}
    with open(events_file, encoding="utf-8") as lines:
        for text in lines:
            name, stamp = text.split()
            service_events.setdefault(name, []).append(int(stamp))
    return client_events, service_events


# -- putting the timelines together ------------------------------------------------------------------


def legs(client: Events, service: Events) -> dict[str, list[float]]:
    """Per commit, the microseconds of each leg, matched on the shared clock."""

    def after(name: str, stamp: int) -> int:
        series = service[name]
        return series[bisect.bisect_left(series, stamp)]

    result: dict[str, list[float]] = {}

    def add(leg: str, start: int, end: int) -> None:
        result.setdefault(leg, []).append((end - start) / 1e3)

    for i, call in enumerate(client["call"]):
        send, received, done = client["client send"][i], client["client received"][i], client["done"][i]
        # Anchored on when each send STARTS: on two CPUs the receiver may be running before the sender's
        # own system call has returned.
        wake = after("wake", send)
        write = after("write", wake)
        fsync = after("fsync", write)
        fsynced = after("fsynced", fsync)
        reply = after("send", fsynced)
        add("client: Python before the request leaves", call, send)
        add("system: request delivered, service woken", send, wake)
        add("service: Python (decode, decide, encode)", wake, write)
        add("system: write", write, fsync)
        add("system: fsync", fsync, fsynced)
        add("service: Python before the reply leaves", fsynced, reply)
        add("system: reply delivered, client woken", reply, received)
        add("client: Python after the reply arrived", received, done)
        add("total", call, done)
    return result


BEGIN, END = "<!-- journal-timeline:begin -->", "<!-- journal-timeline:end -->"
SYSTEM, PYTHON = "system:", ("client:", "service:")


def one_run(commits: int, journal_bench: Any) -> tuple[dict[str, float], float]:
    """The median of each leg over ``commits`` commits against a fresh service, and the raw write+fsync
    p50 (measured before and after the commits, the mean of the two: the disk's speed drifts)."""
    with tempfile.TemporaryDirectory(prefix="timeline-", dir=journal_bench.WORK) as work:
        before = journal_bench.raw_fsync(Path(work))[0]
        client, service = drive(commits, work, journal_bench.PAYLOAD)
        after = journal_bench.raw_fsync(Path(work))[0]
    medians = {leg: statistics.median(values) for leg, values in legs(client, service).items()}
    return medians, (before + after) / 2 * 1e3


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--commits", type=int, default=3000, help="commits per run (default 3000)")
    parser.add_argument("--runs", type=int, default=3, help="runs, each against a fresh service (default 3)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    parser.add_argument("--serve", nargs=2, metavar=("DATA_DIR", "EVENTS_FILE"), help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.serve:
        return serve(*options.serve)
    journal_bench = load_bench("journal")
    journal_bench.WORK.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    runs = []
    for number in range(1, options.runs + 1):
        print(f"run {number} of {options.runs}: {options.commits} commits...", flush=True)
        runs.append(one_run(options.commits, journal_bench))
    header = "| leg (median, µs) | " + " | ".join(f"run {n}" for n in range(1, len(runs) + 1)) + " |"
    lines = [header, "|---|" + "---:|" * len(runs)]
    for leg in runs[0][0]:
        lines.append(f"| {leg} | " + " | ".join(f"{medians[leg]:.1f}" for medians, _ in runs) + " |")
    summary: list[tuple[str, Callable[[dict[str, float], float], str]]] = [
        ("raw write+fsync p50 (µs)", lambda _, raw: f"{raw:.1f}"),
        ("total / raw", lambda m, raw: f"{m['total'] / raw:.2f}x"),
        ("system legs / raw", lambda m, raw: f"{_system(m) / raw:.2f}x"),
        ("Python legs / raw", lambda m, raw: f"{_python(m) / raw:.2f}x"),
        ("room for Python under 2x raw (µs)", lambda m, raw: f"{2 * raw - _system(m):.1f}"),
    ]
    for name, cell in summary:
        lines.append(f"| **{name}** | " + " | ".join(cell(m, raw) for m, raw in runs) + " |")
    print("\n".join(lines))
    if not options.no_write:
        section = [
            "## Journal: one commit's timeline (bench/journal_timeline.py)",
            "",
            f"Command: `python bench/journal_timeline.py --commits {options.commits} --runs {options.runs}`"
            f" (part of `make bench`); run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())},"
            f" took {time.monotonic() - started:.0f} s.",
            f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}, "
            f"Python {platform.python_version()}.",
            "",
            "One client, one durable commit at a time, stamped on one clock in both processes: where the",
            "single-client latency of the journal bench goes. *system* legs are the system calls and the",
            "process wake-ups between them (loopback sends, the write, the fsync), with the few lines of the",
            "socket and selector modules around them; *client* and *service* legs are the journal's own",
            "Python. The last row is how much of that Python both sides together may spend for the",
            "single-client p50 to stay within 2x the raw write+fsync. The fsync inside the service takes",
            "longer than the raw loop's (which never sleeps between fsyncs). The floor, bench/fsync_echo.py",
            "(read, write, fsync, answer on blocking sockets), is in the journal bench's section.",
            "",
            *lines,
        ]
        write_section(section, BEGIN, END)
    return 0


def _system(medians: dict[str, float]) -> float:
    return sum(v for leg, v in medians.items() if leg.startswith(SYSTEM))


def _python(medians: dict[str, float]) -> float:
    return sum(v for leg, v in medians.items() if leg.startswith(PYTHON))


if __name__ == "__main__":
    sys.exit(main())
