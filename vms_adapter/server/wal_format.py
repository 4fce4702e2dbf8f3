"""The on-disk format of the journal's segment files, and the encoder that writes it.

(The prose description of the format is docs/journal.md, "Storage format"; this module is its code.)

A segment file ``seg-<first seq, 16 digits>.wal`` starts with a 16-byte header (``SEGMENT_MAGIC`` and the
seq of its first record) and continues with entries. An entry is a 12-byte header and a payload::

    length u32 | kind u8 | reserved u8 (0) | header check u16 | payload CRC-32 u32 | payload

The header check (low 16 bits of the CRC-32 of the first six header bytes) protects the length field by
itself: a flipped bit in a length is detected as corruption instead of looking like a torn tail. The
payload is compact UTF-8 JSON. A transaction is its RECORD entries followed by one COMMIT entry (the
commit marker), all written with one ``os.write``; a transaction without its marker never happened.

Standard library only: this module runs on VSI Python 3.10 for OpenVMS.
"""

from __future__ import annotations

import json
import re
import struct
import zlib
from collections.abc import Sequence
from typing import Any

from vms_adapter.server.model import Record

FORMAT_VERSION = 1
SEGMENT_MAGIC = b"XJWAL" + bytes([FORMAT_VERSION]) + b"\x00\x00"
SEGMENT_HEADER = struct.Struct(">8sQ")
SEGMENT_HEADER_BYTES = SEGMENT_HEADER.size  # 16
ENTRY_HEADER = struct.Struct(">IBBHI")
ENTRY_HEADER_BYTES = ENTRY_HEADER.size  # 12
KIND_RECORD = 1
KIND_COMMIT = 2
KINDS = (KIND_RECORD, KIND_COMMIT)
# Records come from frames of at most 32,000 bytes plus what the model derives; anything near this
# limit is a damaged length field, not data.
MAX_ENTRY_BYTES = 4 * 1024 * 1024

SEGMENT_NAME = re.compile(r"seg-(\d{16})\.wal")  # both fullmatch: "$" also matches before a final newline
SNAPSHOT_NAME = re.compile(r"snap-(\d{16})\.json")


def segment_name(first_seq: int) -> str:
    """ODS-5-safe name (one dot, fixed width, so names sort in seq order)."""
    return f"seg-{first_seq:016d}.wal"


def snapshot_name(last_seq: int) -> str:
    return f"snap-{last_seq:016d}.json"


def snapshot_temp_name(last_seq: int) -> str:
    return f"snap-{last_seq:016d}.tmp"


def segment_header(first_seq: int) -> bytes:
    return SEGMENT_HEADER.pack(SEGMENT_MAGIC, first_seq)


def header_check(length: int, kind: int) -> int:
    """The 16-bit check over length, kind and the reserved byte."""
    return zlib.crc32(struct.pack(">IBB", length, kind, 0)) & 0xFFFF


# The same canonical JSON as the wire protocol's (protocol.py): a COMMIT reply is encoded once, here, and
# its frame reuses the text. No circular-reference check: payloads are decoded JSON or built by the job
# model, and a cycle would still fail (RecursionError).
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False, check_circular=False)


def encode_json(value: Any) -> str:
    """``value`` as the journal writes it (compact UTF-8 JSON, no NaN)."""
    return _ENCODER.encode(value)


def encode_entry(kind: int, payload: dict[str, Any]) -> bytes:
    return _entry(kind, _ENCODER.encode(payload).encode("utf-8"))


def _entry(kind: int, data: bytes) -> bytes:
    if len(data) > MAX_ENTRY_BYTES:
        raise ValueError(f"journal entry of {len(data)} bytes exceeds {MAX_ENTRY_BYTES}")
    return ENTRY_HEADER.pack(len(data), kind, 0, header_check(len(data), kind), zlib.crc32(data)) + data


def encode_record(record: Record) -> bytes:
    """A RECORD entry; the record's time is the transaction's and lives in the commit marker."""
    payload = {"seq": record.seq, "jobId": record.job_id, "type": record.type, "data": record.data}
    return encode_entry(KIND_RECORD, payload)


def commit_marker(
    records: Sequence[Record], record_bytes: bytes, *, time: float, key: str | None, new_job: str | None
) -> dict[str, Any]:
    """The COMMIT payload but its last key, the reply (``encode_marker`` adds it): seq range, count, CRC
    of the record entries, time, idempotency key."""
    return {
        "first": records[0].seq,
        "last": records[-1].seq,
        "count": len(records),
        "crc": zlib.crc32(record_bytes),
        "time": time,
        "key": key,
        "newJob": new_job,
    }


def encode_marker(marker: dict[str, Any], reply_text: str) -> bytes:
    """The COMMIT entry: ``marker`` (from ``commit_marker``) with ``"reply"`` last, whose JSON text
    ``reply_text`` (from ``encode_json``) is spliced in as is, so that the reply is encoded only once."""
    head = _ENCODER.encode(marker)
    return _entry(KIND_COMMIT, f'{head[:-1]},"reply":{reply_text}}}'.encode())
