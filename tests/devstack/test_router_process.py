"""The router as ``xpipe up`` runs it: its own process, stopped by SIGTERM, refusing bad manifests."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import yaml

from .conftest import Subscriber, broker, trigger, uri


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_router_process_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    sub = Subscriber()
    try:
        manifests = tmp_path / "m.yaml"
        ref = {"ref": {"apiVersion": "serving.knative.dev/v1", "kind": "Service", "name": "relay"}}
        manifests.write_text(yaml.safe_dump_all([broker(), trigger("t", ref)]))
        port = free_port()
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "xpipe.devstack.router",
                "--manifests",
                str(manifests),
                "--port",
                str(port),
                "--service",
                f"relay={sub.url}",
            ],
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert proc.poll() is None, "the router exited"
                assert time.monotonic() < deadline, "the router did not become healthy"
                time.sleep(0.05)
            headers = {"ce-specversion": "1.0", "ce-id": "p1", "ce-source": "/t", "ce-type": "t"}
            assert httpx.post(f"http://127.0.0.1:{port}/", headers=headers, content=b"").status_code == 202
            assert sub.wait_for(1)[0].headers["ce-id"] == "p1"
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=15)
            assert proc.returncode == 0, err
            assert '"router": "stop"' in err
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
    finally:
        sub.close()


def test_router_process_refuses_a_bad_manifest(tmp_path: Path) -> None:
    manifests = tmp_path / "m.yaml"
    manifests.write_text(
        yaml.safe_dump_all([broker(), trigger("t", uri("http://127.0.0.1:9"), filters=[{"cesql": "x"}])])
    )
    done = subprocess.run(
        [sys.executable, "-m", "xpipe.devstack.router", "--manifests", str(manifests), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert "cesql" in done.stderr
    assert str(manifests) in done.stderr
