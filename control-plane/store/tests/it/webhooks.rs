//! Webhook endpoints on both backends: secrets shown once and kept encrypted, rotation with an
//! overlap, enabling and disabling, the tenant's scope, and master key rotation.

use secrecy::ExposeSecret as _;
use tributary_store::{MasterKey, NewWebhookEndpoint, Store, StoreError};

use crate::{TestDb, actor};

fn new_endpoint(url: &str) -> NewWebhookEndpoint {
    NewWebhookEndpoint {
        url: url.into(),
        description: "orders".into(),
        headers: r#"{"x-team":"payments"}"#.into(),
    }
}

/// Creates an endpoint of the app at `url`; returns it and its secret.
async fn create(
    db: &TestDb,
    tenant_id: &str,
    app_id: &str,
    url: &str,
) -> (tributary_store::WebhookEndpoint, secrecy::SecretSlice<u8>) {
    db.store
        .create_webhook_endpoint(&actor(), tenant_id, app_id, &new_endpoint(url))
        .await
        .expect("the endpoint is created")
}

async fn raw_secret(db: &TestDb, endpoint_id: &str) -> Vec<u8> {
    let (stored,): (Vec<u8>,) =
        sqlx::query_as("SELECT secret_ciphertext FROM webhook_endpoints WHERE id = $1")
            .bind(endpoint_id)
            .fetch_one(&db.raw)
            .await
            .expect("the endpoint's row is readable");
    stored
}

#[tokio::test]
async fn an_endpoints_secret_is_shown_once_kept_encrypted_and_rotated_with_an_overlap() {
    for db in TestDb::all().await {
        let (tenant, app) = db.tenant_with_app("prod").await;
        let (endpoint, secret) = create(&db, &tenant.id, &app.id, "https://example.com/hook").await;
        assert!(endpoint.id.starts_with("wh_") && endpoint.enabled);
        assert_eq!(secret.expose_secret().len(), 32);
        let stored = raw_secret(&db, &endpoint.id).await;
        assert!(
            !stored.windows(32).any(|w| w == secret.expose_secret()),
            "the secret is not stored in the clear"
        );
        let signing = db.store.webhook_signing_secrets(&tenant.id, &endpoint.id, 0).await.unwrap();
        assert_eq!(signing.current.expose_secret(), secret.expose_secret());
        assert!(signing.previous.is_none());

        let rotated =
            db.store.rotate_webhook_secret(&actor(), &tenant.id, &endpoint.id, 10_000).await.unwrap();
        assert_ne!(rotated.expose_secret(), secret.expose_secret());
        let during = db.store.webhook_signing_secrets(&tenant.id, &endpoint.id, 9_999).await.unwrap();
        assert_eq!(during.current.expose_secret(), rotated.expose_secret());
        assert_eq!(
            during.previous.map(|p| p.expose_secret().to_vec()),
            Some(secret.expose_secret().to_vec())
        );
        let after = db.store.webhook_signing_secrets(&tenant.id, &endpoint.id, 10_000).await.unwrap();
        assert!(after.previous.is_none(), "the old secret stops signing when the overlap ends");

        // A row's ciphertext moved to another endpoint does not open there.
        let (other, _) = create(&db, &tenant.id, &app.id, "https://example.com/b").await;
        sqlx::query("UPDATE webhook_endpoints SET secret_ciphertext = $1 WHERE id = $2")
            .bind(raw_secret(&db, &endpoint.id).await)
            .bind(&other.id)
            .execute(&db.raw)
            .await
            .unwrap();
        assert!(matches!(
            db.store.webhook_signing_secrets(&tenant.id, &other.id, 0).await,
            Err(StoreError::Decrypt)
        ));
    }
}

#[tokio::test]
async fn endpoints_are_seen_and_changed_only_in_their_own_tenant() {
    for db in TestDb::all().await {
        let (tenant, app) = db.tenant_with_app("prod").await;
        let (intruder, intruders_app) = db.tenant_with_app("elsewhere").await;
        let (endpoint, _) = create(&db, &tenant.id, &app.id, "https://example.com/hook").await;
        let not_found = |r: Result<(), StoreError>| matches!(r, Err(StoreError::NotFound(_)));
        assert!(matches!(
            db.store.webhook_endpoint(&intruder.id, &endpoint.id).await,
            Err(StoreError::NotFound(_))
        ));
        assert!(db.store.webhook_endpoints(&intruder.id, &app.id).await.unwrap().is_empty());
        assert!(not_found(
            db.store.set_webhook_enabled(&actor(), &intruder.id, &endpoint.id, Some("x")).await
        ));
        assert!(not_found(db.store.delete_webhook_endpoint(&actor(), &intruder.id, &endpoint.id).await));
        assert!(db.store.rotate_webhook_secret(&actor(), &intruder.id, &endpoint.id, 1).await.is_err());
        assert!(db.store.webhook_signing_secrets(&intruder.id, &endpoint.id, 0).await.is_err());
        let foreign_app = db
            .store
            .create_webhook_endpoint(
                &actor(),
                &tenant.id,
                &intruders_app.id,
                &new_endpoint("https://x.example/"),
            )
            .await;
        assert!(matches!(foreign_app, Err(StoreError::NotFound("app"))));

        // Its own tenant disables it with a reason, enables it again, lists it, deletes it.
        db.store
            .set_webhook_enabled(&actor(), &tenant.id, &endpoint.id, Some("failing for 5 days"))
            .await
            .unwrap();
        let disabled = db.store.webhook_endpoint(&tenant.id, &endpoint.id).await.unwrap();
        assert_eq!(
            (disabled.enabled, disabled.disabled_reason.as_deref()),
            (false, Some("failing for 5 days"))
        );
        db.store.set_webhook_enabled(&actor(), &tenant.id, &endpoint.id, None).await.unwrap();
        let listed = db.store.webhook_endpoints(&tenant.id, &app.id).await.unwrap();
        assert_eq!(
            (listed.len(), listed[0].enabled, listed[0].headers.as_str()),
            (1, true, r#"{"x-team":"payments"}"#)
        );
        db.store.delete_webhook_endpoint(&actor(), &tenant.id, &endpoint.id).await.unwrap();
        assert!(db.store.webhook_endpoints(&tenant.id, &app.id).await.unwrap().is_empty());
    }
}

#[tokio::test]
async fn a_master_key_rotation_reencrypts_webhook_secrets_too() {
    for db in TestDb::all().await {
        let (tenant, app) = db.tenant_with_app("prod").await;
        let (endpoint, secret) = create(&db, &tenant.id, &app.id, "https://example.com/hook").await;
        let rotated_secret =
            db.store.rotate_webhook_secret(&actor(), &tenant.id, &endpoint.id, i64::MAX).await.unwrap();
        let rotated = Store::open(&db.url, &MasterKey::generate()).await.unwrap();
        assert!(rotated.webhook_signing_secrets(&tenant.id, &endpoint.id, 0).await.is_err(), "not yet");
        // The app has no signing key here: the endpoint is the one secret rewritten.
        assert_eq!(rotated.reencrypt_secrets(&db.master_key()).await.unwrap(), 1);
        let read = rotated.webhook_signing_secrets(&tenant.id, &endpoint.id, 0).await.unwrap();
        assert_eq!(read.current.expose_secret(), rotated_secret.expose_secret());
        assert_eq!(read.previous.map(|p| p.expose_secret().to_vec()), Some(secret.expose_secret().to_vec()));
    }
}
