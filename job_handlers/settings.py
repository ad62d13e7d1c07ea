"""The worker's settings, read once from the environment at start-up and passed down."""

from __future__ import annotations

import croniter
from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class WorkerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="JOB_", extra="ignore")

    database_url: str = Field(
        validation_alias=AliasChoices("DATABASE_URL", "JOB_DATABASE_URL"),
        description="libpq URI of the marketplace database",
    )
    concurrency: int = Field(10, ge=1, description="jobs run at once per worker process")
    poll_interval_s: float = Field(
        0.5, gt=0, description="how often an idle worker looks for jobs that became due "
        "(expiry precision: scheduled jobs wake no worker)")
    retries: int = Field(3, ge=0, description="retries after the first attempt")
    retry_base_s: float = Field(60.0, gt=0, description="first retry delay (doubles each time)")
    retry_cap_s: float = Field(3600.0, gt=0, description="longest retry delay")
    heartbeat_s: float = Field(10.0, gt=0, description="worker heartbeat period")
    stalled_after_s: float = Field(
        30.0, gt=0, description="a job whose worker has not beaten for this long is rescued")
    rescue_cron: str = Field(
        "* * * * * */10", description="when to look for stalled jobs (a sixth field is seconds)")
    keep_succeeded_hours: int = Field(24 * 7, ge=1, description="succeeded jobs kept this long")
    keep_failed_hours: int = Field(24 * 30, ge=1, description="failed jobs kept this long")
    shutdown_timeout_s: float = Field(
        30.0, ge=0, description="on SIGTERM, how long running jobs may take to finish")
    expire_chunk: int = Field(1000, ge=1, description="rows per batch-expire statement")
    log_level: str = Field("INFO", validation_alias=AliasChoices("LOG_LEVEL", "JOB_LOG_LEVEL"))
    naive_timestamp_timezone: str = Field(
        "UTC",
        validation_alias=AliasChoices("NAIVE_TIMESTAMP_TIMEZONE", "JOB_NAIVE_TIMESTAMP_TIMEZONE"),
        description="time zone of `timestamp without time zone` columns (the session time zone)",
    )
    batch_expire_cron: str = Field("* * * * *", description="when the expiry safety net runs")
    expire_grace_s: float = Field(
        30.0, ge=0, description="the safety net leaves orders this recently due to their jobs")
    expire_batch: int = Field(
        500, ge=0, description="due expire-orders jobs one job claims and runs with it "
        "(0: one job per fetch, as stock procrastinate)")
    retention_cron: str = Field("17 * * * *", description="when old jobs are deleted")

    @field_validator("rescue_cron", "batch_expire_cron", "retention_cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        if not croniter.croniter.is_valid(value):
            raise ValueError(f"{value!r} is not a cron expression (5 fields, or 6 with seconds "
                             "last, e.g. '* * * * * */10' for every 10 s)")
        return value
