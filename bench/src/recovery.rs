//! Recovery: N subscribers on C channels disconnect, M messages are published across the
//! channels, then all reconnect at once with the positions they had. Measures recovered
//! messages per second, and checks that every subscriber got exactly what it missed, in order:
//! no gap, no duplicate.

use tokio::time::Instant;

use anyhow::{Context, bail};
use clap::Args;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;
use tokio_tungstenite::tungstenite::Message;

use crate::{Target, client, server_stats};

/// Arguments of the recovery scenario.
#[derive(Debug, Args)]
pub struct RecoveryArgs {
    #[command(flatten)]
    target: Target,
    /// Subscribers, spread evenly over the channels.
    #[arg(long, default_value_t = 1000)]
    subscribers: usize,
    /// Channels.
    #[arg(long, default_value_t = 10)]
    channels: usize,
    /// Messages published while everyone is away, spread evenly over the channels.
    #[arg(long, default_value_t = 100_000)]
    messages: u64,
    /// Size of each message's data in bytes.
    #[arg(long, default_value_t = 100)]
    payload_bytes: usize,
}

fn channel(n: usize) -> String {
    format!("recovery:ch-{n}")
}

/// What one reconnected subscriber saw.
#[derive(Debug, Default)]
struct Outcome {
    recovered: bool,
    received: u64,
    gaps: u64,
    duplicates: u64,
}

/// Runs the scenario and returns its JSON report.
pub async fn run(args: RecoveryArgs) -> anyhow::Result<Value> {
    if args.channels == 0 || args.subscribers < args.channels {
        bail!("need at least one subscriber per channel");
    }
    let token = client::mint(&args.target, "recovery", "recovery:*").await?;
    // Subscribe everyone and keep each one's position, then leave.
    let mut connections = client::connect_many(&args.target, args.subscribers, &token).await?;
    let mut positions = Vec::with_capacity(args.subscribers);
    for (n, ws) in connections.iter_mut().enumerate() {
        let reply = client::subscribe(ws, &channel(n % args.channels), None).await?;
        positions.push(json!({"epoch": reply["result"]["epoch"], "offset": reply["result"]["offset"]}));
    }
    for mut ws in connections {
        let _ = ws.close(None).await;
    }
    let tops = publish_all(&args, &token).await?;
    // Everyone comes back at once with the position it had.
    let before = server_stats::read(args.target.server_pid);
    let started = Instant::now();
    let outcomes: Vec<anyhow::Result<Outcome>> = futures::stream::iter(positions.into_iter().enumerate())
        .map(|(n, position)| {
            let (target, token, top) = (&args.target, &token, tops[n % args.channels]);
            async move { recover(target, n, token, &channel(n % args.channels), position, top).await }
        })
        .buffer_unordered(args.target.connect_concurrency.max(1))
        .collect()
        .await;
    let seconds = started.elapsed().as_secs_f64();
    let after = server_stats::read(args.target.server_pid);
    let mut total = Outcome { recovered: true, ..Outcome::default() };
    let mut unrecovered = 0u64;
    for outcome in outcomes {
        let outcome = outcome?;
        unrecovered += u64::from(!outcome.recovered);
        total.received += outcome.received;
        total.gaps += outcome.gaps;
        total.duplicates += outcome.duplicates;
    }
    let server = match (before, after) {
        (Some(b), Some(a)) => json!({"rss_kib": a.rss_kib, "cpu_ms": a.cpu_ms.saturating_sub(b.cpu_ms)}),
        _ => Value::Null,
    };
    Ok(json!({
        "scenario": "recovery",
        "peer": "tributary",
        "subscribers": args.subscribers,
        "channels": args.channels,
        "messages": args.messages,
        "recovered_messages": total.received,
        "seconds": seconds,
        "recovered_per_sec": total.received as f64 / seconds,
        "unrecovered_subscribers": unrecovered,
        "gaps": total.gaps,
        "duplicates": total.duplicates,
        "server": server,
    }))
}

/// Publishes the messages round-robin over the channels through one pipelined WebSocket, and
/// returns each channel's newest offset.
async fn publish_all(args: &RecoveryArgs, token: &str) -> anyhow::Result<Vec<u64>> {
    let mut ws = client::connect(&args.target, args.subscribers, token).await?;
    let padding = "x".repeat(args.payload_bytes.saturating_sub(8));
    for n in 0..args.messages {
        let name = channel(n as usize % args.channels);
        // No id: no reply, so the frames stream without a round trip each.
        let frame = format!(r#"{{"op":"publish","channel":"{name}","data":{{"p":"{padding}"}}}}"#);
        ws.feed(Message::text(frame)).await?;
    }
    ws.flush().await?;
    // Frames are handled in order, so one request answered means every publish before it was.
    let mut tops = Vec::with_capacity(args.channels);
    for n in 0..args.channels {
        let id = 1000 + n as u64;
        let frame =
            json!({"id": id, "op": "history", "channel": channel(n), "limit": 1, "direction": "backward"});
        ws.send(Message::text(frame.to_string())).await?;
        let reply = loop {
            let reply = client::next_json(&mut ws).await?;
            if reply["id"] == id {
                break reply;
            }
            if reply["type"] == "reply" && reply.get("error").is_some() {
                bail!("a publish was refused: {reply}");
            }
        };
        let top = reply["result"]["offset"].as_u64().with_context(|| format!("{reply}"))?;
        tops.push(top);
    }
    let _ = ws.close(None).await;
    Ok(tops)
}

/// Reconnects subscriber `n`, recovers from `position`, and reads until the channel's `top`.
async fn recover(
    target: &Target,
    n: usize,
    token: &str,
    channel: &str,
    position: Value,
    top: u64,
) -> anyhow::Result<Outcome> {
    let mut ws = client::connect(target, n, token).await?;
    let mut last = position["offset"].as_u64().context("offset")?;
    let frame = json!({"id": 2, "op": "subscribe", "channel": channel, "recover": position});
    ws.send(Message::text(frame.to_string())).await?;
    // Nothing has been read since `connect`, so the socket can be read directly from here:
    // the generator must stay far cheaper than the server it measures.
    let mut tcp = ws.into_inner();
    let mut frames = client::ServerFrames::default();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut outcome = Outcome::default();
    let mut replied = false;
    while !replied || (outcome.recovered && last < top) {
        let read = tcp.read(&mut chunk).await?;
        if read == 0 {
            bail!("connection ended while recovering");
        }
        let mut failure = None;
        frames.feed(&chunk[..read], |frame| {
            let client::Frame::Data(payload) = frame else {
                failure = Some("closed while recovering");
                return;
            };
            if !replied {
                let reply: Value = serde_json::from_slice(payload).unwrap_or_default();
                replied = true;
                outcome.recovered = reply["result"]["recovered"] == true;
                return;
            }
            let Some(offset) = offset(payload) else { return };
            match offset.cmp(&(last + 1)) {
                std::cmp::Ordering::Equal => {}
                std::cmp::Ordering::Greater => outcome.gaps += offset - last - 1,
                std::cmp::Ordering::Less => {
                    outcome.duplicates += 1;
                    return;
                }
            }
            outcome.received += 1;
            last = offset;
        });
        if let Some(failure) = failure {
            bail!(failure);
        }
    }
    Ok(outcome)
}

/// Returns the number after `"offset":` in a message frame, without parsing the JSON.
fn offset(frame: &[u8]) -> Option<u64> {
    if !frame.starts_with(br#"{"type":"message""#) {
        return None;
    }
    let start = frame.windows(9).position(|w| w == b"\"offset\":")? + 9;
    let digits = frame[start..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&frame[start..start + digits]).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::offset;

    #[test]
    fn offsets_are_read_from_message_frames_only() {
        assert_eq!(offset(br#"{"type":"message","channel":"a","offset":42,"data":1}"#), Some(42));
        assert_eq!(offset(br#"{"type":"reply","result":{"offset":42}}"#), None);
    }
}
