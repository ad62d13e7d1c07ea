"""The operator commands: `status`, `check`, `slot …`, `publication …`, `backfill`.

Every read command prints a short human view, or the same data as JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

import psycopg

from wal_consumer import inspect, slots
from wal_consumer.backfill import backfill
from wal_consumer.errors import SlotLostError
from wal_consumer.settings import ConsumerSettings

SettingsLoader = Callable[[], ConsumerSettings]


def _emit(data: Any, as_json: bool, human: Callable[[Any], list[str]]) -> None:
    if as_json:
        print(json.dumps(data, default=str, indent=2))
    else:
        print("\n".join(human(data)))


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if abs(value) < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def _slot_lines(s: dict[str, Any] | None) -> list[str]:
    if s is None:
        return ["slot: MISSING (wal-consumer setup creates it; then wal-consumer backfill)"]
    cp = s.get("checkpoint") or {}
    holder = f"active, PID {s['active_pid']}" if s["active"] else "inactive"
    lag_s = s.get("lag_seconds")
    return [
        f"slot {s['slot_name']}: {holder}, wal_status {s['wal_status']}, "
        f"safe_wal_size {_size(s['safe_wal_size'])}",
        f"  confirmed_flush_lsn {s['confirmed_flush_lsn']}   checkpoint end {cp.get('end_lsn')}"
        f" (commit {cp.get('commit_lsn')}, idle-advanced {cp.get('advanced_lsn')})",
        f"  retained WAL {_size(s['retained_bytes'])}   lag {_size(s['lag_bytes'])}"
        f" / {'-' if lag_s is None else f'{lag_s:.1f} s'} since the last processed commit",
    ]


def cmd_status(args: argparse.Namespace, load: SettingsLoader) -> int:
    settings = load()
    with psycopg.connect(settings.database_url) as conn:
        report = inspect.status(conn, settings.slot)

    def human(r: dict[str, Any]) -> list[str]:
        lines = _slot_lines(r["slot"])
        if r["server"].get("max_slot_wal_keep_size") in ("-1", "-1MB"):
            lines.append("  note: max_slot_wal_keep_size is unlimited, so a stopped consumer's "
                         "slot can fill the disk; consider a limit (and `check` in monitoring)")
        lines.append(f"dead letters: {r['dead_letters']} pending"
                     + (" (wal-consumer dead-letters list)" if r["dead_letters"] else ""))
        lines.append("queue:" if r["queue"] else "queue: empty")
        lines += [f"  {q['task']:<24} {q['queue']:<14} {q['status']:<10} {q['jobs']:>8}"
                  for q in r["queue"]]
        failed = r["failed_last_24h"]
        lines.append("failed in the last 24 h: " + (
            ", ".join(f"{f['task']} {f['jobs']}" for f in failed) if failed else "none"))
        return lines

    _emit(report, args.json, human)
    return 0


def cmd_check(args: argparse.Namespace, load: SettingsLoader) -> int:
    settings = load()
    with psycopg.connect(settings.database_url) as conn:
        report = inspect.status(conn, settings.slot)
    found = inspect.problems(report, settings.slot, inspect.Thresholds(
        args.max_retained_bytes, args.max_lag_bytes, args.max_lag_seconds,
        args.max_dead_letters))
    if found:
        print("CRITICAL: " + "; ".join(found))
        return 1
    print("OK")
    return 0


def cmd_slot_list(args: argparse.Namespace, load: SettingsLoader) -> int:
    settings = load()
    with psycopg.connect(settings.database_url) as conn:
        rows = inspect.list_slots(conn)
    _emit(rows, args.json, lambda rs: [
        f"{r['slot_name']:<24} {r['plugin'] or '-':<10} {r['database'] or '-':<16} "
        f"{'active' if r['active'] else 'inactive':<9} {r['wal_status'] or '-':<9} "
        f"retained {_size(r['retained_bytes'])}" for r in rs] or ["no replication slots"])
    return 0


def cmd_slot_status(args: argparse.Namespace, load: SettingsLoader) -> int:
    settings = load()
    with psycopg.connect(settings.database_url) as conn:
        status = inspect.slot_status(conn, settings.slot)
    _emit(status, args.json, _slot_lines)
    return 0 if status is not None else SlotLostError.exit_code


def cmd_slot_create(_args: argparse.Namespace, load: SettingsLoader) -> int:
    actions = slots.create(load())
    print("\n".join(f"- {a}" for a in actions) or "slot already exists: nothing to do")
    return 0


def cmd_slot_drop(args: argparse.Namespace, load: SettingsLoader) -> int:
    status = slots.drop(load(), force=args.force)
    print(f"dropped slot {status['slot_name']}: released {_size(status['retained_bytes'])} of "
          f"retained WAL (restart_lsn {status['restart_lsn']}); changes committed from now on "
          "get no jobs until `wal-consumer slot create` and `wal-consumer backfill`")
    return 0


def cmd_slot_advance(args: argparse.Namespace, load: SettingsLoader) -> int:
    before, after = slots.advance(load(), args.to, force=args.force)
    print(f"advanced slot from {before} to {after}: changes in between get no jobs")
    return 0


def cmd_slot_peek(args: argparse.Namespace, load: SettingsLoader) -> int:
    changes = [c.__dict__ for c in slots.peek(load(), args.limit)]
    _emit(changes, args.json, lambda cs: [
        f"{c['lsn']:<12} {c['kind']:<8} {c['table'] or '':<18} {c['detail']:<20} "
        f"{c['event_key'] or '':<16} {' + '.join(c['jobs'])}" for c in cs
    ] or ["nothing waiting in the slot"])
    return 0


def cmd_slot_rebuild(args: argparse.Namespace, load: SettingsLoader) -> int:
    settings = load()
    try:
        status = slots.drop(settings, force=args.force)
        print(f"dropped slot {settings.slot} (wal_status {status['wal_status']})")
    except SlotLostError:
        print(f"slot {settings.slot} did not exist")
    for action in slots.create(settings):
        print(f"- {action}")
    return _run_backfill(settings, args.chunk)


def cmd_publication_show(args: argparse.Namespace, load: SettingsLoader) -> int:
    info = slots.publication_show(load())
    _emit(info, args.json, lambda i: [
        f"publication {i['publication']}: " + ("in sync" if i["in_sync"] else "OUT OF SYNC"),
        f"  published:  {', '.join(i['tables']) or '(none)'}",
        f"  configured: {', '.join(i['configured'])}",
    ] + ([f"  missing: {', '.join(i['missing'])}"] if i["missing"] else [])
      + ([f"  extra: {', '.join(i['extra'])}"] if i["extra"] else []))
    return 0


def cmd_publication_sync(_args: argparse.Namespace, load: SettingsLoader) -> int:
    actions = slots.create(load())
    print("\n".join(f"- {a}" for a in actions) or "publication already in sync")
    return 0


def _run_backfill(settings: ConsumerSettings, chunk: int) -> int:
    tty = sys.stderr.isatty()

    def progress(label: str, done: int, total: int) -> None:
        if not tty:
            return
        width = 30
        filled = width if total == 0 else min(width, width * done // total)
        sys.stderr.write(f"\r{label:<16} [{'#' * filled}{'.' * (width - filled)}] "
                         f"{done}/{total}")
        if done >= total:
            sys.stderr.write("\n")
        sys.stderr.flush()

    summary = backfill(settings, chunk, progress)
    print(summary.line())
    return 0


def cmd_backfill(args: argparse.Namespace, load: SettingsLoader) -> int:
    return _run_backfill(load(), args.chunk)


def add_commands(sub: Any) -> None:
    def json_flag(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--json", action="store_true", help="print JSON")
        return p

    json_flag(sub.add_parser("status", help="slot health, lag, dead letters, queue depth")
              ).set_defaults(func=cmd_status)
    p = sub.add_parser("check", help="exit 1 with a one-line reason when a threshold is crossed")
    p.add_argument("--max-retained-bytes", type=int)
    p.add_argument("--max-lag-bytes", type=int)
    p.add_argument("--max-lag-seconds", type=float)
    p.add_argument("--max-dead-letters", type=int)
    p.set_defaults(func=cmd_check)

    slot = sub.add_parser("slot", help="replication slot management").add_subparsers(
        dest="slot_command", required=True)
    json_flag(slot.add_parser("list", help="every slot on the server")).set_defaults(
        func=cmd_slot_list)
    json_flag(slot.add_parser("status", help="our slot against our checkpoint")).set_defaults(
        func=cmd_slot_status)
    slot.add_parser("create", help="create the slot (and the rest of setup)").set_defaults(
        func=cmd_slot_create)
    p = slot.add_parser("drop", help="drop the slot, releasing its WAL")
    p.add_argument("--force", action="store_true", help="terminate an active holder first")
    p.set_defaults(func=cmd_slot_drop)
    p = slot.add_parser("advance", help="move the slot forward (skipped changes get no jobs)")
    p.add_argument("--to", required=True, metavar="LSN")
    p.add_argument("--force", action="store_true", help="terminate an active holder first")
    p.set_defaults(func=cmd_slot_advance)
    p = json_flag(slot.add_parser("peek", help="changes waiting in the slot, not consumed"))
    p.add_argument("--limit", type=int, default=50, help="changes to read, at most")
    p.set_defaults(func=cmd_slot_peek)
    p = slot.add_parser("rebuild", help="after a lost slot: drop, recreate, backfill")
    p.add_argument("--force", action="store_true", help="terminate an active holder first")
    p.add_argument("--chunk", type=int, default=1000)
    p.set_defaults(func=cmd_slot_rebuild)

    pub = sub.add_parser("publication", help="the publication of our tables").add_subparsers(
        dest="publication_command", required=True)
    json_flag(pub.add_parser("show", help="published vs configured tables")).set_defaults(
        func=cmd_publication_show)
    pub.add_parser("sync", help="make the publication match WAL_TABLES").set_defaults(
        func=cmd_publication_sync)

    p = sub.add_parser("backfill", help="jobs for rows that predate the consumer (idempotent)")
    p.add_argument("--chunk", type=int, default=1000, help="rows per transaction")
    p.set_defaults(func=cmd_backfill)
