"""Who hears of an event, and on which channels.

Email goes to users with an address (verified, where the marketplace records verification) who
have not turned email off; webhooks to users with an endpoint that has not been disabled. Users
who unsubscribed get nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from job_handlers import db

EMAIL = "email"
WEBHOOK = "webhook"
CHANNELS = (EMAIL, WEBHOOK)


@dataclass(frozen=True)
class Recipient:
    user_id: int
    address: str
    email: str | None
    email_ok: bool
    webhook_url: str | None
    webhook_secret: str | None
    webhook_ok: bool
    unsubscribed: bool

    @property
    def channels(self) -> list[str]:
        if self.unsubscribed:
            return []
        return [c for c, ok in ((EMAIL, self.email_ok), (WEBHOOK, self.webhook_ok)) if ok]


async def _select(conn: psycopg.AsyncConnection[Any]) -> sql.Composed:
    verified = (sql.SQL("u.email_verified IS TRUE")
                if await db.has_column(conn, "users", "email_verified") else sql.SQL("true"))
    return sql.SQL(
        "SELECT u.id, u.address, u.email,"
        " coalesce(u.email, '') <> '' AND {verified} AND coalesce(ns.email_enabled, true),"
        " ns.webhook_url, ns.webhook_secret,"
        " ns.webhook_url IS NOT NULL AND ns.webhook_disabled_at IS NULL,"
        " ns.unsubscribed_at IS NOT NULL"
        " FROM users u LEFT JOIN grails_workers.notification_settings ns ON ns.user_id = u.id"
    ).format(verified=verified)


def _recipient(row: tuple[Any, ...]) -> Recipient:
    return Recipient(user_id=row[0], address=row[1], email=row[2], email_ok=bool(row[3]),
                     webhook_url=row[4], webhook_secret=row[5], webhook_ok=bool(row[6]),
                     unsubscribed=bool(row[7]))


async def watchers(conn: psycopg.AsyncConnection[Any], ens_name_id: int, watch_flag: str,
                   actor: str | None) -> list[Recipient]:
    """Watchers of a name with `watch_flag` on, except the actor, who are still subscribed."""
    query = sql.SQL(
        "{select} JOIN watchlist w ON w.user_id = u.id"
        " WHERE w.ens_name_id = %s AND w.{flag} IS TRUE AND ns.unsubscribed_at IS NULL"
        " AND (%s::text IS NULL OR lower(u.address) <> lower(%s)) ORDER BY u.id"
    ).format(select=await _select(conn), flag=sql.Identifier(watch_flag))
    cur = await conn.execute(query, [ens_name_id, actor, actor])
    return [_recipient(row) for row in await cur.fetchall()]


async def by_address(conn: psycopg.AsyncConnection[Any], address: str) -> Recipient | None:
    query = sql.SQL("{select} WHERE lower(u.address) = lower(%s) ORDER BY u.id LIMIT 1").format(
        select=await _select(conn))
    cur = await conn.execute(query, [address])
    row = await cur.fetchone()
    return _recipient(row) if row else None


async def by_id(conn: psycopg.AsyncConnection[Any], user_id: int) -> Recipient | None:
    query = sql.SQL("{select} WHERE u.id = %s").format(select=await _select(conn))
    cur = await conn.execute(query, [user_id])
    row = await cur.fetchone()
    return _recipient(row) if row else None
