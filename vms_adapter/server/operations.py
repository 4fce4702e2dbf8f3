"""Operation dispatch: validate a request body precisely, run it, build the reply body.

Every check happens before anything is staged, so a bad request changes nothing. Unknown keys are
refused (a misspelt ``expectedVersion`` must not silently skip the concurrency check). Errors are the
typed exceptions of ``vms_adapter.errors``; the TCP front turns them into error replies. A write's
reply is only valid once the group it was staged into is durable: the front holds every reply until then.

Standard library only: this module runs on VSI Python 3.10 for OpenVMS.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from typing import Any

from vms_adapter.errors import BAD_REQUEST, UNKNOWN_OPERATION, ProtocolError, Rejected
from vms_adapter.protocol import Opcode, echo
from vms_adapter.server.journal import Journal
from vms_adapter.server.writer import AckRequest, CommitRequest, GroupCommit, IncomingRecord, SweepRequest

MAX_ID_CHARS = 128
MAX_TYPE_CHARS = 128
MAX_KEY_CHARS = 256
MAX_RECORDS = 1000
# Nesting levels of a record's data. Python's JSON coder recurses, and staging re-encodes every record
# deeper in the stack than where it was decoded: data nested close to the interpreter's limit (about
# 1,000 levels, which fit in one frame) was accepted and then failed while staging, which stopped the
# whole service. No pipeline fact needs more than a few levels.
MAX_DATA_DEPTH = 64
MAX_ACK_IDS = 1000
MAX_PAGE = 1000
DEFAULT_PAGE = 100
DEFAULT_REDELIVERY_S = 60.0
_CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f]")


def _bad(message: str, **details: Any) -> Rejected:
    return Rejected(message, code=BAD_REQUEST, details=details)


def _only_keys(body: dict[str, Any], allowed: tuple[str, ...], op: str) -> None:
    for key in body:
        if key not in allowed:
            shown = echo(key)
            raise _bad(f"{op}: unknown key {shown!r} (allowed: {', '.join(allowed) or 'none'})", field=shown)


def _text(value: object, name: str, limit: int) -> str:
    if not isinstance(value, str) or not value:
        raise _bad(f"{name} must be a non-empty string", field=name)
    if len(value) > limit:
        raise _bad(f"{name} is {len(value)} characters, the limit is {limit}", field=name)
    if _CONTROL_CHARACTER.search(value):
        raise _bad(f"{name} contains control characters", field=name)
    return value


def _int(value: object, name: str, *, minimum: int, maximum: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not minimum <= value <= maximum:
        raise _bad(f"{name} must be an integer from {minimum} to {maximum}", field=name)
    return value


def _number(value: object, name: str) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < 0
    ):
        raise _bad(f"{name} must be a non-negative number", field=name)
    return float(value)


def _depth(value: object) -> int:
    """How deeply ``value`` nests arrays and objects (a scalar is 0), without recursing."""
    containers = (dict, list)
    deepest, level = 0, [(value, 1)] if isinstance(value, containers) else []
    while level:  # only containers are pushed: scalars, most of any record, cost nothing here
        item, depth = level.pop()
        if depth > deepest:
            deepest = depth
            if deepest > MAX_DATA_DEPTH:
                break
        children = item.values() if isinstance(item, dict) else item
        level.extend((child, depth + 1) for child in children if isinstance(child, containers))
    return deepest


def _records(value: object) -> list[IncomingRecord]:
    if not isinstance(value, list) or not value:
        raise _bad("records must be a non-empty array", field="records")
    if len(value) > MAX_RECORDS:
        raise _bad(f"a commit holds at most {MAX_RECORDS} records", field="records")
    result = []
    for index, item in enumerate(value):
        name = f"records[{index}]"
        if not isinstance(item, dict):
            raise _bad(f"{name} must be an object", field=name)
        _only_keys(item, ("type", "data", "jobId"), name)
        data = item.get("data", {})
        if not isinstance(data, dict):
            raise _bad(f"{name}.data must be an object", field=f"{name}.data")
        if _depth(data) > MAX_DATA_DEPTH:
            raise _bad(f"{name}.data nests deeper than {MAX_DATA_DEPTH} levels", field=f"{name}.data")
        job_id = item.get("jobId")
        result.append(
            IncomingRecord(
                type=_text(item.get("type"), f"{name}.type", MAX_TYPE_CHARS),
                data=data,
                job_id=None if job_id is None else _text(job_id, f"{name}.jobId", MAX_ID_CHARS),
            )
        )
    return result


class Operations:
    """Runs one decoded request (other than HELLO, which the connection handles) to its reply body."""

    def __init__(
        self,
        journal: Journal,
        writer: GroupCommit,
        *,
        service_stats: Callable[[], dict[str, Any]] | None = None,
        allow_clock_override: bool = False,
    ) -> None:
        self.journal = journal
        self.writer = writer
        self.allow_clock_override = allow_clock_override
        self.service_stats = service_stats or dict
        self._handlers: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {
            Opcode.COMMIT: self.commit,
            Opcode.READ_JOB: self.read_job,
            Opcode.LIST_JOBS: self.list_jobs,
            Opcode.SWEEP: self.sweep,
            Opcode.ACK: self.ack,
            Opcode.STATS: self.stats,
            Opcode.PING: self.ping,
        }

    def handle(self, opcode: int, body: dict[str, Any]) -> dict[str, Any]:
        handler = self._handlers.get(opcode)
        if handler is None:
            raise ProtocolError(f"unknown operation {opcode}", code=UNKNOWN_OPERATION)
        return handler(body)

    def commit(self, body: dict[str, Any]) -> dict[str, Any]:
        _only_keys(body, ("jobId", "idempotencyKey", "expectedVersion", "records"), "COMMIT")
        job_id = body.get("jobId")
        expected = body.get("expectedVersion")
        request = CommitRequest(
            job_id=None if job_id is None else _text(job_id, "jobId", MAX_ID_CHARS),
            key=_text(body.get("idempotencyKey"), "idempotencyKey", MAX_KEY_CHARS),
            expected_version=None
            if expected is None
            else _int(expected, "expectedVersion", minimum=0, maximum=2**53),
            records=_records(body.get("records")),
        )
        return self.writer.stage(request)

    def read_job(self, body: dict[str, Any]) -> dict[str, Any]:
        _only_keys(body, ("jobId",), "READ_JOB")
        return {"job": self.journal.read_job(_text(body.get("jobId"), "jobId", MAX_ID_CHARS))}

    def list_jobs(self, body: dict[str, Any]) -> dict[str, Any]:
        _only_keys(body, ("filters", "after", "limit"), "LIST_JOBS")
        filters = body.get("filters", {})
        if not isinstance(filters, dict):
            raise _bad("filters must be an object", field="filters")
        after = body.get("after")
        limit = body.get("limit", DEFAULT_PAGE)
        return self.journal.list_jobs(
            filters,
            None if after is None else _text(after, "after", MAX_ID_CHARS),
            _int(limit, "limit", minimum=1, maximum=MAX_PAGE),
        )

    def sweep(self, body: dict[str, Any]) -> dict[str, Any]:
        _only_keys(body, ("now", "redeliveryAfter"), "SWEEP")
        now = body.get("now")
        if now is not None and not self.allow_clock_override:
            # A client's clock far ahead would expire every running attempt's lease at once.
            raise _bad(
                "SWEEP: `now` is accepted only by a service started with --allow-clock-override",
                field="now",
            )
        redelivery = body.get("redeliveryAfter", DEFAULT_REDELIVERY_S)
        request = SweepRequest(
            now=None if now is None else _number(now, "now"),
            redelivery_after_s=_number(redelivery, "redeliveryAfter"),
        )
        return self.writer.stage(request)

    def ack(self, body: dict[str, Any]) -> dict[str, Any]:
        _only_keys(body, ("ids",), "ACK")
        ids = body.get("ids")
        if not isinstance(ids, list) or not ids or len(ids) > MAX_ACK_IDS:
            raise _bad(f"ids must be an array of 1 to {MAX_ACK_IDS} directive ids", field="ids")
        checked = [_text(item, f"ids[{i}]", MAX_KEY_CHARS) for i, item in enumerate(ids)]
        return self.writer.stage(AckRequest(ids=checked))

    def stats(self, body: dict[str, Any]) -> dict[str, Any]:
        _only_keys(body, (), "STATS")
        result = self.journal.stats()
        result["groups"] = self.writer.groups
        result["writerTransactions"] = self.writer.transactions
        result.update(self.service_stats())
        return result

    def ping(self, body: dict[str, Any]) -> dict[str, Any]:
        _only_keys(body, (), "PING")
        return {"time": time.time()}
