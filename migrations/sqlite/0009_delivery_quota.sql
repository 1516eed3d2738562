-- A monthly quota of webhook events (those delivered by rules, as usage counts them), per plan
-- and per tenant override. 0: no limit.
ALTER TABLE plans ADD COLUMN max_webhook_events_per_month BIGINT NOT NULL DEFAULT 0;
ALTER TABLE tenant_limits ADD COLUMN max_webhook_events_per_month BIGINT;
UPDATE plans SET max_webhook_events_per_month = 100000 WHERE id = 'free';
UPDATE plans SET max_webhook_events_per_month = 10000000 WHERE id = 'pro';
