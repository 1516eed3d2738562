-- The control plane: tenant status, revocations, token grants, management tokens, audit events.

-- active | past_due | suspended | deleted. Suspended and deleted tenants are served nothing.
ALTER TABLE tenants ADD COLUMN status TEXT NOT NULL DEFAULT 'active';
-- Every token of the tenant's apps issued (iat) before this unix second is revoked; 0 = none.
ALTER TABLE tenants ADD COLUMN tokens_revoked_before INTEGER NOT NULL DEFAULT 0;
ALTER TABLE apps ADD COLUMN tokens_revoked_before INTEGER NOT NULL DEFAULT 0;
-- Written into every token the key signs (`gen`); raising it revokes every earlier token.
ALTER TABLE signing_keys ADD COLUMN generation INTEGER NOT NULL DEFAULT 1;

-- Revoked tokens (kind 'token', subject = jti) and clients (kind 'client', subject = client
-- id: every token of the client issued before `issued_before`). A row is dropped once no token
-- it revokes can still be valid (`expires_at`).
CREATE TABLE token_revocations (
    tenant_id     TEXT    NOT NULL,
    app_id        TEXT    NOT NULL,
    kind          TEXT    NOT NULL,
    subject       TEXT    NOT NULL,
    issued_before INTEGER NOT NULL,
    expires_at    INTEGER NOT NULL,
    created_at    INTEGER NOT NULL,
    PRIMARY KEY (app_id, kind, subject),
    FOREIGN KEY (tenant_id, app_id) REFERENCES apps (tenant_id, id) ON DELETE CASCADE
);

-- Tokens minted by the control plane: who, what, until when (the secret token is not kept).
CREATE TABLE token_grants (
    jti          TEXT    NOT NULL PRIMARY KEY,
    tenant_id    TEXT    NOT NULL,
    app_id       TEXT    NOT NULL,
    client_id    TEXT    NOT NULL,
    kid          TEXT    NOT NULL,
    generation   INTEGER NOT NULL,
    capabilities TEXT    NOT NULL,
    issued_at    INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL,
    FOREIGN KEY (tenant_id, app_id) REFERENCES apps (tenant_id, id) ON DELETE CASCADE
);

CREATE INDEX token_grants_by_client ON token_grants (app_id, client_id);

-- Credentials for the management API. tenant_id NULL: an operator token (every tenant).
CREATE TABLE management_tokens (
    id         TEXT    NOT NULL PRIMARY KEY,
    tenant_id  TEXT    REFERENCES tenants (id) ON DELETE CASCADE,
    name       TEXT    NOT NULL,
    role       TEXT    NOT NULL,
    token_hash BLOB    NOT NULL,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
);

-- One row per management action, written in the action's transaction.
CREATE TABLE audit_events (
    id         TEXT    NOT NULL PRIMARY KEY,
    tenant_id  TEXT,
    actor      TEXT    NOT NULL,
    action     TEXT    NOT NULL,
    target     TEXT    NOT NULL,
    request_id TEXT    NOT NULL,
    at         INTEGER NOT NULL
);

-- Ids sort by time: "newest first" is ORDER BY id DESC.
CREATE INDEX audit_events_by_tenant ON audit_events (tenant_id, id);
