//! Revocations of single tokens and of clients: what the data plane reads, their scoping, and
//! how long they are kept.

use tributary_store::revocation::REVOCATION_RETENTION_SECS;
use tributary_store::{Revoked, StoreError, TokenGrant, new_token_id};

use crate::{TestDb, actor, unix_now};

/// Returns the `expires_at` of every stored revocation of `subject`, read behind the store's back.
async fn raw_expiries(db: &TestDb, subject: &str) -> Vec<i64> {
    let rows: Vec<(i64,)> = sqlx::query_as("SELECT expires_at FROM token_revocations WHERE subject = $1")
        .bind(subject)
        .fetch_all(&db.raw)
        .await
        .expect("the revocations are readable");
    rows.into_iter().map(|(expires_at,)| expires_at).collect()
}

/// A grant of one token of the app that expires at `expires_at`.
fn grant(tenant_id: &str, app_id: &str, client_id: &str, expires_at: i64) -> TokenGrant {
    TokenGrant {
        jti: new_token_id(),
        tenant_id: tenant_id.to_owned(),
        app_id: app_id.to_owned(),
        client_id: client_id.to_owned(),
        kid: "sk_0000000000000000000000000a".into(),
        generation: 1,
        capabilities: r#"["subscribe:*"]"#.into(),
        issued_at: unix_now(),
        expires_at,
    }
}

#[tokio::test]
async fn revoked_tokens_and_clients_are_listed_for_their_app() {
    for db in TestDb::all().await {
        let (tenant, app) = db.tenant_with_app("prod").await;
        assert!(db.store.revocations(&app.id).await.unwrap().is_empty());
        let jti = new_token_id();
        db.store.revoke_token(&actor(), &tenant.id, &app.id, &jti).await.unwrap();
        let before = unix_now();
        let cutoff = db.store.revoke_client(&actor(), &tenant.id, &app.id, "alice").await.unwrap();
        let after = unix_now();
        assert!((before + 1..=after + 1).contains(&cutoff), "{before} {cutoff} {after}");

        let mut listed = db.store.revocations(&app.id).await.unwrap();
        listed.sort_by_key(|revoked| matches!(revoked, Revoked::Client { .. }));
        assert_eq!(
            listed,
            [Revoked::Token(jti), Revoked::Client { client_id: "alice".into(), issued_before: cutoff }]
        );
    }
}

#[tokio::test]
async fn revoking_twice_keeps_one_row() {
    for db in TestDb::all().await {
        let (tenant, app) = db.tenant_with_app("prod").await;
        let jti = new_token_id();
        for _ in 0..2 {
            db.store.revoke_token(&actor(), &tenant.id, &app.id, &jti).await.unwrap();
        }
        let first = db.store.revoke_client(&actor(), &tenant.id, &app.id, "alice").await.unwrap();
        let second = db.store.revoke_client(&actor(), &tenant.id, &app.id, "alice").await.unwrap();
        assert!(second >= first);

        assert_eq!(db.count("SELECT COUNT(*) FROM token_revocations").await, 2);
        let mut listed = db.store.revocations(&app.id).await.unwrap();
        listed.sort_by_key(|revoked| matches!(revoked, Revoked::Client { .. }));
        // The second revocation of the client moves its cut-off to the later time.
        assert_eq!(
            listed,
            [Revoked::Token(jti), Revoked::Client { client_id: "alice".into(), issued_before: second }]
        );
    }
}

#[tokio::test]
async fn revocations_of_one_app_are_not_listed_for_another() {
    for db in TestDb::all().await {
        let (tenant, app) = db.tenant_with_app("prod").await;
        let sibling = db.store.create_app(&tenant.id, "staging").await.unwrap();
        let (_, foreign) = db.tenant_with_app("prod").await;
        db.store.revoke_token(&actor(), &tenant.id, &app.id, &new_token_id()).await.unwrap();
        db.store.revoke_client(&actor(), &tenant.id, &app.id, "alice").await.unwrap();

        assert_eq!(db.store.revocations(&app.id).await.unwrap().len(), 2);
        assert!(db.store.revocations(&sibling.id).await.unwrap().is_empty());
        assert!(db.store.revocations(&foreign.id).await.unwrap().is_empty());
        for forged in
            ["app_0000000000000000000000000a", "app_'; DROP TABLE token_revocations;--", "app_\u{0}"]
        {
            assert!(db.store.revocations(forged).await.unwrap().is_empty(), "{forged:?}");
        }
    }
}

#[tokio::test]
async fn revoking_in_an_app_of_another_tenant_is_not_found() {
    for db in TestDb::all().await {
        let (_, app) = db.tenant_with_app("prod").await;
        let (other, _) = db.tenant_with_app("prod").await;
        let err = db.store.revoke_token(&actor(), &other.id, &app.id, &new_token_id()).await.unwrap_err();
        assert!(matches!(err, StoreError::NotFound("app")), "{err:?}");
        let err = db.store.revoke_client(&actor(), &other.id, &app.id, "alice").await.unwrap_err();
        assert!(matches!(err, StoreError::NotFound("app")), "{err:?}");
        assert!(db.store.revocations(&app.id).await.unwrap().is_empty());
        assert_eq!(db.count("SELECT COUNT(*) FROM token_revocations").await, 0);
    }
}

#[tokio::test]
async fn another_tenant_cannot_rewrite_an_existing_revocation_of_ours() {
    for db in TestDb::all().await {
        let (tenant, app) = db.tenant_with_app("prod").await;
        let (other, _) = db.tenant_with_app("prod").await;
        let cutoff = db.store.revoke_client(&actor(), &tenant.id, &app.id, "alice").await.unwrap();
        // The row exists, so an insert would take the upsert's update path: it must not.
        let err = db.store.revoke_client(&actor(), &other.id, &app.id, "alice").await.unwrap_err();
        assert!(matches!(err, StoreError::NotFound("app")), "{err:?}");
        let stored = db.store.revocations(&app.id).await.unwrap();
        assert_eq!(stored, [Revoked::Client { client_id: "alice".into(), issued_before: cutoff }]);
        assert!(
            db.store.audit_events(&other.id, 10).await.unwrap().iter().all(|e| e.action != "client.revoke")
        );
    }
}

#[tokio::test]
async fn revoking_in_a_forged_app_is_not_found() {
    for db in TestDb::all().await {
        let (tenant, _) = db.tenant_with_app("prod").await;
        // The jti is well formed, so the store looks for its grant before it checks the app.
        let jti = new_token_id();
        for forged in ["app_0000000000000000000000000a", "app_'; DROP TABLE apps;--", "app_\u{0}", "\u{0}"] {
            let err = db.store.revoke_token(&actor(), &tenant.id, forged, &jti).await.unwrap_err();
            assert!(
                matches!(err, StoreError::NotFound("app")),
                "{:?} {forged:?}: {err:?}",
                db.store.backend()
            );
            let err = db.store.revoke_client(&actor(), &tenant.id, forged, "alice").await.unwrap_err();
            assert!(
                matches!(err, StoreError::NotFound("app")),
                "{:?} {forged:?}: {err:?}",
                db.store.backend()
            );
        }
        assert_eq!(db.count("SELECT COUNT(*) FROM token_revocations").await, 0);
    }
}

#[tokio::test]
async fn expired_revocations_are_not_listed_and_are_purged() {
    for db in TestDb::all().await {
        let (tenant, app) = db.tenant_with_app("prod").await;
        let (other_tenant, other_app) = db.tenant_with_app("prod").await;
        db.store.revoke_token(&actor(), &tenant.id, &app.id, &new_token_id()).await.unwrap();
        db.store.revoke_client(&actor(), &tenant.id, &app.id, "alice").await.unwrap();
        let kept = new_token_id();
        db.store.revoke_token(&actor(), &other_tenant.id, &other_app.id, &kept).await.unwrap();
        assert_eq!(db.store.purge_expired_revocations().await.unwrap(), 0, "nothing has expired yet");

        sqlx::query("UPDATE token_revocations SET expires_at = 0 WHERE app_id = $1")
            .bind(&app.id)
            .execute(&db.raw)
            .await
            .unwrap();
        assert!(db.store.revocations(&app.id).await.unwrap().is_empty());
        assert_eq!(db.count("SELECT COUNT(*) FROM token_revocations").await, 3, "not read, still stored");

        assert_eq!(db.store.purge_expired_revocations().await.unwrap(), 2);
        assert_eq!(db.count("SELECT COUNT(*) FROM token_revocations").await, 1);
        assert_eq!(db.store.revocations(&other_app.id).await.unwrap(), [Revoked::Token(kept)]);
        assert_eq!(db.store.purge_expired_revocations().await.unwrap(), 0);
    }
}

#[tokio::test]
async fn a_revoked_minted_token_is_kept_until_the_token_expires_and_its_leeway() {
    for db in TestDb::all().await {
        let (tenant, app) = db.tenant_with_app("prod").await;
        let minted = grant(&tenant.id, &app.id, "alice", unix_now() + 3600);
        db.store.record_grant(&minted).await.unwrap();
        db.store.revoke_token(&actor(), &tenant.id, &app.id, &minted.jti).await.unwrap();
        // A minute past `exp`: the data plane admits a token up to its leeway (at most 60 s)
        // after it.
        assert_eq!(raw_expiries(&db, &minted.jti).await, [minted.expires_at + 60]);
        assert_eq!(db.store.revocations(&app.id).await.unwrap(), [Revoked::Token(minted.jti.clone())]);
    }
}

#[tokio::test]
async fn a_revoked_token_without_a_grant_of_its_app_is_kept_for_the_retention_period() {
    for db in TestDb::all().await {
        let (tenant, app) = db.tenant_with_app("prod").await;
        let sibling = db.store.create_app(&tenant.id, "staging").await.unwrap();
        // Minted for the sibling: its expiry says nothing about a token of `app` with this jti.
        let minted = grant(&tenant.id, &sibling.id, "alice", unix_now() + 3600);
        db.store.record_grant(&minted).await.unwrap();

        let unknown = "external-jti-1";
        for jti in [minted.jti.as_str(), unknown] {
            let before = unix_now();
            db.store.revoke_token(&actor(), &tenant.id, &app.id, jti).await.unwrap();
            let after = unix_now();
            let expiries = raw_expiries(&db, jti).await;
            let [expires_at] = expiries.as_slice() else { panic!("{jti}: {expiries:?}") };
            let window = before + REVOCATION_RETENTION_SECS..=after + REVOCATION_RETENTION_SECS;
            assert!(window.contains(expires_at), "{jti}: {expires_at} not in {window:?}");
        }
        let revoke_client_before = unix_now();
        db.store.revoke_client(&actor(), &tenant.id, &app.id, "alice").await.unwrap();
        let expiries = raw_expiries(&db, "alice").await;
        let [expires_at] = expiries.as_slice() else { panic!("{expiries:?}") };
        assert!(*expires_at >= revoke_client_before + REVOCATION_RETENTION_SECS, "{expires_at}");
        assert!(*expires_at <= unix_now() + REVOCATION_RETENTION_SECS, "{expires_at}");
    }
}
