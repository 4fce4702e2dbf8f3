"""LocalBackend: the ExecutionBackend of `xpipe up`, a client of the local step host's admin API.

The functions run in their own processes, so the step services live in the local step host
(`xpipe.backends.local_host`) and this backend only talks to it over loopback HTTP. Every call is cheap,
so `ensure_step_service` always asks the host, which skips an unchanged digest itself: a restarted host
(which reloads its state file) and a restarted function can never disagree about what is applied.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote

import httpx

from xpipe.backends.base import (
    BackendError,
    BackendUnavailable,
    Conflict,
    ExecutionBackend,
    InvalidSpec,
    NotFound,
    StepServiceSpec,
    TrafficState,
)

# Stopping an attempt waits for its process to exit: the host allows the stop grace (5 s by default) plus
# 5 s after SIGTERM, then SIGKILLs and waits up to 5 s more.
STOP_WAIT_SECONDS = 20.0


class LocalBackend(ExecutionBackend):
    """Step services as processes of the local step host at `host_url` (e.g. http://127.0.0.1:8085)."""

    def __init__(
        self,
        host_url: str,
        namespace: str = "xpipe-steps",
        *,
        timeout_seconds: float = 10.0,
        max_attempts: int = 3,
        backoff_seconds: float = 0.1,
    ) -> None:
        self._base = host_url.rstrip("/")
        self._namespace = namespace
        self._max_attempts = max(1, max_attempts)
        self._backoff = backoff_seconds
        self._client = httpx.Client(timeout=httpx.Timeout(timeout_seconds, connect=min(2.0, timeout_seconds)))
        self._stop_timeout = httpx.Timeout(
            timeout_seconds + STOP_WAIT_SECONDS, connect=min(2.0, timeout_seconds)
        )

    @property
    def namespace(self) -> str:
        return self._namespace

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One admin call, retried on connection failures and 429/5xx; errors mapped to BackendError."""
        url = f"{self._base}{path}"
        for attempt in range(1, self._max_attempts + 1):
            try:
                response = self._client.request(method, url, **kwargs)
            except httpx.HTTPError as error:
                failure: BackendError = BackendUnavailable(
                    f"local step host at {self._base} unreachable: {type(error).__name__}"
                )
            else:
                status = response.status_code
                if status < 400:
                    return response
                message = _message(response)
                if status == 404:
                    raise NotFound(message)
                if status in (400, 413, 422):
                    raise InvalidSpec(message)
                if status == 409:
                    failure = Conflict(message)
                elif status == 429 or status >= 500:
                    failure = BackendUnavailable(f"local step host: HTTP {status}: {message}")
                else:
                    raise BackendError(f"local step host: HTTP {status}: {message}")
            if attempt == self._max_attempts:
                raise failure
            time.sleep(random.uniform(0, self._backoff * 2 ** (attempt - 1)))  # noqa: S311
        raise AssertionError("unreachable")  # pragma: no cover

    def ensure_step_service(self, spec: StepServiceSpec) -> bool:
        response = self._request("PUT", f"/services/{quote(spec.name)}", json=spec.to_json_dict())
        return bool(response.json().get("applied"))

    def remove_step_service(self, name: str) -> None:
        self._request("DELETE", f"/services/{quote(name)}")

    def _check_namespace(self, namespace: str) -> None:
        if namespace != self._namespace:
            raise NotFound(f"the local step host serves namespace {self._namespace!r}, not {namespace!r}")

    def revert_traffic(self, namespace: str, service: str, *, at: float) -> TrafficState:
        self._check_namespace(namespace)
        return _traffic(self._request("POST", f"/services/{quote(service)}/revert", json={"at": at}).json())

    def restore_traffic(self, namespace: str, service: str, *, requested_at: float) -> TrafficState:
        self._check_namespace(namespace)
        path = f"/services/{quote(service)}/restore"
        return _traffic(self._request("POST", path, json={"requestedAt": requested_at}).json())

    def collect_diagnostics(
        self, job_id: str, services: Sequence[str], since: datetime | None = None
    ) -> dict[str, Any]:
        report: dict[str, Any] = {
            "jobId": job_id,
            "backend": "local",
            "namespace": self._namespace,
            "collectedAt": datetime.now(timezone.utc).isoformat(),
            "services": {},
            "errors": [],
        }
        params: list[tuple[str, str]] = [("job", job_id), *[("service", name) for name in services]]
        if since is not None:
            params.append(("since", since.isoformat()))
        try:
            found = self._request("GET", "/diagnostics", params=params).json()
        except BackendError as error:
            report["errors"].append(str(error))
            return report
        report["services"] = found.get("services", {})
        report["errors"].extend(found.get("errors", []))
        return report

    def stop_attempt(
        self,
        service: str,
        pod: str | None,  # noqa: ARG002 - the host knows which process runs the attempt itself
        job_id: str,
        step: str,
        attempt: int,
    ) -> bool:
        """The step host stops the process running the attempt (found by the attempt, not by `pod`)."""
        body = {"service": service, "jobId": job_id, "step": step, "attempt": attempt}
        # The host waits for the process to exit (its stop grace, then SIGKILL): allow for that.
        response = self._request("POST", "/attempts/stop", json=body, timeout=self._stop_timeout)
        return bool(response.json().get("stopped"))

    def services(self) -> list[dict[str, Any]]:
        """Every step service on the host with its revisions, traffic and live processes."""
        return list(self._request("GET", "/services").json()["services"])

    def close(self) -> None:
        self._client.close()


def _traffic(document: dict[str, Any]) -> TrafficState:
    return TrafficState(
        namespace=document["namespace"],
        service=document["service"],
        pinned_revision=document.get("pinnedRevision"),
        latest_ready_revision=document.get("latestReadyRevision"),
        pinned_at=document.get("pinnedAt"),
    )


def _message(response: httpx.Response) -> str:
    try:
        return str(response.json().get("message") or response.reason_phrase)[:500]
    except ValueError:
        return response.reason_phrase
