"""``xpipe up``: the whole XPipe system on one machine, production minus Kubernetes.

Ports from ``--base-port`` P: the router (the Broker's ingress) on P, submit on P+1, health-relay on P+2,
rollback on P+3, the journal service on P+4 and the local step host on P+5. Every function is a real
functions-framework (gunicorn) process with the environment ``xpipe.config`` reads; the router honours
``knative/base`` plus ``local-steps.yaml`` (the one Trigger that, locally, stands for the per-step Triggers
the Knative backend creates in a cluster). The data directory holds the journal, the secrets, the tokens
file, the logs and ``stack.json``.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

import xpipe
from xpipe.auth import token_digest
from xpipe.devstack.supervisor import ComponentSpec, Supervisor

REPO_ROOT = Path(xpipe.__file__).resolve().parent.parent
MANIFESTS = REPO_ROOT / "knative" / "base"
LOCAL_MANIFESTS = Path(__file__).resolve().parent / "local-steps.yaml"
FUNCTIONS_DIR = REPO_ROOT / "functions"
FUNCTIONS = ("submit", "health-relay", "rollback")
BROKER_SUBSCRIBERS = ("health-relay", "rollback")
STEP_HOST_SERVICE = "xpipe-step-host"
DEFAULT_BASE_PORT = 8080
DEFAULT_DATA_DIR = Path(".xpipe")
DEFAULT_PING_INTERVAL_S = 5.0
# Step processes mostly wait on their command; 8 lets demo-ok run 4 jobs at once without queueing (a full
# host answers 429 and the router retries, which Knative's activator would queue instead).
DEFAULT_MAX_STEP_PROCESSES = 8
START_TIMEOUT_S = 60.0
HOST = "127.0.0.1"


@dataclass(frozen=True)
class StackLayout:
    """Where everything of one local stack lives: ports and files."""

    data_dir: Path
    base_port: int = DEFAULT_BASE_PORT
    templates_dir: Path | None = None  # None: the built-in templates
    step_idle_s: float = 30.0  # a step process idle this long is stopped (scale to zero)
    max_step_processes: int = DEFAULT_MAX_STEP_PROCESSES

    @property
    def router_url(self) -> str:
        return f"http://{HOST}:{self.base_port}"

    def function_url(self, name: str) -> str:
        return f"http://{HOST}:{self.base_port + 1 + FUNCTIONS.index(name)}"

    @property
    def journal_address(self) -> tuple[str, int]:
        return HOST, self.base_port + 4

    @property
    def step_host_url(self) -> str:
        return f"http://{HOST}:{self.base_port + 5}"

    @property
    def journal_dir(self) -> Path:
        return self.data_dir / "journal"

    @property
    def secret_file(self) -> Path:
        return self.data_dir / "journal.secret"

    @property
    def tokens_file(self) -> Path:
        return self.data_dir / "tokens.yaml"

    @property
    def token_file(self) -> Path:
        """The development token in clear, readable only by its owner, for the CLI."""
        return self.data_dir / "token"


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


def prepare(layout: StackLayout, token: str | None) -> str:
    """Create the data directory, the journal secret (once) and the tokens file; return the token.

    ``token`` (``--token``) is accepted with every scope; without it a random one is made once and kept
    in ``<data-dir>/token``. Only its SHA-256 goes into the tokens file."""
    layout.data_dir.mkdir(parents=True, exist_ok=True)
    layout.journal_dir.mkdir(exist_ok=True)
    if not layout.secret_file.exists():
        _write_private(layout.secret_file, secrets.token_hex(32) + "\n")
    if token is None:
        token = (
            layout.token_file.read_text().strip() if layout.token_file.exists() else secrets.token_urlsafe(32)
        )
    _write_private(layout.token_file, token + "\n")
    # One digest may appear once: the admin scope is every scope.
    entries = [{"name": "xpipe-up", "scope": "admin", "sha256": token_digest(token)}]
    _write_private(layout.tokens_file, yaml.safe_dump(entries, sort_keys=False))
    return token


def _base_env() -> dict[str, str]:
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "PYTHONPATH", "VIRTUAL_ENV", "TZ")
    env = {k: v for k, v in os.environ.items() if k in keep}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def function_env(layout: StackLayout, *, trust_cluster_deliveries: bool = False) -> dict[str, str]:
    """The environment ``xpipe.config.load`` reads, pointing at this stack. Broker subscribers accept
    tokenless deliveries, as their Services in ``knative/base`` do (the router, like Knative's broker,
    sends no ``X-Token-XPipe``)."""
    host, port = layout.journal_address
    env = {
        **_base_env(),
        "XPIPE_JOURNAL": f"{host}:{port}",
        "XPIPE_JOURNAL_SECRET_FILE": str(layout.secret_file.resolve()),
        "XPIPE_TOKENS_FILE": str(layout.tokens_file.resolve()),
        "XPIPE_BACKEND": "local",
        "XPIPE_LOCAL_STEP_HOST": layout.step_host_url,
        "K_SINK": layout.router_url,
        "WORKERS": "1",
        "THREADS": "8",
    }
    if layout.templates_dir is not None:
        env["XPIPE_TEMPLATES_DIR"] = str(layout.templates_dir.resolve())
    if trust_cluster_deliveries:
        env["XPIPE_TRUST_CLUSTER_DELIVERIES"] = "true"
    return env


def component_specs(layout: StackLayout, *, ping_interval_s: float) -> list[ComponentSpec]:
    """Every component, in start order: each one's dependencies are healthy before it starts."""
    python = sys.executable
    host, journal_port = layout.journal_address
    specs = [
        ComponentSpec(
            name="journal",
            argv=[
                python,
                "-m",
                "vms_adapter.server",
                "--data-dir",
                str(layout.journal_dir.resolve()),
                "--host",
                host,
                "--port",
                str(journal_port),
                "--secret-file",
                str(layout.secret_file.resolve()),
            ],
            env=_base_env(),
            endpoint=f"{host}:{journal_port}",
            health_tcp=(host, journal_port),
        ),
        ComponentSpec(
            name="step-host",
            argv=[
                python,
                "-m",
                "xpipe.backends.local_host",
                "--host",
                host,
                "--port",
                str(layout.base_port + 5),
                "--sink",
                layout.router_url,
                "--idle-seconds",
                f"{layout.step_idle_s:g}",
                "--max-processes",
                str(layout.max_step_processes),
                "--state-file",
                str((layout.data_dir / "step-host.json").resolve()),
            ],
            env={**_base_env(), "K_SINK": layout.router_url},
            endpoint=layout.step_host_url,
            health_url=f"{layout.step_host_url}/health/readiness",
        ),
    ]
    for index, name in enumerate(FUNCTIONS):
        port = layout.base_port + 1 + index
        specs.append(
            ComponentSpec(
                name=name,
                argv=[
                    python,
                    "-m",
                    "functions_framework",
                    "--target",
                    "handle",
                    "--source",
                    str(FUNCTIONS_DIR / name / "main.py"),
                    "--host",
                    HOST,
                    "--port",
                    str(port),
                ],
                env=function_env(layout, trust_cluster_deliveries=name in BROKER_SUBSCRIBERS),
                endpoint=f"http://{HOST}:{port}",
                health_url=f"http://{HOST}:{port}/health/readiness",
                cwd=REPO_ROOT,
            )
        )
    router_argv = [
        python,
        "-m",
        "xpipe.devstack.router",
        "--manifests",
        str(MANIFESTS),
        "--manifests",
        str(LOCAL_MANIFESTS),
        "--host",
        HOST,
        "--port",
        str(layout.base_port),
        "--ping-interval",
        f"{ping_interval_s:g}",
        "--service",
        f"{STEP_HOST_SERVICE}={layout.step_host_url}",
    ]
    for name in FUNCTIONS:
        router_argv += ["--service", f"{name}={layout.function_url(name)}"]
    specs.append(
        ComponentSpec(
            name="router",
            argv=router_argv,
            env=_base_env(),
            endpoint=layout.router_url,
            health_url=f"{layout.router_url}/healthz",
        )
    )
    return specs


def up(
    layout: StackLayout,
    *,
    token: str | None = None,
    ping_interval_s: float = DEFAULT_PING_INTERVAL_S,
    say: Callable[[str], None] | None = None,
    stop: threading.Event | None = None,
    components: Sequence[ComponentSpec] | None = None,
) -> int:
    """Run the stack until ``stop`` is set (SIGINT/SIGTERM in the CLI); 0 on a clean stop, 1 when it
    could not start. Everything started is stopped on return."""
    out = say or (lambda line: print(line, flush=True))
    stop = stop or threading.Event()
    prepare(layout, token)
    specs = (
        list(components)
        if components is not None
        else component_specs(layout, ping_interval_s=ping_interval_s)
    )
    supervisor = Supervisor(
        specs,
        layout.data_dir,
        say=out,
        extra_state={
            "router": layout.router_url,
            "submit": layout.function_url("submit"),
            "journal": "{}:{}".format(*layout.journal_address),
            "journal_secret_file": str(layout.secret_file.resolve()),
            "token_file": str(layout.token_file.resolve()),
        },
    )
    out(f"xpipe up: data in {layout.data_dir}, logs in {supervisor.log_dir}")
    try:
        try:
            supervisor.start(START_TIMEOUT_S, stop)
        except Exception as exc:
            out(f"xpipe up: cannot start: {exc}")
            return 1
        out("ready")
        width = max(len(c.spec.name) for c in supervisor.components)
        for component in supervisor.components:
            out(f"  {component.spec.name:<{width}}  {component.spec.endpoint}")
        out(f"  {'token':<{width}}  in {layout.token_file} (X-Token-XPipe, every scope)")
        supervisor.watch(stop)
        out("stopping")
        return 0
    finally:
        supervisor.stop()
        out("stopped")


def read_state(data_dir: Path) -> dict[str, object]:
    """``stack.json`` of a running stack (raises ``FileNotFoundError`` when none runs there)."""
    state: dict[str, object] = json.loads((data_dir / "stack.json").read_text())
    return state
