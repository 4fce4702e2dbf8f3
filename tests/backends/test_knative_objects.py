"""Pure parts of the Knative backend: which revision a revert pins to, and label values."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

from xpipe.backends.base import StepServiceSpec
from xpipe.backends.knative_objects import (
    knative_service,
    label_value,
    pinned_revision,
    revert_target,
    runtime_args,
)
from xpipe.step.limits import MIN_TIMEOUT_SECONDS, stop_margin_seconds


def revision(name: str, generation: int, ready: bool = True, service: str = "s") -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "labels": {
                "serving.knative.dev/service": service,
                "serving.knative.dev/configurationGeneration": str(generation),
            },
        },
        "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }


def test_revert_target_ignores_unready_and_foreign_revisions() -> None:
    service = {"metadata": {"name": "s"}, "status": {"latestReadyRevisionName": "s-00003"}}
    revisions = [revision("s-00001", 1, service="s"), revision("s-00002", 2, False, "s"),
                 revision("s-00003", 3, service="s"), revision("x-00002", 2, service="x")]  # fmt: skip
    assert revert_target(service, revisions) == "s-00001"
    assert revert_target(service, revisions[2:]) is None


def test_a_revert_target_is_a_fixed_point_of_its_own_pin() -> None:
    """Applying the chosen pin and choosing again gives the same pin: redeliveries never walk back."""
    service: dict[str, Any] = {"metadata": {"name": "s"}, "status": {"latestReadyRevisionName": "s-00003"}}
    revisions = [revision("s-00001", 1), revision("s-00002", 2), revision("s-00003", 3)]
    target = revert_target(service, revisions)
    assert target == "s-00002"
    service["spec"] = {"traffic": [{"revisionName": target, "latestRevision": False, "percent": 100}]}
    assert revert_target(service, revisions) == target


def test_a_pinned_service_keeps_its_pin() -> None:
    service = {
        "metadata": {"name": "s"},
        "spec": {"traffic": [{"revisionName": "s-00002", "latestRevision": False, "percent": 100}]},
        "status": {"latestReadyRevisionName": "s-00003"},
    }
    assert pinned_revision(service) == "s-00002"
    revisions = [revision("s-00001", 1), revision("s-00002", 2), revision("s-00003", 3)]
    assert revert_target(service, revisions) == "s-00002"  # a deploy made while pinned never served


def test_label_values_are_made_valid() -> None:
    assert label_value("Demo OK/deploy!") == "Demo-OK-deploy"
    assert len(label_value("x" * 100)) == 63


def test_importing_the_knative_backend_does_not_import_the_kubernetes_client() -> None:
    code = "import sys, xpipe.backends.knative, xpipe.backends.local; sys.exit('kubernetes' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False, timeout=60).returncode == 0


def step_spec(timeout_seconds: int) -> StepServiceSpec:
    return StepServiceSpec(
        name="xp-demo-build",
        template="demo",
        step="build",
        image="registry.example.com/xpipe/step:0.1.0",
        argv=("true",),
        env={},
        timeout_seconds=timeout_seconds,
        template_digest="sha256:0",
    )


def runtime_timeout(args: list[str]) -> int:
    return int(args[args.index("--timeout-seconds") + 1])


def test_step_services_are_never_exposed_on_the_external_gateway() -> None:
    service = knative_service(step_spec(60), "xpipe-steps", ["xpipe-step"])
    assert service["metadata"]["labels"]["networking.knative.dev/visibility"] == "cluster-local"


def test_the_runtime_gets_knatives_request_timeout_and_still_has_time_to_run_the_command() -> None:
    for timeout in (MIN_TIMEOUT_SECONDS, 30, 600):
        args = runtime_args(step_spec(timeout))
        stop_grace = float(args[args.index("--stop-grace-seconds") + 1])
        # The runtime replies by its time-out (tests/step checks it), so it is given Knative's exactly;
        # it stops the command stop_margin_seconds() before that, which must leave time to run it.
        assert runtime_timeout(args) == timeout
        assert timeout - stop_margin_seconds(stop_grace) >= 3, timeout
