"""The Kubernetes objects of a step service, as plain dicts: its Knative Service and its Trigger.

Pure functions, no API calls: the Knative backend applies what these return, and the tests validate
them against the Knative CRD schemas. Also here: choosing the revision a traffic revert pins to.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

from xpipe.backends.base import StepServiceSpec
from xpipe.events import EXT_STEP, STEP_RUN

SERVING_GROUP = "serving.knative.dev"
EVENTING_GROUP = "eventing.knative.dev"
API_VERSION = "v1"

LABEL_TEMPLATE = "xpipe.io/template"
LABEL_STEP = "xpipe.io/step"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_PART_OF = "app.kubernetes.io/part-of"
ANNOTATION_DIGEST = "xpipe.io/template-digest"
# On a Service whose traffic a revert pinned: the journal time (Unix seconds) of the newest revert that
# holds the pin. A restore requested before it leaves the pin alone (ExecutionBackend.restore_traffic).
ANNOTATION_PINNED_AT = "xpipe.io/pinned-at"
ANNOTATION_MIN_SCALE = "autoscaling.knative.dev/min-scale"
# Knative's own labels on a Revision.
REVISION_SERVICE_LABEL = "serving.knative.dev/service"
REVISION_GENERATION_LABEL = "serving.knative.dev/configurationGeneration"

STEP_CONTAINER = "step"
STEP_PORT = 8080
# The runtime is given Knative's request time-out (the template's timeoutSeconds) and stops the command
# early enough to reply before it (xpipe.step.limits); this grace is its SIGTERM-to-SIGKILL wait.
STOP_GRACE_SECONDS = 3
# The broker's delivery of a step.run waits a little longer than the runtime may hold the request.
DELIVERY_TIMEOUT_MARGIN_SECONDS = 5
# Step Services are reached only through the Broker: never published on the cluster's external gateway.
LABEL_VISIBILITY = "networking.knative.dev/visibility"
# The broker's delivery of step.run: retried (idempotent in the runtime), then dead-lettered.
STEP_RUN_RETRIES = 3
STEP_RUN_BACKOFF_DELAY = "PT2S"

_LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")


def label_value(text: str) -> str:
    """`text` as a valid label value (at most 63 characters of [-A-Za-z0-9_.], alphanumeric at both ends)."""
    cleaned = re.sub(r"[^-A-Za-z0-9_.]+", "-", text)[:63].strip("-_.")
    assert _LABEL_VALUE.fullmatch(cleaned)
    return cleaned


def step_labels(spec: StepServiceSpec) -> dict[str, str]:
    return {
        **{key: label_value(value) for key, value in spec.labels.items()},
        LABEL_TEMPLATE: label_value(spec.template),
        LABEL_STEP: label_value(spec.step),
    }


def runtime_args(spec: StepServiceSpec) -> list[str]:
    """The step runtime's arguments: its options, the step's unrendered env, then `--` and the argv."""
    args = [
        "--heartbeat-seconds",
        f"{spec.heartbeat_seconds:g}",
        "--stop-grace-seconds",
        str(STOP_GRACE_SECONDS),
        "--timeout-seconds",
        str(spec.timeout_seconds),
    ]
    for name, value in sorted(spec.env.items()):
        args += ["--env", f"{name}={value}"]
    return [*args, "--", *spec.argv]


def knative_service(spec: StepServiceSpec, namespace: str, runtime_command: Iterable[str]) -> dict[str, Any]:
    """The step's `serving.knative.dev/v1` Service: scale to zero, one run per pod, the runtime in front."""
    labels = step_labels(spec)
    return {
        "apiVersion": f"{SERVING_GROUP}/{API_VERSION}",
        "kind": "Service",
        "metadata": {
            "name": spec.name,
            "namespace": namespace,
            "labels": {
                **labels,
                LABEL_MANAGED_BY: "xpipe",
                LABEL_PART_OF: "xpipe",
                LABEL_VISIBILITY: "cluster-local",
            },
            "annotations": {ANNOTATION_DIGEST: spec.template_digest},
        },
        "spec": {
            "template": {
                "metadata": {
                    "labels": labels,
                    "annotations": {ANNOTATION_MIN_SCALE: "0", ANNOTATION_DIGEST: spec.template_digest},
                },
                "spec": {
                    "containerConcurrency": 1,
                    "timeoutSeconds": spec.timeout_seconds,
                    "containers": [
                        {
                            "name": STEP_CONTAINER,
                            "image": spec.image,
                            "command": list(runtime_command),
                            "args": runtime_args(spec),
                            "ports": [{"containerPort": STEP_PORT}],
                            "readinessProbe": {"httpGet": {"path": "/health/readiness"}},
                            "livenessProbe": {"httpGet": {"path": "/health/liveness"}},
                        }
                    ],
                },
            }
        },
    }


def trigger(
    spec: StepServiceSpec,
    namespace: str,
    broker: str,
    dead_letter: tuple[str, str] | None,
) -> dict[str, Any]:
    """The step's Trigger: `type=com.xpipe.step.run, xpipestep=<name>` to its Service."""
    delivery: dict[str, Any] = {
        "retry": STEP_RUN_RETRIES,
        "backoffPolicy": "exponential",
        "backoffDelay": STEP_RUN_BACKOFF_DELAY,
        # The runtime holds the request until the command ends: the delivery must wait as long.
        "timeout": f"PT{spec.timeout_seconds + DELIVERY_TIMEOUT_MARGIN_SECONDS}S",
    }
    if dead_letter is not None:
        dl_namespace, dl_service = dead_letter
        delivery["deadLetterSink"] = {
            "ref": {
                "apiVersion": f"{SERVING_GROUP}/{API_VERSION}",
                "kind": "Service",
                "name": dl_service,
                "namespace": dl_namespace,
            }
        }
    return {
        "apiVersion": f"{EVENTING_GROUP}/{API_VERSION}",
        "kind": "Trigger",
        "metadata": {
            "name": spec.name,
            "namespace": namespace,
            "labels": {**step_labels(spec), LABEL_MANAGED_BY: "xpipe", LABEL_PART_OF: "xpipe"},
            "annotations": {ANNOTATION_DIGEST: spec.template_digest},
        },
        "spec": {
            "broker": broker,
            "filter": {"attributes": {"type": STEP_RUN, EXT_STEP: spec.name}},
            "subscriber": {
                "ref": {
                    "apiVersion": f"{SERVING_GROUP}/{API_VERSION}",
                    "kind": "Service",
                    "name": spec.name,
                    "namespace": namespace,
                }
            },
            "delivery": delivery,
        },
    }


def traffic_patch(
    service: str,
    namespace: str,
    revision: str | None,
    *,
    pinned_at: float | None = None,
    resource_version: str | None = None,
) -> dict[str, Any]:
    """An apply body that owns only `spec.traffic` (and the pin's time): pinned to `revision` since the
    journal time `pinned_at`, or following the latest ready revision. With `resource_version` the API
    server refuses the apply (409) if the Service changed since it was read."""
    target: dict[str, Any] = (
        {"revisionName": revision, "latestRevision": False, "percent": 100}
        if revision is not None
        else {"latestRevision": True, "percent": 100}
    )
    metadata: dict[str, Any] = {"name": service, "namespace": namespace}
    if revision is not None and pinned_at is not None:
        metadata["annotations"] = {ANNOTATION_PINNED_AT: format_journal_time(pinned_at)}
    if resource_version is not None:
        metadata["resourceVersion"] = resource_version
    return {
        "apiVersion": f"{SERVING_GROUP}/{API_VERSION}",
        "kind": "Service",
        "metadata": metadata,
        "spec": {"traffic": [target]},
    }


def format_journal_time(at: float) -> str:
    """Microsecond precision, as the journal keeps its times."""
    return f"{at:.6f}"


def pinned_at(service: Mapping[str, Any]) -> float | None:
    """The journal time of the newest revert holding `service`'s pin; None if it is not pinned, or if
    the pin carries no readable time (one set by hand, say: then any restore may lift it)."""
    if pinned_revision(service) is None:
        return None
    raw = ((service.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_PINNED_AT)
    try:
        value = float(raw) if isinstance(raw, str) else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


def _is_ready(obj: Mapping[str, Any]) -> bool:
    conditions = obj.get("status", {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _generation(revision: Mapping[str, Any]) -> tuple[int, str]:
    """Ordering key of a revision: the Configuration generation Knative labels it with, then its name."""
    metadata = revision.get("metadata", {})
    raw = (metadata.get("labels") or {}).get(REVISION_GENERATION_LABEL)
    if raw is None:
        match = re.search(r"-(\d+)$", metadata.get("name", ""))
        raw = match.group(1) if match else "0"
    try:
        generation = int(raw)
    except ValueError:
        generation = 0
    return generation, metadata.get("creationTimestamp", "")


def pinned_revision(service: Mapping[str, Any]) -> str | None:
    """The revision `spec.traffic` pins 100 % to, or None when traffic follows the latest revision."""
    traffic = service.get("spec", {}).get("traffic") or []
    pinned = [
        t for t in traffic if t.get("revisionName") and not t.get("latestRevision") and t.get("percent")
    ]
    if len(pinned) == 1 and pinned[0].get("percent") == 100:
        return str(pinned[0]["revisionName"])
    return None


def revert_target(service: Mapping[str, Any], revisions: Iterable[Mapping[str, Any]]) -> str | None:
    """The revision that served before the newest deploy of `service`: the revision a revert pins to.

    A pinned service keeps its pin: a deploy made while pinned never received traffic, so the pin is
    still the last revision that served. Otherwise the newest revision (ready or not: a deploy whose
    revision never became ready is the one to undo) is skipped and the newest ready revision older
    than it is the target. The choice depends only on the revisions, never on an earlier revert, so
    applying it again (a redelivered or concurrent revert) is a fixed point: the pin never walks back.

    `revisions` may include other services' revisions (a label selector the server ignored, say): only
    those labelled with this service's name count.
    """
    pinned = pinned_revision(service)
    if pinned is not None:
        return pinned
    name = service.get("metadata", {}).get("name")
    own = [
        r
        for r in revisions
        if (r.get("metadata", {}).get("labels") or {}).get(REVISION_SERVICE_LABEL) == name
    ]
    if not own:
        return None
    newest_key = _generation(max(own, key=_generation))
    older = [r for r in own if _is_ready(r) and _generation(r) < newest_key]
    if not older:
        return None
    return str(max(older, key=_generation)["metadata"]["name"])
