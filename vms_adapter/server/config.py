"""The service's configuration: command-line options with defaults from ``XPIPE_JOURNAL_*`` environment
variables (OpenVMS: logical names), read in this one place.

Standard library only: this module runs on VSI Python 3.10 for OpenVMS.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from vms_adapter.server.journal import DEFAULT_KEY_RETENTION_S, DEFAULT_SNAPSHOT_EVERY, StorageOptions
from vms_adapter.server.segments import DEFAULT_SEGMENT_BYTES

ENV_PREFIX = "XPIPE_JOURNAL_"
MIN_SECRET_BYTES = 16


@dataclass(frozen=True)
class ServerConfig:
    """Everything ``python -m vms_adapter.server`` can be told."""

    data_dir: str
    host: str = "127.0.0.1"
    port: int = 7430
    secret_file: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    salvage: bool = False
    max_connections: int = 256
    idle_timeout_s: float = 300.0
    frame_timeout_s: float = 10.0
    segment_bytes: int = DEFAULT_SEGMENT_BYTES
    snapshot_every: int = DEFAULT_SNAPSHOT_EVERY
    key_retention_s: float = DEFAULT_KEY_RETENTION_S
    log_level: str = "INFO"
    # SWEEP with a client-chosen "now" can expire every lease at once: only for tests and drills.
    allow_clock_override: bool = False

    @property
    def storage(self) -> StorageOptions:
        return StorageOptions(
            segment_bytes=self.segment_bytes,
            snapshot_every=self.snapshot_every,
            key_retention_s=self.key_retention_s,
        )


class ConfigError(Exception):
    """A configuration value is missing or invalid (the message names it, never a secret's content)."""


def _positive(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value

    parse.__name__ = kind.__name__
    return parse


def add_server_arguments(parser: argparse.ArgumentParser, env: Mapping[str, str]) -> None:
    """Declare the ``serve`` options; each default comes from ``XPIPE_JOURNAL_<NAME>`` when set."""
    defaults = ServerConfig(data_dir="")

    def default(name: str, value: object) -> object:
        return env.get(ENV_PREFIX + name, value)

    parser.add_argument("--data-dir", default=env.get(ENV_PREFIX + "DATA_DIR"), help="journal directory")
    parser.add_argument("--host", default=default("HOST", defaults.host))
    parser.add_argument(
        "--port", type=int, default=default("PORT", defaults.port), help="0 picks a free port"
    )
    parser.add_argument("--secret-file", default=default("SECRET_FILE", None), help="shared HELLO secret")
    parser.add_argument("--tls-cert", default=default("TLS_CERT", None))
    parser.add_argument("--tls-key", default=default("TLS_KEY", None))
    parser.add_argument("--salvage", action="store_true", help="keep the sound prefix of a corrupt journal")
    parser.add_argument("--max-connections", type=_positive(int), default=default("MAX_CONNECTIONS", 256))
    parser.add_argument("--idle-timeout", type=_positive(float), default=default("IDLE_TIMEOUT", 300.0))
    parser.add_argument("--frame-timeout", type=_positive(float), default=default("FRAME_TIMEOUT", 10.0))
    parser.add_argument(
        "--segment-bytes", type=_positive(int), default=default("SEGMENT_BYTES", DEFAULT_SEGMENT_BYTES)
    )
    parser.add_argument(
        "--snapshot-every", type=_positive(int), default=default("SNAPSHOT_EVERY", DEFAULT_SNAPSHOT_EVERY)
    )
    parser.add_argument(
        "--key-retention", type=_positive(float), default=default("KEY_RETENTION", DEFAULT_KEY_RETENTION_S)
    )
    parser.add_argument("--log-level", default=default("LOG_LEVEL", "INFO"))
    parser.add_argument(
        "--allow-clock-override",
        action="store_true",
        help="accept SWEEP's `now` (tests and failure drills only: it can expire every lease at once)",
    )


def config_from_arguments(args: argparse.Namespace) -> ServerConfig:
    """Check cross-option rules and build the config (argparse has already parsed each value)."""
    if not args.data_dir:
        raise ConfigError("--data-dir (or XPIPE_JOURNAL_DATA_DIR) is required")
    if bool(args.tls_cert) != bool(args.tls_key):
        raise ConfigError("--tls-cert and --tls-key go together")
    try:
        port = int(args.port)
    except ValueError:
        raise ConfigError(f"--port must be an integer, got {args.port!r}") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port must be 0..65535, got {port}")
    return ServerConfig(
        data_dir=args.data_dir,
        host=args.host,
        port=port,
        secret_file=args.secret_file,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        salvage=args.salvage,
        max_connections=int(args.max_connections),
        idle_timeout_s=float(args.idle_timeout),
        frame_timeout_s=float(args.frame_timeout),
        segment_bytes=int(args.segment_bytes),
        snapshot_every=int(args.snapshot_every),
        key_retention_s=float(args.key_retention),
        log_level=str(args.log_level).upper(),
        allow_clock_override=bool(args.allow_clock_override),
    )


def read_secret(path: str) -> bytes:
    """The shared secret from ``path`` (surrounding white space removed); never echoed anywhere."""
    try:
        with open(path, "rb") as handle:
            secret = handle.read().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the secret file {path}: {exc.strerror or exc}") from None
    if len(secret) < MIN_SECRET_BYTES:
        raise ConfigError(f"the secret in {path} is shorter than {MIN_SECRET_BYTES} bytes")
    return secret
