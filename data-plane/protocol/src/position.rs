//! Stream positions and cursors.
//!
//! A channel's messages carry strictly increasing offsets within an epoch. The epoch is an
//! opaque string that changes only when the channel's history is lost (the stream expired or
//! the engine restarted without persistence), so a client holding `(epoch, offset)` can tell
//! "I missed messages 8-12" from "the stream I knew is gone".

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

/// A position in a channel's stream: the last offset seen within an epoch.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamPosition {
    /// The stream's epoch.
    pub epoch: String,
    /// The offset of the last message seen (0 before the first message).
    pub offset: u64,
}

impl StreamPosition {
    /// Parses the `epoch:offset` form used by the CLI.
    pub fn parse_compact(text: &str) -> Option<Self> {
        let (epoch, offset) = text.rsplit_once(':')?;
        if epoch.is_empty() {
            return None;
        }
        Some(Self { epoch: epoch.to_owned(), offset: offset.parse().ok()? })
    }
}

impl std::fmt::Display for StreamPosition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.epoch, self.offset)
    }
}

/// The positions of several channels at once, as one opaque string.
///
/// SSE sends it as the event id (so the browser returns it in `Last-Event-ID`) and long-poll
/// returns it for the next request. The encoding (URL-safe base64 of a JSON object) is not part
/// of the contract: clients treat it as opaque.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cursor {
    /// Channel name to last position seen.
    pub positions: BTreeMap<String, StreamPosition>,
}

/// The longest cursor accepted, in bytes; checked before decoding.
pub const MAX_CURSOR_LEN: usize = 16 * 1024;

impl Cursor {
    /// Encodes the cursor as an opaque URL-safe string.
    pub fn encode(&self) -> String {
        let compact: BTreeMap<&str, (&str, u64)> =
            self.positions.iter().map(|(c, p)| (c.as_str(), (p.epoch.as_str(), p.offset))).collect();
        // Serialising a map of strings and integers cannot fail.
        let json = serde_json::to_vec(&compact).unwrap_or_default();
        URL_SAFE_NO_PAD.encode(json)
    }

    /// Decodes a cursor made by [`Cursor::encode`]; `None` when it is malformed or too long.
    pub fn decode(text: &str) -> Option<Self> {
        if text.len() > MAX_CURSOR_LEN {
            return None;
        }
        let json = URL_SAFE_NO_PAD.decode(text.trim()).ok()?;
        let compact: BTreeMap<String, (String, u64)> = serde_json::from_slice(&json).ok()?;
        let positions =
            compact.into_iter().map(|(c, (epoch, offset))| (c, StreamPosition { epoch, offset })).collect();
        Some(Self { positions })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips_and_rejects_garbage() {
        let mut c = Cursor::default();
        c.positions.insert("chat:a".into(), StreamPosition { epoch: "e1".into(), offset: 7 });
        c.positions.insert("b".into(), StreamPosition { epoch: "e2".into(), offset: 0 });
        assert_eq!(Cursor::decode(&c.encode()), Some(c));
        assert_eq!(Cursor::decode("%%%"), None);
        assert_eq!(Cursor::decode(&URL_SAFE_NO_PAD.encode("[1,2]")), None);
        assert_eq!(Cursor::decode(&"a".repeat(MAX_CURSOR_LEN + 1)), None);
    }

    #[test]
    fn compact_position_parses_epoch_and_offset() {
        assert_eq!(
            StreamPosition::parse_compact("abc:12"),
            Some(StreamPosition { epoch: "abc".into(), offset: 12 })
        );
        assert_eq!(StreamPosition::parse_compact("abc"), None);
        assert_eq!(StreamPosition::parse_compact(":1"), None);
        assert_eq!(StreamPosition::parse_compact("abc:x"), None);
    }
}
