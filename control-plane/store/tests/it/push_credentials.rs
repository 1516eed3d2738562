//! Apps' push and SMS credentials, on both backends.

use secrecy::ExposeSecret as _;
use tributary_store::{PushService, StoreError};

use crate::{TestDb, actor};

#[tokio::test]
async fn credentials_are_kept_encrypted_shown_without_their_secret_and_replaced() {
    for db in TestDb::all().await {
        let (tenant, app) = db.tenant_with_app("shop").await;
        let settings = r#"{"team_id":"TEAM123456","key_id":"KEY7654321","topic":"com.example.shop"}"#;
        let key = b"-----BEGIN PRIVATE KEY-----\nMIGH...\n-----END PRIVATE KEY-----\n";
        let set = db
            .store
            .set_push_credentials(&actor(), &tenant.id, &app.id, PushService::Apns, settings, key)
            .await
            .unwrap();
        assert_eq!(
            (set.service, set.settings.as_str(), set.disabled_reason.as_deref()),
            (PushService::Apns, settings, None)
        );
        let sms = r#"{"account_sid":"AC0","from":"+15005550006"}"#;
        db.store
            .set_push_credentials(&actor(), &tenant.id, &app.id, PushService::Twilio, sms, b"auth-token")
            .await
            .unwrap();
        let listed = db.store.push_credentials(&tenant.id, &app.id).await.unwrap();
        assert_eq!(
            listed.iter().map(|c| c.service).collect::<Vec<_>>(),
            [PushService::Apns, PushService::Twilio]
        );
        let (found, secret) = db.store.push_secret(&app.id, PushService::Apns).await.unwrap().unwrap();
        assert_eq!((found, secret.expose_secret()), (set.clone(), &key[..]));
        assert!(db.store.push_secret(&app.id, PushService::Fcm).await.unwrap().is_none());
        // At rest, the secret is not in the row.
        let stored: Vec<u8> =
            sqlx::query_scalar("SELECT secret_ciphertext FROM push_credentials WHERE service = 'twilio'")
                .fetch_one(&db.raw)
                .await
                .unwrap();
        assert!(!stored.windows(10).any(|w| w == b"auth-token"));
        // Replaced: the new secret, the same row.
        db.store
            .set_push_credentials(&actor(), &tenant.id, &app.id, PushService::Twilio, sms, b"new-token")
            .await
            .unwrap();
        let (_, secret) = db.store.push_secret(&app.id, PushService::Twilio).await.unwrap().unwrap();
        assert_eq!(secret.expose_secret(), b"new-token");
        assert_eq!(db.store.push_credentials(&tenant.id, &app.id).await.unwrap().len(), 2);
        let actions: Vec<String> =
            db.store.audit_events(&tenant.id, 10).await.unwrap().into_iter().map(|e| e.action).collect();
        assert_eq!(actions.iter().filter(|a| *a == "push.credentials_set").count(), 3, "{actions:?}");

        db.store.delete_push_credentials(&actor(), &tenant.id, &app.id, PushService::Twilio).await.unwrap();
        assert!(db.store.push_secret(&app.id, PushService::Twilio).await.unwrap().is_none());
        assert!(matches!(
            db.store.delete_push_credentials(&actor(), &tenant.id, &app.id, PushService::Twilio).await,
            Err(StoreError::NotFound(_))
        ));
    }
}

#[tokio::test]
async fn refused_credentials_stop_the_service_until_they_are_set_again() {
    for db in TestDb::all().await {
        let (tenant, app) = db.tenant_with_app("shop").await;
        db.store
            .set_push_credentials(&actor(), &tenant.id, &app.id, PushService::Fcm, "{}", b"sa")
            .await
            .unwrap();
        let disabled =
            db.store.disable_push_credentials(&app.id, PushService::Fcm, "invalid_grant").await.unwrap();
        assert_eq!(disabled.unwrap().disabled_reason.as_deref(), Some("invalid_grant"));
        assert!(
            db.store.disable_push_credentials(&app.id, PushService::Fcm, "again").await.unwrap().is_none(),
            "once"
        );
        let newest = &db.store.audit_events(&tenant.id, 1).await.unwrap()[0];
        assert_eq!((newest.action.as_str(), newest.actor.as_str()), ("push.credentials_refused", "system"));
        let (found, _) = db.store.push_secret(&app.id, PushService::Fcm).await.unwrap().unwrap();
        assert_eq!(found.disabled_reason.as_deref(), Some("invalid_grant"));
        db.store
            .set_push_credentials(&actor(), &tenant.id, &app.id, PushService::Fcm, "{}", b"sa2")
            .await
            .unwrap();
        let (found, _) = db.store.push_secret(&app.id, PushService::Fcm).await.unwrap().unwrap();
        assert_eq!(found.disabled_reason, None, "set again: enabled");
    }
}

#[tokio::test]
async fn credentials_are_seen_only_in_their_own_tenant_and_cannot_be_moved_between_apps() {
    for db in TestDb::all().await {
        let (tenant, app) = db.tenant_with_app("shop").await;
        let (other, other_app) = db.tenant_with_app("elsewhere").await;
        assert!(matches!(
            db.store.set_push_credentials(&actor(), &other.id, &app.id, PushService::Apns, "{}", b"k").await,
            Err(StoreError::NotFound("app"))
        ));
        db.store
            .set_push_credentials(&actor(), &tenant.id, &app.id, PushService::Apns, "{}", b"mine")
            .await
            .unwrap();
        db.store
            .set_push_credentials(&actor(), &other.id, &other_app.id, PushService::Apns, "{}", b"theirs")
            .await
            .unwrap();
        assert!(db.store.push_credentials(&other.id, &app.id).await.unwrap().is_empty());
        assert!(
            db.store.delete_push_credentials(&actor(), &other.id, &app.id, PushService::Apns).await.is_err()
        );
        // A ciphertext copied into another app's row (of the same tenant: the same data key)
        // does not decrypt there: it is bound to its app and service.
        let sibling = db.store.create_app(&tenant.id, "sibling").await.unwrap();
        db.store
            .set_push_credentials(&actor(), &tenant.id, &sibling.id, PushService::Apns, "{}", b"k")
            .await
            .unwrap();
        sqlx::query(
            "UPDATE push_credentials SET secret_ciphertext = \
             (SELECT secret_ciphertext FROM push_credentials WHERE app_id = $1) WHERE app_id = $2",
        )
        .bind(&app.id)
        .bind(&sibling.id)
        .execute(&db.raw)
        .await
        .unwrap();
        assert!(matches!(
            db.store.push_secret(&sibling.id, PushService::Apns).await,
            Err(StoreError::Decrypt)
        ));
        let (_, mine) = db.store.push_secret(&app.id, PushService::Apns).await.unwrap().unwrap();
        assert_eq!(mine.expose_secret(), b"mine", "the original is untouched");
    }
}
