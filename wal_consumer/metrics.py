"""Prometheus metrics of the consumer (names follow Prometheus conventions)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

CHANGES = Counter(
    "wal_consumer_changes_total", "Row changes decoded, by table and operation",
    ["table", "operation"],
)
UNROUTED_CHANGES = Counter(
    "wal_consumer_unrouted_changes_total", "Changes that matched no route, by table and operation",
    ["table", "operation"],
)
JOBS = Counter("wal_consumer_jobs_enqueued_total", "Jobs enqueued, by task", ["task"])
DEAD_LETTERS = Counter("wal_consumer_dead_letters_total", "Changes dead-lettered")
TRANSACTIONS = Counter("wal_consumer_transactions_total", "Source transactions committed")
SKIPPED_TRANSACTIONS = Counter(
    "wal_consumer_skipped_transactions_total",
    "Source transactions resent by the server at or below the checkpoint, skipped",
)
RECONNECTS = Counter("wal_consumer_reconnects_total", "Replication sessions restarted")
SLOT_AHEAD = Counter(
    "wal_consumer_slot_ahead_of_checkpoint_total",
    "Start-ups where the slot's confirmed position was ahead of our checkpoint",
)
BATCH_COMMIT_SECONDS = Histogram(
    "wal_consumer_batch_commit_seconds", "Time to write and commit one batch",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
CONFIRMED_LSN = Gauge("wal_consumer_confirmed_lsn", "Last LSN confirmed to the server")
LEADER = Gauge(
    "wal_consumer_leader",
    "1 while this process streams the slot; 0 while it waits as a hot standby or reconnects",
)
SKIPPED_LOCKED = Counter("wal_consumer_jobs_skipped_locked_total",
                        "Jobs not enqueued: a job with the same queueing lock was pending")
