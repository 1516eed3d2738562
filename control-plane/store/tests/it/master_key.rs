use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use secrecy::ExposeSecret as _;
use tributary_store::{MasterKey, StoreError};

#[test]
fn master_key_from_base64_accepts_exactly_32_bytes() {
    assert!(MasterKey::from_base64(&STANDARD.encode([3u8; 32])).is_ok());
    for len in [0, 16, 31, 33, 64] {
        let err = MasterKey::from_base64(&STANDARD.encode(vec![3u8; len])).unwrap_err();
        assert!(matches!(err, StoreError::InvalidMasterKey), "{len}");
    }
    assert!(matches!(MasterKey::from_base64("%%%"), Err(StoreError::InvalidMasterKey)));
}

#[test]
fn generated_master_key_round_trips_and_debug_hides_it() {
    let key = MasterKey::generate();
    let encoded = key.to_base64();
    MasterKey::from_base64(encoded.expose_secret()).unwrap();
    assert!(!format!("{key:?}").contains(encoded.expose_secret()));
}
