//! The worker's texts: a job of an `sms:<app>` target is one text, sent through Twilio with the
//! app's credentials once its tenant's SMS quota admits it; what Twilio answers decides what
//! follows (recorded as sent, a retry, the text refused, or the app's texts stopped and the
//! tenant told).

use tributary_store::{AfterAttempt, DeliveryJob, NewSms, PushService, SmsAdmission, StoreError};

use super::{Attempted, Inner, Target, finished, now_ms};
use crate::push::PushOutcome;
use crate::sms::job::{SmsJob, status_callback};
use crate::sms::{StoredTwilio, TwilioClient};

/// How a worker sends texts.
pub struct Texting {
    /// Twilio's client.
    pub twilio: TwilioClient,
    /// The server's public URL, which Twilio posts status callbacks to; `None`: none asked for.
    pub callback_base: Option<String>,
}

impl Inner {
    /// The Twilio credentials of an app's texts, read once per claim.
    pub(super) async fn sms_target(&self, app_id: &str) -> Result<Target, StoreError> {
        let unusable = |reason: String| Ok(Target::Unusable(reason));
        if self.texting.is_none() {
            return unusable("this worker sends no text (no Twilio client)".into());
        }
        let Some((credentials, secret)) = self.store.push_secret(app_id, PushService::Twilio).await? else {
            return unusable("the app has no twilio credentials".into());
        };
        if let Some(reason) = credentials.disabled_reason {
            return unusable(format!("the app's twilio credentials were refused: {reason}"));
        }
        use secrecy::ExposeSecret as _;
        match StoredTwilio::from_stored(&credentials.settings, secret.expose_secret()) {
            Ok(twilio) => Ok(Target::Sms { app_id: app_id.to_owned(), twilio }),
            Err(err) => unusable(err.to_string()),
        }
    }

    /// Sends one text, once its tenant's quota admits it (a rule's is admitted when first
    /// claimed; one queued through the API was admitted when queued).
    pub(super) async fn attempt_sms(
        &self,
        job: DeliveryJob,
        app_id: &str,
        twilio: &StoredTwilio,
        started: i64,
    ) -> Option<Attempted> {
        let end =
            |job: DeliveryJob, snippet: &str, outcome: &str, after: AfterAttempt, status: Option<u16>| {
                let finished = finished(&job, started, status, snippet, outcome, after);
                Some(Attempted { finished, target: job.target_id, healthy: None })
            };
        let Some(texting) = self.texting.as_ref() else {
            return end(job, "this worker sends no text", "dead", AfterAttempt::Dead, None);
        };
        let Some(text) = SmsJob::read(&job.payload) else {
            return end(job, "the text's job is not readable", "dead", AfterAttempt::Dead, None);
        };
        let record = NewSms {
            id: text.sms_id.clone(),
            tenant_id: job.tenant_id.clone(),
            app_id: app_id.to_owned(),
            to: text.to.clone(),
            segments: i64::from(text.segments),
            origin: text.origin.clone(),
        };
        match self.store.admit_sms(&record, started).await {
            Ok(SmsAdmission::Admitted | SmsAdmission::Duplicate) => {}
            Ok(SmsAdmission::AlreadySent) => {
                // An earlier attempt reached Twilio and was not recorded: texting again would
                // reach the recipient twice.
                let snippet = "Twilio took this text already (an earlier attempt not recorded)";
                return end(job, snippet, "delivered", AfterAttempt::Delivered, None);
            }
            Ok(SmsAdmission::OverMonthlyQuota { limit }) => {
                self.notify_sms_quota(&job, "sms.quota_exceeded", limit, started).await;
                let reason = format!("the tenant's monthly SMS quota ({limit} segments) is used up");
                return end(job, &reason, "dead", AfterAttempt::Dead, None);
            }
            Ok(SmsAdmission::OverRate { limit, .. }) => {
                self.notify_sms_quota(&job, "sms.rate_limited", limit, started).await;
                let reason = format!("the tenant's SMS rate ({limit} a minute) was reached");
                return end(job, &reason, "dead", AfterAttempt::Dead, None);
            }
            Err(err) => {
                tracing::warn!(error = %err, "a text's quota could not be taken; it is tried after its lease");
                return None;
            }
        }
        let callback = match (&texting.callback_base, &twilio.auth_token) {
            (Some(base), Some(_)) => Some(status_callback(base, app_id, &text.sms_id)),
            _ => None,
        };
        let sent = texting.twilio.send(&twilio.credentials, &text.to, &text.body, callback.as_deref()).await;
        let (tenant_id, sms_id) = (job.tenant_id.clone(), text.sms_id.as_str());
        let tenant_id = tenant_id.as_str();
        let refused = |code: String| async move {
            if let Err(err) = self.store.sms_refused(tenant_id, app_id, sms_id, &code, now_ms()).await {
                tracing::warn!(error = %err, "a refused text's record was not updated");
            }
        };
        match sent {
            Ok((PushOutcome::Delivered { .. }, Some(sent))) => {
                let segments = i64::from(sent.segments);
                if let Err(err) = self
                    .store
                    .sms_sent(tenant_id, app_id, sms_id, &sent.sid, segments, &sent.status, now_ms())
                    .await
                {
                    // Twilio has it: sending it again would text the recipient twice.
                    tracing::warn!(error = %err, "a sent text's record was not updated");
                }
                let finished =
                    finished(&job, started, Some(201), &sent.sid, "delivered", AfterAttempt::Delivered);
                let finished = tributary_store::FinishedAttempt { segments, ..finished };
                Some(Attempted { finished, target: job.target_id, healthy: None })
            }
            Ok((PushOutcome::Delivered { .. }, None)) => {
                end(job, "Twilio's answer named no message", "delivered", AfterAttempt::Delivered, Some(201))
            }
            Ok((PushOutcome::Unregistered { reason }, _)) => {
                refused("21610".into()).await;
                end(job, &format!("the recipient opted out: {reason}"), "gone", AfterAttempt::Dead, None)
            }
            Ok((PushOutcome::Retry { after, reason }, _)) => {
                let (outcome, next) = self.after_failure(&job, after);
                if next == AfterAttempt::Dead {
                    refused("retries_exhausted".into()).await;
                }
                end(job, &reason, outcome, next, None)
            }
            Ok((PushOutcome::CredentialsRejected { reason }, _)) => {
                if !self.credentials_refused(app_id, PushService::Twilio, &reason, started).await {
                    return None;
                }
                refused("credentials_refused".into()).await;
                end(job, &format!("credentials refused: {reason}"), "refused", AfterAttempt::Dead, None)
            }
            Ok((PushOutcome::Rejected { status, reason }, _)) => {
                // Twilio's error code (`21211: …`), or the HTTP status when it gave none.
                let code = match reason.split_once(':') {
                    Some((code, _)) => code.to_owned(),
                    None => format!("http_{status}"),
                };
                refused(code).await;
                end(job, &format!("{status} {reason}"), "dead", AfterAttempt::Dead, Some(status))
            }
            Err(err) => {
                refused("invalid".into()).await;
                end(job, &err.to_string(), "dead", AfterAttempt::Dead, None)
            }
        }
    }

    /// Marks the text of a job that cannot be sent (its app's credentials refused, deleted or
    /// unreadable) `refused`, so the API says so; the job is dead-lettered, and a replay makes
    /// the text `pending` again.
    pub(super) async fn sms_unsendable(&self, job: &DeliveryJob, app_id: &str) {
        if let Some(text) = SmsJob::read(&job.payload)
            && let Err(err) =
                self.store.sms_refused(&job.tenant_id, app_id, &text.sms_id, "not_sent", now_ms()).await
        {
            tracing::warn!(error = %err, "an unsendable text's record was not updated");
        }
    }

    /// Tells the tenant its texts are being refused (once per worker and minute): an audit entry
    /// and `kind` on the app's system channel.
    async fn notify_sms_quota(&self, job: &DeliveryJob, kind: &str, limit: i64, at: i64) {
        let minute = at / 60_000;
        {
            let mut told = self.sms_told.lock().unwrap_or_else(|p| p.into_inner());
            if !told.insert((job.tenant_id.clone(), kind.to_owned(), minute)) {
                return;
            }
            told.retain(|(_, _, m)| *m == minute);
        }
        tracing::warn!(tenant = job.tenant_id, kind, limit, "a tenant's texts are refused by its SMS quota");
        if let Err(err) = self.store.audit_system(&job.tenant_id, kind, &job.app_id).await {
            tracing::warn!(error = %err, "the quota's audit entry was not recorded");
        }
        let notice = serde_json::json!({
            "type": kind, "tenant_id": job.tenant_id, "app_id": job.app_id, "limit": limit, "at": at,
        });
        let key = format!("{kind}:{}:{minute}", job.tenant_id);
        self.notify(&job.app_id, notice, key).await;
    }
}
