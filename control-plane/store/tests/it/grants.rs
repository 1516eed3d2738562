//! Token grants: the record of every token the control plane minted, per app and client.

use tributary_store::{StoreError, TokenGrant, new_token_id};

use crate::{TestDb, unix_now};

/// A grant of a new token of the app to `client_id`.
fn grant(tenant_id: &str, app_id: &str, client_id: &str) -> TokenGrant {
    let now = unix_now();
    TokenGrant {
        jti: new_token_id(),
        tenant_id: tenant_id.to_owned(),
        app_id: app_id.to_owned(),
        client_id: client_id.to_owned(),
        kid: "sk_0000000000000000000000000a".into(),
        generation: 2,
        capabilities: r#"["publish:chat.*","presence:lobby"]"#.into(),
        issued_at: now,
        expires_at: now + 900,
    }
}

#[test]
fn token_ids_are_prefixed_and_unique() {
    let first = new_token_id();
    assert!(first.starts_with("tok_"), "{first}");
    assert_eq!(first.len(), "tok_".len() + 26);
    assert!(first.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'), "{first}");
    assert_ne!(new_token_id(), first);
}

#[tokio::test]
async fn grants_are_listed_newest_first_and_by_client() {
    for db in TestDb::all().await {
        let (tenant, app) = db.tenant_with_app("prod").await;
        let mut recorded = Vec::new();
        for client in ["alice", "bob", "alice"] {
            let minted = grant(&tenant.id, &app.id, client);
            db.store.record_grant(&minted).await.unwrap();
            recorded.push(minted);
        }

        let all = db.store.grants(&tenant.id, &app.id, None, 10).await.unwrap();
        assert_eq!(all, [recorded[2].clone(), recorded[1].clone(), recorded[0].clone()]);
        let of_alice = db.store.grants(&tenant.id, &app.id, Some("alice"), 10).await.unwrap();
        assert_eq!(of_alice, [recorded[2].clone(), recorded[0].clone()]);
        let of_bob = db.store.grants(&tenant.id, &app.id, Some("bob"), 10).await.unwrap();
        assert_eq!(of_bob, [recorded[1].clone()]);
        assert!(db.store.grants(&tenant.id, &app.id, Some("carol"), 10).await.unwrap().is_empty());
        assert_eq!(db.store.grants(&tenant.id, &app.id, None, 1).await.unwrap(), [recorded[2].clone()]);
    }
}

#[tokio::test]
async fn grants_are_only_visible_in_their_own_tenant_and_app() {
    for db in TestDb::all().await {
        let (tenant, app) = db.tenant_with_app("prod").await;
        let sibling = db.store.create_app(&tenant.id, "staging").await.unwrap();
        let (other, other_app) = db.tenant_with_app("prod").await;
        db.store.record_grant(&grant(&tenant.id, &app.id, "alice")).await.unwrap();

        assert!(db.store.grants(&other.id, &app.id, None, 10).await.unwrap().is_empty());
        assert!(db.store.grants(&other.id, &app.id, Some("alice"), 10).await.unwrap().is_empty());
        assert!(db.store.grants(&other.id, &other_app.id, None, 10).await.unwrap().is_empty());
        assert!(db.store.grants(&tenant.id, &sibling.id, None, 10).await.unwrap().is_empty());
        for forged in ["app_'; DROP TABLE token_grants;--", "app_\u{0}", ""] {
            assert!(db.store.grants(&tenant.id, forged, None, 10).await.unwrap().is_empty(), "{forged:?}");
            assert!(db.store.grants(forged, &app.id, None, 10).await.unwrap().is_empty(), "{forged:?}");
        }
        assert_eq!(db.store.grants(&tenant.id, &app.id, None, 10).await.unwrap().len(), 1);
    }
}

#[tokio::test]
async fn a_grant_for_an_app_of_another_tenant_is_not_recorded() {
    for db in TestDb::all().await {
        let (_, app) = db.tenant_with_app("prod").await;
        let other = db.store.create_tenant("Other").await.unwrap();
        let err = db.store.record_grant(&grant(&other.id, &app.id, "alice")).await.unwrap_err();
        assert!(matches!(err, StoreError::NotFound("app")), "{err:?}");
        assert_eq!(db.count("SELECT COUNT(*) FROM token_grants").await, 0);
    }
}

#[tokio::test]
async fn grants_expired_longer_than_kept_are_purged_and_live_ones_stay() {
    for db in TestDb::all().await {
        let (tenant, app) = db.tenant_with_app("prod").await;
        let live = grant(&tenant.id, &app.id, "alice");
        let recent = TokenGrant { expires_at: unix_now() - 100, ..grant(&tenant.id, &app.id, "bob") };
        let old = TokenGrant { expires_at: unix_now() - 10_000, ..grant(&tenant.id, &app.id, "carol") };
        for g in [&live, &recent, &old] {
            db.store.record_grant(g).await.unwrap();
        }
        assert_eq!(db.store.purge_expired_grants(1_000).await.unwrap(), 1, "only the one expired long ago");
        let left = db.store.grants(&tenant.id, &app.id, None, 10).await.unwrap();
        assert_eq!(left, [recent.clone(), live.clone()]);
        assert_eq!(db.store.purge_expired_grants(1_000).await.unwrap(), 0, "idempotent");
    }
}
