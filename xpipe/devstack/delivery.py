"""Knative's delivery spec (``retry``, ``backoffPolicy``, ``backoffDelay``, ``timeout``, ``deadLetterSink``)
and which answers it retries.

Knative retries a delivery on 5xx, 404, 408, 409, 429, network errors and time-outs, and never on 1xx-3xx or
the other 4xx: those are final, and the event goes straight to the dead-letter sink. ``retry`` counts the
retries after the first attempt; retry ``n`` (from 1) waits ``backoffDelay * n`` (linear) or
``backoffDelay * 2**n`` (exponential).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from xpipe.devstack.errors import ManifestError

BackoffPolicy = Literal["linear", "exponential"]

# Knative's default backoffDelay when a delivery spec names a retry count but no delay.
DEFAULT_BACKOFF_DELAY_S = 0.2
# Every attempt is bounded: a delivery spec without ``timeout`` gets this one (Knative Serving's default
# max-revision-timeout-seconds, the longest a step request may be held open in the cluster).
DEFAULT_ATTEMPT_TIMEOUT_S = 600.0
# More retries than this is a typo, and would keep an event in memory for hours.
MAX_RETRY = 100

RETRIED_4XX = frozenset({404, 408, 409, 429})

_DURATION = re.compile(
    r"P(?:(?P<weeks>\d+(?:\.\d+)?)W)?(?:(?P<days>\d+(?:\.\d+)?)D)?"
    r"(?:T(?:(?P<hours>\d+(?:\.\d+)?)H)?(?:(?P<minutes>\d+(?:\.\d+)?)M)?(?:(?P<seconds>\d+(?:\.\d+)?)S)?)?"
)
_UNIT_S = {"weeks": 604800.0, "days": 86400.0, "hours": 3600.0, "minutes": 60.0, "seconds": 1.0}


def parse_duration(text: str, where: str) -> float:
    """An ISO-8601 duration (``PT0.2S``, ``PT1M30S``, ``P1D``) in seconds; years and months are refused
    because their length depends on the calendar."""
    match = _DURATION.fullmatch(text.strip()) if isinstance(text, str) else None
    if match is None or not any(match.groupdict().values()) or text.strip().endswith("T"):
        raise ManifestError(where, f"{text!r} is not an ISO-8601 duration such as PT0.2S or PT1M")
    return float(sum(float(value) * _UNIT_S[unit] for unit, value in match.groupdict().items() if value))


def is_retried(status: int) -> bool:
    """Whether Knative retries a delivery answered with ``status``."""
    return status >= 500 or status in RETRIED_4XX


@dataclass(frozen=True)
class DeliverySpec:
    """How one Trigger (or its Broker, by default) delivers: attempts, spacing, time-out, dead letters."""

    retry: int = 0
    backoff_policy: BackoffPolicy = "exponential"
    backoff_delay_s: float = DEFAULT_BACKOFF_DELAY_S
    timeout_s: float = DEFAULT_ATTEMPT_TIMEOUT_S
    dead_letter_sink: dict[str, Any] | None = None  # a Knative Destination, resolved by the manifests

    def backoff_s(self, retry_number: int) -> float:
        """The wait before retry ``retry_number`` (1 for the first retry)."""
        if self.backoff_policy == "linear":
            return self.backoff_delay_s * retry_number
        return self.backoff_delay_s * float(2**retry_number)

    @classmethod
    def from_manifest(
        cls, spec: Any, where: str, *, max_timeout_s: float = DEFAULT_ATTEMPT_TIMEOUT_S
    ) -> DeliverySpec:
        """Parse a ``delivery`` block; unknown keys and bad values are refused with the field named."""
        if spec is None:
            return cls(timeout_s=max_timeout_s)
        if not isinstance(spec, dict):
            raise ManifestError(where, "delivery must be a mapping")
        known = {"retry", "backoffPolicy", "backoffDelay", "timeout", "deadLetterSink", "retryAfterMax"}
        unknown = sorted(set(spec) - known)
        if unknown:
            raise ManifestError(where, f"delivery has unknown fields {unknown}")
        retry = spec.get("retry", 0)
        if isinstance(retry, bool) or not isinstance(retry, int) or not 0 <= retry <= MAX_RETRY:
            raise ManifestError(f"{where}.retry", f"must be an integer from 0 to {MAX_RETRY}, not {retry!r}")
        policy = spec.get("backoffPolicy", "exponential")
        if policy not in ("linear", "exponential"):
            raise ManifestError(f"{where}.backoffPolicy", f"must be linear or exponential, not {policy!r}")
        delay = DEFAULT_BACKOFF_DELAY_S
        if "backoffDelay" in spec:
            delay = parse_duration(spec["backoffDelay"], f"{where}.backoffDelay")
        timeout = max_timeout_s
        if "timeout" in spec:
            timeout = parse_duration(spec["timeout"], f"{where}.timeout")
            if timeout <= 0:
                raise ManifestError(f"{where}.timeout", "must be longer than zero")
            timeout = min(timeout, max_timeout_s)
        sink = spec.get("deadLetterSink")
        if sink is not None and not isinstance(sink, dict):
            raise ManifestError(f"{where}.deadLetterSink", "must be a Destination (ref and/or uri)")
        return cls(
            retry=retry,
            backoff_policy=policy,
            backoff_delay_s=delay,
            timeout_s=timeout,
            dead_letter_sink=sink,
        )
