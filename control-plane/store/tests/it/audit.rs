//! Audit events: every management write leaves exactly one, in its own transaction, and a
//! write that fails leaves none (and nothing else either).

use secrecy::ExposeSecret as _;
use tributary_store::{AuditEvent, Role, StoreError, Tenant, TenantStatus, TokenGrant, new_token_id};

use crate::{TestDb, actor, unix_now};

/// The events a test expects of one tenant, oldest first, as (action, target).
struct Trail<'a> {
    db: &'a TestDb,
    tenant: Tenant,
    expected: Vec<(String, String)>,
}

impl Trail<'_> {
    /// Checks that exactly one event was written since there were `count_before`, that it is the
    /// newest event of the tenant, and that it is by the test actor with this action and target.
    async fn one_new_event(&mut self, count_before: i64, action: &str, target: &str) {
        assert_eq!(self.db.audit_event_count().await, count_before + 1, "{action}: exactly one event");
        let newest = self.db.store.audit_events(&self.tenant.id, 1).await.expect("the trail is readable");
        let [event] = newest.as_slice() else { panic!("{action}: no event in {newest:?}") };
        assert_eq!(event.tenant_id.as_deref(), Some(self.tenant.id.as_str()), "{event:?}");
        assert_eq!((event.actor.as_str(), event.request_id.as_str()), ("user:test", "req-1"), "{event:?}");
        assert_eq!((event.action.as_str(), event.target.as_str()), (action, target), "{event:?}");
        assert!(event.id.starts_with("ev_"), "{event:?}");
        assert!((unix_now() - 5..=unix_now()).contains(&event.at), "{event:?}");
        self.expected.push((action.to_owned(), target.to_owned()));
    }
}

#[tokio::test]
async fn every_management_write_leaves_one_event_with_actor_request_action_and_target() {
    for db in TestDb::all().await {
        let (store, actor) = (&db.store, actor());
        let n = db.audit_event_count().await;
        let tenant = store.create_tenant_as(&actor, "Acme").await.unwrap();
        let t = tenant.id.clone();
        let mut trail = Trail { db: &db, tenant: tenant.clone(), expected: Vec::new() };
        trail.one_new_event(n, "tenant.create", &t).await;

        let n = db.audit_event_count().await;
        let app = store.create_app_as(&actor, &t, "prod").await.unwrap();
        trail.one_new_event(n, "app.create", &app.id).await;

        let n = db.audit_event_count().await;
        let key = store.create_api_key_as(&actor, &t, &app.id, "ci").await.unwrap();
        trail.one_new_event(n, "api_key.create", &key.record.id).await;

        let n = db.audit_event_count().await;
        store.revoke_api_key_as(&actor, &t, &app.id, &key.record.id).await.unwrap();
        trail.one_new_event(n, "api_key.revoke", &key.record.id).await;

        let n = db.audit_event_count().await;
        let signing = store.create_signing_key_as(&actor, &t, &app.id).await.unwrap();
        trail.one_new_event(n, "signing_key.create", &signing.kid).await;

        let n = db.audit_event_count().await;
        store.bump_signing_key_generation(&actor, &t, &app.id, &signing.kid).await.unwrap();
        trail.one_new_event(n, "signing_key.bump_generation", &signing.kid).await;

        let n = db.audit_event_count().await;
        store.revoke_signing_key(&actor, &t, &app.id, &signing.kid).await.unwrap();
        trail.one_new_event(n, "signing_key.revoke", &signing.kid).await;

        for status in
            [TenantStatus::Suspended, TenantStatus::PastDue, TenantStatus::Deleted, TenantStatus::Active]
        {
            let n = db.audit_event_count().await;
            store.set_tenant_status(&actor, &t, status).await.unwrap();
            trail.one_new_event(n, &format!("tenant.status.{}", status.as_str()), &t).await;
        }

        let n = db.audit_event_count().await;
        store.revoke_tenant_tokens(&actor, &t).await.unwrap();
        trail.one_new_event(n, "tenant.revoke_tokens", &t).await;

        let n = db.audit_event_count().await;
        store.revoke_app_tokens(&actor, &t, &app.id).await.unwrap();
        trail.one_new_event(n, "app.revoke_tokens", &app.id).await;

        let jti = new_token_id();
        let n = db.audit_event_count().await;
        store.revoke_token(&actor, &t, &app.id, &jti).await.unwrap();
        trail.one_new_event(n, "token.revoke", &format!("{}/{jti}", app.id)).await;

        let n = db.audit_event_count().await;
        store.revoke_client(&actor, &t, &app.id, "alice").await.unwrap();
        trail.one_new_event(n, "client.revoke", &format!("{}/alice", app.id)).await;

        let n = db.audit_event_count().await;
        let token = store.create_management_token(&actor, Some(&t), "terraform", Role::Admin).await.unwrap();
        trail.one_new_event(n, "management_token.create", &token.record.id).await;

        let n = db.audit_event_count().await;
        store.revoke_management_token(&actor, &t, &token.record.id).await.unwrap();
        trail.one_new_event(n, "management_token.revoke", &token.record.id).await;

        // Listed newest first, and `limit` keeps the newest.
        let mut expected = trail.expected;
        expected.reverse();
        let listed: Vec<(String, String)> = store
            .audit_events(&t, 100)
            .await
            .unwrap()
            .into_iter()
            .map(|event| (event.action, event.target))
            .collect();
        assert_eq!(listed, expected);
        let newest_three: Vec<String> =
            store.audit_events(&t, 3).await.unwrap().into_iter().map(|event| event.action).collect();
        assert_eq!(newest_three, ["management_token.revoke", "management_token.create", "client.revoke"]);
    }
}

#[tokio::test]
async fn operator_token_creation_is_audited_without_a_tenant() {
    for db in TestDb::all().await {
        let tenant = db.store.create_tenant("Acme").await.unwrap();
        let before = db.audit_event_count().await;
        let ops = db.store.create_management_token(&actor(), None, "ops", Role::Operator).await.unwrap();
        assert_eq!(db.audit_event_count().await, before + 1);
        let (tenant_id, who, action, target, request_id): (Option<String>, String, String, String, String) =
            sqlx::query_as(
                "SELECT tenant_id, actor, action, target, request_id FROM audit_events WHERE target = $1",
            )
            .bind(&ops.record.id)
            .fetch_one(&db.raw)
            .await
            .unwrap();
        assert_eq!(tenant_id, None);
        assert_eq!(
            (who.as_str(), action.as_str(), target.as_str(), request_id.as_str()),
            ("user:test", "management_token.create", ops.record.id.as_str(), "req-1")
        );
        // No tenant's trail shows it.
        let trail = db.store.audit_events(&tenant.id, 100).await.unwrap();
        assert!(trail.iter().all(|event| event.target != ops.record.id), "{trail:?}");
    }
}

#[tokio::test]
async fn system_writes_are_audited_as_the_system() {
    for db in TestDb::all().await {
        let (tenant, app) = db.tenant_with_app("prod").await;
        let events = db.store.audit_events(&tenant.id, 10).await.unwrap();
        let seen: Vec<(&str, &str, &str, &str)> = events
            .iter()
            .map(|e| (e.actor.as_str(), e.request_id.as_str(), e.action.as_str(), e.target.as_str()))
            .collect();
        assert_eq!(
            seen,
            [
                ("system", "", "app.create", app.id.as_str()),
                ("system", "", "tenant.create", tenant.id.as_str())
            ]
        );
    }
}

#[tokio::test]
async fn events_of_one_tenant_are_not_listed_for_another() {
    for db in TestDb::all().await {
        let a = db.store.create_tenant_as(&actor(), "A").await.unwrap();
        let b = db.store.create_tenant_as(&actor(), "B").await.unwrap();
        db.store.create_app_as(&actor(), &a.id, "prod").await.unwrap();
        db.store.set_tenant_status(&actor(), &a.id, TenantStatus::Suspended).await.unwrap();

        let of_b = db.store.audit_events(&b.id, 100).await.unwrap();
        let seen: Vec<(&str, &str)> = of_b.iter().map(|e| (e.action.as_str(), e.target.as_str())).collect();
        assert_eq!(seen, [("tenant.create", b.id.as_str())]);
        assert_eq!(db.store.audit_events(&a.id, 100).await.unwrap().len(), 3);
        assert!(db.store.audit_events(&a.id, 0).await.unwrap().is_empty());
        for forged in ["ten_0000000000000000000000000a", "ten_'; DROP TABLE audit_events;--", "\u{0}", ""] {
            assert!(db.store.audit_events(forged, 100).await.unwrap().is_empty(), "{forged:?}");
        }
    }
}

/// Runs a write that must fail and checks that it left no audit event and no change: `rows` is
/// a `SELECT COUNT(*)` of the table it would have written to.
async fn assert_failed_write_leaves_nothing(
    db: &TestDb,
    rows: &'static str,
    write: impl Future<Output = StoreError>,
) -> StoreError {
    let (events, count) = (db.audit_event_count().await, db.count(rows).await);
    let err = write.await;
    assert_eq!(db.audit_event_count().await, events, "{err:?}: no audit event");
    assert_eq!(db.count(rows).await, count, "{err:?}: no row");
    err
}

#[tokio::test]
async fn a_failed_write_leaves_no_event_and_no_row() {
    for db in TestDb::all().await {
        let store = &db.store;
        let actor = actor();
        let tenant = store.create_tenant_as(&actor, "Acme").await.unwrap();
        let app = store.create_app_as(&actor, &tenant.id, "prod").await.unwrap();
        let key = store.create_api_key_as(&actor, &tenant.id, &app.id, "ci").await.unwrap();
        let signing = store.create_signing_key_as(&actor, &tenant.id, &app.id).await.unwrap();
        let token = store.create_management_token(&actor, Some(&tenant.id), "tf", Role::Owner).await.unwrap();
        let other = store.create_tenant_as(&actor, "Other").await.unwrap();
        let unknown_tenant = "ten_0000000000000000000000000a";

        let apps = "SELECT COUNT(*) FROM apps";
        let err = assert_failed_write_leaves_nothing(&db, apps, async {
            store.create_app_as(&actor, &tenant.id, "prod").await.unwrap_err()
        })
        .await;
        assert!(matches!(err, StoreError::AlreadyExists("app")), "{err:?}");
        let err = assert_failed_write_leaves_nothing(&db, apps, async {
            store.create_app_as(&actor, unknown_tenant, "prod").await.unwrap_err()
        })
        .await;
        assert!(matches!(err, StoreError::NotFound("tenant")), "{err:?}");

        let keys = "SELECT COUNT(*) FROM api_keys";
        let err = assert_failed_write_leaves_nothing(&db, keys, async {
            store.create_api_key_as(&actor, &other.id, &app.id, "ci").await.unwrap_err()
        })
        .await;
        assert!(matches!(err, StoreError::NotFound("app")), "{err:?}");
        let revoked_keys = "SELECT COUNT(*) FROM api_keys WHERE revoked_at IS NOT NULL";
        let err = assert_failed_write_leaves_nothing(&db, revoked_keys, async {
            store.revoke_api_key_as(&actor, &other.id, &app.id, &key.record.id).await.unwrap_err()
        })
        .await;
        assert!(matches!(err, StoreError::NotFound("api key")), "{err:?}");
        store.verify_api_key(key.plaintext.expose_secret()).await.unwrap();

        let signing_keys = "SELECT COUNT(*) FROM signing_keys";
        let err = assert_failed_write_leaves_nothing(&db, signing_keys, async {
            store.create_signing_key_as(&actor, &other.id, &app.id).await.unwrap_err()
        })
        .await;
        assert!(matches!(err, StoreError::NotFound("app")), "{err:?}");
        let changed_keys =
            "SELECT COUNT(*) FROM signing_keys WHERE generation <> 1 OR revoked_at IS NOT NULL";
        let err = assert_failed_write_leaves_nothing(&db, changed_keys, async {
            store.bump_signing_key_generation(&actor, &other.id, &app.id, &signing.kid).await.unwrap_err()
        })
        .await;
        assert!(matches!(err, StoreError::NotFound("signing key")), "{err:?}");
        let err = assert_failed_write_leaves_nothing(&db, changed_keys, async {
            store.revoke_signing_key(&actor, &other.id, &app.id, &signing.kid).await.unwrap_err()
        })
        .await;
        assert!(matches!(err, StoreError::NotFound("signing key")), "{err:?}");

        let revocations = "SELECT COUNT(*) FROM token_revocations";
        let err = assert_failed_write_leaves_nothing(&db, revocations, async {
            store.revoke_token(&actor, &other.id, &app.id, &new_token_id()).await.unwrap_err()
        })
        .await;
        assert!(matches!(err, StoreError::NotFound("app")), "{err:?}");
        let err = assert_failed_write_leaves_nothing(&db, revocations, async {
            store.revoke_client(&actor, &other.id, &app.id, "alice").await.unwrap_err()
        })
        .await;
        assert!(matches!(err, StoreError::NotFound("app")), "{err:?}");

        let cut_offs = "SELECT COUNT(*) FROM apps WHERE tokens_revoked_before <> 0";
        let err = assert_failed_write_leaves_nothing(&db, cut_offs, async {
            store.revoke_app_tokens(&actor, &other.id, &app.id).await.unwrap_err()
        })
        .await;
        assert!(matches!(err, StoreError::NotFound("app")), "{err:?}");

        let tokens = "SELECT COUNT(*) FROM management_tokens";
        let err = assert_failed_write_leaves_nothing(&db, tokens, async {
            store.create_management_token(&actor, Some(unknown_tenant), "tf", Role::Admin).await.unwrap_err()
        })
        .await;
        assert!(matches!(err, StoreError::NotFound("tenant")), "{err:?}");
        let err = assert_failed_write_leaves_nothing(&db, tokens, async {
            store.create_management_token(&actor, Some(&tenant.id), "tf", Role::Operator).await.unwrap_err()
        })
        .await;
        assert!(matches!(err, StoreError::InvalidRole), "{err:?}");
        let revoked_tokens = "SELECT COUNT(*) FROM management_tokens WHERE revoked_at IS NOT NULL";
        let err = assert_failed_write_leaves_nothing(&db, revoked_tokens, async {
            store.revoke_management_token(&actor, &other.id, &token.record.id).await.unwrap_err()
        })
        .await;
        assert!(matches!(err, StoreError::NotFound("management token")), "{err:?}");

        let statuses = "SELECT COUNT(*) FROM tenants WHERE status <> 'active'";
        let err = assert_failed_write_leaves_nothing(&db, statuses, async {
            store.set_tenant_status(&actor, unknown_tenant, TenantStatus::Deleted).await.unwrap_err()
        })
        .await;
        assert!(matches!(err, StoreError::NotFound("tenant")), "{err:?}");

        // The trail holds the successful writes only.
        let actions: Vec<String> = store
            .audit_events(&tenant.id, 100)
            .await
            .unwrap()
            .into_iter()
            .map(|e: AuditEvent| e.action)
            .collect();
        assert_eq!(
            actions,
            [
                "management_token.create",
                "signing_key.create",
                "api_key.create",
                "app.create",
                "tenant.create"
            ]
        );
    }
}

#[tokio::test]
async fn a_grant_is_not_an_audited_write() {
    for db in TestDb::all().await {
        let (tenant, app) = db.tenant_with_app("prod").await;
        let before = db.audit_event_count().await;
        let now = unix_now();
        let grant = TokenGrant {
            jti: new_token_id(),
            tenant_id: tenant.id.clone(),
            app_id: app.id.clone(),
            client_id: "alice".into(),
            kid: "sk_0000000000000000000000000a".into(),
            generation: 1,
            capabilities: "[]".into(),
            issued_at: now,
            expires_at: now + 60,
        };
        db.store.record_grant(&grant).await.unwrap();
        assert_eq!(db.audit_event_count().await, before);
        assert_eq!(db.store.grants(&tenant.id, &app.id, None, 10).await.unwrap(), vec![grant]);
    }
}
