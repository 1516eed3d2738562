//! The `[delivery]` settings: how workers claim, send and retry deliveries (webhooks and
//! pushes and texts), which addresses they may reach, and where the push and SMS services are.

use serde::{Deserialize, Serialize};

/// The delivery worker: how it claims, sends and retries webhook deliveries, and which endpoint
/// addresses it may reach.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeliveryConfig {
    /// Whether `tributary serve` runs a delivery worker too.
    pub worker: bool,
    /// Whether endpoint URLs may be plain `http` (only `https` otherwise).
    pub allow_http: bool,
    /// Private address ranges endpoints may reach (`10.0.0.0/8`, `fd00::/8`): self-hosted
    /// receivers. Loopback, private, link-local and metadata addresses are refused otherwise.
    pub allowed_private_ranges: Vec<String>,
    /// Delays between attempts, e.g. `5s,5m,30m,2h,5h,10h,10h,10h`; after the last the event is
    /// dead-lettered.
    pub retry_schedule: String,
    /// How long a claimed delivery is one worker's alone, in seconds.
    pub lease_secs: u64,
    /// Most deliveries a worker sends at once.
    pub batch: u32,
    /// Most deliveries of one endpoint in flight at once, over every worker.
    pub per_endpoint_concurrency: u32,
    /// How long an idle worker waits before looking for due deliveries again, in milliseconds.
    pub poll_interval_ms: u64,
    /// Longest wait for an endpoint's connection, in milliseconds.
    pub connect_timeout_ms: u64,
    /// Longest wait for a whole attempt, in milliseconds.
    pub request_timeout_ms: u64,
    /// Most entries of an app's feed the rules read at once.
    pub feed_page: u32,
    /// How long the feed router waits when no app's feed had anything new, in milliseconds.
    pub feed_poll_interval_ms: u64,
    /// An endpoint whose every delivery has failed for this long is disabled and its tenant
    /// told, in seconds; 0: never.
    pub disable_after_failing_secs: u64,
    /// Apple's push service (production builds' devices).
    pub apns_url: String,
    /// Apple's development push service (for apps whose APNs credentials say `sandbox`).
    pub apns_sandbox_url: String,
    /// Firebase Cloud Messaging.
    pub fcm_url: String,
    /// Google's OAuth2 token endpoint (FCM's access tokens).
    pub fcm_token_url: String,
    /// An authority (PEM) the push services' certificates may also be signed by, besides the
    /// system's roots (a private proxy, or a test's fakes); empty: none.
    pub push_ca_file: String,
    /// Twilio's API (SMS).
    pub twilio_url: String,
    /// This server's public URL (`https://realtime.example.com`), where Twilio posts texts'
    /// status callbacks; empty: `tributary serve`'s own address (`tributary worker` then asks
    /// for none).
    pub public_url: String,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            worker: true,
            allow_http: false,
            allowed_private_ranges: Vec::new(),
            retry_schedule: "5s,5m,30m,2h,5h,10h,10h,10h".into(),
            lease_secs: 60,
            batch: 64,
            per_endpoint_concurrency: 4,
            poll_interval_ms: 200,
            connect_timeout_ms: 5_000,
            request_timeout_ms: 15_000,
            feed_page: 1_000,
            feed_poll_interval_ms: 50,
            disable_after_failing_secs: 5 * 86_400,
            apns_url: tributary_delivery::push::apns::PRODUCTION_URL.into(),
            apns_sandbox_url: tributary_delivery::push::apns::SANDBOX_URL.into(),
            fcm_url: tributary_delivery::push::fcm::FCM_URL.into(),
            fcm_token_url: tributary_delivery::push::fcm::TOKEN_URL.into(),
            push_ca_file: String::new(),
            twilio_url: tributary_delivery::sms::TWILIO_URL.into(),
            public_url: String::new(),
        }
    }
}

impl DeliveryConfig {
    /// Returns the problems of these settings.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for range in &self.allowed_private_ranges {
            if let Err(problem) = tributary_delivery::address::IpRange::parse(range) {
                problems.push(format!("delivery.allowed_private_ranges: {problem}"));
            }
        }
        if let Err(problem) = tributary_delivery::schedule::RetrySchedule::parse(&self.retry_schedule) {
            problems.push(format!("delivery.retry_schedule: {problem}"));
        }
        for (key, value) in [
            ("lease_secs", self.lease_secs),
            ("batch", u64::from(self.batch)),
            ("per_endpoint_concurrency", u64::from(self.per_endpoint_concurrency)),
            ("poll_interval_ms", self.poll_interval_ms),
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("request_timeout_ms", self.request_timeout_ms),
            ("feed_page", u64::from(self.feed_page)),
            ("feed_poll_interval_ms", self.feed_poll_interval_ms),
        ] {
            if value == 0 {
                problems.push(format!("delivery.{key} must be greater than 0"));
            }
        }
        problems
    }

    /// The rules endpoint URLs and addresses are checked against.
    pub fn address_policy(&self) -> tributary_delivery::address::AddressPolicy {
        use tributary_delivery::address::{AddressPolicy, IpRange};
        let mut policy = AddressPolicy::new().with_http(self.allow_http);
        for range in self.allowed_private_ranges.iter().filter_map(|r| IpRange::parse(r).ok()) {
            policy = policy.allow(range);
        }
        policy
    }

    /// Builds a worker on `store` (settings already checked by [`DeliveryConfig::problems`]);
    /// `own_url` is where Twilio's callbacks reach this process when `public_url` is not set.
    pub fn worker(
        &self,
        store: tributary_store::Store,
        owner: String,
        own_url: Option<String>,
    ) -> Result<tributary_delivery::worker::Worker, tributary_delivery::sender::SendError> {
        use std::time::Duration;
        let policy = self.address_policy();
        let limits = tributary_delivery::sender::SenderLimits {
            connect_timeout: Duration::from_millis(self.connect_timeout_ms),
            request_timeout: Duration::from_millis(self.request_timeout_ms),
            ..Default::default()
        };
        let sender = tributary_delivery::sender::Sender::new(policy, limits)?;
        let config = tributary_delivery::worker::WorkerConfig {
            owner,
            lease: Duration::from_secs(self.lease_secs),
            batch: i64::from(self.batch),
            per_target: i64::from(self.per_endpoint_concurrency),
            poll_interval: Duration::from_millis(self.poll_interval_ms),
            schedule: tributary_delivery::schedule::RetrySchedule::parse(&self.retry_schedule)
                .unwrap_or_default(),
            disable_after: Duration::from_secs(self.disable_after_failing_secs),
        };
        let (pushing, plain) = self.push_clients(sender.clone())?;
        let texting = tributary_delivery::worker::Texting {
            twilio: tributary_delivery::sms::TwilioClient::new(&self.twilio_url, plain),
            callback_base: if self.public_url.is_empty() { own_url } else { Some(self.public_url.clone()) },
        };
        Ok(tributary_delivery::worker::Worker::new(store, sender, config).pushing(pushing).texting(texting))
    }

    /// The push services' clients: APNs over HTTP/2 (production and sandbox), FCM, and Web Push
    /// through `sender` (its address policy: a subscription's endpoint is the tenant's input);
    /// and the plain HTTPS client of the services the operator names (FCM, Twilio).
    fn push_clients(
        &self,
        sender: tributary_delivery::sender::Sender,
    ) -> Result<
        (tributary_delivery::push::deliver::PushClients, reqwest::Client),
        tributary_delivery::sender::SendError,
    > {
        use std::time::Duration;
        use tributary_delivery::push::{apns, fcm, webpush};
        use tributary_delivery::sender::SendError;
        let roots = match self.push_ca_file.as_str() {
            "" => Vec::new(),
            path => vec![
                std::fs::read(path)
                    .map_err(|err| SendError::Client(format!("delivery.push_ca_file: {err}")))?,
            ],
        };
        let timeout = Duration::from_millis(self.request_timeout_ms);
        let http2 = apns::http2_client(&roots, timeout).map_err(|err| SendError::Client(err.to_string()))?;
        let mut plain = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_millis(self.connect_timeout_ms))
            .timeout(timeout);
        for pem in &roots {
            let root =
                reqwest::Certificate::from_pem(pem).map_err(|err| SendError::Client(err.to_string()))?;
            plain = plain.add_root_certificate(root);
        }
        let plain = plain.build().map_err(|err| SendError::Client(err.to_string()))?;
        let clients = tributary_delivery::push::deliver::PushClients::new(
            apns::ApnsClient::new(&self.apns_url, http2.clone()),
            apns::ApnsClient::new(&self.apns_sandbox_url, http2),
            fcm::FcmClient::new(&self.fcm_url, &self.fcm_token_url, plain.clone()),
            webpush::WebPushClient::new(sender),
        );
        Ok((clients, plain))
    }

    /// Builds the feed router of a worker named `owner` (its rules read `engine`'s feeds).
    pub fn router(
        &self,
        store: tributary_store::Store,
        engine: std::sync::Arc<dyn tributary_engine::Engine>,
        owner: String,
    ) -> tributary_delivery::router::Router {
        use std::time::Duration;
        let config = tributary_delivery::router::RouterConfig {
            owner,
            lease: Duration::from_secs(self.lease_secs),
            page: usize::try_from(self.feed_page).unwrap_or(1_000),
            poll_interval: Duration::from_millis(self.feed_poll_interval_ms),
            ..Default::default()
        };
        tributary_delivery::router::Router::new(store, engine, config)
    }
}
