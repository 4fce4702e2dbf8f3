"""Structured logs of the functions: one JSON object per line, tagged with the job and the CloudEvent.

A function serves many requests on gunicorn threads at once; the CloudEvent id and the job id being
worked on are kept in context variables, so every line written while handling a request names them
(``eventId``, ``jobId``) without threading them through every call. Facts a handler learns on the way
(``bind_fields``: the template, the journal seq) join the request's closing ``event handled`` line
instead of taking a line of their own: a log line costs about 15 us of CPU, a noticeable share of a
request. Log collectors in the cluster and ``xpipe up`` locally parse these lines.

Secrets: tokens and the journal secret never reach a log call (the functions log the caller's token
*name* only); as a second line of defence any ``X-Token-XPipe`` value that slips into a message is masked.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import sys
import time
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

_event_id: ContextVar[str | None] = ContextVar("xpipe_event_id", default=None)
_job_id: ContextVar[str | None] = ContextVar("xpipe_job_id", default=None)
_fields: ContextVar[dict[str, Any] | None] = ContextVar("xpipe_fields", default=None)
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}
_TOKEN_HEADER = re.compile(r"(x-token-xpipe['\"]?\s*[:=]\s*['\"]?)[^\s'\",}]+", re.IGNORECASE)


class JsonLines(logging.Formatter):
    """``{"ts", "level", "logger", "msg", "function", "eventId", "jobId", <extra fields>}`` on one line."""

    def __init__(self, function: str) -> None:
        super().__init__()
        self.function = function

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
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
        return json.dumps(entry, default=str)


def configure(function: str, level: str = "INFO") -> None:
    """Send every log record of the process to stderr as JSON lines naming ``function``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLines(function))
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
