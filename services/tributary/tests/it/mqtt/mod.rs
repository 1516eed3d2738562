//! MQTT: the same channels, tokens, presence and history as every other transport, spoken by a
//! raw client that shows every packet (conformance) and by real clients (`mosquitto_pub`,
//! `mosquitto_sub`).

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::json;
use tributary_mqtt::{Packet, Properties, QoS, Version};
use tributary_testkit::mqtt::ConnectOptions;
use tributary_testkit::{MqttClient, TestServer};

mod access;
mod cluster;
mod protocol;
mod sessions;
mod transports;

const ALL: &[&str] = &["subscribe", "publish", "presence", "history"];

/// Connects `client_id` with every right on every channel.
async fn device(server: &TestServer, version: Version, client_id: &str) -> MqttClient {
    let token = server.token(client_id, &[("*", ALL)]).await;
    MqttClient::connect_ok(
        server.mqtt_addr(),
        ConnectOptions::new(version, client_id, server.app_id(), &token),
    )
    .await
    .unwrap()
}

/// Two nodes on one Redis, each with an MQTT listener.
async fn mqtt_cluster() -> Vec<TestServer> {
    TestServer::spawn_cluster(2, |relay| relay.mqtt.listen = Some(SocketAddr::from(([127, 0, 0, 1], 0))))
        .await
}

fn which(program: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| std::path::Path::new(d).join(program))
        .find(|p| p.exists())
}

/// Connects `client_id` with a persistent session.
async fn persistent(
    server: &TestServer,
    version: Version,
    client_id: &str,
) -> (MqttClient, tributary_mqtt::ConnAck) {
    let token = server.token(client_id, &[("*", ALL)]).await;
    let options = ConnectOptions::new(version, client_id, server.app_id(), &token).persistent(300);
    MqttClient::connect(server.mqtt_addr(), options).await.unwrap()
}

/// Returns a loopback port that was free a moment ago.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Reads MQTT packets out of the binary messages of a WebSocket, however they are cut.
struct WsPackets {
    ws: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    input: bytes::BytesMut,
}

impl WsPackets {
    async fn next(&mut self) -> Option<Packet> {
        use futures::StreamExt;
        loop {
            if let Some((packet, used)) =
                tributary_mqtt::decode(&self.input, Some(Version::V5), 1 << 20).unwrap()
            {
                bytes::Buf::advance(&mut self.input, used);
                return Some(packet);
            }
            let message =
                tokio::time::timeout(Duration::from_secs(5), self.ws.next()).await.unwrap()?.ok()?;
            match message {
                tokio_tungstenite::tungstenite::Message::Binary(data) => self.input.extend_from_slice(&data),
                tokio_tungstenite::tungstenite::Message::Close(_) => return None,
                other => panic!("MQTT comes in binary messages only, got {other:?}"),
            }
        }
    }

    async fn send(&mut self, bytes: Vec<u8>) {
        use futures::SinkExt;
        self.ws.send(tokio_tungstenite::tungstenite::Message::binary(bytes)).await.unwrap();
    }
}
