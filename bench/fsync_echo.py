"""The floor under any durable Python TCP service: read a request, write+fsync it, answer.

    python bench/fsync_echo.py DIR   (prints ``listening on 127.0.0.1:PORT``; serves one connection)

bench/journal.py drives it with the same load generator as the journal, one client, so that the single-
client latency can be read as this floor (two loopback hops, two process wake-ups, one write+fsync,
with nothing in between) plus what the journal itself adds.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

REPLY = b"k" * 100  # about the size of a COMMIT reply
IDLE_TIMEOUT_S = 120.0  # bounded: it exits if the bench never connects or goes away


def main() -> int:
    directory = Path(sys.argv[1])
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / "floor.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(IDLE_TIMEOUT_S)
        print(f"listening on 127.0.0.1:{listener.getsockname()[1]}", flush=True)
        connection, _ = listener.accept()
    with connection:
        connection.settimeout(IDLE_TIMEOUT_S)
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while request := connection.recv(65536):
            os.write(fd, request)
            os.fsync(fd)
            connection.sendall(REPLY)
    os.close(fd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
