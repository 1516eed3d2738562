//! A fake of Twilio's Messages API that checks what Twilio checks (HTTP Basic authentication by
//! the account or an API key, the form's fields, E.164 numbers, opted-out recipients) and, like
//! Twilio, posts each message's progress to its `StatusCallback`, signed with
//! `X-Twilio-Signature` (computed here from Twilio's documentation, not by the code under test).

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::http::HeaderMap;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::json;

use crate::push::{Answer, answer};

/// A message the fake accepted.
#[derive(Debug, Clone)]
pub struct SmsReceived {
    /// Its SID.
    pub sid: String,
    /// `To`.
    pub to: String,
    /// `From`, if sent.
    pub from: Option<String>,
    /// `MessagingServiceSid`, if sent.
    pub messaging_service: Option<String>,
    /// `Body`.
    pub body: String,
    /// The user name it was authenticated as (the account, or an API key).
    pub username: String,
    /// `StatusCallback`, if sent.
    pub status_callback: Option<String>,
}

#[derive(Default)]
struct TwilioState {
    account_sid: String,
    /// (user name, secret) pairs that authenticate: the auth token's and API keys'.
    logins: Vec<(String, String)>,
    auth_token: String,
    opted_out: Mutex<HashSet<String>>,
    undeliverable: Mutex<HashSet<String>>,
    scripted: Mutex<Vec<(u16, u64)>>,
    received: Mutex<Vec<SmsReceived>>,
    requests: AtomicUsize,
    /// Milliseconds each answer waits (a slow Twilio: a killed sender is killed mid-request).
    delay_ms: std::sync::atomic::AtomicU64,
}

/// The fake, on a loopback port.
pub struct TwilioFake {
    /// Its base URL (what `TwilioClient` is given instead of `https://api.twilio.com`).
    pub url: String,
    state: Arc<TwilioState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TwilioFake {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TwilioFake {
    /// Starts a fake account `account_sid` with `auth_token`, also taking the API key `api_key`
    /// (SID and secret) if given.
    pub async fn start(account_sid: &str, auth_token: &str, api_key: Option<(&str, &str)>) -> Self {
        let mut logins = vec![(account_sid.to_owned(), auth_token.to_owned())];
        logins.extend(api_key.map(|(sid, secret)| (sid.to_owned(), secret.to_owned())));
        let state = Arc::new(TwilioState {
            account_sid: account_sid.to_owned(),
            logins,
            auth_token: auth_token.to_owned(),
            ..Default::default()
        });
        let serving = state.clone();
        let app = axum::Router::new().route(
            "/2010-04-01/Accounts/{account}/{resource}",
            axum::routing::post(
                move |axum::extract::Path((account, resource)): axum::extract::Path<(String, String)>,
                      headers: HeaderMap,
                      body: bytes::Bytes| {
                    let state = serving.clone();
                    async move {
                        // Before the message is taken: a request whose sender dies meanwhile is
                        // dropped with its connection, never taken (as Twilio would not).
                        let delay = state.delay_ms.load(Ordering::Relaxed);
                        if delay > 0 {
                            tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
                        }
                        create_message(&state, &account, &resource, &headers, &body)
                    }
                },
            ),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a port");
        let url = format!("http://{}", listener.local_addr().expect("its address"));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { url, state, task }
    }

    /// The messages accepted so far, in order.
    pub fn received(&self) -> Vec<SmsReceived> {
        self.state.received.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Requests answered so far.
    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::Relaxed)
    }

    /// `number` replied STOP: messages to it are refused with error 21610.
    pub fn opt_out(&self, number: &str) {
        self.state.opted_out.lock().unwrap_or_else(|p| p.into_inner()).insert(number.to_owned());
    }

    /// Messages to `number` are accepted but end `undelivered` (error 30003).
    pub fn undeliverable(&self, number: &str) {
        self.state.undeliverable.lock().unwrap_or_else(|p| p.into_inner()).insert(number.to_owned());
    }

    /// Every request from now on waits `delay` before its message is taken and answered.
    pub fn answer_after(&self, delay: std::time::Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.state.delay_ms.store(ms, Ordering::Relaxed);
    }

    /// The next authenticated request is answered `status` with Twilio error `code`.
    pub fn answer_next(&self, status: u16, code: u64) {
        self.state.scripted.lock().unwrap_or_else(|p| p.into_inner()).push((status, code));
    }
}

fn error(status: u16, code: u64, message: &str) -> Answer {
    answer(
        status,
        json!({"code": code, "message": message, "more_info": format!("https://www.twilio.com/docs/errors/{code}"), "status": status}),
    )
}

/// Form fields, decoded.
fn form_fields(body: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(body).into_owned().collect()
}

fn is_e164(number: &str) -> bool {
    number.len() >= 3
        && number.len() <= 16
        && number.starts_with('+')
        && number[1..].bytes().all(|b| b.is_ascii_digit())
        && !number[1..].starts_with('0')
}

/// `POST /2010-04-01/Accounts/{AccountSid}/Messages.json`.
fn create_message(
    state: &Arc<TwilioState>,
    account: &str,
    resource: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Answer {
    state.requests.fetch_add(1, Ordering::Relaxed);
    let login = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|text| text.split_once(':').map(|(user, secret)| (user.to_owned(), secret.to_owned())));
    let Some(login) = login.filter(|login| state.logins.contains(login)) else {
        return error(401, 20003, "Authenticate");
    };
    if account != state.account_sid || resource != "Messages.json" {
        return error(404, 20404, "The requested resource was not found");
    }
    if let Some((status, code)) = state.scripted.lock().unwrap_or_else(|p| p.into_inner()).pop() {
        let mut reply = error(status, code, "scripted");
        if status == 429 {
            reply.1.insert("retry-after", "3".parse().expect("a header"));
        }
        return reply;
    }
    if !headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .starts_with("application/x-www-form-urlencoded")
    {
        return error(400, 21100, "a form body is expected");
    }
    let fields = form_fields(body);
    let field = |name: &str| fields.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let Some(to) = field("To").filter(|to| is_e164(to)) else {
        return error(400, 21211, "The 'To' number is not a valid phone number.");
    };
    let (from, service) = (field("From"), field("MessagingServiceSid"));
    if from.is_none() == service.is_none() {
        return error(400, 21603, "A 'From' or 'MessagingServiceSid' parameter is required");
    }
    if from.as_deref().is_some_and(|from| !is_e164(from)) {
        return error(400, 21212, "The 'From' number is not a valid phone number");
    }
    let Some(text) = field("Body").filter(|b| !b.is_empty()) else {
        return error(400, 21602, "Message body is required.");
    };
    if text.chars().count() > 1600 {
        return error(400, 21617, "The concatenated message body exceeds the 1600 character limit.");
    }
    if state.opted_out.lock().unwrap_or_else(|p| p.into_inner()).contains(&to) {
        return error(400, 21610, "Attempt to send to unsubscribed recipient");
    }
    let sid = format!("SM{}", uuid::Uuid::new_v4().simple());
    let (units, single, part) = if text.bytes().all(|b| (0x20..0x7f).contains(&b) || b == b'\n') {
        (text.len(), 160, 153)
    } else {
        (text.encode_utf16().count(), 70, 67)
    };
    let segments = if units <= single { 1 } else { units.div_ceil(part) };
    state.received.lock().unwrap_or_else(|p| p.into_inner()).push(SmsReceived {
        sid: sid.clone(),
        to: to.clone(),
        from: from.clone(),
        messaging_service: service.clone(),
        body: text.clone(),
        username: login.0,
        status_callback: field("StatusCallback"),
    });
    if let Some(callback) = field("StatusCallback") {
        let undeliverable = state.undeliverable.lock().unwrap_or_else(|p| p.into_inner()).contains(&to);
        let progress =
            if undeliverable { ["queued", "sent", "undelivered"] } else { ["queued", "sent", "delivered"] };
        let (token, account_sid, sid, to) =
            (state.auth_token.clone(), state.account_sid.clone(), sid.clone(), to.clone());
        let from = from.clone().unwrap_or_else(|| "+15005550006".into());
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            for status in progress {
                let mut params = vec![
                    ("AccountSid".to_owned(), account_sid.clone()),
                    ("MessageSid".to_owned(), sid.clone()),
                    ("MessageStatus".to_owned(), status.to_owned()),
                    ("To".to_owned(), to.clone()),
                    ("From".to_owned(), from.clone()),
                ];
                if status == "undelivered" {
                    params.push(("ErrorCode".to_owned(), "30003".to_owned()));
                }
                let signature = twilio_signature(&token, &callback, &params);
                let _ =
                    client.post(&callback).header("x-twilio-signature", signature).form(&params).send().await;
            }
        });
    }
    answer(
        201,
        json!({"sid": sid, "account_sid": state.account_sid, "to": to, "from": from,
                       "messaging_service_sid": service, "body": text, "status": "queued",
                       "num_segments": segments.to_string()}),
    )
}

/// Twilio's signature of a callback: base64 HMAC-SHA1 under the auth token of the URL followed
/// by the parameters' names and values, sorted by name.
fn twilio_signature(token: &str, url: &str, params: &[(String, String)]) -> String {
    let mut data = url.to_owned();
    let mut sorted = params.to_vec();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, value) in sorted {
        data.push_str(&name);
        data.push_str(&value);
    }
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(token.as_bytes()).expect("any key length");
    mac.update(data.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}
