"""Structured logs of the functions: one JSON object per line, tagged with the job and the CloudEvent.

A function serves many requests on gunicorn threads at once; the CloudEvent id and the job id being
worked on are kept in context variables, so every line written while handling a request names them
(``eventId``, ``jobId``) without threading them through every call. Facts a handler learns on the way
(``bind_fields``: the template, the journal seq) join the request's closing ``event handled`` line
instead of taking a line of their own: a log line costs about 13 us of CPU, a noticeable share of a
request. Log collectors in the cluster and ``xpipe up`` locally parse these lines.

Secrets: tokens and the journal secret never reach a log call (the functions log the caller's token
*name* only); as a second line of defence any ``X-Token-XPipe`` value that slips into a message is masked.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any, TextIO

_event_id: ContextVar[str | None] = ContextVar("xpipe_event_id", default=None)
_job_id: ContextVar[str | None] = ContextVar("xpipe_job_id", default=None)
_fields: ContextVar[dict[str, Any] | None] = ContextVar("xpipe_fields", default=None)
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}
_TOKEN_HEADER = re.compile(r"(x-token-xpipe['\"]?\s*[:=]\s*['\"]?)[^\s'\",}]+", re.IGNORECASE)
# Built once: json.dumps with an argument such as default= builds a new encoder on every call.
_ENCODER = json.JSONEncoder(default=str)


class JsonLines(logging.Formatter):
    """``{"ts", "level", "logger", "msg", "function", "eventId", "jobId", <extra fields>}`` on one line."""

    def __init__(self, function: str) -> None:
        super().__init__()
        self.function = function
        self._second: tuple[int, str] = (-1, "")  # one attribute: threads read it without a lock

    def _timestamp(self, record: logging.LogRecord) -> str:
        # Lines come many to a second: the date and time are formatted once per second.
        second, text = self._second
        if int(record.created) != second:
            second = int(record.created)
            text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = (second, text)
        return f"{text}.{int(record.msecs):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": self._timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": _TOKEN_HEADER.sub(r"\1***", record.getMessage()),
            "function": self.function,
        }
        event_id, job_id = _event_id.get(), _job_id.get()
        if event_id is not None:
            entry["eventId"] = event_id
        if job_id is not None:
            entry["jobId"] = job_id
        fields = _fields.get()
        if fields:
            entry.update(fields)
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return _ENCODER.encode(entry)


# How long an INFO line may wait to be written with others. A WARNING or ERROR line is written at once.
BATCH_SECONDS = 0.05


class BatchedLines(logging.Handler):
    """Writes lines to a stream in batches, from a thread of its own.

    One write per line cost every request a system call, during which gunicorn's other threads took the
    interpreter lock: about 7% of submit's throughput at INFO. Here a line is formatted by the thread
    that logs it and queued; the writer thread wakes when the queue fills from empty, waits
    ``BATCH_SECONDS`` for more, and writes them all at once. A line at WARNING or above is written at
    once, with every line before it, so the order is kept and a failing process shows why before it
    dies. At exit the queue is written out; a process killed outright loses at most the last
    ``BATCH_SECONDS`` of INFO lines.
    """

    def __init__(self, stream: TextIO, batch_seconds: float = BATCH_SECONDS) -> None:
        super().__init__()
        self._stream = stream
        self._batch_seconds = batch_seconds
        self._pending: list[str] = []
        self._queued = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()  # at exit, logging.shutdown flushes every handler: the queue goes out

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + "\n"
        except Exception:
            self.handleError(record)
            return
        # handle() holds self.lock around emit: the queue and the writes are serialised by it.
        self._adopt_fork()
        self._pending.append(line)
        if record.levelno >= logging.WARNING:
            self._write_pending()
        elif len(self._pending) == 1:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="xpipe-log-writer", daemon=True)
                self._thread.start()
            self._queued.set()

    def _adopt_fork(self) -> None:
        """In a forked child (gunicorn's worker) start afresh: the parent writes the lines it queued."""
        if self._pid != os.getpid():
            self._pid, self._pending, self._thread = os.getpid(), [], None
            self._queued = threading.Event()  # the parent's writer may have held its lock at the fork

    def _run(self) -> None:
        while True:
            self._queued.wait()
            time.sleep(self._batch_seconds)  # the batching window: lines logged meanwhile go out together
            self.flush()

    def flush(self) -> None:
        """Write every queued line now (the writer thread, a WARNING, and exit call this)."""
        with self.lock or contextlib.nullcontext():  # Handler.lock is made in __init__; typed optional
            self._adopt_fork()
            self._queued.clear()
            self._write_pending()

    def _write_pending(self) -> None:
        if not self._pending:
            return
        text, self._pending = "".join(self._pending), []
        try:
            self._stream.write(text)
            self._stream.flush()
        except (OSError, ValueError):  # stderr closed or gone: logging must never fail a request
            pass


def configure(function: str, level: str = "INFO") -> None:
    """Send every log record of the process to stderr as JSON lines naming ``function``."""
    handler = BatchedLines(sys.stderr)
    handler.setFormatter(JsonLines(function))
    # What JsonLines never writes is not gathered either (the logging HOWTO's "Optimization"): finding
    # the caller alone walks gunicorn's and Flask's frames on every line. With the encoder built once
    # and the time formatted once a second, a line costs about 13 us instead of 16-24.
    logging._srcfile = None  # the HOWTO's documented switch, though its name is private
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # gunicorn's own error log would otherwise interleave plain-text lines with ours.
    for name in ("gunicorn.error", "gunicorn.access"):
        logging.getLogger(name).handlers[:] = [handler]


@contextlib.contextmanager
def event_context(event_id: str | None) -> Iterator[None]:
    """Tag the log lines written inside this block with the CloudEvent id being handled."""
    event_token = _event_id.set(event_id)
    job_token = _job_id.set(None)
    fields_token = _fields.set(None)
    try:
        yield
    finally:
        _fields.reset(fields_token)
        _job_id.reset(job_token)
        _event_id.reset(event_token)


def bind_event(event_id: str | None) -> None:
    """From now on (until the event's block ends) the log lines name this CloudEvent id."""
    _event_id.set(event_id)


def bind_job(job_id: str | None) -> None:
    """From now on (until the event's block ends) the log lines name this job."""
    _job_id.set(job_id)


def bind_fields(**fields: Any) -> None:
    """From now on (until the event's block ends) the log lines carry these fields too."""
    _fields.set({**(_fields.get() or {}), **fields})
