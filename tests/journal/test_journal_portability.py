"""The OpenVMS side stays within VSI Python 3.10 and the standard library."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from journal_service import ROOT, JournalServer, start

VENV_BIN = Path(sys.executable).parent
PYTHON_310 = Path("/root/.pyenv/versions/3.10.13/bin/python")
OPENVMS_SIDE = [
    "vms_adapter/protocol.py",
    "vms_adapter/errors.py",
    "vms_adapter/server",
    "vms_adapter/__init__.py",
]


def test_vermin_finds_nothing_newer_than_python_3_10() -> None:
    vermin = shutil.which("vermin", path=str(VENV_BIN)) or shutil.which("vermin")
    if vermin is None:
        pytest.skip("vermin is not installed")
    result = subprocess.run(
        [vermin, "--no-tips", "-t=3.10-", "--violations", "--eval-annotations", *OPENVMS_SIDE],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_service_imports_with_the_standard_library_only() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-S",
            "-c",
            "import vms_adapter.server.service, vms_adapter.server.cli, vms_adapter.protocol",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(not PYTHON_310.exists(), reason=f"{PYTHON_310} is not installed")
def test_the_service_runs_on_python_3_10(tmp_path: Path, servers: list[JournalServer]) -> None:
    server = start(tmp_path / "j", python=str(PYTHON_310))
    servers.append(server)
    with server.client() as client:
        assert client.commit(None, [{"type": "x-a"}], idempotency_key="py310").seq == 1
    assert server.stop() == 0
