"""``python -m vms_adapter.server --data-dir DIR --host H --port P ...``: run the journal service.

The same as ``xpipe-journal serve ...``: the options and their handling are written once, in ``cli``.
"""

from __future__ import annotations

import sys

from vms_adapter.server import cli


def main(argv: list[str] | None = None) -> int:
    return cli.main(["serve", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
