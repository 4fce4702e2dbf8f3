"""Reads Broker, Trigger and PingSource objects from Knative YAML manifests and resolves their destinations
to local URLs.

A path is a YAML file or a directory; a directory with a ``kustomization.yaml`` contributes its
``resources`` (files and nested directories, recursively) and its ``namespace``; one without contributes
every ``*.yaml``. Patches and generators are ignored: the eventing objects are read as the base declares
them. Other kinds (Services, Roles, ...) are skipped.

Subscribers name Knative Services (``ref``) or URIs. Locally a Service is a process on a port, so the router
gets a table from Service name to base URL; the entry ``*`` is the catch-all (the local step host), and may
contain ``{name}``, replaced by the Service's name.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import yaml

from xpipe.devstack.delivery import DEFAULT_ATTEMPT_TIMEOUT_S, DeliverySpec
from xpipe.devstack.errors import ManifestError
from xpipe.devstack.filters import Predicate, compile_trigger_filter
from xpipe.devstack.schedule import Schedule

DEFAULT_NAMESPACE = "default"
CATCH_ALL = "*"
_SERVICE_KINDS = {("serving.knative.dev", "Service"), ("", "Service")}


@dataclass(frozen=True)
class Target:
    """Where a delivery goes: an HTTP URL, or a Broker's ingress (``broker`` = (namespace, name))."""

    label: str
    url: str | None = None
    broker: tuple[str, str] | None = None


@dataclass(frozen=True)
class Broker:
    namespace: str
    name: str
    delivery: DeliverySpec
    dead_letter: Target | None


@dataclass(frozen=True)
class Trigger:
    namespace: str
    name: str
    broker: str
    matches: Predicate
    subscriber: Target
    delivery: DeliverySpec
    dead_letter: Target | None


@dataclass(frozen=True)
class PingSource:
    namespace: str
    name: str
    schedule: Schedule
    data: bytes
    content_type: str | None
    sink: Target

    @property
    def source(self) -> str:
        """The CloudEvent ``source`` Knative gives this PingSource's events."""
        return f"/apis/v1/namespaces/{self.namespace}/pingsources/{self.name}"


@dataclass
class Topology:
    """Everything the router honours, keyed for lookup."""

    brokers: dict[tuple[str, str], Broker] = field(default_factory=dict)
    triggers: list[Trigger] = field(default_factory=list)
    ping_sources: list[PingSource] = field(default_factory=list)

    def triggers_of(self, broker: tuple[str, str]) -> list[Trigger]:
        return [t for t in self.triggers if (t.namespace, t.broker) == broker]


def _documents(path: Path, namespace: str | None) -> Iterator[tuple[str, dict[str, Any], str | None]]:
    if path.is_dir():
        kustomization = next(
            (
                path / n
                for n in ("kustomization.yaml", "kustomization.yml", "Kustomization")
                if (path / n).exists()
            ),
            None,
        )
        if kustomization is None:
            for file in sorted([*path.glob("*.yaml"), *path.glob("*.yml")]):
                yield from _documents(file, namespace)
            return
        spec = yaml.safe_load(kustomization.read_text()) or {}
        namespace = spec.get("namespace") or namespace
        for entry in spec.get("resources") or []:
            target = path / str(entry)
            if not target.exists():
                raise ManifestError(str(kustomization), f"resource {entry!r} does not exist")
            yield from _documents(target, namespace)
        return
    try:
        docs = list(yaml.safe_load_all(path.read_text()))
    except (OSError, yaml.YAMLError) as exc:
        raise ManifestError(str(path), f"cannot read YAML: {exc}") from None
    for index, doc in enumerate(docs):
        if isinstance(doc, dict) and "kind" in doc:
            yield f"{path}[{index}]", doc, namespace


class ServiceTable:
    """Knative Service name -> local base URL, with an optional catch-all."""

    def __init__(self, urls: Mapping[str, str]) -> None:
        for name, url in urls.items():
            if urlsplit(url.replace("{name}", "x")).scheme not in ("http", "https"):
                raise ManifestError(f"service table[{name}]", f"{url!r} is not an http(s) URL")
        self._urls = dict(urls)

    def url_of(self, name: str, where: str) -> str:
        if name in self._urls:
            return self._urls[name]
        if CATCH_ALL in self._urls:
            return self._urls[CATCH_ALL].replace("{name}", name)
        raise ManifestError(where, f"no local URL for Service {name!r}; known: {sorted(self._urls)}")


def resolve_destination(dest: Any, namespace: str, services: ServiceTable, where: str) -> Target:
    """A Knative Destination (``ref`` and/or ``uri``) as a local Target."""
    if not isinstance(dest, dict) or not (dest.get("ref") or dest.get("uri")):
        raise ManifestError(where, "a destination needs a ref or a uri")
    uri = dest.get("uri")
    if uri is not None and not isinstance(uri, str):
        raise ManifestError(f"{where}.uri", "must be a string")
    ref = dest.get("ref")
    if ref is None:
        assert uri is not None
        if urlsplit(uri).scheme not in ("http", "https"):
            raise ManifestError(f"{where}.uri", f"{uri!r} is not an absolute http(s) URL")
        return Target(label=uri, url=uri)
    if (
        not isinstance(ref, dict)
        or not isinstance(ref.get("name"), str)
        or not isinstance(ref.get("kind"), str)
    ):
        raise ManifestError(f"{where}.ref", "needs kind and name")
    group = str(ref.get("apiVersion", "")).rpartition("/")[0]
    ref_ns = str(ref.get("namespace") or namespace)
    if ref["kind"] == "Broker":
        return Target(label=f"Broker/{ref_ns}/{ref['name']}", broker=(ref_ns, ref["name"]))
    if (group, ref["kind"]) not in _SERVICE_KINDS:
        raise ManifestError(
            f"{where}.ref", f"the local router cannot deliver to a {ref['apiVersion']} {ref['kind']}"
        )
    base = services.url_of(ref["name"], f"{where}.ref")
    url = urljoin(base.rstrip("/") + "/", uri.lstrip("/")) if uri else base
    return Target(label=f"Service/{ref['name']}", url=url)


def _delivery(
    spec: Any, namespace: str, services: ServiceTable, where: str, max_timeout_s: float
) -> tuple[DeliverySpec, Target | None]:
    delivery = DeliverySpec.from_manifest(spec, where, max_timeout_s=max_timeout_s)
    dead_letter = None
    if delivery.dead_letter_sink is not None:
        dead_letter = resolve_destination(
            delivery.dead_letter_sink, namespace, services, f"{where}.deadLetterSink"
        )
    return delivery, dead_letter


def load_topology(
    paths: Iterable[Path | str],
    services: ServiceTable,
    *,
    ping_interval_s: float | None = None,
    max_timeout_s: float = DEFAULT_ATTEMPT_TIMEOUT_S,
) -> Topology:
    """Every Broker, Trigger and PingSource under ``paths``, validated; the first problem raises
    ``ManifestError`` naming the file, the object and the field."""
    topology = Topology()
    triggers: list[tuple[str, dict[str, Any], str]] = []
    sources: list[tuple[str, dict[str, Any], str]] = []
    for path in paths:
        p = Path(path)
        if not p.exists():
            raise ManifestError(str(p), "no such file or directory")
        for where, doc, kust_ns in _documents(p, None):
            meta = doc.get("metadata") or {}
            namespace = str(kust_ns or meta.get("namespace") or DEFAULT_NAMESPACE)
            name = meta.get("name")
            kind = doc["kind"]
            if kind not in ("Broker", "Trigger", "PingSource"):
                continue
            if not isinstance(name, str) or not name:
                raise ManifestError(where, f"{kind} without metadata.name")
            at = f"{where} {kind}/{name}"
            spec = doc.get("spec") or {}
            if not isinstance(spec, dict):
                raise ManifestError(at, "spec must be a mapping")
            if kind == "Broker":
                delivery, dead_letter = _delivery(
                    spec.get("delivery"), namespace, services, f"{at} spec.delivery", max_timeout_s
                )
                topology.brokers[(namespace, name)] = Broker(namespace, name, delivery, dead_letter)
            elif kind == "Trigger":
                triggers.append((at, doc, namespace))
            else:
                sources.append((at, doc, namespace))
    for at, doc, namespace in triggers:
        spec = doc.get("spec") or {}
        broker_name = str(spec.get("broker", "default"))
        broker = topology.brokers.get((namespace, broker_name))
        if broker is None:
            raise ManifestError(at, f"spec.broker {broker_name!r} names no Broker in namespace {namespace!r}")
        if "delivery" in spec:  # a Trigger's delivery replaces its Broker's, it does not merge
            delivery, dead_letter = _delivery(
                spec["delivery"], namespace, services, f"{at} spec.delivery", max_timeout_s
            )
        else:
            delivery, dead_letter = broker.delivery, broker.dead_letter
        topology.triggers.append(
            Trigger(
                namespace=namespace,
                name=doc["metadata"]["name"],
                broker=broker_name,
                matches=compile_trigger_filter(spec, f"{at} spec"),
                subscriber=resolve_destination(
                    spec.get("subscriber"), namespace, services, f"{at} spec.subscriber"
                ),
                delivery=delivery,
                dead_letter=dead_letter,
            )
        )
    for at, doc, namespace in sources:
        spec = doc.get("spec") or {}
        schedule_text = spec.get("schedule")
        if not isinstance(schedule_text, str):
            raise ManifestError(f"{at} spec.schedule", "is required (a cron expression)")
        schedule = Schedule.parse(schedule_text, f"{at} spec.schedule", spec.get("timezone"))
        if ping_interval_s is not None:
            schedule = Schedule.every(ping_interval_s)
        if "data" in spec and "dataBase64" in spec:
            raise ManifestError(f"{at} spec", "data and dataBase64 are mutually exclusive")
        if "dataBase64" in spec:
            try:
                data = base64.b64decode(str(spec["dataBase64"]), validate=True)
            except binascii.Error:
                raise ManifestError(f"{at} spec.dataBase64", "is not valid base64") from None
        else:
            data = str(spec.get("data", "")).encode()
        sink = resolve_destination(spec.get("sink"), namespace, services, f"{at} spec.sink")
        if sink.broker is not None and sink.broker not in topology.brokers:
            raise ManifestError(
                f"{at} spec.sink", f"names no Broker {sink.broker[1]!r} in namespace {sink.broker[0]!r}"
            )
        topology.ping_sources.append(
            PingSource(namespace, doc["metadata"]["name"], schedule, data, spec.get("contentType"), sink)
        )
    return topology
