"""A stand-in component for the supervisor's tests: serves 200 on every GET at --port, and optionally
starts a grandchild in its process group (to prove stopping reaches it) whose pid it writes to a file."""

from __future__ import annotations

import argparse
import subprocess
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Healthy(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: Any) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--grandchild-pid-file")
    args = parser.parse_args()
    if args.grandchild_pid_file:
        # Bounded: even if every stop failed, it ends by itself after a minute.
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        with open(args.grandchild_pid_file, "w") as handle:
            handle.write(str(child.pid))
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Healthy)
    server.serve_forever(poll_interval=0.1)


if __name__ == "__main__":
    main()
