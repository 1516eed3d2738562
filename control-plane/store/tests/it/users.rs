//! Users, sessions and invitations on both backends.

use secrecy::ExposeSecret as _;
use tributary_store::{Role, StoreError};

use crate::{TestDb, actor};

#[tokio::test]
async fn passwords_are_stored_as_argon2id_and_sessions_end() {
    for db in TestDb::all().await {
        let user = db.store.create_user("Ada@Example.com", "Ada", "correct horse battery").await.unwrap();
        assert_eq!(user.email, "ada@example.com");
        let (stored,): (String,) = sqlx::query_as("SELECT password_hash FROM users WHERE id = $1")
            .bind(&user.id)
            .fetch_one(&db.raw)
            .await
            .unwrap();
        assert!(stored.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{stored}");
        assert!(!String::from_utf8_lossy(&db.stored_bytes().await).contains("correct horse battery"));
        assert_eq!(db.store.check_password(" ADA@example.com", "correct horse battery").await.unwrap(), user);
        for (email, password) in
            [("ada@example.com", "wrong password"), ("eve@example.com", "correct horse battery")]
        {
            assert!(matches!(
                db.store.check_password(email, password).await,
                Err(StoreError::InvalidCredentials)
            ));
        }
        assert!(matches!(
            db.store.create_user("ada@example.com", "Again", "another password").await,
            Err(StoreError::AlreadyExists(_))
        ));
        assert!(matches!(
            db.store.create_user("bob@example.com", "Bob", "short").await,
            Err(StoreError::InvalidPassword)
        ));

        let session = db.store.create_session(&user.id, 3600).await.unwrap();
        let verified = db.store.verify_session(session.token.expose_secret()).await.unwrap();
        assert_eq!(verified.user, user);
        assert!(verified.csrf_matches(session.csrf.expose_secret()));
        assert!(!verified.csrf_matches("csrf_other"));
        db.store.revoke_session(&session.id).await.unwrap();
        assert!(matches!(
            db.store.verify_session(session.token.expose_secret()).await,
            Err(StoreError::InvalidCredentials)
        ));
        let ended = db.store.create_session(&user.id, 0).await.unwrap();
        assert!(
            db.store.verify_session(ended.token.expose_secret()).await.is_err(),
            "a session past its end"
        );
    }
}

#[tokio::test]
async fn an_invitation_is_accepted_once_and_an_existing_account_needs_its_password() {
    for db in TestDb::all().await {
        let (tenant, _) = db.tenant_with_app("prod").await;
        let existing = db.store.create_user("bob@example.com", "Bob", "bob's password!").await.unwrap();
        let invitation = db
            .store
            .create_invitation(&actor(), &tenant.id, "BOB@example.com", Role::Admin, 3600)
            .await
            .unwrap();
        let token = invitation.token.expose_secret();
        assert!(matches!(
            db.store.accept_invitation(token, "Bob", "not bob's password").await,
            Err(StoreError::InvalidCredentials)
        ));
        let (user, joined) = db.store.accept_invitation(token, "Bob", "bob's password!").await.unwrap();
        assert_eq!((user.id.as_str(), joined.as_str()), (existing.id.as_str(), tenant.id.as_str()));
        assert_eq!(db.store.memberships(&user.id).await.unwrap(), [(tenant.id.clone(), Role::Admin)]);
        assert!(db.store.accept_invitation(token, "Bob", "bob's password!").await.is_err(), "used once");
        assert!(matches!(
            db.store.create_invitation(&actor(), &tenant.id, "x@y.z", Role::Operator, 60).await,
            Err(StoreError::InvalidRole)
        ));
        let ended = db
            .store
            .create_invitation(&actor(), &tenant.id, "late@example.com", Role::ReadOnly, 0)
            .await
            .unwrap();
        assert!(
            db.store.accept_invitation(ended.token.expose_secret(), "Late", "late password 1").await.is_err()
        );
    }
}
