-- Notifications (issue 5). The marketplace's own tables are not altered: what it lacks for
-- delivery (webhook endpoint, signing secret, channel choice, unsubscribe state) lives in our
-- schema, keyed by users.id.

-- The PRD's `notifications` table, created when the marketplace has none, with the columns
-- delivery needs added. Rows the marketplace writes itself (no event_key) are left alone.
CREATE TABLE IF NOT EXISTS public.notifications (
    id          serial PRIMARY KEY,
    user_id     integer REFERENCES public.users(id) ON DELETE CASCADE,
    type        varchar(50) NOT NULL,
    ens_name_id integer REFERENCES public.ens_names(id) ON DELETE CASCADE,
    metadata    jsonb DEFAULT '{}',
    sent_at     timestamp DEFAULT now(),
    read_at     timestamp,
    created_at  timestamp DEFAULT now()
);
ALTER TABLE public.notifications
    ADD COLUMN IF NOT EXISTS event_key  text,
    ADD COLUMN IF NOT EXISTS channel    text,
    ADD COLUMN IF NOT EXISTS recipient  text,
    ADD COLUMN IF NOT EXISTS status     text,
    ADD COLUMN IF NOT EXISTS attempts   integer NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS last_error text,
    ADD COLUMN IF NOT EXISTS updated_at timestamptz;
-- One notification per event, recipient and channel: the key a retry finds already sent.
CREATE UNIQUE INDEX IF NOT EXISTS notifications_delivery_key
    ON public.notifications (event_key, user_id, channel) WHERE event_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS notifications_recent
    ON public.notifications (updated_at DESC) WHERE event_key IS NOT NULL;

CREATE TABLE IF NOT EXISTS grails_workers.notification_settings (
    user_id             integer PRIMARY KEY REFERENCES public.users(id) ON DELETE CASCADE,
    email_enabled       boolean NOT NULL DEFAULT true,
    webhook_url         text,
    webhook_secret      text,
    webhook_disabled_at timestamptz,
    webhook_disabled_reason text,
    unsubscribed_at     timestamptz,
    CONSTRAINT webhook_needs_secret CHECK (webhook_url IS NULL OR webhook_secret IS NOT NULL)
);

-- Rate limits shared by every worker process: the time the next request may be made.
CREATE TABLE IF NOT EXISTS grails_workers.rate_limits (
    key          text PRIMARY KEY,
    next_free_at timestamptz NOT NULL
);
