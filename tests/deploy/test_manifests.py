"""The knative/ kustomize targets: they render, every object is valid for its schema, and the objects
agree with each other (references resolve, every handled event type is routed, RBAC stays least
privilege, only submit is exposed)."""

from __future__ import annotations

import base64
import copy
import os
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from xpipe.auth import TokenRegistry
from xpipe.errors import ConfigurationError

from .crd import crd_errors, is_knative
from .event_routes import (
    BROKER_ROUTES,
    DEAD_LETTER_SINK,
    INGRESS_ROUTES,
    NOT_FOR_FUNCTIONS,
    event_type_constants,
)
from .rendering import (
    KNATIVE,
    OVERLAYS,
    RENDER_TARGETS,
    REPO,
    Manifest,
    find,
    ident,
    knative_services,
    of_kind,
    render,
)

# kubectl here is 1.32; RKE2 clusters for this product run 1.31 or 1.32.
KUBERNETES_VERSION = "1.32.0"
FUNCTIONS = ("submit", "health-relay", "rollback")
FUNCTIONS_NAMESPACE = "xpipe"
STEPS_NAMESPACE = "xpipe-steps"
# Secrets the manifests name but cannot hold: issued by cert-manager or from the shop's certificate.
EXTERNAL_SECRETS = {(FUNCTIONS_NAMESPACE, "xpipe-submit-tls")}
Rendered = dict[str, list[Manifest]]
# Verbs that change something; RBAC tests allow them only where the issue grants them.
WRITE_VERBS = {"create", "update", "patch", "delete", "deletecollection", "escalate", "bind", "impersonate"}
FULL_TARGETS = ("base", *OVERLAYS)  # the targets that carry the function Services too


def _destination_service(dest: dict[str, Any], default_namespace: str) -> tuple[str, str, str]:
    ref = dest["ref"]
    return ref["kind"], str(ref.get("namespace") or default_namespace), ref["name"]


def _annotations(ksvc: Manifest) -> dict[str, str]:
    annotations: dict[str, str] = ksvc["spec"]["template"]["metadata"].get("annotations", {})
    return annotations


def _container(ksvc: Manifest) -> dict[str, Any]:
    containers = ksvc["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, f"{ident(ksvc)}: one container expected"
    container: dict[str, Any] = containers[0]
    return container


def _env(ksvc: Manifest) -> dict[str, Any]:
    return {item["name"]: item.get("value") for item in _container(ksvc).get("env", [])}


def _config_value(docs: list[Manifest], key: str) -> str:
    values = [cm["data"][key] for cm in of_kind(docs, "ConfigMap", "") if key in cm.get("data", {})]
    assert len(values) == 1, f"{key} should be set in exactly one ConfigMap, found {len(values)}"
    return str(values[0])


# --- rendering and schemas ------------------------------------------------------------------------------


@pytest.mark.parametrize("target", RENDER_TARGETS)
def test_target_renders_with_namespaced_named_objects(rendered: Rendered, target: str) -> None:
    docs = rendered[target]
    assert docs, f"{target} rendered nothing"
    for doc in docs:
        assert doc.get("apiVersion"), doc
        assert doc.get("kind"), doc
        meta = doc.get("metadata", {})
        assert meta.get("name"), f"{doc['kind']} without a name in {target}"
        if doc["kind"] != "Namespace":
            assert meta.get("namespace") in (FUNCTIONS_NAMESPACE, STEPS_NAMESPACE), (
                f"{ident(doc)} in {target}: every object names xpipe or xpipe-steps"
            )
        assert meta.get("labels", {}).get("app.kubernetes.io/part-of") == "xpipe", f"{ident(doc)} unlabelled"


@pytest.mark.parametrize("target", RENDER_TARGETS)
def test_knative_objects_match_the_published_crd_schemas(rendered: Rendered, target: str) -> None:
    knative = [doc for doc in rendered[target] if is_knative(doc)]
    expected_kinds = {"Broker", "Trigger", "ApiServerSource", "PingSource", "SinkBinding"}
    if target != "platform":
        expected_kinds.add("Service")
    assert expected_kinds <= {doc["kind"] for doc in knative}
    problems = {ident(doc): crd_errors(doc) for doc in knative}
    assert not {k: v for k, v in problems.items() if v}, problems


@pytest.mark.parametrize("target", RENDER_TARGETS)
def test_core_objects_are_valid_kubernetes(rendered: Rendered, target: str) -> None:
    core = [doc for doc in rendered[target] if not is_knative(doc)]
    kinds = {doc["kind"] for doc in core}
    assert {"Namespace", "ServiceAccount", "Role", "RoleBinding", "Secret", "ConfigMap"} <= kinds
    assert {"NetworkPolicy", "Ingress"} <= kinds
    for doc in core:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_crd_validation_rejects_a_misspelt_field(rendered: Rendered) -> None:
    """The schema check is strict where the API server is: a typo in a typed object is an error."""
    trigger = copy.deepcopy(of_kind(rendered["base"], "Trigger")[0])
    trigger["spec"]["subscriber"]["ref"]["nmae"] = trigger["spec"]["subscriber"]["ref"].pop("name")
    assert any("nmae" in error for error in crd_errors(trigger))
    ksvc = copy.deepcopy(knative_services(rendered["base"])[0])
    ksvc["spec"]["template"]["spec"]["containers"][0]["imagee"] = "x"
    assert any("imagee" in error for error in crd_errors(ksvc))
    ksvc = copy.deepcopy(knative_services(rendered["base"])[0])
    ksvc["spec"]["template"]["spec"]["containerConcurrency"] = "one"
    assert crd_errors(ksvc)


def test_kubernetes_validation_rejects_a_misspelt_field(rendered: Rendered) -> None:
    role = copy.deepcopy(of_kind(rendered["base"], "Role")[0])
    role["rules"][0]["verb"] = role["rules"][0].pop("verbs")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(role, KUBERNETES_VERSION, strict=True)


# --- references resolve --------------------------------------------------------------------------------


@pytest.mark.parametrize("target", FULL_TARGETS)
def test_every_trigger_subscriber_and_dead_letter_sink_is_a_service_here(
    rendered: Rendered, target: str
) -> None:
    docs = rendered[target]
    services = {(s["metadata"]["namespace"], s["metadata"]["name"]) for s in knative_services(docs)}
    triggers = of_kind(docs, "Trigger", "eventing.knative.dev")
    assert triggers
    for trigger in triggers:
        namespace = trigger["metadata"]["namespace"]
        spec = trigger["spec"]
        assert find(docs, "Broker", namespace, spec["broker"]), (
            f"{ident(trigger)}: no Broker in its namespace"
        )
        kind, ns, name = _destination_service(spec["subscriber"], namespace)
        assert kind == "Service", ident(trigger)
        assert (ns, name) in services, f"{ident(trigger)} subscribes {ns}/{name}"
        assert "delivery" in spec, f"{ident(trigger)}: a Trigger's delivery replaces the Broker's; set it"
        kind, ns, name = _destination_service(spec["delivery"]["deadLetterSink"], namespace)
        assert (kind, ns, name) == ("Service", FUNCTIONS_NAMESPACE, DEAD_LETTER_SINK), ident(trigger)
    for broker in of_kind(docs, "Broker", "eventing.knative.dev"):
        sink = _destination_service(
            broker["spec"]["delivery"]["deadLetterSink"], broker["metadata"]["namespace"]
        )
        assert sink == ("Service", FUNCTIONS_NAMESPACE, DEAD_LETTER_SINK), ident(broker)


@pytest.mark.parametrize("target", RENDER_TARGETS)
def test_sources_and_bindings_sink_into_the_broker(rendered: Rendered, target: str) -> None:
    docs = rendered[target]
    sources = [
        *of_kind(docs, "ApiServerSource", "sources.knative.dev"),
        *of_kind(docs, "PingSource", "sources.knative.dev"),
        *of_kind(docs, "SinkBinding", "sources.knative.dev"),
    ]
    assert len(sources) == 4
    for source in sources:
        kind, ns, name = _destination_service(source["spec"]["sink"], source["metadata"]["namespace"])
        assert kind == "Broker", ident(source)
        assert find(docs, "Broker", ns, name), f"{ident(source)} sinks into {ns}/{name}"
    for binding in of_kind(docs, "SinkBinding"):
        subject = binding["spec"]["subject"]
        # A SinkBinding's subject must be in the SinkBinding's own namespace (Knative's validation).
        assert subject.get("namespace", binding["metadata"]["namespace"]) == binding["metadata"]["namespace"]
        assert (subject["apiVersion"], subject["kind"]) == ("serving.knative.dev/v1", "Service")


@pytest.mark.parametrize("target", FULL_TARGETS)
def test_every_referenced_secret_configmap_and_account_exists(rendered: Rendered, target: str) -> None:
    docs = rendered[target]

    def exists(kind: str, namespace: str, name: str) -> bool:
        return find(docs, kind, namespace, name, "") is not None

    checked = 0
    for ksvc in knative_services(docs):
        namespace = ksvc["metadata"]["namespace"]
        pod = ksvc["spec"]["template"]["spec"]
        assert exists("ServiceAccount", namespace, pod["serviceAccountName"]), ident(ksvc)
        for volume in pod.get("volumes", []):
            if "secret" in volume:
                assert exists("Secret", namespace, volume["secret"]["secretName"]), f"{ident(ksvc)}: {volume}"
            if "configMap" in volume:
                assert exists("ConfigMap", namespace, volume["configMap"]["name"]), f"{ident(ksvc)}: {volume}"
            checked += 1
        for source in _container(ksvc).get("envFrom", []):
            ref = source.get("configMapRef") or source.get("secretRef")
            kind = "ConfigMap" if "configMapRef" in source else "Secret"
            assert exists(kind, namespace, ref["name"]), f"{ident(ksvc)}: envFrom {ref['name']}"
            checked += 1
        mounts = {m["name"] for m in _container(ksvc).get("volumeMounts", [])}
        assert mounts == {v["name"] for v in pod.get("volumes", [])}, (
            f"{ident(ksvc)}: mounts and volumes differ"
        )
    for source in of_kind(docs, "ApiServerSource"):
        assert exists("ServiceAccount", source["metadata"]["namespace"], source["spec"]["serviceAccountName"])
    for binding in of_kind(docs, "RoleBinding"):
        assert find(docs, "Role", binding["metadata"]["namespace"], binding["roleRef"]["name"]), ident(
            binding
        )
        for subject in binding["subjects"]:
            assert subject["kind"] == "ServiceAccount", ident(binding)
            assert exists("ServiceAccount", subject["namespace"], subject["name"]), ident(binding)
    for ingress in of_kind(docs, "Ingress"):
        for tls in ingress["spec"]["tls"]:
            key = (ingress["metadata"]["namespace"], tls["secretName"])
            assert key in EXTERNAL_SECRETS or exists("Secret", *key), f"{ident(ingress)}: {key}"
    assert checked >= 3 * 5


# --- events are routed -----------------------------------------------------------------------------------


def test_every_event_type_is_routed_or_explained() -> None:
    routed = {t for types in (*BROKER_ROUTES.values(), *INGRESS_ROUTES.values()) for t in types}
    for name, event_type in event_type_constants().items():
        assert event_type in routed or event_type in NOT_FOR_FUNCTIONS, (
            f"xpipe.events.{name} ({event_type}) reaches no function: add it to tests/deploy/event_routes.py "
            "and route it in knative/base/platform/triggers.yaml, or say why no function receives it"
        )
    assert not routed & set(NOT_FOR_FUNCTIONS)


@pytest.mark.parametrize("target", FULL_TARGETS)
def test_every_broker_delivered_type_has_a_trigger_to_its_function(rendered: Rendered, target: str) -> None:
    docs = rendered[target]
    routes: set[tuple[str, str]] = set()
    for trigger in of_kind(docs, "Trigger", "eventing.knative.dev"):
        event_type = trigger["spec"]["filter"]["attributes"]["type"]
        routes.add((event_type, trigger["spec"]["subscriber"]["ref"]["name"]))
    expected = {(t, function) for function, types in BROKER_ROUTES.items() for t in types}
    assert routes == expected, f"missing: {expected - routes}; unexpected: {routes - expected}"


@pytest.mark.parametrize("target", FULL_TARGETS)
def test_only_submit_is_exposed_through_one_tls_nginx_ingress(rendered: Rendered, target: str) -> None:
    docs = rendered[target]
    (ingress,) = of_kind(docs, "Ingress")
    spec = ingress["spec"]
    assert spec["ingressClassName"] == "nginx"
    tls_hosts = {host for tls in spec["tls"] for host in tls["hosts"]}
    backends = set()
    for rule in spec["rules"]:
        assert rule["host"] in tls_hosts, f"{rule['host']} is served without TLS"
        for path in rule["http"]["paths"]:
            backends.add(path["backend"]["service"]["name"])
    assert "defaultBackend" not in spec
    assert backends == set(INGRESS_ROUTES) == {"submit"}
    assert ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/upstream-vhost"] == (
        f"submit.{FUNCTIONS_NAMESPACE}.svc.cluster.local"
    )
    for ksvc in knative_services(docs):  # nothing else is reachable from outside through Knative's domain
        assert ksvc["metadata"]["labels"]["networking.knative.dev/visibility"] == "cluster-local", ident(ksvc)


# --- the function Services -------------------------------------------------------------------------------


@pytest.mark.parametrize("target", FULL_TARGETS)
def test_function_services_share_one_image_and_differ_by_source(rendered: Rendered, target: str) -> None:
    docs = rendered[target]
    services = {s["metadata"]["name"]: s for s in knative_services(docs)}
    assert set(services) == set(FUNCTIONS)
    assert len({_container(s)["image"] for s in services.values()}) == 1
    for name, ksvc in services.items():
        assert ksvc["metadata"]["namespace"] == FUNCTIONS_NAMESPACE
        env = _env(ksvc)
        assert env["FUNCTION_TARGET"] == "handle"
        assert env["FUNCTION_SOURCE"] == f"functions/{name}/main.py"
        assert env["FUNCTION_SIGNATURE_TYPE"] == "http"
        assert "PORT" not in env, "Knative sets PORT; setting it is refused"
        assert "DEBUG" not in env, "DEBUG makes functions-framework use Flask's development server"
        container = _container(ksvc)
        assert container["livenessProbe"]["httpGet"]["path"] == "/health/liveness"
        assert container["readinessProbe"]["httpGet"]["path"] == "/health/readiness"
        assert container["securityContext"]["runAsNonRoot"] is True
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert ksvc["spec"]["template"]["metadata"]["labels"]["xpipe.io/function"] == name
        assert ksvc["metadata"]["labels"]["xpipe.io/function"] == name  # the SinkBinding's selector
        assert ksvc["spec"]["template"]["spec"]["serviceAccountName"] == f"xpipe-{name}"


def test_function_sources_named_by_the_services_exist(rendered: Rendered) -> None:
    for ksvc in knative_services(rendered["base"]):
        source = REPO / _env(ksvc)["FUNCTION_SOURCE"]
        assert source.is_file(), f"{ident(ksvc)} runs {source.relative_to(REPO)}, which does not exist"


@pytest.mark.parametrize("target", FULL_TARGETS)
def test_function_configuration_names_the_steps_namespace_and_broker(rendered: Rendered, target: str) -> None:
    docs = rendered[target]
    assert _config_value(docs, "XPIPE_BACKEND") == "knative"
    assert _config_value(docs, "XPIPE_STEPS_NAMESPACE") == STEPS_NAMESPACE
    broker = _config_value(docs, "XPIPE_BROKER")
    assert find(docs, "Broker", STEPS_NAMESPACE, broker), (
        "XPIPE_BROKER names no Broker of the steps namespace"
    )
    assert int(_config_value(docs, "XPIPE_MAX_BODY_BYTES")) == 1024 * 1024
    host, _, port = _config_value(docs, "XPIPE_JOURNAL").rpartition(":")
    assert host, "XPIPE_JOURNAL is host:port"
    assert port.isdigit(), "XPIPE_JOURNAL is host:port"
    assert _config_value(docs, "XPIPE_JOURNAL_TLS") in ("true", "false")
    # The mounted files the configuration points at are where the Services mount them.
    for ksvc in knative_services(docs):
        mounts = {m["mountPath"] for m in _container(ksvc)["volumeMounts"]}
        for key in ("XPIPE_TOKENS_FILE", "XPIPE_JOURNAL_SECRET_FILE"):
            assert str(_config_value(docs, key)).rpartition("/")[0] in mounts, f"{ident(ksvc)}: {key}"
        assert _config_value(docs, "XPIPE_TEMPLATES_DIR") in mounts, ident(ksvc)


# --- RBAC and network ---------------------------------------------------------------------------------


@pytest.mark.parametrize("target", RENDER_TARGETS)
def test_rbac_is_namespaced_least_privilege(rendered: Rendered, target: str) -> None:
    docs = rendered[target]
    kinds = {doc["kind"] for doc in docs}
    assert not kinds & {"ClusterRole", "ClusterRoleBinding"}, "nothing cluster-wide"
    grants: dict[tuple[str, str], set[str]] = {}
    for role in of_kind(docs, "Role"):
        assert role["metadata"]["namespace"] == STEPS_NAMESPACE, (
            f"{ident(role)}: grants in the steps namespace only"
        )
        for rule in role["rules"]:
            for field in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule.get(field, []), f"{ident(role)}: '*' in {field}"
            assert "nonResourceURLs" not in rule
            assert "resourceNames" not in rule
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    grants.setdefault((group, resource), set()).update(rule["verbs"])
    for binding in of_kind(docs, "RoleBinding"):
        assert binding["roleRef"]["kind"] == "Role", f"{ident(binding)} binds a {binding['roleRef']['kind']}"
    writable = {key for key, verbs in grants.items() if verbs & WRITE_VERBS}
    assert writable == {
        ("serving.knative.dev", "services"), ("eventing.knative.dev", "triggers"), ("", "pods")
    }  # fmt: skip
    for key in writable - {("", "pods")}:
        assert grants[key] == {"get", "create", "patch"}, f"{key}: {grants[key]}"
    # Pods are deleted (a cancelled attempt is stopped), never created or changed.
    assert grants[("", "pods")] & WRITE_VERBS == {"delete"}
    assert not any(resource == "secrets" for _, resource in grants), "no Role reads Secrets"
    watcher = find(docs, "Role", STEPS_NAMESPACE, "xpipe-pod-watcher")
    assert watcher is not None
    assert watcher["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]


@pytest.mark.parametrize("target", RENDER_TARGETS)
def test_each_account_holds_only_what_its_function_needs(rendered: Rendered, target: str) -> None:
    docs = rendered[target]
    held: dict[str, set[str]] = {}
    for binding in of_kind(docs, "RoleBinding"):
        for subject in binding["subjects"]:
            held.setdefault(subject["name"], set()).add(binding["roleRef"]["name"])
    assert held == {
        "xpipe-submit": {"xpipe-step-deployer"},
        "xpipe-rollback": {"xpipe-step-deployer", "xpipe-step-diagnostics"},
        "xpipe-pod-watcher": {"xpipe-pod-watcher"},
    }
    # Only rollback may delete pods (to stop a cancelled attempt), through its own Role.
    deleters = {
        role["metadata"]["name"]
        for role in of_kind(docs, "Role")
        for rule in role["rules"]
        if "delete" in rule["verbs"]
    }
    assert deleters == {"xpipe-step-diagnostics"}
    stopper = find(docs, "Role", STEPS_NAMESPACE, "xpipe-step-diagnostics")
    assert stopper is not None
    (stop_rule,) = [rule for rule in stopper["rules"] if "delete" in rule["verbs"]]
    assert stop_rule == {"apiGroups": [""], "resources": ["pods"], "verbs": ["delete"]}
    relay = find(docs, "ServiceAccount", FUNCTIONS_NAMESPACE, "xpipe-health-relay")
    assert relay is not None
    assert relay["automountServiceAccountToken"] is False
    (source,) = of_kind(docs, "ApiServerSource")
    assert source["spec"]["mode"] == "Resource"
    assert source["spec"]["serviceAccountName"] == "xpipe-pod-watcher"
    (watched,) = source["spec"]["resources"]
    assert (watched["apiVersion"], watched["kind"]) == ("v1", "Pod")
    assert watched["selector"]["matchExpressions"] == [{"key": "xpipe.io/step", "operator": "Exists"}]


@pytest.mark.parametrize("target", FULL_TARGETS)
def test_network_policy_lets_functions_reach_the_journal_port(rendered: Rendered, target: str) -> None:
    docs = rendered[target]
    policy = find(docs, "NetworkPolicy", FUNCTIONS_NAMESPACE, "xpipe-functions")
    assert policy is not None
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    selector = policy["spec"]["podSelector"]["matchExpressions"]
    assert selector == [{"key": "xpipe.io/function", "operator": "Exists"}]
    journal_port = int(_config_value(docs, "XPIPE_JOURNAL").rpartition(":")[2])
    egress_ports = {p["port"] for rule in policy["spec"]["egress"] for p in rule.get("ports", [])}
    assert journal_port in egress_ports, f"egress to the journal port {journal_port} is not allowed"
    sources = {
        peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
        for rule in policy["spec"]["ingress"]
        for peer in rule["from"]
    }
    assert sources == {"knative-serving", "kourier-system"}


# Functions that take Broker deliveries, which carry no X-Token-XPipe (docs/deploy.md, "Broker deliveries
# and X-Token-XPipe"): the only ones that may trust a request without a token.
CLUSTER_DELIVERY_FUNCTIONS = {"health-relay", "rollback"}
TRUST_FLAG = "XPIPE_TRUST_CLUSTER_DELIVERIES"


def _selects(policy: Manifest, labels: dict[str, str]) -> bool:
    """Whether a NetworkPolicy's podSelector (matchLabels, Exists and In only) selects these pod labels."""
    selector = policy["spec"]["podSelector"]
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator = expression["key"], expression["operator"]
        assert operator in ("Exists", "In"), f"{ident(policy)}: operator {operator} not understood here"
        if key not in labels or (operator == "In" and labels[key] not in expression["values"]):
            return False
    return True


def _ingress_namespaces(docs: list[Manifest], ksvc: Manifest) -> set[str]:
    """The namespaces every NetworkPolicy selecting the Service's pods admits ingress from (their union)."""
    labels = ksvc["spec"]["template"]["metadata"]["labels"]
    namespaces: set[str] = set()
    for policy in of_kind(docs, "NetworkPolicy"):
        if policy["metadata"]["namespace"] != ksvc["metadata"]["namespace"] or not _selects(policy, labels):
            continue
        for rule in policy["spec"].get("ingress", []):
            assert rule.get("from"), f"{ident(policy)}: an ingress rule without 'from' admits everyone"
            for peer in rule["from"]:
                assert set(peer) == {"namespaceSelector"}, f"{ident(policy)}: peers are whole namespaces"
                namespaces.add(peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"])
    return namespaces


@pytest.mark.parametrize("target", FULL_TARGETS)
def test_only_the_cluster_local_delivery_functions_trust_requests_without_a_token(
    rendered: Rendered, target: str
) -> None:
    docs = rendered[target]
    trusting = set()
    for ksvc in knative_services(docs):
        name = ksvc["metadata"]["name"]
        value = _env(ksvc).get(TRUST_FLAG)
        assert value in (None, "true", "false"), f"{ident(ksvc)}: {TRUST_FLAG}={value!r}"
        for source in _container(ksvc).get("envFrom", []):  # never from a shared ConfigMap
            configmap = find(docs, "ConfigMap", FUNCTIONS_NAMESPACE, source["configMapRef"]["name"], "")
            assert configmap is not None
            assert TRUST_FLAG not in configmap.get("data", {}), f"{ident(configmap)} sets {TRUST_FLAG}"
        if value == "true":
            trusting.add(name)
            assert ksvc["metadata"]["labels"]["networking.knative.dev/visibility"] == "cluster-local"
    assert trusting == CLUSTER_DELIVERY_FUNCTIONS


@pytest.mark.parametrize("target", FULL_TARGETS)
def test_delivery_functions_admit_only_knative_networking_and_the_eventing_data_plane(
    rendered: Rendered, target: str
) -> None:
    docs = rendered[target]
    networking = {"knative-serving", "kourier-system"}
    for ksvc in knative_services(docs):
        name = ksvc["metadata"]["name"]
        expected = networking | {"knative-eventing"} if name in CLUSTER_DELIVERY_FUNCTIONS else networking
        assert _ingress_namespaces(docs, ksvc) == expected, ident(ksvc)


def test_broker_and_every_trigger_live_in_the_steps_namespace(rendered: Rendered) -> None:
    """The Knative backend creates step Triggers in XPIPE_STEPS_NAMESPACE on XPIPE_BROKER, and a Trigger
    must be in its Broker's namespace."""
    docs = rendered["base"]
    for doc in [*of_kind(docs, "Broker"), *of_kind(docs, "Trigger"), *of_kind(docs, "ApiServerSource")]:
        assert doc["metadata"]["namespace"] == STEPS_NAMESPACE, ident(doc)
    (ping,) = of_kind(docs, "PingSource")
    assert ping["spec"]["schedule"] == "* * * * *", "the sweep runs every minute"
    assert ping["metadata"]["namespace"] == STEPS_NAMESPACE


# --- overlays -------------------------------------------------------------------------------------------

_PINNED_TAG = re.compile(r"^[^:@]+(:(?P<tag>[\w][\w.-]*))?(@sha256:[0-9a-f]{64})?$")


def _is_pinned(image: str) -> bool:
    match = _PINNED_TAG.match(image)
    if match is None:
        return False
    if "@sha256:" in image:
        return True
    tag = match.group("tag")
    return tag is not None and re.fullmatch(r"\d+\.\d+\.\d+", tag) is not None


def test_dev_scales_everything_to_zero_with_debug_logging(rendered: Rendered) -> None:
    docs = rendered["dev"]
    for ksvc in knative_services(docs):
        assert _annotations(ksvc)["autoscaling.knative.dev/min-scale"] == "0", ident(ksvc)
    assert _config_value(docs, "XPIPE_LOG_LEVEL") == "debug"


def test_prod_keeps_submit_warm_and_pins_every_image(rendered: Rendered) -> None:
    docs = rendered["prod"]
    scale = {
        s["metadata"]["name"]: int(_annotations(s)["autoscaling.knative.dev/min-scale"])
        for s in knative_services(docs)
    }
    assert scale == {"submit": 1, "health-relay": 0, "rollback": 0}
    images = [_container(s)["image"] for s in knative_services(docs)]
    step_image = _config_value(docs, "XPIPE_STEP_IMAGE")
    for image in [*images, step_image]:
        assert _is_pinned(image), f"{image} is not pinned to a release version or a digest"
    function_tag = images[0].rpartition(":")[2]
    assert step_image.rpartition(":")[2] == function_tag, "the step runtime and the functions ship together"
    assert _config_value(docs, "XPIPE_LOG_LEVEL") == "info"


def test_image_pin_check_refuses_floating_tags() -> None:
    assert _is_pinned("registry.example.com/xpipe/xpipe-step:0.1.0")
    assert _is_pinned("registry.example.com/xpipe/xpipe-step@sha256:" + "a" * 64)
    for floating in ("registry.example.com/x:latest", "registry.example.com/x:dev", "registry.example.com/x"):
        assert not _is_pinned(floating), floating


# --- Secret templates and the templates ConfigMap ----------------------------------------------------------

SECRETS_DIR = KNATIVE / "base" / "platform" / "secrets"


def test_secret_templates_hold_placeholders_that_make_the_functions_refuse_to_start() -> None:
    for path in SECRETS_DIR.iterdir():
        text = path.read_text()
        assert not re.search(r"\b[0-9a-f]{64}\b", text), f"{path.name} holds what looks like a real digest"
        assert "REPLACE-WITH" in text, f"{path.name} must hold placeholders only"
    with pytest.raises(ConfigurationError, match="sha256 must be 64 lower-case hex digits"):
        TokenRegistry.load(SECRETS_DIR / "tokens.yaml")


def test_templates_configmap_carries_the_builtin_templates(rendered: Rendered) -> None:
    configmap = find(rendered["base"], "ConfigMap", FUNCTIONS_NAMESPACE, "xpipe-templates", "")
    assert configmap is not None
    builtin = {p.name: p.read_text() for p in (REPO / "xpipe" / "templates").glob("*.yaml")}
    assert builtin, "xpipe/templates/ holds no template"
    shipped = {name: text for name, text in configmap["data"].items() if name in builtin}
    assert shipped == builtin, (
        "knative/base/platform/templates/ differs from xpipe/templates/: "
        "cp xpipe/templates/*.yaml knative/base/platform/templates/ and list new files in its kustomization"
    )
    for name, text in configmap["data"].items():
        assert isinstance(yaml.safe_load(text), dict), f"{name} is not a YAML mapping"


def test_a_site_overlay_replaces_the_secret_templates_and_the_journal_endpoint(tmp_path: Path) -> None:
    """The way docs/deploy.md keeps real secrets out of this repository: a site overlay elsewhere."""
    (tmp_path / "secrets").mkdir()
    digest = "ab" * 32
    (tmp_path / "secrets" / "tokens.yaml").write_text(
        f"- name: magento\n  scope: submit\n  sha256: {digest}\n"
    )
    (tmp_path / "secrets" / "journal-secret").write_text("site-secret\n")
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [
                    os.path.relpath(KNATIVE / "overlays" / "prod", tmp_path)
                ],  # kustomize wants it relative
                "generatorOptions": {"disableNameSuffixHash": True},
                "secretGenerator": [
                    {
                        "name": "xpipe-tokens",
                        "namespace": FUNCTIONS_NAMESPACE,
                        "behavior": "replace",
                        "files": ["tokens.yaml=secrets/tokens.yaml"],
                    },
                    {
                        "name": "xpipe-journal-secret",
                        "namespace": FUNCTIONS_NAMESPACE,
                        "behavior": "replace",
                        "files": ["secret=secrets/journal-secret"],
                    },
                ],
                "configMapGenerator": [
                    {
                        "name": "xpipe-journal",
                        "namespace": FUNCTIONS_NAMESPACE,
                        "behavior": "merge",
                        "literals": ["XPIPE_JOURNAL=vms1.shop.internal:7430"],
                    }
                ],
            }
        )
    )
    docs = render(tmp_path)
    tokens = find(docs, "Secret", FUNCTIONS_NAMESPACE, "xpipe-tokens", "")
    assert tokens is not None
    assert digest in base64.b64decode(tokens["data"]["tokens.yaml"]).decode()
    secret = find(docs, "Secret", FUNCTIONS_NAMESPACE, "xpipe-journal-secret", "")
    assert secret is not None
    assert base64.b64decode(secret["data"]["secret"]) == b"site-secret\n"
    assert _config_value(docs, "XPIPE_JOURNAL") == "vms1.shop.internal:7430"
    assert _config_value(docs, "XPIPE_JOURNAL_TLS") == "true"
    assert len(docs) == len(render(KNATIVE / "overlays" / "prod"))


def test_revert_target_example_grants_rollback_get_and_patch_on_services_only() -> None:
    docs = [
        d for d in yaml.safe_load_all((KNATIVE / "examples" / "revert-target-rbac.yaml").read_text()) if d
    ]
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    (role,) = of_kind(docs, "Role")
    grants = {
        (g, r): set(rule["verbs"])
        for rule in role["rules"]
        for g in rule["apiGroups"]
        for r in rule["resources"]
    }
    assert grants == {
        ("serving.knative.dev", "services"): {"get", "patch"},
        ("serving.knative.dev", "revisions"): {"get", "list"},
    }
    (binding,) = of_kind(docs, "RoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "xpipe-rollback", "namespace": "xpipe"}]
    assert binding["metadata"]["namespace"] == role["metadata"]["namespace"]
