"""The local step host: scale-to-zero step services on one machine (`python -m xpipe.backends.local_host`).

    python -m xpipe.backends.local_host --port 8085 --sink http://127.0.0.1:8080/ \\
        --idle-seconds 30 --max-processes 4 [--state-file .xpipe/step-host.json]

It receives every `com.xpipe.step.run` (the local router delivers them here through one Trigger on that
type), picks the step service named by the `xpipestep` extension, starts a step process for it when none
is idle (scale from zero), proxies the request and answers with the process's reply (the
`step.finished` CloudEvent), and stops processes that stayed idle for the window (scale to zero).

Admin API (loopback only, used by `LocalBackend` in the functions' processes):
    PUT    /services/<name>            body: StepServiceSpec JSON -> {"applied", "revision"}
    DELETE /services/<name>
    GET    /services                   every service with revisions, traffic and live processes
    GET    /services/<name>
    POST   /services/<name>/revert     body: {"at": journal time} -> TrafficState JSON (404: nothing older)
    POST   /services/<name>/restore    body: {"requestedAt": journal time} -> TrafficState JSON
    POST   /attempts/stop              body: {service, jobId, step, attempt} -> {"stopped", "pod"}
    GET    /diagnostics?job=J&service=S&service=T[&since=RFC3339]
    GET    /health/liveness, /health/readiness

Why ThreadingHTTPServer: like the step runtime, the host holds each step.run open for as long as the
step runs and must stop its children in order on SIGTERM; a thread per connection does both simply.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import math
import os
import signal
import socket
import sys
import tempfile
import threading
from collections.abc import Sequence
from datetime import datetime, timezone
from http import HTTPStatus
from http.server import ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import httpx

from xpipe.backends.base import BackendError, InvalidSpec, NotFound, StepServiceSpec
from xpipe.backends.local_pool import HostBusy, StepHost
from xpipe.events import EXT_STEP
from xpipe.step import log as step_log
from xpipe.step.handler import RequestHandler

log = logging.getLogger("xpipe.backends.local_host")

MAX_BODY_BYTES = 1024 * 1024
REPLIES_REMEMBERED = 1024
# Headers of the step runtime's reply passed back to the router: the CloudEvent and its content type.
_FORWARDED_REPLY_HEADERS = ("content-type",)
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}
BUSY_RETRY_AFTER_SECONDS = 1


def _journal_time(body: bytes, field: str) -> float | None:
    """The journal time `field` of a revert or restore body (Unix seconds), or None if it is missing."""
    try:
        document = json.loads(body)
    except ValueError:
        return None
    value = document.get(field) if isinstance(document, dict) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


class ReplyCache:
    """The replies of finished attempts, so a redelivered step.run never reaches a process again."""

    def __init__(self, limit: int = REPLIES_REMEMBERED) -> None:
        self._replies: collections.OrderedDict[str, tuple[int, dict[str, str], bytes]] = (
            collections.OrderedDict()
        )
        self._in_flight: dict[str, threading.Event] = {}
        self._limit = limit
        self._lock = threading.Lock()

    def claim(self, key: str) -> tuple[int, dict[str, str], bytes] | threading.Event | None:
        """The cached reply, or an Event to wait on while another request runs `key`, or None: run it."""
        with self._lock:
            if key in self._replies:
                return self._replies[key]
            if key in self._in_flight:
                return self._in_flight[key]
            self._in_flight[key] = threading.Event()
            return None

    def finish(self, key: str, reply: tuple[int, dict[str, str], bytes] | None) -> None:
        with self._lock:
            if reply is not None:
                self._replies[key] = reply
                while len(self._replies) > self._limit:
                    self._replies.popitem(last=False)
            done = self._in_flight.pop(key, None)
        if done is not None:
            done.set()


class HostRequestHandler(RequestHandler):
    server: StepHostServer
    timeout = 30.0

    def _json(self, status: int, document: Any) -> None:
        self._send(status, json.dumps(document).encode(), {"Content-Type": "application/json"})

    def _body(self) -> bytes | None:
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if length < 0 or length > MAX_BODY_BYTES or self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            self._error(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"send a Content-Length of at most {MAX_BODY_BYTES}"
            )
            return None
        return self.rfile.read(length) if length else b""

    def _route(self) -> tuple[list[str], dict[str, list[str]]]:
        parts = urlsplit(self.path)
        return [unquote(p) for p in parts.path.split("/") if p], parse_qs(parts.query)

    # --- routes ------------------------------------------------------------------------------------

    def do_GET(self) -> None:
        path, query = self._route()
        host = self.server.host
        try:
            if path in (["health", "liveness"], ["health", "readiness"]):
                self._json(200, {"status": "ok"})
            elif path == ["services"]:
                self._json(200, {"services": [host.describe(s) for s in host.services()]})
            elif len(path) == 2 and path[0] == "services":
                self._json(200, host.describe(host.service(path[1])))
            elif path == ["diagnostics"]:
                self._diagnostics(query)
            else:
                self._error(HTTPStatus.NOT_FOUND, f"no route for GET {self.path}")
        except NotFound as missing:
            self._error(HTTPStatus.NOT_FOUND, str(missing))

    def do_PUT(self) -> None:
        body = self._body()
        if body is None:
            return
        path, _ = self._route()
        if len(path) != 2 or path[0] != "services":
            self._error(HTTPStatus.NOT_FOUND, f"no route for PUT {self.path}")
            return
        try:
            document = json.loads(body)
            if not isinstance(document, dict):
                raise InvalidSpec("the spec must be a JSON object")
            spec = StepServiceSpec.from_json_dict(document)
            if spec.name != path[1]:
                raise InvalidSpec(f"spec name {spec.name!r} does not match the URL's {path[1]!r}")
        except (ValueError, InvalidSpec) as invalid:
            self._error(HTTPStatus.UNPROCESSABLE_ENTITY, str(invalid))
            return
        applied, revision = self.server.host.ensure(spec)
        self.server.save_state()
        self._json(200, {"applied": applied, "revision": revision})

    def do_DELETE(self) -> None:
        path, _ = self._route()
        if len(path) != 2 or path[0] != "services":
            self._error(HTTPStatus.NOT_FOUND, f"no route for DELETE {self.path}")
            return
        self.server.host.remove(path[1])
        self.server.save_state()
        self._send(204)

    def do_POST(self) -> None:
        body = self._body()
        if body is None:
            return
        path, _ = self._route()
        if path == []:
            self._dispatch(body)
            return
        if path == ["attempts", "stop"]:
            self._stop_attempt(body)
            return
        if len(path) == 3 and path[0] == "services" and path[2] in ("revert", "restore"):
            field = "at" if path[2] == "revert" else "requestedAt"
            when = _journal_time(body, field)
            if when is None:
                self._error(HTTPStatus.BAD_REQUEST, f"the body must be a JSON object with a number {field!r}")
                return
            try:
                host = self.server.host
                state = host.revert(path[1], when) if path[2] == "revert" else host.restore(path[1], when)
            except NotFound as missing:
                self._error(HTTPStatus.NOT_FOUND, str(missing))
                return
            self.server.save_state()
            self._json(200, state.to_json_dict())
            return
        self._error(HTTPStatus.NOT_FOUND, f"no route for POST {self.path}")

    def _stop_attempt(self, body: bytes) -> None:
        try:
            document = json.loads(body)
        except ValueError:
            document = None
        if not isinstance(document, dict):
            self._error(HTTPStatus.BAD_REQUEST, "the body must be a JSON object")
            return
        service, job_id, step, attempt = (document.get(k) for k in ("service", "jobId", "step", "attempt"))
        if not all(isinstance(v, str) and v for v in (service, job_id, step)):
            self._error(HTTPStatus.BAD_REQUEST, "service, jobId and step must be non-empty strings")
            return
        if not isinstance(attempt, int) or isinstance(attempt, bool) or attempt < 1:
            self._error(HTTPStatus.BAD_REQUEST, "attempt must be an integer >= 1")
            return
        # The same key _dispatch gives the attempt's step.run.
        stopped = self.server.host.stop_attempt(str(service), f"{service}/{job_id}/{step}/{attempt}")
        self._json(200, {"stopped": stopped is not None, "pod": None if stopped is None else stopped.pod})

    def _diagnostics(self, query: dict[str, list[str]]) -> None:
        since = None
        if query.get("since"):
            try:
                since = datetime.fromisoformat(query["since"][0].replace("Z", "+00:00"))
            except ValueError:
                self._error(HTTPStatus.BAD_REQUEST, "since must be an RFC 3339 time")
                return
            if since.tzinfo is None:
                since = since.replace(tzinfo=timezone.utc)
        services, errors = self.server.host.diagnostics(query.get("service", []), since)
        self._json(200, {"services": services, "errors": errors})

    # --- step.run ----------------------------------------------------------------------------------

    def _dispatch(self, body: bytes) -> None:
        event = self._step_run(body)
        if event is None:
            return
        name = event.get(EXT_STEP)
        data = event.get_data()
        if not name or not isinstance(data, dict):
            self._error(HTTPStatus.BAD_REQUEST, f"step.run needs the {EXT_STEP} extension and a JSON object")
            return
        key = f"{name}/{data.get('jobId')}/{data.get('step')}/{data.get('attempt')}"
        cache = self.server.replies
        while True:
            claimed = cache.claim(key)
            if isinstance(claimed, tuple):
                self._send(claimed[0], claimed[2], claimed[1])
                return
            if claimed is None:
                break
            claimed.wait(self.server.max_wait_seconds)  # a duplicate: wait for the running one
        reply: tuple[int, dict[str, str], bytes] | None = None
        try:
            reply = self._run(str(name), key, body)
        finally:
            # A finished run (200) and a lost one (202) are final: a redelivery must not run it again.
            cached = reply if reply is not None and reply[0] in (200, 202) else None
            cache.finish(key, cached)
        self._send(reply[0], reply[2], reply[1])

    def _run(self, name: str, key: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        host = self.server.host
        try:
            process = host.acquire(name, key)
        except NotFound as missing:
            return _error_reply(HTTPStatus.NOT_FOUND, str(missing))
        except HostBusy as busy:
            headers = {"Retry-After": str(BUSY_RETRY_AFTER_SECONDS)}
            return _error_reply(HTTPStatus.TOO_MANY_REQUESTS, str(busy), headers)
        except BackendError as error:
            return _error_reply(HTTPStatus.SERVICE_UNAVAILABLE, str(error))
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        timeout = process.revision.spec.timeout_seconds + 30
        failed = False
        try:
            response = self.server.client.post(process.url, headers=headers, content=body, timeout=timeout)
        except httpx.ConnectError as error:
            failed = True  # the run never started: the router may deliver it again
            log.warning(
                "step process did not answer",
                extra={"service": name, "pod": process.pod, "error": repr(error)},
            )
            return _error_reply(HTTPStatus.SERVICE_UNAVAILABLE, f"step process {process.pod} did not answer")
        except httpx.HTTPError as error:
            # The process died with the run under way, as a pod dies with its container. Running the
            # attempt again here would run the command twice behind the journal's back: the attempt is
            # lost, its heart-beats stop, and the journal's lease decides what follows (a retry is a new
            # attempt). 202 tells the router the delivery is done.
            failed = True
            log.warning(
                "step process died mid-run: the attempt is lost and not run again",
                extra={"service": name, "pod": process.pod, "attempt": key, "error": repr(error)},
            )
            return int(HTTPStatus.ACCEPTED), {}, b""
        finally:
            host.release(process, failed=failed)
        reply_headers = {
            k: v
            for k, v in response.headers.items()
            if k.lower().startswith("ce-") or k.lower() in _FORWARDED_REPLY_HEADERS
        }
        if "retry-after" in response.headers:
            reply_headers["Retry-After"] = response.headers["retry-after"]
        return response.status_code, reply_headers, response.content


def _error_reply(
    status: HTTPStatus, message: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    body = json.dumps({"error": status.phrase, "message": message}).encode()
    return int(status), {"Content-Type": "application/json", **(headers or {})}, body


class StepHostServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        host: StepHost,
        state_file: Path | None = None,
        listen_fd: int | None = None,
    ) -> None:
        self.host = host
        self.replies = ReplyCache()
        self.state_file = state_file
        self.client = httpx.Client(timeout=httpx.Timeout(30.0, connect=10.0))
        self.max_wait_seconds = 3600.0
        self._save_lock = threading.Lock()
        if listen_fd is None:
            super().__init__(address, HostRequestHandler)
        else:
            super().__init__(address, HostRequestHandler, bind_and_activate=False)
            self.socket.close()
            self.socket = socket.socket(fileno=listen_fd)
            self.server_address = self.socket.getsockname()

    def save_state(self) -> None:
        """Write the registry atomically, so a restarted host still knows every step service."""
        if self.state_file is None:
            return
        with self._save_lock:
            document = json.dumps({"services": self.host.saved_state()}, indent=1)
            self.state_file.parent.mkdir(parents=True, exist_ok=True)
            handle, temporary = tempfile.mkstemp(dir=self.state_file.parent, prefix=".step-host-")
            with os.fdopen(handle, "w") as out:
                out.write(document)
            os.replace(temporary, self.state_file)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m xpipe.backends.local_host", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8085, help="port to listen on (default 8085)")
    parser.add_argument("--listen-fd", type=int, help="serve on this already listening socket instead")
    parser.add_argument("--sink", help="K_SINK for step processes (the local router's URL)")
    parser.add_argument("--idle-seconds", type=float, default=30.0, help="stop a process idle this long (30)")
    parser.add_argument("--max-processes", type=int, default=4, help="cap on live step processes (4)")
    parser.add_argument(
        "--stop-grace-seconds", type=float, default=5.0, help="SIGTERM to SIGKILL for steps (5)"
    )
    parser.add_argument("--namespace", default="xpipe-steps", help="namespace reported in traffic states")
    parser.add_argument("--state-file", type=Path, help="keep the service registry here across restarts")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    step_log.configure("step-host")
    options = _parser().parse_args(argv)
    try:
        host = StepHost(
            options.sink,
            options.idle_seconds,
            options.max_processes,
            options.namespace,
            options.stop_grace_seconds,
        )
    except ValueError as error:
        log.error("cannot start the local step host", extra={"reason": str(error)})
        return 2
    if options.state_file is not None and options.state_file.exists():
        try:
            host.restore_state(json.loads(options.state_file.read_text()).get("services", {}))
        except (ValueError, KeyError, BackendError) as error:
            log.error("unreadable state file", extra={"path": str(options.state_file), "reason": str(error)})
            return 2
    try:
        server = StepHostServer((options.host, options.port), host, options.state_file, options.listen_fd)
    except OSError as error:
        log.error("cannot listen", extra={"port": options.port, "reason": str(error)})
        return 2
    host.start()
    stopping = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        if not stopping.is_set():
            stopping.set()
            log.info("stopping", extra={"signal": signal.Signals(signum).name})
            threading.Thread(target=server.shutdown, name="shutdown").start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    address = server.server_address
    log.info(
        "local step host listening",
        extra={"host": address[0], "port": address[1], "idleSeconds": options.idle_seconds,
               "maxProcesses": options.max_processes, "services": len(host.services())},
    )  # fmt: skip
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        host.close()
        server.server_close()
        server.client.close()
    log.info("local step host stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
