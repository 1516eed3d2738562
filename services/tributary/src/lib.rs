//! The `tributary` binary's library: configuration, first-start bootstrap, role wiring and the
//! CLI's building blocks. Only this crate reads the environment, files and flags.
//!
//! # Layout
//! - [`config`]: the configuration tree and its precedence (defaults < file < env < flags).
//! - [`bootstrap`]: the data directory on first start: master key, development tenant and keys.
//! - [`server`]: `serve` — [`server::bind`] then [`server::Bound::run`]; the relay's routes and
//!   the management API (`tributary-control-plane`) on one listener.
//! - [`directory`]: the relay's app directory backed by the store.
//! - [`http`]: the HTTP listener and its limits on connections still sending their request head.
//! - [`maintenance`]: periodic deletes of expired revocations and token grants.
//! - [`telemetry`]: logging setup.
#![forbid(unsafe_code)]

pub mod bootstrap;
pub mod config;
pub mod directory;
pub mod examples;
pub mod http;
pub mod maintenance;
pub mod push_api;
pub mod receipts;
pub mod server;
pub mod sms_api;
pub mod telemetry;
