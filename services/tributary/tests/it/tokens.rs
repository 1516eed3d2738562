use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::json;
use tributary_testkit::{TestServer, WsClient};

async fn refused(server: &TestServer, token: &str) -> String {
    let (_, reply) = WsClient::connect(&server.ws_url(), token).await.unwrap();
    reply["error"]["name"].as_str().unwrap_or_default().to_owned()
}

fn tamper_claims(token: &str, edit: impl FnOnce(&mut serde_json::Value)) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    let mut claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    edit(&mut claims);
    format!("{}.{}.{}", parts[0], URL_SAFE_NO_PAD.encode(claims.to_string()), parts[2])
}

#[tokio::test]
async fn bad_tokens_are_refused_with_their_reason_and_the_socket_closes() {
    let server = TestServer::spawn().await;
    let good = server.all_rights("t").await;
    assert_eq!(refused(&server, "not-a-jwt").await, "invalid_token");
    let tampered = tamper_claims(&good, |c| c["sub"] = json!("admin"));
    assert_eq!(refused(&server, &tampered).await, "invalid_token", "a changed claim breaks the signature");
    let none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none","kid":"x"}"#),
        good.split('.').nth(1).unwrap()
    );
    assert_eq!(refused(&server, &none).await, "invalid_token");
    let other_app = tamper_claims(&good, |c| c["app"] = json!("app_someone_else"));
    assert_eq!(
        refused(&server, &other_app).await,
        "unknown_key",
        "key ids resolve only within the token's app"
    );
    let (mut c, reply) = WsClient::connect(&server.ws_url(), "garbage").await.unwrap();
    assert!(reply.get("error").is_some());
    let (code, _) = c.closed().await.unwrap();
    assert_eq!(code, 3501);
}

#[tokio::test]
async fn an_expired_token_is_refused_and_an_expiring_connection_is_closed() {
    let server = TestServer::spawn_with(|relay| relay.token_leeway_secs = 0).await;
    let token = server.token_ttl("short", &[("*", &["subscribe"])], 1).await;
    let mut c = server.ws(&token).await;
    let (code, reason) = c.closed().await.unwrap();
    assert_eq!(code, 3005, "{reason}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(refused(&server, &token).await, "token_expired");
}

#[tokio::test]
async fn a_refresh_extends_the_connection_and_drops_what_it_no_longer_grants() {
    let server = TestServer::spawn_with(|relay| relay.token_leeway_secs = 0).await;
    let short = server.token_ttl("r", &[("*", &["subscribe"])], 2).await;
    let mut c = server.ws(&short).await;
    c.request(json!({"op": "subscribe", "channel": "chat:a"})).await.unwrap();
    c.request(json!({"op": "subscribe", "channel": "news:a"})).await.unwrap();
    let longer = server.token("r", &[("chat:*", &["subscribe"])]).await;
    let reply = c.request(json!({"op": "refresh", "token": longer})).await.unwrap();
    assert!(reply["result"]["expires_at"].as_u64().unwrap() > 0, "{reply}");
    let dropped = c.next_of("unsubscribed").await.unwrap();
    assert_eq!(dropped["channel"], "news:a");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    server.publish("chat:a", json!("still here")).await;
    assert_eq!(c.next_of("message").await.unwrap()["data"], "still here");
    let stranger = server.token("someone-else", &[("*", &["subscribe"])]).await;
    let reply = c.request(json!({"op": "refresh", "token": stranger})).await.unwrap();
    assert_eq!(reply["error"]["name"], "token_mismatch");
}

#[tokio::test]
async fn rights_are_checked_per_channel_pattern() {
    let server = TestServer::spawn().await;
    let mut c = server
        .ws(&server.token("p", &[("chat:*", &["subscribe"]), ("own:p", &["publish", "history"])]).await)
        .await;
    assert!(
        c.request(json!({"op": "subscribe", "channel": "chat:1"})).await.unwrap().get("result").is_some()
    );
    let denied = c.request(json!({"op": "subscribe", "channel": "admin:1"})).await.unwrap();
    assert_eq!(denied["error"]["name"], "forbidden");
    assert_eq!(denied["error"]["code"], 1106);
    let denied = c.request(json!({"op": "publish", "channel": "chat:1", "data": 1})).await.unwrap();
    assert_eq!(denied["error"]["name"], "forbidden");
    let ok = c.request(json!({"op": "publish", "channel": "own:p", "data": 1})).await.unwrap();
    assert_eq!(ok["result"]["offset"], 1);
    let history = c.request(json!({"op": "history", "channel": "own:p"})).await.unwrap();
    assert_eq!(history["result"]["messages"][0]["data"], 1, "{history}");
}

#[tokio::test]
async fn token_minting_refuses_bad_requests() {
    let server = TestServer::spawn().await;
    // The HTTP API and the CLI share the minting code; the API refuses a TTL beyond the maximum.
    let (status, reply) = server
        .post("/v1/tokens", &json!({"client_id": "x", "ttl_secs": 10_000_000, "capabilities": []}), None)
        .await;
    assert_eq!((status, reply["error"]["name"].as_str()), (400, Some("invalid_parameter")));
    let (status, reply) =
        server.post("/v1/tokens", &json!({"client_id": "", "capabilities": []}), None).await;
    assert_eq!(status, 400, "{reply}");
}

fn sign(key: &tributary_capability::SigningKey, claims: &serde_json::Value) -> String {
    use secrecy::ExposeSecret;
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some(key.kid.clone());
    let secret = jsonwebtoken::EncodingKey::from_secret(key.secret.expose_secret());
    jsonwebtoken::encode(&header, claims, &secret).unwrap()
}

#[tokio::test]
async fn hand_made_tokens_with_wrong_audience_future_nbf_or_no_expiry_are_refused() {
    let server = TestServer::spawn().await;
    let key = server.signing_key(server.app_id()).await;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let app = server.app_id();
    let base = json!({
        "sub": "crafted", "app": app, "aud": format!("tributary:{app}"), "iat": now, "exp": now + 600,
        "caps": [{"channel": "*", "allow": ["subscribe"]}],
    });
    let (_, ok) = WsClient::connect(&server.ws_url(), &sign(&key, &base)).await.unwrap();
    assert!(ok.get("result").is_some(), "the hand-made baseline is valid: {ok}");
    let mut wrong_aud = base.clone();
    wrong_aud["aud"] = json!("tributary:app_other");
    assert_eq!(refused(&server, &sign(&key, &wrong_aud)).await, "wrong_audience");
    let mut future = base.clone();
    future["nbf"] = json!(now + 300);
    assert_eq!(refused(&server, &sign(&key, &future)).await, "token_not_yet_valid");
    let mut no_exp = base.clone();
    no_exp.as_object_mut().unwrap().remove("exp");
    assert_eq!(refused(&server, &sign(&key, &no_exp)).await, "invalid_token");
    let mut expired = base.clone();
    expired["exp"] = json!(now - 120);
    assert_eq!(refused(&server, &sign(&key, &expired)).await, "token_expired");
    let mut forever = base.clone();
    forever["exp"] = json!(1u64 << 62);
    let (mut c, reply) = WsClient::connect(&server.ws_url(), &sign(&key, &forever)).await.unwrap();
    assert!(reply.get("result").is_some(), "an exp far in the future is fine: {reply}");
    assert!(c.request(json!({"op": "ping"})).await.unwrap().get("result").is_some());
    let other = server.create_app("elsewhere").await;
    let their_key = server.signing_key(&other.app_id).await;
    assert_eq!(
        refused(&server, &sign(&their_key, &base)).await,
        "unknown_key",
        "their kid is not a key of our app"
    );
}
