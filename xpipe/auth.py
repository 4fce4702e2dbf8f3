"""``X-Token-XPipe``: who may call which function.

Every request to a function carries a bearer token in the ``X-Token-XPipe`` header (Magento has no
other way to authenticate against a bare Knative function). The functions never hold tokens, only their
SHA-256 digests, read from ``XPIPE_TOKENS_FILE``: a YAML list of ``{name, scope, sha256}``. Scopes are
``submit`` (Magento, ``xpipe submit``), ``relay`` (the broker's deliveries to health-relay and rollback)
and ``admin`` (everything).

A presented token is hashed and compared with *every* known digest using ``hmac.compare_digest``, so the
time taken does not reveal how much of a digest matched nor which entry did. Tokens never appear in a
log line, an exception message or a response; only the entry's ``name`` does.

Broker deliveries carry no token (the Knative Broker forwards no custom header, and ApiServerSource and
PingSource send none). health-relay and rollback, cluster-local behind a NetworkPolicy, may therefore
run with ``XPIPE_TRUST_CLUSTER_DELIVERIES=true``: a request *without* the header is then taken as
``CLUSTER_DELIVERY`` (relay scope), while a request *with* one is still checked (docs/deploy.md).

``python -m xpipe.auth NAME SCOPE`` prints a fresh random token (once, to hand to the caller) and the
tokens-file entry to store.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml

from xpipe.errors import ConfigurationError, Forbidden, Unauthenticated

# libyaml's safe loader when PyYAML was built with it, else the pure-Python one.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

HEADER = "X-Token-XPipe"
Scope = Literal["submit", "relay", "admin"]
SCOPES: tuple[Scope, ...] = ("submit", "relay", "admin")
# Longer values are refused before hashing: no real token is this long, and a huge header is noise.
MAX_TOKEN_CHARS = 512
TOKENS_FILE_MAX_BYTES = 1024 * 1024
_HEX_DIGEST = re.compile(r"[0-9a-f]{64}")


def token_digest(token: str) -> str:
    """The hex SHA-256 of a token, as stored in the tokens file."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Caller:
    """Who a request comes from: the tokens-file entry's name and scope (never the token)."""

    name: str
    scope: Scope


# Who a request without X-Token-XPipe is, where cluster deliveries are trusted: the Eventing data plane.
CLUSTER_DELIVERY = Caller(name="cluster-delivery", scope="relay")


@dataclass(frozen=True)
class _Entry:
    name: str
    scope: Scope
    digest: bytes


class TokenRegistry:
    """The known token digests; ``authorize`` turns a header value into a ``Caller`` or a 401/403."""

    def __init__(self, entries: list[_Entry]) -> None:
        self._entries = tuple(entries)

    def __len__(self) -> int:
        return len(self._entries)

    @classmethod
    def load(cls, path: Path) -> TokenRegistry:
        """Read and check the tokens file; ``ConfigurationError`` naming the file and entry if it is bad."""
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise ConfigurationError(f"XPIPE_TOKENS_FILE {path}: cannot read: {exc.strerror}") from None
        if len(raw) > TOKENS_FILE_MAX_BYTES:
            raise ConfigurationError(f"XPIPE_TOKENS_FILE {path}: larger than {TOKENS_FILE_MAX_BYTES} bytes")
        try:
            document = yaml.load(raw, Loader=_YAML_LOADER)  # noqa: S506 - a safe loader
        except yaml.YAMLError:
            # The parser's message may quote the file's content: say only where it is.
            raise ConfigurationError(f"XPIPE_TOKENS_FILE {path}: not valid YAML") from None
        if not isinstance(document, list) or not document:
            raise ConfigurationError(f"XPIPE_TOKENS_FILE {path}: must be a non-empty YAML list")
        entries: list[_Entry] = []
        seen: set[str] = set()
        for index, item in enumerate(document):
            where = f"XPIPE_TOKENS_FILE {path}: entry [{index}]"
            if not isinstance(item, dict) or set(item) != {"name", "scope", "sha256"}:
                raise ConfigurationError(f"{where}: must have exactly the keys name, scope, sha256")
            name, scope, digest = item["name"], item["scope"], item["sha256"]
            if not isinstance(name, str) or not name:
                raise ConfigurationError(f"{where}: name must be a non-empty string")
            if scope not in SCOPES:
                raise ConfigurationError(f"{where} ({name}): scope must be one of {', '.join(SCOPES)}")
            if not isinstance(digest, str) or not _HEX_DIGEST.fullmatch(digest):
                raise ConfigurationError(f"{where} ({name}): sha256 must be 64 lower-case hex digits")
            if digest in seen:
                raise ConfigurationError(f"{where} ({name}): the same token digest appears twice")
            seen.add(digest)
            entries.append(_Entry(name=name, scope=scope, digest=bytes.fromhex(digest)))
        return cls(entries)

    def authenticate(self, token: str | None) -> Caller:
        """The caller a token belongs to; ``Unauthenticated`` for a missing or unknown token."""
        if not token:
            raise Unauthenticated(f"missing {HEADER} header")
        if len(token) > MAX_TOKEN_CHARS:
            raise Unauthenticated(f"invalid {HEADER} token")
        presented = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
        found: _Entry | None = None
        for entry in self._entries:  # no early exit: every request costs the same comparisons
            if hmac.compare_digest(presented, entry.digest):
                found = entry
        if found is None:
            raise Unauthenticated(f"invalid {HEADER} token")
        return Caller(name=found.name, scope=found.scope)

    def authorize(self, token: str | None, scope: Scope, *, trust_missing: bool = False) -> Caller:
        """The caller, if its token is known and its scope is ``scope`` or ``admin``; else 401 or 403.

        With ``trust_missing`` a request without the header (``token is None``; an empty header is a
        token, and wrong) is ``CLUSTER_DELIVERY``, which holds the relay scope only.
        """
        caller = CLUSTER_DELIVERY if token is None and trust_missing else self.authenticate(token)
        if caller.scope not in (scope, "admin"):
            raise Forbidden(
                f"token {caller.name!r} has scope {caller.scope!r}; this function needs {scope!r}"
            )
        return caller


def main(argv: list[str] | None = None) -> int:
    """Print a new random token and the tokens-file entry holding its digest."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[1] not in SCOPES:
        print(f"usage: python -m xpipe.auth NAME {{{'|'.join(SCOPES)}}}", file=sys.stderr)
        return 2
    token = secrets.token_urlsafe(32)
    print(f"token (give it to the caller, it is not stored): {token}")
    print("tokens-file entry:")
    print(yaml.safe_dump([{"name": args[0], "scope": args[1], "sha256": token_digest(token)}]), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
