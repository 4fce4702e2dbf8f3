"""The functions' configuration: every environment variable they read, read here and only here.

Knative hands a function its settings through the environment (``K_SINK`` from a SinkBinding or the
``sink`` of ``kn func``; the rest from ``func.yaml``'s ``run.envs`` or the Service spec). ``load`` checks
all of them at start-up and raises ``ConfigurationError`` naming the variable, so a misconfigured
function never becomes ready rather than failing its first request. ``docs/functions.md`` has the table.

Secrets (the journal's shared secret) are read from files named here, never from a variable's value,
and never appear in ``repr`` or in an error message.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from xpipe.ce_overrides import InvalidCeOverrides, parse_ce_overrides
from xpipe.errors import ConfigurationError

# The demo templates shipped in the package (xpipe/templates/*.yaml). Defined here rather than taken
# from xpipe.templates so that functions without a catalog (health-relay, rollback) never import it.
BUILTIN_TEMPLATES_DIR = Path(__file__).with_name("templates")

BackendKind = Literal["local", "knative"]

DEFAULT_MAX_BODY_BYTES = 1024 * 1024
DEFAULT_MAX_REVISION_TIMEOUT_SECONDS = 600  # Knative Serving's default max-revision-timeout-seconds
DEFAULT_MAX_IN_FLIGHT = 32
DEFAULT_JOURNAL_TIMEOUT_SECONDS = 10.0
DEFAULT_JOURNAL_RETRY_SECONDS = 5.0
DEFAULT_PUBLISH_TIMEOUT_SECONDS = 5.0
DEFAULT_REDELIVERY_SECONDS = 60.0
DEFAULT_STEP_IMAGE = "ghcr.io/xpipe/step:latest"
DEFAULT_STEPS_NAMESPACE = "xpipe-steps"
DEFAULT_BROKER = "default"
SECRET_FILE_MAX_BYTES = 4096
TRUST_CLUSTER_DELIVERIES = "XPIPE_TRUST_CLUSTER_DELIVERIES"


@dataclass(frozen=True)
class FunctionConfig:
    """Everything a function needs, resolved once at start-up."""

    journal_host: str
    journal_port: int
    tokens_file: Path
    sink: str
    journal_secret: bytes | None = field(default=None, repr=False)
    journal_tls: bool = False
    journal_ca_file: Path | None = None
    journal_timeout_seconds: float = DEFAULT_JOURNAL_TIMEOUT_SECONDS
    journal_retry_seconds: float = DEFAULT_JOURNAL_RETRY_SECONDS
    templates_dir: Path = BUILTIN_TEMPLATES_DIR
    backend: BackendKind = "local"
    ce_overrides: Mapping[str, str] = field(default_factory=dict)
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_revision_timeout_seconds: int = DEFAULT_MAX_REVISION_TIMEOUT_SECONDS
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    publish_timeout_seconds: float = DEFAULT_PUBLISH_TIMEOUT_SECONDS
    redelivery_seconds: float = DEFAULT_REDELIVERY_SECONDS
    step_image: str = DEFAULT_STEP_IMAGE
    steps_namespace: str = DEFAULT_STEPS_NAMESPACE
    broker: str = DEFAULT_BROKER
    local_step_host: str | None = None
    kubeconfig: str | None = None
    log_level: str = "INFO"
    # XPIPE_TRUST_CLUSTER_DELIVERIES: a request without X-Token-XPipe is taken as a delivery from the
    # cluster's Knative Eventing data plane (relay scope). Only health-relay and rollback, which sit
    # cluster-local behind a NetworkPolicy, may run with it; submit refuses to start with it.
    trust_cluster_deliveries: bool = False


def _required(environ: Mapping[str, str], name: str, meaning: str) -> str:
    value = environ.get(name, "").strip()
    if not value:
        raise ConfigurationError(f"{name} is not set: {meaning}")
    return value


def _number(environ: Mapping[str, str], name: str, default: float, *, minimum: float) -> float:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigurationError(f"{name}={raw!r} is not a number") from None
    if not value >= minimum or value == float("inf"):
        raise ConfigurationError(f"{name}={raw!r} must be a finite number >= {minimum}")
    return value


def _integer(environ: Mapping[str, str], name: str, default: int, *, minimum: int) -> int:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigurationError(f"{name}={raw!r} is not an integer") from None
    if value < minimum:
        raise ConfigurationError(f"{name}={raw!r} must be at least {minimum}")
    return value


def _flag(environ: Mapping[str, str], name: str) -> bool:
    raw = environ.get(name, "").strip().lower()
    if raw not in ("", "0", "1", "false", "true"):
        raise ConfigurationError(f"{name}={raw!r} must be true or false")
    return raw in ("1", "true")


def _journal_address(raw: str) -> tuple[str, int]:
    host, sep, port = raw.rpartition(":")
    host = host.strip("[]")  # [::1]:7000
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigurationError(f"XPIPE_JOURNAL={raw!r} must be HOST:PORT")
    return host, int(port)


def _secret(path_text: str) -> bytes:
    path = Path(path_text)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigurationError(f"XPIPE_JOURNAL_SECRET_FILE {path}: cannot read: {exc.strerror}") from None
    secret = data.strip()
    if not secret or len(data) > SECRET_FILE_MAX_BYTES:
        raise ConfigurationError(
            f"XPIPE_JOURNAL_SECRET_FILE {path}: must hold a non-empty secret of at most "
            f"{SECRET_FILE_MAX_BYTES} bytes"
        )
    return secret


def _sink(raw: str) -> str:
    try:
        parts = urlsplit(raw)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in range
    except ValueError:
        raise ConfigurationError(f"K_SINK={_without_userinfo(raw)!r} is not a URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(f"K_SINK={_without_userinfo(raw)!r} must be an http(s) URL with a host")
    if _UNSENDABLE_URL.search(raw):
        raise ConfigurationError(
            f"K_SINK={_without_userinfo(raw)!r} holds a space or control character: percent-encode it"
        )
    return raw


# A space or control character cannot be sent in a request line (RFC 3986 asks for percent-encoding).
_UNSENDABLE_URL = re.compile(r"[\x00-\x20\x7f]")


def _without_userinfo(url: str) -> str:
    """``url`` for a message, with any ``user:password@`` cut: a credential never reaches a log."""
    scheme, sep, rest = url.partition("://")
    authority, slash, path = rest.partition("/")
    if not sep or "@" not in authority:
        return url
    return f"{scheme}://***@{authority.rsplit('@', 1)[1]}{slash}{path}"


def _ce_overrides(raw: str) -> dict[str, str]:
    try:
        return parse_ce_overrides(raw)
    except InvalidCeOverrides as exc:
        raise ConfigurationError(str(exc)) from None


def catalog_location(env: Mapping[str, str]) -> tuple[Path, int]:
    """The template catalog's directory and the cluster's revision time-out limit (also read by the CLI)."""
    templates_dir = env.get("XPIPE_TEMPLATES_DIR", "").strip()
    limit = _integer(
        env, "XPIPE_MAX_REVISION_TIMEOUT_SECONDS", DEFAULT_MAX_REVISION_TIMEOUT_SECONDS, minimum=1
    )
    return (Path(templates_dir) if templates_dir else BUILTIN_TEMPLATES_DIR), limit


def load(environ: Mapping[str, str] | None = None) -> FunctionConfig:
    """Read and check the environment; ``ConfigurationError`` names the first bad variable."""
    env = os.environ if environ is None else environ
    host, port = _journal_address(_required(env, "XPIPE_JOURNAL", "the journal service's HOST:PORT"))
    secret_file = env.get("XPIPE_JOURNAL_SECRET_FILE", "").strip()
    ca_file = env.get("XPIPE_JOURNAL_CA_FILE", "").strip()
    backend = env.get("XPIPE_BACKEND", "local").strip() or "local"
    if backend not in ("local", "knative"):
        raise ConfigurationError(f"XPIPE_BACKEND={backend!r} must be 'local' or 'knative'")
    log_level = env.get("XPIPE_LOG_LEVEL", "INFO").strip().upper() or "INFO"
    if log_level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigurationError(f"XPIPE_LOG_LEVEL={log_level!r} must be DEBUG, INFO, WARNING or ERROR")
    templates_dir, max_revision_timeout_seconds = catalog_location(env)
    return FunctionConfig(
        journal_host=host,
        journal_port=port,
        journal_secret=_secret(secret_file) if secret_file else None,
        journal_tls=_flag(env, "XPIPE_JOURNAL_TLS") or bool(ca_file),
        journal_ca_file=Path(ca_file) if ca_file else None,
        journal_timeout_seconds=_number(
            env, "XPIPE_JOURNAL_TIMEOUT_SECONDS", DEFAULT_JOURNAL_TIMEOUT_SECONDS, minimum=0.05
        ),
        journal_retry_seconds=_number(
            env, "XPIPE_JOURNAL_RETRY_SECONDS", DEFAULT_JOURNAL_RETRY_SECONDS, minimum=0
        ),
        tokens_file=Path(_required(env, "XPIPE_TOKENS_FILE", "the YAML list of token digests")),
        sink=_sink(_required(env, "K_SINK", "where the function publishes directives (the broker)")),
        templates_dir=templates_dir,
        backend="knative" if backend == "knative" else "local",
        ce_overrides=_ce_overrides(env.get("K_CE_OVERRIDES", "")),
        max_body_bytes=_integer(env, "XPIPE_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES, minimum=1024),
        max_revision_timeout_seconds=max_revision_timeout_seconds,
        max_in_flight=_integer(env, "XPIPE_MAX_IN_FLIGHT", DEFAULT_MAX_IN_FLIGHT, minimum=1),
        publish_timeout_seconds=_number(
            env, "XPIPE_PUBLISH_TIMEOUT_SECONDS", DEFAULT_PUBLISH_TIMEOUT_SECONDS, minimum=0.05
        ),
        redelivery_seconds=_number(env, "XPIPE_REDELIVERY_SECONDS", DEFAULT_REDELIVERY_SECONDS, minimum=0),
        step_image=env.get("XPIPE_STEP_IMAGE", "").strip() or DEFAULT_STEP_IMAGE,
        steps_namespace=env.get("XPIPE_STEPS_NAMESPACE", "").strip() or DEFAULT_STEPS_NAMESPACE,
        broker=env.get("XPIPE_BROKER", "").strip() or DEFAULT_BROKER,
        local_step_host=env.get("XPIPE_LOCAL_STEP_HOST", "").strip() or None,
        kubeconfig=env.get("KUBECONFIG", "").strip() or None,
        log_level=log_level,
        trust_cluster_deliveries=_flag(env, TRUST_CLUSTER_DELIVERIES),
    )
