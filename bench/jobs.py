"""Commits/s with the job state machine on: a mixed orchestration workload against the storage-only path.

Per job, each client thread commits what the functions would: ``JOB_REGISTERED`` (submit), then per step
N ``HEARTBEAT``s and one ``STEP_FINISHED`` (health-relay); the journal decides every one of them
(validation, the fold on a scratch copy, derived records such as the next dispatch and ``JOB_FINISHED``)
in the commit's transaction. The storage-only path is ``bench/journal.py``'s workload (one ~300-byte
``x-`` annotation per transaction, which the state machine passes through untouched), driven by the same
load generator (``bench/journal.py``'s ``drive``) against a fresh service of the same build.

Run: ``.venv/bin/python bench/jobs.py [--seconds S] [--clients 32] [--heartbeats 8] [--steps 2]
[--rounds 3]``.
Writes the results into its section of ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from report import load_bench, write_section  # noqa: E402

from vms_adapter.client import JournalClient  # noqa: E402

BEGIN, END = "<!-- jobs-bench:begin -->", "<!-- jobs-bench:end -->"
TARGET_RATIO = 0.8  # the orchestration workload within 20% of the storage-only path


def _port(service: int | tuple[int, int]) -> int:
    """``journal_service`` yields the port (or the port and the service's pid)."""
    return service if isinstance(service, int) else service[0]


def plan(steps: int) -> dict[str, Any]:
    step = {
        "timeoutSeconds": 3600,
        "retries": 1,
        "backoffSeconds": 1.0,
        "backoffFactor": 2.0,
        "heartbeatTimeoutSeconds": 600.0,
        "health": {"notReadySeconds": 60.0, "maxRestarts": 2},
        "compensate": None,
        "revert": None,
    }
    return {
        "template": "bench",
        "templateDigest": "sha256:bench",
        "params": {"service": "shop", "tag": "v1"},
        "requestedBy": "bench",
        "onFailure": "none",
        "steps": [{**step, "name": f"step{i}", "service": f"bench-step{i}"} for i in range(steps)],
    }


def orchestration_worker(port: int, run_id: str, steps: int, heartbeats: int) -> Callable[[int], Any]:
    """Each thread runs jobs end to end: register, then per step N heart-beats and a finish."""
    the_plan = plan(steps)

    def make(index: int) -> Any:
        client = JournalClient("127.0.0.1", port, pool_size=1, read_timeout=30.0)
        client.ping()
        pod = f"bench-pod-{index}"
        progress: dict[str, Any] = {"job": None, "step": 0, "beats": 0}

        def commit(n: int) -> None:
            key = f"{run_id}-{index}-{n}"
            if progress["job"] is None:
                reply = client.commit(
                    None, [{"type": "JOB_REGISTERED", "data": the_plan}], idempotency_key=key
                )
                progress.update(job=reply.job_id, step=0, beats=0)
                return
            name = f"step{progress['step']}"
            if progress["beats"] < heartbeats:
                data = {"step": name, "attempt": 1, "pod": pod, "progress": progress["beats"] / heartbeats}
                client.commit(progress["job"], [{"type": "HEARTBEAT", "data": data}], idempotency_key=key)
                progress["beats"] += 1
                return
            data = {"step": name, "attempt": 1, "outcome": "succeeded", "exitCode": 0, "pod": pod}
            reply = client.commit(
                progress["job"], [{"type": "STEP_FINISHED", "data": data}], idempotency_key=key
            )
            if not reply.directives:
                raise AssertionError(f"no directive after finishing {name} of {progress['job']}")
            progress.update(step=progress["step"] + 1, beats=0)
            if progress["step"] == steps:
                assert reply.state == "SUCCEEDED", reply
                progress["job"] = None

        return commit, client.close

    return make


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--heartbeats", type=int, default=8)
    parser.add_argument(
        "--rounds", type=int, default=3, help="pairs of runs, each workload on a fresh service (default 3)"
    )
    parser.add_argument("--no-doc", action="store_true")
    args = parser.parse_args()
    bench = load_bench("journal")
    bench.WORK.mkdir(parents=True, exist_ok=True)
    run_id = f"jobs{os.getpid()}"
    rounds: list[tuple[Any, Any]] = []
    with tempfile.TemporaryDirectory(prefix="jobs-", dir=bench.WORK) as scratch:

        def run(workload: str, number: int) -> Any:
            with bench.journal_service(Path(scratch) / f"{workload}-{number}") as service:
                if workload == "storage-only":
                    worker = bench.journal_worker(_port(service), f"{run_id}-{number}")
                else:
                    worker = orchestration_worker(
                        _port(service), f"{run_id}-{number}", args.steps, args.heartbeats
                    )
                return bench.drive(workload, args.clients, args.seconds, worker)

        for number in range(1, args.rounds + 1):
            # The machine's speed drifts between runs (other work, caches, the disk): each round measures
            # both workloads back to back, in alternating order, and the verdict takes the median round.
            order = ("storage-only", "orchestration") if number % 2 else ("orchestration", "storage-only")
            results = {workload: run(workload, number) for workload in order}
            rounds.append((results["storage-only"], results["orchestration"]))
    ratios = [mixed.rate / storage.rate for storage, mixed in rounds]
    ratio = statistics.median(ratios)
    per_job = 1 + args.steps * (args.heartbeats + 1)
    verdict = "met" if ratio >= TARGET_RATIO else "MISSED"
    lines = [
        "## Journal: orchestration workload (bench/jobs.py)",
        "",
        f"Measured with `bench/jobs.py --rounds {args.rounds}` on {os.cpu_count()} CPUs, {args.clients} "
        f"clients, {args.seconds:g} s per workload and round; a job is {per_job} commits "
        f"(register, {args.steps} steps x ({args.heartbeats} heart-beats + finish)). Each round runs both "
        "workloads back to back on fresh services, in alternating order.",
        "",
        "| round | storage only (`x-` annotation, ~300 B) commits/s | p50 ms | p99 ms "
        "| orchestration (state machine on) commits/s | p50 ms | p99 ms | ratio |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        *(
            f"| {n} | {storage.rate:,.0f} | {storage.p50_ms:.2f} | {storage.p99_ms:.2f} | {mixed.rate:,.0f} "
            f"| {mixed.p50_ms:.2f} | {mixed.p99_ms:.2f} | {mixed.rate / storage.rate:.2f}x |"
            for n, (storage, mixed) in enumerate(rounds, 1)
        ),
        "",
        f"Orchestration at {ratio:.2f}x the storage-only commits/s, the median of the rounds' ratios "
        f"(target >= {TARGET_RATIO:.1f}x): {verdict}.",
    ]
    print("\n".join(lines))
    if not args.no_doc:
        write_section(lines, BEGIN, END)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
