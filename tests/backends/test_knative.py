"""KnativeBackend against kmock's Kubernetes emulator: a real HTTP server speaking the Kubernetes API.

The kubernetes client is synchronous and kmock serves from the test's event loop, so every backend call
runs in a thread (asyncio.to_thread). What the Knative controllers would do (set a Service's status,
create Revisions) the tests do directly on the emulator's objects.
"""

from __future__ import annotations

import asyncio
import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kmock
import pytest
import yaml

from xpipe.backends.base import (
    BackendUnavailable,
    Conflict,
    CredentialsRefused,
    NotFound,
    PermissionDenied,
    StepServiceSpec,
)
from xpipe.backends.knative import APPLIED_CACHE_SECONDS, POD_STOP_GRACE_SECONDS, KnativeBackend

SCHEMAS = Path("/work/shared/schemas/knative")
NAMESPACE = "xpipe-steps"
SERVICES = "serving.knative.dev/v1/services"
REVISIONS = "serving.knative.dev/v1/revisions"
TRIGGERS = "eventing.knative.dev/v1/triggers"

pytestmark = pytest.mark.asyncio


def strict(schema: Any) -> Any:
    """The CRD schema as plain JSON Schema, with unknown fields refused where Kubernetes would prune them."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    result = {key: strict(value) for key, value in schema.items() if not key.startswith("x-kubernetes-")}
    prunable = "properties" in schema and not schema.get("x-kubernetes-preserve-unknown-fields")
    if prunable and "additionalProperties" not in schema:
        result["additionalProperties"] = False
    return result


@cache
def validator(kind: str) -> jsonschema.Draft7Validator:
    filename = {"Service": "serving-service.yaml", "Trigger": "eventing-trigger.yaml"}[kind]
    crd = yaml.safe_load((SCHEMAS / filename).read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    root = strict(version["schema"]["openAPIV3Schema"])
    # Every object has these, so CRD schemas leave them out.
    root["properties"] |= {
        "apiVersion": {"type": "string"},
        "kind": {"type": "string"},
        "metadata": {"type": "object"},
    }
    return jsonschema.Draft7Validator(root)


def assert_schema_valid(obj: dict[str, Any]) -> None:
    errors = sorted(validator(obj["kind"]).iter_errors(obj), key=lambda e: list(e.absolute_path))
    assert not errors, [f"{list(e.absolute_path)}: {e.message}" for e in errors]


def sent_objects(server: kmock.KubernetesEmulator) -> list[dict[str, Any]]:
    """Every object body the backend sent (creates and applies)."""
    return [request.data for request in server if request.method in ("POST", "PATCH", "PUT")]


def make_spec(
    digest: str = "sha256:aaa", argv: tuple[str, ...] = ("deploy", "--env={{ params.env }}")
) -> StepServiceSpec:
    return StepServiceSpec(
        name="demo-ok-deploy",
        template="demo-ok",
        step="deploy",
        image="registry.example/xpipe-step:1",
        argv=argv,
        env={"TARGET": "{{ params.target }}"},
        timeout_seconds=120,
        template_digest=digest,
        heartbeat_seconds=5,
    )


@pytest.fixture
def kubeconfig(kmock: kmock.KubernetesEmulator, tmp_path: Path) -> str:
    path = tmp_path / "kubeconfig"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "emulator", "cluster": {"server": str(kmock.url).rstrip("/")}}],
                "users": [{"name": "tester", "user": {"token": "not-a-secret"}}],
                "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "tester"}}],
                "current-context": "emulator",
            }
        )
    )
    return str(path)


@pytest.fixture
def backend(kubeconfig: str) -> KnativeBackend:
    return KnativeBackend(
        NAMESPACE, "default", kubeconfig=kubeconfig, backoff_seconds=0.01, max_backoff_seconds=0.05
    )


async def test_apply_creates_schema_valid_service_and_trigger(
    kmock: kmock.KubernetesEmulator, backend: KnativeBackend
) -> None:
    spec = make_spec()
    assert await asyncio.to_thread(backend.ensure_step_service, spec) is True
    bodies = sent_objects(kmock)
    assert {body["kind"] for body in bodies} == {"Service", "Trigger"}
    for body in bodies:
        assert_schema_valid(body)
    service = kmock.objects[SERVICES, NAMESPACE, "demo-ok-deploy"].raw
    template = service["spec"]["template"]
    assert template["metadata"]["annotations"]["autoscaling.knative.dev/min-scale"] == "0"
    assert template["metadata"]["labels"] == {"xpipe.io/template": "demo-ok", "xpipe.io/step": "deploy"}
    assert service["metadata"]["labels"]["xpipe.io/step"] == "deploy"
    container = template["spec"]["containers"][0]
    assert template["spec"]["containerConcurrency"] == 1
    assert template["spec"]["timeoutSeconds"] == 120
    assert container["command"] == ["xpipe-step"]
    args = container["args"]
    assert args[args.index("--timeout-seconds") + 1] == "120"  # the runtime keeps its own stop margin
    assert args[args.index("--") + 1 :] == ["deploy", "--env={{ params.env }}"]  # unrendered, after --
    assert args[args.index("--env") : args.index("--env") + 2] == ["--env", "TARGET={{ params.target }}"]
    trigger = kmock.objects[TRIGGERS, NAMESPACE, "demo-ok-deploy"].raw
    assert trigger["spec"]["filter"]["attributes"] == {
        "type": "com.xpipe.step.run",
        "xpipestep": "demo-ok-deploy",
    }
    assert trigger["spec"]["subscriber"]["ref"]["name"] == "demo-ok-deploy"
    assert trigger["spec"]["broker"] == "default"
    # The apply is a real server-side apply: content type, field manager and force.
    patches = [request for request in kmock if request.method == "PATCH"]
    assert patches
    for request in patches:
        assert request.headers["Content-Type"] == "application/apply-patch+yaml"
        assert request.params["fieldManager"] == "xpipe"
        assert request.params["force"] == "true"


async def test_applying_the_same_template_version_again_sends_nothing(
    kmock: kmock.KubernetesEmulator, backend: KnativeBackend, kubeconfig: str
) -> None:
    spec = make_spec()
    await asyncio.to_thread(backend.ensure_step_service, spec)
    writes = len(sent_objects(kmock))
    assert await asyncio.to_thread(backend.ensure_step_service, spec) is False
    assert len(sent_objects(kmock)) == writes
    # A fresh process (cold cache) reads the digest back from the objects instead of re-applying.
    fresh = KnativeBackend(NAMESPACE, kubeconfig=kubeconfig)
    assert await asyncio.to_thread(fresh.ensure_step_service, spec) is False
    assert len(sent_objects(kmock)) == writes
    # A new template version is applied (over the existing objects).
    assert (
        await asyncio.to_thread(fresh.ensure_step_service, make_spec("sha256:bbb", ("deploy", "v2"))) is True
    )
    service = kmock.objects[SERVICES, NAMESPACE, "demo-ok-deploy"].raw
    assert service["metadata"]["annotations"]["xpipe.io/template-digest"] == "sha256:bbb"
    assert service["spec"]["template"]["spec"]["containers"][0]["args"][-2:] == ["deploy", "v2"]
    for body in sent_objects(kmock):
        assert_schema_valid(body)


async def test_a_step_service_deleted_in_the_cluster_is_recreated_once_the_cache_expires(
    kmock: kmock.KubernetesEmulator, kubeconfig: str
) -> None:
    now = [1000.0]
    backend = KnativeBackend(NAMESPACE, kubeconfig=kubeconfig, backoff_seconds=0.01, clock=lambda: now[0])
    spec = make_spec()
    assert await asyncio.to_thread(backend.ensure_step_service, spec) is True
    del kmock.objects[SERVICES, NAMESPACE, "demo-ok-deploy"]  # someone deleted it in the cluster
    requests = len(list(kmock))
    now[0] += APPLIED_CACHE_SECONDS - 1  # within the limit: trusted, nothing is asked
    assert await asyncio.to_thread(backend.ensure_step_service, spec) is False
    assert len(list(kmock)) == requests
    now[0] += 2  # past the limit: the digest is read back, the missing Service is applied again
    assert await asyncio.to_thread(backend.ensure_step_service, spec) is True
    service = kmock.objects[SERVICES, NAMESPACE, "demo-ok-deploy"].raw
    assert service["metadata"]["annotations"]["xpipe.io/template-digest"] == spec.template_digest
    # Confirmed again: the next ensure within the limit sends nothing; after it, only reads.
    writes = len(sent_objects(kmock))
    assert await asyncio.to_thread(backend.ensure_step_service, spec) is False
    now[0] += APPLIED_CACHE_SECONDS + 1
    assert await asyncio.to_thread(backend.ensure_step_service, spec) is False
    assert len(sent_objects(kmock)) == writes


def revision(
    name: str, generation: int, ready: bool = True, service: str = "demo-ok-deploy"
) -> dict[str, Any]:
    return {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Revision",
        "metadata": {
            "name": name,
            "namespace": NAMESPACE,
            "labels": {
                "serving.knative.dev/service": service,
                "serving.knative.dev/configurationGeneration": str(generation),
            },
        },
        "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }


def seed_revisions(
    kmock: kmock.KubernetesEmulator, revisions: list[tuple[str, int, bool]], latest_ready: str
) -> None:
    """What Knative's controllers would have done after these deploys."""
    kmock.objects[SERVICES, NAMESPACE, "demo-ok-deploy"].patch(
        {"status": {"latestReadyRevisionName": latest_ready}}
    )
    for name, generation, ready in revisions:
        kmock.objects[REVISIONS, NAMESPACE, f"demo-ok-deploy-{name}"] = revision(
            f"demo-ok-deploy-{name}", generation, ready
        )


def pinned_traffic(kmock: kmock.KubernetesEmulator) -> Any:
    return kmock.objects[SERVICES, NAMESPACE, "demo-ok-deploy"].raw["spec"].get("traffic")


async def test_repeated_and_concurrent_reverts_converge_on_one_pin(
    kmock: kmock.KubernetesEmulator, backend: KnativeBackend
) -> None:
    await asyncio.to_thread(backend.ensure_step_service, make_spec())
    seed_revisions(
        kmock, [("00001", 1, True), ("00002", 2, True), ("00003", 3, True)], "demo-ok-deploy-00003"
    )
    # Three concurrent deliveries of one revert, then two redeliveries: every one reports the same pin.
    states = await asyncio.gather(
        *[asyncio.to_thread(backend.revert_traffic, NAMESPACE, "demo-ok-deploy", at=100.0) for _ in range(3)]
    )
    states += [
        await asyncio.to_thread(backend.revert_traffic, NAMESPACE, "demo-ok-deploy", at=100.0)
        for _ in range(2)
    ]
    assert {state.pinned_revision for state in states} == {"demo-ok-deploy-00002"}
    assert pinned_traffic(kmock) == [
        {"revisionName": "demo-ok-deploy-00002", "latestRevision": False, "percent": 100}
    ]


async def test_a_revert_after_a_deploy_that_never_became_ready_pins_the_last_good_revision(
    kmock: kmock.KubernetesEmulator, backend: KnativeBackend
) -> None:
    await asyncio.to_thread(backend.ensure_step_service, make_spec())
    seed_revisions(
        kmock, [("00001", 1, True), ("00002", 2, True), ("00003", 3, False)], "demo-ok-deploy-00002"
    )
    state = await asyncio.to_thread(backend.revert_traffic, NAMESPACE, "demo-ok-deploy", at=100.0)
    assert state.pinned_revision == "demo-ok-deploy-00002"


async def test_revert_pins_previous_ready_revision_and_restore_follows_latest(
    kmock: kmock.KubernetesEmulator, backend: KnativeBackend
) -> None:
    await asyncio.to_thread(backend.ensure_step_service, make_spec())
    # What Knative's controllers would have done after four deploys (the third revision never got ready)
    kmock.objects[SERVICES, NAMESPACE, "demo-ok-deploy"].patch(
        {"status": {"latestReadyRevisionName": "demo-ok-deploy-00004"}}
    )
    for name, generation, ready in [
        ("00001", 1, True),
        ("00002", 2, True),
        ("00003", 3, False),
        ("00004", 4, True),
    ]:
        kmock.objects[REVISIONS, NAMESPACE, f"demo-ok-deploy-{name}"] = revision(
            f"demo-ok-deploy-{name}", generation, ready
        )
    # Another service's newer revision, returned because the emulator ignores label selectors.
    kmock.objects[REVISIONS, NAMESPACE, "other-00009"] = revision("other-00009", 9, service="other")

    state = await asyncio.to_thread(backend.revert_traffic, NAMESPACE, "demo-ok-deploy", at=100.0)
    assert state.pinned_revision == "demo-ok-deploy-00002"
    assert state.latest_ready_revision == "demo-ok-deploy-00004"
    service = kmock.objects[SERVICES, NAMESPACE, "demo-ok-deploy"].raw
    assert service["spec"]["traffic"] == [
        {"revisionName": "demo-ok-deploy-00002", "latestRevision": False, "percent": 100}
    ]
    assert_schema_valid(service)
    traffic_patch = [request for request in kmock if request.method == "PATCH"][-1]
    assert traffic_patch.params["fieldManager"] == "xpipe-traffic"

    # A pinned service keeps its pin: a deploy made while pinned never served.
    state = await asyncio.to_thread(backend.revert_traffic, NAMESPACE, "demo-ok-deploy", at=100.0)
    assert state.pinned_revision == "demo-ok-deploy-00002"

    state = await asyncio.to_thread(backend.restore_traffic, NAMESPACE, "demo-ok-deploy", requested_at=150.0)
    assert state.pinned_revision is None
    service = kmock.objects[SERVICES, NAMESPACE, "demo-ok-deploy"].raw
    assert service["spec"]["traffic"] == [{"latestRevision": True, "percent": 100}]
    for body in sent_objects(kmock):  # the traffic applies too
        assert_schema_valid(body)


async def test_a_restore_requested_before_the_newest_revert_leaves_the_pin(
    kmock: kmock.KubernetesEmulator, backend: KnativeBackend
) -> None:
    await asyncio.to_thread(backend.ensure_step_service, make_spec())
    seed_revisions(
        kmock, [("00001", 1, True), ("00002", 2, True), ("00003", 3, True)], "demo-ok-deploy-00003"
    )
    first = await asyncio.to_thread(backend.revert_traffic, NAMESPACE, "demo-ok-deploy", at=100.0)
    service = kmock.objects[SERVICES, NAMESPACE, "demo-ok-deploy"].raw
    assert service["metadata"]["annotations"]["xpipe.io/pinned-at"] == "100.000000"
    assert first.pinned_at == 100.0
    # Another job's revert of the pinned Service keeps the pin and moves its time forward, never back.
    later = await asyncio.to_thread(backend.revert_traffic, NAMESPACE, "demo-ok-deploy", at=200.0)
    late = await asyncio.to_thread(backend.revert_traffic, NAMESPACE, "demo-ok-deploy", at=150.0)
    assert (later.pinned_at, late.pinned_at) == (200.0, 200.0)
    assert later.pinned_revision == late.pinned_revision == "demo-ok-deploy-00002"

    # A job that succeeded before that revert asks to restore late: nothing is sent, the pin stays.
    patches = len([request for request in kmock if request.method == "PATCH"])
    kept = await asyncio.to_thread(backend.restore_traffic, NAMESPACE, "demo-ok-deploy", requested_at=199.0)
    assert (kept.pinned_revision, kept.pinned_at) == ("demo-ok-deploy-00002", 200.0)
    assert len([request for request in kmock if request.method == "PATCH"]) == patches
    assert pinned_traffic(kmock) == [
        {"revisionName": "demo-ok-deploy-00002", "latestRevision": False, "percent": 100}
    ]

    # A restore requested after it lifts the pin, conditional on the Service as it was read (the
    # emulator keeps no resourceVersion: set one as the API server would have).
    kmock.objects[SERVICES, NAMESPACE, "demo-ok-deploy"].patch({"metadata": {"resourceVersion": "4711"}})
    lifted = await asyncio.to_thread(backend.restore_traffic, NAMESPACE, "demo-ok-deploy", requested_at=201.0)
    assert (lifted.pinned_revision, lifted.pinned_at) == (None, None)
    assert pinned_traffic(kmock) == [{"latestRevision": True, "percent": 100}]
    apply = [request for request in kmock if request.method == "PATCH"][-1].data
    assert apply["metadata"].get("resourceVersion") == "4711"
    assert "annotations" not in apply["metadata"]  # server-side apply drops the pin's time with the pin


async def test_revert_of_a_missing_service_is_not_found(
    backend: KnativeBackend, kmock: kmock.KubernetesEmulator
) -> None:
    kmock.resources[SERVICES] = kmock.ResourceInfo(kind="Service", namespaced=True)
    with pytest.raises(NotFound):
        await asyncio.to_thread(backend.revert_traffic, NAMESPACE, "nope", at=100.0)


async def test_forbidden_apply_names_the_verb_and_resource(
    kmock: kmock.KubernetesEmulator, backend: KnativeBackend
) -> None:
    message = 'services.serving.knative.dev "demo-ok-deploy" is forbidden: User cannot patch'
    forbidden = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 403, "message": message}
    # The Service exists (an earlier template version), so the apply reaches RBAC, which refuses it.
    kmock.objects[SERVICES, NAMESPACE, "demo-ok-deploy"] = {
        "metadata": {"name": "demo-ok-deploy", "namespace": NAMESPACE}
    }
    kmock["patch", kmock.resource(SERVICES)] << 403 << forbidden
    with pytest.raises(PermissionDenied) as caught:
        await asyncio.to_thread(backend.ensure_step_service, make_spec())
    assert caught.value.verb == "patch"
    assert caught.value.resource == "services.serving.knative.dev"
    assert caught.value.namespace == NAMESPACE
    assert "cannot patch services.serving.knative.dev" in str(caught.value)
    assert "not-a-secret" not in str(caught.value)
    assert len([request for request in kmock if request.method == "PATCH"]) == 1  # a 403 is not retried


async def test_conflicts_are_retried_then_reported(
    kmock: kmock.KubernetesEmulator, backend: KnativeBackend
) -> None:
    await asyncio.to_thread(backend.ensure_step_service, make_spec())
    conflict = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Conflict", "code": 409,
                "message": "the object has been modified"}  # fmt: skip
    before = len([r for r in kmock if r.method == "PATCH"])
    kmock["patch"][before : before + 2] << 409 << conflict  # the next two patches conflict, then pass
    assert await asyncio.to_thread(backend.ensure_step_service, make_spec("sha256:ccc")) is True
    assert (
        len([r for r in kmock if r.method == "PATCH"]) - before == 4
    )  # 2 conflicts, then Service and Trigger

    kmock["patch"] << 409 << conflict  # a conflict that never clears
    with pytest.raises(Conflict):
        await asyncio.to_thread(backend.ensure_step_service, make_spec("sha256:ddd"))
    assert Conflict.retryable


async def test_diagnostics_report_pods_restarts_events_and_log_tails(
    kmock: kmock.KubernetesEmulator, backend: KnativeBackend
) -> None:
    await asyncio.to_thread(backend.ensure_step_service, make_spec())
    kmock.objects["v1/pods", NAMESPACE, "demo-ok-deploy-00001-deployment-abc"] = {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "demo-ok-deploy-00001-deployment-abc", "namespace": NAMESPACE,
                     "labels": {"serving.knative.dev/service": "demo-ok-deploy"}},
        "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "False", "reason": "x"}],
                   "containerStatuses": [
                       {"name": "step", "ready": False, "restartCount": 3,
                        "state": {"waiting": {"reason": "CrashLoopBackOff"}}},
                       {"name": "queue-proxy", "ready": True, "restartCount": 0, "state": {"running": {}}}]},
    }  # fmt: skip
    kmock.objects["v1/pods", NAMESPACE, "unrelated"] = {
        "metadata": {"name": "unrelated", "namespace": NAMESPACE}
    }
    kmock.objects["v1/events", NAMESPACE, "e1"] = {
        "metadata": {"name": "e1", "namespace": NAMESPACE}, "type": "Warning", "reason": "BackOff",
        "message": "Back-off restarting failed container", "count": 7,
        "lastTimestamp": "2030-01-01T00:00:00Z",
        "involvedObject": {"kind": "Pod", "name": "demo-ok-deploy-00001-deployment-abc"},
    }  # fmt: skip
    (
        kmock["get /api/v1/namespaces/xpipe-steps/pods/demo-ok-deploy-00001-deployment-abc/log"]
        << b"boom\nexit 1\n"
    )

    report = await asyncio.to_thread(backend.collect_diagnostics, "job-1", ["demo-ok-deploy", "ghost"])
    json.dumps(report)  # JSON-ready
    entry = report["services"]["demo-ok-deploy"]
    assert [pod["name"] for pod in entry["pods"]] == ["demo-ok-deploy-00001-deployment-abc"]
    step = entry["pods"][0]["containers"][0]
    assert step["restartCount"] == 3
    assert step["state"] == {"waiting": {"reason": "CrashLoopBackOff"}}
    assert step["logTail"] == "boom\nexit 1\n"
    assert "logTail" not in entry["pods"][0]["containers"][1]
    assert entry["events"][0]["reason"] == "BackOff"
    assert report["jobId"] == "job-1"
    assert any("ghost" in error for error in report["errors"])  # best effort: the missing one is named


def step_pod(name: str, service: str) -> dict[str, Any]:
    labels = {"serving.knative.dev/service": service}
    metadata = {"name": name, "namespace": NAMESPACE, "labels": labels}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "status": {"phase": "Running"}}


def live_pods(server: kmock.KubernetesEmulator) -> set[str]:
    """Pods that exist (kmock keeps a deleted object's history, marked deleted)."""
    return {key[2] for key, history in server.objects.items() if key[0] == "v1/pods" and not history.deleted}


async def test_stop_attempt_deletes_the_attempts_pod_with_a_bounded_grace_period(
    kmock: kmock.KubernetesEmulator, backend: KnativeBackend
) -> None:
    running = "demo-ok-deploy-00001-deployment-abc"
    kmock.objects["v1/pods", NAMESPACE, running] = step_pod(running, "demo-ok-deploy")
    kmock.objects["v1/pods", NAMESPACE, "demo-ok-deploy-00001-deployment-def"] = step_pod(
        "demo-ok-deploy-00001-deployment-def", "demo-ok-deploy"
    )

    stopped = await asyncio.to_thread(backend.stop_attempt, "demo-ok-deploy", running, "job-1", "deploy", 1)
    assert stopped is True
    (delete,) = [r for r in kmock if r.method == "DELETE"]
    assert delete.url.path == f"/api/v1/namespaces/{NAMESPACE}/pods/{running}"
    assert delete.params["gracePeriodSeconds"] == str(POD_STOP_GRACE_SECONDS)
    assert 0 < POD_STOP_GRACE_SECONDS <= 30
    assert live_pods(kmock) == {"demo-ok-deploy-00001-deployment-def"}  # the other replica keeps running

    # Idempotent: the pod is gone, so a redelivered cancel deletes nothing.
    again = await asyncio.to_thread(backend.stop_attempt, "demo-ok-deploy", running, "job-1", "deploy", 1)
    assert again is False
    assert len([r for r in kmock if r.method == "DELETE"]) == 1


async def test_stop_attempt_never_deletes_a_pod_of_another_service_or_guesses_one(
    kmock: kmock.KubernetesEmulator, backend: KnativeBackend
) -> None:
    kmock.objects["v1/pods", NAMESPACE, "shop-00003-deployment-x"] = step_pod(
        "shop-00003-deployment-x", "shop"
    )
    kmock.objects["v1/pods", NAMESPACE, "demo-ok-deploy-00001-deployment-abc"] = step_pod(
        "demo-ok-deploy-00001-deployment-abc", "demo-ok-deploy"
    )
    foreign = await asyncio.to_thread(
        backend.stop_attempt, "demo-ok-deploy", "shop-00003-deployment-x", "job-1", "deploy", 1
    )
    assert foreign is False  # a stale or forged pod name never takes down another service's pod
    no_pod = await asyncio.to_thread(backend.stop_attempt, "demo-ok-deploy", None, "job-1", "deploy", 1)
    assert no_pod is False  # an attempt that never sent a heart-beat named no pod: nothing is guessed
    assert not [r for r in kmock if r.method == "DELETE"]
    assert len(live_pods(kmock)) == 2


async def test_stop_attempt_without_delete_permission_names_what_is_missing(
    kmock: kmock.KubernetesEmulator, backend: KnativeBackend
) -> None:
    running = "demo-ok-deploy-00001-deployment-abc"
    kmock.objects["v1/pods", NAMESPACE, running] = step_pod(running, "demo-ok-deploy")
    message = f'pods "{running}" is forbidden: User cannot delete resource "pods"'
    forbidden = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 403, "message": message}
    kmock["delete", kmock.resource("v1/pods")] << 403 << forbidden
    with pytest.raises(PermissionDenied) as caught:
        await asyncio.to_thread(backend.stop_attempt, "demo-ok-deploy", running, "job-1", "deploy", 1)
    assert (caught.value.verb, caught.value.resource, caught.value.namespace) == ("delete", "pods", NAMESPACE)


async def test_a_create_that_finds_the_object_existing_applies_over_it_at_once(
    kmock: kmock.KubernetesEmulator, backend: KnativeBackend
) -> None:
    # Someone else created the Service between our apply (404: missing) and our create (409: exists).
    kmock.objects[SERVICES, NAMESPACE, "demo-ok-deploy"] = {
        "metadata": {"name": "demo-ok-deploy", "namespace": NAMESPACE}
    }
    missing = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404,
               "message": "not found"}  # fmt: skip
    exists = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "AlreadyExists",
              "code": 409, "message": "already exists"}  # fmt: skip
    kmock["patch", kmock.resource(SERVICES)][0:1] << 404 << missing
    kmock["post", kmock.resource(SERVICES)] << 409 << exists
    assert await asyncio.to_thread(backend.ensure_step_service, make_spec()) is True
    service_requests = [r for r in kmock if r.method in ("POST", "PATCH") and "/services" in str(r.url)]
    assert [r.method for r in service_requests] == ["PATCH", "POST", "PATCH"]  # the 409 is not retried
    service = kmock.objects[SERVICES, NAMESPACE, "demo-ok-deploy"].raw
    assert service["metadata"]["annotations"]["xpipe.io/template-digest"] == "sha256:aaa"


async def test_an_ensure_gives_up_at_its_deadline(kmock: kmock.KubernetesEmulator, kubeconfig: str) -> None:
    backend = KnativeBackend(NAMESPACE, kubeconfig=kubeconfig, max_attempts=1000, backoff_seconds=0.05,
                             max_backoff_seconds=0.1, ensure_deadline_seconds=0.5)  # fmt: skip
    unavailable = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 503, "message": "down"}
    kmock["get"] << 503 << unavailable
    with pytest.raises(BackendUnavailable):
        await asyncio.to_thread(backend.ensure_step_service, make_spec())
    # 1000 attempts would take minutes: the deadline stopped the retries long before.
    assert 1 <= len([r for r in kmock if r.method == "GET"]) < 100


async def test_refused_credentials_are_their_own_error(
    kmock: kmock.KubernetesEmulator, backend: KnativeBackend
) -> None:
    unauthorized = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 401,
                    "message": "Unauthorized"}  # fmt: skip
    kmock["get"] << 401 << unauthorized
    with pytest.raises(CredentialsRefused) as caught:
        await asyncio.to_thread(backend.ensure_step_service, make_spec())
    assert not isinstance(caught.value, PermissionDenied)
    assert "refused the credentials" in str(caught.value)
    assert "not-a-secret" not in str(caught.value)
    assert not caught.value.retryable
    assert len([r for r in kmock if r.method == "GET"]) == 1  # a 401 is not retried
