"""The replication connection: START_REPLICATION, reading CopyData, standby status updates.

psycopg 3 has no replication API, but a ``replication="database"`` connection in autocommit
mode accepts START_REPLICATION and leaves libpq in COPY_BOTH; we then read frames with
``pgconn.get_copy_data`` (non-blocking) and write status updates with ``put_copy_data``.
Decoding the frames is the sans-IO protocol module's job.
"""

from __future__ import annotations

import logging
import select
import time

import psycopg
from psycopg import pq

from wal_consumer.errors import (
    PermissionMissingError,
    ServerNotReadyError,
    SlotBusyError,
    SlotLostError,
)
from wal_consumer.protocol import (
    PrimaryKeepalive,
    XLogData,
    decode_copy_data,
    encode_standby_status,
    format_lsn,
    now_pg_us,
)

log = logging.getLogger(__name__)

# Text output of the walsender follows its session settings; pin the ones psycopg's loaders
# depend on (ISO dates, UTC offsets, exact floats).
SESSION_OPTIONS = "-c datestyle=ISO,YMD -c timezone=UTC -c intervalstyle=postgres " \
                  "-c extra_float_digits=3"


class StreamClosed(psycopg.OperationalError):
    """The server ended the replication stream."""


def classify_connect_error(exc: psycopg.OperationalError) -> Exception:
    """Turn the server's refusals a person must fix into errors that say how."""
    message = str(exc)
    if "replication role" in message or "permission denied to start WAL sender" in message:
        return PermissionMissingError(
            "the role in DATABASE_URL may not stream changes: grant it the REPLICATION "
            "attribute (ALTER ROLE <role> REPLICATION) or use the role `wal-consumer setup "
            f"--roles` creates. Server said: {message.strip()}"
        )
    if "max_wal_senders" in message:
        return ServerNotReadyError(
            "no free WAL sender: raise max_wal_senders in postgresql.conf and restart "
            f"PostgreSQL (or stop another replication client). Server said: {message.strip()}"
        )
    if "wal_level" in message:
        return ServerNotReadyError(
            f"set wal_level = logical and restart PostgreSQL. Server said: {message.strip()}"
        )
    return exc


class ReplicationStream:
    def __init__(self, dsn: str, slot: str, publication: str, application_name: str):
        self.dsn = dsn
        self.slot = slot
        self.publication = publication
        self.application_name = application_name
        self.conn: psycopg.Connection | None = None
        self.last_status_sent = 0.0
        self.written_lsn = 0

    def start(self, start_lsn: int) -> None:
        try:
            conn = psycopg.connect(
                self.dsn, replication="database", autocommit=True,
                application_name=self.application_name, options=SESSION_OPTIONS,
            )
        except psycopg.OperationalError as exc:
            raise classify_connect_error(exc) from exc
        try:
            conn.execute(
                f"START_REPLICATION SLOT {self.slot} LOGICAL {format_lsn(start_lsn)}"
                f" (proto_version '1', publication_names '{self.publication}')"
            )
        except psycopg.errors.ObjectInUse as exc:
            conn.close()
            raise SlotBusyError(f"slot {self.slot}: {exc.diag.message_primary}") from exc
        except psycopg.errors.UndefinedObject as exc:
            conn.close()
            raise SlotLostError(
                f"slot {self.slot} does not exist: {exc.diag.message_primary} "
                "(run `wal-consumer setup` to create it, then `wal-consumer backfill`)"
            ) from exc
        except psycopg.errors.ObjectNotInPrerequisiteState as exc:
            conn.close()
            raise SlotLostError(
                f"slot {self.slot} cannot be used: {exc.diag.message_primary} (WAL it needs "
                "was removed; drop and recreate the slot, then run `wal-consumer backfill`)"
            ) from exc
        self.conn = conn
        self.written_lsn = start_lsn
        self.last_status_sent = 0.0

    @property
    def pgconn(self) -> pq.abc.PGconn:
        assert self.conn is not None, "stream not started"
        return self.conn.pgconn

    def read(self, timeout: float) -> XLogData | PrimaryKeepalive | None:
        """The next frame; None when nothing arrived within ``timeout`` seconds (0: don't wait)."""
        pgconn = self.pgconn
        deadline = None
        while True:
            nbytes, data = pgconn.get_copy_data(1)
            if nbytes > 0:
                frame = decode_copy_data(bytes(data))
                if isinstance(frame, XLogData) and frame.wal_end > self.written_lsn:
                    self.written_lsn = frame.wal_end
                return frame
            if nbytes == -1:
                result = pgconn.get_result()
                message = (
                    result.error_message.decode(errors="replace").strip()
                    if result is not None else ""
                )
                raise StreamClosed(f"replication stream ended: {message or 'server closed it'}")
            if nbytes == -2:
                raise psycopg.OperationalError(
                    "replication stream error: "
                    + pgconn.error_message.decode(errors="replace").strip()
                )
            if deadline is None:
                deadline = time.monotonic() + timeout
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            readable, _, _ = select.select([pgconn.socket], [], [], remaining)
            if readable:
                pgconn.consume_input()

    def send_status(self, flush_lsn: int, *, reply: bool = False) -> None:
        """Standby status update: written = what we received, flushed/applied = ``flush_lsn``."""
        pgconn = self.pgconn
        write = max(self.written_lsn, flush_lsn)
        pgconn.put_copy_data(encode_standby_status(write, flush_lsn, flush_lsn, now_pg_us(), reply))
        while pgconn.flush() == 1:
            select.select([], [pgconn.socket], [], 1.0)
        self.last_status_sent = time.monotonic()

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except Exception:
                pass
            self.conn = None
