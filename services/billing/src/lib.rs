//! Billing with Stripe (docs/billing.md): what Stripe tells the service through its signed
//! webhooks, and what each event does to a tenant's billing status. No I/O here: the control
//! plane verifies a request with [`signature::verify`], reads it with [`event::StripeEvent`] and
//! applies what [`lifecycle::decide`] says in one transaction of the store.
#![forbid(unsafe_code)]

pub mod event;
pub mod lifecycle;
pub mod signature;
