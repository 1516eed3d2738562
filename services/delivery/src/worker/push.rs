//! The worker's pushes: a job of a `push:<app>:<service>` target is one device's copy of a push,
//! sent with the app's credentials for that service; what the service answers decides what
//! follows (the device removed, the credentials stopped and the tenant told, a retry, or the
//! dead letters).

use std::sync::Arc;

use tributary_store::{AfterAttempt, DeliveryJob, DevicePlatform, PushService, StoreError};

use super::{Attempted, Inner, Target, finished};
use crate::push::PushOutcome;
use crate::push::deliver::PushSender;
use crate::push::job::PushJob;

impl Inner {
    /// The credentials of an app's pushes through `service`, read once per claim.
    pub(super) async fn push_target(&self, app_id: &str, service: &str) -> Result<Target, StoreError> {
        let unusable = |reason: String| Ok(Target::Unusable(reason));
        let Some(service) = PushService::parse(service) else {
            return unusable(format!("no push service is called {service}"));
        };
        if self.push.is_none() {
            return unusable("this worker sends no push (no push clients)".into());
        }
        let Some((credentials, secret)) = self.store.push_secret(app_id, service).await? else {
            return unusable(format!("the app has no {} credentials", service.as_str()));
        };
        if let Some(reason) = credentials.disabled_reason {
            return unusable(format!("the app's {} credentials were refused: {reason}", service.as_str()));
        }
        use secrecy::ExposeSecret as _;
        match PushSender::from_stored(service.as_str(), &credentials.settings, secret.expose_secret()) {
            Ok(sender) => Ok(Target::Push { app_id: app_id.to_owned(), service, sender }),
            Err(err) => unusable(err.to_string()),
        }
    }

    /// Sends a push job to its devices and says what to record of it: the devices delivered or
    /// found dead leave it; those to try again stay in it (its body rewritten), retried by the
    /// schedule; those the service refused stay marked for the dead letter. Refused credentials
    /// stop the app's pushes through the service: the job is dead-lettered with the devices it
    /// did not reach.
    pub(super) async fn attempt_push(
        &self,
        job: DeliveryJob,
        app_id: &str,
        service: PushService,
        sender: &PushSender,
        started: i64,
    ) -> Option<Attempted> {
        let dead = |job: &DeliveryJob, reason: &str| {
            let finished = finished(job, started, None, reason, "dead", AfterAttempt::Dead);
            Some(Attempted { finished, target: job.target_id.clone(), healthy: None })
        };
        let Some(mut push) = PushJob::read(&job.payload, &job.event_id) else {
            return dead(&job, "the push job is not readable");
        };
        let Some(clients) = self.push.as_ref().map(Arc::clone) else {
            return dead(&job, "this worker sends no push");
        };
        // A job whose every device was refused is a dead letter replayed: all are sent again.
        if push.devices.iter().all(|device| device.refused.is_some()) {
            push.devices.iter_mut().for_each(|device| device.refused = None);
        }
        let answers = clients.send_job(sender, &push).await;
        let mut tally = Tally::default();
        let mut leaving = vec![false; push.devices.len()];
        let mut gone_tokens = Vec::new();
        for (index, answer) in answers {
            let device = &mut push.devices[index];
            match answer {
                Ok(PushOutcome::Delivered { id }) => {
                    leaving[index] = true;
                    tally.delivered += 1;
                    tally.last_id = id;
                }
                Ok(PushOutcome::Unregistered { reason }) => {
                    leaving[index] = true;
                    gone_tokens.push(device.token.clone());
                    tally.note(&device.device_id, &reason);
                    tally.gone += 1;
                }
                Ok(PushOutcome::Retry { after, reason }) => {
                    tally.retry_after = tally.retry_after.max(after);
                    tally.note(&device.device_id, &reason);
                    tally.retry += 1;
                }
                Ok(PushOutcome::CredentialsRejected { reason }) => tally.credentials = Some(reason),
                Ok(PushOutcome::Rejected { status, reason }) => {
                    let reason = format!("{status} {reason}");
                    tally.note(&device.device_id, &reason);
                    device.refused = Some(reason);
                    tally.refused += 1;
                }
                Err(err) => {
                    let reason = err.to_string();
                    tally.note(&device.device_id, &reason);
                    device.refused = Some(reason);
                    tally.refused += 1;
                }
            }
        }
        // The dead tokens' devices go (with their subscriptions) before anything is recorded:
        // a failure leaves the job leased, to be sent again.
        let platform = DevicePlatform::parse(&push.platform).unwrap_or(DevicePlatform::Apns);
        if let Err(err) = self.store.remove_devices_by_tokens(app_id, platform, &gone_tokens).await {
            tracing::warn!(error = %err, "devices whose tokens are dead were not removed");
            return None;
        }
        push.devices = std::mem::take(&mut push.devices)
            .into_iter()
            .zip(leaving)
            .filter_map(|(device, leaves)| (!leaves).then_some(device))
            .collect();
        let (outcome, after) = if let Some(reason) = &tally.credentials {
            if !self.credentials_refused(app_id, service, reason, started).await {
                return None;
            }
            ("refused", AfterAttempt::Dead)
        } else if tally.retry > 0 {
            self.after_failure(&job, tally.retry_after)
        } else if push.devices.iter().any(|device| device.refused.is_some()) {
            // Refused by this attempt or an earlier one: the dead letter keeps them.
            ("dead", AfterAttempt::Dead)
        } else if tally.gone > 0 && tally.delivered == 0 {
            ("gone", AfterAttempt::Dead)
        } else {
            ("delivered", AfterAttempt::Delivered)
        };
        let single = job.events <= 1 && tally.delivered + tally.gone + tally.retry + tally.refused <= 1;
        let snippet = tally.snippet(single);
        let status = (outcome == "delivered").then_some(200);
        let mut finished = finished(&job, started, status, &snippet, outcome, after);
        finished.pushed = tally.delivered;
        // What is left to send (or to keep as the dead letter) replaces the body when it shrank
        // or a device was marked refused.
        if after != AfterAttempt::Delivered && (tally.delivered + tally.gone + tally.refused) > 0 {
            finished.rest = serde_json::to_vec(&push).ok();
        }
        Some(Attempted { finished, target: job.target_id, healthy: None })
    }

    /// Queues a rule's push to the devices it reaches (a job per service and page of devices,
    /// with ids derived from the push's, so doing it again after a crash queues nothing twice).
    pub(super) async fn attempt_pushout(&self, job: DeliveryJob, started: i64) -> Option<Attempted> {
        let end = |job: DeliveryJob, snippet: &str, outcome: &str, after: AfterAttempt| {
            let status = (after == AfterAttempt::Delivered).then_some(200);
            let finished = finished(&job, started, status, snippet, outcome, after);
            Some(Attempted { finished, target: job.target_id, healthy: None })
        };
        let Ok(out) = serde_json::from_slice::<crate::rule_targets::PushOut>(&job.payload) else {
            return end(job, "the rule's push is not readable", "dead", AfterAttempt::Dead);
        };
        if let crate::push::queue::Reach::Channel(name) = &out.reach
            && tributary_protocol::ChannelName::parse(name).is_err()
        {
            return end(job, &format!("{name:?} is not a channel name"), "dead", AfterAttempt::Dead);
        }
        let queued = crate::push::queue::queue(
            &self.store,
            &job.tenant_id,
            &job.app_id,
            &out.reach,
            &out.push_id,
            &out.push,
        )
        .await;
        match queued {
            Ok(devices) => {
                self.wake.notify_one();
                end(
                    job,
                    &format!("{} queued to {devices} devices", out.push_id),
                    "delivered",
                    AfterAttempt::Delivered,
                )
            }
            Err(crate::push::queue::QueueError::Store(StoreError::NotFound(what))) => {
                end(job, &format!("{what} not found"), "gone", AfterAttempt::Dead)
            }
            Err(crate::push::queue::QueueError::TooMany) => {
                let reason = crate::push::queue::QueueError::TooMany.to_string();
                end(job, &reason, "dead", AfterAttempt::Dead)
            }
            Err(crate::push::queue::QueueError::Store(err)) => {
                let (outcome, after) = self.after_failure(&job, None);
                end(job, &format!("the devices were not read: {err}"), outcome, after)
            }
        }
    }

    /// Stops an app's pushes through `service` after its credentials were refused, and tells
    /// the tenant (once: the credentials are disabled by the first refusal); `false` when the
    /// store failed (the job is sent again after its lease).
    pub(super) async fn credentials_refused(
        &self,
        app_id: &str,
        service: PushService,
        reason: &str,
        at: i64,
    ) -> bool {
        match self.store.disable_push_credentials(app_id, service, reason).await {
            Ok(Some(_)) => {
                let kind = if service == PushService::Twilio {
                    "sms.credentials_refused"
                } else {
                    "push.credentials_refused"
                };
                let notice = serde_json::json!({
                    "type": kind, "app_id": app_id,
                    "service": service.as_str(), "reason": reason, "at": at / 1000,
                });
                let key = format!("push.refused:{app_id}:{}:{}", service.as_str(), at / 60_000);
                self.notify(app_id, notice, key).await;
                true
            }
            Ok(None) => true,
            Err(err) => {
                tracing::warn!(error = %err, "refused push credentials were not disabled");
                false
            }
        }
    }
}

/// What a job's devices' answers came to.
#[derive(Default)]
struct Tally {
    delivered: i64,
    gone: i64,
    retry: i64,
    refused: i64,
    /// The longest `Retry-After` asked for.
    retry_after: Option<std::time::Duration>,
    /// The credentials' refusal, if any.
    credentials: Option<String>,
    /// The service's id of the last delivered copy.
    last_id: Option<String>,
    /// The first few devices' reasons, for the delivery log.
    notes: Vec<String>,
}

/// Devices whose reasons the delivery log names, per attempt.
const NOTED_DEVICES: usize = 10;

impl Tally {
    fn note(&mut self, device_id: &str, reason: &str) {
        if self.notes.len() < NOTED_DEVICES {
            self.notes.push(format!("{device_id}: {reason}"));
        }
    }

    /// The delivery log's line: a one-device job's answer as it came, else the counts and the
    /// first devices' reasons.
    fn snippet(&self, single: bool) -> String {
        if let Some(reason) = &self.credentials {
            return format!("credentials refused: {reason}");
        }
        if single {
            return match (self.delivered, self.gone, self.notes.first()) {
                (1, _, _) => self.last_id.clone().unwrap_or_default(),
                (_, 1, Some(note)) => {
                    format!("device removed: {}", note.split_once(": ").map_or("", |(_, r)| r))
                }
                (_, _, Some(note)) => note.split_once(": ").map_or(note.as_str(), |(_, r)| r).to_owned(),
                _ => String::new(),
            };
        }
        let mut line = format!(
            "{} delivered, {} removed (dead tokens), {} to retry, {} refused",
            self.delivered, self.gone, self.retry, self.refused
        );
        for note in &self.notes {
            line.push_str("; ");
            line.push_str(note);
        }
        line
    }
}
