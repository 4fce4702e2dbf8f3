"""The single writer thread: group commit of COMMIT, SWEEP and ACK transactions.

Connection threads queue a request and wait. The writer takes everything queued (up to
``MAX_GROUP``), and under the journal lock decides and stages each transaction in turn (so each is
decided against the state its predecessors left), appends the whole group with ONE write and ONE
fsync, releases the lock and only then answers. Whatever arrives during that fsync forms the next
group, so the fsync cost is shared by every transaction waiting for it. When fewer transactions are
waiting than the previous group had, the writer lingers for a fraction of an fsync so that the clients
just answered can join (like PostgreSQL's ``commit_delay``, but adaptive and off for a lone client).

A ``StorageFailure`` stops the writer for good: every waiting and later request is answered
``UNAVAILABLE`` and ``on_fatal`` tells the service to exit.

Standard library only: this module runs on VSI Python 3.10 for OpenVMS.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from vms_adapter.errors import (
    INTERNAL,
    OVERLOADED,
    Conflict,
    JournalError,
    JournalUnavailable,
)
from vms_adapter.server.journal import Journal, rejection
from vms_adapter.server.model import ModelRejection, NewRecord, Record
from vms_adapter.server.segments import StorageFailure

log = logging.getLogger("xpipe.journal.writer")

MAX_GROUP = 512  # transactions per write+fsync; bounds the latency a group adds
LINGER_FRACTION = 0.5  # of the last group's write+fsync time, at most MAX_LINGER_S
MAX_LINGER_S = 0.002


@dataclass(frozen=True)
class IncomingRecord:
    """A record as a client sent it; ``job_id`` None means "the commit's job"."""

    type: str
    data: dict[str, Any]
    job_id: str | None = None


class Pending:
    """A queued request's outcome, set once by the writer thread.

    A plain lock, held from creation until the outcome is set, is the cheapest hand-off CPython has:
    the waiting connection thread wakes directly on its release.
    """

    __slots__ = ("_done", "_error", "_result")

    def __init__(self) -> None:
        self._done = threading.Lock()
        self._done.acquire()
        self._result: dict[str, Any] | None = None
        self._error: BaseException | None = None

    def resolve(self, result: dict[str, Any] | None, error: BaseException | None) -> None:
        self._result, self._error = result, error
        self._done.release()

    def wait(self, timeout_s: float) -> dict[str, Any]:
        if not self._done.acquire(timeout=timeout_s):
            raise JournalUnavailable(f"the journal did not complete the request within {timeout_s:g} s")
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result


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
    pending: Pending = field(default_factory=Pending)

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
    pending: Pending = field(default_factory=Pending)

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
    pending: Pending = field(default_factory=Pending)

    def apply(self, journal: Journal, now: float) -> tuple[dict[str, Any], bytes]:
        new = _ask_model(lambda: journal.model.acknowledge(self.ids, now))
        seq, data = None, b""
        if new:
            records, _, data = journal.stage(new, now)
            seq = records[-1].seq
        return {"acknowledged": len(self.ids), "seq": seq}, data


WriteRequest = CommitRequest | SweepRequest | AckRequest
_STOP = object()


class CommitWriter:
    """Owns the queue and the writer thread."""

    def __init__(
        self,
        journal: Journal,
        *,
        max_queue: int = 10_000,
        on_fatal: Callable[[str], None] | None = None,
    ) -> None:
        self.journal = journal
        self._items: collections.deque[object] = collections.deque()
        self._ready = threading.Condition(threading.Lock())
        self._max_queue = max_queue
        self._on_fatal = on_fatal
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="journal-writer", daemon=True)
        self._expected = 1  # transactions in the previous group: the clients it released come back
        self._linger_s = 0.0
        self.groups = 0
        self.transactions = 0

    def start(self) -> None:
        self._thread.start()

    def submit(self, request: WriteRequest, timeout_s: float) -> dict[str, Any]:
        """Queue ``request`` and wait for its durable outcome (or its error)."""
        with self._ready:
            if self._stopping:
                raise JournalUnavailable("the journal service is stopping")
            self.journal.check_open()
            if len(self._items) >= self._max_queue:
                raise JournalUnavailable("the commit queue is full", code=OVERLOADED)
            self._items.append(request)
            # Wake the writer only when it can act: it waits for a first item, or lingers for a full group.
            if len(self._items) == 1 or len(self._items) >= self._expected:
                self._ready.notify()
        return request.pending.wait(timeout_s)

    def stop(self, timeout_s: float = 30.0) -> bool:
        """Finish everything already queued, then stop the thread; False if it is still running after
        ``timeout_s`` (stuck in a write or fsync): then nothing else may touch the journal's state or
        files, since the writer may still change them."""
        with self._ready:
            if not self._stopping:
                self._stopping = True
                self._items.append(_STOP)
                self._ready.notify()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def _next_group(self) -> tuple[list[WriteRequest], bool]:
        """Wait for work; then (adaptive group commit) linger briefly while fewer transactions are queued
        than the previous group had, since the clients that group released are about to send their next
        ones. The linger is a fraction of the last write+fsync time, so it never costs more than a part
        of the fsync it saves; a lone client never waits (its previous group had one transaction)."""
        with self._ready:
            while not self._items:
                self._ready.wait()
            if len(self._items) < self._expected and self._linger_s > 0 and _STOP not in self._items:
                self._ready.wait_for(lambda: len(self._items) >= self._expected, timeout=self._linger_s)
            group: list[WriteRequest] = []
            while self._items and len(group) < MAX_GROUP:
                item = self._items.popleft()
                if item is _STOP:
                    return group, True
                group.append(item)  # type: ignore[arg-type]
            return group, False

    def _run(self) -> None:
        while True:
            group, stop = self._next_group()
            if group:
                started = time.monotonic()
                if not self._write_group(group):
                    return
                self._expected = len(group)
                self._linger_s = min(MAX_LINGER_S, LINGER_FRACTION * (time.monotonic() - started))
            if stop:
                return

    def _write_group(self, group: list[WriteRequest]) -> bool:
        journal = self.journal
        outcomes: list[tuple[dict[str, Any] | None, BaseException | None]] = []
        buffer = bytearray()
        now = time.time()
        with journal.lock:
            try:
                for request in group:
                    try:
                        reply, data = request.apply(journal, now)
                    except JournalError as exc:
                        outcomes.append((None, exc))
                        continue
                    buffer += data
                    outcomes.append((reply, None))
                if buffer:
                    journal.segments.append(bytes(buffer))
            except StorageFailure as exc:
                self._fail(group, str(exc))
                return False
            except Exception as exc:  # a bug in the model after state changed: stop like a storage failure
                log.exception("writer thread failed")
                self._fail(group, f"unexpected writer error: {exc!r}")
                return False
        for request, (result, error) in zip(group, outcomes, strict=True):
            request.pending.resolve(result, error)
        self.groups += 1
        self.transactions += len(group)
        try:
            journal.after_group()
        except StorageFailure as exc:
            self._fail([], str(exc))
            return False
        except Exception as exc:  # the writer must never die silently: later requests would hang
            log.exception("writer thread failed between groups")
            self._fail([], f"unexpected writer error between groups: {exc!r}")
            return False
        return True

    def _fail(self, group: list[WriteRequest], reason: str) -> None:
        """Fail-stop: no retry over a failed write or fsync; everyone waiting is told, the service exits."""
        self.journal.failed = reason
        log.critical("journal storage failed, stopping: %s", reason)
        error = JournalUnavailable("journal storage failed; the service is stopping")
        for request in group:
            request.pending.resolve(None, error)
        with self._ready:
            self._stopping = True
            left, self._items = list(self._items), collections.deque()
        for item in left:
            if item is not _STOP:
                item.pending.resolve(None, error)  # type: ignore[attr-defined]
        if self._on_fatal is not None:
            self._on_fatal(reason)
