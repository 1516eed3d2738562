-- API keys: what a key may do, and the end of a rotated key's overlap.

-- JSON {"grants": [{"channel": "chat:*", "allow": ["publish"]}], "mint_tokens": true};
-- NULL: everything on every channel of the app.
ALTER TABLE api_keys ADD COLUMN capabilities TEXT;
-- A rotated key keeps working until then (unix seconds); NULL: no end.
ALTER TABLE api_keys ADD COLUMN expires_at INTEGER;
