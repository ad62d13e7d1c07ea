"""What procrastinate leaves to us: rescuing jobs of dead workers, and retention.

procrastinate's workers heartbeat but nothing puts the jobs of a dead one back in the queue
(PITFALLS 23), and finished jobs stay forever. Both run as periodic tasks on the maintenance
queue of every worker.
"""

from __future__ import annotations

import logging

from procrastinate import App, JobContext

from job_handlers import db, metrics
from job_handlers.settings import WorkerSettings
from job_handlers.tasknames import MAINTENANCE_QUEUE, REMOVE_OLD_JOBS, RESCUE_STALLED_JOBS

log = logging.getLogger(__name__)


async def rescue_stalled(app: App, settings: WorkerSettings) -> int:
    stalled = list(await app.job_manager.get_stalled_jobs(
        seconds_since_heartbeat=settings.stalled_after_s))
    for job in stalled:
        log.warning("rescuing job %s (%s, attempt %d): its worker stopped heart-beating more "
                    "than %.0f s ago", job.id, job.task_name, job.attempts + 1,
                    settings.stalled_after_s)
        await app.job_manager.retry_job(job)
    metrics.STALLED_RESCUED.inc(len(stalled))
    return len(stalled)


async def remove_old_jobs(app: App, settings: WorkerSettings) -> None:
    await app.job_manager.delete_old_jobs(nb_hours=settings.keep_succeeded_hours)
    await app.job_manager.delete_old_jobs(nb_hours=settings.keep_failed_hours,
                                          include_failed=True, include_cancelled=True,
                                          include_aborted=True)
    async with db.pool(app).connection() as conn:
        await conn.execute(
            "DELETE FROM grails_workers.job_errors e WHERE NOT EXISTS"
            " (SELECT 1 FROM procrastinate_jobs j WHERE j.id = e.job_id)")


def register(app: App, settings: WorkerSettings) -> None:
    @app.periodic(cron=settings.rescue_cron)
    @app.task(name=RESCUE_STALLED_JOBS, queue=MAINTENANCE_QUEUE, pass_context=True)
    async def rescue_stalled_jobs(context: JobContext, timestamp: int) -> int:
        del timestamp
        return await rescue_stalled(context.app, settings)

    @app.periodic(cron=settings.retention_cron)
    @app.task(name=REMOVE_OLD_JOBS, queue=MAINTENANCE_QUEUE, pass_context=True)
    async def remove_old(context: JobContext, timestamp: int) -> None:
        del timestamp
        await remove_old_jobs(context.app, settings)
