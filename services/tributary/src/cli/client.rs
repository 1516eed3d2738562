//! Client helpers: `token`, `publish`, `subscribe`. They default to the data directory's
//! development credentials, so a newcomer needs no copy-and-paste.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tributary::bootstrap::{self, Credentials};
use tributary_capability::{Capabilities, TokenRequest};
use tributary_protocol::StreamPosition;

use super::ConfigArgs;

/// Arguments of `tributary token`.
#[derive(Debug, Args)]
pub struct TokenArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// The client id (the token's subject).
    #[arg(long)]
    client_id: String,
    /// A grant `PATTERN=RIGHT,RIGHT` (rights: subscribe, publish, presence, history, or `all`); repeatable.
    #[arg(long = "grant", required = true)]
    grants: Vec<String>,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    ttl: u64,
}

/// Arguments of `tributary publish`.
#[derive(Debug, Args)]
pub struct PublishArgs {
    /// The channel.
    channel: String,
    /// The data: any JSON value (a bare word is sent as a JSON string).
    data: String,
    /// Makes a retried publish be stored once.
    #[arg(long)]
    idempotency_key: Option<String>,
    #[command(flatten)]
    server: ServerArgs,
}

/// Arguments of `tributary subscribe`.
#[derive(Debug, Args)]
pub struct SubscribeArgs {
    /// The channel.
    channel: String,
    /// Recover from this position (`EPOCH:OFFSET`, as printed in every message frame).
    #[arg(long, conflicts_with = "rewind")]
    since: Option<String>,
    /// Start with the last N messages of history.
    #[arg(long)]
    rewind: Option<u32>,
    /// Keep the position in this file: resume from it on start, update it on every message.
    #[arg(long)]
    position_file: Option<PathBuf>,
    /// A token to connect with (default: one minted through the HTTP API for `--client-id`).
    #[arg(long, env = "TRIBUTARY_TOKEN")]
    token: Option<String>,
    /// The client id of the minted token.
    #[arg(long, default_value = "cli")]
    client_id: String,
    /// Presence state to announce (JSON).
    #[arg(long)]
    state: Option<String>,
    #[command(flatten)]
    server: ServerArgs,
}

/// Which server to talk to; defaults come from `<data-dir>/credentials.json`.
#[derive(Debug, Args)]
pub struct ServerArgs {
    /// HTTP base URL, e.g. http://127.0.0.1:7070.
    #[arg(long, env = "TRIBUTARY_URL")]
    url: Option<String>,
    /// API key of the app.
    #[arg(long, env = "TRIBUTARY_API_KEY")]
    api_key: Option<String>,
    /// Data directory holding credentials.json.
    #[arg(long, env = "TRIBUTARY_DATA_DIR", default_value = "tributary-data")]
    data_dir: PathBuf,
}

impl ServerArgs {
    fn resolve(&self) -> anyhow::Result<(String, String)> {
        let stored: Option<Credentials> = bootstrap::read_credentials(&self.data_dir).ok();
        let url = self.url.clone().or_else(|| stored.as_ref().map(|c| c.http_url.clone()));
        let key = self.api_key.clone().or_else(|| stored.as_ref().map(|c| c.api_key.clone()));
        match (url, key) {
            (Some(url), Some(key)) => Ok((url.trim_end_matches('/').to_owned(), key)),
            _ => bail!(
                "no server: pass --url and --api-key, or run `tributary serve` first so {}/credentials.json exists",
                self.data_dir.display()
            ),
        }
    }
}

/// `tributary token`: mints offline with the app's newest signing key.
pub async fn token(args: TokenArgs, env: HashMap<String, String>) -> anyhow::Result<ExitCode> {
    let config = match super::serve::load(&args.config, &super::serve::Flags::default(), &env) {
        Ok(config) => config,
        Err(code) => return Ok(code),
    };
    let grants = args.grants.iter().map(|g| Capabilities::parse_spec(g)).collect::<Result<Vec<_>, _>>()?;
    let master_key = bootstrap::master_key(config.master_key.as_ref()).context("master_key is not set")??;
    let store = config.open_store(&master_key).await?;
    let credentials = bootstrap::read_credentials(&config.data_dir)?;
    let record = store
        .signing_keys(&credentials.app_id)
        .await?
        .into_iter()
        .next()
        .context("the app has no signing key")?;
    let key = tributary::directory::signing_key(record).map_err(|e| anyhow::anyhow!("{e}"))?;
    let request = TokenRequest::new(args.client_id, credentials.app_id, args.ttl, grants);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    println!("{}", tributary_capability::mint(&request, &key, now)?.token);
    Ok(ExitCode::SUCCESS)
}

fn json_arg(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
}

/// `tributary publish`.
pub async fn publish(args: PublishArgs) -> anyhow::Result<ExitCode> {
    let (url, api_key) = args.server.resolve()?;
    let mut request = reqwest::Client::new()
        .post(format!("{url}/v1/channels/{}/messages", args.channel))
        .bearer_auth(api_key)
        .json(&json!({ "data": json_arg(&args.data) }));
    if let Some(key) = &args.idempotency_key {
        request = request.header("Idempotency-Key", key);
    }
    let response = request.send().await.context("cannot reach the server")?;
    let ok = response.status().is_success();
    println!("{}", response.text().await?);
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

async fn mint_via_api(url: &str, api_key: &str, client_id: &str, channel: &str) -> anyhow::Result<String> {
    let body = json!({
        "client_id": client_id,
        "ttl_secs": 3600,
        "capabilities": [{ "channel": channel, "allow": ["subscribe", "publish", "presence", "history"] }],
    });
    let response = reqwest::Client::new()
        .post(format!("{url}/v1/tokens"))
        .bearer_auth(api_key)
        .json(&body)
        .send()
        .await?;
    let status = response.status();
    let reply: Value = response.json().await?;
    if !status.is_success() {
        bail!("minting a token failed: {reply}");
    }
    reply["token"].as_str().map(str::to_owned).context("token missing in reply")
}

/// `tributary subscribe`: prints every frame as one JSON line on stdout, status on stderr.
pub async fn subscribe(args: SubscribeArgs) -> anyhow::Result<ExitCode> {
    let (url, api_key) = match (&args.token, args.server.resolve()) {
        (_, Ok(pair)) => pair,
        (Some(_), Err(_)) if args.server.url.is_some() => {
            (args.server.url.clone().unwrap_or_default(), String::new())
        }
        (_, Err(err)) => return Err(err),
    };
    let token = match &args.token {
        Some(token) => token.clone(),
        None => mint_via_api(&url, &api_key, &args.client_id, &args.channel).await?,
    };
    let since = match (&args.since, &args.position_file) {
        (Some(text), _) => Some(StreamPosition::parse_compact(text).context("--since must be EPOCH:OFFSET")?),
        (None, Some(path)) => {
            std::fs::read_to_string(path).ok().and_then(|t| StreamPosition::parse_compact(t.trim()))
        }
        (None, None) => None,
    };
    let mut request = format!("{}/v1/connect", url.replacen("http", "ws", 1)).into_client_request()?;
    request.headers_mut().insert("Sec-WebSocket-Protocol", tributary_protocol::SUBPROTOCOL.parse()?);
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.context("cannot connect")?;
    ws.send(Message::text(json!({"id": 1, "op": "connect", "token": token}).to_string())).await?;
    let mut subscribe = json!({"id": 2, "op": "subscribe", "channel": args.channel});
    if let Some(position) = &since {
        subscribe["recover"] = json!({"epoch": position.epoch, "offset": position.offset});
    }
    if let Some(n) = args.rewind {
        subscribe["rewind"] = json!(n);
    }
    if let Some(state) = &args.state {
        subscribe["state"] = json_arg(state);
    }
    ws.send(Message::text(subscribe.to_string())).await?;
    while let Some(message) = ws.next().await {
        match message? {
            Message::Text(text) => {
                println!("{text}");
                on_frame(&text, args.position_file.as_ref())?;
            }
            Message::Close(frame) => {
                if let Some(frame) = frame {
                    eprintln!("closed by server: {} {}", u16::from(frame.code), frame.reason);
                }
                return Ok(ExitCode::FAILURE);
            }
            _ => {}
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn on_frame(text: &str, position_file: Option<&PathBuf>) -> anyhow::Result<()> {
    let frame: Value = serde_json::from_str(text)?;
    match frame["type"].as_str() {
        Some("message") => {
            if let (Some(path), Some(epoch), Some(offset)) =
                (position_file, frame["epoch"].as_str(), frame["offset"].as_u64())
            {
                std::fs::write(path, format!("{epoch}:{offset}\n"))?;
            }
        }
        Some("reply") if frame.get("error").is_some() => bail!("refused: {}", frame["error"]),
        Some("reply")
            if frame["result"].get("recovered").is_some() || frame["result"].get("epoch").is_some() =>
        {
            let r = &frame["result"];
            eprintln!(
                "subscribed to {} at {}:{} (recovered: {}, replayed: {})",
                r["channel"],
                r["epoch"].as_str().unwrap_or(""),
                r["offset"],
                r["recovered"],
                r["replayed"]
            );
        }
        _ => {}
    }
    Ok(())
}
