-- A development copy of the marketplace tables our workers read and write, for tests and the
-- demo. It is never applied to a real marketplace database unless asked for explicitly
-- (`wal-consumer setup --dev-schema`). Shapes follow the marketplace's own columns.
CREATE TABLE IF NOT EXISTS users (
    id             serial PRIMARY KEY,
    address        varchar(42) UNIQUE NOT NULL,
    email          text,
    email_verified boolean NOT NULL DEFAULT false,
    created_at     timestamp NOT NULL DEFAULT now(),
    updated_at     timestamp NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS ens_names (
    id                 serial PRIMARY KEY,
    name               text UNIQUE NOT NULL,
    token_id           text,
    owner_address      varchar(42),
    expiry_date        timestamp,
    registration_date  timestamp,
    last_transfer_date timestamp,
    metadata           jsonb NOT NULL DEFAULT '{}',
    resolver_address   varchar(42),
    created_at         timestamp NOT NULL DEFAULT now(),
    updated_at         timestamp NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS listings (
    id               serial PRIMARY KEY,
    ens_name_id      integer NOT NULL REFERENCES ens_names(id) ON DELETE CASCADE,
    seller_address   varchar(42) NOT NULL,
    price_wei        varchar(78) NOT NULL,
    currency_address varchar(42) NOT NULL DEFAULT '0x0000000000000000000000000000000000000000',
    order_hash       varchar(66),
    order_data       jsonb NOT NULL DEFAULT '{}',
    status           varchar(20) NOT NULL DEFAULT 'active',
    source           varchar(20) NOT NULL DEFAULT 'grails',
    expires_at       timestamp,
    created_at       timestamp NOT NULL DEFAULT now(),
    updated_at       timestamp NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS idx_listings_ens_name ON listings (ens_name_id);
CREATE INDEX IF NOT EXISTS idx_listings_expires_at
    ON listings (expires_at) WHERE status = 'active' AND expires_at IS NOT NULL;

CREATE TABLE IF NOT EXISTS offers (
    id               serial PRIMARY KEY,
    ens_name_id      integer NOT NULL REFERENCES ens_names(id) ON DELETE CASCADE,
    buyer_address    varchar(42) NOT NULL,
    offer_amount_wei varchar(78) NOT NULL,
    currency_address varchar(42) NOT NULL DEFAULT '0x0000000000000000000000000000000000000000',
    order_hash       varchar(66),
    order_data       jsonb NOT NULL DEFAULT '{}',
    status           varchar(20) NOT NULL DEFAULT 'pending',
    source           varchar(20) NOT NULL DEFAULT 'grails',
    expires_at       timestamp,
    created_at       timestamp NOT NULL DEFAULT now(),
    updated_at       timestamp NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS idx_offers_ens_name ON offers (ens_name_id);
CREATE INDEX IF NOT EXISTS idx_offers_expires_at
    ON offers (expires_at) WHERE status = 'pending' AND expires_at IS NOT NULL;

CREATE TABLE IF NOT EXISTS watchlist (
    id                     serial PRIMARY KEY,
    user_id                integer REFERENCES users(id) ON DELETE CASCADE,
    ens_name_id            integer REFERENCES ens_names(id) ON DELETE CASCADE,
    notify_on_sale         boolean DEFAULT true,
    notify_on_listing      boolean DEFAULT true,
    notify_on_offer        boolean DEFAULT true,
    notify_on_price_change boolean DEFAULT false,
    added_at               timestamp DEFAULT now(),
    UNIQUE (user_id, ens_name_id)
);
CREATE INDEX IF NOT EXISTS idx_watchlist_ens_name ON watchlist (ens_name_id);
