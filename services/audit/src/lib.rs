//! Transparency logs for Tributary's audit trail (issue 20): each tenant's (and each exchange's)
//! entries are the leaves of an append-only Merkle tree, hashed as RFC 9162 (Certificate
//! Transparency 2.0) says, so that anyone holding a signed tree head can check that an entry is
//! in the log ([`merkle::verify_inclusion`]) and that a later tree extends an earlier one
//! ([`merkle::verify_consistency`]) without trusting the server.
//!
//! - [`merkle`]: leaf and node hashes, the tree's root, inclusion and consistency proofs and
//!   their verification, and [`merkle::Frontier`], the right edge of a growing tree (its root
//!   after each append without the leaves);
//! - [`note`]: signed notes (C2SP `signed-note`, Ed25519): the log's signature and the
//!   cosignatures of those who checked it;
//! - [`checkpoint`]: the text a log signs to commit to its tree (C2SP `tlog-checkpoint`);
//! - [`export`]: a log's entries (hash-chained as well as in the tree) and checkpoints as a
//!   file, and its offline verification, which names the entry changed, missing or out of
//!   place, a truncated log and a fork.
#![forbid(unsafe_code)]

pub mod checkpoint;
pub mod entry;
pub mod export;
pub mod merkle;
pub mod note;
