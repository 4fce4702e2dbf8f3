"""The step runtime's HTTP front: CloudEvents in, `step.finished` out, per ARCHITECTURE §5.

Why the standard library's ThreadingHTTPServer rather than functions-framework/gunicorn: the runtime
must own SIGTERM (stop the child, then still answer the held request with `cancelled` before the process
exits), hold one request open for as long as the command runs (gunicorn's worker time-out would kill
it), and start fast in a pod that scales from zero (no Flask import). One thread per connection keeps
health probes and a duplicate delivery answerable while a run is held open.
"""

from __future__ import annotations

import logging
import socket
import threading
from http import HTTPStatus
from http.server import ThreadingHTTPServer

from cloudevents.conversion import to_binary
from pydantic import ValidationError

from xpipe.events import StepRun
from xpipe.step.handler import RequestHandler
from xpipe.step.runtime import RuntimeBusy, RuntimeDraining, StepRuntime

log = logging.getLogger("xpipe.step.server")

# Seconds a client may take to send its request (headers and body); a held request is not reading.
REQUEST_READ_TIMEOUT_SECONDS = 30.0
BUSY_RETRY_AFTER_SECONDS = 1


class StepRequestHandler(RequestHandler):
    """Routes: `POST /` (step.run), `GET /health/liveness`, `GET /health/readiness`."""

    server: StepHTTPServer
    timeout = REQUEST_READ_TIMEOUT_SECONDS

    # --- plumbing ----------------------------------------------------------------------------------

    # --- routes ------------------------------------------------------------------------------------

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/health/liveness":
            self._send(200, b'{"status":"alive"}', {"Content-Type": "application/json"})
        elif path == "/health/readiness":
            if self.server.runtime.draining:
                self._send(503, b'{"status":"draining"}', {"Content-Type": "application/json"})
            else:
                self._send(200, b'{"status":"ready"}', {"Content-Type": "application/json"})
        else:
            self._error(HTTPStatus.NOT_FOUND, f"no route for GET {path}")

    def do_POST(self) -> None:
        self.server.track(+1)
        try:
            self._handle_run()
        finally:
            self.server.track(-1)

    def _read_body(self) -> bytes | None:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            self.close_connection = True
            self._error(HTTPStatus.LENGTH_REQUIRED, "chunked bodies are not accepted; send Content-Length")
            return None
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            self.close_connection = True
            self._error(HTTPStatus.BAD_REQUEST, "Content-Length is not a number")
            return None
        if length < 0:
            self.close_connection = True
            self._error(HTTPStatus.BAD_REQUEST, "Content-Length is negative")
            return None
        if length > self.server.runtime.config.max_body_bytes:
            # Refused before reading: the connection is closed instead of draining a huge body.
            self.close_connection = True
            limit = self.server.runtime.config.max_body_bytes
            self._error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body of {length} bytes exceeds {limit} bytes")
            return None
        return self.rfile.read(length) if length else b""

    def _handle_run(self) -> None:
        body = self._read_body()  # read first, so an early refusal leaves a reusable connection
        if body is None:
            return
        path = self.path.split("?", 1)[0]
        if path != "/":
            self._error(HTTPStatus.NOT_FOUND, f"no route for POST {path}")
            return
        event = self._step_run(body)
        if event is None:
            return
        data = event.get_data()
        if not isinstance(data, dict):
            self._error(HTTPStatus.BAD_REQUEST, "step.run data must be a JSON object")
            return
        try:
            run = StepRun.model_validate(data)
        except ValidationError as error:
            fields = sorted({".".join(str(part) for part in issue["loc"]) for issue in error.errors()})
            self._error(HTTPStatus.BAD_REQUEST, f"invalid step.run data: {', '.join(fields)}")
            return
        try:
            attempt = self.server.runtime.submit(run)
        except RuntimeDraining:
            self._error(HTTPStatus.SERVICE_UNAVAILABLE, "the step runtime is shutting down")
            return
        except RuntimeBusy as busy:
            self._error(
                HTTPStatus.TOO_MANY_REQUESTS,
                f"another attempt is running ({busy}); one run per instance",
                {"Retry-After": str(BUSY_RETRY_AFTER_SECONDS)},
            )
            return
        attempt.done.wait()
        assert attempt.finished is not None
        headers, reply = to_binary(attempt.finished)
        self._send(200, reply, headers)


class StepHTTPServer(ThreadingHTTPServer):
    """ThreadingHTTPServer that knows its runtime and counts requests still being answered."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], runtime: StepRuntime, listen_fd: int | None = None) -> None:
        self.runtime = runtime
        self._in_flight = 0
        self._idle = threading.Condition()
        if listen_fd is None:
            super().__init__(address, StepRequestHandler)
            return
        super().__init__(address, StepRequestHandler, bind_and_activate=False)
        # A socket already bound and listening, handed over by the local step host: no port race.
        self.socket.close()
        self.socket = socket.socket(fileno=listen_fd)
        self.server_address = self.socket.getsockname()

    def track(self, delta: int) -> None:
        with self._idle:
            self._in_flight += delta
            self._idle.notify_all()

    def wait_answered(self, timeout: float) -> bool:
        """Wait until no POST is being answered (replies written); False when `timeout` passed first."""
        with self._idle:
            return self._idle.wait_for(lambda: self._in_flight == 0, timeout)
