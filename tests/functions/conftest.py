"""Shared, module-scoped real parts for the function tests (start-ups are the expensive bit)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from functions_harness import FunctionServer, JournalProcess, StepHost, function_env, write_tokens
from support.event_sink import EventSink

from vms_adapter.client import JournalClient


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("functions")


@pytest.fixture(scope="module")
def tokens(workdir: Path) -> Path:
    return write_tokens(workdir / "tokens.yaml")


@pytest.fixture(scope="module")
def journal(workdir: Path) -> Iterator[JournalProcess]:
    process = JournalProcess(workdir / "journal", workdir / "journal.log").start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def sink() -> Iterator[EventSink]:
    receiver = EventSink()
    yield receiver
    receiver.close()


@pytest.fixture(scope="module")
def step_host(workdir: Path, sink: EventSink) -> Iterator[StepHost]:
    host = StepHost(sink.url, workdir / "step-host.log")
    yield host
    host.stop()


@pytest.fixture(scope="module")
def client(journal: JournalProcess) -> Iterator[JournalClient]:
    with journal.client() as journal_client:
        yield journal_client


def _local_function(
    name: str,
    request: pytest.FixtureRequest,
    journal: JournalProcess,
    sink: EventSink,
    tokens: Path,
    workdir: Path,
    step_host: StepHost,
) -> Iterator[FunctionServer]:
    """``name`` served on the local backend (the real step host), ready; stopped after the module."""
    env = function_env(journal, sink, tokens, XPIPE_BACKEND="local", XPIPE_LOCAL_STEP_HOST=step_host.url)
    log = workdir / f"{name}-{request.module.__name__}.log"
    server = FunctionServer(name, env, log).wait_until("/health/readiness")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def submit(
    request: pytest.FixtureRequest,
    journal: JournalProcess,
    sink: EventSink,
    tokens: Path,
    workdir: Path,
    step_host: StepHost,
) -> Iterator[FunctionServer]:
    yield from _local_function("submit", request, journal, sink, tokens, workdir, step_host)


@pytest.fixture(scope="module")
def rollback(
    request: pytest.FixtureRequest,
    journal: JournalProcess,
    sink: EventSink,
    tokens: Path,
    workdir: Path,
    step_host: StepHost,
) -> Iterator[FunctionServer]:
    yield from _local_function("rollback", request, journal, sink, tokens, workdir, step_host)
