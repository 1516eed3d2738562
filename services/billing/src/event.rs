//! A Stripe event as its webhook delivers it: `{"id", "type", "created", "data": {"object"}}`.
//! Only what the lifecycle reads is typed; the object stays JSON (each type has its own).

use serde_json::Value;

/// Why a verified body is not an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a Stripe event: {0}")]
pub struct EventError(pub &'static str);

/// A Stripe event.
#[derive(Debug, Clone, PartialEq)]
pub struct StripeEvent {
    /// `evt_…`: each event is applied once, by this id.
    pub id: String,
    /// Its type, such as `invoice.paid`.
    pub kind: String,
    /// When Stripe made it (unix seconds): events arrive out of order, and an older one never
    /// undoes what a newer one did.
    pub created: i64,
    /// The object it is about (a subscription, an invoice, a checkout session).
    pub object: Value,
}

impl StripeEvent {
    /// Reads an event from its JSON.
    pub fn parse(body: &[u8]) -> Result<Self, EventError> {
        let value: Value = serde_json::from_slice(body).map_err(|_| EventError("the body is not JSON"))?;
        let text = |field: &'static str| {
            value[field].as_str().filter(|s| !s.is_empty()).map(str::to_owned).ok_or(EventError(field))
        };
        Ok(Self {
            id: text("id")?,
            kind: text("type")?,
            created: value["created"].as_i64().ok_or(EventError("created"))?,
            object: value["data"]["object"].clone(),
        })
    }

    /// A text field of the object, if present.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.object[name].as_str().filter(|s| !s.is_empty())
    }
}
