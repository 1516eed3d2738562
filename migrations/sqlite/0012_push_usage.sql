-- Pushes delivered per app and minute, counted apart from webhook requests and events (which
-- the webhook quota counts): the delivery workers add them in the transaction that records the
-- delivery, so each push is counted once.
ALTER TABLE delivery_usage ADD COLUMN pushes INTEGER NOT NULL DEFAULT 0;
