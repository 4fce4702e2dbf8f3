"""rollback: carries out the journal's rollback, revert and diagnose directives.

Compensations run as ordinary step runs dispatched by the journal; this function starts the saga,
reverts Knative traffic and collects diagnostics through the backend, and commits each outcome. Run it
alone with ``functions-framework --target handle --source functions/rollback/main.py``.
"""

from __future__ import annotations

import functions_framework
from flask import Request, Response

from xpipe.endpoint import Endpoint
from xpipe.rollback import Countermeasures

endpoint = Endpoint.from_env("rollback", scope="relay", cluster_local=True, needs_backend=True)
countermeasures = Countermeasures(endpoint.journal, endpoint.outbox, endpoint.backend)


@functions_framework.http
def handle(request: Request) -> Response:
    return endpoint.serve(request, countermeasures.handle)
