"""End-to-end benchmark on a real ``xpipe up``: jobs/s through demo-ok with N concurrent submitters,
p50/p99 from submit to SUCCEEDED, and a step's cold start (its service scaled to zero) against a warm run.

    .venv/bin/python bench/e2e.py [--submitters 4] [--jobs-per-submitter 10] [--runs 3]

Times come from one clock: the submit call's start here, and the journal's ``finishedAt`` and attempt
times (the journal runs on this machine). A step run is measured from its dispatch (``dueAt``) to its
end (``endedAt``): the step runtime's start-up (cold only), the command, and the reply's way back through
the router and health-relay into the journal.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
from report import write_section

from xpipe.devstack.running import RunningStack
from xpipe.templates import service_name

BEGIN, END = "<!-- e2e-bench:begin -->", "<!-- e2e-bench:end -->"
DEMO = "demo-ok"
STEPS = ("prepare", "build", "publish")
IDLE_S = 2.0  # the step host's scale-to-zero window during the benchmark


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def step_runs(job: dict[str, Any]) -> dict[str, float]:
    """Per step: seconds from dispatch to the end of its (only) attempt."""
    runs: dict[str, float] = {}
    for step in job["steps"]:
        attempt = step["attempts"][-1]
        runs[step["name"]] = attempt["endedAt"] - attempt["dueAt"]
    return runs


def replicas(stack: RunningStack) -> int:
    total = 0
    for step in STEPS:
        answer = httpx.get(
            f"{stack.layout.step_host_url}/services/{service_name(DEMO, step)}", timeout=5, trust_env=False
        )
        if answer.status_code == 200:
            total += int(answer.json()["replicas"])
    return total


def wait_scaled_to_zero(stack: RunningStack, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while replicas(stack) > 0:
        if time.monotonic() > deadline:
            raise SystemExit("step services did not scale to zero")
        time.sleep(0.2)


def cold_and_warm(stack: RunningStack, runs: int) -> dict[str, list[float]]:
    """Each round: a run after scale to zero (cold), then one right after it (warm)."""
    results: dict[str, list[float]] = {"cold": [], "warm": []}
    for _ in range(runs):
        wait_scaled_to_zero(stack)
        for kind in ("cold", "warm"):
            job = stack.wait_finished(stack.submit(DEMO), 60)
            assert job["state"] == "SUCCEEDED", job["state"]
            results[kind].extend(step_runs(job).values())
    return results


def throughput(stack: RunningStack, submitters: int, per_submitter: int) -> dict[str, Any]:
    """Closed loop: each submitter submits, waits for the job to finish, and submits the next, so that
    ``submitters`` jobs are in flight at any time (Magento admins clicking "run" and waiting)."""
    finished: list[tuple[dict[str, Any], float]] = []
    lock = threading.Lock()

    def submitter() -> None:
        for _ in range(per_submitter):
            started = time.time()
            job = stack.wait_finished(stack.submit(DEMO), 300)
            with lock:
                finished.append((job, started))

    begin = time.time()
    threads = [threading.Thread(target=submitter) for _ in range(submitters)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(600)
    latencies: list[float] = []
    failures: Counter[str] = Counter()
    last_end = max(job["finishedAt"] for job, _ in finished)
    for job, started in finished:
        if job["state"] != "SUCCEEDED":
            failure = job.get("failure") or {}
            failures[f"{job['state']}: {failure.get('step')} {failure.get('reason')}"] += 1
            continue
        latencies.append(job["finishedAt"] - started)
    return {
        "jobs": len(finished),
        "succeeded": len(latencies),
        "not_succeeded": dict(failures),
        "submitters": submitters,
        "seconds": round(last_end - begin, 2),
        "jobs_per_s": round(len(finished) / (last_end - begin), 2),
        "p50_s": round(percentile(latencies, 50), 3),
        "p99_s": round(percentile(latencies, 99), 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--submitters", type=int, default=4)
    parser.add_argument("--jobs-per-submitter", type=int, default=10)
    parser.add_argument("--runs", type=int, default=3, help="cold/warm rounds")
    parser.add_argument("--max-step-processes", type=int, default=8)
    parser.add_argument("--no-doc", action="store_true", help="do not rewrite docs/benchmarks.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="xpipe-bench-") as tmp:
        stack = RunningStack(
            Path(tmp), ping_interval_s=1.0, step_idle_s=IDLE_S, max_step_processes=args.max_step_processes
        )
        started = time.monotonic()
        stack.start()
        startup = time.monotonic() - started
        try:
            steps = cold_and_warm(stack, args.runs)
            load = throughput(stack, args.submitters, args.jobs_per_submitter)
        finally:
            stack.stop()
    result: dict[str, Any] = {
        "xpipe_up_ready_s": round(startup, 2),
        "step_cold_median_s": round(statistics.median(steps["cold"]), 3),
        "step_warm_median_s": round(statistics.median(steps["warm"]), 3),
        "step_samples": {k: len(v) for k, v in steps.items()},
        "throughput": load,
    }
    print(f"xpipe up ready in {result['xpipe_up_ready_s']} s")
    print(
        f"step run (dispatch -> journaled end), median: cold {result['step_cold_median_s']} s, "
        f"warm {result['step_warm_median_s']} s ({result['step_samples']['cold']} samples each)"
    )
    print(
        f"{DEMO}: {load['jobs']} jobs from {load['submitters']} submitters in {load['seconds']} s = "
        f"{load['jobs_per_s']} jobs/s; submit -> SUCCEEDED p50 {load['p50_s']} s, p99 {load['p99_s']} s"
    )
    if load["not_succeeded"]:
        print(f"not succeeded: {load['not_succeeded']}")
    print(json.dumps(result))
    if not args.no_doc:
        write_doc(result, args, time.monotonic() - started)
    return 0


def write_doc(result: dict[str, Any], args: argparse.Namespace, took_s: float) -> None:
    """Rewrite this benchmark's section of docs/benchmarks.md (the other sections are left alone)."""
    load = result["throughput"]
    lines = [
        "## End to end: `xpipe up` (bench/e2e.py)",
        "",
        f"Command: `python bench/e2e.py --submitters {args.submitters} --jobs-per-submitter "
        f"{args.jobs_per_submitter} --runs {args.runs} --max-step-processes {args.max_step_processes}` "
        f"(part of `make bench`); run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"took {took_s:.0f} s.",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}.",
        "",
        "A real `xpipe up` (router, three functions, journal with durable commits, step host).",
        f"Closed loop: each submitter submits {DEMO}, waits until the job is finished, and submits the",
        "next. A step run is timed from its dispatch to its end as journaled (step runtime start-up when",
        "cold, the command, the reply through the router and health-relay into the journal).",
        "",
        "| measure | result |",
        "|---|---|",
        f"| `xpipe up` to `ready` | {result['xpipe_up_ready_s']} s |",
        f"| step run, cold (service scaled to zero), median of {result['step_samples']['cold']} | "
        f"{result['step_cold_median_s']} s |",
        f"| step run, warm, median of {result['step_samples']['warm']} | {result['step_warm_median_s']} s |",
        f"| {DEMO} throughput, {load['submitters']} submitters, {load['jobs']} jobs | "
        f"{load['jobs_per_s']} jobs/s |",
        f"| submit to SUCCEEDED | p50 {load['p50_s']} s, p99 {load['p99_s']} s |",
        f"| jobs not succeeded | {load['jobs'] - load['succeeded']} {load['not_succeeded'] or ''} |",
    ]
    write_section(lines, BEGIN, END)


if __name__ == "__main__":
    sys.exit(main())
