//! The `tributary` binary's library: configuration, first-start bootstrap, role wiring and the
//! CLI's building blocks. Only this crate reads the environment, files and flags.
//!
//! # Layout
//! - [`config`]: the configuration tree and its precedence (defaults < file < env < flags).
//! - [`bootstrap`]: the data directory on first start: master key, development tenant and keys.
//! - [`server`]: `serve` — [`server::bind`] then [`server::Bound::run`].
//! - [`directory`]: the relay's app directory backed by the store.
//! - [`telemetry`]: logging setup.
#![forbid(unsafe_code)]

pub mod bootstrap;
pub mod config;
pub mod directory;
pub mod server;
pub mod telemetry;
