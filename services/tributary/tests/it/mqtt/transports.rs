//! MQTT over every transport and with real clients: mosquitto and paho, WebSocket, TLS, the
//! `serve` command's flags.

#[allow(clippy::wildcard_imports)]
use super::*;

#[tokio::test]
async fn mosquitto_clients_talk_to_tributary_and_to_websocket_clients() {
    if which("mosquitto_pub").is_none() {
        panic!("mosquitto_pub is not installed (scripts/test installs mosquitto-clients)");
    }
    let server = TestServer::spawn_mqtt(|_| {}).await;
    let port = server.mqtt_addr().port().to_string();
    let sub_token = server.token("sensor-sub", &[("sensors/*", &["subscribe"])]).await;
    let pub_token = server.token("sensor-1", &[("sensors/*", &["publish"])]).await;
    // stdbuf: line-buffered, so each line comes as it is printed, not when the process exits.
    let mut sub = tokio::process::Command::new("stdbuf")
        .args(["-oL", "mosquitto_sub"])
        .args(["-h", "127.0.0.1", "-p", &port, "-V", "mqttv5", "-q", "1", "-C", "2", "-v", "-d"])
        .args(["-i", "sensor-sub", "-u", server.app_id(), "-P", &sub_token, "-t", "sensors/+/temp"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // With -d mosquitto_sub says when its SUBACK came: the subscription is live from then on.
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(sub.stdout.take().unwrap()));
    let mut next_line =
        async || tokio::time::timeout(Duration::from_secs(10), lines.next_line()).await.unwrap().unwrap();
    while let Some(line) = next_line().await {
        if line.contains("received SUBACK") {
            break;
        }
    }
    let status = tokio::process::Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port, "-V", "mqttv311", "-q", "1"])
        .args([
            "-i",
            "sensor-1",
            "-u",
            server.app_id(),
            "-P",
            &pub_token,
            "-t",
            "sensors/1/temp",
            "-m",
            "21.5",
        ])
        .status()
        .await
        .unwrap();
    assert!(status.success());
    server.publish("sensors/2/temp", json!({"c": 19})).await;
    // Every line that is not mosquitto_sub's own debug output, until it exits after two.
    let mut received = Vec::new();
    while let Some(line) = next_line().await {
        if !line.starts_with("Client ") && !line.starts_with("Subscribed (") {
            received.push(line);
        }
    }
    assert_eq!(received, ["sensors/1/temp 21.5", "sensors/2/temp {\"c\":19}"]);
    let status = tokio::time::timeout(Duration::from_secs(10), sub.wait()).await.unwrap().unwrap();
    assert!(status.success());

    // A token without the right is refused with the MQTT 5 reason.
    let output = tokio::process::Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port, "-V", "mqttv5", "-q", "1"])
        .args([
            "-i",
            "sensor-sub",
            "-u",
            server.app_id(),
            "-P",
            &sub_token,
            "-t",
            "sensors/1/temp",
            "-m",
            "x",
        ])
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("not authorised") || stderr.contains("Not authorized"), "{stderr}");
}

#[tokio::test]
async fn the_serve_command_opens_mqtt_with_its_flags_and_refuses_a_malformed_setting() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut server = tokio::process::Command::new(env!("CARGO_BIN_EXE_tributary"))
        .arg("serve")
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--listen", "127.0.0.1:0", "--mqtt-listen", &format!("127.0.0.1:{port}")])
        .args([
            "--set",
            "relay.mqtt.anonymous_app=dev",
            "--set",
            r#"relay.mqtt.anonymous_grants=["demo/*=publish"]"#,
        ])
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut options = ConnectOptions::new(Version::V5, "flag-test", "", "");
    options.connect.username = None;
    options.connect.password = None;
    let mut client = None;
    for _ in 0..100 {
        if let Ok(connected) = MqttClient::connect_ok(addr, options.clone()).await {
            client = Some(connected);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut client = client.expect("the MQTT listener of --mqtt-listen, anonymous access of --set");
    // The grants came from the array literal: publish on demo/*, nothing else.
    assert_eq!(client.publish("demo/1", b"x", QoS::AtLeastOnce, false).await.unwrap(), 0);
    assert_eq!(client.publish("other/1", b"x", QoS::AtLeastOnce, false).await.unwrap(), 0x87);
    server.kill().await.unwrap();

    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_tributary"))
        .arg("serve")
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--listen", "127.0.0.1:0", "--set", "relay.mqtt.anonymous_app"])
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("expected KEY=VALUE"), "{stderr}");
}

#[tokio::test]
async fn mqtt_over_websocket_takes_packets_split_across_and_joined_in_binary_messages() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let server = TestServer::spawn_mqtt(|_| {}).await;
    let token = server.token("ws-device", &[("*", ALL)]).await;
    let mut request = format!("ws://{}/mqtt", server.mqtt_ws_addr()).into_client_request().unwrap();
    request.headers_mut().insert("Sec-WebSocket-Protocol", "mqtt".parse().unwrap());
    let (ws, response) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(response.headers()["sec-websocket-protocol"], "mqtt", "the mqtt subprotocol is selected");
    let mut ws = WsPackets { ws, input: bytes::BytesMut::new() };

    // CONNECT cut in two messages.
    let options = ConnectOptions::new(Version::V5, "ws-device", server.app_id(), &token);
    let connect = tributary_mqtt::encode(&Packet::Connect(Box::new(options.connect)), Version::V5);
    ws.send(connect[..7].to_vec()).await;
    ws.send(connect[7..].to_vec()).await;
    assert!(matches!(ws.next().await, Some(Packet::ConnAck(ack)) if ack.code == 0));

    // SUBSCRIBE and PINGREQ in one message.
    let subscribe = Packet::Subscribe(tributary_mqtt::Subscribe {
        packet_id: 1,
        properties: Properties::default(),
        subscriptions: vec![tributary_mqtt::Subscription {
            filter: "lights/+".into(),
            qos: QoS::AtLeastOnce,
            no_local: false,
            retain_as_published: false,
            retain_handling: 0,
        }],
    });
    let mut joined = tributary_mqtt::encode(&subscribe, Version::V5);
    joined.extend(tributary_mqtt::encode(&Packet::PingReq, Version::V5));
    ws.send(joined).await;
    assert!(matches!(ws.next().await, Some(Packet::SubAck(ack)) if ack.codes == [1]));
    assert!(matches!(ws.next().await, Some(Packet::PingResp)));

    // A message from the HTTP API arrives, as from any other protocol.
    server.publish("lights/kitchen", json!({"on": true})).await;
    let Some(Packet::Publish(publish)) = ws.next().await else { panic!("a PUBLISH") };
    assert_eq!((publish.topic.as_str(), &publish.payload[..]), ("lights/kitchen", &br#"{"on":true}"#[..]));

    // A text message is not MQTT: the connection ends (and the server lives on).
    use futures::SinkExt;
    ws.ws.send(tokio_tungstenite::tungstenite::Message::text("hello")).await.unwrap();
    assert!(ws.next().await.is_none(), "closed after a text message");
    let _ = device(&server, Version::V5, "after").await;
}

#[tokio::test]
async fn paho_clients_over_tcp_and_websocket_reach_each_other() {
    let server = TestServer::spawn_mqtt(|_| {}).await;
    let sub_token = server.token("paho-sub", &[("plant/*", &["subscribe"])]).await;
    let pub_token = server.token("paho-pub", &[("plant/*", &["publish"])]).await;
    // A subscriber over WebSocket (MQTT 5) and a publisher over TCP (3.1.1), QoS 1 both.
    let script = r#"
import sys, threading
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
app, tcp_port, ws_port, sub_token, pub_token = sys.argv[1:6]
got, subscribed = [], threading.Event()
def on_message(client, userdata, message):
    got.append((message.topic, message.payload.decode(), message.qos))
sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="paho-sub", transport="websockets",
                  protocol=mqtt.MQTTv5)
sub.ws_set_options(path="/mqtt")
sub.username_pw_set(app, sub_token)
sub.on_message = on_message
sub.on_subscribe = lambda *a: subscribed.set()
sub.connect("127.0.0.1", int(ws_port))
sub.loop_start()
sub.subscribe("plant/+/pressure", qos=1)
assert subscribed.wait(10), "no SUBACK"
pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="paho-pub", protocol=mqtt.MQTTv311)
pub.username_pw_set(app, pub_token)
pub.connect("127.0.0.1", int(tcp_port))
pub.loop_start()
for n in range(3):
    pub.publish("plant/7/pressure", "%d bar" % n, qos=1).wait_for_publish(10)
import time
deadline = time.time() + 10
while len(got) < 3 and time.time() < deadline:
    time.sleep(0.05)
pub.disconnect(); sub.disconnect()
print(got)
"#;
    let output = tokio::process::Command::new("python3")
        .args(["-c", script, server.app_id()])
        .arg(server.mqtt_addr().port().to_string())
        .arg(server.mqtt_ws_addr().port().to_string())
        .args([&sub_token, &pub_token])
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), output).await.unwrap().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.contains("No module named 'paho'"),
        "paho-mqtt is not installed (scripts/test installs it): {stderr}"
    );
    assert!(output.status.success(), "{stderr}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        stdout.trim(),
        "[('plant/7/pressure', '0 bar', 1), ('plant/7/pressure', '1 bar', 1), ('plant/7/pressure', '2 bar', 1)]"
    );
}

#[tokio::test]
async fn mqtt_over_tls_serves_the_configured_certificate_and_a_plaintext_client_gets_nothing() {
    let certs = tributary_testkit::tls::TestCertificates::generate();
    let (cert, key) = (certs.cert_path(), certs.key_path());
    let server = TestServer::spawn_mqtt(|relay| {
        relay.mqtt.tls_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        relay.mqtt.tls_cert_file = cert;
        relay.mqtt.tls_key_file = key;
    })
    .await;
    let port = server.mqtt_tls_addr().port().to_string();
    let token = server.token("tls-sub", &[("secure/*", &["subscribe"])]).await;
    let sub = tokio::process::Command::new("mosquitto_sub")
        .args(["-h", "localhost", "-p", &port, "--cafile", &certs.ca_path(), "-V", "mqttv5", "-q", "1"])
        .args(["-C", "1", "-i", "tls-sub", "-u", server.app_id(), "-P", &token, "-t", "secure/door"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Published until the subscription is live (the subscriber takes one and exits).
    let delivered = async {
        loop {
            server.publish("secure/door", json!("open")).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let output = tokio::select! {
        output = sub.wait_with_output() => output.unwrap(),
        () = delivered => unreachable!(),
        () = tokio::time::sleep(Duration::from_secs(15)) => panic!("nothing arrived over TLS"),
    };
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), r#""open""#);

    // Plain MQTT on the TLS port is not a TLS handshake: no CONNACK, and the server lives on.
    let token = server.token("plain", &[("*", ALL)]).await;
    let plain = ConnectOptions::new(Version::V5, "plain", server.app_id(), &token);
    let attempt =
        tokio::time::timeout(Duration::from_secs(10), MqttClient::connect(server.mqtt_tls_addr(), plain));
    assert!(attempt.await.unwrap().is_err(), "a plaintext CONNECT gets no CONNACK");
    let _ = device(&server, Version::V5, "still-serving").await;
}

#[tokio::test]
async fn a_tls_key_that_cannot_be_read_stops_the_server_from_starting() {
    let certs = tributary_testkit::tls::TestCertificates::generate();
    let dir = tempfile::tempdir().unwrap();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_tributary"))
        .arg("serve")
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--listen", "127.0.0.1:0", "--set", "relay.mqtt.tls_listen=127.0.0.1:0"])
        .arg("--set")
        .arg(format!("relay.mqtt.tls_cert_file={}", certs.cert_path()))
        .args(["--set", "relay.mqtt.tls_key_file=/nonexistent/server.key"])
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(30), output).await.unwrap().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "it must not start: {stderr}");
    assert!(stderr.contains("/nonexistent/server.key"), "the error names the file: {stderr}");
}
