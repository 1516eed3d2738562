-- The delivery queue (webhooks now; push and SMS later): work waits here, never in a worker's
-- memory, so a dead endpoint costs disk, and a killed worker's work is taken up by another once
-- its lease runs out. Times are Unix milliseconds.

CREATE TABLE delivery_jobs (
    id              TEXT    NOT NULL PRIMARY KEY,
    tenant_id       TEXT    NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    app_id          TEXT    NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
    -- Where it goes: a webhook endpoint's id (the queue of each target is separate).
    target_id       TEXT    NOT NULL,
    -- The event's stable id: the same on every attempt and every replay (receivers
    -- de-duplicate by it); one job per target and event.
    event_id        TEXT    NOT NULL,
    payload         BYTEA   NOT NULL,
    -- pending, delivered or dead.
    state           TEXT    NOT NULL,
    -- Attempts in all (the delivery log numbers them), and since it was queued or last
    -- replayed (the retry schedule counts these).
    attempts        BIGINT  NOT NULL,
    tries           BIGINT  NOT NULL,
    next_attempt_ms BIGINT  NOT NULL,
    lease_owner     TEXT,
    lease_until_ms  BIGINT,
    created_ms      BIGINT  NOT NULL,
    finished_ms     BIGINT,
    UNIQUE (target_id, event_id)
);

CREATE INDEX delivery_jobs_due ON delivery_jobs (state, next_attempt_ms);
CREATE INDEX delivery_jobs_by_target ON delivery_jobs (target_id, state, next_attempt_ms);

-- Every attempt, for the delivery log: when, how it went, how long it took, what the
-- receiver said.
CREATE TABLE delivery_attempts (
    job_id      TEXT    NOT NULL REFERENCES delivery_jobs (id) ON DELETE CASCADE,
    attempt     BIGINT  NOT NULL,
    tenant_id   TEXT    NOT NULL,
    target_id   TEXT    NOT NULL,
    at_ms       BIGINT  NOT NULL,
    status      BIGINT,
    latency_ms  BIGINT  NOT NULL,
    outcome     TEXT    NOT NULL,
    snippet     TEXT    NOT NULL,
    PRIMARY KEY (job_id, attempt)
);

CREATE INDEX delivery_attempts_by_target ON delivery_attempts (target_id, at_ms);

-- Webhook endpoints: where an app's events are sent. The signing secret is encrypted at rest
-- (AES-256-GCM under the tenant's data key, bound to the row); during a rotation the previous
-- secret signs too, until previous_until_ms.
CREATE TABLE webhook_endpoints (
    id                   TEXT    NOT NULL PRIMARY KEY,
    tenant_id            TEXT    NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    app_id               TEXT    NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
    url                  TEXT    NOT NULL,
    description          TEXT    NOT NULL,
    -- Custom headers sent with every request, a JSON object of strings.
    headers              TEXT    NOT NULL,
    secret_ciphertext    BYTEA   NOT NULL,
    previous_ciphertext  BYTEA  ,
    previous_until_ms    BIGINT ,
    enabled              BIGINT  NOT NULL,
    -- Why it was disabled (by its tenant, or after failing for too long), if it is.
    disabled_reason      TEXT,
    created_at           BIGINT  NOT NULL
);

CREATE INDEX webhook_endpoints_by_app ON webhook_endpoints (app_id);
