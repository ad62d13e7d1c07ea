"""`wal-consumer setup --roles`: least-privilege roles for the two daemons.

- the consumer role: LOGIN REPLICATION; SELECT on the published tables; rights on the job
  queue's tables to enqueue and report; rights on our own tables. Nothing on the marketplace
  beyond reading what it streams.
- the worker role: LOGIN, no REPLICATION; the job queue; the marketplace rows handlers change.

Passwords come from the environment (never printed). Roles are cluster-wide; grants are
per database, so run it in each database.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence

import psycopg
from psycopg import sql

from wal_consumer.settings import split_table

log = logging.getLogger(__name__)

CONSUMER_PASSWORD_ENV = "GRAILS_CONSUMER_PASSWORD"
WORKER_PASSWORD_ENV = "GRAILS_WORKER_PASSWORD"
QUEUE_TABLES = ("procrastinate_jobs", "procrastinate_events", "procrastinate_periodic_defers",
                "procrastinate_workers")
WORKER_WRITES = ("public.listings", "public.offers", "public.ens_names")
WORKER_READS = ("public.users", "public.watchlist")


def _ensure_role(conn: psycopg.Connection, role: str, replication: bool, password_env: str,
                 did: Callable[[str], None]) -> None:
    exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role]).fetchone()
    attributes = sql.SQL("LOGIN REPLICATION" if replication else "LOGIN NOREPLICATION")
    if not exists:
        conn.execute(sql.SQL("CREATE ROLE {} {}").format(sql.Identifier(role), attributes))
        did(f"created role {role} ({attributes.as_string()})")
    else:
        conn.execute(sql.SQL("ALTER ROLE {} {}").format(sql.Identifier(role), attributes))
    password = os.environ.get(password_env)
    if password:
        conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(
            sql.Identifier(role), sql.Literal(password)))


def _existing(conn: psycopg.Connection, tables: Sequence[str]) -> list[sql.Composable]:
    found: list[sql.Composable] = []
    for table in tables:
        if conn.execute("SELECT to_regclass(%s) IS NOT NULL", [table]).fetchone() == (True,):
            found.append(sql.Identifier(*split_table(table)))
    return found


def _grant(conn: psycopg.Connection, privileges: str, tables: list[sql.Composable], role: str
           ) -> None:
    if tables:
        conn.execute(sql.SQL("GRANT {} ON {} TO {}").format(
            sql.SQL(privileges), sql.SQL(", ").join(tables), sql.Identifier(role)))


def create_roles(conn: psycopg.Connection, published: Sequence[str], consumer_role: str,
                 worker_role: str, did: Callable[[str], None]) -> None:
    _ensure_role(conn, consumer_role, True, CONSUMER_PASSWORD_ENV, did)
    _ensure_role(conn, worker_role, False, WORKER_PASSWORD_ENV, did)
    database = sql.Identifier(conn.info.dbname)
    schemas = sorted({split_table(t)[0] for t in (*published, *WORKER_WRITES, *WORKER_READS)})
    queue = _existing(conn, [f"public.{t}" for t in QUEUE_TABLES])
    for role in (consumer_role, worker_role):
        conn.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(
            database, sql.Identifier(role)))
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(
            sql.SQL(", ").join(sql.Identifier(s) for s in [*schemas, "grails_workers"]),
            sql.Identifier(role)))
        conn.execute(sql.SQL("GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {}").format(
            sql.Identifier(role)))
    # consumer: read what it streams, enqueue, keep its checkpoint and dead letters
    _grant(conn, "SELECT", _existing(conn, published), consumer_role)
    _grant(conn, "SELECT, INSERT", queue, consumer_role)
    _grant(conn, "SELECT, INSERT, UPDATE", _existing(conn, [
        "grails_workers.consumer_checkpoint", "grails_workers.dead_letters",
        "grails_workers.backfill_ledger"]), consumer_role)
    conn.execute(sql.SQL("GRANT USAGE ON ALL SEQUENCES IN SCHEMA grails_workers TO {}").format(
        sql.Identifier(consumer_role)))
    # worker: run jobs, change the rows handlers own, read what they need
    _grant(conn, "SELECT, INSERT, UPDATE, DELETE", queue, worker_role)
    _grant(conn, "SELECT, UPDATE", _existing(conn, WORKER_WRITES), worker_role)
    _grant(conn, "SELECT", _existing(conn, WORKER_READS), worker_role)
    _grant(conn, "SELECT", _existing(conn, ["grails_workers.consumer_checkpoint",
                                            "grails_workers.dead_letters"]), worker_role)
    _grant(conn, "SELECT, INSERT, DELETE", _existing(conn, ["grails_workers.job_errors"]),
           worker_role)
    # notifications: the delivery ledger, users' channels and unsubscribes, shared rate limits
    _grant(conn, "SELECT, INSERT, UPDATE", _existing(conn, [
        "public.notifications", "grails_workers.notification_settings",
        "grails_workers.rate_limits"]), worker_role)
    conn.execute(sql.SQL("GRANT USAGE ON ALL SEQUENCES IN SCHEMA grails_workers TO {}").format(
        sql.Identifier(worker_role)))
    # ENS sync and ownership reconciliation: per-name outcomes, the corrections log
    _grant(conn, "SELECT, INSERT, UPDATE", _existing(conn, [
        "grails_workers.ens_sync_status", "grails_workers.ownership_corrections"]), worker_role)
    conn.execute(sql.SQL("GRANT USAGE ON ALL SEQUENCES IN SCHEMA grails_workers TO {}").format(
        sql.Identifier(worker_role)))
    log.info("granted least-privilege rights to %s and %s on database %s", consumer_role,
             worker_role, conn.info.dbname)
