"""The step runtime runs on every Python the package supports (requires-python >= 3.10)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

STEP_PACKAGE = Path(__file__).resolve().parents[2] / "xpipe" / "step"


def test_step_runtime_needs_nothing_newer_than_python_3_10() -> None:
    vermin = Path(sys.executable).with_name("vermin")
    command = [str(vermin), "--no-tips", "--violations", "-t=3.10-", str(STEP_PACKAGE)]
    result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
