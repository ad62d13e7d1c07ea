"""`notify-watchers`: one event in, one `send-notification` per watcher and channel out.

The watchers are read and their jobs deferred in one transaction, so a retried fan-out either
finds the jobs all there or defers them all; a repeated fan-out is harmless anyway because
each delivery is recorded under its (event_key, user, channel) key before it is sent.
"""

from __future__ import annotations

import logging
from typing import Any

from procrastinate import App, JobContext
from procrastinate.jobs import Job
from procrastinate.retry import BaseRetryStrategy
from pydantic import BaseModel, ConfigDict, field_validator

from job_handlers import db
from job_handlers.errors import PermanentJobError
from job_handlers.notify import recipients
from job_handlers.notify.events import EVENTS, WATCHER_EVENTS
from job_handlers.tasknames import NOTIFICATIONS_QUEUE, NOTIFY_WATCHERS, SEND_NOTIFICATION

log = logging.getLogger(__name__)


class FanOutArgs(BaseModel):
    model_config = ConfigDict(extra="allow")
    event: str
    event_key: str
    ens_name_id: int

    @field_validator("event")
    @classmethod
    def _known(cls, value: str) -> str:
        if value not in WATCHER_EVENTS:
            raise ValueError(f"{value!r} is not a watcher event ({', '.join(WATCHER_EVENTS)})")
        return value

    @property
    def data(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


def send_job(*, event: str, event_key: str, ens_name_id: int, user_id: int, channel: str,
             data: dict[str, Any]) -> Job:
    return Job(id=None, queue=NOTIFICATIONS_QUEUE, lock=None, queueing_lock=None,
               task_name=SEND_NOTIFICATION, priority=0, scheduled_at=None,
               task_kwargs={**data, "event": event, "event_key": event_key,
                            "ens_name_id": ens_name_id, "user_id": user_id,
                            "channel": channel})


async def notify_watchers(app: App, args: FanOutArgs) -> dict[str, Any]:
    kind = EVENTS[args.event]
    assert kind.watch_flag is not None
    actor = args.data.get(kind.actor_field) if kind.actor_field else None
    async with db.pool(app).connection() as conn, conn.transaction():
        cur = await conn.execute("SELECT name FROM ens_names WHERE id = %s", [args.ens_name_id])
        if await cur.fetchone() is None:
            raise PermanentJobError(f"{NOTIFY_WATCHERS}: ens_names row {args.ens_name_id} does "
                                    "not exist")
        watching = await recipients.watchers(conn, args.ens_name_id, kind.watch_flag, actor)
        jobs = [
            send_job(event=args.event, event_key=args.event_key, ens_name_id=args.ens_name_id,
                     user_id=person.user_id, channel=channel, data=args.data)
            for person in watching for channel in person.channels
        ]
        if jobs:
            await app.job_manager.batch_defer_jobs_async(jobs, connection=conn)
    log.info("%s %s on name %d: %d watcher(s), %d notification(s) queued", NOTIFY_WATCHERS,
             args.event, args.ens_name_id, len(watching), len(jobs))
    return {"watchers": len(watching), "notifications": len(jobs)}


def register(app: App, retry: BaseRetryStrategy) -> None:
    @app.task(name=NOTIFY_WATCHERS, queue=NOTIFICATIONS_QUEUE, retry=retry, pass_context=True)
    async def notify_watchers_task(context: JobContext, /, **kwargs: Any) -> dict[str, Any]:
        return await notify_watchers(context.app, FanOutArgs.model_validate(kwargs))
