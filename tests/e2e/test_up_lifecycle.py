"""``xpipe up`` itself: Ctrl-C stops every component and every process they started, and the token it
is given (``XPIPE_TOKEN``, never on a command line) is the only credential the functions accept."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import pytest
from support.waiting import wait_until

from xpipe.devstack.running import RunningStack
from xpipe.templates import service_name

pytestmark = pytest.mark.slow


def process_groups() -> dict[int, int]:
    """pid -> process group id of every process on the machine."""
    groups: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            groups[int(stat.parent.name)] = int(fields[2])
    return groups


def test_ctrl_c_stops_everything_and_leaves_no_process_behind(tmp_path: Path) -> None:
    stack = RunningStack(tmp_path / "data", token="only-this-token", step_idle_s=60.0)
    stack.start()
    try:
        job = stack.submit("demo-ok")
        assert stack.wait_finished(job, 60)["state"] == "SUCCEEDED"
        leaders = {c["pid"] for c in stack.state()["components"].values()}
        services = [service_name("demo-ok", s) for s in ("prepare", "build", "publish")]
        step_pids = set()
        for name in services:
            answer = httpx.get(f"{stack.layout.step_host_url}/services/{name}", timeout=5, trust_env=False)
            step_pids |= {p["pid"] for p in answer.json()["processes"]}
        assert step_pids, "the idle step processes are still up (60 s window)"
        ours = {pid for pid, group in process_groups().items() if group in leaders} | step_pids
        assert stack.process is not None
        # The token reaches `xpipe up` through its environment: no command line on the machine shows it.
        assert b"only-this-token" not in Path(f"/proc/{stack.process.pid}/cmdline").read_bytes()
        for pid in ours:
            try:
                assert b"only-this-token" not in Path(f"/proc/{pid}/cmdline").read_bytes()
            except FileNotFoundError:
                continue
        assert len(ours) > len(leaders)  # gunicorn workers, step processes

        wrong = httpx.post(
            stack.layout.function_url("submit"),
            headers={"X-Token-XPipe": "another-token", "ce-specversion": "1.0", "ce-id": "x",
                     "ce-source": "/t", "ce-type": "com.xpipe.pipeline.submit",
                     "content-type": "application/json"},
            content=b'{"template": "demo-ok", "requestedBy": "t"}',
            timeout=10,
        )  # fmt: skip
        assert wrong.status_code == 401

        assert stack.process is not None
        stack.process.send_signal(signal.SIGINT)  # what Ctrl-C sends
        assert stack.process.wait(30) == 0
        assert stack.lines[-1] == "stopped"
        wait_until(lambda: not (ours & set(process_groups())), 10, "every process of the stack to be gone")
        assert not (stack.layout.data_dir / "stack.json").exists()
    finally:
        stack.stop()
