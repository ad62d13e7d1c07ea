"""Slot and publication management behind `wal-consumer slot …` and `publication …`.

Each operation checks before it acts: an active slot is not dropped or advanced unless forced,
and what a drop releases is shown first (PITFALLS 15-19).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

import psycopg

from wal_consumer.changes import Change, RelationInfo
from wal_consumer.errors import SlotBusyError, SlotLostError, WalConsumerError
from wal_consumer.inspect import slot_status
from wal_consumer.protocol import (
    Begin,
    Commit,
    Delete,
    Insert,
    LogicalMessage,
    Relation,
    Truncate,
    Update,
    decode_message,
    format_lsn,
    parse_lsn,
    pg_time_to_datetime,
)
from wal_consumer.provision import publication_tables, setup
from wal_consumer.routes import route
from wal_consumer.settings import ConsumerSettings

log = logging.getLogger(__name__)


def _require_slot(conn: psycopg.Connection, slot: str) -> dict[str, Any]:
    status = slot_status(conn, slot)
    if status is None:
        raise SlotLostError(f"replication slot {slot} does not exist (wal-consumer slot create)")
    return status


def _refuse_active(status: dict[str, Any], action: str, force: bool) -> None:
    if status["active"] and not force:
        raise SlotBusyError(
            f"slot {status['slot_name']} is active for PID {status['active_pid']}: refusing to "
            f"{action} it (stop that consumer first, or pass --force to terminate it)"
        )


def _terminate_holder(conn: psycopg.Connection, status: dict[str, Any]) -> None:
    if status["active_pid"]:
        conn.execute("SELECT pg_terminate_backend(%s)", [status["active_pid"]])
        for _ in range(100):
            row = conn.execute("SELECT active FROM pg_replication_slots WHERE slot_name = %s",
                               [status["slot_name"]]).fetchone()
            if not row or not row[0]:
                return
            conn.execute("SELECT pg_sleep(0.05)")
        raise SlotBusyError(f"slot {status['slot_name']} is still active after terminating its "
                            f"holder PID {status['active_pid']}")


def create(settings: ConsumerSettings) -> list[str]:
    """Create the slot (and whatever else setup would); idempotent."""
    return setup(settings).actions


def drop(settings: ConsumerSettings, *, force: bool) -> dict[str, Any]:
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        status = _require_slot(conn, settings.slot)
        _refuse_active(status, "drop", force)
        _terminate_holder(conn, status)
        conn.execute("SELECT pg_drop_replication_slot(%s)", [settings.slot])
    return status


def advance(settings: ConsumerSettings, to_lsn: str, *, force: bool) -> tuple[str, str]:
    """Move the slot forward; changes it skips get no jobs. Returns (from, to)."""
    target = parse_lsn(to_lsn)
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        status = _require_slot(conn, settings.slot)
        _refuse_active(status, "advance", force)
        _terminate_holder(conn, status)
        current = status["confirmed_flush_lsn"]
        if target <= parse_lsn(current):
            raise WalConsumerError(f"slot {settings.slot} is already at {current}; a slot only "
                                   "moves forward")
        row = conn.execute("SELECT end_lsn::text FROM pg_replication_slot_advance(%s, %s)",
                           [settings.slot, format_lsn(target)]).fetchone()
        reached = row[0] if row else format_lsn(target)
        # Say in the checkpoint that this jump was deliberate, so start-up does not flag it.
        conn.execute(
            "UPDATE grails_workers.consumer_checkpoint SET advanced_lsn ="
            " greatest(advanced_lsn, %s::pg_lsn) WHERE slot_name = %s",
            [reached, settings.slot],
        )
    return current, reached


@dataclass(frozen=True)
class PeekedChange:
    lsn: str
    xid: int
    kind: str
    table: str | None
    event_key: str | None
    jobs: list[str]
    detail: str


def peek(settings: ConsumerSettings, limit: int) -> Iterator[PeekedChange]:
    """Decoded changes waiting in the slot and the jobs they would make, consuming nothing."""
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        status = _require_slot(conn, settings.slot)
        _refuse_active(status, "peek into", False)
        cursor = conn.execute(
            "SELECT lsn::text, xid::text::bigint, data FROM pg_logical_slot_peek_binary_changes("
            "%s, NULL, %s, 'proto_version', '1', 'publication_names', %s)",
            [settings.slot, limit, settings.publication],
        )
        relations: dict[int, RelationInfo] = {}
        commit_lsn, ordinal, commit_time = 0, 0, 0
        tz = ZoneInfo(settings.naive_timestamp_timezone)
        for lsn, xid, data in cursor:
            msg = decode_message(bytes(data))
            if isinstance(msg, Relation):
                relations[msg.oid] = RelationInfo.build(msg)
                continue
            if isinstance(msg, Begin):
                commit_lsn, ordinal, commit_time = msg.final_lsn, 0, msg.commit_time
                yield PeekedChange(lsn, xid, "BEGIN", None, None, [],
                                   f"commits at {format_lsn(msg.final_lsn)}")
            elif isinstance(msg, Commit):
                yield PeekedChange(lsn, xid, "COMMIT", None, None, [],
                                   f"end {format_lsn(msg.end_lsn)}")
            elif isinstance(msg, (Insert, Update, Delete)):
                ordinal += 1
                info = relations[msg.relation_oid]
                operation = type(msg).__name__.lower()
                new = None if isinstance(msg, Delete) else msg.new
                old = msg.old if isinstance(msg, (Update, Delete)) else None
                change = Change(operation, info, new, old, commit_lsn,  # type: ignore[arg-type]
                                ordinal, pg_time_to_datetime(commit_time), tz)
                try:
                    jobs = [job.task_name for job in route(change)]
                except WalConsumerError as exc:
                    jobs = [f"DEAD LETTER: {exc}"]
                row = change.raw_json("new") or change.raw_json("old") or {}
                yield PeekedChange(lsn, xid, operation.upper(), info.qualified_name,
                                   change.event_key, jobs, f"id={row.get('id')}")
            elif isinstance(msg, Truncate):
                ordinal += 1
                yield PeekedChange(lsn, xid, "TRUNCATE", None, None, [],
                                   ", ".join(relations[o].qualified_name for o in msg.relation_oids
                                             if o in relations))
            elif isinstance(msg, LogicalMessage):
                yield PeekedChange(lsn, xid, "MESSAGE", None, None, [], msg.prefix)


def publication_show(settings: ConsumerSettings) -> dict[str, Any]:
    with psycopg.connect(settings.database_url) as conn:
        current = publication_tables(conn, settings.publication)
    wanted = sorted(settings.tables)
    return {
        "publication": settings.publication,
        "exists": current is not None,
        "tables": current or [],
        "configured": wanted,
        "in_sync": current == wanted,
        "missing": sorted(set(wanted) - set(current or [])),
        "extra": sorted(set(current or []) - set(wanted)),
    }
