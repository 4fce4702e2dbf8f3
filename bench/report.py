"""Writing one benchmark's section of a Markdown document, between its begin and end markers.

Each benchmark owns one marked block of docs/benchmarks.md and rewrites only that block, so the
benchmarks can run in any order and each leaves the others' results alone.
"""

from __future__ import annotations

from pathlib import Path

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
