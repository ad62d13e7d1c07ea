"""Prometheus metrics of the handler workers."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

JOBS = Counter("job_handlers_jobs_total", "Jobs run, by task and outcome", ["task", "outcome"])
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
