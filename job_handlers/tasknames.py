"""Task names and queues: the contract with the consumer (DESIGN.md, "Public contracts")."""

from __future__ import annotations

EXPIRE_ORDERS = "expire-orders"
BATCH_EXPIRE_ORDERS = "batch-expire-orders"
UPDATE_OWNERSHIP = "update-ownership"
NOTIFY_WATCHERS = "notify-watchers"
SEND_NOTIFICATION = "send-notification"
RESCUE_STALLED_JOBS = "rescue-stalled-jobs"
REMOVE_OLD_JOBS = "remove-old-jobs"
SYNC_ENS_DATA = "sync-ens-data"
SCHEDULE_DAILY_ENS_SYNC = "schedule-daily-ens-sync"
RECONCILE_OWNERSHIP = "reconcile-ownership"

EXPIRY_QUEUE = "expiry"
OWNERSHIP_QUEUE = "ownership"
NOTIFICATIONS_QUEUE = "notifications"
MAINTENANCE_QUEUE = "maintenance"
ENS_SYNC_QUEUE = "ens-sync"
