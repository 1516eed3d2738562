//! The Redis names of a channel's keys and of an app's, and which command connection each
//! one takes.

use tributary_engine::{ChannelKey, EngineError, Occupancy, StreamOptions};
use tributary_protocol::frame::MemberInfo;

use crate::connection::Conn;
use crate::{Inner, unavailable, wire};

/// The Redis names of one channel.
pub(crate) struct Names {
    pub(crate) meta: String,
    pub(crate) stream: String,
    pub(crate) pubsub: String,
    pub(crate) presence: [String; 3],
    /// The app's durable feed as the scripts take it: stream, marker, channel name, most
    /// entries (all empty where apps have none).
    pub(crate) durable: [String; 4],
}

impl Names {
    /// Starts a call of a presence script: its first keys are the channel's presence keys.
    pub(crate) fn presence_call<'a>(&'a self, script: &'a redis::Script) -> redis::ScriptInvocation<'a> {
        let mut invocation = script.prepare_invoke();
        for key in &self.presence {
            invocation.key(key);
        }
        invocation
    }

    /// Ends a call of a presence script with the app's durable feed (see `feed_init`).
    pub(crate) fn with_feed(&self, invocation: &mut redis::ScriptInvocation<'_>) {
        for arg in &self.durable {
            invocation.arg(arg);
        }
    }
}

impl Inner {
    pub(crate) fn names(&self, key: &ChannelKey) -> Names {
        let tag = format!("{{{}:{}}}", key.app, key.channel.as_str());
        let p = &self.config.prefix;
        Names {
            meta: format!("{p}:m:{tag}"),
            stream: format!("{p}:s:{tag}"),
            pubsub: format!("{p}:c:{tag}"),
            presence: [format!("{p}:pz:{tag}"), format!("{p}:pm:{tag}"), format!("{p}:pc:{tag}")],
            durable: self.durable_feed_args(key),
        }
    }

    /// The pub/sub channel of an app's feed, or `""` when apps have none (see [`Routes`]).
    pub(crate) fn feed(&self, app: &str) -> String {
        if self.routes.feeds_enabled { format!("{}:f:{{{app}}}", self.config.prefix) } else { String::new() }
    }

    /// The hash of an app's retained messages (channel → publication).
    pub(crate) fn retained_key(&self, app: &str) -> String {
        format!("{}:r:{{{app}}}", self.config.prefix)
    }

    /// The command connection of a key that is not a channel's.
    pub(crate) fn commands_for_name(&self, name: &str) -> Conn {
        use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
        let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one(name) as usize;
        self.commands[hash % self.commands.len()].clone()
    }

    /// The command connection of a channel: always the same one for a channel.
    pub(crate) fn commands_for(&self, key: &ChannelKey) -> Conn {
        self.commands[self.connection_of(key)].clone()
    }

    /// The index of a channel's command connection (and of its publish writer).
    pub(crate) fn connection_of(&self, key: &ChannelKey) -> usize {
        use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
        let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one(key) as usize;
        hash % self.commands.len()
    }

    pub(crate) fn meta_ttl_ms(&self, stream: StreamOptions) -> u64 {
        (self.config.stream_idle_ttl.max(stream.history_ttl)).as_millis() as u64
    }

    pub(crate) async fn presence_read(
        &self,
        key: &ChannelKey,
    ) -> Result<(Vec<MemberInfo>, Occupancy), EngineError> {
        let names = self.names(key);
        let mut invocation = names.presence_call(&self.scripts.presence_read);
        invocation.arg(&names.pubsub);
        names.with_feed(&mut invocation);
        let (records, members, connections): (Vec<String>, usize, usize) =
            invocation.invoke_async(&mut self.commands_for(key)).await.map_err(unavailable)?;
        let list = records
            .iter()
            .filter_map(|r| r.get(1..))
            .filter_map(|json| wire::decode_member(json).ok())
            .collect();
        Ok((list, Occupancy { members, connections }))
    }
}
