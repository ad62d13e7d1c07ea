-- Jobs `wal-consumer backfill` has enqueued, by a key that says what the job is for
-- (an order and its expiry time; a name and the day). A second run finds them and adds nothing.
CREATE TABLE IF NOT EXISTS grails_workers.backfill_ledger (
    job_key    text PRIMARY KEY,
    job_id     bigint,
    created_at timestamptz NOT NULL DEFAULT now()
);
