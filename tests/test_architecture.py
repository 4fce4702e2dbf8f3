"""The layering rules of ARCHITECTURE §3, checked on the source: dependencies point inward only, and the
OpenVMS side of vms_adapter imports nothing but the standard library."""

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import vms_adapter
from vms_adapter.client import JournalClient
from vms_adapter.errors import JournalError

ROOT = Path(__file__).resolve().parent.parent
OPENVMS_SIDE = [ROOT / "vms_adapter" / "__init__.py", ROOT / "vms_adapter" / "protocol.py"]
OPENVMS_PACKAGES = [ROOT / "vms_adapter" / "server"]


def imported_top_level(path: Path) -> Iterator[tuple[int, str]]:
    """Top-level module names a file imports, with line numbers (relative imports are the package's own)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module.split(".")[0]


def python_files(*roots: Path) -> list[Path]:
    files: list[Path] = []
    for root in roots:
        files.extend([root] if root.is_file() else sorted(root.rglob("*.py")))
    return [f for f in files if f.exists()]


def test_vms_adapter_never_imports_xpipe_or_functions() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for path in python_files(ROOT / "vms_adapter")
        for line, name in imported_top_level(path)
        if name in {"xpipe", "functions"}
    ]
    assert offenders == []


def test_xpipe_never_imports_the_functions() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{line}"
        for path in python_files(ROOT / "xpipe")
        for line, name in imported_top_level(path)
        if name == "functions"
    ]
    assert offenders == []


def test_openvms_side_imports_only_the_standard_library() -> None:
    allowed = set(sys.stdlib_module_names) | {"vms_adapter", "__future__"}
    offenders = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for path in python_files(*OPENVMS_SIDE, *OPENVMS_PACKAGES)
        for line, name in imported_top_level(path)
        if name not in allowed
    ]
    assert offenders == []


@pytest.mark.parametrize("name", ["xpipe", "functions", "kubernetes", "pydantic"])
def test_the_import_checker_sees_a_forbidden_import(tmp_path: Path, name: str) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(f"import os\nfrom {name}.x import y\n")
    assert (2, name) in set(imported_top_level(sample))


def test_the_journal_client_and_its_errors_are_exported_from_the_package() -> None:
    assert vms_adapter.JournalClient is JournalClient
    assert issubclass(vms_adapter.JournalUnavailable, JournalError)
    assert set(vms_adapter.__all__) >= {"JournalClient", "JournalUnavailable", "Conflict", "Rejected"}
