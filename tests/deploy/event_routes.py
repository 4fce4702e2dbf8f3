"""Which function handles which CloudEvent type, and how each type reaches it: the one table the
deployment tests check the manifests against.

Built from the constants of `xpipe.events`, so that a new event type there fails
`test_every_event_type_is_routed_or_explained` until it is routed here (and in the manifests) or listed
as not delivered to a function.
"""

from __future__ import annotations

from xpipe import events

APISERVER_TYPES = tuple(f"{events.APISERVER_PREFIX}{verb}" for verb in ("add", "update", "delete"))

# Delivered by the Broker: each needs a Trigger in knative/base/platform/triggers.yaml.
BROKER_ROUTES: dict[str, tuple[str, ...]] = {
    "health-relay": (
        events.STEP_HEARTBEAT,
        events.STEP_FINISHED,
        *APISERVER_TYPES,
        events.PING,
    ),
    "rollback": (
        events.JOB_ROLLBACK_REQUESTED,
        events.JOB_DIAGNOSTIC_REQUESTED,
        events.STEP_CANCEL,  # stopped through the backend: a busy step pod takes no second request
    ),
}

# Sent straight to a function over HTTP (Magento through the Ingress): exposed by the Ingress, no Trigger.
INGRESS_ROUTES: dict[str, tuple[str, ...]] = {
    "submit": (events.PIPELINE_SUBMIT,),
}

# Types no function subscribes to, and why.
NOT_FOR_FUNCTIONS: dict[str, str] = {
    events.JOB_REGISTERED: "submit's HTTP reply to its caller",
    events.STEP_RUN: "routed to step Services by Triggers the Knative backend creates at run time",
    events.JOB_FINISHED: "published for webhooks and Magento, outside XPipe",
}

# Where dead letters go (the Broker's and every static Trigger's deadLetterSink).
DEAD_LETTER_SINK = "health-relay"


def event_type_constants() -> dict[str, str]:
    """Every event-type constant of `xpipe.events` (name -> type), the API server prefix excluded."""
    found = {}
    for name, value in vars(events).items():
        is_type = isinstance(value, str) and value.startswith(("com.xpipe.", "dev.knative."))
        if name.isupper() and is_type and name != "APISERVER_PREFIX":
            found[name] = value
    return found
