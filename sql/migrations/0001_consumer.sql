-- The consumer's own tables: its stream position and the changes it could not route.
-- Neither is ever published (the consumer would feed itself).
CREATE SCHEMA IF NOT EXISTS grails_workers;

CREATE TABLE IF NOT EXISTS grails_workers.consumer_checkpoint (
    slot_name        text PRIMARY KEY,
    -- commit LSN and end LSN of the last source transaction whose jobs are committed
    commit_lsn       pg_lsn NOT NULL DEFAULT '0/0',
    end_lsn          pg_lsn NOT NULL DEFAULT '0/0',
    -- highest position confirmed to the server while idle (nothing published in flight)
    advanced_lsn     pg_lsn NOT NULL DEFAULT '0/0',
    transactions     bigint NOT NULL DEFAULT 0,
    last_commit_time timestamptz,
    updated_at       timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS grails_workers.dead_letters (
    id           bigserial PRIMARY KEY,
    slot_name    text NOT NULL,
    event_key    text NOT NULL UNIQUE,
    commit_lsn   pg_lsn NOT NULL,
    ordinal      integer NOT NULL,
    commit_time  timestamptz,
    schema_name  text NOT NULL,
    table_name   text NOT NULL,
    operation    text NOT NULL,
    column_types jsonb NOT NULL,
    old_values   jsonb,
    new_values   jsonb,
    error        text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    replayed_at  timestamptz,
    replay_error text
);
CREATE INDEX IF NOT EXISTS dead_letters_pending
    ON grails_workers.dead_letters (id) WHERE replayed_at IS NULL;
