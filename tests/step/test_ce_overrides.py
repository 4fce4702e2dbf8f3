"""K_CE_OVERRIDES: extensions only, string values only, and never in place of the emitter's attributes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from xpipe.ce_overrides import InvalidCeOverrides, parse_ce_overrides
from xpipe.events import StepFinished, StepHeartbeat
from xpipe.step.emit import EventStamp


def overrides(extensions: object) -> str:
    return json.dumps({"extensions": extensions})


def test_valid_extensions_are_kept_and_empty_means_none() -> None:
    assert parse_ce_overrides(overrides({"xpipecluster": "c1", "tier2": ""})) == {
        "xpipecluster": "c1",
        "tier2": "",
    }
    assert parse_ce_overrides(None) == {}
    assert parse_ce_overrides("  ") == {}
    assert parse_ce_overrides("{}") == {}


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (overrides({"id": "fixed"}), "core CloudEvents attribute"),
        (overrides({"type": "x"}), "core CloudEvents attribute"),
        (overrides({"source": "/x"}), "core CloudEvents attribute"),
        (overrides({"specversion": "0.3"}), "core CloudEvents attribute"),
        (overrides({"xpipejob": "other"}), "set by xpipe itself"),
        (overrides({"xpipestep": "other"}), "set by xpipe itself"),
        (overrides({"Cluster": "c"}), "lower-case letters and digits"),
        (overrides({"my-ext": "c"}), "lower-case letters and digits"),
        (overrides({"": "c"}), "lower-case letters and digits"),
        (overrides({"count": 1}), "string value, got int"),
        (overrides({"flag": True}), "string value, got bool"),
        (overrides({"nested": {"a": "b"}}), "string value, got dict"),
        (overrides(["x"]), 'must look like {"extensions"'),
        ("[1]", 'must look like {"extensions"'),
        ("{not json", "is not JSON"),
        ("[" * 100_000, "is not JSON"),
    ],
)
def test_bad_overrides_are_refused_with_the_variable_named(raw: str, reason: str) -> None:
    with pytest.raises(InvalidCeOverrides) as caught:
        parse_ce_overrides(raw)
    assert str(caught.value).startswith("K_CE_OVERRIDES")
    assert reason in str(caught.value)


def test_the_runtime_attributes_win_over_overrides() -> None:
    # The start-up check refuses these names; the stamp still never lets an override replace them.
    stamp = EventStamp("demo", {"id": "fixed", "xpipejob": "other", "source": "/evil", "xpipecluster": "c1"})
    beat = stamp.heartbeat(StepHeartbeat(job_id="job-1", step="build", attempt=1, pod="p"))
    again = stamp.heartbeat(StepHeartbeat(job_id="job-1", step="build", attempt=1, pod="p"))
    assert beat["id"] != "fixed"
    assert beat["id"] != again["id"]
    assert beat["xpipejob"] == "job-1"
    assert beat["source"] == "/xpipe/step/demo"
    assert beat["xpipecluster"] == "c1"
    finished = stamp.finished(
        StepFinished(
            job_id="job-1", step="build", attempt=1, outcome="succeeded", duration_seconds=0.1, pod="p"
        )
    )
    assert finished["id"] != "fixed"
    assert finished["type"] == "com.xpipe.step.finished"


@pytest.mark.parametrize(
    ("extensions", "reason"),
    [({"id": "fixed"}, b"core CloudEvents attribute"), ({"n": 1}, b"string value")],
)
def test_the_runtime_refuses_to_start_with_overriding_or_non_string_extensions(
    extensions: dict[str, object], reason: bytes
) -> None:
    env = {**os.environ, "K_CE_OVERRIDES": overrides(extensions)}
    command = [sys.executable, "-m", "xpipe.step", "--", "true"]
    result = subprocess.run(command, check=False, capture_output=True, timeout=30, env=env)
    assert result.returncode == 2
    assert b"K_CE_OVERRIDES" in result.stderr
    assert reason in result.stderr
