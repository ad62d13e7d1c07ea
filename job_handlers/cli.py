"""`job-handlers`: the handler worker's command line.

The task handlers (expiry, ENS sync, ownership, notifications) are not built yet; until they
are, every command says so plainly and exits non-zero instead of pretending to work.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

NOT_YET = (
    "job-handlers: the handler workers are not built yet (tracked as issues 4-6); the "
    "consumer's jobs wait in procrastinate_jobs until they are"
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="job-handlers", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    worker = sub.add_parser("worker", help="run the handlers (not built yet)")
    worker.add_argument("--queue", action="append", default=[])
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    build_parser().parse_args(argv)
    print(NOT_YET, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
