"""Fixtures for the step runtime tests: a real `xpipe-step` process and a real HTTP sink for its events."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from step_harness import RuntimeProcess, start_runtime
from support.event_sink import EventSink


@pytest.fixture(scope="module")
def sink() -> Iterator[EventSink]:
    receiver = EventSink()
    yield receiver
    receiver.close()


@pytest.fixture(scope="module")
def runtime(sink: EventSink) -> Iterator[RuntimeProcess]:
    """One runtime shared by the module's tests (a pod is reused across jobs too)."""
    process = start_runtime(sink.url, "--env", "GREETING_RENDERED=hello {{ params.arg }}")
    yield process
    process.stop()
