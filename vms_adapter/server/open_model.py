"""A permissive ``JobModel``: accepts every record, keeps each job's history, emits no directives.

It stands in until the job state machine (``vms_adapter.server.jobs``) is wired in, and it is what a
journal without pipeline rules looks like: storage, idempotency and versions still apply in full.

Standard library only: this module runs on VSI Python 3.10 for OpenVMS.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from vms_adapter.server.model import ModelRejection, NewRecord, Record

OPEN_STATE = "OPEN"


class OpenModel:
    """Every job is ``OPEN`` once it has a record; READ_JOB shows its records in seq order.

    The clock and most arguments do not matter to it; they are part of the ``JobModel`` protocol.
    """

    def __init__(self) -> None:
        self._history: dict[str, list[dict[str, Any]]] = {}

    def decide(self, job_id: str, incoming: Sequence[NewRecord], now: float) -> list[NewRecord]:  # noqa: ARG002
        return list(incoming)

    def evolve(self, record: Record) -> None:
        entry = {"seq": record.seq, "type": record.type, "data": record.data, "time": record.time}
        self._history.setdefault(record.job_id, []).append(entry)

    def sweep(self, now: float) -> list[NewRecord]:  # noqa: ARG002
        return []

    def acknowledge(self, directive_ids: Sequence[str], now: float) -> list[NewRecord]:  # noqa: ARG002
        if directive_ids:
            raise ModelRejection("NOT_FOUND", f"unknown directive id {directive_ids[0]!r}")
        return []

    def due_directives(self, now: float, redelivery_after_s: float) -> list[dict[str, Any]]:  # noqa: ARG002
        return []

    def directives_of(self, records: Sequence[Record], now: float) -> list[dict[str, Any]]:  # noqa: ARG002
        return []

    def job_state(self, job_id: str) -> str | None:
        return OPEN_STATE if job_id in self._history else None

    def job_view(self, job_id: str) -> dict[str, Any] | None:
        history = self._history.get(job_id)
        if history is None:
            return None
        return {"jobId": job_id, "state": OPEN_STATE, "records": list(history)}

    def list_jobs(
        self, filters: dict[str, Any], after: str | None, limit: int
    ) -> tuple[list[dict[str, Any]], str | None]:
        wanted = filters.get("state")
        ids = sorted(j for j in self._history if (after is None or j > after))
        if wanted is not None and wanted != OPEN_STATE:
            ids = []
        page = ids[:limit]
        summaries = [{"jobId": j, "state": OPEN_STATE, "records": len(self._history[j])} for j in page]
        return summaries, (page[-1] if len(ids) > limit else None)

    def dump_state(self) -> dict[str, Any]:
        return {"history": {job: list(records) for job, records in self._history.items()}}

    def snapshot_json(self) -> str:
        return json.dumps({"history": self._history}, ensure_ascii=False, separators=(",", ":"))

    def load_state(self, data: dict[str, Any]) -> None:
        self._history = {str(k): list(v) for k, v in data.get("history", {}).items()}
