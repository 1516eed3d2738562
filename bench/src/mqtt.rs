//! MQTT: fan-out at QoS 0 or 1 and idle connections, against Tributary's MQTT listener,
//! Mosquitto and rumqttd, spoken with a hand-written MQTT 3.1.1 client (CONNECT, SUBSCRIBE,
//! PUBLISH, PUBACK: the few packets a benchmark needs) so that no client library is measured
//! instead of the broker.
//!
//! Every broker is spoken to the same way: 3.1.1, clean session, keep-alive 120 s. Tributary's
//! clients authenticate as devices do (user name the app id, password a token of their own
//! client id, minted before anything is measured); the peers run with anonymous access.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use futures::StreamExt;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::fanout::{
    Load, Pacer, PublishPlan, Running, Shared, SubscriberResult, json_object, read_deliveries,
};
use crate::{Target, client};

/// An MQTT broker to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Broker {
    /// Tributary's MQTT listener (`relay.mqtt.listen`).
    Tributary,
    /// Eclipse Mosquitto.
    Mosquitto,
    /// rumqttd (Rust).
    Rumqttd,
}

/// Where the broker is and how to log in.
#[derive(Debug, Args)]
pub struct MqttTarget {
    #[command(flatten)]
    target: Target,
    /// The broker's MQTT address.
    #[arg(long)]
    mqtt_addr: SocketAddr,
    /// The broker being measured.
    #[arg(long, value_enum, default_value = "tributary")]
    broker: Broker,
    /// User name of Tributary's clients: the app id (tokens are minted with `--api-key`).
    #[arg(long, default_value = "")]
    mqtt_user: String,
}

/// Arguments of the MQTT fan-out scenario.
#[derive(Debug, Args)]
pub struct MqttFanoutArgs {
    #[command(flatten)]
    broker: MqttTarget,
    /// Subscribers on the topic.
    #[arg(long, default_value_t = 1000)]
    subscribers: usize,
    /// QoS of the publishes and the subscriptions (0 or 1).
    #[arg(long, default_value_t = 0)]
    qos: u8,
    #[command(flatten)]
    load: Load,
    /// The topic (for Tributary, a channel whose namespace has presence off).
    #[arg(long, default_value = "bench:mqtt")]
    topic: String,
}

/// Arguments of the MQTT idle scenario.
#[derive(Debug, Args)]
pub struct MqttIdleArgs {
    #[command(flatten)]
    broker: MqttTarget,
    /// Connections to open and hold, each subscribed to one of `--topics` topics.
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// Topics the idle connections are spread over.
    #[arg(long, default_value_t = 100)]
    topics: usize,
}

const KEEP_ALIVE_SECS: u16 = 120;

/// Mints the passwords of clients `0..count` (and of the publisher, `count`): tokens for
/// Tributary, nothing for the peers.
async fn passwords(broker: &MqttTarget, count: usize) -> anyhow::Result<Vec<Option<String>>> {
    if broker.broker != Broker::Tributary {
        return Ok(vec![None; count + 1]);
    }
    let target = &broker.target;
    futures::stream::iter(0..=count)
        .map(|n| async move { client::mint(target, &client_id(n), "bench:*").await.map(Some) })
        .buffered(64)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}

fn client_id(n: usize) -> String {
    format!("bench-{n}")
}

/// Appends an MQTT remaining length.
fn remaining_length(mut len: usize, out: &mut Vec<u8>) {
    loop {
        let byte = (len % 128) as u8;
        len /= 128;
        out.push(if len > 0 { byte | 0x80 } else { byte });
        if len == 0 {
            break;
        }
    }
}

/// Appends a packet: its first byte, remaining length and body.
fn packet(first: u8, body: &[u8], out: &mut Vec<u8>) {
    out.push(first);
    remaining_length(body.len(), out);
    out.extend_from_slice(body);
}

fn string(text: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(text.len() as u16).to_be_bytes());
    out.extend_from_slice(text);
}

/// Opens connection `n` and logs in; returns once CONNACK accepted it.
async fn connect(
    broker: &MqttTarget,
    n: usize,
    id: &str,
    password: Option<&str>,
) -> anyhow::Result<TcpStream> {
    let mut stream = client::tcp(broker.mqtt_addr, n, broker.target.source_ips).await?;
    let mut body = Vec::with_capacity(64);
    string(b"MQTT", &mut body);
    body.push(4);
    let mut flags = 0x02;
    if password.is_some() {
        flags |= 0x80 | 0x40;
    }
    body.push(flags);
    body.extend_from_slice(&KEEP_ALIVE_SECS.to_be_bytes());
    string(id.as_bytes(), &mut body);
    if let Some(password) = password {
        string(broker.mqtt_user.as_bytes(), &mut body);
        string(password.as_bytes(), &mut body);
    }
    let mut out = Vec::with_capacity(body.len() + 4);
    packet(0x10, &body, &mut out);
    stream.write_all(&out).await?;
    let mut connack = [0u8; 4];
    stream.read_exact(&mut connack).await.context("no CONNACK")?;
    if connack[0] != 0x20 || connack[3] != 0 {
        bail!("connection refused: CONNACK {connack:02x?}");
    }
    Ok(stream)
}

/// Subscribes to `topic` and waits for the SUBACK.
async fn subscribe(stream: &mut TcpStream, topic: &str, qos: u8) -> anyhow::Result<()> {
    let mut body = vec![0, 1];
    string(topic.as_bytes(), &mut body);
    body.push(qos);
    let mut out = Vec::new();
    packet(0x82, &body, &mut out);
    stream.write_all(&out).await?;
    let mut suback = [0u8; 5];
    stream.read_exact(&mut suback).await.context("no SUBACK")?;
    if suback[0] != 0x90 || suback[4] != qos {
        bail!("subscription refused: SUBACK {suback:02x?}");
    }
    Ok(())
}

/// Appends a PUBLISH of `payload` on `topic` (with packet id `id` at QoS 1).
fn publish_packet(topic: &[u8], qos: u8, id: u16, payload: &[u8], out: &mut Vec<u8>) {
    out.push(0x30 | (qos << 1));
    let id_len = if qos > 0 { 2 } else { 0 };
    remaining_length(2 + topic.len() + id_len + payload.len(), out);
    string(topic, out);
    if qos > 0 {
        out.extend_from_slice(&id.to_be_bytes());
    }
    out.extend_from_slice(payload);
}

/// Reads MQTT packets off a byte stream that arrives in arbitrary chunks.
#[derive(Default)]
struct Packets {
    buf: Vec<u8>,
}

impl Packets {
    /// Feeds a chunk; calls `on_publish` with the packet id (QoS 1 and 2) and payload of every
    /// complete PUBLISH. Other packets (PUBACK, PINGRESP) are passed over.
    fn feed(&mut self, chunk: &[u8], mut on_publish: impl FnMut(Option<u16>, &[u8])) {
        self.buf.extend_from_slice(chunk);
        let mut pos = 0;
        while let Some((first, start, end)) = fixed_header(&self.buf[pos..]) {
            let body = &self.buf[pos + start..pos + end];
            if first >> 4 == 3 && body.len() >= 2 {
                let qos = (first >> 1) & 3;
                let mut at = 2 + usize::from(u16::from_be_bytes([body[0], body[1]]));
                let id = (qos > 0 && body.len() >= at + 2).then(|| {
                    at += 2;
                    u16::from_be_bytes([body[at - 2], body[at - 1]])
                });
                on_publish(id, body.get(at..).unwrap_or_default());
            }
            pos += end;
        }
        self.buf.drain(..pos);
    }
}

/// Returns (first byte, body start, packet end) of the complete packet at the front.
fn fixed_header(buf: &[u8]) -> Option<(u8, usize, usize)> {
    let first = *buf.first()?;
    let mut len = 0usize;
    for i in 0..4 {
        let byte = *buf.get(1 + i)?;
        len |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            let start = 2 + i;
            return (buf.len() >= start + len).then_some((first, start, start + len));
        }
    }
    None
}

/// Reads deliveries until the stop signal, acknowledging QoS 1 ones (one write per read).
async fn subscriber(stream: TcpStream, shared: Arc<Shared>, stop: watch::Receiver<bool>) -> SubscriberResult {
    let mut packets = Packets::default();
    read_deliveries(stream, shared, stop, |bytes, chunk| {
        packets.feed(bytes, |id, payload| {
            if let Some(id) = id {
                chunk.reply.extend_from_slice(&[0x40, 0x02]);
                chunk.reply.extend_from_slice(&id.to_be_bytes());
            }
            if let Some(sent) = client::stamp(payload) {
                chunk.delivery(sent);
            }
        });
    })
    .await
}

/// Publishes what the pacer asks for, in one write per burst; QoS 1 acknowledgements are read
/// and dropped (the pacer's window bounds what is unacknowledged).
async fn publisher(stream: TcpStream, topic: String, qos: u8, mut pacer: Pacer) -> anyhow::Result<()> {
    let (mut reader, mut writer) = stream.into_split();
    let drain = tokio::spawn(async move {
        let mut sink = [0u8; 4096];
        while matches!(reader.read(&mut sink).await, Ok(n) if n > 0) {}
    });
    let padding = "x".repeat(pacer.plan.payload_bytes.saturating_sub(16));
    let (mut tick, mut owed) = (tokio::time::interval(Duration::from_millis(1)), 0f64);
    let (mut out, mut id) = (Vec::new(), 0u16);
    while let Some(burst) = pacer.next(&mut tick, &mut owed).await {
        out.clear();
        for _ in 0..burst {
            id = id.checked_add(1).unwrap_or(1);
            publish_packet(topic.as_bytes(), qos, id, pacer.payload(&padding).as_bytes(), &mut out);
        }
        writer.write_all(&out).await?;
        pacer.published(burst);
    }
    drain.abort();
    Ok(())
}

fn broker_name(broker: Broker) -> String {
    format!("{broker:?}").to_lowercase()
}

/// Runs the fan-out scenario and returns its JSON report.
pub async fn fanout(args: MqttFanoutArgs) -> anyhow::Result<serde_json::Value> {
    anyhow::ensure!(args.qos <= 1, "--qos is 0 or 1");
    let broker = &args.broker;
    let passwords = passwords(broker, args.subscribers).await?;
    let (topic, qos) = (args.topic.as_str(), args.qos);
    let mut streams: Vec<TcpStream> = futures::stream::iter(0..args.subscribers)
        .map(|n| {
            let password = passwords[n].as_deref();
            async move {
                let mut stream = connect(broker, n, &client_id(n), password).await?;
                subscribe(&mut stream, topic, qos).await?;
                anyhow::Ok(stream)
            }
        })
        .buffer_unordered(broker.target.connect_concurrency.max(1))
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    let n = args.subscribers;
    let publisher_stream = connect(broker, n, &client_id(n), passwords[n].as_deref()).await?;

    let shared = Shared::new(args.subscribers)?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let published = Arc::new(AtomicU64::new(0));
    let plan = PublishPlan {
        channel: args.topic.clone(),
        payload_bytes: args.load.payload_bytes,
        subscribers: args.subscribers.max(1) as u64,
        deliveries_per_sec: args.load.deliveries_per_sec,
    };
    let pacer = Pacer::new(plan, shared.clone(), published.clone(), stop_rx.clone());
    let tasks =
        streams.drain(..).map(|s| tokio::spawn(subscriber(s, shared.clone(), stop_rx.clone()))).collect();
    let publishing = tokio::spawn(publisher(publisher_stream, args.topic.clone(), args.qos, pacer));
    let running = Running { shared, published, stop: stop_tx, publishing, tasks };
    let mut report = running.measure(&args.load, broker.target.server_pid).await?;
    report.extend(json_object(json!({
        "scenario": "mqtt-fanout",
        "peer": broker_name(broker.broker),
        "qos": args.qos,
        "subscribers": args.subscribers,
    })));
    Ok(serde_json::Value::Object(report))
}

/// Runs the idle scenario: server memory per connected, subscribed MQTT client.
pub async fn idle(args: MqttIdleArgs) -> anyhow::Result<serde_json::Value> {
    let broker = &args.broker;
    anyhow::ensure!(broker.target.server_pid.is_some(), "the idle scenario needs --server-pid");
    // Tokens are minted before the baseline: the server's token endpoint is not what is measured.
    let passwords = passwords(broker, args.connections).await?;
    let open = |n: usize| {
        let password = passwords[n].as_deref();
        let topic = format!("bench:idle-{}", n % args.topics.max(1));
        async move {
            let mut stream = connect(broker, n, &client_id(n), password).await?;
            subscribe(&mut stream, &topic, 0).await?;
            anyhow::Ok(stream)
        }
    };
    let mut report = crate::idle::measure(&broker.target, args.connections, open).await?;
    report.extend(json_object(json!({"scenario": "mqtt-idle", "peer": broker_name(broker.broker)})));
    Ok(serde_json::Value::Object(report))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publishes_are_read_across_chunk_boundaries_with_their_ids() {
        let mut wire = Vec::new();
        publish_packet(b"bench:mqtt", 1, 7, br#"{"t":42,"p":"x"}"#, &mut wire);
        wire.extend_from_slice(&[0x40, 0x02, 0, 9]);
        publish_packet(b"t", 0, 0, &[b'y'; 200], &mut wire);
        let mut packets = Packets::default();
        let mut seen = Vec::new();
        for chunk in wire.chunks(5) {
            packets.feed(chunk, |id, payload| seen.push((id, payload.len(), client::stamp(payload))));
        }
        assert_eq!(seen, vec![(Some(7), 16, Some(42)), (None, 200, None)]);
    }
}
