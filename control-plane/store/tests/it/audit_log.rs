//! The audit logs' storage, on both backends: logs are claimed in turn when there are more than
//! a worker takes at once, and their signing keys are stored encrypted, re-encrypted with the
//! master key.

use tributary_store::audit_log::tenant_log_id;
use tributary_store::{MasterKey, Store, StoreError};

use crate::TestDb;

#[tokio::test]
async fn logs_beyond_a_workers_limit_get_their_turn() {
    for db in TestDb::all().await {
        for name in ["a", "b", "c"] {
            db.tenant_with_app(name).await;
        }
        db.store.open_audit_logs("test.example/audit", 0).await.unwrap();
        let mut seen = std::collections::BTreeSet::new();
        for round in 0..3 {
            let now = 1_000 + round;
            let claimed = db.store.claim_audit_logs("w", now, now + 30_000, 2).await.unwrap();
            assert_eq!(claimed.len(), 2, "round {round}");
            seen.extend(claimed.into_iter().map(|log| log.id));
        }
        assert_eq!(seen.len(), 3, "every log was claimed in some round: {seen:?}");
        // Another worker takes none while the leases hold.
        assert!(db.store.claim_audit_logs("other", 1_010, 40_000, 10).await.unwrap().len() <= 1);
    }
}

#[tokio::test]
async fn a_logs_key_is_stored_encrypted_and_rotated_with_the_master_key() {
    for db in TestDb::all().await {
        let (tenant, _) = db.tenant_with_app("prod").await;
        db.store.open_audit_logs("test.example/audit", 0).await.unwrap();
        let log = db.store.audit_log(&tenant_log_id(&tenant.id)).await.unwrap();
        let seed = [0x5a_u8; 32];
        db.store.add_audit_key(&log, "test.example/audit/x+00000000+AQ", &seed).await.unwrap();
        let stored = db.stored_bytes().await;
        assert!(!stored.windows(32).any(|w| w == seed), "the seed is not stored in the clear");
        // A second writer's key made at the same moment is not added: one key signs.
        db.store.add_audit_key(&log, "test.example/audit/x+11111111+AQ", &[1; 32]).await.unwrap();
        assert_eq!(db.store.audit_keys(&log.id).await.unwrap().len(), 1);

        let rotated = Store::open(&db.url, &MasterKey::generate()).await.unwrap();
        assert!(matches!(rotated.audit_signing_key(&log).await, Err(StoreError::Decrypt)), "not yet");
        rotated.reencrypt_secrets(&db.master_key()).await.unwrap();
        let (_, read) = rotated.audit_signing_key(&log).await.unwrap().expect("the key");
        assert_eq!(read, seed);
        assert!(
            matches!(db.store.audit_signing_key(&log).await, Err(StoreError::Decrypt)),
            "the old key no longer reads"
        );
    }
}
