"""submit: the front door. ``com.xpipe.pipeline.submit`` in, ``com.xpipe.job.registered`` out.

Validates the template and params, ensures the step services, registers the job in the journal and
publishes its first step run. Run it alone with
``functions-framework --target handle --source functions/submit/main.py`` (see docs/functions.md).
"""

from __future__ import annotations

import functions_framework
from flask import Request, Response

from xpipe.endpoint import Endpoint
from xpipe.submission import Submission

endpoint = Endpoint.from_env("submit", scope="submit", needs_backend=True)
submission = Submission(
    endpoint.catalog(),
    endpoint.backend,
    endpoint.journal,
    endpoint.outbox,
    image=endpoint.config.step_image,
)


@functions_framework.http
def handle(request: Request) -> Response:
    return endpoint.serve(request, submission.handle)
