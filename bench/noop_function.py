"""The baseline of bench/functions.py: a functions-framework HTTP function that does nothing.

It answers like submit does (200 with a small binary-mode CloudEvent), so the comparison measures what
submit's own work costs: auth, parsing, validation, the journal commit and publishing the dispatch.
"""

from __future__ import annotations

import functions_framework
from flask import Request, Response

REPLY_HEADERS = {
    "ce-specversion": "1.0",
    "ce-type": "com.xpipe.job.registered",
    "ce-source": "/bench/noop",
    "ce-id": "noop",
    "content-type": "application/json",
}


@functions_framework.http
def handle(request: Request) -> Response:
    request.get_data()
    return Response(
        b'{"jobId": "noop", "state": "PENDING", "journalSeq": 0}', status=200, headers=REPLY_HEADERS
    )
