-- Billing with Stripe (issue 21, docs/billing.md): which Stripe customer (and subscription) is
-- which tenant, and the Stripe events applied, each once.
CREATE TABLE billing_accounts (
    tenant_id       TEXT    NOT NULL PRIMARY KEY REFERENCES tenants (id) ON DELETE CASCADE,
    customer_id     TEXT    NOT NULL UNIQUE,
    subscription_id TEXT,
    -- The Stripe `created` of the event that last set the tenant's status: an older event,
    -- arriving late, never undoes it (the grace period's expiry sets it to its own time).
    status_at       INTEGER  NOT NULL DEFAULT 0,
    -- Since when the tenant is past due (its first failed payment's event), for the grace period.
    past_due_since  INTEGER,
    updated_at      INTEGER  NOT NULL
);

CREATE TABLE billing_events (
    -- Stripe's event id: an event delivered again is applied once.
    event_id    TEXT    NOT NULL PRIMARY KEY,
    type        TEXT    NOT NULL,
    created     INTEGER  NOT NULL,
    tenant_id   TEXT,
    -- applied, stale (older than what set the status), held (an operator's status kept),
    -- ignored (no customer's billing), unknown_customer.
    outcome     TEXT    NOT NULL,
    received_at INTEGER  NOT NULL
);
