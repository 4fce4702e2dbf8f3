"""The supervisor behind ``xpipe up``: health-gated start, restart with back-off after a crash, and a stop
that leaves no process behind (grandchildren included)."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from xpipe.devstack.supervisor import ComponentFailed, ComponentSpec, Supervisor

from .test_router_process import free_port

PROGRAM = str(Path(__file__).with_name("component_program.py"))


def spec(name: str, port: int, *extra: str) -> ComponentSpec:
    return ComponentSpec(
        name=name,
        argv=[sys.executable, PROGRAM, "--port", str(port), *extra],
        env={"PATH": os.environ.get("PATH", "")},
        endpoint=f"http://127.0.0.1:{port}",
        health_url=f"http://127.0.0.1:{port}/healthz",
    )


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0): look at its state
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def wait_for(condition: object, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_a_killed_component_is_restarted_and_stop_leaves_nothing_behind(tmp_path: Path) -> None:
    lines: list[str] = []
    grandchild_file = tmp_path / "grandchild.pid"
    supervisor = Supervisor(
        [
            spec("first", free_port()),
            spec("second", free_port(), "--grandchild-pid-file", str(grandchild_file)),
        ],
        tmp_path,
        say=lines.append,
    )
    stop = threading.Event()
    watcher = threading.Thread(target=supervisor.watch, args=(stop,))
    try:
        supervisor.start(timeout_s=30)
        assert (tmp_path / "stack.json").exists()
        watcher.start()
        first = supervisor.components[0]
        old_pid = first.pid
        assert old_pid is not None
        os.kill(old_pid, signal.SIGKILL)
        wait_for(lambda: any("first is healthy again" in line for line in lines), 20, "the restart")
        assert first.pid != old_pid
        assert first.restarts == 1
        assert any("first killed by SIGKILL; restarting in 0.5 s (restart 1)" in line for line in lines)
    finally:
        stop.set()
        if watcher.is_alive():
            watcher.join(10)
        pids = [c.pid for c in supervisor.components if c.pid]
        supervisor.stop(grace_s=5)
    grandchild = int(grandchild_file.read_text())
    wait_for(lambda: not any(alive(pid) for pid in [*pids, grandchild]), 10, "every process to be gone")
    assert not (tmp_path / "stack.json").exists()


def test_a_component_that_exits_while_starting_is_reported_with_its_log(tmp_path: Path) -> None:
    broken = ComponentSpec(
        name="broken",
        argv=[sys.executable, "-c", "import sys; print('no config'); sys.exit(3)"],
        env={},
        endpoint="-",
        health_url=f"http://127.0.0.1:{free_port()}/",
    )
    supervisor = Supervisor([broken], tmp_path, say=lambda _: None)
    try:
        with pytest.raises(
            ComponentFailed, match=r"broken exited while starting \(exit code 3\); see .*broken.log"
        ):
            supervisor.start(timeout_s=20)
    finally:
        supervisor.stop(grace_s=2)
    assert "no config" in (tmp_path / "logs" / "broken.log").read_text()
