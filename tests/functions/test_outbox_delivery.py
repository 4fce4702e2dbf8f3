"""The outbox against a real sink and journal: one directive that cannot be sent never stops the others."""

from __future__ import annotations

from typing import Any

from support.event_sink import EventSink

from vms_adapter import JournalClient
from xpipe.journal import JobJournal
from xpipe.outbox import Outbox


def _directive(directive_id: str, subject: str) -> dict[str, Any]:
    return {
        "id": directive_id,
        "event": {
            "type": "com.xpipe.step.run",
            "source": "/xpipe/journal",
            "subject": subject,
            "extensions": {"xpipejob": "j-00000001", "xpipestep": "build"},
            "data": {"jobId": "j-00000001", "step": "build", "attempt": 1},
        },
    }


def test_a_directive_whose_event_cannot_be_an_http_header_fails_alone(
    client: JournalClient, sink: EventSink
) -> None:
    outbox = Outbox(sink.url, JobJournal(client), timeout_seconds=5.0)
    try:
        report = outbox.deliver(
            [_directive("j-00000001/d-bad", "j-00000001/\x01build"), _directive("j-00000001/d-ok", "ok")]
        )
        assert report.failed == ["j-00000001/d-bad"]  # not acknowledged: the next sweep hands it out again
        assert report.published == ["j-00000001/d-ok"]
        assert [event["id"] for event in sink.wait_for(lambda e: e["id"] == "j-00000001/d-ok")] == [
            "j-00000001/d-ok"
        ]
        assert not sink.matching(lambda e: e["id"] == "j-00000001/d-bad")
    finally:
        outbox.close()
