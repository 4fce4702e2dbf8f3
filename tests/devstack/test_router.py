"""The local broker against real HTTP subscribers on loopback: ingress, retries, dead letters, replies,
the TTL loop guard and PingSources."""

from __future__ import annotations

import base64
import itertools
import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from support.waiting import wait_until

from xpipe.devstack.errors import ManifestError
from xpipe.devstack.manifests import ServiceTable, load_topology
from xpipe.devstack.router import RouterThread

from .conftest import Answer, Received, Subscriber, broker, trigger, uri

StartRouter = Callable[..., RouterThread]
MakeSubscriber = Callable[..., Subscriber]


def binary(
    type_: str = "com.example.a", id_: str = "e1", data: Any = None, **extensions: str
) -> tuple[dict[str, str], bytes]:
    headers = {
        "ce-specversion": "1.0",
        "ce-id": id_,
        "ce-source": "/tests",
        "ce-type": type_,
        "content-type": "application/json",
    }
    headers.update({f"ce-{k}": v for k, v in extensions.items()})
    return headers, json.dumps(data if data is not None else {"n": 1}).encode()


def post(router: RouterThread, event: tuple[dict[str, str], bytes], path: str = "/") -> httpx.Response:
    headers, body = event
    return httpx.post(router.url + path, headers=headers, content=body, timeout=5)


def always(
    status: int, body: bytes = b"", headers: dict[str, str] | None = None
) -> Callable[[Received], Answer]:
    return lambda _: (status, headers or {}, body)


def gaps(received: list[Received]) -> list[float]:
    return [b.at - a.at for a, b in itertools.pairwise(received)]


def test_binary_and_structured_events_are_accepted_and_delivered_in_binary_mode(
    start_router: StartRouter, subscribers: MakeSubscriber
) -> None:
    sub = subscribers()
    router = start_router([broker(), trigger("all", uri(sub.url))])
    assert post(router, binary(id_="b1", data={"k": "v"})).status_code == 202
    structured = {
        "specversion": "1.0",
        "id": "s1",
        "source": "/tests",
        "type": "com.example.a",
        "data": {"k": 2},
    }
    response = httpx.post(
        router.url + "/default/default",
        headers={"content-type": "application/cloudevents+json"},
        content=json.dumps(structured).encode(),
    )
    assert response.status_code == 202
    got = sorted(sub.wait_for(2), key=lambda r: r.headers["ce-id"])
    assert [r.headers["ce-id"] for r in got] == ["b1", "s1"]
    assert [json.loads(r.body) for r in got] == [{"k": "v"}, {"k": 2}]
    assert all(
        r.headers["ce-type"] == "com.example.a" and "ce-knativebrokerttl" not in r.headers for r in got
    )
    assert got[1].headers["content-type"] == "application/json"


@pytest.mark.parametrize(
    ("headers", "body", "status"),
    [
        ({"content-type": "application/json"}, b'{"not": "an event"}', 400),
        ({"content-type": "application/cloudevents+json"}, b"[1, 2]", 400),
        ({"ce-specversion": "1.0", "ce-id": "", "ce-source": "/s", "ce-type": "t"}, b"", 400),
        ({"ce-specversion": "9.9", "ce-id": "1", "ce-source": "/s", "ce-type": "t"}, b"", 400),
    ],
)
def test_ingress_refuses_what_is_not_a_cloudevent(
    start_router: StartRouter, subscribers: MakeSubscriber, headers: dict[str, str], body: bytes, status: int
) -> None:
    sub = subscribers()
    router = start_router([broker(), trigger("all", uri(sub.url))])
    assert httpx.post(router.url, headers=headers, content=body).status_code == status
    assert (
        httpx.post(router.url + "/nowhere/default", headers=binary()[0], content=binary()[1]).status_code
        == 404
    )
    assert router.stats().get("accepted", 0) == 0
    assert sub.received == []


def test_only_matching_triggers_get_the_event(start_router: StartRouter, subscribers: MakeSubscriber) -> None:
    steps, others = subscribers(), subscribers()
    router = start_router(
        [
            broker(),
            trigger("steps", uri(steps.url), filters=[{"prefix": {"type": "com.xpipe.step."}}]),
            trigger("others", uri(others.url), filter={"attributes": {"type": "com.example.a"}}),
        ]
    )
    post(router, binary("com.xpipe.step.run", "r1"))
    post(router, binary("com.example.a", "a1"))
    assert [r.headers["ce-id"] for r in steps.wait_for(1)] == ["r1"]
    assert [r.headers["ce-id"] for r in others.wait_for(1)] == ["a1"]
    wait_until(lambda: router.stats().get("delivered") == 2, what="both deliveries")
    assert len(steps.received) == 1
    assert len(others.received) == 1


def test_linear_backoff_retries_then_dead_letters_with_the_error_extensions(
    start_router: StartRouter, subscribers: MakeSubscriber
) -> None:
    failing = subscribers(always(503, b"journal unavailable"))
    dead = subscribers()
    delivery = {
        "retry": 3,
        "backoffPolicy": "linear",
        "backoffDelay": "PT0.1S",
        "deadLetterSink": uri(dead.url),
    }
    router = start_router([broker(), trigger("t", uri(failing.url), delivery=delivery)])
    post(router, binary(id_="lin", data={"x": 1}))
    [letter] = dead.wait_for(1)
    attempts = failing.wait_for(4)
    assert len(attempts) == 4  # the first attempt and three retries
    for number, gap in enumerate(gaps(attempts), start=1):  # waits 0.1, 0.2, 0.3 s
        assert gap >= 0.1 * number * 0.9, gaps(attempts)
    assert attempts[-1].at - attempts[0].at < 3.0
    assert letter.headers["ce-id"] == "lin"
    assert letter.headers["ce-knativeerrorcode"] == "503"
    assert base64.b64decode(letter.headers["ce-knativeerrordata"]) == b"journal unavailable"
    assert letter.headers["ce-knativeerrordest"] == failing.url
    assert json.loads(letter.body) == {"x": 1}
    wait_until(lambda: router.stats().get("dead_lettered") == 1, what="the dead-letter count")


def test_exponential_backoff_doubles_the_wait(start_router: StartRouter, subscribers: MakeSubscriber) -> None:
    failing = subscribers(always(500))
    delivery = {"retry": 3, "backoffPolicy": "exponential", "backoffDelay": "PT0.05S"}
    router = start_router([broker(), trigger("t", uri(failing.url), delivery=delivery)])
    post(router, binary(id_="exp"))
    attempts = failing.wait_for(4)
    spacing = gaps(attempts)  # waits 0.1, 0.2, 0.4 s
    for number, gap in enumerate(spacing, start=1):
        assert gap >= 0.05 * 2**number * 0.9, spacing
    assert spacing[2] > spacing[0]
    wait_until(lambda: router.stats().get("dropped_no_dead_letter") == 1, what="the drop")
    assert len(failing.received) == 4


@pytest.mark.parametrize("status", [500, 502, 503, 404, 408, 409, 429])
def test_retried_status_codes(start_router: StartRouter, subscribers: MakeSubscriber, status: int) -> None:
    failing = subscribers(always(status))
    dead = subscribers()
    delivery = {"retry": 1, "backoffDelay": "PT0.01S", "deadLetterSink": uri(dead.url)}
    router = start_router([broker(), trigger("t", uri(failing.url), delivery=delivery)])
    post(router, binary())
    [letter] = dead.wait_for(1)
    assert len(failing.received) == 2
    assert letter.headers["ce-knativeerrorcode"] == str(status)


@pytest.mark.parametrize("status", [400, 401, 403, 413, 415, 422, 302, 304])
def test_final_status_codes_go_straight_to_the_dead_letter_sink(
    start_router: StartRouter, subscribers: MakeSubscriber, status: int
) -> None:
    failing = subscribers(always(status, b"" if status == 304 else b"bad"))
    dead = subscribers()
    delivery = {"retry": 3, "backoffDelay": "PT0.01S", "deadLetterSink": uri(dead.url)}
    router = start_router([broker(), trigger("t", uri(failing.url), delivery=delivery)])
    post(router, binary())
    [letter] = dead.wait_for(1)
    assert len(failing.received) == 1
    assert letter.headers["ce-knativeerrorcode"] == str(status)


def test_error_data_is_cut_at_1024_characters(start_router: StartRouter, subscribers: MakeSubscriber) -> None:
    failing = subscribers(always(400, b"e" * 5000))
    dead = subscribers()
    router = start_router([broker({"deadLetterSink": uri(dead.url)}), trigger("t", uri(failing.url))])
    post(router, binary())
    [letter] = dead.wait_for(1)
    # As Knative's dispatcher: the base64 text is what is cut, at 1024 characters (768 bytes of body).
    assert len(letter.headers["ce-knativeerrordata"]) == 1024
    assert base64.b64decode(letter.headers["ce-knativeerrordata"]) == b"e" * 768


def test_error_data_carries_a_binary_body_unchanged(
    start_router: StartRouter, subscribers: MakeSubscriber
) -> None:
    failing = subscribers(always(400, bytes(range(256))))
    dead = subscribers()
    router = start_router([broker({"deadLetterSink": uri(dead.url)}), trigger("t", uri(failing.url))])
    post(router, binary())
    [letter] = dead.wait_for(1)
    assert base64.b64decode(letter.headers["ce-knativeerrordata"]) == bytes(range(256))


def test_an_empty_202_is_a_delivery_even_with_cloudevent_headers(
    start_router: StartRouter, subscribers: MakeSubscriber
) -> None:
    accepting = subscribers(always(202, b"", {"ce-specversion": "1.0", "ce-id": "x"}))
    dead = subscribers()
    delivery = {"retry": 3, "backoffDelay": "PT0.01S", "deadLetterSink": uri(dead.url)}
    router = start_router([broker(), trigger("t", uri(accepting.url), delivery=delivery)])
    post(router, binary())
    wait_until(lambda: router.stats().get("delivered") == 1, what="the delivery")
    assert (len(accepting.received), router.stats().get("retries", 0), dead.received) == (1, 0, [])


def test_a_2xx_with_a_body_that_is_not_an_event_is_a_failed_delivery(
    start_router: StartRouter, subscribers: MakeSubscriber
) -> None:
    ok_text = subscribers(always(200, b"OK", {"content-type": "text/plain"}))
    dead = subscribers()
    delivery = {"retry": 2, "backoffDelay": "PT0.01S", "deadLetterSink": uri(dead.url)}
    router = start_router([broker(), trigger("t", uri(ok_text.url), delivery=delivery)])
    post(router, binary())
    [letter] = dead.wait_for(1)
    assert len(ok_text.received) == 3
    assert letter.headers["ce-knativeerrorcode"] == "502"
    assert base64.b64decode(letter.headers["ce-knativeerrordata"]) == b"OK"


def test_time_outs_and_refused_connections_are_retried_without_an_error_code(
    start_router: StartRouter, subscribers: MakeSubscriber
) -> None:

    release = threading.Event()

    def hang(_: Received) -> Answer:
        release.wait(5)
        return 202, {}, b""

    slow = subscribers(hang)
    gone = subscribers()
    gone_url = gone.url
    gone.close()  # nothing listens there any more: connection refused
    dead = subscribers()
    delivery = {"retry": 1, "backoffDelay": "PT0.01S", "timeout": "PT0.3S", "deadLetterSink": uri(dead.url)}
    router = start_router(
        [
            broker(),
            trigger("slow", uri(slow.url), delivery=delivery),
            trigger("gone", uri(gone_url), delivery=delivery),
        ]
    )
    post(router, binary())
    letters = dead.wait_for(2)
    release.set()
    assert len(slow.received) == 2
    assert {r.headers["ce-knativeerrordest"] for r in letters} == {slow.url, gone_url}
    assert all("ce-knativeerrorcode" not in r.headers for r in letters)


def test_a_trigger_delivery_replaces_the_broker_delivery(
    start_router: StartRouter, subscribers: MakeSubscriber
) -> None:
    failing = subscribers(always(503))
    dead = subscribers()
    broker_delivery = {"retry": 3, "backoffDelay": "PT0.01S", "deadLetterSink": uri(dead.url)}
    router = start_router([broker(broker_delivery), trigger("own", uri(failing.url), delivery={"retry": 1})])
    post(router, binary())
    wait_until(lambda: router.stats().get("dropped_no_dead_letter") == 1, what="the drop")
    assert len(failing.received) == 2  # the Trigger's retry count, and no dead letter: nothing merged
    assert dead.received == []


def reply_with(type_: str, structured: bool = False) -> Callable[[Received], Answer]:
    def answer(got: Received) -> Answer:
        if structured:
            event = {
                "specversion": "1.0",
                "id": "r-" + got.headers["ce-id"],
                "source": "/sub",
                "type": type_,
                "data": {"r": 1},
            }
            return 200, {"content-type": "application/cloudevents+json"}, json.dumps(event).encode()
        headers = {
            "ce-specversion": "1.0",
            "ce-id": "r-" + got.headers["ce-id"],
            "ce-source": "/sub",
            "ce-type": type_,
        }
        return 200, {**headers, "content-type": "application/json"}, b'{"r": 1}'

    return answer


@pytest.mark.parametrize("structured", [False, True], ids=["binary", "structured"])
def test_a_reply_is_ingested_again(
    start_router: StartRouter, subscribers: MakeSubscriber, structured: bool
) -> None:
    first = subscribers(reply_with("com.example.b", structured))
    second = subscribers()
    router = start_router(
        [
            broker(),
            trigger("a", uri(first.url), filters=[{"exact": {"type": "com.example.a"}}]),
            trigger("b", uri(second.url), filters=[{"exact": {"type": "com.example.b"}}]),
        ]
    )
    post(router, binary("com.example.a", "q1"))
    [reply] = second.wait_for(1)
    wait_until(lambda: router.stats().get("replies") == 1, what="the reply count")
    assert reply.headers["ce-id"] == "r-q1"
    assert json.loads(reply.body) == {"r": 1}
    assert "ce-knativebrokerttl" not in reply.headers


@pytest.mark.parametrize("status", [200, 202, 204])
def test_an_empty_2xx_is_success_without_a_reply(
    start_router: StartRouter, subscribers: MakeSubscriber, status: int
) -> None:
    sub = subscribers(always(status))
    router = start_router([broker(), trigger("t", uri(sub.url))])
    post(router, binary())
    wait_until(lambda: router.stats().get("delivered") == 1, what="the delivery")
    stats = router.stats()
    assert stats.get("replies", 0) == 0
    assert stats.get("accepted") == 1


def test_the_ttl_guard_stops_a_reply_loop(start_router: StartRouter, subscribers: MakeSubscriber) -> None:
    echo = subscribers(reply_with("com.example.a"))  # replies with an event its own Trigger matches
    router = start_router([broker(), trigger("loop", uri(echo.url))])
    post(router, binary("com.example.a", "loop", knativebrokerttl="3"))
    wait_until(lambda: router.stats().get("dropped_ttl") == 1, what="the loop to be cut")
    assert len(echo.received) == 3  # TTL 3, 2, 1; the reply that would carry 0 is dropped
    assert all("ce-knativebrokerttl" not in r.headers for r in echo.received)


def test_the_ttl_guard_stops_a_trigger_that_feeds_its_own_broker(
    start_router: StartRouter, subscribers: MakeSubscriber
) -> None:
    watcher = subscribers()
    to_broker = {"ref": {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker", "name": "default"}}
    router = start_router([broker(), trigger("loop", to_broker), trigger("watch", uri(watcher.url))])
    post(router, binary("com.example.a", "loop", knativebrokerttl="3"))
    wait_until(lambda: router.stats().get("dropped_ttl") == 1, what="the loop to be cut")
    assert len(watcher.wait_for(3)) == 3  # TTL 3, 2 and 1 reach the watcher; the hop with 0 is dropped


def test_ping_sources_fire_into_the_broker(start_router: StartRouter, subscribers: MakeSubscriber) -> None:
    relay = subscribers()
    ping = {
        "apiVersion": "sources.knative.dev/v1",
        "kind": "PingSource",
        "metadata": {"name": "sweep", "namespace": "default"},
        "spec": {
            "schedule": "* * * * *",
            "contentType": "application/json",
            "data": '{"sweep": true}',
            "sink": {"ref": {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker", "name": "default"}},
        },
    }
    start_router(
        [
            broker(),
            ping,
            trigger("relay", uri(relay.url), filters=[{"exact": {"type": "dev.knative.sources.ping"}}]),
        ],
        ping_interval_s=0.1,
    )
    pings = relay.wait_for(2)
    assert {p.headers["ce-source"] for p in pings} == {"/apis/v1/namespaces/default/pingsources/sweep"}
    assert json.loads(pings[0].body) == {"sweep": True}
    assert pings[0].headers["ce-id"] != pings[1].headers["ce-id"]


def test_subscriber_refs_resolve_through_the_service_table(
    start_router: StartRouter, subscribers: MakeSubscriber
) -> None:
    submit, step_host = subscribers(), subscribers()
    ref = {"ref": {"apiVersion": "serving.knative.dev/v1", "kind": "Service", "name": "submit"}}
    step_ref = {
        "ref": {"apiVersion": "serving.knative.dev/v1", "kind": "Service", "name": "demo-ok-build"},
        "uri": "/run",
    }
    router = start_router(
        [
            broker(),
            trigger("submit", ref, filters=[{"exact": {"type": "com.xpipe.pipeline.submit"}}]),
            trigger("step", step_ref, filters=[{"exact": {"type": "com.xpipe.step.run"}}]),
        ],
        services={"submit": submit.url, "*": step_host.url + "/steps/{name}"},
    )
    post(router, binary("com.xpipe.pipeline.submit", "s"))
    post(router, binary("com.xpipe.step.run", "r"))
    assert submit.wait_for(1)[0].headers["ce-id"] == "s"
    assert step_host.wait_for(1)[0].headers["ce-id"] == "r"


def test_overload_answers_503_and_accepts_nothing(
    start_router: StartRouter, subscribers: MakeSubscriber
) -> None:

    release = threading.Event()

    def hang(_: Received) -> Answer:
        release.wait(5)
        return 202, {}, b""

    slow = subscribers(hang)
    router = start_router([broker(), trigger("t", uri(slow.url))], max_pending=1)
    try:
        assert post(router, binary(id_="1")).status_code == 202
        assert post(router, binary(id_="2")).status_code == 503
    finally:
        release.set()
    wait_until(lambda: router.stats().get("delivered") == 1, what="the first delivery")
    assert [r.headers["ce-id"] for r in slow.received] == ["1"]


@pytest.mark.parametrize(
    ("docs", "message"),
    [
        ([broker(), trigger("t", uri("http://127.0.0.1:1"), broker="nope")], "names no Broker"),
        ([broker({"backoffDelay": "0.2s"})], "not an ISO-8601 duration"),
        ([broker({"backoffPolicy": "fibonacci"})], "linear or exponential"),
        ([broker({"retry": -1})], "integer from 0"),
        (
            [
                broker(),
                trigger(
                    "t", {"ref": {"apiVersion": "serving.knative.dev/v1", "kind": "Service", "name": "x"}}
                ),
            ],
            "no local URL",
        ),
        ([broker(), trigger("t", uri("ftp://x"))], "not an absolute http"),
        ([broker(), trigger("t", uri("http://127.0.0.1:1"), filters=[{"cesql": "true"}])], "cesql"),
    ],
)
def test_bad_manifests_are_refused_with_the_field_named(
    tmp_path: Path, docs: list[dict[str, Any]], message: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    with pytest.raises(ManifestError, match=message) as info:
        load_topology([path], ServiceTable({}))
    assert str(path) in str(info.value)


def test_delivery_headers_reach_subscribers_and_never_the_log(
    start_router: StartRouter, subscribers: MakeSubscriber, caplog: pytest.LogCaptureFixture
) -> None:
    failing = subscribers(always(503))
    dead = subscribers()
    delivery = {"retry": 1, "backoffDelay": "PT0.01S", "deadLetterSink": uri(dead.url)}
    router = start_router(
        [broker(), trigger("t", uri(failing.url), delivery=delivery)],
        delivery_headers={"X-Token-XPipe": "s3cret-token"},
    )
    with caplog.at_level("INFO", logger="xpipe.devstack.router"):
        post(router, binary())
        [letter] = dead.wait_for(1)
        wait_until(lambda: router.stats().get("dead_lettered") == 1, what="the dead letter")
    assert {r.headers["x-token-xpipe"] for r in [*failing.received, letter]} == {"s3cret-token"}
    assert "retry" in caplog.text
    assert "s3cret" not in caplog.text
