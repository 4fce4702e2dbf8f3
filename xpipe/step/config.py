"""The step runtime's configuration: command-line options, then environment variables, read here only.

Knative and the SinkBinding hand a container its settings through the environment (`PORT`, `K_SINK`,
`K_CE_OVERRIDES`, `K_SERVICE`, `HOSTNAME`); the step's own command and its unrendered env come from the
command line that the backend writes into the service (`xpipe-step --env NAME=VALUE -- ARGV...`).
"""

from __future__ import annotations

import argparse
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from xpipe import ce_overrides
from xpipe.params import ParamError, placeholders

DEFAULT_PORT = 8080
DEFAULT_HEARTBEAT_SECONDS = 10.0
DEFAULT_STOP_GRACE_SECONDS = 10.0
DEFAULT_HEARTBEAT_TIMEOUT_SECONDS = 2.0
MAX_BODY_BYTES = 1024 * 1024


class ConfigError(ValueError):
    """The runtime cannot start with this configuration; the message names the option or variable."""


@dataclass(frozen=True)
class RuntimeConfig:
    """Everything the runtime needs, resolved once at start-up."""

    argv: tuple[str, ...]
    env: Mapping[str, str]
    host: str = "0.0.0.0"
    port: int = DEFAULT_PORT
    listen_fd: int | None = None
    service: str = "xpipe-step"
    pod: str = "localhost"
    sink: str | None = None
    ce_overrides: Mapping[str, str] = field(default_factory=dict)
    heartbeat_seconds: float = DEFAULT_HEARTBEAT_SECONDS
    heartbeat_timeout_seconds: float = DEFAULT_HEARTBEAT_TIMEOUT_SECONDS
    stop_grace_seconds: float = DEFAULT_STOP_GRACE_SECONDS
    timeout_seconds: float | None = None
    max_body_bytes: int = MAX_BODY_BYTES
    exit_with_parent: bool = False


def parse_ce_overrides(raw: str | None) -> dict[str, str]:
    """`K_CE_OVERRIDES` (`{"extensions": {"name": "value"}}`) as a flat extension map (shared parser)."""
    try:
        return ce_overrides.parse_ce_overrides(raw)
    except ce_overrides.InvalidCeOverrides as error:
        raise ConfigError(str(error)) from None


def _env_assignment(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"--env expects NAME=VALUE, got {text!r}")
    return name, value


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xpipe-step",
        description="Serve com.xpipe.step.run CloudEvents by running ARGV (never through a shell).",
        epilog="Example: xpipe-step --env TARGET='{{ params.target }}' -- make deploy 'ENV={{ params.env }}'",
    )
    parser.add_argument("--host", help="address to listen on (default 0.0.0.0)")
    parser.add_argument("--port", type=int, help=f"port to listen on (default $PORT or {DEFAULT_PORT})")
    parser.add_argument(
        "--listen-fd", type=int, help="serve on this already listening socket (the local step host's)"
    )
    parser.add_argument(
        "--env",
        action="append",
        type=_env_assignment,
        default=[],
        metavar="NAME=VALUE",
        help="an env entry for the command; VALUE may hold {{ params.NAME }} (repeatable)",
    )
    parser.add_argument(
        "--exit-with-parent",
        action="store_true",
        help="stop (as on SIGTERM) when the parent process dies (set by the local step host)",
    )
    parser.add_argument("--service", help="step service name for event sources (default $K_SERVICE)")
    parser.add_argument(
        "--heartbeat-seconds",
        type=_positive_float,
        help=f"heart-beat interval (default $XPIPE_HEARTBEAT_SECONDS or {DEFAULT_HEARTBEAT_SECONDS:g})",
    )
    parser.add_argument(
        "--stop-grace-seconds",
        type=_positive_float,
        help="time between SIGTERM and SIGKILL for the command "
        f"(default $XPIPE_STOP_GRACE_SECONDS or {DEFAULT_STOP_GRACE_SECONDS:g})",
    )
    parser.add_argument(
        "--timeout-seconds",
        type=_positive_float,
        help="longest a run may take when step.run carries no earlier deadline ($XPIPE_STEP_TIMEOUT_SECONDS)",
    )
    parser.add_argument("argv", nargs=argparse.REMAINDER, help="-- then the command and its arguments")
    return parser


def load(args: Sequence[str], environ: Mapping[str, str]) -> RuntimeConfig:
    """Resolve options over environment variables; raises ConfigError naming what is wrong."""
    parser = _parser()
    try:
        options = parser.parse_args(list(args))
    except SystemExit as exit_:
        raise ConfigError("invalid command line (see the message above)") from exit_
    argv = list(options.argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise ConfigError("no command: use xpipe-step [OPTIONS] -- COMMAND [ARGS...]")
    env = dict(options.env)
    for element in [*argv, *env.values()]:
        try:
            placeholders(element)
        except ParamError as error:
            raise ConfigError(str(error)) from None

    def from_env(name: str, convert: Any, default: Any) -> Any:
        raw = environ.get(name)
        if raw is None or raw == "":
            return default
        try:
            value = convert(raw)
        except (ValueError, argparse.ArgumentTypeError) as error:
            raise ConfigError(f"{name}={raw!r} is invalid: {error}") from None
        return value

    port = options.port if options.port is not None else from_env("PORT", int, DEFAULT_PORT)
    return RuntimeConfig(
        argv=tuple(argv),
        env=env,
        host=options.host or "0.0.0.0",
        port=port,
        listen_fd=options.listen_fd,
        service=options.service or environ.get("K_SERVICE") or "xpipe-step",
        pod=environ.get("HOSTNAME") or socket.gethostname(),
        sink=environ.get("K_SINK") or None,
        ce_overrides=parse_ce_overrides(environ.get("K_CE_OVERRIDES")),
        heartbeat_seconds=options.heartbeat_seconds
        or from_env("XPIPE_HEARTBEAT_SECONDS", _positive_float, DEFAULT_HEARTBEAT_SECONDS),
        stop_grace_seconds=options.stop_grace_seconds
        or from_env("XPIPE_STOP_GRACE_SECONDS", _positive_float, DEFAULT_STOP_GRACE_SECONDS),
        timeout_seconds=options.timeout_seconds
        or from_env("XPIPE_STEP_TIMEOUT_SECONDS", _positive_float, None),
        exit_with_parent=options.exit_with_parent,
    )
