-- (The PostgreSQL twin of migrations/sqlite/0015_rule_targets.sql.)
-- A rule's target is a webhook endpoint (target_kind 'webhook', target_id the endpoint), texts
-- (target_kind 'sms', target_id 'sms:<app>') or a push (target_kind 'push', target_id
-- 'pushout:<app>'); an SMS or push target's definition (recipients and templates) is JSON.
ALTER TABLE rules ADD COLUMN target_spec TEXT NOT NULL DEFAULT '{}';
