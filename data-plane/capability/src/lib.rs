//! Capability tokens: what a client may do on which channels, signed by a key of its app.
//!
//! This crate owns the rights and grants a token carries, the token's claims, minting, and the
//! strict verification the relay runs on every `connect` and token refresh. It does no I/O and
//! reads no clock: the caller passes "now", and between [`peek()`] and [`verify()`] the caller looks
//! up the signing key (memory, store, cache). Key storage, revocation lists and the HTTP API
//! that mints tokens live elsewhere.
//!
//! # Flow
//! A backend asks the API to [`mint()`] a [`TokenRequest`] with the app's [`SigningKey`]. A client
//! presents the token; the relay calls [`peek()`] to learn the app and key id, fetches that key,
//! calls [`verify()`], and checks each operation with [`Capabilities::allows`]. Every refusal is a
//! [`TokenError`] with a client-visible [`TokenError::code`].
//!
//! # Layout
//! - [`rights`]: [`Right`], the [`Rights`] bit set, [`Grant`] and [`Capabilities`] (with the
//!   `pattern=rights` spec parser used by the CLI).
//! - [`claims`]: the JWT claims as serialized, client-id rules, [`audience_for`].
//! - [`keys`]: [`KeyAlgorithm`] and [`SigningKey`] (its `Debug` never shows the secret).
//! - [`mint`](mod@mint): validating a [`TokenRequest`] and signing it.
//! - [`verify`](mod@verify): [`peek()`] and [`verify()`], with [`VerifyOptions`] and the resulting
//!   [`VerifiedToken`].
//! - [`error`]: [`TokenError`] and [`CapabilityError`], each with its `ErrorCode`.
//! - `compact` (private): reading the compact JWS form and header before any signature check.
#![forbid(unsafe_code)]

pub mod claims;
mod compact;
pub mod error;
pub mod keys;
pub mod mint;
pub mod rights;
pub mod verify;

pub use claims::{MAX_CLIENT_ID_LEN, audience_for, identifier_problem};
pub use error::{CapabilityError, TokenError};
pub use keys::{FIRST_GENERATION, HS256_SECRET_LEN, KeyAlgorithm, SigningKey};
pub use mint::{MAX_GRANTS, MAX_TTL_SECS, MintedToken, TokenRequest, mint};
pub use rights::{Capabilities, Grant, Right, Rights};
pub use verify::{
    DEFAULT_LEEWAY_SECS, MAX_TOKEN_LEN, UnverifiedToken, VerifiedToken, VerifyOptions, peek, verify,
};
