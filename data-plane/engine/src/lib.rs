//! The engine: where channels live. It assigns offsets, keeps history, tracks presence and
//! delivers publications to the node's hub.
//!
//! The relay talks to an engine only through the [`Engine`] trait, so that one node can run on
//! the in-memory engine and a fleet on Redis (a later issue) with the same guarantees. The
//! [`conformance`] suite states those guarantees as code; every engine runs it.
//!
//! # Layout
//! - [`contract`]: the [`Engine`] and [`EngineSink`] traits and the types they exchange.
//! - [`feed`]: an app's durable feed, what its entries record.
//! - [`memory`]: [`MemoryEngine`], the single-node engine (the embedded default).
//! - [`conformance`] (tests, or feature `conformance`): one async test per guarantee, generic
//!   over any engine, and the [`engine_conformance_suite!`] macro that stamps them out.
#![forbid(unsafe_code)]

pub mod contract;
pub mod feed;
pub mod memory;

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;

pub use contract::{
    Audience, ChannelKey, Engine, EngineError, EngineSink, HistoryPage, HistoryQuery, NewMessage, Occupancy,
    PresenceOptions, PublishOptions, PublishOutcome, StreamOptions,
};
pub use feed::{ClientInfo, FeedEntry, FeedPage, FeedRecord, FeedRetention};
pub use memory::{MemoryEngine, MemoryEngineConfig};
