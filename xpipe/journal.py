"""The functions' use of the journal: commit facts under idempotency keys, sweep, acknowledge, probe.

Functions hold no state: every fact they learn (a registration, a heart-beat, a finished step, a pod's
health, a dead letter, a rollback outcome) becomes a record committed with an idempotency key derived
from the CloudEvent that carried it (``<source> <id>``), so a redelivered event — Knative delivers at
least once — returns the original result instead of writing twice, also after a journal restart. The
journal answers with the directives the fact caused; the caller hands them to the outbox.

This module is the only one in ``xpipe`` that calls ``vms_adapter.JournalClient``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from vms_adapter.client import JournalClient

# The journal refuses longer keys and keys with control characters (PROTOCOL.md, COMMIT).
MAX_KEY_CHARS = 256
# A directive or record beyond this would not fit a journal frame (32,000 bytes) with its envelope.
MAX_RECORD_BYTES = 24_000


def idempotency_key(source: str, event_id: str) -> str:
    """``"<ce-source> <ce-id>"``; hashed when it is too long or not printable, so any event has a key."""
    key = f"{source} {event_id}"
    if len(key) <= MAX_KEY_CHARS and key.isprintable():
        return key
    digest = hashlib.sha256(f"{source}\0{event_id}".encode("utf-8", "surrogatepass")).hexdigest()
    return f"sha256:{digest}"


@dataclass(frozen=True)
class Committed:
    """The journal's answer to a commit: where the facts are, and what they caused."""

    job_id: str
    seq: int
    version: int
    duplicate: bool
    directives: list[dict[str, Any]] = field(default_factory=list)
    state: str | None = None


class JobJournal:
    """The journal operations the functions perform, over one pooled ``JournalClient``."""

    def __init__(self, client: JournalClient, probe_client: JournalClient | None = None) -> None:
        self.client = client
        # Readiness probes must answer within the kubelet's probe time-out (1 s by default), so they use
        # their own connection with short time-outs and no retries instead of the commit path's budget.
        self.probe_client = probe_client or client

    def register(self, plan: Mapping[str, Any], *, key: str) -> Committed:
        """Commit ``JOB_REGISTERED`` with a resolved plan; the journal allocates the job id."""
        return self.record(None, [{"type": "JOB_REGISTERED", "data": dict(plan)}], key=key)

    def record(self, job_id: str | None, records: Sequence[Mapping[str, Any]], *, key: str) -> Committed:
        """Commit facts about one job (or under a reserved id such as ``pod/<name>``)."""
        result = self.client.commit(job_id, [dict(r) for r in records], idempotency_key=key)
        return Committed(
            job_id=result.job_id,
            seq=result.seq,
            version=result.version,
            duplicate=result.duplicate,
            directives=list(result.directives),
            state=getattr(result, "state", None),
        )

    def sweep(self, *, redelivery_seconds: float) -> list[dict[str, Any]]:
        """Let the journal turn the clock into decisions; the directives now due, or unacknowledged and
        not handed out for ``redelivery_seconds``."""
        return list(self.client.sweep(redelivery_after=redelivery_seconds).directives)

    def acknowledge(self, ids: Sequence[str]) -> None:
        """Mark directives delivered (they were published to the sink)."""
        self.client.ack(list(ids))

    def job(self, job_id: str) -> dict[str, Any]:
        """The job view (JOBS.md §11)."""
        return dict(self.client.read_job(job_id))

    def clock(self) -> float:
        """The journal's clock now (Unix seconds): times compared with the journal's own (a revert pin's
        against a restore request's) must come from one clock, not from this pod's."""
        return self.client.ping()

    def probe(self) -> None:
        """Raise ``JournalUnavailable`` unless the journal answers a ``PING`` now (readiness)."""
        self.probe_client.ping()

    def close(self) -> None:
        self.client.close()
        if self.probe_client is not self.client:
            self.probe_client.close()
