"""`wal-consumer setup`: make a database ready for the consumer, idempotently.

Checks the server (wal_level, slot and sender capacity), applies our migrations and
procrastinate's schema, sets REPLICA IDENTITY FULL on the published tables, creates or syncs the
publication, then creates the slot (publication first: PITFALLS 15). Every step first looks at
what is there; a second run reports that nothing needed doing.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import psycopg
from procrastinate.schema import SchemaManager
from psycopg import sql

from wal_consumer import sqlfiles
from wal_consumer.errors import (
    PermissionMissingError,
    ServerNotReadyError,
    SetupMissingError,
)
from wal_consumer.roles import create_roles
from wal_consumer.settings import ConsumerSettings, split_table

log = logging.getLogger(__name__)
SETUP_LOCK_KEY = 0x6772_6169_6C73  # "grails": serialises concurrent `setup` runs


@dataclass
class SetupReport:
    actions: list[str] = field(default_factory=list)

    def did(self, action: str) -> None:
        log.info("setup: %s", action)
        self.actions.append(action)


def check_server(conn: psycopg.Connection) -> None:
    """Raise a ServerNotReadyError naming the setting to change, if logical decoding is off."""
    row = conn.execute(
        "SELECT current_setting('wal_level'), current_setting('max_replication_slots')::int,"
        " current_setting('max_wal_senders')::int,"
        " (SELECT count(*) FROM pg_replication_slots)"
    ).fetchone()
    assert row is not None
    wal_level, max_slots, max_senders, used_slots = row
    if wal_level != "logical":
        raise ServerNotReadyError(
            f"wal_level is {wal_level!r}; logical decoding needs wal_level = logical "
            "(ALTER SYSTEM SET wal_level = logical; then restart PostgreSQL)"
        )
    if max_slots < 1 or max_senders < 1:
        raise ServerNotReadyError(
            f"max_replication_slots = {max_slots}, max_wal_senders = {max_senders}: both must be "
            "at least 1 (set them in postgresql.conf and restart PostgreSQL)"
        )
    del used_slots


def published_tables_missing(conn: psycopg.Connection, tables: Sequence[str]) -> list[str]:
    missing = []
    for qualified in tables:
        if conn.execute("SELECT to_regclass(%s)", [qualified]).fetchone() == (None,):
            missing.append(qualified)
    return missing


def tables_without_full_identity(conn: psycopg.Connection, tables: Sequence[str]) -> list[str]:
    rows = conn.execute(
        "SELECT n.nspname || '.' || c.relname FROM pg_class c"
        " JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname || '.' || c.relname = ANY(%s) AND c.relreplident <> 'f'"
        " ORDER BY 1",
        [list(tables)],
    ).fetchall()
    return [r[0] for r in rows]


def publication_tables(conn: psycopg.Connection, publication: str) -> list[str] | None:
    if conn.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", [publication]).fetchone():
        rows = conn.execute(
            "SELECT schemaname || '.' || tablename FROM pg_publication_tables"
            " WHERE pubname = %s ORDER BY 1",
            [publication],
        ).fetchall()
        return [r[0] for r in rows]
    return None


def slot_exists(conn: psycopg.Connection, slot: str) -> bool:
    return conn.execute(
        "SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", [slot]
    ).fetchone() is not None


def _apply_migrations(conn: psycopg.Connection, report: SetupReport) -> None:
    conn.execute("CREATE SCHEMA IF NOT EXISTS grails_workers")
    conn.execute(
        "CREATE TABLE IF NOT EXISTS grails_workers.schema_migrations"
        " (version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
    )
    applied = {r[0] for r in conn.execute("SELECT version FROM grails_workers.schema_migrations")}
    for version, text in sqlfiles.migrations():
        if version in applied:
            continue
        conn.execute(text.encode())
        conn.execute("INSERT INTO grails_workers.schema_migrations (version) VALUES (%s)",
                     [version])
        report.did(f"applied migration {version}")


def _apply_procrastinate_schema(conn: psycopg.Connection, report: SetupReport) -> None:
    if conn.execute("SELECT to_regclass('procrastinate_jobs')").fetchone() != (None,):
        return
    conn.execute(SchemaManager.get_schema().encode())
    report.did("created procrastinate's job queue schema")


# The worker's /metrics counts failed jobs (the DLQ) at every scrape; procrastinate indexes only
# todo and doing jobs, and the table keeps a week of succeeded ones.
FAILED_JOBS_INDEX = "grails_workers_failed_jobs"


def _ensure_queue_indexes(conn: psycopg.Connection, report: SetupReport) -> None:
    if conn.execute("SELECT to_regclass(%s)", [FAILED_JOBS_INDEX]).fetchone() != (None,):
        return
    conn.execute(sql.SQL("CREATE INDEX {} ON procrastinate_jobs (queue_name, task_name)"
                         " WHERE status = 'failed'").format(sql.Identifier(FAILED_JOBS_INDEX)))
    report.did(f"created index {FAILED_JOBS_INDEX} (failed jobs, counted by the metrics)")


def _sync_publication(
    conn: psycopg.Connection, settings: ConsumerSettings, report: SetupReport
) -> None:
    wanted = sorted(settings.tables)
    current = publication_tables(conn, settings.publication)
    table_list = sql.SQL(", ").join(
        sql.Identifier(*split_table(t)) for t in wanted
    )
    if current is None:
        conn.execute(
            sql.SQL("CREATE PUBLICATION {} FOR TABLE {}").format(
                sql.Identifier(settings.publication), table_list
            )
        )
        report.did(f"created publication {settings.publication} for {', '.join(wanted)}")
    elif current != wanted:
        conn.execute(
            sql.SQL("ALTER PUBLICATION {} SET TABLE {}").format(
                sql.Identifier(settings.publication), table_list
            )
        )
        report.did(
            f"publication {settings.publication}: tables {', '.join(current) or '(none)'}"
            f" -> {', '.join(wanted)}"
        )


def setup(
    settings: ConsumerSettings, *, dev_schema: bool = False,
    roles: tuple[str, str] | None = None,
) -> SetupReport:
    """Prepare the database; ``roles`` = (consumer role, worker role) to create them too."""
    report = SetupReport()
    with psycopg.connect(settings.database_url) as conn:
        check_server(conn)
        conn.execute("SELECT pg_advisory_xact_lock(%s)", [SETUP_LOCK_KEY])
        if dev_schema:
            missing_before = published_tables_missing(conn, settings.tables)
            conn.execute(sqlfiles.read("marketplace_dev.sql").encode())
            if missing_before:
                report.did("created the development marketplace tables")
        missing = published_tables_missing(conn, settings.tables)
        if missing:
            raise SetupMissingError(
                f"table(s) {', '.join(missing)} do not exist in this database; create the "
                "marketplace schema first (or `wal-consumer setup --dev-schema` for a demo "
                "database), or set WAL_TABLES"
            )
        _apply_migrations(conn, report)
        _apply_procrastinate_schema(conn, report)
        _ensure_queue_indexes(conn, report)
        for table in tables_without_full_identity(conn, settings.tables):
            conn.execute(
                sql.SQL("ALTER TABLE {} REPLICA IDENTITY FULL").format(
                    sql.Identifier(*split_table(table))
                )
            )
            report.did(f"set REPLICA IDENTITY FULL on {table}")
        _sync_publication(conn, settings, report)
        if roles is not None:
            create_roles(conn, settings.tables, roles[0], roles[1], report.did)
        inserted = conn.execute(
            "INSERT INTO grails_workers.consumer_checkpoint (slot_name) VALUES (%s)"
            " ON CONFLICT DO NOTHING RETURNING 1",
            [settings.slot],
        ).fetchone()
        if inserted:
            report.did(f"created checkpoint for slot {settings.slot}")
        conn.commit()
        conn.autocommit = True  # a slot cannot be created in a transaction that wrote
        created_slot = not slot_exists(conn, settings.slot)
        if created_slot:
            try:
                row = conn.execute(
                    "SELECT lsn FROM pg_create_logical_replication_slot(%s, 'pgoutput')",
                    [settings.slot],
                ).fetchone()
            except psycopg.errors.InsufficientPrivilege as exc:
                raise PermissionMissingError(
                    f"cannot create replication slot {settings.slot}: {exc.diag.message_primary}"
                    f" (ALTER ROLE {conn.info.user} REPLICATION, or run setup as a superuser)"
                ) from exc
            except psycopg.errors.ConfigurationLimitExceeded as exc:
                raise ServerNotReadyError(
                    f"cannot create replication slot {settings.slot}: "
                    f"{exc.diag.message_primary} (raise max_replication_slots and restart, or "
                    "drop an unused slot with `wal-consumer slot drop`)"
                ) from exc
            report.did(f"created logical replication slot {settings.slot} at {row and row[0]}")
        if inserted or created_slot:
            # A new slot or checkpoint starts together: what the slot skipped at creation was
            # never ours, so the start-up check must not call it a gap.
            conn.execute(
                "UPDATE grails_workers.consumer_checkpoint c SET advanced_lsn ="
                " greatest(c.advanced_lsn, s.confirmed_flush_lsn) FROM pg_replication_slots s"
                " WHERE s.slot_name = c.slot_name AND c.slot_name = %s",
                [settings.slot],
            )
    return report
