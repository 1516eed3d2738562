//! Prefixed record ids such as `ten_01jd3k…` and `sk_01jd3m…`.
//!
//! An id is a type prefix plus a UUIDv7 written as 26 lowercase Crockford base32 characters.
//! Ids only use `[a-z0-9_]`, so they are safe in channel keys, JWT audiences and URLs without
//! escaping. UUIDv7 starts with a millisecond timestamp (and `uuid` keeps ids from one process
//! ordered), so ids sort by creation time: "newest first" can order by id when two records share
//! a `created_at` second, and inserts stay at the end of the primary-key index. The remaining 74
//! bits are random, so ids are not guessable; they are still identifiers, not secrets.

/// Crockford's base32 alphabet in lowercase. Unlike the RFC 4648 alphabet it is in ASCII order,
/// which is what keeps encoded ids sorted like the UUIDs they encode.
const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";

/// Number of base32 characters that encode 128 bits (the first one carries only 3 bits).
pub(crate) const ENCODED_LEN: usize = 26;

/// Prefix of tenant ids.
pub(crate) const TENANT: &str = "ten_";
/// Prefix of app ids.
pub(crate) const APP: &str = "app_";
/// Prefix of API key ids.
pub(crate) const API_KEY: &str = "key_";
/// Prefix of signing key ids (`kid` in JWT headers).
pub(crate) const SIGNING_KEY: &str = "sk_";
/// Prefix of management token ids.
pub(crate) const MANAGEMENT_TOKEN: &str = "mt_";
/// Prefix of audit event ids.
pub(crate) const AUDIT_EVENT: &str = "ev_";
/// Prefix of user ids.
pub(crate) const USER: &str = "usr_";
/// Prefix of session ids.
pub(crate) const SESSION: &str = "ses_";
/// Prefix of invitation ids.
pub(crate) const INVITATION: &str = "inv_";
/// Prefix of token ids (`jti`) minted by the control plane.
pub(crate) const TOKEN: &str = "tok_";
/// Prefix of delivery job ids.
pub(crate) const DELIVERY: &str = "dlv_";
/// Prefix of push device ids.
pub(crate) const DEVICE: &str = "dev_";
/// Prefix of webhook endpoint ids.
pub(crate) const WEBHOOK: &str = "wh_";
/// Prefix of rule ids.
pub(crate) const RULE: &str = "rul_";
/// Prefix of exchange ids.
pub(crate) const EXCHANGE: &str = "exc_";

/// Returns a new id with the given prefix.
pub(crate) fn new(prefix: &str) -> String {
    let mut value = uuid::Uuid::now_v7().as_u128();
    let mut digits = [0u8; ENCODED_LEN];
    for digit in digits.iter_mut().rev() {
        *digit = ALPHABET[(value & 0x1f) as usize];
        value >>= 5;
    }
    let mut id = String::with_capacity(prefix.len() + ENCODED_LEN);
    id.push_str(prefix);
    // Every byte comes from ALPHABET, which is ASCII.
    id.extend(digits.iter().map(|&b| char::from(b)));
    id
}

/// Returns whether `id` has the shape of an id made by [`new`] with this prefix.
pub(crate) fn is_valid(prefix: &str, id: &str) -> bool {
    id.strip_prefix(prefix)
        .is_some_and(|rest| rest.len() == ENCODED_LEN && rest.bytes().all(|b| ALPHABET.contains(&b)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_their_prefix_and_only_safe_characters() {
        let id = new(SIGNING_KEY);
        assert!(id.starts_with("sk_"));
        assert_eq!(id.len(), 3 + ENCODED_LEN);
        assert!(id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'));
        assert!(is_valid(SIGNING_KEY, &id));
        assert!(!is_valid(API_KEY, &id));
    }

    #[test]
    fn ids_sort_in_creation_order() {
        let ids: Vec<String> = (0..100).map(|_| new(APP)).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, sorted);
    }

    #[test]
    fn malformed_ids_are_not_valid() {
        assert!(!is_valid(TENANT, "ten_"));
        assert!(!is_valid(TENANT, "ten_0123456789abcdefghjkmnpqrst")); // one too many
        assert!(!is_valid(TENANT, "ten_0123456789abcdefghjkmnpqru")); // 'u' is not in the alphabet
        assert!(is_valid(TENANT, "ten_0123456789abcdefghjkmnpqrs"));
    }
}
