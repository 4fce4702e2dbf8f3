"""Fixtures of the deployment tests: every kustomize target, rendered once per session."""

from __future__ import annotations

import pytest

from .rendering import RENDER_TARGETS, Manifest, render


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[Manifest]]:
    """Every render target, rendered once per session (each render takes about 0.1 s)."""
    return {name: render(path) for name, path in RENDER_TARGETS.items()}
