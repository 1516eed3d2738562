//! Texts through the whole server: a backend sends one with its API key, a worker sends it to
//! the testkit's Twilio fake (which checks Basic auth and the form, like Twilio), and the fake's
//! signed status callbacks move the text on. Bad input, a forged callback, the tenant's quota
//! and rate, an opted-out recipient, Twilio's throttling and refused credentials: each a clear
//! answer, and nothing half-sent.

use std::time::Duration;

use serde_json::{Value, json};
use tributary_testkit::sms::TwilioFake;
use tributary_testkit::{TestServer, eventually};

const ACCOUNT: &str = "AC0123456789abcdef0123456789abcdef";
const TOKEN: &str = "twilio-auth-token";
const FROM: &str = "+15005550006";

async fn call(
    server: &TestServer,
    method: &str,
    path: &str,
    body: Option<Value>,
    key: Option<&str>,
) -> (u16, Value, Option<String>) {
    let url = format!("{}{path}", server.http_url());
    let mut request = match method {
        "POST" => server.http().post(url),
        _ => server.http().get(url),
    }
    .bearer_auth(server.api_key());
    if let Some(body) = body {
        request = request.json(&body);
    }
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let retry_after = response.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
    (status, response.json().await.unwrap_or(Value::Null), retry_after)
}

async fn text(server: &TestServer, to: &str, body: &str) -> (u16, Value, Option<String>) {
    call(server, "POST", "/v1/sms", Some(json!({"to": to, "body": body})), None).await
}

/// A server whose texts go to `twilio`, with the app's Twilio credentials set (or not).
async fn setup(with_credentials: bool) -> (TestServer, TwilioFake) {
    let twilio = TwilioFake::start(ACCOUNT, TOKEN, None).await;
    let url = twilio.url.clone();
    let server = TestServer::spawn_configured(move |config| {
        config.delivery.twilio_url = url;
        config.delivery.poll_interval_ms = 20;
        // Throttled texts are tried again after Twilio's `Retry-After` (3 s in the fake).
        config.delivery.retry_schedule = "1s,1s,1s".into();
    })
    .await;
    if with_credentials {
        set_credentials(&server).await;
    }
    (server, twilio)
}

async fn set_credentials(server: &TestServer) {
    let path = format!("/v1/tenants/{}/apps/{}/push-credentials/twilio", server.tenant_id(), server.app_id());
    let body = json!({"account_sid": ACCOUNT, "secret": TOKEN, "from": FROM});
    let (status, set) = server.manage("PUT", &path, server.operator_token(), Some(&body)).await;
    assert_eq!(status, 200, "{set}");
    assert_eq!(set["settings"]["status_callbacks"], true, "{set}");
    assert!(!set.to_string().contains(TOKEN), "the token is never shown: {set}");
}

async fn status_of(server: &TestServer, sms_id: &str) -> Value {
    call(server, "GET", &format!("/v1/sms/{sms_id}"), None, None).await.1
}

#[tokio::test]
async fn a_text_is_sent_through_twilio_and_its_signed_status_callbacks_recorded() {
    let (server, twilio) = setup(true).await;
    let body = json!({"to": "+14155550100", "body": "Your driver is here"});
    let (status, queued, _) = call(&server, "POST", "/v1/sms", Some(body.clone()), Some("order-42")).await;
    assert_eq!(
        (status, queued["segments"].as_i64(), queued["status"].as_str()),
        (202, Some(1), Some("pending")),
        "{queued}"
    );
    let sms_id = queued["sms_id"].as_str().unwrap().to_owned();
    // The backend retries (its connection dropped): the same text, queued and charged once.
    let (status, again, _) = call(&server, "POST", "/v1/sms", Some(body), Some("order-42")).await;
    assert_eq!((status, again["sms_id"].as_str()), (202, Some(sms_id.as_str())), "{again}");

    eventually("Twilio reports the text delivered", Duration::from_secs(10), || async {
        status_of(&server, &sms_id).await["status"] == "delivered"
    })
    .await
    .unwrap();
    let received = twilio.received();
    assert_eq!(received.len(), 1, "sent once");
    assert_eq!(
        (
            received[0].to.as_str(),
            received[0].body.as_str(),
            received[0].from.as_deref(),
            received[0].username.as_str()
        ),
        ("+14155550100", "Your driver is here", Some(FROM), ACCOUNT)
    );
    let shown = status_of(&server, &sms_id).await;
    assert_eq!(
        (shown["sid"].as_str(), shown["origin"].as_str()),
        (Some(received[0].sid.as_str()), Some("api")),
        "{shown}"
    );
    let (_, listed, _) = call(&server, "GET", "/v1/sms?limit=10", None, None).await;
    assert_eq!(listed["items"].as_array().map(Vec::len), Some(1), "{listed}");

    // Usage counts the text and its segment, not as a webhook.
    let store = server.store();
    eventually("usage counts the text", Duration::from_secs(10), || async {
        let now = tributary_delivery::worker::now_ms() / 1000;
        let points = store
            .usage(server.tenant_id(), None, (now - 7200, now + 3600), tributary_store::Granularity::Hour)
            .await
            .unwrap();
        let sent: i64 = points.iter().map(|p| p.sms_sent).sum();
        let segments: i64 = points.iter().map(|p| p.sms_segments).sum();
        let webhooks: i64 = points.iter().map(|p| p.webhook_requests).sum();
        (sent, segments, webhooks) == (1, 1, 0)
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_forged_or_stale_status_callback_changes_nothing() {
    let (server, twilio) = setup(true).await;
    let (_, queued, _) = text(&server, "+14155550100", "Gate code 4711").await;
    let sms_id = queued["sms_id"].as_str().unwrap().to_owned();
    eventually("delivered", Duration::from_secs(10), || async {
        status_of(&server, &sms_id).await["status"] == "delivered"
    })
    .await
    .unwrap();
    let sid = twilio.received()[0].sid.clone();
    let url = format!("{}/v1/sms/status/{}/{sms_id}", server.http_url(), server.app_id());
    let params: Vec<(String, String)> =
        [("AccountSid", ACCOUNT), ("MessageSid", sid.as_str()), ("MessageStatus", "failed")]
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
    let post = |signature: Option<String>, url: String, params: Vec<(String, String)>| {
        let mut request = server.http().post(url).form(&params);
        if let Some(signature) = signature {
            request = request.header("x-twilio-signature", signature);
        }
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    use tributary_delivery::sms::signature::sign;
    let (status, answer) = post(None, url.clone(), params.clone()).await;
    assert_eq!((status, answer["error"]["name"].as_str()), (403, Some("forbidden")), "{answer}");
    let forged = sign("another-token", &url, &params);
    let (status, answer) = post(Some(forged), url.clone(), params.clone()).await;
    assert_eq!((status, answer["error"]["name"].as_str()), (403, Some("forbidden")), "{answer}");
    // Signed for another text: the URL is part of what is signed.
    let elsewhere = sign(TOKEN, &url.replace(&sms_id, "sms_other"), &params);
    assert_eq!(post(Some(elsewhere), url.clone(), params.clone()).await.0, 403);
    assert_eq!(status_of(&server, &sms_id).await["status"], "delivered", "nothing changed");

    // A genuine but late `sent` does not move a delivered text back.
    let mut late = params.clone();
    late[2].1 = "sent".into();
    let signature = sign(TOKEN, &url, &late);
    assert_eq!(post(Some(signature), url.clone(), late).await.0, 204);
    assert_eq!(status_of(&server, &sms_id).await["status"], "delivered");
    // A genuine callback of a text the app never sent.
    let unknown_url = url.replace(&sms_id, "sms_unknown");
    let signature = sign(TOKEN, &unknown_url, &params);
    assert_eq!(post(Some(signature), unknown_url, params).await.0, 404);
}

#[tokio::test]
async fn bad_texts_get_a_clear_error_and_nothing_is_queued() {
    let (server, twilio) = setup(false).await;
    // No Twilio credentials yet: nothing can be sent, so nothing is queued.
    let (status, answer, _) = text(&server, "+14155550100", "hello").await;
    assert_eq!((status, answer["error"]["name"].as_str()), (409, Some("not_configured")), "{answer}");
    set_credentials(&server).await;
    let cases = [
        (json!({"to": "4155550100", "body": "hi"}), 400, "invalid_parameter", "E.164"),
        (json!({"to": "+1 415 555 0100", "body": "hi"}), 400, "invalid_parameter", "E.164"),
        (json!({"to": "+14155550100", "body": ""}), 400, "invalid_parameter", "body"),
        (json!({"to": "+14155550100", "body": "a".repeat(1601)}), 400, "invalid_parameter", "1600"),
        (json!({"to": "+14155550100", "body": "ł".repeat(700)}), 400, "invalid_parameter", "segments"),
        (json!({"to": "+14155550100"}), 400, "invalid_frame", "body"),
        (json!({"to": "+14155550100", "body": "hi", "from": "+1"}), 400, "invalid_frame", "from"),
    ];
    for (body, code, name, says) in cases {
        let (status, answer, _) = call(&server, "POST", "/v1/sms", Some(body.clone()), None).await;
        assert_eq!((status, answer["error"]["name"].as_str()), (code, Some(name)), "{body}: {answer}");
        assert!(answer["error"]["message"].as_str().unwrap().contains(says), "{body}: {answer}");
    }
    // A client token is not an API key.
    let token = server.token("alice", &[("*", &["publish"])]).await;
    let response = server
        .http()
        .post(format!("{}/v1/sms", server.http_url()))
        .bearer_auth(token)
        .json(&json!({"to": "+14155550100", "body": "hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);
    let (_, listed, _) = call(&server, "GET", "/v1/sms", None, None).await;
    assert_eq!(listed["items"], json!([]), "nothing recorded");
    // Nothing else was harmed: a good text goes.
    let (status, queued, _) = text(&server, "+14155550100", "still works").await;
    assert_eq!(status, 202, "{queued}");
    eventually("sent", Duration::from_secs(10), || async { twilio.received().len() == 1 }).await.unwrap();
    assert_eq!(twilio.received()[0].body, "still works");
}

#[tokio::test]
async fn the_tenants_sms_quota_and_rate_refuse_texts_before_anything_is_sent() {
    let (server, twilio) = setup(true).await;
    let limits = format!("/v1/tenants/{}/limits", server.tenant_id());
    let quota = json!({"max_sms_segments_per_month": 3, "max_sms_per_minute": 0});
    let (status, set) = server.manage("POST", &limits, server.operator_token(), Some(&quota)).await;
    assert_eq!((status, set["limits"]["max_sms_segments_per_month"].as_i64()), (200, Some(3)), "{set}");
    let long = "a".repeat(161); // two segments
    assert_eq!(text(&server, "+14155550100", &long).await.0, 202);
    let (status, answer, _) = text(&server, "+14155550101", &long).await;
    assert_eq!((status, answer["error"]["name"].as_str()), (429, Some("sms_quota_exceeded")), "{answer}");
    assert!(answer["error"]["message"].as_str().unwrap().contains("3 segments"), "{answer}");
    assert_eq!(text(&server, "+14155550102", "one segment").await.0, 202);
    assert_eq!(text(&server, "+14155550103", "one more").await.0, 429);

    // A rate of one text a minute: within three texts one is refused (the minute may turn once
    // between them), with the seconds until the next minute.
    let rate = json!({"max_sms_segments_per_month": 0, "max_sms_per_minute": 1});
    assert_eq!(server.manage("POST", &limits, server.operator_token(), Some(&rate)).await.0, 200);
    let mut admitted = 2;
    let mut limited = None;
    for n in 0..3 {
        let (status, answer, retry_after) = text(&server, &format!("+1415555020{n}"), "rate").await;
        match status {
            202 => admitted += 1,
            429 => {
                assert_eq!(answer["error"]["name"], "rate_limited", "{answer}");
                limited = retry_after;
                break;
            }
            other => panic!("{other}: {answer}"),
        }
    }
    let seconds: u64 = limited.expect("a text refused by the rate").parse().unwrap();
    assert!((1..=60).contains(&seconds), "{seconds}");
    // What was refused was never recorded nor sent.
    eventually("the admitted texts are sent", Duration::from_secs(10), || async {
        twilio.received().len() == admitted
    })
    .await
    .unwrap();
    let (_, listed, _) = call(&server, "GET", "/v1/sms", None, None).await;
    assert_eq!(listed["items"].as_array().map(Vec::len), Some(admitted), "{listed}");
    assert_eq!(twilio.requests(), admitted);
}

#[tokio::test]
async fn throttling_is_retried_an_opted_out_recipient_refused_and_refused_credentials_stop_texts() {
    let (server, twilio) = setup(true).await;
    // Twilio throttles the first request: the text is sent again after its Retry-After.
    twilio.answer_next(429, 20429);
    let (_, queued, _) = text(&server, "+14155550100", "retried").await;
    let retried = queued["sms_id"].as_str().unwrap().to_owned();
    eventually("the throttled text is delivered", Duration::from_secs(15), || async {
        status_of(&server, &retried).await["status"] == "delivered"
    })
    .await
    .unwrap();
    assert_eq!((twilio.requests(), twilio.received().len()), (2, 1));

    // The recipient replied STOP: refused, not retried.
    twilio.opt_out("+14155550199");
    let (_, queued, _) = text(&server, "+14155550199", "promo").await;
    let stopped = queued["sms_id"].as_str().unwrap().to_owned();
    eventually("the opted-out text is refused", Duration::from_secs(10), || async {
        let shown = status_of(&server, &stopped).await;
        shown["status"] == "refused" && shown["error_code"] == "21610"
    })
    .await
    .unwrap();
    let target = tributary_delivery::sms::job::target_id(server.app_id());
    let log = server.store().delivery_log(server.tenant_id(), &target, 10).await.unwrap();
    assert!(
        log.iter().any(|a| a.record.outcome == "gone" && a.record.snippet.contains("opted out")),
        "{log:?}"
    );

    // Twilio refuses the credentials: the app's texts stop and the tenant is told; a new text
    // is refused at once instead of queued behind a key that cannot work.
    let requests = twilio.requests();
    twilio.answer_next(401, 20003);
    let (_, queued, _) = text(&server, "+14155550100", "refused").await;
    eventually("the credentials are disabled", Duration::from_secs(10), || async {
        let path = format!("/v1/tenants/{}/apps/{}/push-credentials", server.tenant_id(), server.app_id());
        let (_, listed) = server.manage("GET", &path, server.operator_token(), None).await;
        listed[0]["disabled_reason"].as_str().is_some_and(|reason| reason.starts_with("20003"))
    })
    .await
    .unwrap();
    let (status, answer, _) = text(&server, "+14155550100", "after").await;
    assert_eq!((status, answer["error"]["name"].as_str()), (409, Some("not_configured")), "{answer}");
    assert_eq!(twilio.requests(), requests + 1, "the refused text was not retried");
    let refused = status_of(&server, queued["sms_id"].as_str().unwrap()).await;
    assert_eq!(
        (&refused["status"], &refused["error_code"]),
        (&json!("refused"), &json!("credentials_refused")),
        "{refused}"
    );
}
