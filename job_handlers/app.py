"""The procrastinate App of the handler workers, built from the settings at start-up."""

from __future__ import annotations

from procrastinate import App, PsycopgConnector

from job_handlers import ens_tasks, expiry, maintenance, ownership
from job_handlers.notify import fanout, send
from job_handlers.retry import BackoffRetry
from job_handlers.settings import WorkerSettings


def build_app(settings: WorkerSettings) -> App:
    connector = PsycopgConnector(
        conninfo=settings.database_url,
        min_size=1,
        max_size=settings.concurrency + 4,
        kwargs={"options": f"-c timezone={settings.naive_timestamp_timezone}",
                "application_name": "job-handlers"},
    )
    app = App(connector=connector)
    retry = BackoffRetry(settings.retries, settings.retry_base_s, settings.retry_cap_s)
    expiry.register(app, settings, retry)
    ownership.register(app, retry)
    maintenance.register(app, settings)
    ens_tasks.register(app, settings, retry)
    fanout.register(app, retry)
    send.register(app, settings, BackoffRetry(settings.notify_retries,
                                              settings.notify_retry_base_s, settings.retry_cap_s))
    return app


def handled_queues(app: App) -> list[str]:
    """Queues whose every task this worker can run (others are left for their handlers)."""
    return sorted({task.queue for task in app.tasks.values()})
