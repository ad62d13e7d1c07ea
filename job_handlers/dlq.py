"""The dead-letter queue: failed jobs with their last error; retry or purge them."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.rows import dict_row

FAILED_JOBS = """
SELECT j.id, j.task_name, j.queue_name, j.args, j.attempts,
       e.error_type, e.error, e.at AS failed_at,
       (SELECT count(*) FROM grails_workers.job_errors x WHERE x.job_id = j.id) AS errors
  FROM procrastinate_jobs j
  LEFT JOIN LATERAL (SELECT error_type, error, at FROM grails_workers.job_errors
                      WHERE job_id = j.id ORDER BY id DESC LIMIT 1) e ON true
 WHERE j.status = 'failed' AND (%(task)s::text IS NULL OR j.task_name = %(task)s)
 ORDER BY j.id LIMIT %(limit)s
"""


def list_failed(conn: psycopg.Connection, task: str | None = None, limit: int = 100
                ) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(FAILED_JOBS, {"task": task, "limit": limit})
        return cur.fetchall()


def retry(conn: psycopg.Connection, job_ids: list[int] | None) -> list[int]:
    """Put failed jobs back in the queue, due now (procrastinate_retry_job_v2 takes failed)."""
    rows = conn.execute(
        "SELECT id FROM procrastinate_jobs WHERE status = 'failed'"
        " AND (%s::bigint[] IS NULL OR id = ANY(%s::bigint[])) ORDER BY id",
        [job_ids, job_ids]).fetchall()
    for (job_id,) in rows:
        conn.execute("SELECT procrastinate_retry_job_v2(%s, now(), NULL, NULL, NULL)", [job_id])
    conn.commit()
    return [r[0] for r in rows]


def purge(conn: psycopg.Connection, job_ids: list[int] | None,
          older_than_hours: float | None) -> int:
    cur = conn.execute(
        "DELETE FROM procrastinate_jobs j WHERE j.status = 'failed'"
        " AND (%s::bigint[] IS NULL OR j.id = ANY(%s::bigint[]))"
        " AND (%s::float8 IS NULL OR NOT EXISTS (SELECT 1 FROM procrastinate_events ev"
        "      WHERE ev.job_id = j.id AND ev.at > now() - %s * interval '1 hour'))",
        [job_ids, job_ids, older_than_hours, older_than_hours])
    conn.execute("DELETE FROM grails_workers.job_errors e WHERE NOT EXISTS"
                 " (SELECT 1 FROM procrastinate_jobs j WHERE j.id = e.job_id)")
    conn.commit()
    return cur.rowcount
