"""What the bench scripts share: writing one benchmark's section of docs/benchmarks.md, loading
another bench script to reuse its peers and measures, and reading the port a started server announces.

Each benchmark owns one marked block of docs/benchmarks.md and rewrites only that block, so the
benchmarks can run in any order and each leaves the others' results alone.
"""

from __future__ import annotations

import importlib.util
import queue
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

BENCHMARKS_DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def write_section(lines: list[str], begin: str, end: str, doc: Path = BENCHMARKS_DOC) -> None:
    """Replace the block between `begin` and `end` in `doc` (appended when it is not there yet)."""
    text = doc.read_text() if doc.exists() else "# Benchmarks\n"
    block = "\n".join([begin, *lines, end])
    if begin in text and end in text:
        before, _, rest = text.partition(begin)
        _, _, after = rest.partition(end)
        text = before + block + after
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text)


def load_bench(name: str) -> Any:
    """``bench/<name>.py`` as a module (the bench scripts are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(
        f"{name}_bench", Path(__file__).resolve().parent / f"{name}.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def announced_port(proc: subprocess.Popen[str], what: str, timeout_s: float = 30.0) -> int:
    """The port from the ``listening on HOST:PORT`` line a server started with ``stdout=PIPE`` prints,
    within ``timeout_s``. A thread keeps reading its output after that, so the pipe never fills."""
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        for text in proc.stdout or []:
            lines.put(text)

    threading.Thread(target=pump, daemon=True).start()
    try:
        line = lines.get(timeout=timeout_s)
    except queue.Empty:
        raise RuntimeError(f"{what} did not say where it listens within {timeout_s:g}s") from None
    if not line.startswith("listening on "):
        raise RuntimeError(f"{what} said {line!r}")
    return int(line.strip().rpartition(":")[2])
