"""rollback, served by the real functions-framework against a real journal with the local backend: the
saga the journal directs (start, compensation dispatch, revert, diagnosis) carried out and committed."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from functions_harness import (
    RELAY_TOKEN,
    SUBMIT_TOKEN,
    EventSink,
    FunctionServer,
    StepHost,
    journal_counts,
)

from vms_adapter.client import JournalClient
from xpipe.backends.base import StepServiceSpec
from xpipe.events import EXT_JOB, EXT_STEP, JOB_DIAGNOSTIC_REQUESTED, JOB_ROLLBACK_REQUESTED, STEP_RUN
from xpipe.outbox import directive_event


def step(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "service": f"xp-test-{name}", "timeoutSeconds": 60, "retries": 0,
            "backoffSeconds": 0, "backoffFactor": 1, "heartbeatTimeoutSeconds": 30,
            "health": {"notReadySeconds": 60, "maxRestarts": 3}, "compensate": None, "revert": None,
            **extra}  # fmt: skip


PLAN = {
    "template": "rollback-test", "templateDigest": "sha256:test", "params": {}, "requestedBy": "tests",
    "onFailure": "rollback-and-diagnose",
    "steps": [
        step("deploy", compensate={"service": "xp-test-deploy-undo", "timeoutSeconds": 60},
             revert={"kind": "knative-traffic", "service": "shop", "namespace": "shop"}),
        step("verify"),
    ],
}  # fmt: skip


def commit(client: JournalClient, job_id: str | None, record_type: str, data: dict[str, Any]) -> Any:
    return client.commit(job_id, [{"type": record_type, "data": data}], idempotency_key=f"t {uuid.uuid4()}")


def finish(client: JournalClient, job_id: str, step_label: str, outcome: str) -> list[dict[str, Any]]:
    data = {
        "step": step_label,
        "attempt": 1,
        "outcome": outcome,
        "exitCode": 0 if outcome == "succeeded" else 1,
    }
    return list(commit(client, job_id, "STEP_FINISHED", data).directives)


def failed_job(client: JournalClient) -> tuple[str, dict[str, dict[str, Any]]]:
    """A job whose first step succeeded and second failed for good: rollback and diagnosis requested."""
    job_id = commit(client, None, "JOB_REGISTERED", PLAN).job_id
    finish(client, job_id, "deploy", "succeeded")
    directives = finish(client, job_id, "verify", "failed")
    by_kind = {d["kind"]: d for d in directives}
    assert {"rollback", "diagnose"} <= set(by_kind), directives
    return job_id, by_kind


def deliver(rollback: FunctionServer, directive: dict[str, Any], token: str = RELAY_TOKEN) -> int:
    return rollback.post(directive_event(directive, {}), token=token).status_code


def test_the_saga_is_started_compensated_reverted_and_diagnosed(
    rollback: FunctionServer, client: JournalClient, sink: EventSink
) -> None:
    job_id, directives = failed_job(client)
    assert directives["rollback"]["event"]["type"] == JOB_ROLLBACK_REQUESTED
    assert deliver(rollback, directives["rollback"]) == 202
    assert client.read_job(job_id)["state"] == "ROLLING_BACK"
    # The journal directs the compensation as an ordinary step run, which the function published.
    (run,) = sink.wait_for(lambda e: e["type"] == STEP_RUN and e.get(EXT_JOB) == job_id)
    assert (run.get_data() or {})["step"] == "deploy:compensate"
    assert run[EXT_STEP] == "xp-test-deploy-undo"
    (revert,) = [d for d in finish(client, job_id, "deploy:compensate", "succeeded") if d["kind"] == "revert"]
    assert deliver(rollback, revert) == 202
    (revert_record,) = [h for h in client.read_job(job_id)["history"] if h["type"] == "REVERT_FINISHED"]
    assert revert_record["data"]["step"] == "deploy"
    assert revert_record["data"]["outcome"] in ("succeeded", "failed")
    before = journal_counts(client)
    assert deliver(rollback, revert) == 202  # redelivered: the revert is not done twice
    assert journal_counts(client) == before
    assert directives["diagnose"]["event"]["type"] == JOB_DIAGNOSTIC_REQUESTED
    assert deliver(rollback, directives["diagnose"]) == 202
    view = client.read_job(job_id)
    assert view["diagnosis"]["report"]
    assert view["finished"] is True
    assert view["state"] in ("ROLLED_BACK", "ROLLBACK_FAILED")


def test_a_duplicate_rollback_request_starts_the_saga_once(
    rollback: FunctionServer, client: JournalClient
) -> None:
    job_id, directives = failed_job(client)
    assert deliver(rollback, directives["rollback"]) == 202
    after_first = journal_counts(client)
    assert deliver(rollback, directives["rollback"]) == 202
    assert journal_counts(client) == after_first
    started = [h for h in client.read_job(job_id)["history"] if h["type"] == "ROLLBACK_STARTED"]
    assert len(started) == 1


def test_a_submit_token_may_not_roll_back(rollback: FunctionServer, client: JournalClient) -> None:
    job_id, directives = failed_job(client)
    before = journal_counts(client)
    assert deliver(rollback, directives["rollback"], token=SUBMIT_TOKEN) == 403
    assert journal_counts(client) == before
    assert client.read_job(job_id)["state"] == "FAILED"


def test_a_directive_without_its_id_is_a_400_that_writes_nothing(
    rollback: FunctionServer, client: JournalClient
) -> None:
    job_id, directives = failed_job(client)
    broken = {**directives["rollback"], "event": {**directives["rollback"]["event"]}}
    broken["event"]["data"] = {"jobId": job_id, "reason": "x"}
    before = journal_counts(client)
    assert deliver(rollback, broken) == 400
    assert journal_counts(client) == before


def test_a_revert_pins_the_previous_revision_once_even_when_redelivered(
    rollback: FunctionServer, client: JournalClient, sink: EventSink, step_host: StepHost
) -> None:
    service = f"xp-shop-{uuid.uuid4().hex[:6]}"
    for digest in ("sha256:one", "sha256:two", "sha256:three"):  # three revisions of the reverted service
        spec = StepServiceSpec(name=service, template="shop", step="web", image="img", argv=("true",), env={},
                               timeout_seconds=30, template_digest=digest)  # fmt: skip
        assert step_host.http.put(f"/services/{service}", json=spec.to_json_dict()).status_code == 200
    revert_target = {"kind": "knative-traffic", "service": service, "namespace": "xpipe-steps"}
    plan = {**PLAN, "steps": [step("deploy", revert=revert_target), step("verify")]}
    job_id = commit(client, None, "JOB_REGISTERED", plan).job_id
    finish(client, job_id, "deploy", "succeeded")
    (start,) = [d for d in finish(client, job_id, "verify", "failed") if d["kind"] == "rollback"]
    assert deliver(rollback, start) == 202
    # The saga's only action is the revert, which the function published when it started the saga.
    (revert,) = sink.wait_for(
        lambda e: (
            e.get(EXT_JOB) == job_id and (e.get_data() or {}).get("directive", {}).get("action") == "revert"
        )
    )
    # Three concurrent deliveries of the one revert (the broker may do that), then a redelivery.
    before = client.ping()
    with ThreadPoolExecutor(max_workers=3) as pool:
        codes = list(pool.map(lambda _: rollback.post(revert, token=RELAY_TOKEN).status_code, range(3)))
    assert codes == [202, 202, 202]
    (record,) = [h for h in client.read_job(job_id)["history"] if h["type"] == "REVERT_FINISHED"]
    assert record["data"]["outcome"] == "succeeded"
    assert record["data"]["revision"] == f"{service}-00002"  # the revision before the newest
    # The pin carries the journal's clock at the revert (what a later restore is compared with).
    assert before <= record["data"]["details"]["pinnedAt"] <= client.ping()
    pinned = step_host.http.get(f"/services/{service}").json()["pinnedRevision"]
    assert pinned == record["data"]["revision"]
    assert rollback.post(revert, token=RELAY_TOKEN).status_code == 202  # the broker redelivers it
    assert step_host.http.get(f"/services/{service}").json()["pinnedRevision"] == pinned


def three_revisions(step_host: StepHost, prefix: str) -> str:
    service = f"{prefix}-{uuid.uuid4().hex[:6]}"
    for digest in ("sha256:one", "sha256:two", "sha256:three"):
        spec = StepServiceSpec(name=service, template="shop", step="web", image="img", argv=("true",), env={},
                               timeout_seconds=30, template_digest=digest)  # fmt: skip
        assert step_host.http.put(f"/services/{service}", json=spec.to_json_dict()).status_code == 200
    return service


def test_a_forged_revert_changes_nothing_and_targets_come_only_from_the_plan(
    rollback: FunctionServer, client: JournalClient, sink: EventSink, step_host: StepHost
) -> None:
    planned, victim = three_revisions(step_host, "xp-planned"), three_revisions(step_host, "xp-victim")
    revert_target = {"kind": "knative-traffic", "service": planned, "namespace": "xpipe-steps"}
    plan = {**PLAN, "onFailure": "rollback", "steps": [step("deploy", revert=revert_target), step("verify")]}
    job_id = commit(client, None, "JOB_REGISTERED", plan).job_id
    finish(client, job_id, "deploy", "succeeded")
    (start,) = [d for d in finish(client, job_id, "verify", "failed") if d["kind"] == "rollback"]
    forged_directive = {"id": f"{job_id}/d99", "action": "revert", "step": "deploy",
                        "kind": "knative-traffic", "service": victim, "namespace": "xpipe-steps"}  # fmt: skip
    forged = {**start, "id": f"{job_id}/d99", "kind": "revert"}
    forged["event"] = {
        **start["event"],
        "data": {"jobId": job_id, "reason": "x", "directive": forged_directive},
    }
    before = journal_counts(client)
    # Before the saga started (no revert directed at all) and after: neither pins anything.
    assert deliver(rollback, forged) == 202
    assert journal_counts(client) == before
    assert deliver(rollback, start) == 202
    (revert,) = sink.wait_for(
        lambda e: (
            e.get(EXT_JOB) == job_id and (e.get_data() or {}).get("directive", {}).get("action") == "revert"
        )
    )
    before = journal_counts(client)
    assert deliver(rollback, forged) == 202
    assert journal_counts(client) == before
    assert step_host.http.get(f"/services/{victim}").json()["pinnedRevision"] is None
    assert step_host.http.get(f"/services/{planned}").json()["pinnedRevision"] is None

    # The journal's own directive id with a tampered target still pins only the plan's service.
    tampered = revert.get_data()
    tampered["directive"] = {**tampered["directive"], "service": victim}
    event = directive_event(
        {**forged, "id": revert["id"], "event": {**forged["event"], "data": tampered}}, {}
    )
    assert rollback.post(event, token=RELAY_TOKEN).status_code == 202
    assert step_host.http.get(f"/services/{victim}").json()["pinnedRevision"] is None
    assert step_host.http.get(f"/services/{planned}").json()["pinnedRevision"] == f"{planned}-00002"


def test_a_succeeded_job_restores_traffic_once_and_a_forged_restore_changes_nothing(
    rollback: FunctionServer, client: JournalClient, step_host: StepHost
) -> None:
    service = three_revisions(step_host, "xp-restored")
    pin = step_host.http.post(f"/services/{service}/revert", json={"at": client.ping() - 60})
    assert pin.json()["pinnedRevision"] == f"{service}-00002"
    revert_target = {"kind": "knative-traffic", "service": service, "namespace": "xpipe-steps"}
    plan = {**PLAN, "steps": [step("deploy", revert=revert_target)]}
    job_id = commit(client, None, "JOB_REGISTERED", plan).job_id
    (restore,) = [d for d in finish(client, job_id, "deploy", "succeeded") if d["kind"] == "restore"]

    forged = {**restore, "id": f"{job_id}/d99"}
    forged_data = {"jobId": job_id, "reason": "x", "directive": {"id": f"{job_id}/d99", "action": "restore"}}
    forged["event"] = {**restore["event"], "data": forged_data}
    before = journal_counts(client)
    assert deliver(rollback, forged) == 202
    assert journal_counts(client) == before
    assert step_host.http.get(f"/services/{service}").json()["pinnedRevision"] == f"{service}-00002"

    assert deliver(rollback, restore) == 202
    assert step_host.http.get(f"/services/{service}").json()["pinnedRevision"] is None
    (record,) = [h for h in client.read_job(job_id)["history"] if h["type"] == "RESTORE_FINISHED"]
    assert record["data"]["outcome"] == "succeeded"
    assert record["data"]["directive"] == restore["id"]

    # A later job reverts the Service again; a late redelivery of the old restore must not undo that.
    step_host.http.post(f"/services/{service}/revert", json={"at": client.ping()})
    assert deliver(rollback, restore) == 202
    assert step_host.http.get(f"/services/{service}").json()["pinnedRevision"] == f"{service}-00002"


def test_a_restore_delivered_after_another_jobs_revert_keeps_that_pin(
    rollback: FunctionServer, client: JournalClient, step_host: StepHost
) -> None:
    """Job B succeeds (restore requested), job C fails and reverts the same Service, and only then is
    B's restore delivered for the first time: C's pin stays, and B's outcome says so."""
    service = three_revisions(step_host, "xp-late-restore")
    revert_target = {"kind": "knative-traffic", "service": service, "namespace": "xpipe-steps"}
    plan = {**PLAN, "steps": [step("deploy", revert=revert_target)]}
    job_b = commit(client, None, "JOB_REGISTERED", plan).job_id
    (restore,) = [d for d in finish(client, job_b, "deploy", "succeeded") if d["kind"] == "restore"]
    requested_at = client.read_job(job_b)["restore"]["requestedAt"]

    later = client.ping()  # job C's revert, on the journal's clock, after B's restore was requested
    assert later > requested_at
    pin = step_host.http.post(f"/services/{service}/revert", json={"at": later}).json()
    assert pin["pinnedRevision"] == f"{service}-00002"

    assert deliver(rollback, restore) == 202
    assert step_host.http.get(f"/services/{service}").json()["pinnedRevision"] == f"{service}-00002"
    (record,) = [h for h in client.read_job(job_b)["history"] if h["type"] == "RESTORE_FINISHED"]
    (target,) = record["data"]["details"]["targets"]
    assert record["data"]["outcome"] == "succeeded"
    assert target["pinnedRevision"] == f"{service}-00002"
    assert target["pinnedAt"] == later
