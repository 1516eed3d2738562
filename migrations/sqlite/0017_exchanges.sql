-- Exchanges between tenants (issue 20): tenant A offers a namespace of one of its apps to
-- tenant B with rights for each side; B accepts into one of its apps, whose channels of that
-- namespace then reach A's (docs/exchanges.md). Each exchange has its own audit log,
-- `exchange:<id>`, read from the offering app's feed (audit_sources.namespace).
CREATE TABLE exchanges (
    id                TEXT    NOT NULL PRIMARY KEY,
    offerer_tenant_id TEXT    NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    offerer_app_id    TEXT    NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
    namespace         TEXT    NOT NULL,
    partner_tenant_id TEXT    NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    -- Set when the partner accepts.
    partner_app_id    TEXT    REFERENCES apps (id) ON DELETE CASCADE,
    -- What each side's clients and keys may do on the namespace: a JSON array of rights.
    offerer_rights    TEXT    NOT NULL,
    partner_rights    TEXT    NOT NULL,
    -- offered, active, suspended or ended.
    status            TEXT    NOT NULL,
    -- The tenant that suspended it (only it may resume), or that ended it.
    changed_by        TEXT,
    created_at        INTEGER  NOT NULL,
    updated_at        INTEGER  NOT NULL,
    -- The largest checkpoint of the exchange's log each side cosigned with its own key.
    offerer_cosigned_size INTEGER NOT NULL DEFAULT 0,
    partner_cosigned_size INTEGER NOT NULL DEFAULT 0
);

CREATE INDEX exchanges_by_offerer ON exchanges (offerer_tenant_id, id);
CREATE INDEX exchanges_by_partner ON exchanges (partner_tenant_id, id);
-- One exchange open (not ended) per namespace of an app, on either side.
CREATE UNIQUE INDEX exchanges_offered_namespace ON exchanges (offerer_app_id, namespace) WHERE status <> 'ended';
CREATE UNIQUE INDEX exchanges_accepted_namespace ON exchanges (partner_app_id, namespace) WHERE status <> 'ended';

-- A source that reads one namespace only (an exchange's); NULL: the app's audited namespaces.
ALTER TABLE audit_sources ADD COLUMN namespace TEXT;
-- When an exchange ended, in milliseconds: its log takes none of the namespace's later messages.
ALTER TABLE audit_sources ADD COLUMN until_ms INTEGER;
