-- Push: each app's devices, the channels they (or all the devices of a client id) are
-- subscribed to for push, and each app's credentials for the push and SMS services.

CREATE TABLE push_devices (
    id          TEXT    NOT NULL PRIMARY KEY,
    tenant_id   TEXT    NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    app_id      TEXT    NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
    -- apns, fcm or web.
    platform    TEXT    NOT NULL,
    -- APNs' device token, FCM's registration token, or a Web Push subscription's endpoint.
    token       TEXT    NOT NULL,
    -- A Web Push subscription's keys: {"p256dh": …, "auth": …}.
    web_keys    TEXT,
    -- The client the device belongs to, if any: a push to the client id reaches it.
    client_id   TEXT,
    -- The app's own data about the device, a JSON object.
    metadata    TEXT    NOT NULL,
    created_at  BIGINT  NOT NULL,
    updated_at  BIGINT  NOT NULL,
    -- Registering a token again updates its device instead of making another.
    UNIQUE (app_id, platform, token)
);

CREATE INDEX push_devices_by_client ON push_devices (app_id, client_id);

-- Exactly one of device_id and client_id is set.
CREATE TABLE push_channel_subscriptions (
    app_id      TEXT    NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
    channel     TEXT    NOT NULL,
    device_id   TEXT    REFERENCES push_devices (id) ON DELETE CASCADE,
    client_id   TEXT,
    created_at  BIGINT  NOT NULL
);

CREATE UNIQUE INDEX push_subscriptions_of_devices
    ON push_channel_subscriptions (app_id, channel, device_id) WHERE device_id IS NOT NULL;
CREATE UNIQUE INDEX push_subscriptions_of_clients
    ON push_channel_subscriptions (app_id, channel, client_id) WHERE client_id IS NOT NULL;

-- An app's credentials for one service (apns, fcm, webpush or twilio): what may be shown (key
-- ids, project, sender) in `settings`, the secret (a key, a token) encrypted under the tenant's
-- data key, bound to the app and the service. A service whose credentials were refused is
-- disabled, with the reason, until they are set again.
CREATE TABLE push_credentials (
    app_id            TEXT    NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
    tenant_id         TEXT    NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    service           TEXT    NOT NULL,
    settings          TEXT    NOT NULL,
    secret_ciphertext BYTEA   NOT NULL,
    disabled_reason   TEXT,
    updated_at        BIGINT  NOT NULL,
    PRIMARY KEY (app_id, service)
);
