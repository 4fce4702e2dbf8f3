"""The events the step runtime emits (heart-beats to `K_SINK`, `step.finished` as its reply).

Every event carries `xpipejob` and `xpipestep` so Triggers can route it, plus the extensions of
`K_CE_OVERRIDES` (the SinkBinding's way to stamp events), which never replace the runtime's own
attributes. `step.finished` has an id derived from the attempt, so a duplicate reply (or the same
attempt's reply from another pod) is deduplicated downstream.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import httpx
from cloudevents.conversion import to_binary
from cloudevents.http import CloudEvent

from xpipe.events import EXT_JOB, EXT_STEP, STEP_FINISHED, STEP_HEARTBEAT, StepFinished, StepHeartbeat

log = logging.getLogger("xpipe.step.emit")

_FINISHED_ID_NAMESPACE = uuid.UUID("5b0f1b7e-6a43-4d53-9a51-2f3c1d1f0a11")


class EventStamp:
    """Builds outgoing CloudEvents with this runtime's source, routing extensions and overrides."""

    def __init__(self, service: str, overrides: Mapping[str, str]) -> None:
        self.service = service
        self.source = f"/xpipe/step/{service}"
        self._overrides = dict(overrides)

    def _event(self, event_type: str, event_id: str, job_id: str, data: dict[str, Any]) -> CloudEvent:
        # Overrides first, so the runtime's own attributes win even if one slipped past start-up checks.
        attributes: dict[str, Any] = {
            **self._overrides,
            "type": event_type,
            "source": self.source,
            "id": event_id,
            "datacontenttype": "application/json",
            EXT_JOB: job_id,
            EXT_STEP: self.service,
        }
        return CloudEvent(attributes, data)

    def heartbeat(self, beat: StepHeartbeat) -> CloudEvent:
        return self._event(STEP_HEARTBEAT, str(uuid.uuid4()), beat.job_id, beat.to_json_dict())

    def finished(self, result: StepFinished) -> CloudEvent:
        key = f"{result.job_id}\0{result.step}\0{result.attempt}"
        event_id = str(uuid.uuid5(_FINISHED_ID_NAMESPACE, key))
        return self._event(STEP_FINISHED, event_id, result.job_id, result.to_json_dict())


class HeartbeatSender:
    """Posts a heart-beat now and every `interval` seconds until stopped; a failing sink is only logged.

    `stop` returns only once no heart-beat is in flight any more, so nothing is sent for an attempt
    after its `step.finished` reply.
    """

    def __init__(
        self,
        client: httpx.Client,
        sink: str,
        make_event: Callable[[], CloudEvent],
        interval_seconds: float,
    ) -> None:
        self._client = client
        self._sink = sink
        self._make_event = make_event
        self._interval = interval_seconds
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="step-heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join()

    def _beat(self) -> None:
        while not self._stopped.is_set():
            self._send_one()
            self._stopped.wait(self._interval)

    def _send_one(self) -> None:
        started = time.monotonic()
        try:
            event = self._make_event()
            headers, body = to_binary(event)
            response = self._client.post(self._sink, headers=headers, content=body)
            if response.status_code >= 300:
                log.warning(
                    "heart-beat refused by the sink",
                    extra={"status": response.status_code, "ceId": event["id"]},
                )
        except httpx.HTTPError as error:
            log.warning(
                "heart-beat not delivered",
                extra={"error": type(error).__name__, "elapsedSeconds": round(time.monotonic() - started, 3)},
            )
        except Exception:  # a heart-beat problem must never take the step down with it
            log.exception("heart-beat failed")
