"""The consumer daemon: stream -> decode -> route -> enqueue + checkpoint -> confirm.

One session = one replication connection plus one ordinary connection for writes. Jobs of
finished source transactions are grouped into one database transaction with the checkpoint;
the slot's flush position is confirmed only after that commit, with the end LSN of the last
transaction it covers (PITFALLS 5, 7). A huge source transaction is written in chunks inside an
open database transaction that holds nothing else, so memory stays bounded and a shutdown can
still commit every finished transaction.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import datetime
from zoneinfo import ZoneInfo

import psycopg
from procrastinate.exceptions import ConnectorException

from wal_consumer import metrics
from wal_consumer.changes import Change, Operation, RelationInfo
from wal_consumer.enqueue import BatchWriter, Checkpoint, DeadLetter
from wal_consumer.errors import RouteError, SlotBusyError, SlotLostError
from wal_consumer.protocol import (
    Begin,
    Commit,
    Delete,
    Insert,
    LogicalMessage,
    Origin,
    PrimaryKeepalive,
    Relation,
    Truncate,
    Type,
    Update,
    XLogData,
    decode_message,
    format_lsn,
    parse_lsn,
    pg_time_to_datetime,
)
from wal_consumer.provision import check_server, tables_without_full_identity
from wal_consumer.routes import JobRequest, route
from wal_consumer.settings import ConsumerSettings
from wal_consumer.stream import ReplicationStream

log = logging.getLogger(__name__)
POLL_SECONDS = 0.2  # longest a read blocks before the loop looks at the stop flag again
CAUGHT_UP_EVERY_S = 1.0  # how often an idle consumer records that it has no lag
LEADER_LOCK_CLASS = 0x6772  # advisory lock (class, hashtext(slot)): one streaming consumer a slot
LOCK_WAIT = "1s"  # a standby's lock request is renewed this often so it can see SIGTERM
# a holder of our slot that is not a wal-consumer is an error after this long
BUSY_SLOT_PATIENCE_S = 15.0


@dataclass(slots=True)
class SourceTransaction:
    commit_lsn: int
    commit_time: datetime
    skip: bool
    ordinal: int = 0
    jobs: list[JobRequest] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)


@dataclass(slots=True)
class Batch:
    """Finished source transactions whose jobs are not committed yet."""

    transactions: int = 0
    last: Checkpoint | None = None
    last_commit_time: datetime | None = None
    started: float = 0.0
    jobs: list[JobRequest] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    jobs_in_db: int = 0
    changes: Counter[tuple[str, str]] = field(default_factory=Counter)
    unrouted: Counter[tuple[str, str]] = field(default_factory=Counter)


def is_connection_error(exc: BaseException) -> bool:
    if isinstance(exc, psycopg.OperationalError):
        return True
    return isinstance(exc, ConnectorException) and isinstance(
        exc.__cause__, psycopg.OperationalError
    )


class Consumer:
    def __init__(self, settings: ConsumerSettings, stop: threading.Event | None = None):
        self.settings = settings
        self.stop = stop or threading.Event()
        self.naive_tz = ZoneInfo(settings.naive_timestamp_timezone)
        self.published = {t.rpartition(".")[2] for t in settings.tables}
        # starting | standby | streaming | reconnecting | stopped: read by /readyz
        self.state = "starting"

    def _set_state(self, state: str) -> None:
        self.state = state
        metrics.LEADER.set(1 if state == "streaming" else 0)

    # -- the outer loop: sessions, reconnects, standby waiting -------------------------------

    def run(self) -> int:
        attempt = 0
        while not self.stop.is_set():
            try:
                self._session()
                attempt = 0
            except Exception as exc:
                if not is_connection_error(exc) or self.stop.is_set():
                    raise
                attempt += 1
                self._set_state("reconnecting")
                metrics.RECONNECTS.inc()
                delay = min(self.settings.reconnect_max_delay_s, 0.5 * 2 ** min(attempt, 10))
                delay *= random.uniform(0.5, 1.0)
                log.warning(
                    "replication session lost (%s); reconnecting in %.1f s (attempt %d)",
                    str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__,
                    delay, attempt,
                )
                self.stop.wait(delay)
        self._set_state("stopped")
        log.info("consumer stopped")
        return 0

    # -- one session --------------------------------------------------------------------------

    def _session(self) -> None:
        s = self.settings
        with psycopg.connect(s.database_url, application_name="wal-consumer-writer") as conn:
            if not self._lead(conn):
                return
            check_server(conn)
            conn.rollback()
            writer = BatchWriter(conn, s.slot)
            committed = writer.load_checkpoint()
            self._startup_checks(conn, committed)
            stream = ReplicationStream(s.database_url, s.slot, s.publication, "wal-consumer")
            if not self._start_stream(stream, committed):
                return
            self._set_state("streaming")
            log.info(
                "streaming slot %s from %s (checkpoint commit %s)", s.slot,
                format_lsn(committed.confirmed), format_lsn(committed.commit_lsn),
            )
            try:
                _Session(self, stream, writer, committed).loop()
            finally:
                stream.close()

    def _lead(self, conn: psycopg.Connection) -> bool:
        """Hold the slot's advisory lock on the writer connection, waiting as a hot standby.

        The lock lives on the connection that commits jobs and checkpoints, so a consumer that
        lost its connection (and with it the lock) can commit nothing more: at most one
        consumer writes for a slot. The wait is a lock request on the server, renewed every
        LOCK_WAIT, so a standby takes over as soon as the holder's session ends.
        """
        slot = self.settings.slot
        announced = False
        while not self.stop.is_set():
            try:
                conn.execute(f"SET LOCAL lock_timeout = '{LOCK_WAIT}'")
                conn.execute("SELECT pg_advisory_lock(%s, hashtext(%s))",
                             [LEADER_LOCK_CLASS, slot])
                conn.commit()
            except psycopg.errors.LockNotAvailable:
                conn.rollback()
                if not announced:
                    announced = True
                    self._set_state("standby")
                    log.info("standby: slot %s is streamed by another wal-consumer (%s); "
                             "waiting to take over", slot, self._lock_holder(conn))
                continue
            if announced:
                log.info("taking over slot %s", slot)
            return True
        return False

    def _lock_holder(self, conn: psycopg.Connection) -> str:
        row = conn.execute(
            "SELECT l.pid, a.application_name, a.client_addr FROM pg_locks l"
            " LEFT JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory'"
            " AND l.classid = %s AND l.objid = hashtext(%s)::oid AND l.granted",
            [LEADER_LOCK_CLASS, self.settings.slot],
        ).fetchone()
        conn.rollback()
        if row is None:
            return "holder unknown"
        return f"backend PID {row[0]}, {row[1] or 'no application name'}, from {row[2] or 'local'}"

    def _start_stream(self, stream: ReplicationStream, committed: Checkpoint) -> bool:
        """START_REPLICATION; while the previous holder's walsender lingers, retry briefly."""
        give_up = time.monotonic() + BUSY_SLOT_PATIENCE_S
        while not self.stop.is_set():
            try:
                stream.start(committed.confirmed)
                return True
            except SlotBusyError as exc:
                # We hold the lock, so the holder is a consumer that is just exiting, or a
                # client that is not a wal-consumer at all.
                if time.monotonic() >= give_up:
                    raise SlotBusyError(
                        f"{exc}, and that process is not a wal-consumer: stop it, e.g. SELECT "
                        "pg_terminate_backend(<pid>), or give this consumer its own WAL_SLOT"
                    ) from exc
                self.stop.wait(0.1)
        return False

    def _startup_checks(self, conn: psycopg.Connection, committed: Checkpoint) -> None:
        s = self.settings
        for table in tables_without_full_identity(conn, s.tables):
            log.warning(
                "table %s does not have REPLICA IDENTITY FULL: its updates carry no old row, "
                "so price, status and owner changes cannot be detected and will be "
                "dead-lettered. Fix: `wal-consumer setup` (or ALTER TABLE %s REPLICA "
                "IDENTITY FULL)", table, table,
            )
        row = conn.execute(
            "SELECT confirmed_flush_lsn::text, active_pid, wal_status"
            " FROM pg_replication_slots WHERE slot_name = %s",
            [s.slot],
        ).fetchone()
        conn.rollback()
        if row is None:
            raise SlotLostError(
                f"replication slot {s.slot} does not exist (run `wal-consumer setup` to create "
                "it; rows changed meanwhile need `wal-consumer backfill`)"
            )
        confirmed_text, active_pid, wal_status = row
        if wal_status == "lost":
            raise SlotLostError(
                f"replication slot {s.slot} is lost (WAL it needed was removed): drop and "
                "recreate it (`wal-consumer slot rebuild`), then backfill"
            )
        del active_pid  # a lingering previous walsender is waited for in _start_stream
        slot_confirmed = parse_lsn(confirmed_text) if confirmed_text else 0
        if slot_confirmed > committed.confirmed:
            metrics.SLOT_AHEAD.inc()
            log.warning(
                "slot %s is confirmed at %s, ahead of our checkpoint %s by %d bytes: changes "
                "in between were consumed by another client and have no jobs; run "
                "`wal-consumer backfill` if that was not intended",
                s.slot, confirmed_text, format_lsn(committed.confirmed),
                slot_confirmed - committed.confirmed,
            )


class _Session:
    def __init__(
        self, consumer: Consumer, stream: ReplicationStream, writer: BatchWriter,
        committed: Checkpoint,
    ):
        self.consumer = consumer
        self.settings = consumer.settings
        self.stream = stream
        self.writer = writer
        self.committed = committed
        self.relations: dict[int, RelationInfo] = {}
        self.type_names: dict[int, str] = {}
        self.warned_identity: set[int] = set()
        self.txn: SourceTransaction | None = None
        self.batch = Batch()
        self.db_has_partial = False
        self.last_advance = 0.0
        self.last_caught_up = 0.0

    def loop(self) -> None:
        s = self.settings
        stop = self.consumer.stop
        while True:
            if stop.is_set():
                self._shutdown()
                return
            frame = self.stream.read(0)
            if frame is None:
                self._on_idle()
                frame = self.stream.read(POLL_SECONDS)
                if frame is None:
                    continue
            if isinstance(frame, XLogData):
                self._on_wal(frame)
            else:
                self._on_keepalive(frame)
            now = time.monotonic()
            batch_age_ms = (now - self.batch.started) * 1000
            if self.batch.transactions and batch_age_ms >= s.batch_max_delay_ms:
                self._commit_batch()
            elif now - self.stream.last_status_sent >= s.status_interval_s:
                # a long backlog or a huge transaction never leaves the stream idle
                self.stream.send_status(self.committed.confirmed)

    # -- frames ------------------------------------------------------------------------------

    def _on_idle(self) -> None:
        """Nothing more to read right now: commit what is finished, keep the server informed."""
        if self.batch.transactions:
            self._commit_batch()
        now = time.monotonic()
        if self.txn is None and not self.db_has_partial and (
            now - self.last_caught_up >= CAUGHT_UP_EVERY_S
        ):
            self.writer.record_caught_up()
            self.last_caught_up = now
        if now - self.stream.last_status_sent >= self.settings.status_interval_s:
            self.stream.send_status(self.committed.confirmed)

    def _on_keepalive(self, frame: PrimaryKeepalive) -> None:
        idle = self.txn is None and not self.batch.transactions and not self.db_has_partial
        now = time.monotonic()
        if (
            idle
            and frame.wal_end > self.committed.confirmed
            and now - self.last_advance >= self.settings.status_interval_s
        ):
            # Nothing published is in flight: everything before wal_end has been sent to us
            # and handled, so the slot may move there (PITFALLS 9).
            self.writer.record_idle_advance(frame.wal_end)
            self.committed = replace(self.committed, advanced_lsn=frame.wal_end)
            self.last_advance = now
            self.stream.send_status(self.committed.confirmed)
        elif frame.reply_requested:
            self.stream.send_status(self.committed.confirmed)

    def _on_wal(self, frame: XLogData) -> None:
        msg = decode_message(frame.payload)
        if isinstance(msg, (Insert, Update, Delete)):
            self._on_change(msg)
        elif isinstance(msg, Begin):
            self.txn = SourceTransaction(
                msg.final_lsn, pg_time_to_datetime(msg.commit_time),
                skip=msg.final_lsn <= self.committed.commit_lsn,
            )
        elif isinstance(msg, Commit):
            self._on_commit(msg)
        elif isinstance(msg, Relation):
            self._on_relation(msg)
        elif isinstance(msg, Type):
            self.type_names[msg.oid] = f"{msg.namespace}.{msg.name}"
        elif isinstance(msg, Truncate):
            if self.txn is not None and not self.txn.skip:
                self.txn.ordinal += 1
                names = [self._relation_name(oid) for oid in msg.relation_oids]
                log.warning(
                    "TRUNCATE of %s: no jobs are made for truncated rows (the expiry safety "
                    "net and reconciliation cover what they held)", ", ".join(names),
                )
        elif isinstance(msg, (LogicalMessage, Origin)):
            log.debug("ignoring %s", msg)

    def _relation_name(self, oid: int) -> str:
        info = self.relations.get(oid)
        return info.qualified_name if info else f"relation {oid}"

    def _on_relation(self, msg: Relation) -> None:
        previous = self.relations.get(msg.oid)
        self.relations[msg.oid] = RelationInfo.build(msg, self.type_names)
        if previous is not None and previous.relation.columns != msg.columns:
            log.info(
                "table %s.%s changed: columns now %s", msg.namespace, msg.name,
                ", ".join(c.name for c in msg.columns),
            )
        if msg.replica_identity != "f" and msg.oid not in self.warned_identity:
            self.warned_identity.add(msg.oid)
            log.warning(
                "table %s.%s is streamed with REPLICA IDENTITY %r, not FULL: run "
                "`wal-consumer setup`", msg.namespace, msg.name, msg.replica_identity,
            )

    def _on_change(self, msg: Insert | Update | Delete) -> None:
        txn = self.txn
        if txn is None:
            raise psycopg.OperationalError("row change outside a transaction in the stream")
        if txn.skip:
            return
        txn.ordinal += 1
        info = self.relations.get(msg.relation_oid)
        if info is None:
            raise psycopg.OperationalError(
                f"change for relation {msg.relation_oid} before its Relation message"
            )
        operation: Operation
        if isinstance(msg, Insert):
            operation, new, old = "insert", msg.new, None
        elif isinstance(msg, Update):
            operation, new, old = "update", msg.new, msg.old
        else:
            operation, new, old = "delete", None, msg.old
        change = Change(
            operation, info, new, old, txn.commit_lsn, txn.ordinal,
            txn.commit_time, self.consumer.naive_tz,
        )
        self.batch.changes[(info.table, operation)] += 1
        try:
            jobs = route(change)
        except RouteError as exc:
            txn.dead.append(DeadLetter(change, str(exc)))
            return
        if not jobs:
            self.batch.unrouted[(info.table, operation)] += 1
            return
        txn.jobs.extend(jobs)
        if len(txn.jobs) >= self.settings.write_chunk_jobs:
            self._spill(txn)

    def _spill(self, txn: SourceTransaction) -> None:
        """Write part of a large source transaction inside an open database transaction."""
        if self.batch.transactions:
            self._commit_batch()
        self._write(txn.jobs, txn.dead)
        self.db_has_partial = True

    def _on_commit(self, msg: Commit) -> None:
        txn = self.txn
        self.txn = None
        if txn is None:
            raise psycopg.OperationalError("Commit without Begin in the stream")
        if txn.skip:
            metrics.SKIPPED_TRANSACTIONS.inc()
            log.info("skipped transaction %s: at or below the checkpoint",
                     format_lsn(msg.commit_lsn))
            return
        batch = self.batch
        if not batch.transactions:
            batch.started = time.monotonic()
        batch.transactions += 1
        batch.last = Checkpoint(msg.commit_lsn, msg.end_lsn, self.committed.advanced_lsn)
        batch.last_commit_time = pg_time_to_datetime(msg.commit_time)
        batch.jobs.extend(txn.jobs)
        batch.dead.extend(txn.dead)
        self.db_has_partial = False
        if len(batch.jobs) >= self.settings.write_chunk_jobs:
            self._write(batch.jobs, batch.dead)
        if batch.jobs_in_db >= self.settings.batch_max_jobs:
            self._commit_batch()

    # -- writing ------------------------------------------------------------------------------

    def _write(self, jobs: list[JobRequest], dead: list[DeadLetter]) -> None:
        """Write buffered jobs and dead letters into the open transaction, then empty them."""
        self.writer.write_jobs(jobs)
        self.writer.write_dead_letters(dead)
        self.batch.jobs_in_db += len(jobs)
        for task, n in Counter(j.task_name for j in jobs).items():
            metrics.JOBS.labels(task).inc(n)
        metrics.DEAD_LETTERS.inc(len(dead))
        jobs.clear()
        dead.clear()

    def _commit_batch(self) -> None:
        batch = self.batch
        if not batch.transactions or batch.last is None:
            return
        started = time.monotonic()
        self._write(batch.jobs, batch.dead)
        self.writer.commit(batch.last, batch.transactions, batch.last_commit_time)
        self.committed = batch.last
        metrics.BATCH_COMMIT_SECONDS.observe(time.monotonic() - started)
        metrics.TRANSACTIONS.inc(batch.transactions)
        for (table, operation), n in batch.changes.items():
            metrics.CHANGES.labels(table, operation).inc(n)
        for (table, operation), n in batch.unrouted.items():
            metrics.UNROUTED_CHANGES.labels(table, operation).inc(n)
        metrics.CONFIRMED_LSN.set(self.committed.confirmed)
        self.batch = Batch()
        if time.monotonic() - self.stream.last_status_sent >= 1.0:
            self.stream.send_status(self.committed.confirmed)

    def _shutdown(self) -> None:
        """Finish the batch in hand: commit finished transactions, confirm, drop the rest."""
        if self.db_has_partial:
            # The open database transaction holds part of an unfinished source transaction
            # and nothing else (finished ones were committed before spilling): roll it back;
            # the server resends that transaction to whoever streams next.
            self.writer.rollback()
        else:
            self._commit_batch()
        self.stream.send_status(self.committed.confirmed)
        log.info("shut down cleanly at %s", format_lsn(self.committed.confirmed))
