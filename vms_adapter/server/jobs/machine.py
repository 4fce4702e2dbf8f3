"""``JobStateMachine``: the journal's ``JobModel`` — decisions, the fold, the outbox, leases and queries.

``decide`` never touches the live state: it folds the incoming facts into a scratch copy of the job and
asks the reconciler what follows, so the transaction it returns is exactly what ``evolve`` will apply.
Heart-beats and start reports (the bulk of the traffic) change nothing that the reconciler looks at,
so a transaction made of one of them is validated without copying anything.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from vms_adapter.protocol import MAX_BODY_BYTES
from vms_adapter.server.model import ModelRejection, NewRecord, Record

from . import records as rt
from . import states as st
from .directives import job_of
from .expiry import attempt_failure, next_expiry
from .fold import find_attempt, fold, live_attempts, new_job, renew
from .plan import runnable
from .reconcile import next_record
from .shapes import Attempt, HistoryEntry, Job, Pod
from .validation import INVALID_RECORD, check_fact, check_plan
from .views import job_view, list_page

INVALID_TRANSITION = "INVALID_TRANSITION"
UNKNOWN_JOB = "UNKNOWN_JOB"
UNKNOWN_DIRECTIVE = "UNKNOWN_DIRECTIVE"
STATE_FORMAT = 1
# The state is plain JSON data built by the fold from decoded records: it has no cycles, so the encoder
# skips the bookkeeping that looks for them (a tenth of a snapshot's encoding time).
_SNAPSHOT_JSON = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":"), allow_nan=False, check_circular=False
)
# The directives of one SWEEP reply must fit a frame body (with room for the reply's other keys).
SWEEP_REPLY_MAX_BYTES = MAX_BODY_BYTES - 4_000

# Facts that only renew a lease or claim a pod: nothing the reconciler reads changes.
_LEASE_FACTS = frozenset({rt.HEARTBEAT, rt.STEP_STARTED})
# Facts accepted for job ids that are not registered.
_ANY_JOB_FACTS = frozenset({rt.HEALTH, rt.DEAD_LETTER})

APPLY = "apply"
IDEMPOTENT = "idempotent"


def _clone(job: Job) -> Job:
    """A copy of a job for deciding: every container the fold changes in place is copied (attempts,
    succeeded steps, directives, the rollback and its actions, the diagnosis); what it only ever replaces
    or reads is shared (the plan, directive events, health views, failure and cancel records). Level by
    level like this it costs a fifth of a pickle round trip; ``tests/jobs/test_jobs_decide_purity.py``
    checks that deciding never changes the live state."""
    copy = job.copy()
    copy["attempts"] = {label: [a.copy() for a in runs] for label, runs in job["attempts"].items()}
    copy["succeeded"] = job["succeeded"].copy()
    copy["directives"] = {ident: d.copy() for ident, d in job["directives"].items()}
    rollback, diagnosis = job["rollback"], job["diagnosis"]
    if rollback is not None:
        copy["rollback"] = {**rollback, "actions": [a.copy() for a in rollback["actions"]]}
    if diagnosis is not None:
        copy["diagnosis"] = diagnosis.copy()
    return copy


def _unobserved_pod() -> Pod:
    return {"holder": None, "restarts": None, "baseline": None, "observedAt": None}


def _refuse(job: Job, record_type: str, why: str) -> ModelRejection:
    return ModelRejection(
        INVALID_TRANSITION,
        f"job {job['jobId']} is {job['state']}: {record_type} refused: {why}",
        details={"jobId": job["jobId"], "state": job["state"], "record": record_type},
    )


def admit(job: Job, record_type: str, data: dict[str, Any]) -> str:
    """APPLY, IDEMPOTENT (a late or repeated fact), or raise INVALID_TRANSITION (JOBS.md §5.1)."""
    if record_type in (rt.STEP_STARTED, rt.HEARTBEAT, rt.STEP_FINISHED):
        label, number = data["step"], data["attempt"]
        attempt = find_attempt(job, label, number)
        if attempt is None:  # (an attempt exists only for a label of the plan: ask the plan only now)
            if runnable(job, label) is None:
                raise _refuse(job, record_type, f"the plan has no step {label}")
            raise _refuse(job, record_type, f"attempt {number} of step {label} was never dispatched")
        return APPLY if attempt["outcome"] is None else IDEMPOTENT
    if record_type == rt.JOB_CANCELLED:
        if job["state"] in (st.PENDING, st.RUNNING):
            return APPLY
        if job["cancel"] is not None:
            return IDEMPOTENT
        raise _refuse(job, record_type, "only a PENDING or RUNNING job can be cancelled")
    if record_type == rt.ROLLBACK_STARTED:
        rollback = job["rollback"]
        if rollback is None:
            raise _refuse(job, record_type, "no rollback was requested")
        wanted = data.get("directive")
        if wanted and wanted != rollback["directiveId"]:
            why = f"the rollback directive is {rollback['directiveId']}, not {wanted}"
            raise _refuse(job, record_type, why)
        return APPLY if rollback["status"] == "requested" else IDEMPOTENT
    if record_type == rt.REVERT_FINISHED:
        rollback = job["rollback"]
        actions = [] if rollback is None else rollback["actions"]
        for action in actions:
            if action["kind"] == "revert" and action["step"] == data["step"]:
                if action["status"] == "running":
                    return APPLY
                if action["status"] in ("succeeded", "failed"):
                    return IDEMPOTENT
                raise _refuse(job, record_type, f"the revert of step {data['step']} was not directed yet")
        raise _refuse(job, record_type, f"no revert of step {data['step']} is part of a rollback")
    if record_type == rt.RESTORE_FINISHED:
        # The outcome of a restore is kept in the history; it changes no state (the job has finished).
        wanted = data["directive"]
        found = job["directives"].get(wanted)
        if found is None or found["kind"] != "restore":
            raise _refuse(job, record_type, f"{wanted} is not a restore directive of this job")
        return IDEMPOTENT
    if record_type == rt.DIAGNOSTIC_REPORT:
        diagnosis = job["diagnosis"]
        if diagnosis is None:
            raise _refuse(job, record_type, "no diagnosis was requested")
        return APPLY if diagnosis["status"] == "requested" else IDEMPOTENT
    return APPLY  # DEAD_LETTER: the fold decides whether it ends an attempt


class JobStateMachine:
    """The ``JobModel`` of the XPipe journal (see ``model.py`` for the contract, JOBS.md for the rules)."""

    def __init__(self) -> None:
        self._jobs: dict[str, Job] = {}
        self._history: dict[str, list[HistoryEntry]] = {}
        self._pods: dict[str, Pod] = {}
        self._order: list[tuple[int, str]] = []  # (registration seq, job id), ascending
        self._outbox: dict[str, str] = {}  # pending directive id -> job id
        self._active: dict[str, None] = {}  # unfinished job ids, in registration order
        self._handed_out: dict[str, float] = {}  # directive id -> when last handed out (volatile)
        # Each job's JSON and its history's JSON for snapshots, kept until they change (separately: a
        # heart-beat changes the job, an annotation only the history).
        self._job_json: dict[str, str] = {}
        self._history_json: dict[str, str] = {}

    # -- decisions ---------------------------------------------------------------------------------

    def decide(self, job_id: str, incoming: Sequence[NewRecord], now: float) -> list[NewRecord]:  # noqa: ARG002
        # Every record names its own job (HEALTH is re-addressed to the pod's holder), so job_id is unused.
        if not incoming:
            raise ModelRejection(INVALID_RECORD, "a transaction needs at least one record")
        if len(incoming) == 1 and (incoming[0].type == rt.HEARTBEAT or incoming[0].type == rt.STEP_STARTED):
            return self._lone_lease_fact(incoming[0])
        decision = _Decision(self, now)
        for index, record in enumerate(incoming):
            decision.take(record, last=index == len(incoming) - 1)
        return decision.out

    def _lone_lease_fact(self, record: NewRecord) -> list[NewRecord]:
        """A transaction of one heart-beat or start report (most of the traffic): ``take`` would check it
        the same way, and nothing follows from a lease renewal, so there is nothing to copy or reconcile."""
        kind, job_id, data = record.type, record.job_id, record.data
        if not isinstance(data, dict):
            raise ModelRejection(INVALID_RECORD, f"{kind}: data: must be an object")
        check_fact(kind, job_id, data)
        job = self._jobs.get(job_id)
        if job is None:
            raise ModelRejection(UNKNOWN_JOB, f"no job {job_id!r} in the journal: {kind} refused")
        admit(job, kind, data)
        return [record]

    def sweep(self, now: float) -> list[NewRecord]:
        decision = _Decision(self, now)
        for job_id in list(self._active):
            job = self._jobs[job_id]
            fact = next_expiry(job, now)
            if fact is None:
                continue
            scratch = decision.scratch(job_id)
            while fact is not None:
                decision.derive(scratch, *fact)
                decision.settle(scratch)
                fact = next_expiry(scratch, now)
        return decision.out

    def acknowledge(self, directive_ids: Sequence[str], now: float) -> list[NewRecord]:  # noqa: ARG002
        # The acknowledgement time is the commit time of DIRECTIVES_ACKED; ``now`` is not needed.
        by_job: dict[str, list[str]] = {}
        for ident in directive_ids:
            job = self._jobs.get(job_of(ident)) if isinstance(ident, str) else None
            directive = job["directives"].get(ident) if job is not None else None
            if job is None or directive is None:
                raise ModelRejection(UNKNOWN_DIRECTIVE, f"no directive {ident!r} in the journal")
            if directive["status"] == "pending" and ident not in by_job.get(job["jobId"], []):
                by_job.setdefault(job["jobId"], []).append(ident)
        return [NewRecord(job_id, rt.DIRECTIVES_ACKED, {"ids": ids}) for job_id, ids in by_job.items()]

    # -- the fold ----------------------------------------------------------------------------------

    def evolve(self, record: Record) -> None:
        kind, job_id, data, t = record.type, record.job_id, record.data, record.time
        if kind in _LEASE_FACTS:
            self._renew(record)
            return
        if rt.is_annotation(kind):
            if job_id in self._history:
                self._remember(record)
            return
        self._job_json.pop(job_id, None)  # whatever this record changes of the job, its JSON is stale
        if kind == rt.JOB_REGISTERED:
            self._jobs[job_id] = new_job(job_id, data, record.seq, t)
            self._history[job_id] = []
            self._order.append((record.seq, job_id))
            self._active[job_id] = None
            self._remember(record)
            return
        if kind == rt.HEALTH:
            self._observe_pod(data)
        job = self._jobs.get(job_id)
        if job is None:
            return  # HEALTH of an idle pod, or a DEAD_LETTER for no known job: recorded only
        held = [(a["step"], a["attempt"], a["pod"]) for a in live_attempts(job) if a["pod"]]
        fold(job, kind, data, t)
        self._sync_pods(job, held)
        if kind != rt.HEALTH:
            self._sync_outbox(job)
        self._remember(record)
        if job["finished"]:
            self._active.pop(job_id, None)

    def _renew(self, record: Record) -> None:
        """``STEP_STARTED`` or ``HEARTBEAT`` (most of the traffic): only the attempt it names can change,
        and only the pod that attempt holds; so this finds the attempt once and touches nothing else
        (the general path would walk every live attempt for pods to release and re-encode the history)."""
        kind, job_id, data, t = record.type, record.job_id, record.data, record.time
        job = self._jobs.get(job_id)
        if job is None:
            return  # never decided (UNKNOWN_JOB); a journal written otherwise is recorded only
        attempt = find_attempt(job, data["step"], data["attempt"])
        if attempt is not None and attempt["outcome"] is None:
            held = attempt["pod"]
            renew(job, attempt, kind, data, t)
            self._job_json.pop(job_id, None)
            if held and attempt["pod"] != held:
                self._release(held, job_id, attempt)
            if attempt["pod"]:
                self._claim(attempt["pod"], job_id, attempt)
        # The first heart-beat of an attempt is history; the others are counted in the attempt.
        if (
            kind != rt.HEARTBEAT
            or attempt is None
            or (attempt["heartbeats"] == 1 and attempt["lastHeartbeatAt"] == t)
        ):
            self._remember(record)

    def _remember(self, record: Record) -> None:
        entry: HistoryEntry = {
            "seq": record.seq,
            "type": record.type,
            "data": record.data,
            "time": record.time,
        }
        self._history[record.job_id].append(entry)
        self._history_json.pop(record.job_id, None)

    def _release(self, pod_name: str, job_id: str, attempt: Attempt) -> None:
        """The pod is no longer held by ``attempt`` (it ended, or named another pod)."""
        pod = self._pods.get(pod_name)
        if pod is not None and pod["holder"] == [job_id, attempt["step"], attempt["attempt"]]:
            pod["holder"] = None
            pod["baseline"] = None

    def _claim(self, pod_name: str, job_id: str, attempt: Attempt) -> None:
        """The live ``attempt`` holds the pod: its restarts count from now (JOBS.md §8)."""
        pod = self._pods.get(pod_name)
        if pod is None:
            pod = self._pods[pod_name] = _unobserved_pod()
        holder = pod["holder"]
        if (
            holder is None
            or holder[0] != job_id
            or holder[1] != attempt["step"]
            or holder[2] != attempt["attempt"]
        ):
            pod["holder"] = [job_id, attempt["step"], attempt["attempt"]]
            pod["baseline"] = pod["restarts"]

    def _sync_outbox(self, job: Job) -> None:
        for ident, directive in job["directives"].items():
            if directive["status"] == "pending":
                self._outbox.setdefault(ident, job["jobId"])
            elif self._outbox.pop(ident, None) is not None:
                self._handed_out.pop(ident, None)

    def _observe_pod(self, data: dict[str, Any]) -> None:
        total = sum(c["restartCount"] for c in data["containers"])
        pod = self._pods.get(data["pod"])
        if pod is None:
            pod = self._pods[data["pod"]] = _unobserved_pod()
        if pod["holder"] is not None and pod["baseline"] is None:
            pod["baseline"] = total  # first observation during the holder's attempt
        pod["restarts"] = total
        pod["observedAt"] = data.get("observedAt")

    def _sync_pods(self, job: Job, held: list[tuple[str, int, Any]]) -> None:
        """Release the pods of attempts that ended (claims come only with lease facts: see ``_renew``)."""
        for label, number, pod_name in held:
            attempt = find_attempt(job, label, number)
            if attempt is None or attempt["outcome"] is not None or attempt["pod"] != pod_name:
                pod = self._pods.get(pod_name)
                if pod is not None and pod["holder"] == [job["jobId"], label, number]:
                    pod["holder"] = None
                    pod["baseline"] = None

    # -- the outbox --------------------------------------------------------------------------------

    @staticmethod
    def _public(directive: dict[str, Any]) -> dict[str, Any]:
        return {k: directive[k] for k in ("id", "jobId", "kind", "dueAt", "event")}

    def due_directives(self, now: float, redelivery_after_s: float) -> list[dict[str, Any]]:
        """Oldest first, and no more than fit one reply frame: the rest go out with the next sweep."""
        due: list[dict[str, Any]] = []
        used = 0
        for ident, job_id in self._outbox.items():
            directive = self._jobs[job_id]["directives"][ident]
            if directive["dueAt"] > now:
                continue
            last = self._handed_out.get(ident)
            if last is not None and now - last < redelivery_after_s:
                continue
            public = self._public(dict(directive))
            used += len(json.dumps(public)) + 2
            if due and used > SWEEP_REPLY_MAX_BYTES:
                break
            self._handed_out[ident] = now
            due.append(public)
        return due

    def directives_of(self, records: Sequence[Record], now: float) -> list[dict[str, Any]]:
        found = []
        for record in records:
            carried = record.data.get("directive")
            if not isinstance(carried, dict):  # (most records carry none: no job lookup for them)
                continue
            job = self._jobs.get(record.job_id)
            if job is None:
                continue
            directive = job["directives"].get(carried.get("id", ""))
            if directive is not None and directive["status"] == "pending" and directive["dueAt"] <= now:
                self._handed_out[directive["id"]] = now
                found.append(self._public(dict(directive)))
        return found

    # -- queries -----------------------------------------------------------------------------------

    def job_state(self, job_id: str) -> str | None:
        job = self._jobs.get(job_id)
        return None if job is None else job["state"]

    def job_view(self, job_id: str) -> dict[str, Any] | None:
        job = self._jobs.get(job_id)
        return None if job is None else job_view(job, self._history[job_id])

    def list_jobs(
        self, filters: dict[str, Any], after: str | None, limit: int
    ) -> tuple[list[dict[str, Any]], str | None]:
        return list_page(self._jobs, self._order, filters, after, limit)

    # -- snapshots ---------------------------------------------------------------------------------

    def dump_state(self) -> dict[str, Any]:
        copy: dict[str, Any] = json.loads(self.snapshot_json())
        return copy

    def snapshot_json(self) -> str:
        """The state as JSON text, from each job's text kept since it last changed: a snapshot encodes
        only the jobs that changed since the one before (finished jobs never change), not the whole
        history again. What still grows with history is copying every job's text into the result, on
        the loop: one join copies it once (the three copies before took twice as long or more)."""
        job_json, history_json = self._job_json, self._history_json
        parts = [f'{{"format":{STATE_FORMAT},"jobs":{{']
        history: list[str] = []
        for job_id, job in self._jobs.items():
            encoded_job = job_json.get(job_id)
            if encoded_job is None:
                encoded_job = job_json[job_id] = (
                    f"{_SNAPSHOT_JSON.encode(job_id)}:{_SNAPSHOT_JSON.encode(job)}"
                )
            encoded_history = history_json.get(job_id)
            if encoded_history is None:
                encoded_history = history_json[job_id] = (
                    f"{_SNAPSHOT_JSON.encode(job_id)}:{_SNAPSHOT_JSON.encode(self._history[job_id])}"
                )
            parts.append(encoded_job)
            parts.append(",")
            history.append(encoded_history)
            history.append(",")
        if history:  # no separator after the last job
            parts.pop()
            history.pop()
        parts.append('},"history":{')
        parts.extend(history)
        parts.append(f'}},"pods":{_SNAPSHOT_JSON.encode(self._pods)}}}')
        return "".join(parts)

    def load_state(self, data: dict[str, Any]) -> None:
        if not isinstance(data, dict) or data.get("format") != STATE_FORMAT:
            raise ValueError(f"job state snapshot: format {data.get('format')!r} is not {STATE_FORMAT}")
        copy = json.loads(json.dumps(data))
        self._jobs = copy["jobs"]
        self._history = copy["history"]
        self._pods = copy["pods"]
        self._job_json = {}
        self._history_json = {}
        self._order = sorted((job["registeredSeq"], job_id) for job_id, job in self._jobs.items())
        self._active = {job_id: None for _, job_id in self._order if not self._jobs[job_id]["finished"]}
        self._outbox = {}
        self._handed_out = {}
        for _, job_id in self._order:
            self._sync_outbox(self._jobs[job_id])


class _Decision:
    """One transaction being decided: scratch copies of the jobs it touches and the records to write."""

    def __init__(self, machine: JobStateMachine, now: float) -> None:
        self.machine = machine
        self.now = now
        self.out: list[NewRecord] = []
        self.scratches: dict[str, Job] = {}
        self.steps = 0

    def job(self, job_id: str) -> Job | None:
        return self.scratches.get(job_id) or self.machine._jobs.get(job_id)

    def scratch(self, job_id: str) -> Job:
        if job_id not in self.scratches:
            self.scratches[job_id] = _clone(self.machine._jobs[job_id])
        return self.scratches[job_id]

    def derive(self, scratch: Job, kind: str, data: dict[str, Any]) -> None:
        self.steps += 1
        if self.steps > rt.MAX_DECISIONS_PER_TRANSACTION:
            limit = rt.MAX_DECISIONS_PER_TRANSACTION
            raise RuntimeError(f"job {scratch['jobId']}: more than {limit} decisions in one transaction")
        self.out.append(NewRecord(scratch["jobId"], kind, data))
        fold(scratch, kind, data, self.now)

    def settle(self, scratch: Job) -> None:
        """Fold what the reconciler asks for until it asks for nothing."""
        while (following := next_record(scratch, self.now)) is not None:
            self.derive(scratch, *following)

    def take(self, record: NewRecord, *, last: bool) -> None:
        kind, job_id, data = record.type, record.job_id, record.data
        if not isinstance(kind, str) or not kind:
            raise ModelRejection(INVALID_RECORD, "a record needs a non-empty string type")
        if not isinstance(data, dict):
            raise ModelRejection(INVALID_RECORD, f"{kind}: data: must be an object")
        if rt.is_annotation(kind):
            self.out.append(record)
            return
        if kind in rt.DERIVED:
            raise ModelRejection(INVALID_RECORD, f"{kind}: written only by the journal, never by a client")
        if kind not in rt.FACTS:
            raise ModelRejection(INVALID_RECORD, f"{kind}: unknown record type (annotations start with x-)")
        if kind == rt.JOB_REGISTERED:
            self._register(record)
            return
        check_fact(kind, job_id, data)
        if kind == rt.HEALTH:
            self._health(record)
            return
        job = self.job(job_id)
        if job is None:
            if kind in _ANY_JOB_FACTS:
                self.out.append(record)
                return
            raise ModelRejection(UNKNOWN_JOB, f"no job {job_id!r} in the journal: {kind} refused")
        verdict = admit(job, kind, data)
        self.out.append(record)
        if verdict == IDEMPOTENT or (kind in _LEASE_FACTS and last):
            return
        scratch = self.scratch(job_id)
        fold(scratch, kind, data, self.now)
        self.settle(scratch)

    def _register(self, record: NewRecord) -> None:
        check_plan(record.data)
        existing = self.job(record.job_id)
        if existing is not None:
            raise _refuse(existing, rt.JOB_REGISTERED, "the job is already registered")
        self.out.append(record)
        scratch = new_job(record.job_id, record.data, -1, self.now)
        self.scratches[record.job_id] = scratch
        self.settle(scratch)

    def _health(self, record: NewRecord) -> None:
        """Attribute a pod's health to the attempt holding the pod, or record it on the idle pod."""
        data = {k: v for k, v in record.data.items() if k != "jobId"}
        pod_name = data["pod"]
        pod = self.machine._pods.get(pod_name)
        holder = pod["holder"] if pod is not None else None
        job = self.job(holder[0]) if holder is not None else None
        attempt = find_attempt(job, holder[1], holder[2]) if job is not None and holder is not None else None
        if job is None or attempt is None or attempt["outcome"] is not None or attempt["pod"] != pod_name:
            self.out.append(NewRecord(rt.POD_JOB_PREFIX + pod_name, rt.HEALTH, data))
            return
        assert pod is not None
        total = sum(c["restartCount"] for c in data["containers"])
        baseline = pod["baseline"] if pod["baseline"] is not None else total
        attributed = {**data, "step": attempt["step"], "attempt": attempt["attempt"]}
        attributed["attemptRestarts"] = max(0, total - baseline)
        scratch = self.scratch(job["jobId"])
        self.derive(scratch, rt.HEALTH, attributed)
        live = find_attempt(scratch, attempt["step"], attempt["attempt"])
        assert live is not None
        failure = attempt_failure(scratch, live, self.now, health_only=True)
        if failure is not None:
            self.derive(scratch, *failure)
            self.settle(scratch)
