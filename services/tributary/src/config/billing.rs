//! The `[billing]` settings: Stripe (docs/billing.md). Without a webhook secret billing is off
//! and everything else works as it does without Stripe (the embedded default).

use secrecy::SecretString;
use serde::{Deserialize, Serialize};

/// How billing works.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BillingConfig {
    /// The signing secret of the Stripe webhook endpoint (`whsec_…`) that sends events to
    /// `POST /v1/billing/stripe/webhook`; unset, that route answers 404 and billing is off. Set
    /// it from the environment (`TRIBUTARY_BILLING__STRIPE_WEBHOOK_SECRET`), never a file in a
    /// repository.
    #[serde(skip_serializing)]
    pub stripe_webhook_secret: Option<SecretString>,
    /// How far a webhook's signed timestamp may be from now, in seconds (Stripe's libraries use
    /// 300): an older request is a replay.
    pub webhook_tolerance_secs: u64,
    /// How long a tenant stays `past_due` (served) after its first failed payment before it is
    /// cut off (`unpaid`), in seconds, unless Stripe gives up first.
    pub grace_period_secs: u64,
    /// The Stripe price of each plan (`pro = "price_…"`): a subscription made of that price puts
    /// its tenant on that plan, whose limits apply at once.
    pub plan_prices: std::collections::BTreeMap<String, String>,
}

impl Default for BillingConfig {
    fn default() -> Self {
        Self {
            stripe_webhook_secret: None,
            webhook_tolerance_secs: 300,
            grace_period_secs: 7 * 24 * 3600,
            plan_prices: std::collections::BTreeMap::new(),
        }
    }
}

impl BillingConfig {
    /// Returns every problem with these settings.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if !(1..=3600).contains(&self.webhook_tolerance_secs) {
            problems.push("billing.webhook_tolerance_secs must be 1 to 3600".into());
        }
        if self.grace_period_secs > 90 * 24 * 3600 {
            problems.push("billing.grace_period_secs must be at most 90 days".into());
        }
        let mut seen = std::collections::BTreeSet::new();
        for (plan, price) in &self.plan_prices {
            if price.is_empty() || !seen.insert(price) {
                problems.push(format!("billing.plan_prices.{plan}: a price id, each for one plan only"));
            }
        }
        problems
    }
}
