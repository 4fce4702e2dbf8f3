"""The functions' JSON log lines: the timestamp is formatted once per second but always names the
record's own time, also when records arrive out of order around a second's boundary."""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone

from xpipe.logs import JsonLines


def _record(created: float) -> logging.LogRecord:
    record = logging.makeLogRecord({"name": "xpipe.test", "levelno": logging.INFO, "levelname": "INFO"})
    record.msg = "event handled"
    record.created = created
    record.msecs = (created - int(created)) * 1000
    return record


def _expected(record: logging.LogRecord) -> str:
    second = datetime.fromtimestamp(int(record.created), timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{second}.{int(record.msecs):03d}Z"


def test_each_line_names_its_own_time_across_second_boundaries() -> None:
    lines = JsonLines("submit")
    # Threads log concurrently: a record of the previous second may follow one of the next.
    for created in (1_764_100_000.999, 1_764_100_001.0, 1_764_100_001.5, 1_764_099_999.25, 1_764_100_001.001):
        record = _record(created)
        entry = json.loads(lines.format(record))
        assert entry["ts"] == _expected(record)
        assert entry["msg"] == "event handled"


def test_a_value_json_cannot_encode_is_written_as_text() -> None:
    record = _record(1_764_100_000.5)
    record.path = datetime(2026, 11, 25, tzinfo=timezone.utc)  # an extra field, as extra= would add
    assert json.loads(JsonLines("submit").format(record))["path"] == "2026-11-25 00:00:00+00:00"
