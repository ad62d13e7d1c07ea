"""Ownership: when a name changes hands, its listings by anyone but the new owner are void.

`update-ownership` re-reads the name's owner under a row lock (a stale job whose new owner is
no longer the owner does nothing), cancels the name's active listings whose seller is not the
new owner, and defers `send-notification` jobs for the affected sellers on the same connection, all
in one transaction (one job per channel of each seller who is a user with a usable channel
and has not unsubscribed). A second run finds nothing left to cancel and notifies no one.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any

from procrastinate import App, JobContext
from procrastinate.jobs import Job
from procrastinate.retry import BaseRetryStrategy
from psycopg import sql
from pydantic import BaseModel, ConfigDict

from job_handlers import db, metrics
from job_handlers.errors import PermanentJobError
from job_handlers.notify import fanout, recipients
from job_handlers.tasknames import OWNERSHIP_QUEUE
from job_handlers.tasknames import UPDATE_OWNERSHIP as TASK_NAME

log = logging.getLogger(__name__)
CANCELLED_EVENT = "listing-cancelled-ownership-change"


class OwnershipArgs(BaseModel):
    model_config = ConfigDict(extra="ignore")
    ens_name_id: int
    previous_owner: str | None = None
    new_owner: str | None = None
    event_key: str | None = None


def _same(a: str | None, b: str | None) -> bool:
    return (a or "").lower() == (b or "").lower()


async def update_ownership(app: App, args: OwnershipArgs) -> dict[str, Any]:
    async with db.pool(app).connection() as conn, conn.transaction():
        cur = await conn.execute(
            "SELECT owner_address, name FROM ens_names WHERE id = %s FOR UPDATE",
            [args.ens_name_id])
        row = await cur.fetchone()
        if row is None:
            raise PermanentJobError(f"{TASK_NAME}: ens_names row {args.ens_name_id} does not "
                                    "exist")
        owner, name = row
        if not _same(owner, args.new_owner):
            log.info("%s: stale job for %s (job says owner %s, the row says %s): nothing to do",
                     TASK_NAME, name, args.new_owner, owner)
            return {"stale": True, "cancelled": 0}
        set_updated = (sql.SQL(", updated_at = now()")
                       if await db.has_column(conn, "listings", "updated_at") else sql.SQL(""))
        cur = await conn.execute(
            sql.SQL("UPDATE listings SET status = 'cancelled'{} WHERE ens_name_id = %s"
                    " AND status = 'active' AND (%s::text IS NULL"
                    " OR lower(seller_address) <> lower(%s)) RETURNING id, seller_address"
                    ).format(set_updated),
            [args.ens_name_id, args.new_owner, args.new_owner])
        by_seller: dict[str, list[int]] = defaultdict(list)
        for listing_id, seller in await cur.fetchall():
            by_seller[seller.lower()].append(listing_id)
        jobs: list[Job] = []
        for seller, ids in sorted(by_seller.items()):
            person = await recipients.by_address(conn, seller)
            for channel in person.channels if person else []:
                assert person is not None
                jobs.append(fanout.send_job(
                    event=CANCELLED_EVENT, event_key=f"{args.event_key or 'ownership'}:{seller}",
                    ens_name_id=args.ens_name_id, user_id=person.user_id, channel=channel,
                    data={"recipient_address": seller, "listing_ids": sorted(ids),
                          "new_owner": (args.new_owner or "").lower() or None}))
        if jobs:
            await app.job_manager.batch_defer_jobs_async(jobs, connection=conn)
    cancelled = sum(len(ids) for ids in by_seller.values())
    if cancelled:
        metrics.CANCELLED_LISTINGS.inc(cancelled)
        log.info("%s: %s now owned by %s: cancelled %d listing(s) of %d seller(s)", TASK_NAME,
                 name, args.new_owner, cancelled, len(by_seller))
    return {"stale": False, "cancelled": cancelled, "sellers_notified": len(by_seller)}


def register(app: App, retry: BaseRetryStrategy) -> None:
    @app.task(name=TASK_NAME, queue=OWNERSHIP_QUEUE, retry=retry, pass_context=True)
    async def update_ownership_task(context: JobContext, /, **kwargs: Any) -> dict[str, Any]:
        return await update_ownership(context.app, OwnershipArgs.model_validate(kwargs))
