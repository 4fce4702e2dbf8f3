"""Structured logging for the step runtime and the local step host: the functions' JSON lines.

Log collectors in the cluster and `xpipe up` locally parse these lines, so the step side writes the same
shape as the functions (`xpipe.logs.JsonLines`), with `function` naming the component.
"""

from __future__ import annotations

import logging
import sys

from xpipe.logs import JsonLines


def configure(component: str, level: int = logging.INFO) -> None:
    """Send every log record to stderr as JSON (stdout carries the step command's own output)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLines(component))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # httpx logs every request at INFO: one line per heart-beat would drown the step's own output.
    logging.getLogger("httpx").setLevel(logging.WARNING)
