"""``make demo``: the whole system on this machine, three pipelines, and a verdict.

Starts ``xpipe up`` (in a fresh temporary directory unless ``--data-dir`` is given), submits ``demo-ok``,
``demo-fail`` and ``demo-hang`` as Magento would, shows their progress live, prints each job's final state
and a summary of its history, stops the stack, verifies the journal offline (``xpipe-journal verify``) and
exits 0 only when all three ended as designed:

- demo-ok: SUCCEEDED;
- demo-fail: ROLLED_BACK, with step 1 (``reserve``) compensated;
- demo-hang: a diagnostic report collected, and ROLLED_BACK.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from vms_adapter.errors import JournalError
from vms_adapter.server import cli as journal_cli
from xpipe.devstack.errors import DevstackError
from xpipe.devstack.running import RunningStack, is_finished

DEMOS = ("demo-ok", "demo-fail", "demo-hang")
JOB_TIMEOUT_S = 150.0
REFRESH_S = 0.25


def journal_records(journal_dir: Path, job_id: str) -> list[dict[str, Any]]:
    """The job's committed records, read offline from the journal on disk (``xpipe-journal dump``)."""
    captured = io.StringIO()
    with redirect_stdout(captured):
        journal_cli.main(["dump", str(journal_dir), "--job", job_id])
    return [json.loads(line) for line in captured.getvalue().splitlines() if line.strip()]


def _final_state(records: Sequence[Mapping[str, Any]]) -> str | None:
    finished = [r for r in records if r.get("type") == "JOB_FINISHED"]
    return str(finished[-1]["data"].get("state")) if finished else None


def _compensated(records: Sequence[Mapping[str, Any]], step: str) -> bool:
    """The step's compensation ran to success and the saga completed as rolled back."""
    compensation = any(
        r.get("type") == "STEP_FINISHED"
        and r["data"].get("step") == f"{step}:compensate"
        and r["data"].get("outcome") == "succeeded"
        for r in records
    )
    saga = any(
        r.get("type") == "ROLLBACK_COMPLETED" and r["data"].get("outcome") == "rolled-back" for r in records
    )
    return compensation and saga


def _diagnosed(records: Sequence[Mapping[str, Any]]) -> bool:
    return any(r.get("type") == "DIAGNOSTIC_REPORT" and r["data"].get("report") for r in records)


Records = Sequence[Mapping[str, Any]]

# What each demo must end as, judged from its records in the journal: (description, check) pairs.
EXPECTATIONS: dict[str, list[tuple[str, Callable[[Records], bool]]]] = {
    "demo-ok": [("SUCCEEDED", lambda records: _final_state(records) == "SUCCEEDED")],
    "demo-fail": [
        ("ROLLED_BACK", lambda records: _final_state(records) == "ROLLED_BACK"),
        ("step 1 (reserve) compensated", lambda records: _compensated(records, "reserve")),
    ],
    "demo-hang": [
        ("diagnostic report collected", _diagnosed),
        ("ROLLED_BACK", lambda records: _final_state(records) == "ROLLED_BACK"),
    ],
}


def _current(job: Mapping[str, Any]) -> str:
    """The step (and attempt) that is live now, or the last one that did something."""
    if "steps" not in job:  # a summary (the view was too large to read)
        return str(job.get("currentStep") or "")
    last = ""
    for step in job.get("steps") or []:
        for label, holder in (
            (step.get("name"), step),
            (f"{step.get('name')}:compensate", step.get("compensation")),
        ):
            for attempt in (holder or {}).get("attempts") or []:
                beats = attempt.get("heartbeats") or 0
                last = (
                    f"{label} #{attempt.get('attempt')} {attempt.get('outcome') or 'running'} ({beats} beats)"
                )
                if not attempt.get("outcome"):
                    return last
    return last


def progress_table(jobs: Mapping[str, str], views: Mapping[str, Mapping[str, Any]], elapsed: float) -> Table:
    table = Table(title=f"demo pipelines ({elapsed:.0f} s)")
    for column in ("template", "job", "state", "step"):
        table.add_column(column)
    for template, job_id in jobs.items():
        view = views.get(template, {})
        table.add_row(template, job_id, str(view.get("state", "…")), _current(view))
    return table


def history_summary(records: Records) -> str:
    """The record kinds in order of first appearance, with counts."""
    counts: Counter[str] = Counter()
    order: list[str] = []
    for record in records:
        kind = str(record.get("type"))
        data = record.get("data") or {}
        label = f"{kind}({data['step']})" if "step" in data else kind
        if label not in counts:
            order.append(label)
        counts[label] += 1
    return " -> ".join(f"{label}x{counts[label]}" if counts[label] > 1 else label for label in order)


def run(data_dir: Path, base_port: int | None, console: Console) -> int:
    started = time.monotonic()
    stack = RunningStack(data_dir, base_port=base_port, ping_interval_s=1.0)
    console.print(f"[bold]starting xpipe up[/] in {data_dir} …")
    try:
        stack.start()
    except DevstackError as exc:
        console.print(f"[red]the stack did not start: {exc}[/]")
        return 1
    views: dict[str, dict[str, Any]] = {}
    jobs: dict[str, str] = {}
    verdict = True
    try:
        for line in stack.lines:
            console.print(f"  {line}", highlight=False)
        jobs = {template: stack.submit(template) for template in DEMOS}
        console.print(f"submitted: {', '.join(f'{t} = {j}' for t, j in jobs.items())}")
        deadline = time.monotonic() + JOB_TIMEOUT_S
        with Live(progress_table(jobs, views, 0), console=console, refresh_per_second=4) as live:
            while True:
                for template, job_id in jobs.items():
                    with contextlib.suppress(JournalError):  # a passing fault: the next refresh retries
                        views[template] = stack.progress(job_id)
                live.update(progress_table(jobs, views, time.monotonic() - started))
                if len(views) == len(jobs) and all(is_finished(v) for v in views.values()):
                    break
                if time.monotonic() > deadline:
                    console.print(f"[red]not finished within {JOB_TIMEOUT_S:g} s[/]")
                    verdict = False
                    break
                time.sleep(REFRESH_S)
    except DevstackError as exc:
        console.print(f"[red]{exc}[/]")
        verdict = False
    finally:
        code = stack.stop()
    restarts = [line for line in stack.lines if "restarting" in line]
    console.print(f"\nstack stopped (exit code {code})")
    verdict &= len(jobs) == len(DEMOS)
    for template, job_id in jobs.items():
        records = journal_records(stack.layout.journal_dir, job_id)
        console.print(f"\n[bold]{template}[/] {job_id}: [bold]{_final_state(records)}[/]")
        console.print(f"  history: {history_summary(records)}", highlight=False)
        for description, check in EXPECTATIONS[template]:
            ok = check(records)
            verdict &= ok
            console.print(f"  {'[green]✓[/]' if ok else '[red]✗[/]'} {description}")
    if restarts:
        console.print(f"\ncomponents restarted during the demo: {restarts}")
    console.print("\n[bold]journal verify[/]")
    captured = io.StringIO()
    with redirect_stdout(captured):
        verified = journal_cli.main(["verify", str(stack.layout.journal_dir)]) == 0
    console.print(f"  {captured.getvalue().strip()}", highlight=False)
    verdict &= verified and code == 0
    elapsed = time.monotonic() - started
    console.print(
        f"\n{'[green]demo passed[/]' if verdict else '[red]demo FAILED[/]'} in {elapsed:.0f} s "
        f"(logs: {stack.layout.data_dir / 'logs'})"
    )
    return 0 if verdict else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m xpipe.devstack.demo", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--data-dir", type=Path, help="keep everything here (default: a fresh temporary directory)"
    )
    parser.add_argument("--base-port", type=int, help="default: a free block of ports")
    args = parser.parse_args(argv)
    console = Console()
    if args.data_dir is not None:
        return run(args.data_dir, args.base_port, console)
    tmp = Path(tempfile.mkdtemp(prefix="xpipe-demo-"))
    code = run(tmp, args.base_port, console)
    if code == 0:
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        console.print(f"kept {tmp} for inspection")
    return code


if __name__ == "__main__":
    sys.exit(main())
