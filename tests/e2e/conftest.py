"""One real ``xpipe up`` per test session (per xdist worker), started exactly as a user starts it, with the
built-in demo templates plus the end-to-end templates of ``tests/e2e/templates``."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from xpipe.devstack.running import RunningStack
from xpipe.templates import BUILTIN_TEMPLATES_DIR

E2E_TEMPLATES = Path(__file__).with_name("templates")
# A short idle window, so the scale-to-zero test observes it within seconds.
STEP_IDLE_S = 2.0


def templates_dir(root: Path) -> Path:
    target = root / "templates"
    target.mkdir()
    for source in [*BUILTIN_TEMPLATES_DIR.glob("*.yaml"), *E2E_TEMPLATES.glob("*.yaml")]:
        shutil.copy(source, target / source.name)
    return target


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    root = tmp_path_factory.mktemp("xpipe-up")
    running = RunningStack(
        root / "data", ping_interval_s=1.0, templates_dir=templates_dir(root), step_idle_s=STEP_IDLE_S
    )
    running.start()
    try:
        yield running
    finally:
        code = running.stop()
        assert code == 0, running.lines[-20:]
