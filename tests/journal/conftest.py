"""Fixtures for the journal tests: real service processes on 127.0.0.1 (see ``journal_service``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from journal_service import JournalServer, start


@pytest.fixture
def servers() -> Iterator[list[JournalServer]]:
    """Collects servers a test starts, and makes sure each is gone afterwards."""
    started: list[JournalServer] = []
    yield started
    for server in started:
        if server.proc.poll() is None:
            server.kill()


@pytest.fixture
def journal(tmp_path: Path, servers: list[JournalServer]) -> JournalServer:
    """A fresh service without a secret on its own data directory."""
    server = start(tmp_path / "journal")
    servers.append(server)
    return server
