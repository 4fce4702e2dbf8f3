"""Benchmark of the functions: submit against a no-op function, same server, same settings, same client.

    .venv/bin/python bench/functions.py [--seconds 8] [--rounds 5] [--concurrency 8] [--cold-starts 5]
        [--threads 8] [--no-write]

Starts a real journal service (durable commits: fsync before every acknowledgement), the local step
host and a CloudEvent sink (a minimal broker stand-in, in its own process as a broker is) on 127.0.0.1,
then serves submit and a no-op ``@functions_framework.http`` function (bench/noop_function.py) with the
same functions-framework/gunicorn settings (1 worker, ``THREADS`` threads). One load generator
(``--concurrency`` threads, one keep-alive connection each) posts binary-mode CloudEvents to each for
``--seconds`` and reports throughput and p50/p99 latency.
Cold start is measured as process start to first 2xx (``GET /health/liveness`` for the functions,
``GET /`` for the no-op), median of ``--cold-starts`` runs. Results go to stdout and, unless
``--no-write``, to the "Functions" section of docs/benchmarks.md.

Targets (issue 6): submit >= 0.6x the no-op's throughput; every cold start <= 1.5x the no-op's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httptools
import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from report import announced_port  # noqa: E402

from xpipe.auth import token_digest  # noqa: E402

FUNCTIONS_FRAMEWORK = str(Path(sys.executable).parent / "functions-framework")
TOKEN = "bench-token-" + "b" * 24
SECTION_START = "<!-- functions-bench:start -->"
SECTION_END = "<!-- functions-bench:end -->"
START_TIMEOUT_S = 30.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_http(url: str, deadline_s: float, process: subprocess.Popen[Any] | None = None) -> float:
    """Poll ``url`` until it answers 2xx; returns the monotonic time of that answer."""
    end = time.monotonic() + deadline_s
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() < end:
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"{url}: process exited with {process.returncode}")
            try:
                if client.get(url).is_success:
                    return time.monotonic()
            except httpx.TransportError:
                pass
            time.sleep(0.005)
    raise RuntimeError(f"{url} did not answer 2xx within {deadline_s}s")


def stop(process: subprocess.Popen[Any]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


ACCEPTED = b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n"


class SinkConnection(asyncio.Protocol):
    """A minimal broker stand-in: answers every request on a keep-alive connection with 202.

    It reads requests with llhttp (httptools) on one asyncio loop. ``http.server`` spent about 0.17 ms of
    CPU per event (a thread hand-off and the ``email`` package's header parsing); on this shared
    machine that was CPU taken from the function under test by a part no deployment runs beside it.
    """

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.parser = httptools.HttpRequestParser(self)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()

    def on_message_complete(self) -> None:
        self.transport.write(ACCEPTED)
        if not self.parser.should_keep_alive():
            self.transport.close()


def start_sink() -> tuple[subprocess.Popen[bytes], str]:
    """The sink in a process of its own, as a broker is.

    It used to run on threads of the load generator's process, so its answers to submit's publishes
    waited for the GIL held by the eight load-generating threads: a coupling between the broker and the
    caller that no deployment has. Its CPU is still measured, and still shares the machine's CPUs.
    """
    process = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--serve-sink"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    assert process.stdout is not None
    url = process.stdout.readline().decode().strip()
    if not url.startswith("http://"):
        stop(process)
        raise RuntimeError("the sink did not start")
    return process, url


def serve_sink() -> int:
    """``--serve-sink``: print the sink's URL, then serve until SIGTERM."""

    async def serve() -> None:
        server = await asyncio.get_running_loop().create_server(SinkConnection, "127.0.0.1", 0)
        print(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/", flush=True)
        await server.serve_forever()

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    asyncio.run(serve())
    return 0


def start_journal(data_dir: Path) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "vms_adapter.server", "--data-dir", str(data_dir), "--host", "127.0.0.1",
         "--port", "0", "--log-level", "WARNING"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        return process, f"127.0.0.1:{announced_port(process, 'the journal', START_TIMEOUT_S)}"
    except RuntimeError:
        stop(process)
        raise


def serve(source: str, port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [FUNCTIONS_FRAMEWORK, "--target", "handle", "--source", source, "--host", "127.0.0.1",
         "--port", str(port)],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by ``pid`` and its live descendants (Linux /proc)."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
            for task in Path(f"/proc/{current}/task").iterdir():
                children = (task / "children").read_text().split()
                pending.extend(int(child) for child in children)
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def submit_request() -> tuple[dict[str, str], bytes]:
    headers = {
        "ce-specversion": "1.0", "ce-type": "com.xpipe.pipeline.submit", "ce-source": "/bench",
        "ce-id": str(uuid.uuid4()), "content-type": "application/json", "X-Token-XPipe": TOKEN,
    }  # fmt: skip
    body = json.dumps(
        {"template": "demo-ok", "params": {"message": "bench"}, "requestedBy": "bench"}
    ).encode()
    return headers, body


def load(url: str, seconds: float, concurrency: int) -> dict[str, float]:
    """``concurrency`` threads post for ``seconds``; throughput and latency percentiles of 2xx answers."""
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    errors = [0] * concurrency
    start = threading.Barrier(concurrency + 1)
    stop_at = [float("inf")]  # set once every worker is ready

    def worker(index: int) -> None:
        with httpx.Client(timeout=30.0) as client:
            client.post(url, headers=submit_request()[0], content=submit_request()[1])  # warm the connection
            start.wait()
            while time.monotonic() < stop_at[0]:
                headers, body = submit_request()
                began = time.perf_counter()
                response = client.post(url, headers=headers, content=body)
                elapsed = time.perf_counter() - began
                if response.is_success:
                    latencies[index].append(elapsed)
                else:
                    errors[index] += 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.monotonic()
    stop_at[0] = began + seconds
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - began
    flat = sorted(x for per in latencies for x in per)
    if not flat:
        raise RuntimeError(f"{url}: no successful requests ({sum(errors)} errors)")
    return {
        "requests": len(flat),
        "errors": sum(errors),
        "rps": len(flat) / elapsed,
        "p50_ms": statistics.median(flat) * 1000,
        "p99_ms": flat[min(len(flat) - 1, int(len(flat) * 0.99))] * 1000,
    }


def cold_start(source: str, path: str, env: dict[str, str]) -> tuple[float, float]:
    """(Seconds from process start to the first 2xx on ``path``, CPU seconds the server used by then).

    The CPU time (server process and its worker) is the steadier figure on a busy machine: wall time
    also counts the time other processes held the CPUs.
    """
    port = free_port()
    began = time.monotonic()
    process = serve(source, port, env)
    try:
        elapsed = wait_http(f"http://127.0.0.1:{port}{path}", START_TIMEOUT_S, process) - began
        return elapsed, process_cpu(process.pid)
    finally:
        stop(process)


COLD_STARTS = (
    ("no-op", "bench/noop_function.py", "/"),
    ("submit", "functions/submit/main.py", "/health/liveness"),
    ("health-relay", "functions/health-relay/main.py", "/health/liveness"),
    ("rollback", "functions/rollback/main.py", "/health/liveness"),
)


# What the function image holds as bytecode: pip compiles the installed packages (xpipe, vms_adapter and
# the dependencies) and the Containerfile runs compileall on functions/.
BYTECODE_SOURCES = ("xpipe", "vms_adapter", "functions", "bench/noop_function.py")


def compile_bytecode() -> None:
    """Compile the sources first, as the image is built: a cold start in the cluster compiles no source.

    A checkout run with PYTHONDONTWRITEBYTECODE=1 (set on this machine) otherwise recompiled, on every
    start of a function, each module edited since its last .pyc was written: a cost no deployed function
    pays, which varied with what had been edited, and which the no-op (one small file) hardly paid.
    """
    subprocess.run([sys.executable, "-m", "compileall", "-q", *BYTECODE_SOURCES], cwd=ROOT, check=True)


def cold_starts(env: dict[str, str], rounds: int) -> tuple[dict[str, float], dict[str, float]]:
    """Median cold start (wall, CPU) of each function; rounds interleave the functions, so a burst of
    other work on the machine slows all of them alike instead of one."""
    walls: dict[str, list[float]] = {name: [] for name, _, _ in COLD_STARTS}
    cpus: dict[str, list[float]] = {name: [] for name, _, _ in COLD_STARTS}
    for _ in range(rounds):
        for name, source, path in COLD_STARTS:
            wall, cpu = cold_start(source, path, env)
            walls[name].append(wall)
            cpus[name].append(cpu)
    return (
        {name: statistics.median(values) for name, values in walls.items()},
        {name: statistics.median(values) for name, values in cpus.items()},
    )


def write_section(text: str) -> Path:
    path = ROOT / "docs" / "benchmarks.md"
    section = f"{SECTION_START}\n{text.rstrip()}\n{SECTION_END}\n"
    current = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.compile(re.escape(SECTION_START) + r".*?" + re.escape(SECTION_END) + r"\n?", re.DOTALL)
    updated = (
        pattern.sub(lambda _: section, current)
        if pattern.search(current)
        else current.rstrip() + "\n\n" + section
    )
    path.write_text(updated)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument(
        "--rounds", type=int, default=5, help="throughput rounds, each both functions in turn (default 5)"
    )
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--cold-starts", type=int, default=5)
    parser.add_argument("--threads", type=int, default=8, help="gunicorn threads of every function (THREADS)")
    parser.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    parser.add_argument("--serve-sink", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_sink:
        return serve_sink()

    compile_bytecode()
    processes: list[subprocess.Popen[Any]] = []
    with tempfile.TemporaryDirectory(prefix="xpipe-bench-") as scratch:
        work = Path(scratch)
        try:
            sink_process, sink_url = start_sink()
            processes.append(sink_process)
            host_port = free_port()
            step_host = subprocess.Popen(
                [sys.executable, "-m", "xpipe.backends.local_host", "--host", "127.0.0.1",
                 "--port", str(host_port), "--sink", sink_url],
                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            processes.append(step_host)
            wait_http(f"http://127.0.0.1:{host_port}/health/readiness", START_TIMEOUT_S, step_host)
            tokens = work / "tokens.yaml"
            tokens.write_text(
                json.dumps([{"name": "bench", "scope": "admin", "sha256": token_digest(TOKEN)}])
            )
            base = {k: v for k, v in os.environ.items() if not k.startswith(("XPIPE_", "K_"))}
            base.update({"WORKERS": "1", "THREADS": str(args.threads), "PYTHONUNBUFFERED": "1"})
            env = {
                **base, "XPIPE_TOKENS_FILE": str(tokens),
                "K_SINK": sink_url,
                "XPIPE_BACKEND": "local", "XPIPE_LOCAL_STEP_HOST": f"http://127.0.0.1:{host_port}",
                "XPIPE_LOG_LEVEL": "INFO", "XPIPE_MAX_IN_FLIGHT": "64",
            }  # fmt: skip

            rounds: list[dict[str, dict[str, float]]] = []
            round_cpu: list[dict[str, dict[str, float]]] = []
            functions = [("no-op", "bench/noop_function.py", "/"), ("submit", "functions/submit/main.py",
                                                                       "/health/readiness")]  # fmt: skip
            for number in range(1, args.rounds + 1):
                # The machine's speed drifts between runs: each round measures both functions back to back,
                # in alternating order, against a fresh journal, and the verdict takes the median round.
                journal_dir = work / f"journal-{number}"
                journal, journal_address = start_journal(journal_dir)
                processes.append(journal)
                env["XPIPE_JOURNAL"] = journal_address
                results: dict[str, dict[str, float]] = {}
                cpu: dict[str, dict[str, float]] = {}
                for name, source, probe in functions if number % 2 else functions[::-1]:
                    port = free_port()
                    server = serve(source, port, env)
                    processes.append(server)
                    wait_http(f"http://127.0.0.1:{port}{probe}", START_TIMEOUT_S, server)
                    watched = {
                        "function": server.pid, "journal": journal.pid, "step host": step_host.pid,
                        "sink": sink_process.pid,
                    }  # fmt: skip
                    cpu_before = {k: process_cpu(pid) for k, pid in watched.items()}
                    own_before = sum(os.times()[:2])
                    results[name] = load(f"http://127.0.0.1:{port}/", args.seconds, args.concurrency)
                    count = results[name]["requests"]
                    cpu[name] = {
                        k: (process_cpu(pid) - cpu_before[k]) / count * 1000 for k, pid in watched.items()
                    }
                    cpu[name]["load generator"] = (sum(os.times()[:2]) - own_before) / count * 1000
                    stop(server)
                    r = results[name]
                    print(f"round {number} {name:8s} {r['rps']:8.1f} req/s  p50 {r['p50_ms']:6.2f} ms  "
                          f"p99 {r['p99_ms']:6.2f} ms  "
                          f"({int(r['requests'])} ok, {int(r['errors'])} errors)")  # fmt: skip
                    print(
                        "         CPU ms per request: "
                        + ", ".join(f"{k} {v:.2f}" for k, v in cpu[name].items())
                    )
                rounds.append(results)
                round_cpu.append(cpu)
                if number < args.rounds:
                    stop(journal)
                    processes.remove(journal)

            colds, cold_cpu = cold_starts(env, args.cold_starts)
            for name in colds:
                print(
                    f"cold start {name:13s} {colds[name] * 1000:7.1f} ms, "
                    f"CPU {cold_cpu[name] * 1000:6.1f} ms (medians of {args.cold_starts})"
                )
        finally:
            for process in reversed(processes):
                stop(process)

    ratios = [r["submit"]["rps"] / r["no-op"]["rps"] for r in rounds]
    ratio = statistics.median(ratios)
    median_round = min(range(len(ratios)), key=lambda i: abs(ratios[i] - ratio))
    results, cpu = rounds[median_round], round_cpu[median_round]
    cold_ratios = {name: colds[name] / colds["no-op"] for name in colds if name != "no-op"}
    cpu_ratios = {name: cold_cpu[name] / cold_cpu["no-op"] for name in colds if name != "no-op"}
    each = ", ".join(f"{r:.2f}x" for r in ratios)
    print(f"submit / no-op throughput: {ratio:.2f}x, the median of rounds {each} (target >= 0.6x)")
    for name, value in cold_ratios.items():
        print(f"cold start {name} / no-op: {value:.2f}x (target <= 1.5x); CPU {cpu_ratios[name]:.2f}x")

    lines = [
        "## Functions (bench/functions.py)",
        "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}: functions-framework/gunicorn, 1 worker, "
        f"{args.threads} threads; "
        f"load from one process, {args.concurrency} threads with one keep-alive connection each, "
        f"{args.seconds:g} s per function; submit registers `demo-ok` (3 step services ensured through the "
        "local step host, one durable journal commit, the dispatch published to a sink and acknowledged), "
        "logging at `INFO` as deployed (one JSON line per request, written to /dev/null). "
        f"{args.rounds} rounds, each running both functions back to back (in alternating order, against a "
        "fresh journal) under the same load: other work on a shared machine moves absolute figures by up "
        "to a third between runs, so the verdict takes the median round's ratio.",
        "",
        "| round | function | requests/s | p50 ms | p99 ms | vs no-op |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for number, each in enumerate(rounds, 1):
        for name in ("no-op", "submit"):
            r = each[name]
            lines.append(
                f"| {number} | {name} | {r['rps']:.1f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} "
                f"| {r['rps'] / each['no-op']['rps']:.2f}x |"
            )
    lines += [
        "",
        f"CPU per request in the median round ({median_round + 1}; ms, user + system, from /proc; the sink "
        "runs in a process of its own):",
        "",
        "| function | function server | journal | step host | sink | load generator |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name in ("no-op", "submit"):
        c = cpu[name]
        lines.append(
            f"| {name} | {c['function']:.2f} | {c['journal']:.2f} | {c['step host']:.2f} "
            f"| {c['sink']:.2f} | {c['load generator']:.2f} |"
        )
    # Everything here shares the machine's CPUs, so when the load saturates them the ratio of throughputs is
    # about the inverse ratio of total CPU per request. If submit's own code cost no more than the no-op
    # function, the journal's and the sink's work alone would still bound the ratio at this value:
    noop_total = sum(cpu["no-op"].values())
    floor = cpu["no-op"]["function"] + cpu["submit"]["journal"] + cpu["submit"]["step host"]
    bound = noop_total / (floor + cpu["submit"]["sink"] + cpu["submit"]["load generator"])
    print(f"bound with a zero-cost submit function on this machine: {bound:.2f}x")
    lines += [
        "",
        f"Target: submit >= 0.6x the no-op's throughput: **{'met' if ratio >= 0.6 else 'missed'}** "
        f"({ratio:.2f}x, the median round). The load generator, the sink, the journal and the function share "
        f"{os.cpu_count()} CPUs, so at saturation the throughput ratio follows the CPU per request: even "
        f"a submit function costing no more CPU than the no-op would reach about {bound:.2f}x here, "
        "because the journal's durable commit and the broker's (sink's) receipt of the dispatch cost CPU "
        "on the same machine. The median itself moves between runs of much the same code: on 2026-11-25, "
        "fifteen runs before the journal kept its collector off the job state gave medians of 0.58x to "
        "0.68x (single rounds 0.48x to 0.74x), and the seven after it 0.61x to 0.68x.",
        "",
        f"Cold start, process start to first 2xx, median of {args.cold_starts} rounds (each round starts "
        "every function once, in turn), with the sources compiled to bytecode first as the function image "
        "has them:",
        "",
        "| function | ms | vs no-op | CPU ms by then | CPU vs no-op |",
        "|---|---:|---:|---:|---:|",
        f"| no-op | {colds['no-op'] * 1000:.0f} | 1.00x | {cold_cpu['no-op'] * 1000:.0f} | 1.00x |",
    ]
    lines += [
        f"| {name} | {colds[name] * 1000:.0f} | {cold_ratios[name]:.2f}x | {cold_cpu[name] * 1000:.0f} "
        f"| {cpu_ratios[name]:.2f}x |"
        for name in cold_ratios
    ]
    met = all(v <= 1.5 for v in cold_ratios.values())
    lines += [
        "",
        f"Target: every cold start <= 1.5x the no-op's: **{'met' if met else 'missed'}**. The functions are "
        "probed on `GET /health/liveness`, the no-op on `GET /`. What a function adds to the no-op's start "
        "is its imports and start-up checks: PyYAML (tokens file), the journal client and xpipe's own "
        "modules; health-relay and rollback load pydantic and their payload models on their first event "
        "(about 60 ms, once per process), which this measure does not include. submit validates its template "
        "catalog (YAML, a pydantic-core schema) before it reports ready, which is most of its difference; it "
        "never loads pydantic itself. The kubernetes client, httpx and the backend's clients are loaded on "
        "first use.",
    ]
    if not args.no_write:
        print(f"wrote {write_section(chr(10).join(lines))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
