-- Plans, overrides and usage (the PostgreSQL twin of migrations/sqlite/0003_plans_and_usage.sql).

-- A limit of 0 means "no limit". Sizes in bytes, rates per second, retention in seconds.
CREATE TABLE plans (
    id                     TEXT    NOT NULL PRIMARY KEY,
    name                   TEXT    NOT NULL,
    max_connections        BIGINT NOT NULL,
    max_messages_per_month BIGINT NOT NULL,
    max_publish_rate       BIGINT NOT NULL,
    max_channels           BIGINT NOT NULL,
    max_message_bytes      BIGINT NOT NULL,
    history_retention_secs BIGINT NOT NULL,
    -- 1: past the monthly quota publishing goes on and is billed as overage; 0: it stops.
    overage_allowed        BIGINT NOT NULL,
    created_at             BIGINT NOT NULL
);

INSERT INTO plans VALUES ('unlimited', 'Unlimited', 0, 0, 0, 0, 0, 0, 1, 0);
INSERT INTO plans VALUES ('free', 'Free', 100, 1000000, 50, 200, 65536, 86400, 0, 0);
INSERT INTO plans VALUES ('pro', 'Pro', 10000, 100000000, 2000, 0, 262144, 604800, 1, 0);

-- The plan of a tenant (checked by the store: SQLite cannot add a column with both a
-- reference and a default).
ALTER TABLE tenants ADD COLUMN plan_id TEXT NOT NULL DEFAULT 'unlimited';

-- A tenant's own limits where they differ from its plan's (NULL: the plan's).
CREATE TABLE tenant_limits (
    tenant_id              TEXT    NOT NULL PRIMARY KEY REFERENCES tenants (id) ON DELETE CASCADE,
    max_connections        BIGINT,
    max_messages_per_month BIGINT,
    max_publish_rate       BIGINT,
    max_channels           BIGINT,
    max_message_bytes      BIGINT,
    history_retention_secs BIGINT,
    overage_allowed        BIGINT
);

-- What one node counted for one app in one minute (`minute`: unix seconds, a multiple of 60).
-- Counters add up over the node's flushes; the peak is the node's highest.
CREATE TABLE usage_minutes (
    tenant_id          TEXT    NOT NULL,
    app_id             TEXT    NOT NULL,
    minute             BIGINT NOT NULL,
    node_id            TEXT    NOT NULL,
    messages_published BIGINT NOT NULL,
    messages_delivered BIGINT NOT NULL,
    bytes_published    BIGINT NOT NULL,
    bytes_delivered    BIGINT NOT NULL,
    peak_connections   BIGINT NOT NULL,
    connection_seconds BIGINT NOT NULL,
    PRIMARY KEY (app_id, minute, node_id)
);

CREATE INDEX usage_minutes_by_tenant ON usage_minutes (tenant_id, minute);

-- Flushes already applied, so a flush retried after a lost reply is not counted twice.
CREATE TABLE usage_flushes (
    node_id TEXT    NOT NULL,
    seq     BIGINT NOT NULL,
    at      BIGINT NOT NULL,
    PRIMARY KEY (node_id, seq)
);
