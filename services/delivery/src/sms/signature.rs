//! Twilio's request signature (`X-Twilio-Signature`): how Twilio signs the status callbacks it
//! sends, and so how they are verified. The signed string is the callback's full URL followed by
//! each form parameter's name and value, sorted by name; the signature is the base64 HMAC-SHA1 of
//! that string under the account's auth token.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};

/// The signature of a form POST to `url` with `params`, under `auth_token`.
pub fn sign(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort();
    let Ok(mut mac) = Hmac::<sha1::Sha1>::new_from_slice(auth_token.as_bytes()) else {
        return String::new(); // HMAC takes a key of any length: unreachable
    };
    mac.update(url.as_bytes());
    for (name, value) in sorted {
        mac.update(name.as_bytes());
        mac.update(value.as_bytes());
    }
    STANDARD.encode(mac.finalize().into_bytes())
}

/// The parameters of a form body (`application/x-www-form-urlencoded`), decoded, in order.
pub fn form_params(body: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(body).into_owned().collect()
}

/// Whether `signature` is Twilio's for this request (compared in constant time).
pub fn verify(auth_token: &str, url: &str, params: &[(String, String)], signature: &str) -> bool {
    use subtle::ConstantTimeEq as _;
    sign(auth_token, url, params).as_bytes().ct_eq(signature.trim().as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> Vec<(String, String)> {
        [("MessageStatus", "delivered"), ("MessageSid", "SM0123"), ("AccountSid", "AC9")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    #[test]
    fn a_signature_is_over_the_url_and_the_sorted_parameters() {
        let url = "https://example.com/v1/sms/status?app=a";
        let signature = sign("token", url, &params());
        // The same, computed by hand: URL, then AccountSid, MessageSid, MessageStatus in order.
        let mut mac = Hmac::<sha1::Sha1>::new_from_slice(b"token").unwrap();
        mac.update(
            b"https://example.com/v1/sms/status?app=aAccountSidAC9MessageSidSM0123MessageStatusdelivered",
        );
        assert_eq!(signature, STANDARD.encode(mac.finalize().into_bytes()));
        assert!(verify("token", url, &params(), &signature));
        assert!(!verify("other", url, &params(), &signature), "another token");
        assert!(!verify("token", "https://example.com/elsewhere", &params(), &signature), "another URL");
        let mut changed = params();
        changed[0].1 = "failed".into();
        assert!(!verify("token", url, &changed, &signature), "a changed parameter");
        assert!(!verify("token", url, &params(), "not base64!"));
    }
}
