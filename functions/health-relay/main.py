"""health-relay: heart-beats, finished steps, pod health, sweeps and dead letters into the journal.

Every accepted event is answered 202 (no reply); the directives the journal returns are published to
``K_SINK``. Run it alone with
``functions-framework --target handle --source functions/health-relay/main.py`` (see docs/functions.md).
"""

from __future__ import annotations

import functions_framework
from flask import Request, Response

from xpipe.endpoint import Endpoint
from xpipe.relay import HealthRelay

endpoint = Endpoint.from_env("health-relay", scope="relay", cluster_local=True)
relay = HealthRelay(endpoint.journal, endpoint.outbox, redelivery_seconds=endpoint.config.redelivery_seconds)


@functions_framework.http
def handle(request: Request) -> Response:
    return endpoint.serve(request, relay.handle)
