"""Snapshots: storage state plus the model's state (``snapshot_json``) at a journal position, so restart
does not replay the whole history.

A snapshot file ``snap-<last seq>.json`` has two lines: a header ``{"format":1,"length":N,"crc32":C}``
and the body (N bytes of JSON: position, storage state, model state) whose CRC-32 is C. It is written
to ``snap-<last seq>.tmp``, fsynced, renamed, and the directory fsynced, so a crash leaves either the
old set or the new one. A snapshot that does not check out is skipped (an older one, or a full replay,
takes its place): the segments are the system of record; snapshots are only a shortcut.

Standard library only: this module runs on VSI Python 3.10 for OpenVMS.
"""

from __future__ import annotations

import json
import logging
import os
import zlib
from dataclasses import dataclass
from typing import Any

from vms_adapter.server import wal_format as fmt
from vms_adapter.server.reader import fsync_directory

log = logging.getLogger("xpipe.journal.snapshots")

SNAPSHOT_FORMAT = 1
KEEP_SNAPSHOTS = 2


@dataclass(frozen=True)
class Snapshot:
    """A decoded snapshot: replay continues in ``segment`` at ``offset`` with seq ``last_seq + 1``."""

    last_seq: int
    segment: str
    offset: int
    state: dict[str, Any]
    model: dict[str, Any]


_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def encode_snapshot(*, last_seq: int, segment: str, offset: int, state_json: str, model_json: str) -> bytes:
    """The snapshot file from its parts' JSON (``JournalState.dump_json``, the model's ``snapshot_json``)."""
    head = _ENCODER.encode({"lastSeq": last_seq, "segment": segment, "offset": offset})[:-1]
    body = (head + ',"state":' + state_json + ',"model":' + model_json + "}").encode("utf-8")
    header = json.dumps({"format": SNAPSHOT_FORMAT, "length": len(body), "crc32": zlib.crc32(body)})
    return header.encode("ascii") + b"\n" + body + b"\n"


def decode_snapshot(data: bytes) -> Snapshot:
    """Parse and check a snapshot file's bytes; ``ValueError`` says what is wrong."""
    head, sep, rest = data.partition(b"\n")
    if not sep:
        raise ValueError("no header line")
    header = json.loads(head)
    if not isinstance(header, dict) or header.get("format") != SNAPSHOT_FORMAT:
        raise ValueError(f"unknown snapshot format {header!r}")
    body = rest[: header["length"]]
    if len(body) != header["length"] or zlib.crc32(body) != header["crc32"]:
        raise ValueError("snapshot body length or CRC-32 does not match its header")
    content = json.loads(body)
    return Snapshot(
        last_seq=int(content["lastSeq"]),
        segment=str(content["segment"]),
        offset=int(content["offset"]),
        state=dict(content["state"]),
        model=dict(content["model"]),
    )


def list_snapshots(data_dir: str) -> list[tuple[int, str]]:
    """(last seq, file name) of every snapshot, newest first."""
    found = []
    for name in os.listdir(data_dir):
        match = fmt.SNAPSHOT_NAME.fullmatch(name)
        if match:
            found.append((int(match.group(1)), name))
    return sorted(found, reverse=True)


def write_snapshot(data_dir: str, last_seq: int, content: bytes) -> str:
    """Durably write a snapshot (temp file, fsync, rename, directory fsync); prune older ones."""
    temp = os.path.join(data_dir, fmt.snapshot_temp_name(last_seq))
    final = os.path.join(data_dir, fmt.snapshot_name(last_seq))
    with open(temp, "wb") as handle:
        handle.write(content)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temp, final)
    fsync_directory(data_dir)
    for _, name in list_snapshots(data_dir)[KEEP_SNAPSHOTS:]:
        os.remove(os.path.join(data_dir, name))
    return final


def load_newest(data_dir: str) -> Snapshot | None:
    """The newest snapshot that checks out, else None."""
    for seq, name in list_snapshots(data_dir):
        path = os.path.join(data_dir, name)
        try:
            with open(path, "rb") as handle:
                snapshot = decode_snapshot(handle.read())
            if snapshot.last_seq != seq:
                raise ValueError("snapshot seq does not match its file name")
            segment = os.path.join(data_dir, snapshot.segment)
            if not os.path.exists(segment) or os.path.getsize(segment) < snapshot.offset:
                raise ValueError(f"segment {snapshot.segment} does not reach offset {snapshot.offset}")
            return snapshot
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring snapshot %s: %s", path, exc)
    return None


def remove_temporaries(data_dir: str) -> None:
    """Delete half-written snapshot temp files left by a crash."""
    for name in os.listdir(data_dir):
        if name.startswith("snap-") and name.endswith(".tmp"):
            os.remove(os.path.join(data_dir, name))
