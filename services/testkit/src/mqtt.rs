//! A raw MQTT client for conformance tests: it sends exactly the packets a test builds and
//! hands back every packet the server sends, so tests can check what a library client would
//! hide (packet ids, DUP flags, properties, reason codes). It uses `tributary-mqtt`'s codec, whose
//! own tests check it against the specification.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tributary_mqtt::{
    Ack, ConnAck, Connect, LastWill, Packet, Properties, Publish, QoS, SubAck, Subscribe, Subscription,
    UnsubAck, Unsubscribe, Version, decode, encode,
};

/// How long [`MqttClient::recv`] waits by default.
const RECV_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection to an MQTT server.
pub struct MqttClient {
    stream: TcpStream,
    input: BytesMut,
    /// The protocol version of the connection.
    pub version: Version,
    next_id: u16,
}

/// A CONNECT to send; start from [`ConnectOptions::new`].
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// The packet.
    pub connect: Connect,
}

impl ConnectOptions {
    /// A CONNECT with a clean start, a 60 s keep-alive, and `username`/`password`.
    pub fn new(version: Version, client_id: &str, username: &str, password: &str) -> Self {
        Self {
            connect: Connect {
                version,
                client_id: client_id.into(),
                clean_start: true,
                keep_alive: 60,
                username: Some(username.into()),
                password: Some(Bytes::copy_from_slice(password.as_bytes())),
                will: None,
                properties: Properties::default(),
            },
        }
    }

    /// Keeps the session (clean start off); MQTT 5 sessions also need an expiry.
    pub fn persistent(mut self, expiry_secs: u32) -> Self {
        self.connect.clean_start = false;
        if self.connect.version == Version::V5 {
            self.connect.properties.session_expiry = Some(expiry_secs);
        }
        self
    }

    /// Sets the will.
    pub fn will(
        mut self,
        topic: &str,
        payload: &[u8],
        qos: QoS,
        retain: bool,
        delay_secs: Option<u32>,
    ) -> Self {
        let properties = Properties { will_delay: delay_secs, ..Properties::default() };
        self.connect.will = Some(LastWill {
            topic: topic.into(),
            payload: Bytes::copy_from_slice(payload),
            qos,
            retain,
            properties,
        });
        self
    }
}

impl MqttClient {
    /// Connects and sends CONNECT; returns the client and the server's CONNACK.
    pub async fn connect(addr: SocketAddr, options: ConnectOptions) -> anyhow::Result<(Self, ConnAck)> {
        let stream = TcpStream::connect(addr).await.context("connect to the MQTT port")?;
        let version = options.connect.version;
        let mut client = Self { stream, input: BytesMut::new(), version, next_id: 0 };
        client.send(&Packet::Connect(Box::new(options.connect))).await?;
        match client.recv().await? {
            Packet::ConnAck(ack) => Ok((client, ack)),
            other => bail!("expected CONNACK, got {other:?}"),
        }
    }

    /// Connects and expects CONNACK with code 0.
    pub async fn connect_ok(addr: SocketAddr, options: ConnectOptions) -> anyhow::Result<Self> {
        let (client, ack) = Self::connect(addr, options).await?;
        if ack.code != 0 {
            bail!("CONNACK refused with {:#x}: {:?}", ack.code, ack.properties.reason_string);
        }
        Ok(client)
    }

    /// Sends one packet.
    pub async fn send(&mut self, packet: &Packet) -> anyhow::Result<()> {
        self.send_raw(&encode(packet, self.version)).await
    }

    /// Sends bytes as they are.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.stream.write_all(bytes).await.context("write to the MQTT connection")
    }

    /// Returns a fresh packet id.
    pub fn packet_id(&mut self) -> u16 {
        self.next_id = self.next_id.wrapping_add(1).max(1);
        self.next_id
    }

    /// Receives the next packet within five seconds.
    pub async fn recv(&mut self) -> anyhow::Result<Packet> {
        self.recv_within(RECV_TIMEOUT).await?.context("the server closed the connection")
    }

    /// Receives the next packet within `wait`; `None` if the server closed the connection.
    pub async fn recv_within(&mut self, wait: Duration) -> anyhow::Result<Option<Packet>> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some((packet, used)) = decode_server(&self.input, self.version)? {
                self.input.advance(used);
                return Ok(Some(packet));
            }
            self.input.reserve(4096);
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.input)).await {
                Err(_) => bail!("no packet within {wait:?}"),
                Ok(Ok(0)) | Ok(Err(_)) => return Ok(None),
                Ok(Ok(_)) => {}
            }
        }
    }

    /// Returns whether nothing arrives within `wait` (the connection stays open); a packet, a
    /// close or bytes that do not decode are errors.
    pub async fn quiet_for(&mut self, wait: Duration) -> anyhow::Result<bool> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some((packet, _)) = decode_server(&self.input, self.version)? {
                bail!("expected nothing, got {packet:?}");
            }
            self.input.reserve(4096);
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.input)).await {
                Err(_) => return Ok(true),
                Ok(Ok(0)) => bail!("expected nothing, but the connection closed"),
                Ok(Err(err)) => bail!("expected nothing, but the connection failed: {err}"),
                Ok(Ok(_)) => {}
            }
        }
    }

    /// Subscribes to `filter` at `qos`; returns the SUBACK codes.
    pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> anyhow::Result<Vec<u8>> {
        let subscription = Subscription {
            filter: filter.into(),
            qos,
            no_local: false,
            retain_as_published: false,
            retain_handling: 0,
        };
        self.subscribe_with(vec![subscription], Properties::default()).await.map(|ack| ack.codes)
    }

    /// Sends SUBSCRIBE and waits for its SUBACK (publications before it are an error).
    pub async fn subscribe_with(
        &mut self,
        subscriptions: Vec<Subscription>,
        properties: Properties,
    ) -> anyhow::Result<SubAck> {
        let packet_id = self.packet_id();
        self.send(&Packet::Subscribe(Subscribe { packet_id, properties, subscriptions })).await?;
        match self.recv().await? {
            Packet::SubAck(ack) if ack.packet_id == packet_id => Ok(ack),
            other => bail!("expected SUBACK {packet_id}, got {other:?}"),
        }
    }

    /// Unsubscribes; returns the UNSUBACK.
    pub async fn unsubscribe(&mut self, filter: &str) -> anyhow::Result<UnsubAck> {
        let packet_id = self.packet_id();
        let packet = Packet::Unsubscribe(Unsubscribe {
            packet_id,
            properties: Properties::default(),
            filters: vec![filter.into()],
        });
        self.send(&packet).await?;
        match self.recv().await? {
            Packet::UnsubAck(ack) if ack.packet_id == packet_id => Ok(ack),
            other => bail!("expected UNSUBACK {packet_id}, got {other:?}"),
        }
    }

    /// Publishes; for QoS 1 waits for PUBACK, for QoS 2 completes the handshake. Returns the
    /// reason code of the acknowledgement (0 for QoS 0).
    pub async fn publish(
        &mut self,
        topic: &str,
        payload: &[u8],
        qos: QoS,
        retain: bool,
    ) -> anyhow::Result<u8> {
        self.publish_with(topic, payload, qos, retain, Properties::default()).await
    }

    /// Publishes with properties (see [`MqttClient::publish`]).
    pub async fn publish_with(
        &mut self,
        topic: &str,
        payload: &[u8],
        qos: QoS,
        retain: bool,
        properties: Properties,
    ) -> anyhow::Result<u8> {
        let packet_id = (qos != QoS::AtMostOnce).then(|| self.packet_id());
        let publish = Publish {
            dup: false,
            qos,
            retain,
            topic: topic.into(),
            packet_id,
            properties,
            payload: Bytes::copy_from_slice(payload),
        };
        self.send(&Packet::Publish(publish)).await?;
        let Some(id) = packet_id else { return Ok(0) };
        match (qos, self.recv().await?) {
            (QoS::AtLeastOnce, Packet::PubAck(ack)) if ack.packet_id == id => Ok(ack.code),
            (QoS::ExactlyOnce, Packet::PubRec(ack)) if ack.packet_id == id => {
                if ack.code >= 0x80 {
                    return Ok(ack.code);
                }
                self.send(&Packet::PubRel(Ack { packet_id: id, code: 0, properties: Properties::default() }))
                    .await?;
                match self.recv().await? {
                    Packet::PubComp(comp) if comp.packet_id == id => Ok(comp.code),
                    other => bail!("expected PUBCOMP {id}, got {other:?}"),
                }
            }
            (_, other) => bail!("expected the acknowledgement of {id}, got {other:?}"),
        }
    }

    /// Receives the next PUBLISH (skipping nothing: any other packet is an error).
    pub async fn recv_publish(&mut self) -> anyhow::Result<Publish> {
        match self.recv().await? {
            Packet::Publish(publish) => Ok(publish),
            other => bail!("expected PUBLISH, got {other:?}"),
        }
    }

    /// Receives a PUBLISH and acknowledges it as its QoS wants (QoS 2 completely).
    pub async fn recv_and_ack(&mut self) -> anyhow::Result<Publish> {
        let publish = self.recv_publish().await?;
        self.ack(&publish).await?;
        Ok(publish)
    }

    /// Acknowledges a received PUBLISH (QoS 2: PUBREC, then PUBREL's PUBCOMP).
    pub async fn ack(&mut self, publish: &Publish) -> anyhow::Result<()> {
        let Some(id) = publish.packet_id else { return Ok(()) };
        let ack = Ack { packet_id: id, code: 0, properties: Properties::default() };
        match publish.qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => self.send(&Packet::PubAck(ack)).await?,
            QoS::ExactlyOnce => {
                self.send(&Packet::PubRec(ack.clone())).await?;
                match self.recv().await? {
                    Packet::PubRel(rel) if rel.packet_id == id => self.send(&Packet::PubComp(ack)).await?,
                    other => bail!("expected PUBREL {id}, got {other:?}"),
                }
            }
        }
        Ok(())
    }

    /// Sends DISCONNECT (reason 0) and closes.
    pub async fn disconnect(mut self) -> anyhow::Result<()> {
        self.send(&Packet::Disconnect(tributary_mqtt::Disconnect::default())).await?;
        let _ = self.stream.shutdown().await;
        Ok(())
    }

    /// Closes the socket without DISCONNECT (as a device that lost power).
    pub fn drop_connection(self) {
        drop(self.stream);
    }
}

/// Decodes what a server sends: the packet decoder reads the client's direction, so server
/// packets are decoded with the connection's version after CONNACK. CONNACK itself is decoded
/// here because the decoder only takes CONNECT before a version is known.
fn decode_server(input: &[u8], version: Version) -> anyhow::Result<Option<(Packet, usize)>> {
    match decode(input, Some(version), usize::MAX) {
        Ok(decoded) => Ok(decoded),
        Err(err) => bail!("the server sent a malformed packet: {err}"),
    }
}
