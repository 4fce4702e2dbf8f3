"""Real HTTP subscribers on loopback for the router's tests, and a router started on fixture manifests."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from xpipe.devstack.manifests import ServiceTable, load_topology
from xpipe.devstack.router import RouterThread


@dataclass
class Received:
    """One request a subscriber got."""

    headers: dict[str, str]
    body: bytes
    at: float = field(default_factory=time.monotonic)


Answer = tuple[int, dict[str, str], bytes]
Responder = Callable[[Received], Answer]


class Subscriber:
    """A stdlib HTTP server that records every POST and answers with ``responder``."""

    def __init__(self, responder: Responder | None = None) -> None:
        self.responder: Responder = responder or (lambda _: (202, {}, b""))
        self.received: list[Received] = []
        self._changed = threading.Condition()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                got = Received({k.lower(): v for k, v in self.headers.items()}, self.rfile.read(length))
                with outer._changed:
                    outer.received.append(got)
                    outer._changed.notify_all()
                status, headers, body = outer.responder(got)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # the router gave up on a slow answer (a time-out test): expected, not noise

        self._server = Server(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def wait_for(self, count: int, timeout_s: float = 10.0) -> list[Received]:
        """Block until at least ``count`` requests arrived; fail the test after ``timeout_s``."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.received) >= count, timeout_s):
                pytest.fail(
                    f"{self.url} got {len(self.received)} requests, expected {count} within {timeout_s} s"
                )
            return list(self.received)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def subscribers() -> Iterator[Callable[..., Subscriber]]:
    made: list[Subscriber] = []

    def make(responder: Responder | None = None) -> Subscriber:
        sub = Subscriber(responder)
        made.append(sub)
        return sub

    yield make
    for sub in made:
        sub.close()


def broker(delivery: dict[str, Any] | None = None, name: str = "default") -> dict[str, Any]:
    doc: dict[str, Any] = {
        "apiVersion": "eventing.knative.dev/v1",
        "kind": "Broker",
        "metadata": {"name": name},
    }
    if delivery is not None:
        doc["spec"] = {"delivery": delivery}
    return doc


def trigger(name: str, subscriber: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "eventing.knative.dev/v1",
        "kind": "Trigger",
        "metadata": {"name": name},
        "spec": {"broker": "default", "subscriber": subscriber, **spec},
    }


def uri(url: str) -> dict[str, Any]:
    return {"uri": url}


@pytest.fixture
def start_router(tmp_path: Path) -> Iterator[Callable[..., RouterThread]]:
    """Write ``docs`` as a manifest file, load it and serve it; stopped at the end of the test."""
    started: list[RouterThread] = []

    def start(
        docs: list[dict[str, Any]], services: dict[str, str] | None = None, **options: Any
    ) -> RouterThread:
        path = tmp_path / f"manifests-{len(started)}.yaml"
        path.write_text(yaml.safe_dump_all(docs))
        ping_interval = options.pop("ping_interval_s", None)
        topology = load_topology([path], ServiceTable(services or {}), ping_interval_s=ping_interval)
        router = RouterThread(topology, **options).start()
        started.append(router)
        return router

    yield start
    for router in started:
        router.stop()
