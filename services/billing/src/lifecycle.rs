//! What a Stripe event does to a tenant's billing status (docs/billing.md):
//!
//! ```text
//!            checkout completed / invoice paid / subscription active
//!   ┌──────────────────────────────────────────────────────────────┐
//!   ▼                                                              │
//! active ── payment failed / action required ──► past_due ── grace over, or Stripe gives up ──► unpaid
//!   ▲                                              │            (subscription unpaid, canceled)  │
//!   └──────────────── invoice paid ────────────────┴─────────────────────────────────────────────┘
//! ```
//!
//! `active` and `past_due` are served; `unpaid` is cut off (every connection closed, requests
//! refused with 402 `payment_required`) until an invoice of its subscription is paid; a failed
//! payment never takes an `unpaid` tenant back to `past_due`. A status an operator set by hand
//! (`suspended`, `deleted`) is never changed by billing.

use crate::event::StripeEvent;

/// A tenant's status as billing sets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BillingStatus {
    /// Paid up.
    Active,
    /// A payment failed; still served while Stripe retries, for the grace period.
    PastDue,
    /// Not paid: cut off until an invoice is paid.
    Unpaid,
}

impl BillingStatus {
    /// The tenant status of the same name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::PastDue => "past_due",
            Self::Unpaid => "unpaid",
        }
    }
}

/// What an event says about a tenant's billing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The Stripe customer it is about.
    pub customer: String,
    /// The tenant, when the event names it (a checkout session's `client_reference_id`): how a
    /// customer is linked to its tenant.
    pub tenant: Option<String>,
    /// The subscription, when the event names one.
    pub subscription: Option<String>,
    /// Whether the event makes `subscription` the customer's (a checkout, a subscription
    /// created); other events name theirs only to be matched against it.
    pub links_subscription: bool,
    /// The prices the subscription is made of (a subscription's events): the operator maps
    /// them to plans, whose limits apply at once.
    pub prices: Vec<String>,
    /// The status it sets (`None`: none; the event is only recorded).
    pub status: Option<BillingStatus>,
    /// The audit action: `billing.checkout_completed`, `billing.invoice_paid`, …
    pub action: &'static str,
}

/// Reads what `event` decides; `None` for an event that is not about a customer's billing (it
/// is recorded and acknowledged, nothing more).
pub fn decide(event: &StripeEvent) -> Option<Decision> {
    let customer = event.field("customer")?.to_owned();
    let (status, action, subscription) = match event.kind.as_str() {
        "checkout.session.completed" => {
            // Paid by a method that settles later: the invoice's payment says.
            let paid = event.field("payment_status") != Some("unpaid");
            (paid.then_some(BillingStatus::Active), "billing.checkout_completed", event.field("subscription"))
        }
        "customer.subscription.created" | "customer.subscription.updated" => {
            let status = match event.field("status")? {
                "active" | "trialing" => Some(BillingStatus::Active),
                "past_due" => Some(BillingStatus::PastDue),
                "unpaid" | "canceled" | "incomplete_expired" => Some(BillingStatus::Unpaid),
                _ => None,
            };
            (status, "billing.subscription_changed", event.field("id"))
        }
        "customer.subscription.deleted" => {
            (Some(BillingStatus::Unpaid), "billing.subscription_deleted", event.field("id"))
        }
        // Only a subscription's invoice lets a tenant back (not a one-off invoice).
        "invoice.paid" => {
            let subscription = event.field("subscription");
            (subscription.map(|_| BillingStatus::Active), "billing.invoice_paid", subscription)
        }
        "invoice.payment_failed" => {
            (Some(BillingStatus::PastDue), "billing.payment_failed", event.field("subscription"))
        }
        "invoice.payment_action_required" => {
            (Some(BillingStatus::PastDue), "billing.payment_action_required", event.field("subscription"))
        }
        _ => return None,
    };
    let tenant = match event.kind.as_str() {
        "checkout.session.completed" => event.field("client_reference_id").map(str::to_owned),
        _ => None,
    };
    let links_subscription =
        matches!(event.kind.as_str(), "checkout.session.completed" | "customer.subscription.created");
    let prices = match event.kind.as_str() {
        "customer.subscription.created" | "customer.subscription.updated" => event.object["items"]["data"]
            .as_array()
            .map(|items| {
                items.iter().filter_map(|item| item["price"]["id"].as_str().map(str::to_owned)).collect()
            })
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    Some(Decision {
        customer,
        tenant,
        subscription: subscription.map(str::to_owned),
        links_subscription,
        prices,
        status,
        action,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn event(kind: &str, object: serde_json::Value) -> StripeEvent {
        StripeEvent { id: "evt_1".into(), kind: kind.into(), created: 1, object }
    }

    #[test]
    fn each_event_sets_the_status_the_lifecycle_says() {
        let cases = [
            (
                "checkout.session.completed",
                json!({"customer": "cus_1", "subscription": "sub_1", "client_reference_id": "ten_1"}),
                Some(BillingStatus::Active),
            ),
            (
                "invoice.payment_failed",
                json!({"customer": "cus_1", "subscription": "sub_1"}),
                Some(BillingStatus::PastDue),
            ),
            ("invoice.payment_action_required", json!({"customer": "cus_1"}), Some(BillingStatus::PastDue)),
            (
                "invoice.paid",
                json!({"customer": "cus_1", "subscription": "sub_1"}),
                Some(BillingStatus::Active),
            ),
            ("invoice.paid", json!({"customer": "cus_1"}), None),
            ("checkout.session.completed", json!({"customer": "cus_1", "payment_status": "unpaid"}), None),
            (
                "customer.subscription.updated",
                json!({"id": "sub_1", "customer": "cus_1", "status": "unpaid"}),
                Some(BillingStatus::Unpaid),
            ),
            (
                "customer.subscription.updated",
                json!({"id": "sub_1", "customer": "cus_1", "status": "canceled"}),
                Some(BillingStatus::Unpaid),
            ),
            (
                "customer.subscription.updated",
                json!({"id": "sub_1", "customer": "cus_1", "status": "past_due"}),
                Some(BillingStatus::PastDue),
            ),
            (
                "customer.subscription.created",
                json!({"id": "sub_1", "customer": "cus_1", "status": "active"}),
                Some(BillingStatus::Active),
            ),
            (
                "customer.subscription.updated",
                json!({"id": "sub_1", "customer": "cus_1", "status": "incomplete"}),
                None,
            ),
            (
                "customer.subscription.deleted",
                json!({"id": "sub_1", "customer": "cus_1", "status": "canceled"}),
                Some(BillingStatus::Unpaid),
            ),
        ];
        for (kind, object, status) in cases {
            let decision = decide(&event(kind, object)).unwrap_or_else(|| panic!("{kind} decides"));
            assert_eq!((decision.customer.as_str(), decision.status), ("cus_1", status), "{kind}");
        }
        let checkout = decide(&event(
            "checkout.session.completed",
            json!({"customer": "cus_1", "client_reference_id": "ten_1"}),
        ));
        assert_eq!(checkout.and_then(|d| d.tenant).as_deref(), Some("ten_1"));
    }

    #[test]
    fn a_subscriptions_prices_are_read_from_its_items() {
        let object = json!({"id": "sub_1", "customer": "cus_1", "status": "active",
                            "items": {"data": [{"price": {"id": "price_pro"}}, {"price": {"id": "price_msgs"}}]}});
        let decision =
            decide(&event("customer.subscription.updated", object)).unwrap_or_else(|| panic!("decides"));
        assert_eq!(decision.prices, ["price_pro", "price_msgs"]);
    }

    #[test]
    fn events_about_no_customer_or_of_other_types_decide_nothing() {
        assert_eq!(decide(&event("invoice.paid", json!({}))), None);
        assert_eq!(decide(&event("charge.refunded", json!({"customer": "cus_1"}))), None);
    }
}
