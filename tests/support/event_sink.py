"""A real HTTP receiver standing in for the broker (``K_SINK``): what the functions and the step runtime
publish arrives here as CloudEvents, read by the SDK."""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cloudevents.http import CloudEvent, from_http


class EventSink:
    """An HTTP receiver standing in for the broker: records every CloudEvent posted to it.

    ``status`` is what it answers (202 by default); set it to a 5xx to play a failing broker.
    """

    def __init__(self) -> None:
        self.events: list[CloudEvent] = []
        self.status = 202
        self.held = 0  # requests waiting at the gate
        self.gate = threading.Event()  # cleared: every request waits (at most 10 s) until it is set
        self.gate.set()
        self._changed = threading.Condition()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if not sink.gate.is_set():
                    with sink._changed:
                        sink.held += 1
                        sink._changed.notify_all()
                    sink.gate.wait(10.0)
                status = sink.status
                if status < 300:
                    event = from_http(dict(self.headers.items()), body)
                    with sink._changed:
                        sink.events.append(event)
                        sink._changed.notify_all()
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1})
        self._thread.start()

    def matching(self, predicate: Callable[[CloudEvent], bool]) -> list[CloudEvent]:
        with self._changed:
            return [event for event in self.events if predicate(event)]

    def wait_held(self, count: int = 1, timeout: float = 10.0) -> None:
        with self._changed:
            assert self._changed.wait_for(lambda: self.held >= count, timeout), "no request reached the gate"

    def wait_for(
        self, predicate: Callable[[CloudEvent], bool], count: int = 1, timeout: float = 10.0
    ) -> list[CloudEvent]:
        with self._changed:
            ok = self._changed.wait_for(lambda: sum(1 for e in self.events if predicate(e)) >= count, timeout)
            found = [event for event in self.events if predicate(event)]
        assert ok, f"expected {count} matching events within {timeout}s, got {len(found)}"
        return found

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
