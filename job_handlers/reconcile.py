"""`reconcile-ownership`: catch transfers made off the platform.

Periodic (JOB_ENS_RECONCILE_CRON, every 5 minutes): for every name with an active listing, in
rounds of JOB_ENS_RECONCILE_CHUNK names, the true owner on chain (chain/owners.py: the
BaseRegistrar holder, or the NameWrapper holder when wrapped; a lapsed registration has no
owner). Where it differs from `ens_names.owner_address` (case-insensitive) the row is updated,
guarded by the value read, so an indexer write in between wins, and the correction is logged in
`grails_workers.ownership_corrections`. The consumer turns that UPDATE into `update-ownership`,
which cancels the stale listings. Names that are not .eth second-level names have no registrar
token and are left alone. No database connection is held during the RPC calls. The task's lock
keeps two runs from overlapping.
"""

from __future__ import annotations

import logging
from typing import Any

from procrastinate import App, JobContext
from psycopg import sql

from job_handlers import db, metrics
from job_handlers.chain import owners
from job_handlers.chain.access import Chain
from job_handlers.settings import WorkerSettings
from job_handlers.tasknames import ENS_SYNC_QUEUE, RECONCILE_OWNERSHIP

log = logging.getLogger(__name__)


def _same(a: str | None, b: str | None) -> bool:
    return (a or "").lower() == (b or "").lower()


async def reconcile(app: App, chain: Chain, settings: WorkerSettings) -> dict[str, int]:
    client = chain.client(app)
    after = 0
    counts = {"checked": 0, "corrected": 0, "not_a_token": 0}
    while True:
        async with db.pool(app).connection() as conn:
            cur = await conn.execute(
                "SELECT n.id, n.name, n.owner_address FROM ens_names n WHERE n.id > %s"
                " AND EXISTS (SELECT 1 FROM listings l WHERE l.ens_name_id = n.id"
                " AND l.status = 'active') ORDER BY n.id LIMIT %s",
                [after, settings.ens_reconcile_chunk])
            rows: list[tuple[int, str, str | None]] = list(await cur.fetchall())
        if not rows:
            break
        after = rows[-1][0]
        found = await owners.owners(client, [name for _, name, _ in rows])
        counts["checked"] += len(rows)
        async with db.pool(app).connection() as conn, conn.transaction():
            set_updated = (sql.SQL(", updated_at = now()")
                           if await db.has_column(conn, "ens_names", "updated_at")
                           else sql.SQL(""))
            for name_id, name, recorded in rows:
                chain_owner = found[name]
                if chain_owner.state == owners.NOT_A_TOKEN:
                    counts["not_a_token"] += 1
                    continue
                if _same(chain_owner.owner, recorded):
                    continue
                cur = await conn.execute(
                    sql.SQL("UPDATE ens_names SET owner_address = %s{} WHERE id = %s"
                            " AND lower(coalesce(owner_address, '')) = lower(%s)"
                            " RETURNING id").format(set_updated),
                    [chain_owner.owner, name_id, recorded or ""])
                if await cur.fetchone() is None:
                    continue  # changed since it was read: the newer write wins
                await conn.execute(
                    "INSERT INTO grails_workers.ownership_corrections (ens_name_id, name,"
                    " previous_owner, new_owner, chain_state) VALUES (%s, %s, %s, %s, %s)",
                    [name_id, name, recorded, chain_owner.owner, chain_owner.state])
                counts["corrected"] += 1
                metrics.OWNERSHIP_CORRECTIONS.labels(chain_owner.state).inc()
                log.warning("%s: %s is %s on chain%s but ens_names said %s: corrected",
                            RECONCILE_OWNERSHIP, name,
                            f"owned by {chain_owner.owner}" if chain_owner.owner
                            else chain_owner.state,
                            " (wrapped)" if chain_owner.wrapped else "", recorded)
    log.info("%s: checked %d name(s) with active listings, corrected %d, %d not .eth "
             "second-level names", RECONCILE_OWNERSHIP, counts["checked"], counts["corrected"],
             counts["not_a_token"])
    return counts


def register(app: App, settings: WorkerSettings, chain: Chain) -> None:
    @app.periodic(cron=settings.ens_reconcile_cron)
    @app.task(name=RECONCILE_OWNERSHIP, queue=ENS_SYNC_QUEUE, pass_context=True,
              lock=RECONCILE_OWNERSHIP, queueing_lock=RECONCILE_OWNERSHIP)
    async def reconcile_ownership(context: JobContext, timestamp: int) -> dict[str, Any]:
        del timestamp
        return await reconcile(context.app, chain, settings)
