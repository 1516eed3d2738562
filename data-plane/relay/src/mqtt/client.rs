//! The MQTT session of one client: its subscriptions (filters and their options), the packet
//! ids and QoS 1 and 2 state of both directions, and the delivery of queued publications as
//! PUBLISH packets. It outlives a connection when the session does (see `registry`); what
//! belongs to one connection only (protocol version, limits and topic aliases the two sides
//! agreed on) is a [`Link`].

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use tributary_mqtt::topic::TopicFilter;
use tributary_mqtt::{MessageMeta, Outgoing, QoS, Version};
use tributary_protocol::{ChannelName, StreamPosition};

use crate::conn::{Outbox, PreparedMessage};
use crate::session::Session;

/// What a subscription reaches.
#[derive(Debug, Clone)]
pub(super) enum Target {
    /// One channel (a filter without wildcards): a subscription of the session, with recovery.
    Channel(ChannelName),
    /// A wildcard or shared subscription, in the hub.
    Pattern(Arc<TopicFilter>),
}

/// One subscription: a filter and its options.
#[derive(Debug, Clone)]
pub(super) struct Filter {
    /// The filter as the client wrote it (for a channel, the channel name's own text).
    pub text: Arc<str>,
    pub target: Target,
    pub qos: QoS,
    pub no_local: bool,
    pub retain_as_published: bool,
    /// The subscription identifier (MQTT 5).
    pub id: Option<u32>,
    /// A shared subscription (`$share/<group>/<filter>`): the group's members take turns.
    pub shared: bool,
    /// For a channel, the last message delivered of it (epoch and offset), or where the
    /// subscription started: where a rebuilt session recovers from.
    pub position: Option<(Arc<str>, u64)>,
}

impl Filter {
    /// Returns the channel of a filter without wildcards (not shared).
    pub fn exact(&self) -> Option<&ChannelName> {
        match &self.target {
            Target::Channel(channel) => Some(channel),
            Target::Pattern(_) => None,
        }
    }

    /// Returns whether the subscription matches `topic`.
    pub fn matches(&self, topic: &str) -> bool {
        match &self.target {
            Target::Channel(channel) => channel.as_str() == topic,
            Target::Pattern(filter) => filter.matches(topic),
        }
    }

    /// Returns where a rebuilt session recovers this filter's channel from.
    pub fn recover_from(&self) -> Option<StreamPosition> {
        let (epoch, offset) = self.position.as_ref()?;
        Some(StreamPosition { epoch: epoch.to_string(), offset: *offset })
    }
}

/// A QoS 1 or 2 message sent and not yet acknowledged.
struct Inflight {
    id: u16,
    message: Arc<PreparedMessage>,
    qos: QoS,
    retain: bool,
    /// QoS 2: PUBREC came and PUBREL went; waiting for PUBCOMP.
    released: bool,
}

/// What one network connection agreed on.
pub(super) struct Link {
    pub version: Version,
    /// QoS 1 and 2 messages the client takes unacknowledged (its Receive Maximum, capped).
    pub receive_maximum: u16,
    /// The largest packet the client takes.
    pub max_packet: usize,
    /// Topic aliases the server may use towards the client.
    alias_max: u16,
    /// Whether reason strings may be sent (MQTT 5 Request Problem Information).
    pub problem_info: bool,
    /// Made on first use: most connections never use aliases and have retained messages
    /// waiting only for a moment, and an idle connection would carry the room of all three.
    extras: Option<Box<LinkExtras>>,
}

/// The parts of a [`Link`] that most connections never need.
#[derive(Default)]
pub(super) struct LinkExtras {
    /// Topic aliases the server set towards the client.
    aliases: HashMap<ChannelName, u16>,
    /// Topic aliases the client set, towards the server.
    pub inbound_aliases: HashMap<u16, ChannelName>,
    /// Retained messages for new subscriptions, waiting for room in the client's Receive
    /// Maximum, with the filter each is for.
    pub retained: VecDeque<(Arc<PreparedMessage>, Arc<str>)>,
}

impl Link {
    /// Creates the link of a connection.
    pub fn new(
        version: Version,
        receive_maximum: u16,
        max_packet: usize,
        alias_max: u16,
        problem_info: bool,
    ) -> Self {
        Self {
            version,
            receive_maximum,
            max_packet,
            alias_max: if version == Version::V5 { alias_max } else { 0 },
            problem_info,
            extras: None,
        }
    }

    /// Returns the link's aliases and retained queue, making them on first use.
    pub fn extras(&mut self) -> &mut LinkExtras {
        self.extras.get_or_insert_with(Box::default)
    }

    /// Returns the topic the client set `alias` to.
    pub fn inbound_alias(&self, alias: u16) -> Option<&ChannelName> {
        self.extras.as_ref()?.inbound_aliases.get(&alias)
    }

    /// Takes the next retained message waiting for the client, and the filter it is for.
    pub fn next_retained(&mut self) -> Option<(Arc<PreparedMessage>, Arc<str>)> {
        let extras = self.extras.as_mut()?;
        let next = extras.retained.pop_front();
        if extras.retained.is_empty() {
            if extras.aliases.is_empty() && extras.inbound_aliases.is_empty() {
                self.extras = None;
            } else {
                extras.retained = VecDeque::new();
            }
        }
        next
    }

    /// Drops the retained messages waiting for the subscription of `filter`.
    pub fn drop_retained(&mut self, filter: &str) {
        if let Some(extras) = &mut self.extras {
            extras.retained.retain(|(_, f)| **f != *filter);
        }
    }
}

/// The session of an MQTT client.
pub(super) struct Client {
    /// The relay session: rights, exact subscriptions, presence, the connection's queue.
    pub session: Session,
    /// The receiving end of the session's queue.
    pub outbox: Outbox,
    /// Seconds the session outlives its connection.
    pub expiry_secs: u32,
    pub filters: Vec<Filter>,
    inflight: VecDeque<Inflight>,
    /// QoS 2 publishes received whose PUBREL has not come yet.
    pub awaiting_release: BTreeSet<u16>,
    next_id: u16,
    /// Channels an anonymous client may not use (empty for a token's).
    pub deny: Arc<Vec<tributary_protocol::ChannelPattern>>,
    /// The session's key in the registry (the client id; prefixed for anonymous clients).
    pub session_key: Arc<str>,
    /// The version of the session's last copy in the engine (see `handoff`).
    pub copy_version: u64,
}

/// Returns the lower of two QoS levels.
fn min_qos(a: QoS, b: QoS) -> QoS {
    if (a as u8) <= (b as u8) { a } else { b }
}

/// Milliseconds since the Unix epoch.
fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Returns what is left of a message expiry interval of `expiry` seconds for a message stored
/// at `ts_ms`, or `None` once it has expired (MQTT-3.3.2-5, -6).
fn remaining(expiry: u32, ts_ms: u64) -> Option<u32> {
    let elapsed = now_ms().saturating_sub(ts_ms) / 1000;
    u64::from(expiry).checked_sub(elapsed).filter(|left| *left > 0).map(|left| left as u32)
}

/// At most this many subscription identifiers go on one PUBLISH; more overlapping
/// subscriptions with identifiers than this are not worth an allocation per delivery.
const MAX_IDS: usize = 8;

impl Client {
    /// Creates a session with no subscriptions, kept in the registry under `session_key`.
    pub fn new(
        session: Session,
        outbox: Outbox,
        session_key: Arc<str>,
        deny: Arc<Vec<tributary_protocol::ChannelPattern>>,
    ) -> Self {
        Self {
            session,
            outbox,
            expiry_secs: 0,
            filters: Vec::new(),
            inflight: VecDeque::new(),
            awaiting_release: BTreeSet::new(),
            next_id: 0,
            deny,
            session_key,
            copy_version: 0,
        }
    }

    /// Returns the client id (the token's).
    pub fn client_id(&self) -> &Arc<str> {
        &self.session.identity().client_id
    }

    /// Returns the position just before the oldest message of `channel` that was sent and not
    /// received yet (no PUBACK or PUBREC): where another node's copy of the session recovers
    /// the channel from, so nothing unacknowledged is lost with this node.
    pub fn unacknowledged_from(&self, channel: &ChannelName) -> Option<(Arc<str>, u64)> {
        self.inflight
            .iter()
            .find(|m| !m.released && m.message.channel == *channel)
            .map(|m| (m.message.publication.epoch.clone(), m.message.publication.offset.saturating_sub(1)))
    }

    /// Returns whether another QoS 1 or 2 message may be sent now.
    pub fn can_send(&self, link: &Link) -> bool {
        self.inflight.len() < usize::from(link.receive_maximum)
    }

    /// Returns how many queued messages may be taken at once, at most `max`: the client's room
    /// for unacknowledged ones (its Receive Maximum, less what is in flight) when a subscription
    /// may deliver at QoS 1 or 2, all of `max` when every one delivers at QoS 0 (the Receive
    /// Maximum does not count those, and larger batches are fewer writes).
    pub fn room(&self, link: &Link, max: usize) -> usize {
        if self.filters.iter().all(|f| f.qos == QoS::AtMostOnce) {
            return max;
        }
        usize::from(link.receive_maximum).saturating_sub(self.inflight.len()).min(max)
    }

    /// Adds a subscription. A session's first few take exactly their room: most devices hold
    /// one or two, and every idle connection would carry the spare.
    pub fn add_filter(&mut self, filter: Filter) {
        if self.filters.len() == self.filters.capacity() && self.filters.len() < 4 {
            self.filters.reserve_exact(1);
        }
        self.filters.push(filter);
    }

    fn next_packet_id(&mut self) -> u16 {
        loop {
            self.next_id = self.next_id.wrapping_add(1).max(1);
            let id = self.next_id;
            if !self.inflight.iter().any(|m| m.id == id) {
                return id;
            }
        }
    }

    /// Writes a queued publication as a PUBLISH to every matching subscription at once (the
    /// highest QoS among them, all their identifiers), or nothing when none matches any more,
    /// it expired, or it is larger than the client takes. `only`: a retained message sent for
    /// the new subscription of this filter.
    pub fn deliver(
        &mut self,
        link: &mut Link,
        message: &Arc<PreparedMessage>,
        only: Option<&str>,
        out: &mut Vec<u8>,
    ) {
        let publication = &message.publication;
        let topic = message.channel.as_str();
        let meta = publication.meta.as_deref().and_then(MessageMeta::view);
        // Compared only when a filter has No Local: most have not.
        let own = || publication.client_id.as_deref() == Some(&**self.client_id());
        let mut qos = None::<QoS>;
        let mut retain_as_published = false;
        let mut ids = [0u32; MAX_IDS];
        let mut id_count = 0;
        let mut exact = None;
        for (index, filter) in self.filters.iter().enumerate() {
            if only.is_some_and(|only| only != &*filter.text)
                || (filter.no_local && own())
                || !filter.matches(topic)
            {
                continue;
            }
            if filter.exact().is_some() {
                exact = Some(index);
            }
            qos = Some(qos.map_or(filter.qos, |q| q.max(filter.qos)));
            retain_as_published |= filter.retain_as_published;
            if let Some(id) = filter.id
                && id_count < MAX_IDS
            {
                ids[id_count] = id;
                id_count += 1;
            }
        }
        let Some(qos) = qos else { return };
        let qos = min_qos(qos, meta.as_ref().map_or(QoS::ExactlyOnce, |m| m.qos));
        let retain = only.is_some() || (retain_as_published && meta.as_ref().is_some_and(|m| m.retain));
        let expiry = match meta.as_ref().and_then(|m| m.expiry) {
            Some(expiry) => match remaining(expiry, publication.ts_ms) {
                Some(left) => Some(left),
                None => return,
            },
            None => None,
        };
        let forwarded = meta.as_ref().map_or(&[][..], |m| m.forwarded);
        let payload = match &publication.payload {
            tributary_protocol::Payload::Json(b) | tributary_protocol::Payload::Binary(b) => b,
        };
        let mut outgoing = Outgoing {
            dup: false,
            qos,
            retain,
            topic,
            packet_id: (qos != QoS::AtMostOnce).then_some(0),
            topic_alias: None,
            subscription_ids: &ids[..id_count],
            expiry,
            forwarded,
            payload,
        };
        // Measured with the longest form it can take (the topic and a new alias), when the
        // client set a maximum.
        let sized = Outgoing { topic_alias: (link.alias_max > 0).then_some(1), ..outgoing };
        if link.max_packet != usize::MAX && sized.packet_len(link.version) > link.max_packet {
            // MQTT-3.1.2-25: a packet larger than the client takes is dropped as if delivered.
            tracing::debug!(topic, "publication larger than the client's maximum packet size; dropped");
            return;
        }
        if link.alias_max > 0 {
            let alias_max = usize::from(link.alias_max);
            let aliases = &mut link.extras().aliases;
            match aliases.get(&message.channel) {
                Some(alias) => {
                    outgoing.topic_alias = Some(*alias);
                    outgoing.topic = "";
                }
                None if aliases.len() < alias_max => {
                    let alias = aliases.len() as u16 + 1;
                    aliases.insert(message.channel.clone(), alias);
                    outgoing.topic_alias = Some(alias);
                }
                None => {}
            }
        }
        if qos != QoS::AtMostOnce {
            let id = self.next_packet_id();
            outgoing.packet_id = Some(id);
            self.inflight.push_back(Inflight { id, message: message.clone(), qos, retain, released: false });
        }
        outgoing.write(link.version, out);
        if only.is_none()
            && let Some(filter) = exact.and_then(|i| self.filters.get_mut(i))
        {
            match &mut filter.position {
                Some((epoch, offset)) if **epoch == *publication.epoch => *offset = publication.offset,
                position => *position = Some((publication.epoch.clone(), publication.offset)),
            }
        }
    }

    /// Handles PUBACK: the QoS 1 message is delivered.
    pub fn on_puback(&mut self, id: u16) {
        // Clients acknowledge in order (MQTT-4.6.0-2): the oldest, almost always.
        if self.inflight.front().is_some_and(|m| m.id == id && m.qos == QoS::AtLeastOnce) {
            self.inflight.pop_front();
            return;
        }
        if let Some(index) = self.inflight.iter().position(|m| m.id == id && m.qos == QoS::AtLeastOnce) {
            self.inflight.remove(index);
        }
    }

    /// Handles PUBREC: answers PUBREL (or, for an unknown id, PUBREL with 0x92).
    pub fn on_pubrec(&mut self, link: &Link, id: u16, code: u8, out: &mut Vec<u8>) {
        let Some(index) = self.inflight.iter().position(|m| m.id == id && m.qos == QoS::ExactlyOnce) else {
            write_ack(out, link.version, 0x62, id, 0x92);
            return;
        };
        if code >= 0x80 {
            // MQTT 5: the client refused the message; the flow ends here.
            self.inflight.remove(index);
            return;
        }
        if let Some(inflight) = self.inflight.get_mut(index) {
            inflight.released = true;
        }
        write_ack(out, link.version, 0x62, id, 0);
    }

    /// Handles PUBCOMP: the QoS 2 message is delivered.
    pub fn on_pubcomp(&mut self, id: u16) {
        self.inflight.retain(|m| !(m.id == id && m.released));
    }

    /// Sends again, in order, whatever the client has not acknowledged (after a reconnect):
    /// PUBLISH with DUP for those not received, PUBREL for those received but not completed.
    /// Messages that expired meanwhile, or that are larger than the new connection's Maximum
    /// Packet Size, are dropped as if delivered.
    pub fn resend(&mut self, link: &mut Link, out: &mut Vec<u8>) {
        let mut dropped = Vec::new();
        for inflight in &self.inflight {
            if inflight.released {
                write_ack(out, link.version, 0x62, inflight.id, 0);
                continue;
            }
            let publication = &inflight.message.publication;
            let meta = publication.meta.as_deref().and_then(MessageMeta::view);
            let expiry = match meta.as_ref().and_then(|m| m.expiry) {
                Some(expiry) => match remaining(expiry, publication.ts_ms) {
                    Some(left) => Some(left),
                    None => {
                        dropped.push(inflight.id);
                        continue;
                    }
                },
                None => None,
            };
            let payload = match &publication.payload {
                tributary_protocol::Payload::Json(b) | tributary_protocol::Payload::Binary(b) => b,
            };
            let ids: Vec<u32> = self
                .filters
                .iter()
                .filter(|f| f.matches(inflight.message.channel.as_str()))
                .filter_map(|f| f.id)
                .take(MAX_IDS)
                .collect();
            let outgoing = Outgoing {
                dup: true,
                qos: inflight.qos,
                retain: inflight.retain,
                topic: inflight.message.channel.as_str(),
                packet_id: Some(inflight.id),
                topic_alias: None,
                subscription_ids: &ids,
                expiry,
                forwarded: meta.as_ref().map_or(&[][..], |m| m.forwarded),
                payload,
            };
            if outgoing.packet_len(link.version) > link.max_packet {
                dropped.push(inflight.id);
                continue;
            }
            outgoing.write(link.version, out);
        }
        self.inflight.retain(|m| !dropped.contains(&m.id));
    }
}

/// Writes PUBACK (0x40), PUBREC (0x50), PUBREL (0x62) or PUBCOMP (0x70); MQTT 5 carries the
/// reason code when it is not success.
pub(super) fn write_ack(out: &mut Vec<u8>, version: Version, header: u8, id: u16, code: u8) {
    let with_code = version == Version::V5 && code != 0;
    out.push(header);
    out.push(if with_code { 3 } else { 2 });
    out.extend_from_slice(&id.to_be_bytes());
    if with_code {
        out.push(code);
    }
}
