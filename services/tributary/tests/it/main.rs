//! Integration tests: the real server on port 0, real sockets, real clients.

// Test helpers outside #[test] functions panic on failure on purpose.
#![allow(clippy::unwrap_used)]

mod api_keys;
mod audit_cli;
mod audit_cosign;
mod audit_kill;
mod audit_log;
mod audit_tamper;
mod autobahn;
mod bad_input;
mod billing;
mod checked_history;
mod cluster;
mod conformance;
mod console_accounts;
mod delivery;
mod disconnect;
mod docs;
mod exchange_log;
mod exchanges;
mod graphql;
mod handshakes;
mod http_api;
mod isolation;
mod limits;
mod management_api;
mod mqtt;
mod namespaces;
mod node_failure;
mod presence;
mod pubsub;
mod push_credentials;
mod push_delivery;
mod push_kill;
mod push_registry;
mod quotas;
mod recovery;
mod redis_restart;
mod redis_tls;
mod revocation;
mod rule_targets;
mod rules;
mod rules_kill;
mod seam;
mod sms;
mod sms_kill;
mod sse_poll;
mod storage;
mod tokens;
mod usage;
mod webhooks;
mod websocket;
