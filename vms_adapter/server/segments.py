"""Appending to segment files: one write plus one fsync per group, and cutting a new segment by size.

A failed write or fsync is fatal (``StorageFailure``): after a failed fsync the kernel may have dropped
the dirty pages and a retried fsync would report success over lost data (PostgreSQL's "fsyncgate"), so
the only safe answer is to stop and let start-up recovery read what really reached the disk.
``os.fsync`` is used rather than ``fdatasync`` because OpenVMS has only the former.

Standard library only: this module runs on VSI Python 3.10 for OpenVMS.
"""

from __future__ import annotations

import logging
import os

from vms_adapter.server import wal_format as fmt
from vms_adapter.server.reader import fsync_directory

log = logging.getLogger("xpipe.journal.segments")

DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024
_OPEN_FLAGS = os.O_WRONLY | getattr(os, "O_BINARY", 0)


class StorageFailure(Exception):
    """A write or fsync of the journal failed; the service must stop (fail-stop, never retried)."""


class SegmentWriter:
    """Owns the open tail segment; only the service loop (its group commit) calls it."""

    def __init__(self, data_dir: str, *, segment_bytes: int = DEFAULT_SEGMENT_BYTES) -> None:
        self.data_dir = data_dir
        self.segment_bytes = segment_bytes
        self.name: str | None = None
        self.offset = 0
        self._fd: int | None = None
        self.bytes_written = 0
        self.fsyncs = 0
        self.storing: str | None = None  # the segment being written or fsynced now (read by the stall watch)

    def open_tail(self, name: str | None, offset: int, next_seq: int) -> None:
        """Continue the recovered tail segment at ``offset``, or start a new one at ``next_seq``.

        The tail and its directory entry are fsynced first: a process killed between its write and its
        fsync (or between creating a segment and fsyncing the directory) leaves complete transactions,
        or the file itself, only in the page cache. Recovery reads them as committed, so they must be
        durable before a reader sees them, a retried key gets their reply as a duplicate, or new
        commits are acknowledged after them. ``OSError`` if that fails (the service does not start).
        """
        if name is None:
            self.start_segment(next_seq)
            return
        fd = os.open(os.path.join(self.data_dir, name), _OPEN_FLAGS)
        try:
            os.fsync(fd)
            fsync_directory(self.data_dir)
            os.lseek(fd, offset, os.SEEK_SET)
        except OSError:
            os.close(fd)
            raise
        self._fd, self.name, self.offset = fd, name, offset
        if offset >= self.segment_bytes:
            self.start_segment(next_seq)

    def start_segment(self, first_seq: int) -> None:
        """Create ``seg-<first_seq>.wal`` with its header, durably (file fsync, then directory fsync)."""
        self.close()
        name = fmt.segment_name(first_seq)
        path = os.path.join(self.data_dir, name)
        self.storing = name
        try:
            fd = os.open(path, _OPEN_FLAGS | os.O_CREAT | os.O_EXCL, 0o600)
            self._write_all(fd, fmt.segment_header(first_seq))
            os.fsync(fd)
            fsync_directory(self.data_dir)
        except OSError as exc:
            raise StorageFailure(f"cannot create segment {path}: {exc.strerror or exc}") from exc
        finally:
            self.storing = None
        self._fd, self.name, self.offset = fd, name, fmt.SEGMENT_HEADER_BYTES
        log.info("started segment %s", name)

    @staticmethod
    def _write_all(fd: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]

    def append(self, data: bytes) -> None:
        """Write ``data`` (whole transactions) and fsync before returning; ``StorageFailure`` if not."""
        if self._fd is None:
            raise StorageFailure("no open segment")
        self.storing = self.name
        try:
            self._write_all(self._fd, data)
            os.fsync(self._fd)
        except OSError as exc:
            raise StorageFailure(f"write or fsync of {self.name} failed: {exc.strerror or exc}") from exc
        finally:
            self.storing = None
        self.offset += len(data)
        self.bytes_written += len(data)
        self.fsyncs += 1

    def cut_if_full(self, next_seq: int) -> None:
        """Start a new segment once the current one has reached the size limit (between groups only)."""
        if self.offset >= self.segment_bytes:
            self.start_segment(next_seq)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
