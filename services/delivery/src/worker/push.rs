//! The worker's pushes: a job of a `push:<app>:<service>` target is one device's copy of a push,
//! sent with the app's credentials for that service; what the service answers decides what
//! follows (the device removed, the credentials stopped and the tenant told, a retry, or the
//! dead letters).

use std::sync::Arc;

use tributary_store::{AfterAttempt, DeliveryJob, DevicePlatform, PushService, StoreError};

use super::{Attempted, Inner, Target, finished};
use crate::push::PushOutcome;
use crate::push::deliver::PushSender;
use crate::push::message::PushJob;

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

    /// Sends one push job and says what to record of it.
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
        let Ok(push) = serde_json::from_slice::<PushJob>(&job.payload) else {
            return dead(&job, "the push job is not readable");
        };
        let Some(clients) = self.push.as_ref().map(Arc::clone) else {
            return dead(&job, "this worker sends no push");
        };
        let outcome = match clients.send(sender, &push, &job.event_id).await {
            Ok(outcome) => outcome,
            Err(refused) => return dead(&job, &refused.to_string()),
        };
        let (outcome, after, status, snippet) = match outcome {
            PushOutcome::Delivered { id } => {
                ("delivered", AfterAttempt::Delivered, Some(200), id.unwrap_or_default())
            }
            PushOutcome::Unregistered { reason } => {
                // The token is dead: the device goes (with its subscriptions), and so does this push.
                let platform = DevicePlatform::parse(&push.platform).unwrap_or(DevicePlatform::Apns);
                if let Err(err) = self.store.remove_device_by_token(app_id, platform, &push.token).await {
                    tracing::warn!(error = %err, "a device whose token is dead was not removed");
                    return None;
                }
                ("gone", AfterAttempt::Dead, None, format!("device removed: {reason}"))
            }
            PushOutcome::Retry { after, reason } => {
                let (outcome, next) = self.after_failure(&job, after);
                (outcome, next, None, reason)
            }
            PushOutcome::CredentialsRejected { reason } => {
                match self.store.disable_push_credentials(app_id, service, &reason).await {
                    Ok(Some(_)) => {
                        let notice = serde_json::json!({
                            "type": "push.credentials_refused", "app_id": app_id,
                            "service": service.as_str(), "reason": reason, "at": started / 1000,
                        });
                        let key = format!("push.refused:{app_id}:{}:{}", service.as_str(), started / 60_000);
                        self.notify(app_id, notice, key).await;
                    }
                    Ok(None) => {}
                    Err(err) => {
                        tracing::warn!(error = %err, "refused push credentials were not disabled");
                        return None;
                    }
                }
                ("refused", AfterAttempt::Dead, None, format!("credentials refused: {reason}"))
            }
            PushOutcome::Rejected { status, reason } => ("dead", AfterAttempt::Dead, Some(status), reason),
        };
        let finished = finished(&job, started, status, &snippet, outcome, after);
        Some(Attempted { finished, target: job.target_id, healthy: None })
    }
}
