"""Writes as the marketplace's API and indexer would make them, and reads of the job queue."""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

SELLER = "0xAbCdEf0000000000000000000000000000000001"
BUYER = "0x00000000000000000000000000000000000000b2"
NEW_OWNER = "0x00000000000000000000000000000000000000c3"


def add_name(conn: psycopg.Connection, name: str, owner: str = SELLER) -> int:
    row = conn.execute(
        "INSERT INTO ens_names (name, token_id, owner_address) VALUES (%s, %s, %s) RETURNING id",
        [name, str(abs(hash(name))), owner],
    ).fetchone()
    assert row is not None
    return int(row[0])


def add_listing(
    conn: psycopg.Connection, ens_name_id: int, price_wei: str = "1000000000000000000",
    expires_at: datetime | str | None = None, status: str = "active", seller: str = SELLER,
) -> int:
    row = conn.execute(
        "INSERT INTO listings (ens_name_id, seller_address, price_wei, status, expires_at)"
        " VALUES (%s, %s, %s, %s, %s) RETURNING id",
        [ens_name_id, seller, price_wei, status, expires_at],
    ).fetchone()
    assert row is not None
    return int(row[0])


def add_offer(
    conn: psycopg.Connection, ens_name_id: int, amount_wei: str = "500000000000000000",
    expires_at: datetime | None = None, status: str = "pending",
) -> int:
    row = conn.execute(
        "INSERT INTO offers (ens_name_id, buyer_address, offer_amount_wei, status, expires_at)"
        " VALUES (%s, %s, %s, %s, %s) RETURNING id",
        [ens_name_id, BUYER, amount_wei, status, expires_at],
    ).fetchone()
    assert row is not None
    return int(row[0])


def add_user(conn: psycopg.Connection, address: str, email: str | None = None,
             verified: bool = True, webhook_url: str | None = None,
             webhook_secret: str | None = None) -> int:
    row = conn.execute(
        "INSERT INTO users (address, email, email_verified) VALUES (%s, %s, %s) RETURNING id",
        [address, email, verified]).fetchone()
    assert row is not None
    if webhook_url is not None:
        conn.execute("INSERT INTO grails_workers.notification_settings (user_id, webhook_url,"
                     " webhook_secret) VALUES (%s, %s, %s)", [row[0], webhook_url,
                                                               webhook_secret])
    return int(row[0])


def watch(conn: psycopg.Connection, user_id: int, ens_name_id: int, **flags: bool) -> None:
    columns = ["user_id", "ens_name_id", *flags]
    conn.execute(
        sql.SQL("INSERT INTO watchlist ({}) VALUES ({})").format(
            sql.SQL(", ").join(map(sql.Identifier, columns)),
            sql.SQL(", ").join(sql.Placeholder() * len(columns))),
        [user_id, ens_name_id, *flags.values()])


def jobs(conn: psycopg.Connection, task: str | None = None) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "SELECT id, queue_name, task_name, priority, args, scheduled_at, status"
            " FROM procrastinate_jobs WHERE %s::text IS NULL OR task_name = %s ORDER BY id",
            [task, task],
        )
        return cur.fetchall()


def job_count(conn: psycopg.Connection) -> int:
    row = conn.execute("SELECT count(*) FROM procrastinate_jobs").fetchone()
    assert row is not None
    return int(row[0])


def tasks_by_event_key(conn: psycopg.Connection) -> dict[str, Counter[str]]:
    result: dict[str, Counter[str]] = {}
    for key, task, n in conn.execute(
        "SELECT args->>'event_key', task_name, count(*) FROM procrastinate_jobs"
        " WHERE args ? 'event_key' GROUP BY 1, 2"
    ).fetchall():
        result.setdefault(key, Counter())[task] = n
    return result
