-- SMS: each text an app sent (or queued), its recipient, what it costs and how far it got;
-- each tenant's SMS quota (segments per calendar month, texts per minute: SMS costs money, and a
-- runaway rule must not send ten thousand texts) and what it used; SMS in delivery usage.

-- Limits, per plan and per tenant override. 0: no limit.
ALTER TABLE plans ADD COLUMN max_sms_segments_per_month BIGINT NOT NULL DEFAULT 0;
ALTER TABLE plans ADD COLUMN max_sms_per_minute BIGINT NOT NULL DEFAULT 0;
ALTER TABLE tenant_limits ADD COLUMN max_sms_segments_per_month BIGINT;
ALTER TABLE tenant_limits ADD COLUMN max_sms_per_minute BIGINT;
UPDATE plans SET max_sms_segments_per_month = 100, max_sms_per_minute = 10 WHERE id = 'free';
UPDATE plans SET max_sms_segments_per_month = 100000, max_sms_per_minute = 600 WHERE id = 'pro';

CREATE TABLE sms_messages (
    id          TEXT    NOT NULL PRIMARY KEY,
    tenant_id   TEXT    NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    app_id      TEXT    NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
    to_number   TEXT    NOT NULL,
    -- What it costs: counted when queued, replaced by what Twilio bills.
    segments    INTEGER NOT NULL,
    -- 'api' (sent through the HTTP API) or the id of the rule that sent it.
    origin      TEXT    NOT NULL,
    -- pending (in the delivery queue), then Twilio's (queued, sent, delivered, undelivered,
    -- failed, ...), or refused (dead-lettered here: opted out, invalid, over the quota).
    status      TEXT    NOT NULL,
    -- Twilio's message SID, once it took the text.
    sid         TEXT,
    error_code  TEXT,
    created_ms  INTEGER NOT NULL,
    updated_ms  INTEGER NOT NULL
);

CREATE INDEX sms_messages_by_app ON sms_messages (app_id, created_ms);

-- What a tenant used of its quota: segments in the month that starts at `month` (unix
-- seconds), texts in the minute that starts at `minute`. Taken when a text is queued (or, for
-- a rule's, when a worker claims it), in the statement that checks the limit.
CREATE TABLE sms_quota (
    tenant_id   TEXT    NOT NULL PRIMARY KEY REFERENCES tenants (id) ON DELETE CASCADE,
    month       INTEGER NOT NULL,
    segments    INTEGER NOT NULL,
    minute      INTEGER NOT NULL,
    texts       INTEGER NOT NULL
);

-- Texts Twilio took, and their segments, per app and minute (usage).
ALTER TABLE delivery_usage ADD COLUMN sms INTEGER NOT NULL DEFAULT 0;
ALTER TABLE delivery_usage ADD COLUMN sms_segments INTEGER NOT NULL DEFAULT 0;
