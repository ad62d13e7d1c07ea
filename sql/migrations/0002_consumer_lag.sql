-- When the consumer last knew it had handled everything the server had sent: status reports
-- lag in seconds as the time since max(caught_up_at, last_commit_time).
ALTER TABLE grails_workers.consumer_checkpoint
    ADD COLUMN IF NOT EXISTS caught_up_at timestamptz;
