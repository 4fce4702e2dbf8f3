"""KnativeBackend: step services as Knative Services and Triggers, through the official kubernetes client.

The client (kubernetes 37) is imported on first use, not at import time: it takes longer to import than
a function takes to start, and most requests never need it (an unchanged template is cached).

Every API call goes through `_call`, the one place that retries (409, 429, 5xx and connection errors,
with jittered exponential backoff, bounded; a 409 on create means "exists" and is never retried: the
caller applies over it) and maps failures into the `BackendError` hierarchy (401 is CredentialsRefused,
403 PermissionDenied). One `ensure_step_service` is bounded as a whole by ENSURE_DEADLINE_SECONDS.
Core-API reads ask for the raw JSON (`_preload_content=False`): the client's generated models refuse
fields they do not know, and a newer API server adds fields.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Any, TypeVar

from xpipe.backends import knative_objects as objects
from xpipe.backends.base import (
    BackendError,
    BackendUnavailable,
    Conflict,
    CredentialsRefused,
    ExecutionBackend,
    InvalidSpec,
    NotFound,
    PermissionDenied,
    StepServiceSpec,
    TrafficState,
)

log = logging.getLogger("xpipe.backends.knative")

T = TypeVar("T")

FIELD_MANAGER = "xpipe"
# Traffic pins are applied by their own field manager, so re-applying a step Service (which never
# mentions spec.traffic) neither removes a pin nor fights over it.
TRAFFIC_FIELD_MANAGER = "xpipe-traffic"
APPLY_CONTENT_TYPE = "application/apply-patch+yaml"
RETRYABLE_STATUSES = frozenset({409, 429, 500, 502, 503, 504})
LOG_TAIL_LINES = 50
DEFAULT_DEAD_LETTER = ("xpipe", "health-relay")
# A deleted step pod's grace period: the runtime's own stop grace (SIGTERM to SIGKILL of the command),
# then time to write the `cancelled` reply through queue-proxy; the kubelet kills what is left after it.
POD_STOP_GRACE_SECONDS = objects.STOP_GRACE_SECONDS + 12
# How long an applied digest is trusted without asking the cluster: after this, ensure reads the digest
# annotations back (two GETs), so a step Service or Trigger deleted in the cluster is re-created. Submit
# caches its own ensure for as long, relying on the backend to re-check.
APPLIED_CACHE_SECONDS = 60.0
# One ensure (reads, applies, creates and their retries) gives up after this long: a submit waits for it.
ENSURE_DEADLINE_SECONDS = 30.0


class KnativeBackend(ExecutionBackend):
    """Step services in a Kubernetes cluster with Knative Serving and Eventing.

    Objects go to `namespace` (Services and their Triggers; the Triggers subscribe to `broker`). With
    `kubeconfig` None the in-cluster service account is used. Failed calls are retried up to
    `max_attempts` times with full-jitter backoff between `backoff_seconds` and `max_backoff_seconds`.
    """

    def __init__(
        self,
        namespace: str = "xpipe-steps",
        broker: str = "default",
        *,
        kubeconfig: str | None = None,
        context: str | None = None,
        runtime_command: Sequence[str] = ("xpipe-step",),
        dead_letter: tuple[str, str] | None = DEFAULT_DEAD_LETTER,
        max_attempts: int = 5,
        backoff_seconds: float = 0.2,
        max_backoff_seconds: float = 5.0,
        request_timeout_seconds: float = 10.0,
        applied_cache_seconds: float = APPLIED_CACHE_SECONDS,
        ensure_deadline_seconds: float = ENSURE_DEADLINE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._namespace = namespace
        self._broker = broker
        self._kubeconfig = kubeconfig
        self._context = context
        self._runtime_command = tuple(runtime_command)
        self._dead_letter = dead_letter
        self._max_attempts = max(1, max_attempts)
        self._backoff = backoff_seconds
        self._max_backoff = max_backoff_seconds
        self._timeout = request_timeout_seconds
        self._lock = threading.Lock()
        self._client: Any = None
        self._cache_seconds = applied_cache_seconds
        self._ensure_deadline = ensure_deadline_seconds
        self._clock = clock
        # service name -> (template digest applied or seen, clock time it was last confirmed)
        self._applied: dict[str, tuple[str, float]] = {}

    @property
    def namespace(self) -> str:
        return self._namespace

    # --- the client and the one place that calls it ------------------------------------------------

    def _api_client(self) -> Any:
        with self._lock:
            if self._client is None:
                from kubernetes import client, config  # noqa: PLC0415 - slow import, deferred on purpose

                # Untyped in kubernetes 37.
                load_incluster_config: Any = config.load_incluster_config
                new_client_from_config: Any = config.new_client_from_config

                try:
                    if self._kubeconfig is None:
                        configuration = client.Configuration()
                        load_incluster_config(client_configuration=configuration)
                        configuration.retries = 0  # _call retries, with backoff
                        self._client = client.ApiClient(configuration)
                    else:
                        self._client = new_client_from_config(
                            config_file=self._kubeconfig, context=self._context
                        )
                        self._client.configuration.retries = 0
                except config.ConfigException as error:
                    raise BackendUnavailable(f"no Kubernetes configuration: {error}") from None
            return self._client

    def _custom(self) -> Any:
        from kubernetes import client  # noqa: PLC0415

        return client.CustomObjectsApi(self._api_client())

    def _core(self) -> Any:
        from kubernetes import client  # noqa: PLC0415

        return client.CoreV1Api(self._api_client())

    def _call(
        self,
        verb: str,
        resource: str,
        namespace: str,
        call: Callable[[], T],
        *,
        deadline: float | None = None,
    ) -> T:
        """Run `call`, retrying what a retry can fix; every failure leaves as a BackendError.

        The retry policy depends on the verb: a 409 on `create` means the object exists, which the
        caller handles at once (it applies over it), so it is never retried here. No retry starts
        after `deadline` (a `time.monotonic()` value): the last failure is raised instead.
        """
        from kubernetes.client.exceptions import ApiException  # noqa: PLC0415
        from urllib3.exceptions import HTTPError as TransportError  # noqa: PLC0415

        for attempt in range(1, self._max_attempts + 1):
            retry_after: float | None = None
            try:
                return call()
            except ApiException as error:
                status = int(error.status or 0)
                reason = _status_message(error)
                if status == 401:
                    raise CredentialsRefused(verb, resource, reason) from None
                if status == 403:
                    raise PermissionDenied(verb, resource, namespace, reason) from None
                if status == 409 and verb == "create":
                    raise Conflict(f"{resource} already exists: {reason}") from None
                if status == 404:
                    raise NotFound(f"{resource} not found in namespace {namespace!r}: {reason}") from None
                if status in (400, 422):
                    raise InvalidSpec(f"{verb} {resource} rejected: {reason}") from None
                if status not in RETRYABLE_STATUSES and status != 0:
                    raise BackendError(f"{verb} {resource}: HTTP {status}: {reason}") from None
                failure: BackendError = (
                    Conflict(f"{verb} {resource}: conflict persisted: {reason}")
                    if status == 409
                    else BackendUnavailable(f"{verb} {resource}: HTTP {status}: {reason}")
                )
                retry_after = _retry_after(error)
            except TransportError as error:
                failure = BackendUnavailable(
                    f"{verb} {resource}: API server unreachable: {type(error).__name__}"
                )
            if attempt == self._max_attempts:
                raise failure
            delay = random.uniform(0, min(self._max_backoff, self._backoff * 2 ** (attempt - 1)))  # noqa: S311
            if retry_after is not None:
                delay = max(delay, min(retry_after, self._max_backoff))
            if deadline is not None and time.monotonic() + delay > deadline:
                raise failure
            log.info(
                "retrying Kubernetes call",
                extra={
                    "verb": verb,
                    "resource": resource,
                    "attempt": attempt,
                    "delaySeconds": round(delay, 3),
                },
            )
            time.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    # --- custom objects ----------------------------------------------------------------------------

    def _get(
        self, group: str, plural: str, name: str, deadline: float | None = None
    ) -> dict[str, Any] | None:
        try:
            result: dict[str, Any] = self._call(
                "get",
                f"{plural}.{group}",
                self._namespace,
                lambda: self._custom().get_namespaced_custom_object(
                    group, objects.API_VERSION, self._namespace, plural, name, _request_timeout=self._timeout
                ),
                deadline=deadline,
            )
        except NotFound:
            return None
        return result

    def _apply(
        self,
        group: str,
        plural: str,
        body: dict[str, Any],
        manager: str = FIELD_MANAGER,
        deadline: float | None = None,
    ) -> None:
        """Server-side apply; an API server that will not apply to a missing object gets a create."""
        name = body["metadata"]["name"]
        resource = f"{plural}.{group}"
        custom = self._custom()
        for _ in range(self._max_attempts):
            if deadline is not None and time.monotonic() > deadline:
                raise BackendUnavailable(f"{resource} {name!r} not applied before the ensure deadline")
            try:
                self._call(
                    "patch",
                    resource,
                    self._namespace,
                    lambda: custom.patch_namespaced_custom_object(
                        group,
                        objects.API_VERSION,
                        self._namespace,
                        plural,
                        name,
                        body,
                        field_manager=manager,
                        force=True,
                        _content_type=APPLY_CONTENT_TYPE,
                        _request_timeout=self._timeout,
                    ),
                    deadline=deadline,
                )
                return
            except NotFound:
                pass
            try:
                # A create's reply may be 200 or 201; the body is not needed either way.
                self._call(
                    "create",
                    resource,
                    self._namespace,
                    lambda: custom.create_namespaced_custom_object(
                        group,
                        objects.API_VERSION,
                        self._namespace,
                        plural,
                        body,
                        field_manager=manager,
                        _request_timeout=self._timeout,
                    ),
                    deadline=deadline,
                )
                return
            except Conflict:
                continue  # created by someone else meanwhile: apply over it
            except NotFound:
                raise NotFound(
                    f"cannot create {resource} in namespace {self._namespace!r}: the namespace or the "
                    f"{group} API is missing (is Knative installed?)"
                ) from None
        raise Conflict(f"{resource} {name!r} kept appearing and disappearing while being applied")

    def _delete(self, group: str, plural: str, name: str) -> None:
        with contextlib.suppress(NotFound):
            self._call(
                "delete",
                f"{plural}.{group}",
                self._namespace,
                lambda: self._custom().delete_namespaced_custom_object(
                    group, objects.API_VERSION, self._namespace, plural, name, _request_timeout=self._timeout
                ),
            )

    # --- the interface -----------------------------------------------------------------------------

    def _cached(self, spec: StepServiceSpec) -> bool:
        with self._lock:
            found = self._applied.get(spec.name)
        if found is None or found[0] != spec.template_digest:
            return False
        return self._clock() - found[1] < self._cache_seconds

    def _remember(self, spec: StepServiceSpec) -> None:
        with self._lock:
            self._applied[spec.name] = (spec.template_digest, self._clock())

    def ensure_step_service(self, spec: StepServiceSpec) -> bool:
        if self._cached(spec):
            return False
        deadline = time.monotonic() + self._ensure_deadline
        if self._already_applied(spec, deadline):
            self._remember(spec)
            return False
        service = objects.knative_service(spec, self._namespace, self._runtime_command)
        self._apply(objects.SERVING_GROUP, "services", service, deadline=deadline)
        self._apply(
            objects.EVENTING_GROUP,
            "triggers",
            objects.trigger(spec, self._namespace, self._broker, self._dead_letter),
            deadline=deadline,
        )
        self._remember(spec)
        log.info("step service applied", extra={"service": spec.name, "templateDigest": spec.template_digest})
        return True

    def _already_applied(self, spec: StepServiceSpec, deadline: float) -> bool:
        """A cold cache asks the cluster: both objects carry the digest of what was applied last."""
        for group, plural in ((objects.SERVING_GROUP, "services"), (objects.EVENTING_GROUP, "triggers")):
            found = self._get(group, plural, spec.name, deadline)
            annotations = ((found or {}).get("metadata") or {}).get("annotations") or {}
            if annotations.get(objects.ANNOTATION_DIGEST) != spec.template_digest:
                return False
        return True

    def remove_step_service(self, name: str) -> None:
        self._delete(objects.EVENTING_GROUP, "triggers", name)
        self._delete(objects.SERVING_GROUP, "services", name)
        with self._lock:
            self._applied.pop(name, None)

    def _service(self, namespace: str, service: str) -> dict[str, Any]:
        found: dict[str, Any] = self._call(
            "get",
            "services.serving.knative.dev",
            namespace,
            lambda: self._custom().get_namespaced_custom_object(
                objects.SERVING_GROUP,
                objects.API_VERSION,
                namespace,
                "services",
                service,
                _request_timeout=self._timeout,
            ),
        )
        return found

    def _revisions(self, namespace: str, service: str) -> list[dict[str, Any]]:
        listing: dict[str, Any] = self._call(
            "list",
            "revisions.serving.knative.dev",
            namespace,
            lambda: self._custom().list_namespaced_custom_object(
                objects.SERVING_GROUP,
                objects.API_VERSION,
                namespace,
                "revisions",
                label_selector=f"{objects.REVISION_SERVICE_LABEL}={service}",
                _request_timeout=self._timeout,
            ),
        )
        return list(listing.get("items") or [])

    def _apply_traffic(
        self,
        namespace: str,
        service: str,
        revision: str | None,
        *,
        pinned_at: float | None = None,
        resource_version: str | None = None,
    ) -> None:
        body = objects.traffic_patch(
            service, namespace, revision, pinned_at=pinned_at, resource_version=resource_version
        )
        self._call(
            "patch",
            "services.serving.knative.dev",
            namespace,
            lambda: self._custom().patch_namespaced_custom_object(
                objects.SERVING_GROUP,
                objects.API_VERSION,
                namespace,
                "services",
                service,
                body,
                field_manager=TRAFFIC_FIELD_MANAGER,
                force=True,
                _content_type=APPLY_CONTENT_TYPE,
                _request_timeout=self._timeout,
            ),
        )

    def revert_traffic(self, namespace: str, service: str, *, at: float) -> TrafficState:
        current = self._service(namespace, service)
        target = objects.revert_target(current, self._revisions(namespace, service))
        latest = current.get("status", {}).get("latestReadyRevisionName")
        if target is None:
            raise NotFound(f"service {service!r} has no earlier ready revision left to revert to")
        earlier = objects.pinned_at(current)  # a pin kept: it now protects until the newest revert
        pinned_at = at if earlier is None else max(earlier, at)
        self._apply_traffic(namespace, service, target, pinned_at=pinned_at)
        log.info("traffic pinned", extra={"service": service, "revision": target, "latestReady": latest})
        return TrafficState(namespace, service, target, latest, pinned_at)

    def restore_traffic(self, namespace: str, service: str, *, requested_at: float) -> TrafficState:
        current = self._service(namespace, service)
        latest = current.get("status", {}).get("latestReadyRevisionName")
        pinned, pinned_at = objects.pinned_revision(current), objects.pinned_at(current)
        if pinned is not None and pinned_at is not None and pinned_at > requested_at:
            log.info(
                "traffic pin kept: a revert made after the restore was requested holds it",
                extra={"service": service, "revision": pinned, "pinnedAt": pinned_at},
            )
            return TrafficState(namespace, service, pinned, latest, pinned_at)
        # Conditional on the Service as read: if a revert lands in between, the API server refuses this
        # apply (409; retrying the same body cannot help, so it ends as Conflict, which the rollback
        # function answers 503) and the redelivered restore reads the newer pin.
        version = (current.get("metadata") or {}).get("resourceVersion")
        self._apply_traffic(namespace, service, None, resource_version=version)
        log.info("traffic follows the latest revision", extra={"service": service, "latestReady": latest})
        return TrafficState(namespace, service, None, latest)

    # --- cancellation ------------------------------------------------------------------------------

    def stop_attempt(self, service: str, pod: str | None, job_id: str, step: str, attempt: int) -> bool:
        """Delete the pod that runs the attempt, with a bounded grace period (see the base class).

        The pod is read first and deleted only if Knative labels it as a pod of `service`: a pod name
        that is stale or forged never takes down another service's pod. Pods are reused across jobs, so
        a pod whose attempt ended before the cancel arrived may already run another job's attempt; that
        attempt then answers `cancelled`, which the journal treats as a failed attempt and retries.
        """
        extra = {"service": service, "pod": pod, "attempt": f"{job_id}/{step}/{attempt}"}
        if pod is None:
            log.warning("attempt never named its pod (no heart-beat): nothing to stop", extra=extra)
            return False
        core = self._core()
        try:
            found = self._raw_json(
                "get",
                "pods",
                lambda: core.read_namespaced_pod(
                    pod, self._namespace, _preload_content=False, _request_timeout=self._timeout
                ),
            )
        except NotFound:
            log.info("pod already gone: nothing to stop", extra=extra)
            return False
        labels = (found.get("metadata") or {}).get("labels") or {}
        if labels.get(objects.REVISION_SERVICE_LABEL) != service:
            log.warning("pod does not belong to the attempt's service: not stopped", extra=extra)
            return False
        try:
            self._call(
                "delete",
                "pods",
                self._namespace,
                lambda: core.delete_namespaced_pod(
                    pod,
                    self._namespace,
                    grace_period_seconds=POD_STOP_GRACE_SECONDS,
                    _preload_content=False,
                    _request_timeout=self._timeout,
                ),
            )
        except NotFound:
            log.info("pod already gone: nothing to stop", extra=extra)
            return False
        log.info(
            "pod deleted to stop a cancelled attempt", extra={**extra, "graceSeconds": POD_STOP_GRACE_SECONDS}
        )
        return True

    # --- diagnostics -------------------------------------------------------------------------------

    def _raw_json(self, verb: str, resource: str, call: Callable[[], Any]) -> Any:
        response = self._call(verb, resource, self._namespace, call)
        return json.loads(response.data)

    def collect_diagnostics(
        self, job_id: str, services: Sequence[str], since: datetime | None = None
    ) -> dict[str, Any]:
        errors: list[str] = []
        report: dict[str, Any] = {
            "jobId": job_id,
            "backend": "knative",
            "namespace": self._namespace,
            "collectedAt": datetime.now(timezone.utc).isoformat(),
            "services": {},
            "errors": errors,
        }
        for name in services:
            report["services"][name] = self._diagnose_service(name, since, errors)
        return report

    def _diagnose_service(self, name: str, since: datetime | None, errors: list[str]) -> dict[str, Any]:
        entry: dict[str, Any] = {"pods": [], "events": []}
        try:
            service = self._service(self._namespace, name)
            status = service.get("status", {})
            entry["conditions"] = status.get("conditions", [])
            entry["latestReadyRevision"] = status.get("latestReadyRevisionName")
            entry["traffic"] = service.get("spec", {}).get("traffic", [])
        except BackendError as error:
            errors.append(f"service {name}: {error}")
        core = None
        try:
            core = self._core()
            pods = self._raw_json(
                "list",
                "pods",
                lambda: core.list_namespaced_pod(
                    self._namespace,
                    label_selector=f"{objects.REVISION_SERVICE_LABEL}={name}",
                    _preload_content=False,
                    _request_timeout=self._timeout,
                ),
            )
        except BackendError as error:
            errors.append(f"pods of {name}: {error}")
            pods = {"items": []}
        pod_names: set[str] = set()
        for pod in pods.get("items") or []:
            labels = (pod.get("metadata") or {}).get("labels") or {}
            if labels.get(objects.REVISION_SERVICE_LABEL) != name:
                continue  # the server ignored the selector
            pod_entry = _pod_summary(pod)
            pod_names.add(pod_entry["name"])
            for container in pod_entry["containers"]:
                if container["name"] == "queue-proxy":
                    continue
                container["logTail"] = self._log_tail(
                    core, pod_entry["name"], container["name"], since, errors
                )
            entry["pods"].append(pod_entry)
        entry["events"] = self._events(core, {name, *pod_names}, since, errors) if core is not None else []
        return entry

    def _log_tail(
        self, core: Any, pod: str, container: str, since: datetime | None, errors: list[str]
    ) -> str:
        since_seconds = None
        if since is not None:
            since_seconds = max(1, int((datetime.now(timezone.utc) - _aware(since)).total_seconds()))
        try:
            response = self._call(
                "get",
                "pods/log",
                self._namespace,
                lambda: core.read_namespaced_pod_log(
                    pod,
                    self._namespace,
                    container=container,
                    tail_lines=LOG_TAIL_LINES,
                    since_seconds=since_seconds,
                    _preload_content=False,
                    _request_timeout=self._timeout,
                ),
            )
        except BackendError as error:
            errors.append(f"log of {pod}/{container}: {error}")
            return ""
        data = response.data
        return data.decode("utf-8", errors="replace") if isinstance(data, bytes) else str(data)

    def _events(
        self, core: Any, involved: set[str], since: datetime | None, errors: list[str]
    ) -> list[dict[str, Any]]:
        try:
            listing = self._raw_json(
                "list",
                "events",
                lambda: core.list_namespaced_event(
                    self._namespace, _preload_content=False, _request_timeout=self._timeout
                ),
            )
        except BackendError as error:
            errors.append(f"events: {error}")
            return []
        found = []
        for event in listing.get("items") or []:
            involved_name = (event.get("involvedObject") or {}).get("name")
            when = event.get("lastTimestamp") or event.get("eventTime") or event.get("firstTimestamp")
            if involved_name not in involved:
                continue
            if since is not None and when and _parse_time(when) < _aware(since):
                continue
            found.append(
                {
                    "object": involved_name,
                    "kind": (event.get("involvedObject") or {}).get("kind"),
                    "type": event.get("type"),
                    "reason": event.get("reason"),
                    "message": event.get("message"),
                    "count": event.get("count"),
                    "lastTimestamp": when,
                }
            )
        return found

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None


def _pod_summary(pod: dict[str, Any]) -> dict[str, Any]:
    status = pod.get("status") or {}
    containers = []
    for container in status.get("containerStatuses") or []:
        containers.append(
            {
                "name": container.get("name"),
                "ready": container.get("ready"),
                "restartCount": container.get("restartCount", 0),
                "state": container.get("state", {}),
                "lastState": container.get("lastState", {}),
            }
        )
    return {
        "name": (pod.get("metadata") or {}).get("name"),
        "phase": status.get("phase"),
        "conditions": [
            {"type": c.get("type"), "status": c.get("status"), "reason": c.get("reason")}
            for c in status.get("conditions") or []
        ],
        "containers": containers,
    }


def _status_message(error: Any) -> str:
    """The API server's Status message (never the request, which could carry a token)."""
    body = getattr(error, "body", None)
    if body:
        try:
            parsed = json.loads(body)
            if isinstance(parsed, dict) and parsed.get("message"):
                return str(parsed["message"])[:500]
        except (TypeError, ValueError):
            pass
    return str(getattr(error, "reason", "") or "no reason given")


def _retry_after(error: Any) -> float | None:
    headers = getattr(error, "headers", None) or {}
    raw = headers.get("Retry-After") if hasattr(headers, "get") else None
    try:
        return float(raw) if raw is not None else None
    except ValueError:
        return None


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _parse_time(text: str) -> datetime:
    try:
        return _aware(datetime.fromisoformat(text.replace("Z", "+00:00")))
    except ValueError:
        return datetime.min.replace(tzinfo=timezone.utc)
