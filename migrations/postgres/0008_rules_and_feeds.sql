-- Rules: what an app's events trigger. A rule reads the app's durable feed (its messages and
-- lifecycle events), keeps the events whose kind and channel it matches, and queues them for
-- its target (a webhook endpoint now; push and SMS later), batched and shaped as it says.

CREATE TABLE rules (
    id              TEXT    NOT NULL PRIMARY KEY,
    tenant_id       TEXT    NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    app_id          TEXT    NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
    name            TEXT    NOT NULL,
    -- The source: a channel pattern and the event kinds, comma-separated.
    channel_pattern TEXT    NOT NULL,
    events          TEXT    NOT NULL,
    -- The target: its kind ('webhook') and id.
    target_kind     TEXT    NOT NULL,
    target_id       TEXT    NOT NULL,
    -- Up to batch_max events per request, gathered for up to batch_ms.
    batch_max       BIGINT NOT NULL,
    batch_ms        BIGINT NOT NULL,
    -- 'enveloped' (events with their metadata) or 'raw' (one event's data as it was sent).
    body            TEXT    NOT NULL,
    -- Custom headers of this rule's requests, a JSON object of strings.
    headers         TEXT    NOT NULL,
    enabled         BIGINT NOT NULL,
    created_at      BIGINT NOT NULL
);

CREATE INDEX rules_by_app ON rules (app_id);

-- Where each app's feed has been read up to: one row per app with enabled rules, owned by one
-- worker at a time through a lease. The position moves in the same transaction that queues the
-- deliveries it covers, and only from the position the owner read from, so a killed or slow
-- worker's events are queued exactly once.
CREATE TABLE feed_positions (
    app_id          TEXT    NOT NULL PRIMARY KEY REFERENCES apps (id) ON DELETE CASCADE,
    tenant_id       TEXT    NOT NULL,
    -- The engine's position of the last entry read ('' before the first).
    position        TEXT    NOT NULL,
    lease_owner     TEXT,
    lease_until_ms  BIGINT,
    updated_ms      BIGINT NOT NULL
);

-- A rule's custom headers travel with its deliveries.
ALTER TABLE delivery_jobs ADD COLUMN headers TEXT NOT NULL DEFAULT '{}';

-- A claim visits the targets that have pending jobs one index seek at a time, counts each
-- one's leased jobs from the few leased rows, and takes its due jobs from its own range: its
-- cost does not grow with a dead endpoint's backlog.
CREATE INDEX delivery_jobs_pending_targets ON delivery_jobs (state, target_id);
CREATE INDEX delivery_jobs_leases ON delivery_jobs (target_id, lease_until_ms);
-- Claims no longer scan every due job in time order.
DROP INDEX delivery_jobs_due;

-- Since when an endpoint's deliveries have been failing (none delivered since), cleared by a
-- delivery: an endpoint failing for longer than `delivery.disable_after_failing_secs` is
-- disabled and its tenant told.
ALTER TABLE webhook_endpoints ADD COLUMN failing_since_ms BIGINT;

-- How many events a delivery carries (a rule's batch), counted in usage when it is delivered.
ALTER TABLE delivery_jobs ADD COLUMN events BIGINT NOT NULL DEFAULT 1;

-- Webhook usage per app and minute: requests delivered and the events they carried, added in
-- the transaction that records the deliveries (so a delivery is counted exactly once).
CREATE TABLE delivery_usage (
    app_id    TEXT NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
    minute    BIGINT NOT NULL,
    tenant_id TEXT NOT NULL,
    requests  BIGINT NOT NULL,
    events    BIGINT NOT NULL,
    PRIMARY KEY (app_id, minute)
);

CREATE INDEX delivery_usage_by_tenant ON delivery_usage (tenant_id, minute);
