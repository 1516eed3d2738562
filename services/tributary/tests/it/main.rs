//! Integration tests: the real server on port 0, real sockets, real clients.

mod bad_input;
mod conformance;
mod docs;
mod http_api;
mod limits;
mod presence;
mod pubsub;
mod recovery;
mod sse_poll;
mod tokens;
