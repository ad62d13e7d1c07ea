"""A worker middleware that times every job, counts its outcome and records why it failed.

procrastinate keeps a failed job's status, not its error; the DLQ needs the error, so every
failed attempt is written to `grails_workers.job_errors` before the exception goes on to
procrastinate's retry decision.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from procrastinate import JobContext
from procrastinate.exceptions import JobAborted

from job_handlers import db, metrics
from job_handlers.retry import NON_RETRYABLE

log = logging.getLogger(__name__)
MAX_ERROR_CHARS = 4000


async def record_outcome(call_next: Callable[[], Awaitable[Any]], context: JobContext,
                         worker: Any) -> Any:
    del worker
    job = context.job
    started = time.monotonic()
    try:
        result = await call_next()
    except BaseException as exc:
        metrics.JOBS.labels(job.task_name, outcome(context, exc)).inc()
        await _record(context, exc)
        raise
    finally:
        metrics.JOB_SECONDS.labels(job.task_name).observe(time.monotonic() - started)
    metrics.JOBS.labels(job.task_name, "succeeded").inc()
    return result


def outcome(context: JobContext, exc: BaseException) -> str:
    """retried (the task's retry policy will run it again), failed (it goes to the DLQ), or
    aborted (cancelled, e.g. by a shutdown)."""
    if isinstance(exc, (asyncio.CancelledError, JobAborted)):
        return "aborted"
    try:
        retry = context.task.get_retry_exception(exception=exc, job=context.job)
    except Exception:  # an unknown task, a policy that fails: procrastinate fails the job
        return "failed"
    return "retried" if retry is not None else "failed"


async def _record(context: JobContext, exc: BaseException) -> None:
    job = context.job
    retryable = not isinstance(exc, NON_RETRYABLE)
    message = (str(exc) or type(exc).__name__)[:MAX_ERROR_CHARS]
    log.error("job %s (%s) attempt %d failed%s: %s: %s", job.id, job.task_name,
              job.attempts + 1, "" if retryable else " permanently", type(exc).__name__,
              message)
    try:
        async with db.pool(context.app).connection() as conn:
            await conn.execute(
                "INSERT INTO grails_workers.job_errors (job_id, task_name, attempt, error_type,"
                " error, retryable) VALUES (%s, %s, %s, %s, %s, %s)",
                [job.id, job.task_name, job.attempts + 1, type(exc).__name__, message,
                 retryable])
    except Exception:  # the job's own error matters more than losing its record
        log.exception("could not record the failure of job %s", job.id)
