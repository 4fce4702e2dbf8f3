"""``python -m vms_adapter.server --data-dir DIR --host H --port P ...``: run the journal service."""

from __future__ import annotations

import sys

from vms_adapter.server.config import ConfigError, parse_server_config
from vms_adapter.server.service import EXIT_CONFIG, run


def main(argv: list[str] | None = None) -> int:
    try:
        config = parse_server_config(sys.argv[1:] if argv is None else argv)
    except ConfigError as exc:
        print(f"xpipe-journal: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    return run(config)


if __name__ == "__main__":
    sys.exit(main())
