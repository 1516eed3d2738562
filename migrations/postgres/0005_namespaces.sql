-- Namespaces of an app, editable at runtime: the options of the channels named `<name>:…`
-- (`""`: the app's default for every other name). They take precedence over the
-- configuration file's `[relay.namespaces]`.
CREATE TABLE namespaces (
    tenant_id  TEXT    NOT NULL,
    app_id     TEXT    NOT NULL,
    name       TEXT    NOT NULL,
    -- JSON of the options (history_size, history_ttl_secs, presence, join_leave,
    -- client_publish, max_message_bytes); absent fields take their defaults.
    options    TEXT    NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (app_id, name),
    FOREIGN KEY (tenant_id, app_id) REFERENCES apps (tenant_id, id) ON DELETE CASCADE
);
