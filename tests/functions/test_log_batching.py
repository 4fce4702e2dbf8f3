"""The functions' log handler: INFO lines written in batches by a thread, WARNING and above at once, every
line once and in order, also across gunicorn's fork and at exit."""

from __future__ import annotations

import io
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from xpipe.logs import BatchedLines

DEADLINE_S = 10.0


class Stream(io.StringIO):
    """A stream that tells how many writes reached it."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0
        self.changed = threading.Condition()

    def write(self, text: str) -> int:
        with self.changed:
            self.writes += 1
            written = super().write(text)
            self.changed.notify_all()
            return written

    def wait_for(self, text: str) -> str:
        with self.changed:
            assert self.changed.wait_for(lambda: text in self.getvalue(), DEADLINE_S), self.getvalue()
            return self.getvalue()


@pytest.fixture
def logged() -> Iterator[tuple[logging.Logger, Stream]]:
    stream = Stream()
    handler = BatchedLines(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger = logging.getLogger(f"test-batching-{id(stream)}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    yield logger, stream
    logger.removeHandler(handler)


def test_info_lines_arrive_together_and_in_order(logged: tuple[logging.Logger, Stream]) -> None:
    logger, stream = logged
    for n in range(50):
        logger.info("line %d", n)
    text = stream.wait_for("line 49")
    assert text.splitlines() == [f"INFO line {n}" for n in range(50)]
    assert stream.writes < 50  # batched: not one write per line


def test_a_warning_is_written_at_once_after_the_lines_before_it(
    logged: tuple[logging.Logger, Stream],
) -> None:
    logger, stream = logged
    logger.info("before")
    logger.warning("trouble")
    # No waiting: the warning and everything queued before it are written by the call itself.
    assert stream.getvalue().splitlines() == ["INFO before", "WARNING trouble"]


def test_lines_from_many_threads_are_each_written_once(logged: tuple[logging.Logger, Stream]) -> None:
    logger, stream = logged

    def log(thread: int) -> None:
        for n in range(200):
            logger.info("t%d-%d", thread, n)

    threads = [threading.Thread(target=log, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DEADLINE_S)
    logger.warning("end")
    lines = stream.getvalue().splitlines()
    assert sorted(lines[:-1]) == sorted(f"INFO t{t}-{n}" for t in range(8) for n in range(200))
    assert lines[-1] == "WARNING end"


# A process that queues a line, forks (as gunicorn does after loading the function), logs in both, and
# exits normally: every line is written exactly once, including those still queued at exit.
FORKING = """
import logging, os, sys
from xpipe.logs import BatchedLines
handler = BatchedLines(sys.stdout, batch_seconds=30.0)  # only exit can write these lines
handler.setFormatter(logging.Formatter("%(message)s"))
log = logging.getLogger("forking")
log.addHandler(handler)
log.setLevel(logging.INFO)
log.info("before the fork")
pid = os.fork()
if pid:
    log.info("in the parent")
    os.waitpid(pid, 0)
elif sys.argv[1] == "child-logs":
    log.info("in the child")
"""


@pytest.mark.parametrize(
    ("child", "expected"),
    [
        ("child-logs", ["before the fork", "in the child", "in the parent"]),
        ("child-silent", ["before the fork", "in the parent"]),
    ],
)
def test_every_line_is_written_once_across_a_fork_and_at_exit(child: str, expected: list[str]) -> None:
    began = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-c", FORKING, child], capture_output=True, text=True, timeout=DEADLINE_S, check=True
    )
    assert sorted(result.stdout.splitlines()) == expected
    assert time.monotonic() - began < DEADLINE_S  # written by exit, not after the 30 s window
