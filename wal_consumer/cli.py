"""`wal-consumer`: set up a database, run the consumer, inspect and replay dead letters, demo."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
from pydantic import ValidationError

from wal_consumer import cli_ops, deadletters, observe, provision
from wal_consumer.consumer import Consumer
from wal_consumer.errors import ConfigurationError, WalConsumerError
from wal_consumer.settings import ConsumerSettings

log = logging.getLogger("wal_consumer")


def load_settings() -> ConsumerSettings:
    try:
        return ConsumerSettings()  # type: ignore[call-arg]
    except ValidationError as exc:
        problems = "; ".join(
            f"{'/'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}"
            for err in exc.errors()
        )
        hint = " (DATABASE_URL is required: a libpq URI such as postgresql://user@host/db)"
        raise ConfigurationError(f"invalid configuration: {problems}{hint}") from None


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def cmd_setup(args: argparse.Namespace) -> int:
    settings = load_settings()
    roles = (args.consumer_role, args.worker_role) if args.roles else None
    report = provision.setup(settings, dev_schema=args.dev_schema, roles=roles)
    if report.actions:
        for action in report.actions:
            print(f"- {action}")
    else:
        print("nothing to do: database already set up")
    return 0


def stop_on_signals(stop: threading.Event) -> None:
    def handler(signum: int, _frame: object) -> None:
        log.info("received %s: finishing the batch in hand", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def cmd_run(_args: argparse.Namespace) -> int:
    settings = load_settings()
    stop = threading.Event()
    stop_on_signals(stop)
    consumer = Consumer(settings, stop)
    ops = observe.start(settings, consumer)
    try:
        return consumer.run()
    finally:
        if ops is not None:
            ops.close()


def _print_rows(rows: list[dict[str, Any]], as_json: bool, columns: Sequence[str]) -> None:
    if as_json:
        print(json.dumps(rows, default=str, indent=2))
        return
    if not rows:
        print("no dead letters")
        return
    for row in rows:
        print("  ".join(f"{c}={row[c]}" for c in columns))


def cmd_dead_letters_list(args: argparse.Namespace) -> int:
    settings = load_settings()
    with psycopg.connect(settings.database_url) as conn:
        rows = deadletters.list_letters(conn, include_replayed=args.all, limit=args.limit)
    _print_rows(rows, args.json,
                ["id", "event_key", "table_name", "operation", "error", "replayed_at"])
    return 0


def cmd_dead_letters_replay(args: argparse.Namespace) -> int:
    settings = load_settings()
    if not args.ids and not args.all:
        raise ConfigurationError("say which dead letters to replay: their ids, or --all")
    overrides: dict[str, str | None] = {}
    for item in args.set:
        column, sep, value = item.partition("=")
        if not sep or not column:
            raise ConfigurationError(f"--set {item!r}: expected COLUMN=VALUE (empty for NULL)")
        overrides[column] = value if value != "" else None
    with psycopg.connect(settings.database_url) as conn:
        results = deadletters.replay(
            conn, settings.slot, args.ids or None, ZoneInfo(settings.naive_timestamp_timezone),
            overrides,
        )
    failed = 0
    for r in results:
        if r.error:
            failed += 1
            print(f"dead letter {r.letter_id}: still failing: {r.error}")
        else:
            print(f"dead letter {r.letter_id}: replayed, {r.jobs} job(s) enqueued")
    if not results:
        print("no pending dead letters matched")
    return 1 if failed else 0


def cmd_demo(args: argparse.Namespace) -> int:
    from wal_consumer.demo import run_demo

    return run_demo(keep_running=args.keep_running)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wal-consumer",
        description="Turn committed changes of the marketplace tables into jobs, exactly once.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("setup", help="prepare the database (idempotent)")
    p.add_argument("--dev-schema", action="store_true",
                   help="also create the development copy of the marketplace tables")
    p.add_argument("--roles", action="store_true",
                   help="also create least-privilege roles for the consumer and the workers")
    p.add_argument("--consumer-role", default="grails_consumer")
    p.add_argument("--worker-role", default="grails_worker")
    p.set_defaults(func=cmd_setup)

    p = sub.add_parser("run", help="stream changes into jobs until SIGINT/SIGTERM")
    p.set_defaults(func=cmd_run)

    cli_ops.add_commands(sub)

    dl = sub.add_parser("dead-letters", help="changes that could not be routed")
    dl_sub = dl.add_subparsers(dest="dl_command", required=True)
    p = dl_sub.add_parser("list", help="list pending dead letters")
    p.add_argument("--all", action="store_true", help="include replayed ones")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_dead_letters_list)
    p = dl_sub.add_parser("replay", help="route dead letters again and enqueue their jobs")
    p.add_argument("ids", nargs="*", type=int)
    p.add_argument("--all", action="store_true", help="replay every pending dead letter")
    p.add_argument("--set", action="append", default=[], metavar="COLUMN=VALUE",
                   help="replace a value of the new row before routing (empty = NULL)")
    p.set_defaults(func=cmd_dead_letters_replay)

    p = sub.add_parser("demo", help="throwaway database + consumer + marketplace writes")
    p.add_argument("--keep-running", action="store_true",
                   help="leave the database and consumer up until Ctrl-C")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = "INFO"
    try:
        level = load_settings().log_level
    except ConfigurationError:
        pass
    configure_logging(level)
    func: Callable[..., int] = args.func
    try:
        if func.__module__ == cli_ops.__name__:
            return func(args, load_settings)
        return func(args)
    except WalConsumerError as exc:
        print(f"wal-consumer: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except psycopg.OperationalError as exc:
        print(f"wal-consumer: cannot reach the database: {exc}", file=sys.stderr)
        return 8


if __name__ == "__main__":
    sys.exit(main())
