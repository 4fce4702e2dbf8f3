"""Group commit of COMMIT, SWEEP and ACK transactions: decide and stage each, then one write and one fsync.

Each transaction is decided against the state its predecessors in the group left (idempotency key,
expected version, the job model's ``decide``), staged (seqs assigned, records encoded, state folded),
and only acknowledged once the group's fsync has returned.

Standard library only: this module runs on VSI Python 3.10 for OpenVMS.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from vms_adapter.errors import (
    INTERNAL,
    Conflict,
    JournalError,
    JournalUnavailable,
)
from vms_adapter.server.journal import Journal, rejection
from vms_adapter.server.model import ModelRejection, NewRecord, Record
from vms_adapter.server.segments import StorageFailure

log = logging.getLogger("xpipe.journal.writer")


@dataclass(frozen=True)
class IncomingRecord:
    """A record as a client sent it; ``job_id`` None means "the commit's job"."""

    type: str
    data: dict[str, Any]
    job_id: str | None = None


def _model_failure(exc: Exception) -> JournalError:
    log.error("job model failed before any state changed", exc_info=exc)
    return JournalError(f"the job model failed: {exc!r}", code=INTERNAL)


def _ask_model(question: Callable[[], list[NewRecord]]) -> list[NewRecord]:
    """Run a pure model call; a bug in it (nothing changed yet) is an INTERNAL error, not a stop."""
    try:
        return question()
    except ModelRejection as exc:
        raise rejection(exc) from None
    except Exception as exc:
        raise _model_failure(exc) from exc


@dataclass
class CommitRequest:
    """COMMIT: idempotency check, version check, ``decide``, stage."""

    job_id: str | None
    key: str
    expected_version: int | None
    records: Sequence[IncomingRecord]

    def apply(self, journal: Journal, now: float) -> tuple[dict[str, Any], bytes]:
        state, model = journal.state, journal.model
        entry = state.keys.get(self.key)
        if entry is not None and entry.time >= now - journal.options.key_retention_s:
            return {**entry.reply, "duplicate": True}, b""
        job_id, new_job = self.job_id, None
        if job_id is None:
            job_id = new_job = state.next_job_id()
        current = state.version(job_id)
        if self.expected_version is not None and self.expected_version != current:
            raise Conflict(
                f"job {job_id} is at version {current}, not {self.expected_version}",
                current_version=current,
                details={"jobId": job_id},
            )
        incoming = [NewRecord(r.job_id or job_id, r.type, r.data) for r in self.records]
        decided = _ask_model(lambda: model.decide(job_id, incoming, now))
        if not decided:
            raise JournalError("the job model decided an empty transaction", code=INTERNAL)

        def make_reply(records: list[Record], version_after: Callable[[str], int]) -> dict[str, Any]:
            return {
                "jobId": job_id,
                "seq": records[-1].seq,
                "version": version_after(job_id),
                "duplicate": False,
                "state": model.job_state(job_id),
                "directives": model.directives_of(records, now),
            }

        _, reply, data = journal.stage(decided, now, key=self.key, new_job=new_job, make_reply=make_reply)
        assert reply is not None
        return reply, data


@dataclass
class SweepRequest:
    """SWEEP: commit what the clock implies, then hand out the due directives."""

    now: float | None
    redelivery_after_s: float

    def apply(self, journal: Journal, now: float) -> tuple[dict[str, Any], bytes]:
        model_now = now if self.now is None else self.now
        new = _ask_model(lambda: journal.model.sweep(model_now))
        seq, data = None, b""
        if new:
            records, _, data = journal.stage(new, now)
            seq = records[-1].seq
        try:
            directives = journal.model.due_directives(model_now, self.redelivery_after_s)
        except Exception as exc:
            if data:  # the sweep's records are staged and must be written: the state has moved on
                raise StorageFailure(f"due_directives failed after a staged sweep: {exc!r}") from exc
            raise _model_failure(exc) from exc
        return {"seq": seq, "records": len(new), "directives": directives}, data


@dataclass
class AckRequest:
    """ACK: commit the model's records marking these outbox entries delivered."""

    ids: Sequence[str]

    def apply(self, journal: Journal, now: float) -> tuple[dict[str, Any], bytes]:
        new = _ask_model(lambda: journal.model.acknowledge(self.ids, now))
        seq, data = None, b""
        if new:
            records, _, data = journal.stage(new, now)
            seq = records[-1].seq
        return {"acknowledged": len(self.ids), "seq": seq}, data


WriteRequest = CommitRequest | SweepRequest | AckRequest


class GroupCommit:
    """Stages transactions into the open group and makes the group durable with ONE write and ONE fsync.

    Called only from the service's loop thread, which stages every write request that arrived since
    the last fsync and then calls ``flush`` before it sends any reply of that round (reads included,
    since a read may have seen a staged transaction). Whatever arrives during the fsync forms the next
    group, so the fsync is shared by every transaction that was waiting for it, with no hand-off
    between threads on the way (the latency a lone client sees is one fsync plus the codec).

    A ``StorageFailure`` (or a model bug after state changed) is fail-stop: ``journal.failed`` is set,
    every later ``stage`` is refused ``UNAVAILABLE`` and ``on_fatal`` tells the service to exit. When
    the group itself could not be made durable ``flush`` returns False: its replies must never be
    sent as successes.
    """

    def __init__(
        self,
        journal: Journal,
        *,
        on_fatal: Callable[[str], None] | None = None,
        upkeep: Callable[[int], None] | None = None,
    ) -> None:
        self.journal = journal
        self._on_fatal = on_fatal
        self._upkeep = upkeep  # told the transaction count between groups (heap.FrozenHeap.after)
        self._buffer = bytearray()
        self._staged = 0
        self._unfinished = False  # a group was written and its between-groups work is still to do
        self.groups = 0
        self.transactions = 0

    def stage(self, request: WriteRequest) -> dict[str, Any]:
        """Decide and stage ``request`` into the open group; its reply (valid only once ``flush`` is True).

        A refusal (``JournalError``) changes nothing; a failure after state changed breaks the group.
        """
        journal = self.journal
        journal.check_open()
        try:
            reply, data = request.apply(journal, time.time())
        except JournalError:
            raise
        except StorageFailure as exc:
            self.fail_stop(str(exc))
            raise JournalUnavailable("journal storage failed; the service is stopping") from None
        except Exception as exc:  # a bug in the model after state changed: stop like a storage failure
            log.exception("staging a transaction failed")
            self.fail_stop(f"unexpected error while staging: {exc!r}")
            raise JournalUnavailable("journal storage failed; the service is stopping") from None
        self._buffer += data
        self._staged += 1
        return reply

    def flush(self) -> bool:
        """Write and fsync the open group; True once it is durable (its replies may go out).

        Call ``between_groups`` after the replies are out.
        """
        if self.journal.failed is not None:  # after a fail-stop nothing more is written
            return False
        try:
            if self._buffer:
                self.journal.segments.append(bytes(self._buffer))
        except StorageFailure as exc:
            self.fail_stop(str(exc))
            return False
        finally:
            self._buffer.clear()
        if self._staged:
            self.groups += 1
            self.transactions += self._staged
            self._unfinished = True
            self._staged = 0
        return True

    def between_groups(self) -> None:
        """Cut a full segment, take a due snapshot, then the upkeep. A failure stops the service, but the
        group before it is durable and stays acknowledged."""
        if not self._unfinished or self.journal.failed is not None:
            return
        self._unfinished = False
        try:
            self.journal.after_group()
        except StorageFailure as exc:
            self.fail_stop(str(exc))
        except Exception as exc:  # e.g. a model that cannot dump its state for a snapshot
            log.exception("between-groups work failed")
            self.fail_stop(f"unexpected error between groups: {exc!r}")
        if self._upkeep is not None and self.journal.failed is None:
            try:
                self._upkeep(self.transactions)
            except Exception:  # housekeeping: the group is durable and the journal sound, so no stop
                log.exception("the upkeep between groups failed")

    def commit_now(self, request: WriteRequest) -> dict[str, Any]:
        """Stage ``request`` alone and flush it: for tools and tests that run without the loop."""
        try:
            reply = self.stage(request)
        finally:
            durable = self.flush()
            self.between_groups()
        if not durable:
            raise JournalUnavailable("journal storage failed; the service is stopping")
        return reply

    def fail_stop(self, reason: str) -> None:
        """Fail-stop: no retry over a failed write or fsync (PostgreSQL's lesson); the service exits."""
        if self.journal.failed is not None:
            return
        self.journal.failed = reason
        log.critical("journal fail-stop, the service exits: %s", reason)
        if self._on_fatal is not None:
            self._on_fatal(reason)
