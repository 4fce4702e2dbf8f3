"""The seam between the journal's storage and what the journal knows about jobs.

Storage (segment files, group commit, recovery, snapshots, idempotency keys, job versions) knows nothing
of pipelines; a ``JobModel`` knows nothing of files or sockets. For every transaction the single writer
thread does, in order:

1. ``records = model.decide(job_id, incoming, now)`` -- pure: validates the incoming records against the
   current state and returns everything to write in the same transaction (the incoming records plus any
   derived ones, such as outbox directives). Raises ``ModelRejection`` to refuse; nothing is written and
   no state changes.
2. storage assigns each record its seq and the transaction's time and appends the transaction (group
   commit: one write and one fsync for every transaction that arrived during the previous fsync);
3. ``model.evolve(record)`` for each committed record, in seq order. Recovery calls the same ``evolve``
   over the records on disk, so ``evolve`` must be deterministic: everything it needs (including time)
   is in the record. Replaying the journal therefore rebuilds exactly the live state.

``evolve`` runs before the batch's fsync so that the next transaction in the batch is decided against
it; the journal's state lock is held from the first ``evolve`` until the fsync has returned, and every
reader takes that lock, so no reader ever sees a record that is not yet durable.

Records of one transaction may belong to several jobs (``ACK`` and ``SWEEP`` write records for many
jobs at once); ``job_id`` is per record.

Standard library only: this module runs on VSI Python 3.10 for OpenVMS.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class NewRecord:
    """A record before commit: what a client sent, or what the model derived from it."""

    job_id: str
    type: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Record:
    """A committed record: durable, with its journal-wide sequence number and commit time."""

    seq: int
    job_id: str
    type: str
    data: dict[str, Any]
    time: float  # Unix seconds, the transaction's commit time (the same for all its records)


class ModelRejection(Exception):
    """The model refuses a transaction; the server answers with ``code`` and writes nothing."""

    def __init__(self, code: str, message: str, *, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details or {}


class JobModel(Protocol):
    """What the journal knows about jobs: decisions (pure) and state (folded from committed records)."""

    def decide(self, job_id: str, incoming: Sequence[NewRecord], now: float) -> list[NewRecord]:
        """Validate ``incoming`` for ``job_id``; return every record to write in this transaction."""
        ...

    def evolve(self, record: Record) -> None:
        """Fold one committed record into the state. Deterministic; never raises for a decided record."""
        ...

    def sweep(self, now: float) -> list[NewRecord]:
        """Records the clock implies (expired leases, overrun time-outs, retries now due), as one txn."""
        ...

    def acknowledge(self, directive_ids: Sequence[str], now: float) -> list[NewRecord]:
        """Records marking these outbox entries delivered; unknown ids raise ``ModelRejection``."""
        ...

    def due_directives(self, now: float, redelivery_after_s: float) -> list[dict[str, Any]]:
        """Outbox entries due and not acknowledged, excluding those handed out in the last interval."""
        ...

    def directives_of(self, records: Sequence[Record], now: float) -> list[dict[str, Any]]:
        """The outbox entries among these committed records that are due now (for a commit reply)."""
        ...

    def job_state(self, job_id: str) -> str | None:
        """The job's current state name, or None for an unknown job."""
        ...

    def job_view(self, job_id: str) -> dict[str, Any] | None:
        """Everything an operator wants about one job (JSON-ready), or None for an unknown job."""
        ...

    def list_jobs(
        self, filters: dict[str, Any], after: str | None, limit: int
    ) -> tuple[list[dict[str, Any]], str | None]:
        """One page of job summaries matching ``filters`` and the cursor of the next page (or None)."""
        ...

    def dump_state(self) -> dict[str, Any]:
        """The whole state as JSON-ready data: a copy, which later decisions do not change."""
        ...

    def snapshot_json(self) -> str:
        """What ``dump_state`` gives, as JSON text: for the snapshot, taken on the thread that owns the
        model (the service loop, which it stalls meanwhile), so it should cost as little as it can."""
        ...

    def load_state(self, data: dict[str, Any]) -> None:
        """Replace the state with one produced by ``dump_state`` (snapshot restore)."""
        ...
