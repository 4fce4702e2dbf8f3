"""The local Knative broker: an ingress that accepts CloudEvents, and a dispatcher that honours the Triggers,
delivery specs and PingSources of the manifests in ``knative/``.

What it does, as Knative does it:

- ``POST /`` (the only or the ``default`` Broker) or ``POST /<namespace>/<broker>`` accepts a CloudEvent in
  binary or structured mode and answers 202 once every matching Trigger has a delivery under way; 400 for
  what is not a valid CloudEvent, 503 when too many deliveries are pending (the sender retries).
- Each delivery is a binary-mode POST to the subscriber with ``Prefer: reply``, bounded by the delivery
  ``timeout``; 5xx, 404, 408, 409, 429, network errors and time-outs are retried per ``retry`` and
  ``backoffPolicy``/``backoffDelay``; other answers are final. A delivery that stays failed goes to the
  dead-letter sink with ``knativeerrordest``, ``knativeerrorcode`` and ``knativeerrordata``; without one it
  is dropped, with a log line.
- A 2xx answer carrying a CloudEvent is a reply: it is ingested again by the same Broker. A 2xx with a body
  that is not a CloudEvent is a failed attempt (Knative answers 502 for it); 202 or 204 with no body is
  simply success.
- Loop guard: ``knativebrokerttl`` (255 when absent) is taken off the event for the subscriber and put back
  one lower on its reply; a reply reaching 0 is dropped with a log line.
- PingSources fire ``dev.knative.sources.ping`` on their cron schedule (or every ``--ping-interval`` seconds
  in development) into their sink.

Server choice: uvicorn with a small Starlette app, both already installed with functions-framework. The
dispatcher is asyncio (many deliveries mostly waiting on backoffs and on step requests held open for
minutes cost a task each, not a thread), uvicorn serves on a socket we bind ourselves (port 0 in tests, so
the port is known before start) and shuts down gracefully on ``should_exit`` or SIGTERM. Outbound HTTP is
httpx's AsyncClient with a bounded pool.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import logging
import signal
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from uuid import uuid4

import httpx
import uvicorn
from cloudevents.conversion import to_binary
from cloudevents.exceptions import GenericException
from cloudevents.http import CloudEvent, from_http
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from xpipe.devstack.delivery import DEFAULT_ATTEMPT_TIMEOUT_S, DeliverySpec, is_retried
from xpipe.devstack.errors import DevstackError, ManifestError
from xpipe.devstack.manifests import PingSource, ServiceTable, Target, Topology, Trigger, load_topology

log = logging.getLogger("xpipe.devstack.router")

TTL_EXTENSION = "knativebrokerttl"
DEFAULT_TTL = 255
MAX_EVENT_BYTES = 4 * 1024 * 1024
MAX_REPLY_BYTES = 4 * 1024 * 1024
ERROR_DATA_MAX_CHARS = 1024
DEFAULT_MAX_IN_FLIGHT = 256
DEFAULT_MAX_PENDING = 10_000
SHUTDOWN_GRACE_S = 5.0
_STRUCTURED = "application/cloudevents+json"


class Overloaded(DevstackError):
    """Too many deliveries are pending: the ingress answers 503 and the sender retries."""


class UnknownBroker(DevstackError):
    """No Broker is served at this ingress path."""


@dataclass(frozen=True)
class Attempt:
    """What one delivery attempt came to."""

    ok: bool
    retried: bool
    status: int | None = None
    body: bytes = b""
    reply: CloudEvent | None = None
    error: str = ""


def _emit(kind: str, **fields: Any) -> None:
    """One structured log line (JSON), so the supervisor and tests can read what happened."""
    log.info(json.dumps({"router": kind, **fields}, default=str, sort_keys=True))


def _attribute_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def attributes_of(event: CloudEvent) -> dict[str, str]:
    """Context attributes and extensions as strings, the form Trigger filters compare."""
    return {name: _attribute_text(value) for name, value in event.get_attributes().items()}


def ttl_of(event: CloudEvent) -> int:
    """The event's ``knativebrokerttl``, or the default when absent or not an integer."""
    raw = event.get_attributes().get(TTL_EXTENSION)
    try:
        return int(raw) if raw is not None else DEFAULT_TTL
    except (TypeError, ValueError):
        return DEFAULT_TTL


def encode_binary(event: CloudEvent, extra: dict[str, Any] | None = None) -> tuple[dict[str, str], bytes]:
    """Binary-mode headers and body, without the broker's TTL and with ``extra`` extensions set."""
    attributes = {k: v for k, v in event.get_attributes().items() if k != TTL_EXTENSION}
    attributes.update(extra or {})
    data = event.data
    if "datacontenttype" not in attributes and isinstance(data, dict | list):
        attributes["datacontenttype"] = "application/json"  # structured JSON data is JSON
    headers, body = to_binary(CloudEvent(attributes, data))
    return {k: _attribute_text(v) for k, v in headers.items()}, body or b""


def parse_event(headers: dict[str, str] | httpx.Headers, body: bytes) -> CloudEvent:
    """A CloudEvent in binary or structured mode; ``GenericException`` when it is not one."""
    event = from_http(dict(headers), body)
    for required in ("id", "source", "type"):
        if not event.get_attributes().get(required):
            raise GenericException(f"the CloudEvent attribute {required!r} is empty")
    return event


def _looks_like_event(headers: httpx.Headers) -> bool:
    return "ce-specversion" in headers or headers.get("content-type", "").startswith(_STRUCTURED)


class Router:
    """Ingress and dispatcher over one loaded Topology: ``await start()``, ``accept()``, ``await stop()``."""

    def __init__(
        self,
        topology: Topology,
        *,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        max_pending: int = DEFAULT_MAX_PENDING,
        delivery_headers: Mapping[str, str] | None = None,
    ) -> None:
        self.topology = topology
        # Extra headers on every delivery (xpipe up: the X-Token-XPipe the functions demand); never logged.
        self._delivery_headers = dict(delivery_headers or {})
        self.stats: Counter[str] = Counter()
        self._max_in_flight = max_in_flight
        self._max_pending = max_pending
        self._slots = asyncio.Semaphore(max_in_flight)
        self._tasks: set[asyncio.Task[None]] = set()
        self._client: httpx.AsyncClient | None = None
        self._pingers: list[asyncio.Task[None]] = []

    # lifecycle ------------------------------------------------------------------------------------------

    async def start(self) -> None:
        # trust_env=False: no proxy from the environment may divert loopback traffic.
        self._client = httpx.AsyncClient(
            # Each attempt is bounded as a whole by asyncio.wait_for; this only bounds the connect.
            timeout=httpx.Timeout(DEFAULT_ATTEMPT_TIMEOUT_S, connect=5.0),
            trust_env=False,
            limits=httpx.Limits(max_connections=self._max_in_flight, max_keepalive_connections=32),
        )
        for source in self.topology.ping_sources:
            self._pingers.append(asyncio.create_task(self._ping_loop(source), name=f"ping {source.name}"))

    async def stop(self, grace_s: float = SHUTDOWN_GRACE_S) -> None:
        """Stop the PingSources, give pending deliveries ``grace_s`` to finish, then drop the rest with a log
        line each."""
        for pinger in self._pingers:
            pinger.cancel()
        await asyncio.gather(*self._pingers, return_exceptions=True)
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=grace_s)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()

    @property
    def pending(self) -> int:
        return len(self._tasks)

    # ingress --------------------------------------------------------------------------------------------

    def broker_at(self, path: str) -> tuple[str, str]:
        """The Broker at an ingress path: ``/<namespace>/<name>``, or ``/`` for the only or default one."""
        parts = [p for p in path.split("/") if p]
        brokers = self.topology.brokers
        if len(parts) == 2 and (parts[0], parts[1]) in brokers:
            return parts[0], parts[1]
        if not parts:
            if len(brokers) == 1:
                return next(iter(brokers))
            defaults = [key for key in brokers if key[1] == "default"]
            if len(defaults) == 1:
                return defaults[0]
        raise UnknownBroker(f"no Broker at {path!r}; brokers: {['/'.join(k) for k in brokers]}")

    def accept(
        self, event: CloudEvent, broker: tuple[str, str], *, ttl: int | None = None, internal: bool = False
    ) -> int:
        """Start a delivery for every matching Trigger; return how many. ``Overloaded`` when the pending
        limit would be passed (never for ``internal`` events: replies and pings, already accepted work)."""
        ttl = ttl_of(event) if ttl is None else ttl
        attrs = attributes_of(event)
        if ttl <= 0:
            self.stats["dropped_ttl"] += 1
            _emit(
                "drop",
                reason="ttl exhausted",
                id=attrs.get("id"),
                type=attrs.get("type"),
                source=attrs.get("source"),
            )
            return 0
        matched = [t for t in self.topology.triggers_of(broker) if t.matches(attrs)]
        if not internal and len(self._tasks) + len(matched) > self._max_pending:
            self.stats["rejected_overload"] += 1
            raise Overloaded(f"{len(self._tasks)} deliveries pending")
        self.stats["accepted"] += 1
        if not matched:
            self.stats["unmatched"] += 1
        for trigger in matched:
            task = asyncio.create_task(self._deliver_guarded(trigger, event, ttl))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return len(matched)

    # dispatch -------------------------------------------------------------------------------------------

    async def _deliver_guarded(self, trigger: Trigger, event: CloudEvent, ttl: int) -> None:
        """Never let an accepted event vanish without a log line, whatever happens to its delivery."""
        try:
            await self._deliver(trigger, event, ttl)
        except asyncio.CancelledError:
            self.stats["dropped_shutdown"] += 1
            _emit("drop", reason="router stopping", trigger=trigger.name, id=event["id"], type=event["type"])
            raise
        except Exception as exc:  # a bug must not take the event silently with it
            self.stats["dropped_error"] += 1
            _emit(
                "drop",
                reason=f"internal error: {exc!r}",
                trigger=trigger.name,
                id=event["id"],
                type=event["type"],
            )
            log.exception("delivery failed")

    async def _deliver(self, trigger: Trigger, event: CloudEvent, ttl: int) -> None:
        spec = trigger.delivery
        attempt = await self._send_with_retries(trigger.subscriber, event, spec, trigger.name, ttl=ttl)
        if attempt.ok:
            self.stats["delivered"] += 1
            if attempt.reply is not None:
                self.stats["replies"] += 1
                self.accept(attempt.reply, (trigger.namespace, trigger.broker), ttl=ttl - 1, internal=True)
            return
        await self._dead_letter(trigger, event, attempt)

    async def _send_with_retries(
        self, target: Target, event: CloudEvent, spec: DeliverySpec, who: str, *, ttl: int | None = None
    ) -> Attempt:
        if target.broker is not None:  # a Broker as destination: straight into its ingress
            # One hop less, as for a reply: a Trigger that feeds a Broker must not loop for ever.
            hops_left = (ttl_of(event) if ttl is None else ttl) - 1
            self.accept(event, target.broker, ttl=hops_left, internal=True)
            return Attempt(ok=True, retried=False)
        assert target.url is not None
        headers, body = encode_binary(event)
        attempt = Attempt(ok=False, retried=True)
        for number in range(spec.retry + 1):
            if number:
                self.stats["retries"] += 1
                await asyncio.sleep(spec.backoff_s(number))
            async with self._slots:
                attempt = await self._attempt(target.url, headers, body, spec.timeout_s)
            if attempt.ok or not attempt.retried:
                break
            _emit(
                "retry" if number < spec.retry else "failed",
                to=target.label,
                trigger=who,
                id=event["id"],
                type=event["type"],
                attempt=number + 1,
                status=attempt.status,
                error=attempt.error,
            )
        return attempt

    async def _attempt(self, url: str, headers: dict[str, str], body: bytes, timeout_s: float) -> Attempt:
        assert self._client is not None
        try:
            return await asyncio.wait_for(self._post(url, headers, body), timeout_s)
        except (TimeoutError, asyncio.TimeoutError):
            return Attempt(ok=False, retried=True, error=f"no answer within {timeout_s:g} s")
        except httpx.HTTPError as exc:
            return Attempt(ok=False, retried=True, error=f"{type(exc).__name__}: {exc}")

    async def _post(self, url: str, headers: dict[str, str], body: bytes) -> Attempt:
        assert self._client is not None
        sent = {**self._delivery_headers, **headers, "Prefer": "reply"}
        async with self._client.stream("POST", url, headers=sent, content=body) as resp:
            chunks: list[bytes] = []
            size = 0
            async for chunk in resp.aiter_bytes():
                size += len(chunk)
                if size > MAX_REPLY_BYTES:
                    return Attempt(ok=False, retried=True, status=502, error="reply larger than the limit")
                chunks.append(chunk)
            content = b"".join(chunks)
        status = resp.status_code
        if 200 <= status < 300:
            # An empty 202 is never a reply, whatever headers come with it.
            if not content and (status == 202 or not _looks_like_event(resp.headers)):
                return Attempt(ok=True, retried=False, status=status)
            try:
                return Attempt(
                    ok=True, retried=False, status=status, reply=parse_event(resp.headers, content)
                )
            except GenericException as exc:
                # Knative's broker answers 502 for a 2xx whose body is not a CloudEvent: a failed delivery.
                return Attempt(
                    ok=False,
                    retried=True,
                    status=502,
                    body=content,
                    error=f"reply is not a CloudEvent: {exc}",
                )
        return Attempt(
            ok=False, retried=is_retried(status), status=status, body=content, error=f"HTTP {status}"
        )

    async def _dead_letter(self, trigger: Trigger, event: CloudEvent, failed: Attempt) -> None:
        facts: dict[str, Any] = {"knativeerrordest": trigger.subscriber.url or trigger.subscriber.label}
        if failed.status is not None:
            facts["knativeerrorcode"] = failed.status
        if failed.body:
            # Cut the raw bytes so that their base64 is at most ERROR_DATA_MAX_CHARS characters.
            cut = failed.body[: ERROR_DATA_MAX_CHARS // 4 * 3]
            facts["knativeerrordata"] = base64.b64encode(cut).decode()
        where = dict(
            trigger=trigger.name, id=event["id"], type=event["type"], status=failed.status, error=failed.error
        )
        if trigger.dead_letter is None:
            self.stats["dropped_no_dead_letter"] += 1
            _emit("drop", reason="delivery failed and the Trigger has no dead-letter sink", **where)
            return
        attributes = {**event.get_attributes(), **facts}
        letter = CloudEvent(attributes, event.data)
        no_reply = DeliverySpec(
            retry=trigger.delivery.retry,
            backoff_policy=trigger.delivery.backoff_policy,
            backoff_delay_s=trigger.delivery.backoff_delay_s,
            timeout_s=trigger.delivery.timeout_s,
        )
        sent = await self._send_with_retries(
            trigger.dead_letter, letter, no_reply, f"{trigger.name} (dead letter)"
        )
        if sent.ok:
            self.stats["dead_lettered"] += 1
            _emit("dead-letter", to=trigger.dead_letter.label, **where)
        else:
            self.stats["dropped_dead_letter_failed"] += 1
            _emit("drop", reason=f"the dead-letter sink failed too ({sent.error})", **where)

    # PingSources ----------------------------------------------------------------------------------------

    def ping_event(self, source: PingSource) -> CloudEvent:
        attributes: dict[str, Any] = {
            "specversion": "1.0",
            "type": "dev.knative.sources.ping",
            "source": source.source,
            "id": str(uuid4()),
            "time": datetime.now(timezone.utc).isoformat(),
        }
        if source.content_type:
            attributes["datacontenttype"] = source.content_type
        data: Any = source.data or None
        if data is not None and (source.content_type or "").endswith("json"):
            with contextlib.suppress(ValueError):
                data = json.loads(source.data)
        return CloudEvent(attributes, data)

    async def _ping_loop(self, source: PingSource) -> None:
        while True:
            now = datetime.now(timezone.utc)
            due = source.schedule.next_after(now)
            await asyncio.sleep(max(0.0, (due - now).total_seconds()))
            event = self.ping_event(source)
            self.stats["pings"] += 1
            _emit("ping", source=source.name, id=event["id"])
            if source.sink.broker is not None:
                self.accept(event, source.sink.broker, internal=True)
            else:
                task = asyncio.create_task(self._ping_direct(source, event))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _ping_direct(self, source: PingSource, event: CloudEvent) -> None:
        sent = await self._send_with_retries(source.sink, event, DeliverySpec(), source.name)
        if not sent.ok:
            self.stats["dropped_ping"] += 1
            _emit("drop", reason=f"ping delivery failed ({sent.error})", source=source.name, id=event["id"])


# HTTP front ----------------------------------------------------------------------------------------------


def create_app(router: Router, ready: threading.Event | None = None) -> Starlette:
    """The ingress as an ASGI app; its lifespan starts and stops the dispatcher (and sets ``ready``)."""

    async def ingress(request: Request) -> Response:
        try:
            broker = router.broker_at(request.url.path)
        except UnknownBroker as exc:
            return PlainTextResponse(str(exc), status_code=404)
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > MAX_EVENT_BYTES:
            return PlainTextResponse(f"event larger than {MAX_EVENT_BYTES} bytes", status_code=413)
        body = bytearray()
        async for chunk in request.stream():
            body.extend(chunk)
            if len(body) > MAX_EVENT_BYTES:
                return PlainTextResponse(f"event larger than {MAX_EVENT_BYTES} bytes", status_code=413)
        try:
            event = parse_event(dict(request.headers), bytes(body))
        except GenericException as exc:
            return PlainTextResponse(f"not a valid CloudEvent: {exc}", status_code=400)
        try:
            router.accept(event, broker)
        except Overloaded as exc:
            return PlainTextResponse(f"overloaded: {exc}", status_code=503, headers={"Retry-After": "1"})
        return Response(status_code=202)

    async def healthz(_: Request) -> Response:
        return PlainTextResponse("ok")

    async def stats(_: Request) -> Response:
        return JSONResponse({**router.stats, "pending": router.pending})

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        await router.start()
        if ready is not None:
            ready.set()
        try:
            yield
        finally:
            await router.stop()

    return Starlette(
        routes=[
            Route("/healthz", healthz, methods=["GET"]),
            Route("/health/{probe:str}", healthz, methods=["GET"]),
            Route("/stats", stats, methods=["GET"]),
            Route("/", ingress, methods=["POST"]),
            Route("/{namespace:str}/{broker:str}", ingress, methods=["POST"]),
        ],
        lifespan=lifespan,
    )


def bind(host: str, port: int) -> socket.socket:
    """A listening socket; port 0 picks a free one, known before the server starts."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(512)
    sock.setblocking(False)
    return sock


def _server(router: Router, ready: threading.Event | None = None) -> uvicorn.Server:
    config = uvicorn.Config(
        create_app(router, ready),
        lifespan="on",
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=int(SHUTDOWN_GRACE_S),
    )
    return uvicorn.Server(config)


class RouterThread:
    """The router served from a background thread with its own event loop (tests, embedding)."""

    def __init__(
        self, topology: Topology, host: str = "127.0.0.1", port: int = 0, **router_options: Any
    ) -> None:
        self._sock = bind(host, port)
        self.port: int = self._sock.getsockname()[1]
        self.url = f"http://{host}:{self.port}"
        self._topology = topology
        self._options = router_options
        self.router: Router | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, timeout_s: float = 10.0) -> RouterThread:
        ready = threading.Event()

        async def serve() -> None:
            self._loop = asyncio.get_running_loop()
            self.router = Router(self._topology, **self._options)
            self._server = _server(self.router, ready)
            await self._server.serve(sockets=[self._sock])

        self._thread = threading.Thread(target=asyncio.run, args=(serve(),), name="router", daemon=True)
        self._thread.start()
        if not ready.wait(timeout_s):
            raise DevstackError(f"the router did not start within {timeout_s} s")
        return self

    def stats(self) -> dict[str, int]:
        """A consistent copy of the counters, read on the router's loop."""
        if self.router is None or self._loop is None:
            return {}
        router = self.router

        async def read() -> dict[str, int]:
            return {**router.stats, "pending": router.pending}

        return asyncio.run_coroutine_threadsafe(read(), self._loop).result(5)

    def stop(self, timeout_s: float = 15.0) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                raise DevstackError(f"the router did not stop within {timeout_s} s")
        self._sock.close()

    def __enter__(self) -> RouterThread:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


# command line ---------------------------------------------------------------------------------------------


def read_header_file(path: Path) -> dict[str, str]:
    """``Name: value`` lines; the values are secrets, so errors name the line, never its content."""
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise DevstackError(f"cannot read {path}: {exc.strerror}") from None
    headers: dict[str, str] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        name, sep, value = line.partition(":")
        if not sep or not name.strip() or not value.strip():
            raise DevstackError(f"{path} line {number}: expected 'Name: value'")
        headers[name.strip()] = value.strip()
    return headers


def _service_entry(text: str) -> tuple[str, str]:
    name, sep, url = text.partition("=")
    if not sep or not name or not url:
        raise argparse.ArgumentTypeError(f"expected NAME=URL, got {text!r}")
    return name, url


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m xpipe.devstack.router", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--manifests", action="append", type=Path, required=True, help="file or directory (repeat)"
    )
    parser.add_argument(
        "--service",
        action="append",
        type=_service_entry,
        default=[],
        help="NAME=URL, '*=URL' for the catch-all",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--ping-interval", type=float, default=None, help="seconds; replaces every schedule")
    parser.add_argument("--max-in-flight", type=int, default=DEFAULT_MAX_IN_FLIGHT)
    parser.add_argument(
        "--delivery-headers-file", type=Path, help="'Name: value' lines added to every delivery (secret)"
    )
    parser.add_argument(
        "--max-timeout", type=float, default=DEFAULT_ATTEMPT_TIMEOUT_S, help="cap of any attempt, s"
    )
    args = parser.parse_args(argv)
    if args.ping_interval is not None and args.ping_interval <= 0:
        parser.error("--ping-interval must be longer than zero")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request is noise here
    try:
        topology = load_topology(
            args.manifests,
            ServiceTable(dict(args.service)),
            ping_interval_s=args.ping_interval,
            max_timeout_s=args.max_timeout,
        )
    except ManifestError as exc:
        print(f"router: {exc}", file=sys.stderr)
        return 2
    try:
        headers = read_header_file(args.delivery_headers_file) if args.delivery_headers_file else {}
    except DevstackError as exc:
        print(f"router: {exc}", file=sys.stderr)
        return 2
    sock = bind(args.host, args.port)
    router = Router(topology, max_in_flight=args.max_in_flight, delivery_headers=headers)
    server = _server(router)
    _emit(
        "start",
        url=f"http://{args.host}:{args.port}",
        brokers=["/".join(k) for k in topology.brokers],
        triggers=len(topology.triggers),
        ping_sources=len(topology.ping_sources),
    )
    started = time.monotonic()
    # While serving, uvicorn turns SIGTERM and SIGINT into a graceful shutdown (the lifespan then stops the
    # dispatcher); afterwards it re-raises the signal, which these handlers absorb so the exit is clean.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: None)
    asyncio.run(server.serve(sockets=[sock]))
    _emit("stop", uptime_s=round(time.monotonic() - started, 1), **router.stats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
