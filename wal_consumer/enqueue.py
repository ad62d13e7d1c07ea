"""Jobs, dead letters and the checkpoint, written in one database transaction.

The writer owns the consumer's ordinary (non-replication) connection. It writes jobs through
procrastinate's job manager on that connection, so they become visible only when the
checkpoint that covers them commits: a crash before that commit loses both, and the source
transactions are streamed again; a crash after it leaves the checkpoint ahead of them, and they
are skipped. That is the exactly-once guarantee.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import psycopg
from procrastinate import App, SyncPsycopgConnector
from procrastinate.exceptions import AlreadyEnqueued
from procrastinate.jobs import Job

from wal_consumer import metrics
from wal_consumer.changes import Change
from wal_consumer.errors import SetupMissingError
from wal_consumer.protocol import format_lsn, parse_lsn
from wal_consumer.routes import JobRequest

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Checkpoint:
    commit_lsn: int = 0
    end_lsn: int = 0
    advanced_lsn: int = 0

    @property
    def confirmed(self) -> int:
        """The highest position this checkpoint lets us confirm to the server."""
        return max(self.end_lsn, self.advanced_lsn)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    change: Change
    error: str


def procrastinate_app() -> App:
    """An App used only for its job manager: the consumer defers, it never runs tasks."""
    return App(connector=SyncPsycopgConnector())


def to_job(request: JobRequest) -> Job:
    return Job(
        id=None,
        queue=request.queue,
        lock=request.lock,
        queueing_lock=request.queueing_lock,
        task_name=request.task_name,
        priority=request.priority,
        task_kwargs=request.args,
        scheduled_at=request.scheduled_at,
    )


class BatchWriter:
    def __init__(self, conn: psycopg.Connection, slot_name: str, app: App | None = None):
        self.conn = conn
        self.slot_name = slot_name
        self.app = app or procrastinate_app()
        self.jobs_written = 0
        self.jobs_skipped_locked = 0

    def load_checkpoint(self) -> Checkpoint:
        try:
            row = self.conn.execute(
                "SELECT commit_lsn::text, end_lsn::text, advanced_lsn::text"
                " FROM grails_workers.consumer_checkpoint WHERE slot_name = %s",
                [self.slot_name],
            ).fetchone()
        except psycopg.errors.UndefinedTable:
            raise SetupMissingError(
                "the consumer's tables do not exist in this database: run `wal-consumer setup`"
            ) from None
        self.conn.rollback()
        if row is None:
            raise SetupMissingError(
                f"no checkpoint row for slot {self.slot_name!r}: run `wal-consumer setup` first"
            )
        return Checkpoint(*(parse_lsn(v) for v in row))

    def write_jobs(self, requests: Sequence[JobRequest]) -> None:
        """Defer the jobs in the open transaction. A job whose queueing lock already has a
        pending (`todo`) job, or an earlier job of the same batch, is skipped and counted in
        `jobs_skipped_locked`: a batch insert with one such conflict would fail whole
        (PITFALLS 21), so those are filtered out first, and the rare conflict that appears in
        between (another process deferring the same lock) falls back to one savepoint per
        lock-carrying job."""
        if not requests:
            return
        if not any(r.queueing_lock for r in requests):
            self._defer(requests)
            return
        # The SELECT opens the transaction if nothing has yet, so the blocks below are savepoints
        # inside it (on a non-autocommit connection), never transactions of their own.
        pending = self._pending_locks({r.queueing_lock for r in requests if r.queueing_lock})
        fresh: list[JobRequest] = []
        for r in requests:
            if r.queueing_lock is not None:
                if r.queueing_lock in pending:
                    self._skipped(r)
                    continue
                pending.add(r.queueing_lock)
            fresh.append(r)
        try:
            with self.conn.transaction():
                self._defer(fresh)
        except AlreadyEnqueued:
            log.info("a queueing lock was taken while this batch was written; deferring its "
                     "lock-carrying jobs one by one")
            self._defer([r for r in fresh if r.queueing_lock is None])
            for r in fresh:
                if r.queueing_lock is not None:
                    try:
                        with self.conn.transaction():
                            self._defer([r])
                    except AlreadyEnqueued:
                        self._skipped(r)

    def _defer(self, requests: Sequence[JobRequest]) -> None:
        if requests:
            self.app.job_manager.batch_defer_jobs(
                jobs=[to_job(r) for r in requests], connection=self.conn
            )
            self.jobs_written += len(requests)

    def _pending_locks(self, locks: set[str]) -> set[str]:
        rows = self.conn.execute(
            "SELECT queueing_lock FROM procrastinate_jobs WHERE status = 'todo'"
            " AND queueing_lock = ANY(%s)", [sorted(locks)]).fetchall()
        return {r[0] for r in rows}

    def _skipped(self, request: JobRequest) -> None:
        self.jobs_skipped_locked += 1
        metrics.SKIPPED_LOCKED.inc()
        log.info("skipped %s %s: a job with queueing lock %s is already pending",
                 request.task_name, request.args.get("event_key", ""), request.queueing_lock)

    def write_dead_letters(self, letters: Sequence[DeadLetter]) -> None:
        if not letters:
            return
        with self.conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO grails_workers.dead_letters (slot_name, event_key, commit_lsn,"
                " ordinal, commit_time, schema_name, table_name, operation, column_types,"
                " old_values, new_values, error)"
                " VALUES (%s, %s, %s::pg_lsn, %s, %s, %s, %s, %s, %s::jsonb, %s::jsonb,"
                " %s::jsonb, %s) ON CONFLICT (event_key) DO NOTHING",
                [
                    (
                        self.slot_name, d.change.event_key, format_lsn(d.change.commit_lsn),
                        d.change.ordinal, d.change.commit_time, d.change.info.schema,
                        d.change.info.table, d.change.operation,
                        json.dumps(d.change.info.column_types()),
                        _json_or_none(d.change.raw_json("old")),
                        _json_or_none(d.change.raw_json("new")), d.error,
                    )
                    for d in letters
                ],
            )
        for d in letters:
            log.error(
                "dead-lettered %s on %s at %s: %s", d.change.operation,
                d.change.info.qualified_name, d.change.event_key, d.error,
            )

    def commit(
        self, checkpoint: Checkpoint, transactions: int, last_commit_time: datetime | None
    ) -> None:
        self.conn.execute(
            "UPDATE grails_workers.consumer_checkpoint SET commit_lsn = %s::pg_lsn,"
            " end_lsn = %s::pg_lsn, transactions = transactions + %s,"
            " last_commit_time = coalesce(%s, last_commit_time), updated_at = now()"
            " WHERE slot_name = %s",
            [format_lsn(checkpoint.commit_lsn), format_lsn(checkpoint.end_lsn), transactions,
             last_commit_time, self.slot_name],
        )
        self.conn.commit()

    def record_idle_advance(self, lsn: int) -> None:
        self.conn.execute(
            "UPDATE grails_workers.consumer_checkpoint SET advanced_lsn = %s::pg_lsn,"
            " caught_up_at = now(), updated_at = now() WHERE slot_name = %s",
            [format_lsn(lsn), self.slot_name],
        )
        self.conn.commit()

    def record_caught_up(self) -> None:
        """Nothing is in flight and the stream is drained: the consumer has no lag now."""
        self.conn.execute(
            "UPDATE grails_workers.consumer_checkpoint SET caught_up_at = now()"
            " WHERE slot_name = %s",
            [self.slot_name],
        )
        self.conn.commit()

    def rollback(self) -> None:
        self.conn.rollback()


def _json_or_none(value: object) -> str | None:
    return None if value is None else json.dumps(value)
