"""The figures of the status page, read from the database in one short transaction.

Slot health and lag come from `pg_replication_slots` and our checkpoint; queue depth from
procrastinate's jobs; the DLQ from failed jobs with their last error (`dlq`); recent deliveries
from the `notifications` ledger; expiry lateness from the `succeeded` events of `expire-orders`
jobs (event time - scheduled time) over the last hour.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.rows import dict_row

from job_handlers import dlq

SLOTS = """
SELECT s.slot_name, s.active, s.wal_status,
       pg_wal_lsn_diff(pg_current_wal_lsn(), s.restart_lsn)::bigint AS retained_bytes,
       pg_wal_lsn_diff(pg_current_wal_lsn(), s.confirmed_flush_lsn)::bigint AS lag_bytes,
       extract(epoch FROM now() - greatest(c.last_commit_time, c.caught_up_at))::float8
           AS lag_seconds,
       c.transactions
  FROM pg_replication_slots s
  LEFT JOIN grails_workers.consumer_checkpoint c ON c.slot_name = s.slot_name
 WHERE s.plugin = 'pgoutput' AND s.database = current_database()
 ORDER BY s.slot_name
"""
QUEUES = """
SELECT queue_name, task_name,
       count(*) FILTER (WHERE status = 'todo' AND (scheduled_at IS NULL OR scheduled_at <= now()))
           AS due,
       count(*) FILTER (WHERE status = 'todo' AND scheduled_at > now()) AS scheduled,
       count(*) FILTER (WHERE status = 'doing') AS running,
       count(*) FILTER (WHERE status = 'failed') AS failed
  FROM procrastinate_jobs
 WHERE status IN ('todo', 'doing', 'failed')
 GROUP BY queue_name, task_name ORDER BY queue_name, task_name
"""
DELIVERIES = """
SELECT id, type AS event, channel, status, attempts, last_error, updated_at, user_id
  FROM notifications WHERE event_key IS NOT NULL
 ORDER BY updated_at DESC NULLS LAST, id DESC LIMIT %s
"""
EXPIRY_LATENESS = """
SELECT count(*) AS expired,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY lateness) AS p50,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY lateness) AS p95,
       max(lateness) AS max
  FROM (SELECT extract(epoch FROM e.at - j.scheduled_at)::float8 AS lateness
          FROM procrastinate_jobs j
          JOIN procrastinate_events e ON e.job_id = j.id AND e.type = 'succeeded'
         WHERE j.task_name = 'expire-orders' AND j.scheduled_at IS NOT NULL
           AND e.at > now() - interval '1 hour') late
"""


@dataclass
class StatusReport:
    slots: list[dict[str, Any]] = field(default_factory=list)
    queues: list[dict[str, Any]] = field(default_factory=list)
    dead_letters: list[dict[str, Any]] = field(default_factory=list)
    deliveries: list[dict[str, Any]] = field(default_factory=list)
    expiry: dict[str, Any] = field(default_factory=dict)

    @property
    def failed_total(self) -> int:
        return sum(int(q["failed"]) for q in self.queues)


def read(conn: psycopg.Connection, dlq_limit: int = 50, deliveries: int = 20) -> StatusReport:
    with conn.cursor(row_factory=dict_row) as cur:
        report = StatusReport(
            slots=cur.execute(SLOTS).fetchall(),
            queues=cur.execute(QUEUES).fetchall(),
            deliveries=(cur.execute(DELIVERIES, [deliveries]).fetchall()
                        if _exists(conn, "public.notifications") else []),
            expiry=cur.execute(EXPIRY_LATENESS).fetchone() or {},
        )
    report.dead_letters = dlq.list_failed(conn, None, dlq_limit)
    conn.rollback()
    return report


def _exists(conn: psycopg.Connection, table: str) -> bool:
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", [table]).fetchone()
    return bool(row and row[0])
