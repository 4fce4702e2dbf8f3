"""The ``xpipe`` command: run the local stack, submit pipelines, and look into the journal.

``xpipe up`` starts the whole system on one machine (``xpipe.devstack.stack``). The other commands talk to
a running system: ``submit`` sends a ``com.xpipe.pipeline.submit`` CloudEvent to the submit function (with
``X-Token-XPipe``), exactly as Magento does; ``jobs``, ``job show|watch|cancel`` read and write the journal
over its TCP protocol; ``journal verify|dump`` read a journal directory offline (as ``xpipe-journal``).

Where things are (read here, once): ``--journal HOST:PORT`` or ``XPIPE_JOURNAL``; the journal secret from
``XPIPE_JOURNAL_SECRET_FILE``; the submit URL from ``--submit-url`` or ``XPIPE_SUBMIT_URL``; the token from
``XPIPE_TOKEN``; the broker (for a cancel's directives) from ``K_SINK``. Anything not given is taken from the
local stack's ``stack.json`` in ``--data-dir`` (``XPIPE_DATA_DIR``, default ``.xpipe``). Every listing has
``--output json``.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import json
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
from cloudevents.conversion import to_binary
from cloudevents.exceptions import GenericException
from cloudevents.http import CloudEvent, from_http
from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from vms_adapter.client import JournalClient
from vms_adapter.errors import TOO_LARGE, JournalError, Rejected
from vms_adapter.server import cli as journal_cli
from xpipe.config import catalog_location
from xpipe.devstack.stack import StackLayout, up
from xpipe.errors import XPipeError
from xpipe.outbox import directive_event
from xpipe.templates import Catalog

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
TERMINAL_STATES = frozenset({"SUCCEEDED", "FAILED", "ROLLED_BACK", "ROLLBACK_FAILED", "CANCELLED"})
DEFAULT_WAIT_S = 300.0
WATCH_PERIOD_S = 0.5
SUBMIT_TIMEOUT_S = 60.0
LIST_PAGE = 200


class CliError(Exception):
    """A problem the user can fix; printed without a traceback, exit code 1 (2 for usage)."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


# settings -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """Where the running system is, resolved from options, environment and ``stack.json``."""

    data_dir: Path
    journal: str | None
    secret_file: str | None
    submit_url: str | None
    token: str | None
    sink: str | None

    @classmethod
    def resolve(cls, args: argparse.Namespace, env: Mapping[str, str]) -> Settings:
        data_dir = Path(getattr(args, "data_dir", None) or env.get("XPIPE_DATA_DIR") or ".xpipe")
        stack: dict[str, Any] = {}
        with contextlib.suppress(OSError, ValueError):
            stack = json.loads((data_dir / "stack.json").read_text())
        token = env.get("XPIPE_TOKEN")
        if not token and stack.get("token_file"):
            with contextlib.suppress(OSError):
                token = Path(stack["token_file"]).read_text().strip()
        return cls(
            data_dir=data_dir,
            journal=getattr(args, "journal", None) or env.get("XPIPE_JOURNAL") or stack.get("journal"),
            secret_file=env.get("XPIPE_JOURNAL_SECRET_FILE") or stack.get("journal_secret_file"),
            submit_url=getattr(args, "submit_url", None)
            or env.get("XPIPE_SUBMIT_URL")
            or stack.get("submit"),
            token=token or None,
            sink=env.get("K_SINK") or stack.get("router"),
        )

    def journal_client(self) -> JournalClient:
        if not self.journal:
            raise CliError("no journal: pass --journal HOST:PORT, set XPIPE_JOURNAL, or start `xpipe up`")
        host, sep, port = self.journal.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise CliError(f"--journal {self.journal!r} must be HOST:PORT", EXIT_USAGE)
        secret = None
        if self.secret_file:
            try:
                secret = Path(self.secret_file).read_bytes().strip()
            except OSError as exc:
                raise CliError(
                    f"cannot read the journal secret file {self.secret_file}: {exc.strerror}"
                ) from None
        return JournalClient(host, int(port), secret=secret, retry_deadline=10.0)


# output -----------------------------------------------------------------------------------------------------


def _time(value: Any) -> str:
    if not isinstance(value, int | float):
        return ""
    return datetime.fromtimestamp(value, timezone.utc).strftime("%H:%M:%S")


def _state_style(state: str) -> str:
    return {
        "SUCCEEDED": "green",
        "ROLLED_BACK": "yellow",
        "FAILED": "red",
        "ROLLBACK_FAILED": "bold red",
        "CANCELLED": "magenta",
        "RUNNING": "cyan",
        "ROLLING_BACK": "yellow",
    }.get(state, "")


def _plain(value: Any) -> str:
    """Text from a job or a step (names, reasons, output) shown literally, never read as rich markup."""
    return escape(str(value))


def _plain_json(value: Any) -> str:
    return escape(json.dumps(value))


def jobs_table(jobs: Sequence[Mapping[str, Any]]) -> Table:
    table = Table(title="jobs")
    for column in ("job", "template", "state", "step", "registered", "by"):
        table.add_column(column)
    for job in jobs:
        state = str(job.get("state", ""))
        table.add_row(
            _plain(job.get("jobId")),
            _plain(job.get("template", "")),
            f"[{_state_style(state)}]{state}[/]" if _state_style(state) else state,
            _plain(job.get("currentStep") or ""),
            _time(job.get("registeredAt")),
            _plain(job.get("requestedBy", "")),
        )
    return table


def _attempt_rows(
    table: Table, label: str, step: Mapping[str, Any], attempts: Sequence[Mapping[str, Any]]
) -> None:
    if not attempts:
        table.add_row(label, _plain(step.get("status", "")), "", "", "", "", "")
    for attempt in attempts:
        progress = attempt.get("progress")
        table.add_row(
            label,
            _plain(step.get("status", "")),
            _plain(attempt.get("attempt", "")),
            _plain(attempt.get("outcome") or ""),
            _plain(attempt.get("heartbeats", ""))
            + (f" ({progress:.0%})" if isinstance(progress, int | float) else ""),
            _time(attempt.get("lastHeartbeatAt")),
            _plain(attempt.get("reason") or _last_line(attempt.get("summary"))),
        )


def _last_line(text: Any) -> str:
    lines = str(text or "").strip().splitlines()
    return lines[-1][:60] if lines else ""


def job_view(job: Mapping[str, Any]) -> Group:
    """A job as tables: its header, its steps with every attempt (compensations included)."""
    state = str(job.get("state", ""))
    header = Table.grid(padding=(0, 2))
    header.add_row("job", _plain(job.get("jobId")), "template", _plain(job.get("template")))
    header.add_row(
        "state", f"[{_state_style(state)}]{state}[/]", "finished", _plain(bool(job.get("finished")))
    )
    header.add_row(
        "requested by", _plain(job.get("requestedBy", "")), "params", _plain_json(job.get("params") or {})
    )
    steps = Table(title="steps")
    for column in ("step", "status", "attempt", "outcome", "heart-beats", "last beat", "note"):
        steps.add_column(column)
    for step in job.get("steps") or []:
        _attempt_rows(steps, _plain(step.get("name")), step, step.get("attempts") or [])
        compensation = step.get("compensation")
        if compensation:
            _attempt_rows(
                steps, f"{step.get('name')}:compensate", compensation, compensation.get("attempts") or []
            )
    parts: list[Any] = [header, steps]
    rollback = job.get("rollback")
    if rollback:
        parts.append(
            f"rollback: {rollback.get('status')}  actions: {_plain_json(rollback.get('actions'))[:200]}"
        )
    diagnosis = job.get("diagnosis")
    if diagnosis:
        parts.append(
            f"diagnosis: {diagnosis.get('status')}" + (" (report kept)" if diagnosis.get("report") else "")
        )
    if job.get("failure"):
        parts.append(f"failure: {_plain_json(job.get('failure'))[:200]}")
    note = omissions_note(job)
    if note:
        parts.append(note)
    return Group(*parts)


def omissions_note(job: Mapping[str, Any]) -> str | None:
    """What the journal left out of the view so that it fits one frame (JOBS.md §8), or None.

    An on-call engineer must not take a trimmed history for the whole one."""
    attempts = 0
    for step in job.get("steps") or []:
        attempts += _count(step.get("attemptsOmitted"))
        attempts += _count((step.get("compensation") or {}).get("attemptsOmitted"))
    parts = [
        f"{count} {what}"
        for count, what in (
            (_count(job.get("historyOmitted")), "older history entries"),
            (attempts, "earlier attempts"),
            (_count(job.get("directivesOmitted")), "settled directives"),
        )
        if count
    ]
    if not parts:
        return None
    return (
        f"not shown: {', '.join(parts)} (the journal trims a long job's view to fit one frame); "
        f"`xpipe journal dump --job {job.get('jobId')}` on the journal's data directory has everything"
    )


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def history_table(job: Mapping[str, Any]) -> Table:
    table = Table(title=f"history of {job.get('jobId')}")
    for column in ("seq", "time", "record", "data"):
        table.add_column(column)
    for record in job.get("history") or []:
        data = record.get("data") or {}
        brief = {
            k: v
            for k, v in data.items()
            if k in ("step", "attempt", "outcome", "reason", "state", "exitCode")
        }
        table.add_row(
            _plain(record.get("seq")),
            _time(record.get("time")),
            _plain(record.get("type")),
            _plain_json(brief),
        )
    return table


# commands ---------------------------------------------------------------------------------------------------


def _journal_call(action: str, call: Callable[[], Any]) -> Any:
    try:
        return call()
    except JournalError as exc:
        raise CliError(f"{action}: {exc}") from None


def parse_params(pairs: Sequence[str], types: Mapping[str, str]) -> dict[str, Any]:
    """``key=value`` (a string, or the template's declared type) and ``key:=JSON`` (a typed value)."""
    params: dict[str, Any] = {}
    for pair in pairs:
        if ":=" in pair and pair.index(":=") < pair.find("=") + 1:
            key, raw = pair.split(":=", 1)
            try:
                params[key] = json.loads(raw)
            except ValueError:
                raise CliError(f"-p {pair!r}: the value after := must be JSON", EXIT_USAGE) from None
            continue
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CliError(f"-p {pair!r}: expected key=value", EXIT_USAGE)
        kind = types.get(key, "string")
        try:
            if kind == "integer":
                params[key] = int(value)
            elif kind == "number":
                params[key] = float(value)
            elif kind == "boolean":
                if value.lower() not in ("true", "false"):
                    raise ValueError(value)
                params[key] = value.lower() == "true"
            else:
                params[key] = value
        except ValueError:
            raise CliError(f"-p {pair!r}: {key} is a {kind}", EXIT_USAGE) from None
    return params


def _param_types(template: str) -> dict[str, str]:
    """Declared param types of a template from the local catalog, when it has it (else all strings)."""
    try:
        catalog = _catalog()
        return {name: spec.type for name, spec in catalog.get(template).params.items()}
    except Exception:  # the server decides; a local catalog is only a typing aid
        return {}


def _catalog() -> Catalog:
    directory, max_revision_timeout_seconds = catalog_location(os.environ)
    return Catalog.load(directory, max_revision_timeout_seconds=max_revision_timeout_seconds)


def submit_event(
    settings: Settings, template: str, params: Mapping[str, Any], requested_by: str
) -> dict[str, Any]:
    """POST the submit CloudEvent; return the ``job.registered`` data (jobId, state, journalSeq)."""
    if not settings.submit_url:
        raise CliError("no submit URL: pass --submit-url, set XPIPE_SUBMIT_URL, or start `xpipe up`")
    if not settings.token:
        raise CliError("no token: set XPIPE_TOKEN (xpipe up keeps one in <data-dir>/token)")
    event = CloudEvent(
        {
            "type": "com.xpipe.pipeline.submit",
            "source": f"/xpipe/cli/{getpass.getuser()}",
            "id": str(uuid.uuid4()),
            "datacontenttype": "application/json",
        },
        {"template": template, "params": dict(params), "requestedBy": requested_by},
    )
    headers, body = to_binary(event)
    headers["X-Token-XPipe"] = settings.token
    try:
        # Retried on what Knative would retry (the same event id: submit registers it once).
        deadline = time.monotonic() + SUBMIT_TIMEOUT_S
        while True:
            response = httpx.post(
                settings.submit_url, headers=headers, content=body, timeout=30.0, trust_env=False
            )
            if response.status_code not in (429, 502, 503, 504) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    except httpx.HTTPError as exc:
        raise CliError(f"submit at {settings.submit_url}: {type(exc).__name__}") from None
    if response.status_code != 200:
        raise CliError(f"submit refused ({response.status_code}): {response.text.strip()[:500]}")
    try:
        reply = from_http(dict(response.headers), response.content)
    except GenericException as exc:
        raise CliError(f"submit answered {response.status_code} without a CloudEvent reply: {exc}") from None
    data = reply.data
    if not isinstance(data, dict) or "jobId" not in data:
        raise CliError("submit answered without a job id")
    return data


def read_view_or_summary(client: JournalClient, job_id: str) -> dict[str, Any]:
    """The job's whole view, or, when the view does not fit in one journal frame (``TOO_LARGE``), its
    summary from the job list (state, current step), so that a watch still follows it."""
    try:
        return client.read_job(job_id)
    except Rejected as exc:
        if exc.code != TOO_LARGE:
            raise CliError(f"read job: {exc}") from None
    except JournalError as exc:
        raise CliError(f"read job: {exc}") from None
    for job in list_all_jobs(client, {}):
        if job.get("jobId") == job_id:
            return job
    raise CliError(f"read job: job {job_id} is too large to read and not in the job list")


def wait_terminal(
    client: JournalClient,
    job_id: str,
    timeout_s: float,
    on_view: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Poll the job until it is finished (or ``timeout_s`` passes: ``CliError``)."""
    deadline = time.monotonic() + timeout_s
    while True:
        job = read_view_or_summary(client, job_id)
        if on_view is not None:
            on_view(job)
        if job.get("finished") or (job.get("state") in TERMINAL_STATES and job.get("state") != "FAILED"):
            return job
        if time.monotonic() > deadline:
            raise CliError(f"job {job_id} is still {job.get('state')} after {timeout_s:g} s")
        time.sleep(WATCH_PERIOD_S)


def cmd_up(args: argparse.Namespace) -> int:
    stop = threading.Event()

    def on_signal(*_: Any) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    templates = args.templates_dir or os.environ.get("XPIPE_TEMPLATES_DIR")
    layout = StackLayout(
        Path(args.data_dir or os.environ.get("XPIPE_DATA_DIR") or ".xpipe"),
        args.base_port,
        Path(templates) if templates else None,
        step_idle_s=args.step_idle_seconds,
        max_step_processes=args.max_step_processes,
    )
    token = args.token or os.environ.get("XPIPE_TOKEN")  # the environment keeps it out of `ps`
    return up(layout, token=token, ping_interval_s=args.ping_interval, stop=stop)


def cmd_submit(args: argparse.Namespace, console: Console, settings: Settings) -> int:
    params = parse_params(args.param or [], _param_types(args.template))
    registered = submit_event(
        settings, args.template, params, args.requested_by or f"cli:{getpass.getuser()}"
    )
    if not args.wait:
        if args.output == "json":
            console.print_json(data=registered)
        else:
            console.print(f"job {registered['jobId']} registered ({registered.get('state')})")
        return EXIT_OK
    with settings.journal_client() as client:
        job = wait_terminal(client, str(registered["jobId"]), args.timeout)
    if args.output == "json":
        console.print_json(
            data={"jobId": job["jobId"], "template": job.get("template"), "state": job["state"]}
        )
    else:
        console.print(f"job {job['jobId']} {job['state']}")
    return EXIT_OK if job["state"] == "SUCCEEDED" else EXIT_FAILED


def list_all_jobs(client: JournalClient, filters: Mapping[str, Any]) -> list[dict[str, Any]]:
    jobs: list[dict[str, Any]] = []
    after: str | None = None
    while True:
        try:
            page = client.list_jobs(dict(filters), after=after, limit=LIST_PAGE)
        except JournalError as exc:
            raise CliError(f"list jobs: {exc}") from None
        jobs.extend(page.jobs)
        after = page.next_cursor
        if after is None:
            return jobs


def cmd_jobs(args: argparse.Namespace, console: Console, settings: Settings) -> int:
    filters: dict[str, Any] = {}
    if args.state:
        filters["state"] = args.state.upper()
    if args.template:
        filters["template"] = args.template
    with settings.journal_client() as client:
        jobs = list_all_jobs(client, filters)
    if args.output == "json":
        console.print_json(data=jobs)
    else:
        console.print(jobs_table(jobs))
    return EXIT_OK


def cmd_job(args: argparse.Namespace, console: Console, settings: Settings) -> int:
    with settings.journal_client() as client:
        if args.job_command == "show":
            if args.output == "json":  # the whole view or a precise error, never something else
                console.print_json(data=_journal_call("read job", lambda: client.read_job(args.job_id)))
                return EXIT_OK
            job = read_view_or_summary(client, args.job_id)
            if "steps" not in job:
                print(
                    f"xpipe: the view of {args.job_id} is larger than one journal frame; showing its summary",
                    file=sys.stderr,
                )
                console.print(jobs_table([job]))
                return EXIT_OK
            console.print(job_view(job))
            console.print(history_table(job))
            return EXIT_OK
        if args.job_command == "watch":
            with Live(console=console, refresh_per_second=4, transient=False) as live:
                job = wait_terminal(
                    client, args.job_id, args.timeout, lambda view: live.update(job_view(view))
                )
            return EXIT_OK if job["state"] == "SUCCEEDED" else EXIT_FAILED
        return cancel_job(
            client, settings, args.job_id, args.reason, then_rollback=args.then_rollback, console=console
        )


def publish_directives(
    client: JournalClient, sink: str, directives: Sequence[Mapping[str, Any]], console: Console
) -> None:
    """Publish a commit's directives to the broker and acknowledge those it accepted, as the functions do.
    One that fails stays unacknowledged and the journal's next sweep hands it out again."""
    published: list[str] = []
    with httpx.Client(timeout=5.0, trust_env=False) as http:
        for directive in directives:
            headers, body = to_binary(directive_event(directive, {}))
            try:
                accepted = http.post(sink, headers=headers, content=body).is_success
            except httpx.HTTPError:
                accepted = False
            if accepted:
                published.append(str(directive["id"]))
            else:
                console.print(f"directive {directive['id']} not published now; the next sweep redelivers it")
    if published:
        with contextlib.suppress(JournalError):  # unacknowledged: redelivered, and receivers deduplicate
            client.ack(published)


def cancel_job(
    client: JournalClient,
    settings: Settings,
    job_id: str,
    reason: str,
    *,
    then_rollback: bool,
    console: Console,
) -> int:
    """Commit ``JOB_CANCELLED`` and publish the directives it causes (cancel, finished) to the broker."""
    key = f"xpipe-cli cancel {job_id} {uuid.uuid4()}"
    result = _journal_call(
        "cancel",
        lambda: client.commit(
            job_id,
            [{"type": "JOB_CANCELLED", "data": {"reason": reason, "thenRollback": then_rollback}}],
            idempotency_key=key,
        ),
    )
    if result.directives and settings.sink:
        publish_directives(client, settings.sink, result.directives, console)
    console.print(f"job {job_id} {result.state}")
    return EXIT_OK


def cmd_templates(args: argparse.Namespace, console: Console) -> int:
    catalog = _catalog()
    rows: list[dict[str, Any]] = []
    for name in catalog.names():
        template = catalog.get(name)
        rows.append(
            {
                "name": name,
                "description": template.description,
                "onFailure": template.on_failure,
                "steps": [step.name for step in template.steps],
                "params": sorted(template.params),
            }
        )
    if args.output == "json":
        console.print_json(data=rows)
        return EXIT_OK
    table = Table(title="templates")
    for column in ("name", "steps", "params", "on failure", "description"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            _plain(row["name"]),
            _plain(", ".join(row["steps"])),
            _plain(", ".join(row["params"])),
            _plain(row["onFailure"]),
            _plain(row["description"]),
        )
    console.print(table)
    return EXIT_OK


def cmd_journal(args: argparse.Namespace, settings: Settings) -> int:
    directory = args.dir or str(settings.data_dir / "journal")
    argv = [args.journal_command, directory]
    if args.journal_command == "dump" and args.job:
        argv += ["--job", args.job]
    return int(journal_cli.main(argv))


# parser -----------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xpipe", description="XPipe pipelines: local stack, jobs and journal"
    )
    # --data-dir and --journal are accepted before or after the command (`xpipe up --data-dir DIR`).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--data-dir",
        default=argparse.SUPPRESS,
        help="the local stack's directory (XPIPE_DATA_DIR, default .xpipe)",
    )
    common.add_argument(
        "--journal", default=argparse.SUPPRESS, help="journal service HOST:PORT (XPIPE_JOURNAL)"
    )
    parser.add_argument("--data-dir", help="the local stack's directory (XPIPE_DATA_DIR, default .xpipe)")
    parser.add_argument("--journal", help="journal service HOST:PORT (XPIPE_JOURNAL)")
    commands = parser.add_subparsers(dest="command", required=True)

    up = commands.add_parser("up", parents=[common], help="run the whole system on this machine until Ctrl-C")
    up.add_argument(
        "--base-port", type=int, default=8080, help="router on P, functions P+1..P+3, journal P+4"
    )
    up.add_argument(
        "--token", help="accept this X-Token-XPipe with every scope (development; or XPIPE_TOKEN)"
    )
    up.add_argument("--ping-interval", type=float, default=5.0, help="seconds between sweep ticks (dev)")
    up.add_argument("--templates-dir", help="pipeline templates (XPIPE_TEMPLATES_DIR; default: built-in)")
    up.add_argument(
        "--step-idle-seconds", type=float, default=30.0, help="scale a step service to zero after"
    )
    up.add_argument("--max-step-processes", type=int, default=8, help="cap on live step processes")

    def output(p: argparse.ArgumentParser) -> None:
        p.add_argument("--output", "-o", choices=("table", "json"), default="table")

    submit = commands.add_parser("submit", parents=[common], help="submit a pipeline as Magento does")
    submit.add_argument("template")
    submit.add_argument(
        "-p", "--param", action="append", metavar="KEY=VALUE", help="repeat; key:=JSON for typed"
    )
    submit.add_argument("--wait", action="store_true", help="wait until the job is finished")
    submit.add_argument("--timeout", type=float, default=DEFAULT_WAIT_S)
    submit.add_argument("--requested-by")
    submit.add_argument("--submit-url", help="the submit function's URL (XPIPE_SUBMIT_URL)")
    output(submit)

    jobs = commands.add_parser("jobs", parents=[common], help="list jobs, newest first")
    jobs.add_argument("--state")
    jobs.add_argument("--template")
    output(jobs)

    job = commands.add_parser("job", parents=[common], help="one job: show, watch or cancel")
    job_commands = job.add_subparsers(dest="job_command", required=True)
    show = job_commands.add_parser("show", parents=[common])
    show.add_argument("job_id")
    output(show)
    watch = job_commands.add_parser(
        "watch", parents=[common], help="live steps, attempts and heart-beats until finished"
    )
    watch.add_argument("job_id")
    watch.add_argument("--timeout", type=float, default=DEFAULT_WAIT_S)
    cancel = job_commands.add_parser("cancel", parents=[common])
    cancel.add_argument("job_id")
    cancel.add_argument("--reason", default="cancelled from the xpipe CLI")
    cancel.add_argument("--then-rollback", action="store_true", help="compensate the steps that succeeded")

    templates = commands.add_parser(
        "templates", parents=[common], help="the pipeline templates of the catalog"
    )
    output(templates)

    journal = commands.add_parser(
        "journal", parents=[common], help="check or dump a journal directory offline"
    )
    journal_commands = journal.add_subparsers(dest="journal_command", required=True)
    verify = journal_commands.add_parser("verify", parents=[common])
    verify.add_argument("dir", nargs="?", help="default: <data-dir>/journal")
    dump = journal_commands.add_parser("dump", parents=[common])
    dump.add_argument("dir", nargs="?", help="default: <data-dir>/journal")
    dump.add_argument("--job")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = Console()
    try:
        if args.command == "up":
            return cmd_up(args)
        if args.command == "templates":
            return cmd_templates(args, console)
        settings = Settings.resolve(args, os.environ)
        if args.command == "submit":
            return cmd_submit(args, console, settings)
        if args.command == "jobs":
            return cmd_jobs(args, console, settings)
        if args.command == "job":
            return cmd_job(args, console, settings)
        return cmd_journal(args, settings)
    except CliError as exc:
        print(f"xpipe: {exc}", file=sys.stderr)  # plain: an error line is never wrapped or styled
        return exc.code
    except (XPipeError, OSError, ValueError) as exc:
        # A bad catalog, setting or data directory: one precise line, not a traceback.
        print(f"xpipe: {exc}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
