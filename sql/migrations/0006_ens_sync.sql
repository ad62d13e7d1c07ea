-- ENS sync and ownership reconciliation (issue 6).

-- What the sync writes on the marketplace's names, added only where missing. (`setup` runs
-- migrations only once the published tables exist; the guard keeps the file safe on its own.)
DO $$
BEGIN
    IF to_regclass('public.ens_names') IS NOT NULL THEN
        ALTER TABLE public.ens_names
            ADD COLUMN IF NOT EXISTS metadata            jsonb NOT NULL DEFAULT '{}',
            ADD COLUMN IF NOT EXISTS resolver_address    varchar(42),
            ADD COLUMN IF NOT EXISTS metadata_updated_at timestamptz;
    END IF;
END $$;

-- The last sync of each name and what it found: synced, no-resolver, expired, unregistered,
-- invalid-name or unresolvable. Every one is a final answer (the job succeeds and is not
-- retried); only a node that does not answer makes a job retry, and then nothing is written.
CREATE TABLE IF NOT EXISTS grails_workers.ens_sync_status (
    ens_name_id      integer PRIMARY KEY,
    name             text NOT NULL,
    outcome          text NOT NULL,
    detail           text NOT NULL DEFAULT '',
    resolver_address text,
    reason           text,
    checked_at       timestamptz NOT NULL DEFAULT now(),
    synced_at        timestamptz
);
CREATE INDEX IF NOT EXISTS ens_sync_status_outcome ON grails_workers.ens_sync_status (outcome);

-- Every owner the reconciliation corrected from the chain (the consumer turns each into an
-- update-ownership job through the ens_names UPDATE).
CREATE TABLE IF NOT EXISTS grails_workers.ownership_corrections (
    id             bigserial PRIMARY KEY,
    ens_name_id    integer NOT NULL,
    name           text NOT NULL,
    previous_owner text,
    new_owner      text,
    chain_state    text NOT NULL,
    at             timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS ownership_corrections_name
    ON grails_workers.ownership_corrections (ens_name_id, id);
