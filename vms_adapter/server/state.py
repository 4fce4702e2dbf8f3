"""What storage itself knows, folded from commit markers: seqs, job versions, job ids, idempotency keys.

It is rebuilt by replay exactly like the model's state, so the same ``apply`` runs for a live commit and
for a transaction read back at start-up. Job versions count committed transactions that touched a job;
idempotency keys map to the reply first given for them and are forgotten after the retention period.

Standard library only: this module runs on VSI Python 3.10 for OpenVMS.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from vms_adapter.server.model import Record

ALLOCATED_JOB_ID = re.compile(r"j-(\d{8,})")  # fullmatch
JSON_CHUNK = 500  # entries encoded between two pauses of a snapshot's background encoding
# Replies and counters built by the journal from decoded JSON: no cycles, so no bookkeeping looking for them.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False, check_circular=False)


def _encode_in_chunks(mapping: dict[str, Any], chunk: int) -> str:
    """JSON text of ``mapping``, encoded ``chunk`` items at a time, yielding the GIL in between."""
    pieces = []
    items = list(mapping.items())
    for start in range(0, len(items), chunk):
        pieces.append(_ENCODER.encode(dict(items[start : start + chunk]))[1:-1])
        time.sleep(0)  # let the service loop run (this encoding is a snapshot's background part)
    return "{" + ",".join(pieces) + "}"


@dataclass(frozen=True)
class KeyEntry:
    """An idempotency key's original reply and when it was committed.

    It keeps its own snapshot text once encoded: an entry never changes (a key used again gets a new
    one), and every snapshot writes every entry still retained, so without the text each snapshot would
    encode the whole index again, a cost growing with the retention period (``dump_json``).
    """

    time: float
    reply: dict[str, Any]
    _json: str | None = field(default=None, init=False, repr=False, compare=False)

    def snapshot_text(self, key: str) -> str:
        """``"key":[time,reply]`` as the snapshot writes it (an entry is only ever stored under one key).
        Safe from any thread: two threads that both encode it store the same text."""
        text = self._json
        if text is None:
            text = f"{_ENCODER.encode(key)}:{_ENCODER.encode([self.time, self.reply])}"
            object.__setattr__(self, "_json", text)  # a cache, not state: frozen stays true to the data
        return text


class JournalState:
    """Seq counter, job versions, the job-id counter and the idempotency index."""

    def __init__(self) -> None:
        self.last_seq = 0
        self.transactions = 0
        self.job_counter = 0
        self.versions: dict[str, int] = {}
        self.keys: dict[str, KeyEntry] = {}

    def version(self, job_id: str) -> int:
        return self.versions.get(job_id, 0)

    def next_job_id(self) -> str:
        """The id a new job would get: "j-" and an 8-digit counter, skipping ids already in use."""
        number = self.job_counter + 1
        while f"j-{number:08d}" in self.versions:
            number += 1
        return f"j-{number:08d}"

    def apply(self, records: Sequence[Record], marker: dict[str, Any]) -> None:
        """Fold one committed transaction (live or replayed)."""
        self.last_seq = records[-1].seq
        self.transactions += 1
        for job_id in dict.fromkeys(r.job_id for r in records):
            self.versions[job_id] = self.versions.get(job_id, 0) + 1
        new_job = marker.get("newJob")
        if isinstance(new_job, str):
            match = ALLOCATED_JOB_ID.fullmatch(new_job)
            if match:
                self.job_counter = max(self.job_counter, int(match.group(1)))
        key, reply = marker.get("key"), marker.get("reply")
        if isinstance(key, str) and isinstance(reply, dict):
            # A key used again after its retention ran out moves to the end: assigning to an existing key
            # would keep its old place at the front, and forget_keys_before would stop there.
            self.keys.pop(key, None)
            self.keys[key] = KeyEntry(float(marker["time"]), reply)

    def forget_keys_before(self, cutoff: float) -> int:
        """Drop idempotency keys committed before ``cutoff``; returns how many.

        Keys are inserted in commit order, so the stale ones are at the front: the scan stops at the
        first fresh key instead of visiting the whole index (a clock stepped back only delays pruning).
        """
        stale = []
        for key, entry in self.keys.items():
            if entry.time >= cutoff:
                break
            stale.append(key)
        for key in stale:
            del self.keys[key]
        return len(stale)

    def copy(self) -> JournalState:
        """A snapshot copy: new containers, shared (never mutated) entries; cheap enough for the writer."""
        twin = JournalState()
        twin.last_seq, twin.transactions, twin.job_counter = (
            self.last_seq,
            self.transactions,
            self.job_counter,
        )
        twin.versions = dict(self.versions)
        twin.keys = dict(self.keys)
        return twin

    def dump(self) -> dict[str, Any]:
        return {
            "lastSeq": self.last_seq,
            "transactions": self.transactions,
            "jobCounter": self.job_counter,
            "versions": self.versions,
            "keys": {key: [entry.time, entry.reply] for key, entry in self.keys.items()},
        }

    def dump_json(self, chunk: int = JSON_CHUNK) -> str:
        """``dump()`` as JSON text, built ``chunk`` entries at a time with a pause for other threads in
        between: one ``json.dumps`` of a large index would hold the GIL, and so stall every connection,
        for its whole duration."""
        head = _ENCODER.encode({"lastSeq": self.last_seq, "transactions": self.transactions})[:-1]
        parts = [head, ',"jobCounter":', str(self.job_counter), ',"versions":']
        parts.append(_encode_in_chunks(self.versions, chunk))
        parts.append(',"keys":{')
        # Each entry is encoded once in its life (snapshot_text); this joins the texts, still pausing
        # between chunks for the entries encoded here for the first time.
        items = list(self.keys.items())
        texts = []
        for start in range(0, len(items), chunk):
            texts.append(",".join(entry.snapshot_text(key) for key, entry in items[start : start + chunk]))
            time.sleep(0)
        parts.append(",".join(texts))
        parts.append("}}")
        return "".join(parts)

    def load(self, data: dict[str, Any]) -> None:
        self.last_seq = int(data["lastSeq"])
        self.transactions = int(data["transactions"])
        self.job_counter = int(data["jobCounter"])
        self.versions = {str(k): int(v) for k, v in data["versions"].items()}
        self.keys = {str(k): KeyEntry(float(v[0]), dict(v[1])) for k, v in data["keys"].items()}
