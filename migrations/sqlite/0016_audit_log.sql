-- Audit logs (issue 20): one transparency log per tenant (and one for the operator), an
-- append-only Merkle tree whose entries, inner nodes and signed checkpoints are stored here.
-- Nothing here is trusted by a verifier: a changed row shows as a broken chain or a root that
-- no signed checkpoint has (docs/audit.md).

-- Management actions are still written in their action's transaction to audit_events, which is
-- now also the log's queue: the log's writer appends the rows not yet sequenced, and marks them,
-- in the one transaction that grows the log. Events from before the log existed go on it too.
ALTER TABLE audit_events ADD COLUMN sequenced INTEGER NOT NULL DEFAULT 0;
CREATE INDEX audit_events_unsequenced ON audit_events (tenant_id, id) WHERE sequenced = 0;

CREATE TABLE audit_logs (
    -- tenant:<tenant id>, or operator.
    id              TEXT    NOT NULL PRIMARY KEY,
    tenant_id       TEXT,
    -- The log's unique name, the first line of its checkpoints and its key's name.
    origin          TEXT    NOT NULL,
    size            INTEGER NOT NULL DEFAULT 0,
    -- The tree's right edge (tributary_audit::merkle::Frontier::to_bytes).
    frontier        BLOB    NOT NULL,
    -- The last entry's leaf hash: the next entry's prev.
    last_leaf       BLOB    NOT NULL,
    -- The newest signed checkpoint's size, and when it was signed.
    checkpoint_size INTEGER NOT NULL DEFAULT 0,
    checkpoint_ms   INTEGER NOT NULL DEFAULT 0,
    -- The largest checkpoint the tenant's own key cosigned (0: none).
    cosigned_size   INTEGER NOT NULL DEFAULT 0,
    -- Moves on with each key rotation: a writer holding the old key reads the new one.
    key_version     INTEGER NOT NULL DEFAULT 0,
    lease_owner     TEXT,
    lease_until_ms  INTEGER,
    created_at      INTEGER  NOT NULL
);

CREATE TABLE audit_entries (
    log_id  TEXT    NOT NULL,
    idx     INTEGER  NOT NULL,
    -- The previous entry's leaf hash, as written (zeros for the first).
    prev    BLOB    NOT NULL,
    -- The entry's canonical JSON.
    body    BLOB    NOT NULL,
    -- What it records, unique in the log: ev:<event id>, msg:<app>:<epoch>:<offset>:<channel>
    -- or gap:<app>:<position>; a second append of the same thing is refused.
    source  TEXT    NOT NULL,
    at_ms   INTEGER  NOT NULL,
    PRIMARY KEY (log_id, idx),
    UNIQUE (log_id, source)
);

-- The roots of whole subtrees of 2^8, 2^16, … leaves: a proof reads at most a few hundred rows
-- of here and of audit_entries, whatever the log's size.
CREATE TABLE audit_nodes (
    log_id  TEXT    NOT NULL,
    height  INTEGER NOT NULL,
    idx     INTEGER  NOT NULL,
    hash    BLOB    NOT NULL,
    PRIMARY KEY (log_id, height, idx)
);

CREATE TABLE audit_checkpoints (
    log_id  TEXT    NOT NULL,
    size    INTEGER  NOT NULL,
    -- The signed note: the log's signature, and cosignatures added later.
    note    TEXT    NOT NULL,
    at_ms   INTEGER  NOT NULL,
    -- Whether the note carries the tenant's cosignature.
    cosigned INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (log_id, size)
);

-- A log's signing keys: the newest unretired one signs; retired ones stay listed, so
-- checkpoints they signed still verify.
CREATE TABLE audit_keys (
    -- The verifier key in Go's note format (<name>+<key id>+<base64>).
    verifier          TEXT    NOT NULL PRIMARY KEY,
    log_id            TEXT    NOT NULL,
    -- The Ed25519 seed, AES-256-GCM under the tenant's key (the operator's for its log).
    secret_ciphertext BLOB    NOT NULL,
    created_at        INTEGER  NOT NULL,
    retired_at        INTEGER
);

CREATE INDEX audit_keys_by_log ON audit_keys (log_id, created_at);

-- The apps whose audited namespaces' messages a log takes from the app's durable feed, and
-- where it has read up to ('' before its first read).
CREATE TABLE audit_sources (
    log_id    TEXT    NOT NULL,
    app_id    TEXT    NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
    tenant_id TEXT    NOT NULL,
    position  TEXT    NOT NULL,
    -- When the first namespace of the app was set audited, in milliseconds: the feed may hold
    -- older messages (the rules turned it on before), which are not the log's.
    created_ms INTEGER NOT NULL,
    PRIMARY KEY (log_id, app_id)
);

CREATE INDEX audit_sources_by_app ON audit_sources (app_id);

-- Keys a tenant holds itself and registers: checkpoints it cosigns with one bind the operator
-- too. The newest unretired one is the log's cosigner; retired ones stay listed.
CREATE TABLE audit_cosigners (
    -- The verifier key in Go's note format (<name>+<key id>+<base64>).
    verifier    TEXT    NOT NULL PRIMARY KEY,
    log_id      TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    retired_at  INTEGER
);

CREATE INDEX audit_cosigners_by_log ON audit_cosigners (log_id, created_at);
