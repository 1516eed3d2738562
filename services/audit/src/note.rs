//! Signed notes (C2SP `signed-note`), the envelope of a log's checkpoints: a text ending in a
//! newline, a blank line, and one line per signature, `— <key name> base64(key id || sig)`.
//! Ed25519 only (signature type `0x01`); a key's id is the first four bytes of
//! `SHA-256(name || 0x0A || 0x01 || public key)`. Keys are written as the Go `note` package
//! writes them: `<name>+<id in hex>+base64(0x01 || public key)` for a verifier, and
//! `PRIVATE+KEY+<name>+<id in hex>+base64(0x01 || seed)` for a signer, so Go's verifiers and
//! witnesses read ours.
//!
//! A note may carry several signatures: the log's, and the cosignatures of those who checked it
//! (a tenant with its own key, the other side of an exchange). Opening a note ignores signatures
//! of unknown keys, refuses the note if a known key's signature does not verify, and needs at
//! least one known key's.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use sha2::{Digest as _, Sha256};

/// The signature type of Ed25519 signatures.
const ED25519: u8 = 0x01;
/// Most signatures read from one note.
const MAX_SIGNATURES: usize = 100;

/// Why a key or a note was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoteError {
    /// A key name that is empty or has a space, a newline or a `+`.
    #[error("a key name is not empty and has no space, newline or '+'")]
    KeyName,
    /// A key that is not one.
    #[error("malformed key: {0}")]
    Key(&'static str),
    /// Text that cannot be signed: empty, not ending in a newline, or with control characters.
    #[error("a note's text ends in a newline and has no other control character")]
    Text,
    /// A note that is not one.
    #[error("malformed note: {0}")]
    Malformed(&'static str),
    /// A known key's signature does not verify: the text was changed, or the signature forged.
    #[error("the signature of {0} does not verify")]
    BadSignature(String),
    /// No signature of a known key.
    #[error("no signature of a known key")]
    Unverified,
}

fn check_name(name: &str) -> Result<(), NoteError> {
    if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c == '+' || c.is_control()) {
        return Err(NoteError::KeyName);
    }
    Ok(())
}

/// The id of `name`'s Ed25519 key `public`.
fn key_id(name: &str, public: &VerifyingKey) -> [u8; 4] {
    let digest = Sha256::new()
        .chain_update(name)
        .chain_update([b'\n', ED25519])
        .chain_update(public.as_bytes())
        .finalize();
    [digest[0], digest[1], digest[2], digest[3]]
}

fn hex(id: [u8; 4]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

/// Splits `<name>+<id>+<base64>` (the base64 may itself hold a `+`).
fn split_key(text: &str) -> Result<(&str, [u8; 4], Vec<u8>), NoteError> {
    let (name, rest) = text.split_once('+').ok_or(NoteError::Key("no name"))?;
    let (id, material) = rest.split_once('+').ok_or(NoteError::Key("no key id"))?;
    check_name(name)?;
    if id.len() != 8 {
        return Err(NoteError::Key("a key id is 8 hex digits"));
    }
    let id = u32::from_str_radix(id, 16).map_err(|_| NoteError::Key("a key id is 8 hex digits"))?;
    let material = STANDARD.decode(material).map_err(|_| NoteError::Key("the key is not base64"))?;
    if material.len() != 33 || material[0] != ED25519 {
        return Err(NoteError::Key("not an Ed25519 key (type 0x01 and 32 bytes)"));
    }
    Ok((name, id.to_be_bytes(), material))
}

/// A key that signs notes.
pub struct NoteSigner {
    name: String,
    id: [u8; 4],
    key: SigningKey,
}

impl std::fmt::Debug for NoteSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The seed is a secret: never printed.
        f.debug_struct("NoteSigner")
            .field("name", &self.name)
            .field("id", &hex(self.id))
            .finish_non_exhaustive()
    }
}

impl NoteSigner {
    /// The key `name` of the Ed25519 `seed` (32 random bytes, kept secret).
    pub fn from_seed(name: &str, seed: &[u8; 32]) -> Result<Self, NoteError> {
        check_name(name)?;
        let key = SigningKey::from_bytes(seed);
        Ok(Self { name: name.to_owned(), id: key_id(name, &key.verifying_key()), key })
    }

    /// Reads a signer key, `PRIVATE+KEY+<name>+<id>+base64(0x01 || seed)`.
    pub fn parse(text: &str) -> Result<Self, NoteError> {
        let rest = text.strip_prefix("PRIVATE+KEY+").ok_or(NoteError::Key("not a signer key"))?;
        let (name, id, material) = split_key(rest)?;
        let seed: [u8; 32] = material[1..].try_into().map_err(|_| NoteError::Key("a seed is 32 bytes"))?;
        let signer = Self::from_seed(name, &seed)?;
        if signer.id != id {
            return Err(NoteError::Key("the key id is not this key's"));
        }
        Ok(signer)
    }

    /// The key's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The verifier key others check this key's signatures with (public).
    pub fn verifier_key(&self) -> String {
        let mut material = vec![ED25519];
        material.extend_from_slice(self.key.verifying_key().as_bytes());
        format!("{}+{}+{}", self.name, hex(self.id), STANDARD.encode(material))
    }

    /// This key's signature line for `text` (which must be a note's text).
    pub fn signature_line(&self, text: &str) -> Result<String, NoteError> {
        check_text(text)?;
        let signature = self.key.sign(text.as_bytes());
        let mut blob = self.id.to_vec();
        blob.extend_from_slice(&signature.to_bytes());
        Ok(format!("— {} {}\n", self.name, STANDARD.encode(blob)))
    }
}

/// A key whose signatures a reader checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteVerifier {
    name: String,
    id: [u8; 4],
    key: VerifyingKey,
}

impl NoteVerifier {
    /// Reads a verifier key, `<name>+<id>+base64(0x01 || public key)`.
    pub fn parse(text: &str) -> Result<Self, NoteError> {
        let (name, id, material) = split_key(text)?;
        let public: [u8; 32] = material[1..].try_into().map_err(|_| NoteError::Key("a key is 32 bytes"))?;
        let key = VerifyingKey::from_bytes(&public).map_err(|_| NoteError::Key("not a point of Ed25519"))?;
        if key_id(name, &key) != id {
            return Err(NoteError::Key("the key id is not this key's"));
        }
        Ok(Self { name: name.to_owned(), id, key })
    }

    /// The key's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

fn check_text(text: &str) -> Result<(), NoteError> {
    if text.is_empty() || !text.ends_with('\n') || text.chars().any(|c| c.is_control() && c != '\n') {
        return Err(NoteError::Text);
    }
    Ok(())
}

/// `text` signed by `signers`: the note.
pub fn sign(text: &str, signers: &[&NoteSigner]) -> Result<String, NoteError> {
    check_text(text)?;
    let mut note = format!("{text}\n");
    for signer in signers {
        note.push_str(&signer.signature_line(text)?);
    }
    Ok(note)
}

/// A note opened: its text, and the names of the known keys whose signatures verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    /// The text (with its final newline).
    pub text: String,
    /// Who signed it, of the keys the reader knows.
    pub signed_by: Vec<String>,
}

/// Opens `note` with the keys its reader trusts.
pub fn open(note: &str, verifiers: &[NoteVerifier]) -> Result<Opened, NoteError> {
    if note.chars().any(|c| c.is_control() && c != '\n') {
        return Err(NoteError::Malformed("a control character"));
    }
    let split = note.rfind("\n\n").ok_or(NoteError::Malformed("no blank line before the signatures"))?;
    let (text, signatures) = (&note[..=split], &note[split + 2..]);
    if !signatures.ends_with('\n') {
        return Err(NoteError::Malformed("the signatures do not end in a newline"));
    }
    let mut signed_by = Vec::new();
    for (n, line) in signatures.lines().enumerate() {
        if n >= MAX_SIGNATURES {
            return Err(NoteError::Malformed("too many signatures"));
        }
        let rest =
            line.strip_prefix("— ").ok_or(NoteError::Malformed("a signature line starts with '— '"))?;
        let (name, blob) =
            rest.split_once(' ').ok_or(NoteError::Malformed("a signature line is name and signature"))?;
        let blob = STANDARD.decode(blob).map_err(|_| NoteError::Malformed("a signature is not base64"))?;
        if blob.len() < 4 {
            return Err(NoteError::Malformed("a signature is too short"));
        }
        let Some(verifier) = verifiers.iter().find(|v| v.name == name && v.id[..] == blob[..4]) else {
            continue; // An unknown key's: ignored.
        };
        let signature = ed25519_dalek::Signature::from_slice(&blob[4..])
            .map_err(|_| NoteError::BadSignature(name.to_owned()))?;
        verifier
            .key
            .verify_strict(text.as_bytes(), &signature)
            .map_err(|_| NoteError::BadSignature(name.to_owned()))?;
        signed_by.push(name.to_owned());
    }
    if signed_by.is_empty() {
        return Err(NoteError::Unverified);
    }
    Ok(Opened { text: text.to_owned(), signed_by })
}

/// The signature line of `verifier`'s key in `note`, once it verifies: how a log takes a
/// cosignature posted to it and adds it, alone, to the note it stored.
pub fn signature_line_of(note: &str, verifier: &NoteVerifier) -> Result<String, NoteError> {
    open(note, std::slice::from_ref(verifier))?;
    let split = note.rfind("\n\n").ok_or(NoteError::Malformed("no blank line before the signatures"))?;
    note[split + 2..]
        .lines()
        .find(|line| {
            line.strip_prefix("— ").and_then(|rest| rest.split_once(' ')).is_some_and(|(name, blob)| {
                name == verifier.name
                    && STANDARD.decode(blob).is_ok_and(|b| b.len() >= 4 && b[..4] == verifier.id[..])
            })
        })
        .map(|line| format!("{line}\n"))
        .ok_or(NoteError::Unverified)
}

/// Adds `signer`'s signature to a note whose text it has checked (a cosignature).
pub fn cosign(note: &str, signer: &NoteSigner) -> Result<String, NoteError> {
    let split = note.rfind("\n\n").ok_or(NoteError::Malformed("no blank line before the signatures"))?;
    let line = signer.signature_line(&note[..=split])?;
    Ok(format!("{note}{line}"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    // golang.org/x/mod/sumdb/note's example: its keys, text and signed note (Ed25519 is
    // deterministic, so signing here must give the same bytes).
    const SIGNER: &str = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
    const VERIFIER: &str = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
    const TEXT: &str = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n";
    const NOTE: &str = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n\n— PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";

    #[test]
    fn signing_gives_the_reference_note_byte_for_byte() {
        let signer = NoteSigner::parse(SIGNER).unwrap();
        assert_eq!(signer.verifier_key(), VERIFIER);
        assert_eq!(sign(TEXT, &[&signer]).unwrap(), NOTE);
        assert!(!format!("{signer:?}").contains("AYEKF"), "the seed is never printed");
    }

    #[test]
    fn opening_checks_known_keys_and_ignores_unknown_ones() {
        let verifier = NoteVerifier::parse(VERIFIER).unwrap();
        let opened = open(NOTE, std::slice::from_ref(&verifier)).unwrap();
        assert_eq!((opened.text.as_str(), opened.signed_by), (TEXT, vec!["PeterNeumann".to_owned()]));
        // A changed text, a changed signature.
        let changed = NOTE.replace("cryptography", "cryptographY");
        assert_eq!(
            open(&changed, std::slice::from_ref(&verifier)),
            Err(NoteError::BadSignature("PeterNeumann".into()))
        );
        let forged = NOTE.replace("x08go", "x08gp");
        assert!(open(&forged, std::slice::from_ref(&verifier)).is_err());
        // Another key only: unverified. Cosigned by it: both signatures counted by a reader of both.
        let other = NoteSigner::from_seed("tenant.example/witness", &[7; 32]).unwrap();
        let other_verifier = NoteVerifier::parse(&other.verifier_key()).unwrap();
        assert_eq!(open(NOTE, std::slice::from_ref(&other_verifier)), Err(NoteError::Unverified));
        let cosigned = cosign(NOTE, &other).unwrap();
        let both = open(&cosigned, &[verifier.clone(), other_verifier.clone()]).unwrap();
        assert_eq!(both.signed_by, ["PeterNeumann", "tenant.example/witness"]);
        // The cosignature alone, taken from the cosigned note.
        let line = signature_line_of(&cosigned, &other_verifier).unwrap();
        assert_eq!(format!("{NOTE}{line}"), cosigned);
        assert_eq!(signature_line_of(NOTE, &other_verifier), Err(NoteError::Unverified));
    }

    #[test]
    fn malformed_keys_and_notes_are_refused() {
        for bad in [
            "PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
            "PeterNeumann+c74f20a3+ApJc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
            "PeterNeumann+c74f20a3",
            "Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
            "",
        ] {
            assert!(NoteVerifier::parse(bad).is_err(), "{bad}");
        }
        assert!(NoteSigner::from_seed("a b", &[1; 32]).is_err());
        let signer = NoteSigner::parse(SIGNER).unwrap();
        assert_eq!(sign("no newline", &[&signer]), Err(NoteError::Text));
        assert_eq!(sign("tab\there\n", &[&signer]), Err(NoteError::Text));
        let verifier = NoteVerifier::parse(VERIFIER).unwrap();
        assert!(open("no signatures\n", std::slice::from_ref(&verifier)).is_err());
        assert!(open(&NOTE.replace("— ", "- "), std::slice::from_ref(&verifier)).is_err());
    }
}
