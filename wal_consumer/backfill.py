"""`wal-consumer backfill`: the jobs the stream would have made for rows that predate it.

For every active listing and pending offer with an expiry: an `expire-orders` job at
`expires_at`; for every name with an active listing: a high-priority `sync-ens-data`. Rows are
read with one server-side cursor and written in chunks, each chunk in its own transaction
together with its ledger rows (`grails_workers.backfill_ledger`), so an interrupted run can be
started again and a second run adds nothing. A job the stream already queued (same order and
expiry, or a pending sync of the same name) is not queued again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import psycopg

from wal_consumer.enqueue import BatchWriter
from wal_consumer.routes import EXPIRE_ORDERS, HIGH_PRIORITY, JobRequest, sync_ens_data
from wal_consumer.settings import ConsumerSettings

Progress = Callable[[str, int, int], None]

EXPIRY_SOURCES = {
    "listing": ("listings", "active"),
    "offer": ("offers", "pending"),
}


@dataclass
class BackfillSummary:
    enqueued: dict[str, int] = field(default_factory=dict)
    skipped: int = 0

    def line(self) -> str:
        parts = ", ".join(f"{n} {kind}" for kind, n in self.enqueued.items())
        return f"backfill: enqueued {parts or 'nothing'}; {self.skipped} already enqueued"


def _candidates(
    conn: psycopg.Connection, kind: str, naive_tz: ZoneInfo
) -> tuple[int, Iterator[tuple[str, JobRequest]]]:
    if kind == "sync":
        count_sql = ("SELECT count(DISTINCT ens_name_id) FROM listings WHERE status = 'active'")
        rows_sql = (
            "SELECT DISTINCT l.ens_name_id FROM listings l WHERE l.status = 'active'"
            " AND NOT EXISTS (SELECT 1 FROM procrastinate_jobs j WHERE j.task_name ="
            " 'sync-ens-data' AND j.status = 'todo'"
            " AND (j.args->>'ens_name_id')::bigint = l.ens_name_id) ORDER BY 1"
        )
    else:
        table, status = EXPIRY_SOURCES[kind]
        count_sql = (f"SELECT count(*) FROM {table} WHERE status = '{status}'"  # noqa: S608
                     " AND expires_at IS NOT NULL")
        rows_sql = (
            f"SELECT o.id, o.expires_at FROM {table} o WHERE o.status = '{status}'"  # noqa: S608
            " AND o.expires_at IS NOT NULL AND NOT EXISTS (SELECT 1 FROM procrastinate_jobs j"
            f" WHERE j.task_name = 'expire-orders' AND j.status = 'todo' AND j.args->>'type' ="
            f" '{kind}' AND (j.args->>'id')::bigint = o.id"
            " AND j.scheduled_at = o.expires_at) ORDER BY o.id"
        )
    row = conn.execute(count_sql.encode()).fetchone()
    total = int(row[0]) if row else 0

    def generate() -> Iterator[tuple[str, JobRequest]]:
        today = date.today().isoformat()
        with conn.cursor(name=f"backfill_{kind}") as cur:
            cur.itersize = 2000
            cur.execute(rows_sql.encode())
            for values in cur:
                yield _request(kind, values, today, naive_tz)

    return total, generate()


def _request(kind: str, values: tuple[Any, ...], today: str, naive_tz: ZoneInfo
             ) -> tuple[str, JobRequest]:
    if kind == "sync":
        (name_id,) = values
        return f"sync:{name_id}:{today}", sync_ens_data(
            name_id, "backfill", f"backfill:name:{name_id}", priority=HIGH_PRIORITY)
    order_id, expires_at = values
    if isinstance(expires_at, datetime) and expires_at.tzinfo is None:
        expires_at = expires_at.replace(tzinfo=naive_tz)
    return f"expire:{kind}:{order_id}:{expires_at.isoformat()}", JobRequest(
        EXPIRE_ORDERS,
        {"type": kind, "id": order_id, "expires_at": expires_at.isoformat(),
         "event_key": f"backfill:{kind}:{order_id}"},
        scheduled_at=expires_at,
    )


def _write_chunk(conn: psycopg.Connection, writer: BatchWriter,
                 chunk: list[tuple[str, JobRequest]]) -> int:
    """Ledger first: only keys new to the ledger get a job, in the same transaction."""
    with conn.cursor() as cur:
        cur.execute(
            "INSERT INTO grails_workers.backfill_ledger (job_key) SELECT unnest(%s::text[])"
            " ON CONFLICT DO NOTHING RETURNING job_key",
            [[key for key, _ in chunk]],
        )
        fresh = {r[0] for r in cur.fetchall()}
    writer.write_jobs([request for key, request in chunk if key in fresh])
    conn.commit()
    return len(fresh)


def backfill(settings: ConsumerSettings, chunk_size: int = 1000,
             progress: Progress | None = None) -> BackfillSummary:
    summary = BackfillSummary()
    naive_tz = ZoneInfo(settings.naive_timestamp_timezone)
    with psycopg.connect(settings.database_url) as read_conn, \
            psycopg.connect(settings.database_url) as write_conn:
        writer = BatchWriter(write_conn, settings.slot)
        for kind, label in (("listing", "listing expiries"), ("offer", "offer expiries"),
                            ("sync", "ENS syncs")):
            total, requests = _candidates(read_conn, kind, naive_tz)
            done = enqueued = 0
            chunk: list[tuple[str, JobRequest]] = []
            for item in requests:
                chunk.append(item)
                if len(chunk) >= chunk_size:
                    enqueued += _write_chunk(write_conn, writer, chunk)
                    done += len(chunk)
                    chunk = []
                    if progress:
                        progress(label, done, total)
            if chunk:
                enqueued += _write_chunk(write_conn, writer, chunk)
                done += len(chunk)
            if progress:
                progress(label, done, total)
            read_conn.rollback()
            summary.enqueued[label] = enqueued
            summary.skipped += total - enqueued
    return summary
