"""What a command leaves behind after its run: background children, daemons, zombies.

A step's command may start processes that outlive it: `cmd &` stays in its process group, `setsid` or a
double fork escapes the group too, and every orphan is re-parented. In a container the runtime is PID 1,
so orphans become its children and, unreaped, zombies; a leftover that still holds the output pipe would
also hold the reply back. Pods and local step processes are reused by the next job, so after every run the
runtime kills what is left: the command's process group, then every process re-parented to it.

On Linux the runtime makes itself a child subreaper (`PR_SET_CHILD_SUBREAPER`), so orphans come to it
even when it is not PID 1 (under the local step host, in tests). Leftovers are found through /proc.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from xpipe.step.limits import LEFTOVER_KILL_SECONDS

log = logging.getLogger("xpipe.step.leftovers")

_PR_SET_CHILD_SUBREAPER = 36
_POLL_SECONDS = 0.01


def become_subreaper() -> bool:
    """Make orphaned descendants our children (Linux); False where the kernel offers no such thing."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)  # the process's own symbols, libc's prctl among them
        ok = bool(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        ok = False
    if not ok:
        log.warning("cannot become a child subreaper; orphans of a command go to PID 1")
    return ok


def _proc_stats() -> Iterator[tuple[int, list[str]]]:
    """Every process as (pid, the fields of /proc/<pid>/stat after the command name: state, ppid,
    pgrp, session, ...). Linux only; nothing elsewhere."""
    proc = Path("/proc")
    if not proc.is_dir():
        return
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            yield int(entry.name), (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue


def children_of(pid: int) -> list[int]:
    """Live or zombie processes whose parent is `pid` (Linux /proc; empty elsewhere)."""
    return [child for child, fields in _proc_stats() if len(fields) > 1 and fields[1] == str(pid)]


def session_members(session: int) -> list[int]:
    """Processes in the session `session` leads (Linux /proc; empty elsewhere)."""
    return [member for member, fields in _proc_stats() if len(fields) > 3 and fields[3] == str(session)]


def _reap_all() -> None:
    """Collect every exited child. Safe only between runs: the command itself has been reaped already."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, signal.SIGKILL)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def kill_leftovers(group: int, timeout: float = LEFTOVER_KILL_SECONDS) -> bool:
    """SIGKILL the command's process group and every process re-parented to the runtime, and reap them.

    Call it only once the command's own process has been waited for, and before the next run starts:
    every child of the runtime is then a leftover. True when nothing is left (within `timeout`).
    """
    me = os.getpid()
    deadline = time.monotonic() + timeout
    while True:
        group_alive = _group_alive(group)
        strays = children_of(me)
        for pid in strays:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        _reap_all()
        if not group_alive and not children_of(me):
            return True
        if time.monotonic() >= deadline:
            log.warning("leftovers of the command survived", extra={"group": group, "pids": strays[:20]})
            return False
        time.sleep(_POLL_SECONDS)
