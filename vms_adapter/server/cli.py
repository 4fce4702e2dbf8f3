"""``xpipe-journal``: run the service, check a journal offline, or dump it.

- ``xpipe-journal serve [--data-dir DIR ...]``: the same as ``python -m vms_adapter.server``;
- ``xpipe-journal verify DIR``: read every segment from the first (not from a snapshot) and every
  snapshot; exit 0 with a summary when sound, exit 1 naming the first bad file and byte offset;
- ``xpipe-journal dump DIR [--job J]``: one JSON line per committed record, in seq order.

Both offline commands are read-only: a torn tail is reported (start-up would cut it), never cut here.

Standard library only: this module runs on VSI Python 3.10 for OpenVMS.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import NoReturn, TextIO

from vms_adapter.server import reader, snapshots
from vms_adapter.server.config import ConfigError, add_server_arguments, config_from_arguments
from vms_adapter.server.service import EXIT_CONFIG, run

EXIT_SOUND = 0
EXIT_DAMAGED = 1


def verify(data_dir: str, out: TextIO, err: TextIO) -> int:
    if not os.path.isdir(data_dir):
        print(f"verify: {data_dir} is not a directory", file=err)
        return EXIT_DAMAGED
    counts = {"transactions": 0, "records": 0}
    jobs: set[str] = set()
    first_seq: list[int] = []

    def count(tx: reader.Transaction) -> None:
        counts["transactions"] += 1
        counts["records"] += len(tx.records)
        jobs.update(r.job_id for r in tx.records)
        if not first_seq:
            first_seq.append(tx.records[0].seq)

    try:
        result = reader.replay(data_dir, count, mode=reader.READ_ONLY)
    except reader.CorruptJournal as exc:
        print(f"verify: CORRUPT: {exc.path} at byte offset {exc.offset}: {exc.reason}", file=err)
        return EXIT_DAMAGED
    segments = reader.list_segments(data_dir)
    seq_range = f"seq {first_seq[0]}..{result.last_seq}" if first_seq else "no records"
    print(
        f"verify: sound: {len(segments)} segment(s), {counts['transactions']} transaction(s), "
        f"{counts['records']} record(s), {seq_range}, {len(jobs)} job(s)",
        file=out,
    )
    for note in result.torn:
        print(f"verify: note: {note}; start-up will cut it (nothing in it was acknowledged)", file=out)
    for seq, name in snapshots.list_snapshots(data_dir):
        try:
            with open(os.path.join(data_dir, name), "rb") as handle:
                snap = snapshots.decode_snapshot(handle.read())
            problem = (
                ""
                if snap.last_seq <= result.last_seq
                else f" (beyond the journal's last seq {result.last_seq})"
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            problem = f" (unreadable, start-up ignores it: {exc})"
        print(f"verify: snapshot {name} at seq {seq}{problem or ': ok'}", file=out)
    return EXIT_SOUND


def dump(data_dir: str, job: str | None, out: TextIO, err: TextIO) -> int:
    if not os.path.isdir(data_dir):
        print(f"dump: {data_dir} is not a directory", file=err)
        return EXIT_DAMAGED

    def emit(tx: reader.Transaction) -> None:
        key = tx.marker.get("key")
        for record in tx.records:
            if job is None or record.job_id == job:
                line = {
                    "seq": record.seq,
                    "jobId": record.job_id,
                    "type": record.type,
                    "data": record.data,
                    "time": record.time,
                    "idempotencyKey": key,
                }
                out.write(json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n")

    try:
        reader.replay(data_dir, emit, mode=reader.READ_ONLY)
    except reader.CorruptJournal as exc:
        print(f"dump: CORRUPT: {exc.path} at byte offset {exc.offset}: {exc.reason}", file=err)
        return EXIT_DAMAGED
    return EXIT_SOUND


class _Parser(argparse.ArgumentParser):
    """argparse exits 2 on a bad option, and 2 is this service's "the journal is corrupt" (docs/journal.md):
    a bad option is a configuration error instead, exit 1. (Sub-parsers are made with the same class.)"""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        raise ConfigError(f"{self.prog}: {message}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _Parser(prog="xpipe-journal", description="The XPipe journal service and tools")
    commands = parser.add_subparsers(dest="command", required=True)
    add_server_arguments(commands.add_parser("serve", help="run the journal service"), os.environ)
    check = commands.add_parser("verify", help="offline integrity check")
    check.add_argument("data_dir")
    show = commands.add_parser("dump", help="committed records as JSON lines, in seq order")
    show.add_argument("data_dir")
    show.add_argument("--job", help="only this job's records")
    try:
        args = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
    except ConfigError as exc:
        print(f"xpipe-journal: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.command == "verify":
        return verify(args.data_dir, sys.stdout, sys.stderr)
    if args.command == "dump":
        return dump(args.data_dir, args.job, sys.stdout, sys.stderr)
    try:
        config = config_from_arguments(args)
    except ConfigError as exc:
        print(f"xpipe-journal: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    return run(config)


if __name__ == "__main__":
    sys.exit(main())
