"""The journal: recovery at start-up, the shared state, staging of transactions, reads and snapshots.

This ties the storage modules together and follows the seam in ``model.py``: a transaction is staged
(seqs assigned, records encoded, ``model.evolve`` run, storage state folded, commit marker encoded) by
the group commit. Only the service's loop thread touches a journal (no locks): it stages a round's
transactions, reads may see them, and no reply of that round leaves before the group's fsync returned,
so no client learns of a record that is not yet durable.

Standard library only: this module runs on VSI Python 3.10 for OpenVMS.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from vms_adapter.errors import INTERNAL, NOT_FOUND, REJECTED, JournalError, JournalUnavailable, Rejected
from vms_adapter.protocol import EncodedBody
from vms_adapter.server import reader, snapshots
from vms_adapter.server import wal_format as fmt
from vms_adapter.server.model import JobModel, ModelRejection, NewRecord, Record
from vms_adapter.server.segments import DEFAULT_SEGMENT_BYTES, SegmentWriter, StorageFailure
from vms_adapter.server.state import JournalState

log = logging.getLogger("xpipe.journal")

DEFAULT_SNAPSHOT_EVERY = 10_000  # transactions between snapshots
DEFAULT_KEY_RETENTION_S = 7 * 24 * 3600.0
LOCK_FILE = "journal.lock"

ReplyBuilder = Callable[[list[Record], Callable[[str], int]], dict[str, Any]]


@dataclass(frozen=True)
class StorageOptions:
    """How the journal lays out and maintains its files."""

    segment_bytes: int = DEFAULT_SEGMENT_BYTES
    snapshot_every: int = DEFAULT_SNAPSHOT_EVERY
    key_retention_s: float = DEFAULT_KEY_RETENTION_S


def rejection(exc: ModelRejection) -> Rejected:
    """A model's refusal as the error the client gets (its code passed through, e.g. INVALID_TRANSITION)."""
    return Rejected(exc.message, code=exc.code or REJECTED, details=exc.details)


def _lock_directory(data_dir: str) -> Any:
    """Keep a second service off the same directory (POSIX only; OpenVMS has no flock)."""
    try:
        import fcntl  # noqa: PLC0415 -- absent on OpenVMS
    except ImportError:
        return None
    handle = open(os.path.join(data_dir, LOCK_FILE), "a+")  # noqa: SIM115 -- held for the process lifetime
    try:
        fcntl.lockf(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise RuntimeError(f"another journal service is using {data_dir}") from None
    return handle


class Journal:
    """State plus storage, owned by one thread (the service loop; see the module docstring)."""

    def __init__(self, data_dir: str, model: JobModel, options: StorageOptions) -> None:
        self.data_dir = data_dir
        self.model = model
        self.options = options
        self.state = JournalState()
        self.segments = SegmentWriter(data_dir, segment_bytes=options.segment_bytes)
        self.failed: str | None = None
        self.started = time.time()
        self.recovery: list[str] = []
        self.snapshot_seq = 0
        self._since_snapshot = 0
        self._snapshot_thread: threading.Thread | None = None
        self._dir_lock: Any = None

    # -- start-up -------------------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        data_dir: str,
        new_model: Callable[[], JobModel],
        options: StorageOptions,
        *,
        salvage: bool = False,
    ) -> Journal:
        """Recover the journal in ``data_dir`` (created if missing). ``CorruptJournal`` if damaged.

        ``new_model`` makes an empty model: a snapshot the model cannot load (say, written by an older
        state format) is skipped and a fresh model rebuilt by replaying the segments instead.
        """
        os.makedirs(data_dir, exist_ok=True)
        journal = cls(data_dir, new_model(), options)
        journal._dir_lock = _lock_directory(data_dir)
        snapshots.remove_temporaries(data_dir)
        snap = None if salvage else snapshots.load_newest(data_dir)
        if snap is not None:
            try:
                journal.state.load(snap.state)
                journal.model.load_state(snap.model)
                journal.snapshot_seq = snap.last_seq
                log.info("loaded snapshot at seq %d", snap.last_seq)
            except Exception as exc:
                log.warning(
                    "snapshot at seq %d cannot be loaded (%r); replaying every segment", snap.last_seq, exc
                )
                journal.state, journal.model, snap = JournalState(), new_model(), None
        result = reader.replay(
            data_dir,
            journal._replay_transaction,
            mode=reader.SALVAGE if salvage else reader.REPAIR,
            start_segment=snap.segment if snap else None,
            start_offset=snap.offset if snap else None,
            next_seq=(snap.last_seq + 1) if snap else 1,
        )
        if salvage:
            for seq, name in snapshots.list_snapshots(data_dir):
                if seq > result.last_seq:
                    os.remove(os.path.join(data_dir, name))
                    result.actions.append(f"removed snapshot {name}: it is beyond the salvaged journal")
        journal.recovery = result.actions
        journal._since_snapshot = result.transactions
        journal.state.forget_keys_before(time.time() - options.key_retention_s)
        journal.segments.open_tail(result.last_segment, result.end_offset, journal.state.last_seq + 1)
        log.info(
            "journal open: last seq %d, %d jobs, replayed %d transactions",
            journal.state.last_seq,
            len(journal.state.versions),
            result.transactions,
        )
        return journal

    def _replay_transaction(self, tx: reader.Transaction) -> None:
        for record in tx.records:
            self.model.evolve(record)
        self.state.apply(tx.records, tx.marker)

    # -- the group commit's side ----------------------------------------------------------------------

    def check_open(self) -> None:
        if self.failed is not None:
            raise JournalUnavailable(f"journal storage failed, the service is stopping: {self.failed}")

    def stage(
        self,
        new_records: Sequence[NewRecord],
        now: float,
        *,
        key: str | None = None,
        new_job: str | None = None,
        make_reply: ReplyBuilder | None = None,
    ) -> tuple[list[Record], dict[str, Any] | None, bytes]:
        """Turn decided records into a staged transaction: (records, reply, bytes to append).

        Before the first ``evolve`` a problem is an ordinary error (nothing changed); after it, a
        problem is a ``StorageFailure`` (fail-stop).
        """
        for item in new_records:
            if not (
                isinstance(item, NewRecord) and isinstance(item.type, str) and isinstance(item.data, dict)
            ):
                raise JournalError(f"the job model produced an invalid record {item!r}", code=INTERNAL)
        first = self.state.last_seq + 1
        records = [Record(first + i, r.job_id, r.type, r.data, now) for i, r in enumerate(new_records)]
        try:
            record_bytes = b"".join(fmt.encode_record(r) for r in records)
        except (TypeError, ValueError, RecursionError) as exc:  # nothing has changed yet: refuse this one
            raise JournalError(f"a record cannot be stored: {exc}", code=INTERNAL) from None
        try:
            for record in records:
                self.model.evolve(record)
            touched = {r.job_id for r in records}

            def version_after(job_id: str) -> int:
                return self.state.version(job_id) + (1 if job_id in touched else 0)

            reply = make_reply(records, version_after) if make_reply else None
            reply_text = fmt.encode_json(reply)
            marker = fmt.commit_marker(records, record_bytes, time=now, key=key, new_job=new_job)
            marker_bytes = fmt.encode_marker(marker, reply_text)
            marker["reply"] = reply
            self.state.apply(records, marker)
            if reply is not None:  # its frame reuses the marker's encoding of it
                reply = EncodedBody(reply, reply_text.encode())
        except Exception as exc:
            raise StorageFailure(
                f"state changed but the transaction could not be completed: {exc!r}"
            ) from exc
        self._since_snapshot += 1
        return records, reply, record_bytes + marker_bytes

    def after_group(self) -> None:
        """Between groups: cut the segment when full, take a snapshot when due."""
        self.segments.cut_if_full(self.state.last_seq + 1)
        if self._since_snapshot >= self.options.snapshot_every:
            self.take_snapshot(background=True)

    def take_snapshot(self, *, background: bool) -> None:
        """Serialize state now (between groups, consistent with the segment position); write it durably."""
        if self._snapshot_thread is not None and self._snapshot_thread.is_alive():
            if background:
                return  # the previous one is still being written; try again after the next group
            self._snapshot_thread.join()
        if self._since_snapshot == 0 or self.segments.name is None:
            return
        # Taken here, between groups, so that state and position agree: the model's state as JSON text
        # (whatever the model returns), storage state as shallow copies (its entries are never mutated).
        # The slow part, encoding the idempotency index and writing the file, runs in the background.
        self.state.forget_keys_before(time.time() - self.options.key_retention_s)
        last_seq, segment, offset = self.state.last_seq, self.segments.name, self.segments.offset
        model_json = self.model.snapshot_json()
        state_copy = self.state.copy()
        self._since_snapshot = 0

        def write() -> None:
            try:
                content = snapshots.encode_snapshot(
                    last_seq=last_seq,
                    segment=segment,
                    offset=offset,
                    state_json=state_copy.dump_json(),
                    model_json=model_json,
                )
                path = snapshots.write_snapshot(self.data_dir, last_seq, content)
                self.snapshot_seq = last_seq
                log.info("snapshot %s written (%d bytes)", path, len(content))
            except OSError as exc:  # the segments stay authoritative: a missing snapshot only costs replay
                log.error("snapshot at seq %d failed: %s", last_seq, exc)

        if background:
            self._snapshot_thread = threading.Thread(target=write, name="journal-snapshot", daemon=True)
            self._snapshot_thread.start()
        else:
            write()

    def close(self) -> None:
        if self._snapshot_thread is not None:
            self._snapshot_thread.join()
        self.segments.close()
        if self._dir_lock is not None:
            self._dir_lock.close()
            self._dir_lock = None

    # -- reads -------------------------------------------------------------------

    def read_job(self, job_id: str) -> dict[str, Any]:
        self.check_open()
        try:
            view = self.model.job_view(job_id)
        except ModelRejection as exc:
            raise rejection(exc) from None
        if view is None:
            raise Rejected(f"no job {job_id!r}", code=NOT_FOUND, details={"jobId": job_id})
        result = dict(view)
        result["version"] = self.state.version(job_id)
        return result

    def list_jobs(self, filters: dict[str, Any], after: str | None, limit: int) -> dict[str, Any]:
        self.check_open()
        try:
            jobs, cursor = self.model.list_jobs(filters, after, limit)
        except ModelRejection as exc:
            raise rejection(exc) from None
        page = []
        for summary in jobs:
            item = dict(summary)
            job_id = item.get("jobId")
            if isinstance(job_id, str):
                item["version"] = self.state.version(job_id)
            page.append(item)
        return {"jobs": page, "next": cursor}

    def stats(self) -> dict[str, Any]:
        self.check_open()
        return {
            "lastSeq": self.state.last_seq,
            "transactions": self.state.transactions,
            "jobs": len(self.state.versions),
            "idempotencyKeys": len(self.state.keys),
            "segment": self.segments.name,
            "segmentOffset": self.segments.offset,
            "segments": len(reader.list_segments(self.data_dir)),
            "snapshotSeq": self.snapshot_seq,
            "bytesWritten": self.segments.bytes_written,
            "fsyncs": self.segments.fsyncs,
            "uptimeS": round(time.time() - self.started, 3),
        }
