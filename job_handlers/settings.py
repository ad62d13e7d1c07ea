"""The worker's settings, read once from the environment at start-up and passed down."""

from __future__ import annotations

import re
from typing import Literal

import croniter
from pydantic import AliasChoices, Field, SecretStr, field_validator
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
    metrics_port: int = Field(
        0, ge=0, le=65535,
        description="port of the /metrics, /healthz and /readyz server (0: no server)")
    metrics_host: str = Field("0.0.0.0", description="address that server listens on")
    metrics_db_interval_s: float = Field(
        15.0, ge=0, description="queue depth is read from the database at most this often "
        "(at scrape time)")
    batch_expire_cron: str = Field("* * * * *", description="when the expiry safety net runs")
    expire_grace_s: float = Field(
        30.0, ge=0, description="the safety net leaves orders this recently due to their jobs")
    expire_batch: int = Field(
        500, ge=0, description="due expire-orders jobs one job claims and runs with it "
        "(0: one job per fetch, as stock procrastinate)")
    retention_cron: str = Field("17 * * * *", description="when old jobs are deleted")

    # --- notifications (issue 5) ---
    smtp_url: SecretStr = Field(
        SecretStr("smtp://localhost:25"), validation_alias=AliasChoices("SMTP_URL", "JOB_SMTP_URL"),
        description="smtp://[user:password@]host[:port] (STARTTLS when the server offers it; "
        "?starttls=required to insist), or smtps:// for implicit TLS")
    smtp_timeout_s: float = Field(30.0, gt=0, description="SMTP connect and command timeout")
    smtp_connections: int = Field(4, ge=1, description="SMTP sessions each worker process "
                                  "keeps open (and sends on at once)")
    email_from: str = Field("Grails <notifications@grails.app>",
                            description="From: of notification emails")
    public_base_url: str = Field("https://grails.app",
                                 description="marketplace site the emails link to")
    web_base_url: str = Field("http://localhost:8080",
                              description="public address of `job-handlers web` (unsubscribe "
                              "links)")
    unsubscribe_secret: SecretStr | None = Field(
        None, description="key that signs unsubscribe links (required to send email)")
    email_rate_per_s: float = Field(10.0, gt=0, description="emails per second, all workers")
    webhook_rate_per_s: float = Field(50.0, gt=0, description="webhook calls per second, "
                                      "all workers")
    rate_limit_max_wait_s: float = Field(
        10.0, gt=0, description="a send that would wait longer for the rate limit retries later")
    breaker_failures: int = Field(5, ge=1, description="failures in a row that open a "
                                  "provider's circuit breaker")
    breaker_reset_s: float = Field(30.0, gt=0, description="how long an open breaker refuses "
                                   "calls before one trial")
    notify_retries: int = Field(8, ge=0, description="retries of a send-notification job")
    notify_retry_base_s: float = Field(30.0, gt=0,
                                       description="first send-notification retry delay")
    webhook_timeout_s: float = Field(15.0, gt=0, description="webhook request timeout")
    webhook_allow_private: bool = Field(
        False, description="allow webhook targets on private/loopback addresses (tests and "
        "local development only: SSRF)")
    web_host: str = Field("127.0.0.1", description="`job-handlers web` listen address")
    web_port: int = Field(8080, ge=0, le=65535, description="`job-handlers web` port")
    status_token: SecretStr | None = Field(
        None, description="token that opens the status page of `job-handlers web` (off if unset)")
    failpoint: str | None = Field(
        None, description="fault tests only: SIGKILL this worker at a point of "
        "send-notification (after-claim, after-send, after-mark)")

    # --- ENS sync and ownership reconciliation (issue 6) ---
    eth_rpc_url: str | None = Field(
        None, validation_alias=AliasChoices("ETH_RPC_URL", "JOB_ETH_RPC_URL"),
        description="Ethereum JSON-RPC endpoint (HTTP); unset: the ENS tasks are not run")
    ens_registry_address: str = Field(
        "0x00000000000C2E074eC69A0dFb2997BA6C7d2e1e", description="ENS registry")
    ens_base_registrar_address: str = Field(
        "0x57f1887a8BF19b14fC0dF6Fd9B2acc9Af147eA85", description=".eth BaseRegistrar")
    ens_name_wrapper_address: str = Field(
        "0xD4416b13d2b3a9aBae7AcD5D6C2BbDBE25686401", description="ENS NameWrapper")
    ens_universal_resolver_address: str = Field(
        "0xeEeEEEeE14D718C2B47D9923Deab1335E144EeEe", description="ENS Universal Resolver")
    ens_rpc_rate_per_s: float = Field(
        25.0, gt=0, description="RPC requests per second, all worker processes together")
    ens_rpc_burst: int = Field(5, ge=1, description="requests the rate limit lets through at "
                               "once after a quiet spell")
    ens_rpc_rate_unit: Literal["request", "call"] = Field(
        "request", description="what the rate limit counts: HTTP requests (a batch is one) or "
        "JSON-RPC calls (a batch of n is n)")
    ens_rpc_batching: bool = Field(True, description="send a name's calls as one JSON-RPC batch")
    ens_rpc_batch_size: int = Field(100, ge=1, description="calls per JSON-RPC batch, at most")
    ens_rpc_timeout_s: float = Field(10.0, gt=0, description="one RPC request's timeout")
    ens_rpc_retries: int = Field(3, ge=0, description="retries of a failed RPC request "
                                 "(timeout, connection error, 429, 5xx) inside a job")
    ens_rpc_retry_base_s: float = Field(0.5, gt=0, description="first RPC retry delay "
                                        "(doubles, jittered)")
    ens_rpc_retry_cap_s: float = Field(8.0, gt=0, description="longest RPC retry delay")
    ens_rpc_max_wait_s: float = Field(
        30.0, gt=0, description="a request that would wait longer for the rate limit makes "
        "its job retry later")
    ens_breaker_failures: int = Field(5, ge=1, description="failed RPC requests in a row that "
                                      "open the RPC circuit breaker")
    ens_breaker_reset_s: float = Field(30.0, gt=0, description="how long the open breaker "
                                       "refuses RPC requests before one trial")
    ens_resolver_cache_ttl_s: float = Field(3600.0, ge=0, description="how long a name's "
                                            "resolver address is reused (0: not cached)")
    ens_daily_sync_cron: str = Field("0 2 * * *", description="when every name with an active "
                                     "listing gets a sync (UTC)")
    ens_sync_chunk: int = Field(1000, ge=1, description="names per transaction when the "
                                "daily sync defers its jobs")
    ens_reconcile_cron: str = Field("*/5 * * * *", description="when on-chain owners of names "
                                    "with active listings are checked")
    ens_reconcile_chunk: int = Field(200, ge=1, description="names per reconciliation round "
                                     "(a few JSON-RPC batches each)")

    @field_validator("ens_daily_sync_cron", "ens_reconcile_cron")
    @classmethod
    def _ens_cron(cls, value: str) -> str:
        return cls._cron(value)

    @field_validator("ens_registry_address", "ens_base_registrar_address",
                     "ens_name_wrapper_address", "ens_universal_resolver_address")
    @classmethod
    def _address(cls, value: str) -> str:
        if not re.fullmatch(r"0x[0-9a-fA-F]{40}", value):
            raise ValueError(f"{value!r} is not a contract address (0x and 40 hex digits)")
        return value

    @field_validator("rescue_cron", "batch_expire_cron", "retention_cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        if not croniter.croniter.is_valid(value):
            raise ValueError(f"{value!r} is not a cron expression (5 fields, or 6 with seconds "
                             "last, e.g. '* * * * * */10' for every 10 s)")
        return value
