"""Read-only views of the consumer's state for `status`, `check` and `slot status`.

Every function takes an open connection and returns plain dicts (JSON-ready), so the CLI can
print them for a person or as ``--json`` for a machine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import dict_row

SLOT_COLUMNS = (
    "slot_name, plugin, slot_type, database, active, active_pid, restart_lsn::text,"
    " confirmed_flush_lsn::text, wal_status, safe_wal_size,"
    " pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint AS retained_bytes,"
    " pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint AS lag_bytes"
)


def _rows(conn: psycopg.Connection, query: str, params: list[Any] | None = None
          ) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(query.encode(), params)
        rows = cur.fetchall()
    conn.rollback()
    return rows


def list_slots(conn: psycopg.Connection) -> list[dict[str, Any]]:
    return _rows(conn, f"SELECT {SLOT_COLUMNS} FROM pg_replication_slots"  # noqa: S608
                       " ORDER BY slot_name")


def slot_status(conn: psycopg.Connection, slot: str) -> dict[str, Any] | None:
    """The slot's health against our checkpoint; None when the slot does not exist."""
    rows = _rows(conn, f"SELECT {SLOT_COLUMNS} FROM pg_replication_slots"  # noqa: S608
                       " WHERE slot_name = %s", [slot])
    if not rows:
        return None
    status = rows[0]
    status["checkpoint"] = checkpoint(conn, slot)
    status["lag_seconds"] = (status["checkpoint"] or {}).get("lag_seconds")
    return status


def checkpoint(conn: psycopg.Connection, slot: str) -> dict[str, Any] | None:
    if not _has_table(conn, "grails_workers.consumer_checkpoint"):
        return None
    rows = _rows(
        conn,
        "SELECT commit_lsn::text, end_lsn::text, advanced_lsn::text, transactions,"
        " last_commit_time, caught_up_at, updated_at,"
        " round(extract(epoch FROM now() - greatest(last_commit_time, caught_up_at))::numeric,"
        " 3)::float8 AS lag_seconds"
        " FROM grails_workers.consumer_checkpoint WHERE slot_name = %s",
        [slot],
    )
    return rows[0] if rows else None


def _has_table(conn: psycopg.Connection, name: str) -> bool:
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", [name]).fetchone()
    conn.rollback()
    return bool(row and row[0])


def dead_letter_count(conn: psycopg.Connection) -> int:
    if not _has_table(conn, "grails_workers.dead_letters"):
        return 0
    rows = _rows(conn, "SELECT count(*) AS n FROM grails_workers.dead_letters"
                       " WHERE replayed_at IS NULL")
    return int(rows[0]["n"])


def queue_depth(conn: psycopg.Connection) -> list[dict[str, Any]]:
    if not _has_table(conn, "procrastinate_jobs"):
        return []
    return _rows(
        conn,
        "SELECT task_name AS task, queue_name AS queue, status::text AS status,"
        " count(*) AS jobs FROM procrastinate_jobs GROUP BY 1, 2, 3 ORDER BY 1, 3",
    )


def failed_last_24h(conn: psycopg.Connection) -> list[dict[str, Any]]:
    if not _has_table(conn, "procrastinate_jobs"):
        return []
    return _rows(
        conn,
        "SELECT j.task_name AS task, count(DISTINCT j.id) AS jobs FROM procrastinate_jobs j"
        " JOIN procrastinate_events e ON e.job_id = j.id"
        " WHERE j.status = 'failed' AND e.type = 'failed' AND e.at > now() - interval '24 hours'"
        " GROUP BY 1 ORDER BY 1",
    )


def server_settings(conn: psycopg.Connection) -> dict[str, Any]:
    rows = _rows(conn, "SELECT name, setting, unit FROM pg_settings WHERE name = ANY(%s)",
                 [["wal_level", "max_slot_wal_keep_size", "max_replication_slots",
                   "max_wal_senders", "wal_sender_timeout"]])
    return {r["name"]: r["setting"] + (r["unit"] or "") for r in rows}


def status(conn: psycopg.Connection, slot: str) -> dict[str, Any]:
    return {
        "server": server_settings(conn),
        "slot": slot_status(conn, slot),
        "dead_letters": dead_letter_count(conn),
        "queue": queue_depth(conn),
        "failed_last_24h": failed_last_24h(conn),
    }


@dataclass(frozen=True)
class Thresholds:
    max_retained_bytes: int | None = None
    max_lag_bytes: int | None = None
    max_lag_seconds: float | None = None
    max_dead_letters: int | None = None


def problems(report: dict[str, Any], slot_name: str, limits: Thresholds) -> list[str]:
    """One line per crossed threshold (empty when healthy)."""
    slot = report["slot"]
    found: list[str] = []
    if slot is None:
        return [f"slot {slot_name} does not exist (wal-consumer setup, then backfill)"]
    if slot["wal_status"] == "lost":
        found.append(f"slot {slot_name} is lost (wal-consumer slot rebuild)")
    checks: list[tuple[str, Any, Any]] = [
        ("retained WAL bytes", slot["retained_bytes"], limits.max_retained_bytes),
        ("lag bytes", slot["lag_bytes"], limits.max_lag_bytes),
        ("lag seconds", slot["lag_seconds"], limits.max_lag_seconds),
        ("dead letters", report["dead_letters"], limits.max_dead_letters),
    ]
    for label, value, limit in checks:
        if limit is not None and value is not None and value > limit:
            found.append(f"{label} {value} > {limit}")
    return found
