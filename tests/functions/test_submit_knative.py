"""submit with XPIPE_BACKEND=knative: the real function process applies one Knative Service and Trigger per
template step (and per compensation) to a Kubernetes API — kmock's emulator, the only emulated part —
before it registers the job; a second submit of the same template applies nothing again."""

from __future__ import annotations

import asyncio
from pathlib import Path

import kmock
import pytest
import yaml
from cloudevents.http import from_http
from functions_harness import (
    SUBMIT_TOKEN,
    EventSink,
    FunctionServer,
    JournalProcess,
    cloud_event,
    function_env,
)

from xpipe.events import PIPELINE_SUBMIT
from xpipe.templates import service_name

pytestmark = pytest.mark.asyncio

SERVICES = "serving.knative.dev/v1/services"
TRIGGERS = "eventing.knative.dev/v1/triggers"
NAMESPACE = "xpipe-steps"


def write_kubeconfig(server: kmock.KubernetesEmulator, path: Path) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "emulator", "cluster": {"server": str(server.url).rstrip("/")}}],
                "users": [{"name": "submit", "user": {"token": "not-a-secret"}}],
                "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "submit"}}],
                "current-context": "emulator",
            }
        )
    )
    return path


async def test_submit_applies_step_services_through_the_kubernetes_api_then_registers(
    kmock: kmock.KubernetesEmulator,
    tmp_path: Path,
    journal: JournalProcess,
    sink: EventSink,
    tokens: Path,
    workdir: Path,
) -> None:
    kubeconfig = write_kubeconfig(kmock, tmp_path / "kubeconfig")
    env = function_env(journal, sink, tokens, XPIPE_BACKEND="knative", KUBECONFIG=str(kubeconfig))
    server = await asyncio.to_thread(
        lambda: FunctionServer("submit", env, workdir / "submit-knative.log").wait_until("/health/readiness")
    )
    try:
        event = cloud_event(PIPELINE_SUBMIT, {"template": "demo-fail", "requestedBy": "magento:admin"})
        response = await asyncio.to_thread(server.post, event, token=SUBMIT_TOKEN)
        assert response.status_code == 200, f"{response.text}\n{server.log()}"
        job_id = (from_http(dict(response.headers), response.content).get_data() or {})["jobId"]
        expected = [service_name("demo-fail", s) for s in ("reserve", "migrate", "activate")]
        expected.append(service_name("demo-fail", "reserve", compensation=True))
        for name in expected:
            ksvc = kmock.objects[SERVICES, NAMESPACE, name].raw
            assert ksvc["spec"]["template"]["spec"]["containerConcurrency"] == 1
            trigger = kmock.objects[TRIGGERS, NAMESPACE, name].raw
            assert trigger["spec"]["filter"]["attributes"]["xpipestep"] == name
        writes = sum(1 for request in kmock if request.method in ("POST", "PATCH", "PUT"))
        again = cloud_event(PIPELINE_SUBMIT, {"template": "demo-fail", "requestedBy": "magento:admin"})
        assert (await asyncio.to_thread(server.post, again, token=SUBMIT_TOKEN)).status_code == 200
        assert sum(1 for request in kmock if request.method in ("POST", "PATCH", "PUT")) == writes
        with journal.client() as client:
            assert client.read_job(job_id)["template"] == "demo-fail"
    finally:
        await asyncio.to_thread(server.stop)
