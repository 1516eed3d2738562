//! Retained messages (MQTT's last value of a topic) on Redis: one hash per app (channel ->
//! `<offset>|<epoch>|<publication>`), written by the RETAIN script so that the newest wins.

use tributary_engine::{ChannelKey, EngineError};
use tributary_protocol::{ChannelName, Publication};

use crate::{Inner, unavailable, wire};

/// Reads a stored retained entry (`<offset>|<epoch>|<publication>`, see the RETAIN script):
/// `None` for a clear. An entry written before offsets were kept with it is the publication
/// alone.
fn retained_publication(stored: &str) -> Option<Result<Publication, EngineError>> {
    let digits = stored.bytes().take_while(u8::is_ascii_digit).count();
    let encoded = if digits > 0 && stored.as_bytes().get(digits) == Some(&b'|') {
        stored.splitn(3, '|').nth(2)?
    } else {
        stored
    };
    (!encoded.is_empty()).then(|| wire::decode_publication(encoded).map_err(unavailable))
}

impl Inner {
    /// Sets or clears a channel's retained message unless a newer one is in place.
    pub(crate) async fn set_retained(
        &self,
        key: &ChannelKey,
        epoch: &str,
        offset: u64,
        publication: Option<Publication>,
    ) -> Result<bool, EngineError> {
        if epoch.contains('|') {
            return Err(EngineError::Unavailable("an epoch cannot hold '|'".into()));
        }
        let inner = self;
        let hash = inner.retained_key(&key.app);
        let encoded = match &publication {
            Some(publication) => wire::encode_publication(publication).map_err(unavailable)?,
            None => String::new(),
        };
        let mut invocation = inner.scripts.retain.key(&hash);
        invocation.arg(key.channel.as_str()).arg(epoch).arg(offset).arg(encoded);
        let applied: i64 =
            invocation.invoke_async(&mut inner.commands_for_name(&hash)).await.map_err(unavailable)?;
        Ok(applied == 1)
    }

    /// Returns a channel's retained message.
    pub(crate) async fn retained(&self, key: &ChannelKey) -> Result<Option<Publication>, EngineError> {
        let inner = self;
        let hash = inner.retained_key(&key.app);
        let stored: Option<String> = redis::cmd("HGET")
            .arg(&hash)
            .arg(key.channel.as_str())
            .query_async(&mut inner.commands_for_name(&hash))
            .await
            .map_err(unavailable)?;
        stored.as_deref().and_then(retained_publication).transpose()
    }

    /// Returns the retained messages of an app's channels, at most `limit`, by channel.
    pub(crate) async fn retained_in(
        &self,
        app: &str,
        limit: usize,
    ) -> Result<Vec<(ChannelName, Publication)>, EngineError> {
        let inner = self;
        let hash = inner.retained_key(app);
        let mut conn = inner.commands_for_name(&hash);
        let mut out = Vec::new();
        let mut cursor = 0u64;
        // HSCAN rather than HGETALL: an app with many retained channels is read in pieces, and
        // no more than `limit` are kept.
        loop {
            let (next, fields): (u64, Vec<(String, String)>) = redis::cmd("HSCAN")
                .arg(&hash)
                .arg(cursor)
                .arg("COUNT")
                .arg(256)
                .query_async(&mut conn)
                .await
                .map_err(unavailable)?;
            for (channel, stored) in fields {
                if out.len() >= limit {
                    break;
                }
                let Ok(channel) = ChannelName::parse(&channel) else { continue };
                match retained_publication(&stored) {
                    Some(Ok(publication)) => out.push((channel, publication)),
                    // One entry that cannot be read must not hide the others.
                    Some(Err(err)) => {
                        tracing::warn!(%channel, error = %err, "unreadable retained message skipped")
                    }
                    None => {}
                }
            }
            cursor = next;
            if cursor == 0 || out.len() >= limit {
                break;
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn retained_entries_are_read_in_both_formats_and_a_clear_is_none() {
        let publication = Publication {
            epoch: Arc::from("e1"),
            offset: 7,
            ts_ms: 1,
            client_id: None,
            payload: tributary_protocol::Payload::Json(bytes::Bytes::from_static(br#"{"a":"x|y|z"}"#)),
            encoding: None,
            meta: None,
        };
        let encoded = wire::encode_publication(&publication).unwrap();
        let current = format!("7|e1|{encoded}");
        assert_eq!(retained_publication(&current).unwrap().unwrap(), publication);
        assert!(retained_publication("8|e1|").is_none(), "a clear");
        // Written before the offset was kept in front of it.
        assert_eq!(retained_publication(&encoded).unwrap().unwrap(), publication);
        assert!(retained_publication("garbage").unwrap().is_err());
    }
}
