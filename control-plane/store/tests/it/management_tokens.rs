//! Management tokens: the `trbm_<token_id>_<secret>` credentials of the management API, per
//! tenant with a tenant role or, without a tenant, for the operator.

use secrecy::ExposeSecret as _;
use tributary_store::{Role, StoreError};

use crate::{TestDb, actor};

#[test]
fn role_names_round_trip() {
    let names: Vec<&str> = Role::ALL.iter().map(|role| role.as_str()).collect();
    assert_eq!(names, ["read_only", "developer", "admin", "owner", "operator"]);
    for role in Role::ALL {
        assert_eq!(Role::parse(role.as_str()), Some(role));
    }
    for unknown in ["", "Developer", "readonly", "root"] {
        assert_eq!(Role::parse(unknown), None, "{unknown:?}");
    }
}

#[tokio::test]
async fn created_token_verifies_and_names_its_tenant_and_role() {
    for db in TestDb::all().await {
        let tenant = db.store.create_tenant("Acme").await.unwrap();
        let new = db
            .store
            .create_management_token(&actor(), Some(&tenant.id), "ci", Role::Developer)
            .await
            .unwrap();
        let plaintext = new.plaintext.expose_secret();
        assert!(plaintext.starts_with("trbm_mt_"), "{plaintext}");
        assert!(plaintext.starts_with(&format!("trbm_{}_", new.record.id)), "{plaintext}");
        assert!(new.record.id.starts_with("mt_"));
        assert_eq!(new.record.tenant_id.as_deref(), Some(tenant.id.as_str()));
        assert_eq!((new.record.name.as_str(), new.record.role), ("ci", Role::Developer));
        assert_eq!(new.record.revoked_at, None);

        assert_eq!(db.store.verify_management_token(plaintext).await.unwrap(), new.record);
    }
}

#[tokio::test]
async fn plaintext_is_not_stored() {
    for db in TestDb::all().await {
        let tenant = db.store.create_tenant("Acme").await.unwrap();
        let new = db
            .store
            .create_management_token(&actor(), Some(&tenant.id), "ci", Role::Developer)
            .await
            .unwrap();
        // The secret may itself contain `_`, so cut after the known `trbm_<token_id>_` prefix.
        let prefix = format!("trbm_{}_", new.record.id);
        // Then the secret (43 characters) and `_<checksum>` (8 hex digits).
        let rest = new.plaintext.expose_secret().strip_prefix(&prefix).unwrap();
        let secret_part = rest[..43].to_owned();
        assert!(rest[43..].starts_with('_') && rest.len() == 43 + 9, "{rest}");
        let (hash,): (Vec<u8>,) = sqlx::query_as("SELECT token_hash FROM management_tokens WHERE id = $1")
            .bind(&new.record.id)
            .fetch_one(&db.raw)
            .await
            .unwrap();
        assert_eq!(hash.len(), 32);
        assert!(!hash.windows(secret_part.len()).any(|window| window == secret_part.as_bytes()));
        let dump = String::from_utf8_lossy(&db.stored_bytes().await).into_owned();
        assert!(dump.contains(&new.record.id), "the dump covers management tokens");
        assert!(!dump.contains(&secret_part));
        assert!(!dump.contains(new.plaintext.expose_secret()));
    }
}

#[tokio::test]
async fn tampered_unknown_and_malformed_tokens_are_invalid() {
    for db in TestDb::all().await {
        let tenant = db.store.create_tenant("Acme").await.unwrap();
        let new =
            db.store.create_management_token(&actor(), Some(&tenant.id), "ci", Role::Admin).await.unwrap();
        let other =
            db.store.create_management_token(&actor(), Some(&tenant.id), "x", Role::Admin).await.unwrap();
        let good = new.plaintext.expose_secret().to_owned();

        // Change one character in the middle of the secret: well-formed, but the wrong secret.
        let at = good.len() - 10;
        let flipped = if &good[at..=at] == "A" { "B" } else { "A" };
        let tampered = format!("{}{flipped}{}", &good[..at], &good[at + 1..]);
        let unknown_id = good.replacen(&new.record.id, "mt_0000000000000000000000000a", 1);
        let swapped_id = good.replacen(&new.record.id, &other.record.id, 1);
        let as_api_key = good.replacen("trbm_", "trb_", 1);
        let with_nul = good.replacen("trbm_mt_", "trbm_mt_\u{0}", 1);
        for bad in [
            tampered,
            unknown_id,
            swapped_id,
            as_api_key,
            with_nul,
            "trbm_nope".into(),
            "trbm_".into(),
            String::new(),
            format!("{good} "),
            format!(" {good}"),
            good[..good.len() - 1].to_owned(),
        ] {
            let err = db.store.verify_management_token(&bad).await.unwrap_err();
            assert!(matches!(err, StoreError::InvalidManagementToken), "{bad:?}: {err:?}");
            assert_eq!(err.code(), tributary_protocol::ErrorCode::Unauthorized);
        }
        db.store.verify_management_token(&good).await.unwrap();
    }
}

#[tokio::test]
async fn an_api_key_is_not_a_management_token() {
    for db in TestDb::all().await {
        let (tenant, app) = db.tenant_with_app("prod").await;
        let key = db.store.create_api_key(&tenant.id, &app.id, "ci").await.unwrap();
        let err = db.store.verify_management_token(key.plaintext.expose_secret()).await.unwrap_err();
        assert!(matches!(err, StoreError::InvalidManagementToken), "{err:?}");
    }
}

#[tokio::test]
async fn a_revoked_token_is_invalid_and_revocation_is_scoped_to_its_tenant() {
    for db in TestDb::all().await {
        let tenant = db.store.create_tenant("Acme").await.unwrap();
        let other = db.store.create_tenant("Other").await.unwrap();
        let new =
            db.store.create_management_token(&actor(), Some(&tenant.id), "ci", Role::Owner).await.unwrap();
        let plaintext = new.plaintext.expose_secret();

        for (tenant_id, token_id) in [
            (other.id.as_str(), new.record.id.as_str()),
            (tenant.id.as_str(), "mt_0000000000000000000000000a"),
            (tenant.id.as_str(), "mt_'; DROP TABLE management_tokens;--"),
            ("ten_\u{0}", new.record.id.as_str()),
        ] {
            let err = db.store.revoke_management_token(&actor(), tenant_id, token_id).await.unwrap_err();
            assert!(
                matches!(err, StoreError::NotFound("management token")),
                "{tenant_id:?} {token_id:?}: {err:?}"
            );
        }
        db.store.verify_management_token(plaintext).await.unwrap();

        db.store.revoke_management_token(&actor(), &tenant.id, &new.record.id).await.unwrap();
        let err = db.store.verify_management_token(plaintext).await.unwrap_err();
        assert!(matches!(err, StoreError::InvalidManagementToken), "{err:?}");
        let listed = db.store.management_tokens(&tenant.id).await.unwrap();
        let [record] = listed.as_slice() else { panic!("{listed:?}") };
        let revoked_at = record.revoked_at.expect("the listed token is marked revoked");
        assert!(revoked_at >= new.record.created_at);

        // Revoking again keeps the first revocation time and the token invalid.
        db.store.revoke_management_token(&actor(), &tenant.id, &new.record.id).await.unwrap();
        assert_eq!(db.store.management_tokens(&tenant.id).await.unwrap()[0].revoked_at, Some(revoked_at));
        assert!(matches!(
            db.store.verify_management_token(plaintext).await,
            Err(StoreError::InvalidManagementToken)
        ));
    }
}

#[tokio::test]
async fn an_operator_token_has_no_tenant() {
    for db in TestDb::all().await {
        let tenant = db.store.create_tenant("Acme").await.unwrap();
        let ops = db.store.create_management_token(&actor(), None, "ops", Role::Operator).await.unwrap();
        assert!(ops.plaintext.expose_secret().starts_with("trbm_mt_"));
        assert_eq!((ops.record.tenant_id.as_deref(), ops.record.role), (None, Role::Operator));
        let verified = db.store.verify_management_token(ops.plaintext.expose_secret()).await.unwrap();
        assert_eq!(verified, ops.record);
        assert!(db.store.management_tokens(&tenant.id).await.unwrap().is_empty());
        // No tenant can revoke it.
        let err = db.store.revoke_management_token(&actor(), &tenant.id, &ops.record.id).await.unwrap_err();
        assert!(matches!(err, StoreError::NotFound("management token")), "{err:?}");
        db.store.verify_management_token(ops.plaintext.expose_secret()).await.unwrap();
    }
}

#[tokio::test]
async fn operator_roles_need_no_tenant_and_tenant_roles_a_tenant() {
    for db in TestDb::all().await {
        let tenant = db.store.create_tenant("Acme").await.unwrap();
        let events = db.audit_event_count().await;
        let err = db
            .store
            .create_management_token(&actor(), Some(&tenant.id), "x", Role::Operator)
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::InvalidRole), "{err:?}");
        assert_eq!(err.code(), tributary_protocol::ErrorCode::InvalidParameter);
        for role in [Role::ReadOnly, Role::Developer, Role::Admin, Role::Owner] {
            let err = db.store.create_management_token(&actor(), None, "x", role).await.unwrap_err();
            assert!(matches!(err, StoreError::InvalidRole), "{role:?}: {err:?}");
        }
        assert_eq!(db.count("SELECT COUNT(*) FROM management_tokens").await, 0);
        assert_eq!(db.audit_event_count().await, events);
    }
}

#[tokio::test]
async fn a_token_for_an_unknown_or_forged_tenant_is_not_created() {
    for db in TestDb::all().await {
        for missing in ["ten_0000000000000000000000000a", "ten_'; DROP TABLE tenants;--", "ten_\u{0}", ""] {
            let err = db
                .store
                .create_management_token(&actor(), Some(missing), "x", Role::Admin)
                .await
                .unwrap_err();
            assert!(matches!(err, StoreError::NotFound("tenant")), "{missing:?}: {err:?}");
        }
        assert_eq!(db.count("SELECT COUNT(*) FROM management_tokens").await, 0);
    }
}

#[tokio::test]
async fn tokens_are_listed_per_tenant_newest_first() {
    for db in TestDb::all().await {
        let acme = db.store.create_tenant("Acme").await.unwrap();
        let other = db.store.create_tenant("Other").await.unwrap();
        let mut of_acme = Vec::new();
        for (name, role) in [("a", Role::ReadOnly), ("b", Role::Owner), ("c", Role::Developer)] {
            of_acme.push(
                db.store.create_management_token(&actor(), Some(&acme.id), name, role).await.unwrap().record,
            );
        }
        let of_other = db
            .store
            .create_management_token(&actor(), Some(&other.id), "d", Role::Admin)
            .await
            .unwrap()
            .record;
        db.store.create_management_token(&actor(), None, "ops", Role::Operator).await.unwrap();

        of_acme.reverse();
        assert_eq!(db.store.management_tokens(&acme.id).await.unwrap(), of_acme);
        assert_eq!(db.store.management_tokens(&other.id).await.unwrap(), [of_other]);
        for forged in ["ten_0000000000000000000000000a", "ten_\u{0}", ""] {
            assert!(db.store.management_tokens(forged).await.unwrap().is_empty(), "{forged:?}");
        }
    }
}
