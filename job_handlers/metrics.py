"""Prometheus metrics of the handler workers."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

JOBS = Counter("job_handlers_jobs_total", "Job attempts by task and outcome (succeeded, retried, "
               "failed, aborted)", ["task", "outcome"])
JOB_SECONDS = Histogram("job_handlers_job_duration_seconds", "Job run time, by task", ["task"])
EXPIRY_LATENESS = Histogram(
    "job_handlers_expiry_lateness_seconds", "expires_at until the order was marked expired",
    ["type"], buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 3600),
)
BATCH_NET_CATCHES = Counter(
    "job_handlers_batch_expire_caught_total",
    "Orders the safety net expired: each is a scheduled expire-orders job that was missed",
    ["type"],
)
STALLED_RESCUED = Counter("job_handlers_stalled_jobs_rescued_total",
                          "Jobs of dead workers put back in the queue")
CANCELLED_LISTINGS = Counter("job_handlers_listings_cancelled_total",
                             "Listings cancelled because their name changed owner")
RATE_LIMIT_WAIT = Histogram(
    "job_handlers_rate_limit_wait_seconds", "Time a request waited for a shared rate limit",
    ["key"], buckets=(0, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
BREAKER_STATE = Gauge("job_handlers_breaker_state",
                      "Circuit breaker state (0 closed, 1 open, 2 half-open)", ["breaker"])
NOTIFICATIONS = Counter(
    "job_handlers_notifications_total", "Notification deliveries, by channel and outcome "
    "(sent, failed, retried, skipped, disabled)", ["channel", "outcome"])
NOTIFICATION_LATENCY = Histogram(
    "job_handlers_notification_latency_seconds",
    "Source commit of the event until the notification was delivered, by channel", ["channel"],
    buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 3600),
)
WORKER_RESTARTS = Counter(
    "job_handlers_worker_restarts_total",
    "Workers started again in the same process after losing the database")
ENS_SYNCS = Counter("job_handlers_ens_syncs_total", "Names synced from the chain, by outcome "
                    "(synced, no-resolver, expired, unregistered, invalid-name, unresolvable)",
                    ["outcome"])
OWNERSHIP_CORRECTIONS = Counter(
    "job_handlers_ownership_corrections_total",
    "ens_names owners corrected from the chain by reconcile-ownership, by chain state",
    ["state"])
