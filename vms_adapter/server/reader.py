"""Reading segment files back: decoding, torn-tail repair, corruption detection and salvage.

The rule that tells the two kinds of damage apart (docs/journal.md, "Recovery"):

- a *torn tail* is what a crash leaves at the end of the LAST segment: an incomplete entry, a transaction
  without its commit marker, or a zero-filled tail (also zeroed sectors from inside the last entry on).
  Nothing in it was acknowledged (acknowledgements wait for fsync of the whole write), so start-up cuts
  it off and says what it cut;
- anything else is *corruption*: a complete entry whose CRC or header check fails, an entry that does
  not follow the sequence, a segment other than the last one ending inside a transaction. Start-up
  refuses with the file name and byte offset; ``--salvage`` keeps the sound prefix and moves the rest
  aside into files named ``salvage-...bad``.

``scan_segment`` works on bytes so that tests (and ``verify``) can check every truncation offset quickly.

Standard library only: this module runs on VSI Python 3.10 for OpenVMS.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from vms_adapter.server import wal_format as fmt
from vms_adapter.server.model import Record

log = logging.getLogger("xpipe.journal.reader")

SECTOR_BYTES = 512  # the unit in which a disk persists a write, or fails to


class CorruptJournal(Exception):
    """The journal is damaged before its end; names the file and byte offset."""

    def __init__(self, path: str, offset: int, reason: str) -> None:
        super().__init__(f"journal corrupt: {path} at byte offset {offset}: {reason}")
        self.path = path
        self.offset = offset
        self.reason = reason


@dataclass(frozen=True)
class Transaction:
    """A committed transaction as read back: its records (with the commit time) and its marker."""

    records: tuple[Record, ...]
    marker: dict[str, Any]
    segment: str
    end_offset: int

    @property
    def last_seq(self) -> int:
        return self.records[-1].seq


@dataclass(frozen=True)
class Damage:
    """Where a scan stopped: ``torn`` damage may be cut off, the other kind is corruption."""

    offset: int
    reason: str
    torn: bool


@dataclass
class SegmentScan:
    """The result of scanning one segment's bytes."""

    name: str
    first_seq: int
    transactions: list[Transaction] = field(default_factory=list)
    good_end: int = 0  # offset just after the last complete transaction (the sound prefix)
    damage: Damage | None = None


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_record(payload: dict[str, Any], expected_seq: int) -> str | None:
    if not _is_int(payload.get("seq")) or payload["seq"] != expected_seq:
        return f"record seq {payload.get('seq')!r}, expected {expected_seq}"
    if not isinstance(payload.get("jobId"), str) or not isinstance(payload.get("type"), str):
        return "record without a string jobId and type"
    if not isinstance(payload.get("data"), dict):
        return "record data is not an object"
    return None


def _check_marker(marker: dict[str, Any], pending: list[Record], records_crc: int) -> str | None:
    if not pending:
        return "commit marker without records"
    if marker.get("count") != len(pending):
        return f"commit marker counts {marker.get('count')!r} records, found {len(pending)}"
    if marker.get("first") != pending[0].seq or marker.get("last") != pending[-1].seq:
        return "commit marker seq range does not match its records"
    if marker.get("crc") != records_crc:
        return "commit marker CRC does not match its records"
    if not isinstance(marker.get("time"), (int, float)) or isinstance(marker.get("time"), bool):
        return "commit marker without a time"
    if marker.get("key") is not None and not isinstance(marker.get("key"), str):
        return "commit marker key is not a string"
    if marker.get("reply") is not None and not isinstance(marker.get("reply"), dict):
        return "commit marker reply is not an object"
    if marker.get("newJob") is not None and not isinstance(marker.get("newJob"), str):
        return "commit marker newJob is not a string"
    return None


def _zeroed_from(data: bytes) -> int:
    """Where the zero-filled sectors at the end of ``data`` begin (``len(data)`` if there are none).

    A power loss can leave the last sectors of an unfinished write as zeros inside the file's new size.
    An entry never ends in a NUL byte (its payload is JSON text), so an entry whose bytes run into a
    sector-aligned zero suffix was cut off by the crash, not damaged later: that is a torn tail. Damage
    that anything non-zero follows stays corruption."""
    start = -(-len(data.rstrip(b"\0")) // SECTOR_BYTES) * SECTOR_BYTES
    return min(start, len(data))


def scan_segment(
    data: bytes, name: str, *, start_offset: int | None = None, next_seq: int | None = None
) -> SegmentScan:
    """Decode ``data`` (a segment file's bytes) from ``start_offset`` (default: just after the header).

    ``next_seq`` is the seq the first record read must have (default: the segment's first seq).
    Never raises for bad data: the scan stops at the first damage and reports it.
    """
    match = fmt.SEGMENT_NAME.fullmatch(name)
    scan = SegmentScan(name=name, first_seq=int(match.group(1)) if match else 0)
    if len(data) < fmt.SEGMENT_HEADER_BYTES:
        scan.damage = Damage(0, f"segment header is incomplete ({len(data)} of 16 bytes)", torn=True)
        return scan
    magic, first_seq = fmt.SEGMENT_HEADER.unpack_from(data, 0)
    if magic != fmt.SEGMENT_MAGIC:
        if data.count(0) == len(data):  # created, then lost to a crash before its header reached the disk
            scan.damage = Damage(0, f"segment is {len(data)} zero bytes", torn=True)
        else:
            scan.damage = Damage(0, f"bad segment magic {magic!r}", torn=False)
        return scan
    if match is None or first_seq != scan.first_seq:
        scan.damage = Damage(0, f"segment header says first seq {first_seq}, the name disagrees", torn=False)
        return scan
    offset = fmt.SEGMENT_HEADER_BYTES if start_offset is None else start_offset
    expected = first_seq if next_seq is None else next_seq
    scan.good_end = offset
    pending: list[Record] = []
    pending_start = offset
    size = len(data)
    while offset < size:
        if size - offset < fmt.ENTRY_HEADER_BYTES:
            scan.damage = Damage(scan.good_end, f"entry header at {offset} is incomplete", torn=True)
            return scan
        length, kind, reserved, check, crc = fmt.ENTRY_HEADER.unpack_from(data, offset)
        if check != fmt.header_check(length, kind) or reserved != 0 or kind not in fmt.KINDS:
            if data.count(0, offset) == size - offset:
                scan.damage = Damage(scan.good_end, f"zero-filled tail from {offset}", torn=True)
            elif _zeroed_from(data) < offset + fmt.ENTRY_HEADER_BYTES:
                reason = f"entry header at {offset} ends in zero-filled sectors that run to the end"
                scan.damage = Damage(scan.good_end, reason, torn=True)
            else:
                scan.damage = Damage(offset, "entry header check failed", torn=False)
            return scan
        if length > fmt.MAX_ENTRY_BYTES:
            scan.damage = Damage(offset, f"entry length {length} exceeds {fmt.MAX_ENTRY_BYTES}", torn=False)
            return scan
        end = offset + fmt.ENTRY_HEADER_BYTES + length
        if end > size:
            reason = f"entry at {offset} is incomplete ({size - offset} of {end - offset} bytes)"
            scan.damage = Damage(scan.good_end, reason, torn=True)
            return scan
        payload_bytes = data[offset + fmt.ENTRY_HEADER_BYTES : end]
        if zlib.crc32(payload_bytes) != crc:
            if _zeroed_from(data) < end:
                reason = f"entry at {offset} ends in zero-filled sectors that run to the end"
                scan.damage = Damage(scan.good_end, reason, torn=True)
            else:
                scan.damage = Damage(offset, "entry payload CRC-32 mismatch", torn=False)
            return scan
        try:
            payload = json.loads(payload_bytes.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            payload = None
        if not isinstance(payload, dict):
            scan.damage = Damage(offset, "entry payload is not a JSON object", torn=False)
            return scan
        if kind == fmt.KIND_RECORD:
            problem = _check_record(payload, expected + len(pending))
            if problem:
                scan.damage = Damage(offset, problem, torn=False)
                return scan
            pending.append(Record(payload["seq"], payload["jobId"], payload["type"], payload["data"], 0.0))
        else:
            problem = _check_marker(payload, pending, zlib.crc32(data[pending_start:offset]))
            if problem:
                scan.damage = Damage(offset, problem, torn=False)
                return scan
            time = float(payload["time"])
            records = tuple(Record(r.seq, r.job_id, r.type, r.data, time) for r in pending)
            scan.transactions.append(Transaction(records, payload, name, end))
            expected = records[-1].seq + 1
            pending = []
            pending_start = end
            scan.good_end = end
        offset = end
    if pending:
        scan.damage = Damage(
            scan.good_end, f"transaction from {pending_start} has no commit marker", torn=True
        )
    return scan


def list_segments(data_dir: str) -> list[str]:
    """Segment file names in seq order."""
    return sorted(name for name in os.listdir(data_dir) if fmt.SEGMENT_NAME.fullmatch(name))


# fsync of a directory: errors that mean "not supported here", which PostgreSQL ignores too. Any other
# error (EIO, ENOSPC) means the entry may not be durable and is raised: swallowing it would let commits
# be acknowledged into a segment file whose directory entry a crash can still lose.
_DIRECTORY_FSYNC_UNSUPPORTED = frozenset(
    getattr(errno, name)
    for name in ("EINVAL", "EBADF", "EACCES", "EISDIR", "ENOTSUP", "EOPNOTSUPP")
    if hasattr(errno, name)  # not every platform (OpenVMS) defines all of them
)


def fsync_directory(path: str) -> None:
    """Make a create, rename or delete in ``path`` durable (a no-op where directories cannot be opened
    or fsynced); ``OSError`` if the fsync itself fails."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return  # OpenVMS: directory entries are written through by the file system
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in _DIRECTORY_FSYNC_UNSUPPORTED:
            raise
    finally:
        os.close(fd)


def _read(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


def _truncate(path: str, size: int) -> None:
    fd = os.open(path, os.O_RDWR | getattr(os, "O_BINARY", 0))
    try:
        os.ftruncate(fd, size)
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class ReplayResult:
    """Where the journal ends after a replay, and what was repaired or moved aside on the way."""

    last_seq: int
    last_segment: str | None
    end_offset: int
    transactions: int = 0
    actions: list[str] = field(default_factory=list)
    torn: list[str] = field(default_factory=list)  # read-only mode: torn tails seen but not cut


REPAIR = "repair"  # start-up: cut a torn tail, refuse corruption
SALVAGE = "salvage"  # start-up with --salvage: also keep the sound prefix of a corrupt journal
READ_ONLY = "read-only"  # verify and dump: change nothing


def _unused_name(data_dir: str, stem: str) -> str:
    """``<stem>.bad``, or ``<stem>-2.bad`` and so on when an earlier salvage left that name: damage that
    recurs at the same place (a bad block) must not overwrite what was moved aside the first time."""
    name, copy = f"{stem}.bad", 1
    while os.path.exists(os.path.join(data_dir, name)):
        copy += 1
        name = f"{stem}-{copy}.bad"
    return name


def _move_aside(data_dir: str, name: str, data: bytes, offset: int) -> str:
    aside = _unused_name(data_dir, f"salvage-{name.split('.', maxsplit=1)[0]}-at-{offset:012d}")
    path = os.path.join(data_dir, aside)
    with open(path, "wb") as handle:
        handle.write(data[offset:])
        handle.flush()
        os.fsync(handle.fileno())
    fsync_directory(data_dir)  # the copy must be durable before the segment is cut
    return aside


def replay(
    data_dir: str,
    on_transaction: Callable[[Transaction], None],
    *,
    mode: str = REPAIR,
    start_segment: str | None = None,
    start_offset: int | None = None,
    next_seq: int = 1,
) -> ReplayResult:
    """Feed every committed transaction from the given position on to ``on_transaction``, in seq order.

    Raises ``CorruptJournal`` on corruption unless ``mode`` is ``SALVAGE``.
    """
    names = list_segments(data_dir)
    if start_segment is not None:
        if start_segment not in names:
            raise CorruptJournal(
                os.path.join(data_dir, start_segment), 0, "segment named by the snapshot is missing"
            )
        names = names[names.index(start_segment) :]
    result = ReplayResult(last_seq=next_seq - 1, last_segment=None, end_offset=0)
    for index, name in enumerate(names):
        path = os.path.join(data_dir, name)
        is_last = index == len(names) - 1
        data = _read(path)
        first = start_offset if name == start_segment else None
        scan = scan_segment(data, name, start_offset=first, next_seq=result.last_seq + 1)
        if first is None and scan.damage is None and scan.first_seq != result.last_seq + 1 and index > 0:
            scan.damage = Damage(
                0, f"segment starts at seq {scan.first_seq}, expected {result.last_seq + 1}", False
            )
            scan.transactions, scan.good_end = [], 0
        for tx in scan.transactions:
            on_transaction(tx)
            result.transactions += 1
            result.last_seq = tx.last_seq
        damage = scan.damage
        if damage is not None and damage.torn and not is_last:
            damage = Damage(damage.offset, f"{damage.reason}, but a later segment follows", torn=False)
        if damage is None:
            result.last_segment, result.end_offset = name, len(data)
            continue
        if damage.torn:
            cut = len(data) - damage.offset
            if mode == READ_ONLY:
                result.torn.append(
                    f"{path}: torn tail of {cut} bytes at offset {damage.offset} ({damage.reason})"
                )
                result.last_segment, result.end_offset = name, damage.offset
                continue
            if damage.offset < fmt.SEGMENT_HEADER_BYTES:
                os.remove(path)
                fsync_directory(data_dir)
                result.actions.append(f"removed {path}: {damage.reason}")
                log.warning("removed %s: %s", path, damage.reason)
                continue
            _truncate(path, damage.offset)
            message = f"cut torn tail of {cut} bytes from {path} at offset {damage.offset}: {damage.reason}"
            result.actions.append(message)
            log.warning("%s", message)
            result.last_segment, result.end_offset = name, damage.offset
            continue
        if mode != SALVAGE:
            raise CorruptJournal(path, damage.offset, damage.reason)
        aside = _move_aside(data_dir, name, data, scan.good_end)
        message = (
            f"salvaged {path}: corruption at offset {damage.offset} ({damage.reason}); kept the sound prefix "
            f"of {scan.good_end} bytes, moved {len(data) - scan.good_end} bytes to {aside}"
        )
        if scan.good_end < fmt.SEGMENT_HEADER_BYTES:
            os.remove(path)
        else:
            _truncate(path, scan.good_end)
            result.last_segment, result.end_offset = name, scan.good_end
        result.actions.append(message)
        log.error("%s", message)
        for later in names[index + 1 :]:
            target = _unused_name(data_dir, f"salvage-{later.split('.')[0]}")
            os.replace(os.path.join(data_dir, later), os.path.join(data_dir, target))
            result.actions.append(f"moved {later} aside to {target} (it follows the corruption)")
            log.error("moved %s aside to %s", later, target)
        fsync_directory(data_dir)
        break
    return result
