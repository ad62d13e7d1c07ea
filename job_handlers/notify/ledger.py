"""The `notifications` table as a delivery ledger: one row per (event_key, user, channel).

`claim` records the notification (status `sending`, one more attempt) and commits before
anything is sent; a row already `sent`, `disabled` or `skipped` is not claimed again, so a retry
never repeats a delivery that was marked. The only window for a duplicate is a crash after the
provider accepted the message and before `mark` committed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

FINAL = ("sent", "disabled", "skipped")

CLAIM = """
INSERT INTO notifications AS n (user_id, type, ens_name_id, metadata, sent_at, event_key,
                                channel, recipient, status, attempts, updated_at)
VALUES (%(user_id)s, %(type)s, %(ens_name_id)s, %(metadata)s, NULL, %(event_key)s, %(channel)s,
        %(recipient)s, 'sending', 1, now())
ON CONFLICT (event_key, user_id, channel) WHERE event_key IS NOT NULL
DO UPDATE SET status = 'sending', attempts = n.attempts + 1, updated_at = now()
        WHERE n.status <> ALL(%(final)s)
RETURNING id, attempts
"""
MARK = """
UPDATE notifications
   SET status = %(status)s, last_error = %(error)s, updated_at = now(),
       sent_at = CASE WHEN %(status)s = 'sent' THEN now() ELSE sent_at END
 WHERE id = %(id)s
"""


@dataclass(frozen=True)
class Claim:
    id: int
    attempt: int


async def claim(conn: psycopg.AsyncConnection[Any], *, event_key: str, user_id: int,
                channel: str, event: str, ens_name_id: int, recipient: str,
                metadata: dict[str, Any]) -> Claim | None:
    """Record and claim one delivery (committed); None when it already reached a final state."""
    params = {"user_id": user_id, "type": event, "ens_name_id": ens_name_id,
              "metadata": Jsonb(metadata), "event_key": event_key,
              "channel": channel, "recipient": recipient, "final": list(FINAL)}
    async with conn.transaction():
        cur = await conn.execute(CLAIM, params)
        row = await cur.fetchone()
    return Claim(id=row[0], attempt=row[1]) if row else None


async def mark(conn: psycopg.AsyncConnection[Any], notification_id: int, status: str,
               error: str | None = None) -> None:
    async with conn.transaction():
        await conn.execute(MARK, {"id": notification_id, "status": status,
                                  "error": error[:1000] if error else None})
