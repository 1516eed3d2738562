//! Exchanges between tenants (docs/exchanges.md): one tenant offers a namespace of one of its
//! apps to another, with the rights each side gets on it; the other accepts into one of its
//! apps; either may suspend (only it resumes) or end it. Each change is in force on every node
//! before the answer (`app_changed` for both apps), which closes the connections an exchange
//! no longer carries. Listing and reading: `read_only`; changing: `admin` of the acting side.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tributary_audit::note::{NoteVerifier, signature_line_of};
use tributary_capability::Right;
use tributary_protocol::{ChannelName, ControlEvent};
use tributary_store::audit_log::tenant_log_id;
use tributary_store::exchange::{Exchange, ExchangeChange, NewExchange};
use tributary_store::{Role, Store};

use crate::ControlPlane;
use crate::auth::Caller;
use crate::body;
use crate::error::ApiError;

/// The rights an exchange can give a side.
const EXCHANGE_RIGHTS: [Right; 4] = [Right::Publish, Right::Subscribe, Right::Presence, Right::History];

/// An offer.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct OfferBody {
    app_id: String,
    namespace: String,
    partner_tenant_id: String,
    /// What the offering side's clients and keys may do on the namespace.
    offerer_rights: Vec<String>,
    /// What the partner's may do.
    partner_rights: Vec<String>,
}

/// An acceptance.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AcceptBody {
    app_id: String,
}

/// An exchange as the API shows it to either party.
#[derive(Serialize)]
pub(crate) struct ExchangeView {
    id: String,
    /// `offerer` or `partner`: which side the caller is.
    side: &'static str,
    namespace: String,
    offerer_tenant_id: String,
    /// The offering tenant's app. App ids are not secrets, and each side's is in every message
    /// it publishes through the exchange anyway.
    offerer_app_id: String,
    partner_tenant_id: String,
    /// The partner's app, once accepted.
    partner_app_id: Option<String>,
    offerer_rights: Vec<String>,
    partner_rights: Vec<String>,
    /// `offered`, `active`, `suspended` or `ended`.
    status: &'static str,
    /// The tenant that suspended or ended it.
    changed_by: Option<String>,
    created_at: i64,
    updated_at: i64,
    /// Each side's largest cosigned checkpoint of the exchange's log.
    offerer_cosigned_size: u64,
    partner_cosigned_size: u64,
}

impl ExchangeView {
    /// The view `tenant` (a party) gets.
    pub(crate) fn of(exchange: Exchange, tenant: &str) -> Self {
        let side = exchange.side_of(tenant).unwrap_or(tributary_store::exchange::Side::Partner);
        Self {
            id: exchange.id,
            side: side.as_str(),
            namespace: exchange.namespace,
            offerer_tenant_id: exchange.offerer_tenant_id,
            offerer_app_id: exchange.offerer_app_id,
            partner_tenant_id: exchange.partner_tenant_id,
            partner_app_id: exchange.partner_app_id,
            offerer_rights: exchange.offerer_rights,
            partner_rights: exchange.partner_rights,
            status: exchange.status.as_str(),
            changed_by: exchange.changed_by,
            created_at: exchange.created_at,
            updated_at: exchange.updated_at,
            offerer_cosigned_size: exchange.offerer_cosigned_size,
            partner_cosigned_size: exchange.partner_cosigned_size,
        }
    }
}

/// Checks a list of rights: known, exchangeable, each once; returns them in canonical order.
fn checked_rights(field: &str, rights: &[String]) -> Result<Vec<String>, ApiError> {
    let mut set = tributary_capability::Rights::empty();
    for name in rights {
        let right: Right = name.parse().ok().filter(|r| EXCHANGE_RIGHTS.contains(r)).ok_or_else(|| {
            ApiError::invalid(format!("{field}: {name:?} is not publish, subscribe, presence or history"))
        })?;
        set.insert(right);
    }
    Ok(set.iter().map(|r| r.as_str().to_owned()).collect())
}

/// Checks a namespace name: what a channel name's part before its first `:` can be.
fn checked_namespace(name: &str) -> Result<(), ApiError> {
    let valid = !name.is_empty()
        && !name.contains(':')
        && name != tributary_protocol::channel::SYSTEM_NAMESPACE
        && ChannelName::parse(&format!("{name}:x")).is_ok();
    if valid {
        Ok(())
    } else {
        Err(ApiError::invalid(
            "namespace must be a channel name's prefix (letters, digits, _-.@/!~=, no ':'), not the default or tributary",
        ))
    }
}

/// `POST /v1/tenants/{tenant}/exchanges` (admin): offers a namespace of one of the tenant's
/// apps to another tenant.
pub(crate) async fn offer(
    State(plane): State<Arc<ControlPlane>>,
    Path(tenant): Path<String>,
    caller: Caller,
    body: Result<Bytes, BytesRejection>,
) -> Result<(axum::http::StatusCode, Json<ExchangeView>), ApiError> {
    caller.tenant(&tenant, Role::Admin)?;
    let body: OfferBody = body::parse(body)?;
    checked_namespace(&body.namespace)?;
    let offer = NewExchange {
        app_id: body.app_id,
        namespace: body.namespace,
        partner_tenant_id: body.partner_tenant_id,
        offerer_rights: checked_rights("offerer_rights", &body.offerer_rights)?,
        partner_rights: checked_rights("partner_rights", &body.partner_rights)?,
    };
    let exchange = plane.store.offer_exchange(&caller.actor, &tenant, &offer).await?;
    Ok((axum::http::StatusCode::CREATED, Json(ExchangeView::of(exchange, &tenant))))
}

/// `GET /v1/tenants/{tenant}/exchanges` (read_only): those it offered and was offered.
pub(crate) async fn list(
    State(plane): State<Arc<ControlPlane>>,
    Path(tenant): Path<String>,
    caller: Caller,
) -> Result<Json<Vec<ExchangeView>>, ApiError> {
    caller.tenant(&tenant, Role::ReadOnly)?;
    let found = plane.store.exchanges(&tenant).await?;
    Ok(Json(found.into_iter().map(|e| ExchangeView::of(e, &tenant)).collect()))
}

/// `GET /v1/tenants/{tenant}/exchanges/{exchange}` (read_only).
pub(crate) async fn get(
    State(plane): State<Arc<ControlPlane>>,
    Path((tenant, exchange)): Path<(String, String)>,
    caller: Caller,
) -> Result<Json<ExchangeView>, ApiError> {
    caller.tenant(&tenant, Role::ReadOnly)?;
    Ok(Json(ExchangeView::of(plane.store.exchange(&tenant, &exchange).await?, &tenant)))
}

/// Makes a change and puts it in force on every node before answering.
async fn change(
    plane: &ControlPlane,
    caller: &Caller,
    tenant: &str,
    exchange_id: &str,
    change: ExchangeChange,
) -> Result<Json<ExchangeView>, ApiError> {
    caller.tenant(tenant, Role::Admin)?;
    if matches!(change, ExchangeChange::Accept { .. }) {
        // The offering app's feed is on before the exchange's log starts reading it, so no
        // message through the exchange is missed.
        let exchange = plane.store.exchange(tenant, exchange_id).await?;
        super::rules::feed_on(plane, &exchange.offerer_app_id).await?;
    }
    let exchange = plane.store.change_exchange(&caller.actor, tenant, exchange_id, &change).await?;
    for app in exchange.apps() {
        plane.announce(ControlEvent::AppChanged { app }).await;
    }
    Ok(Json(ExchangeView::of(exchange, tenant)))
}

/// `POST …/exchanges/{exchange}/accept` (admin of the partner): `{"app_id"}` of its own app,
/// whose clients reach the namespace from now on.
pub(crate) async fn accept(
    State(plane): State<Arc<ControlPlane>>,
    Path((tenant, exchange)): Path<(String, String)>,
    caller: Caller,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<ExchangeView>, ApiError> {
    caller.tenant(&tenant, Role::Admin)?;
    let body: AcceptBody = body::parse(body)?;
    change(&plane, &caller, &tenant, &exchange, ExchangeChange::Accept { app_id: body.app_id }).await
}

/// `POST …/exchanges/{exchange}/suspend` (admin of either side).
pub(crate) async fn suspend(
    State(plane): State<Arc<ControlPlane>>,
    Path((tenant, exchange)): Path<(String, String)>,
    caller: Caller,
) -> Result<Json<ExchangeView>, ApiError> {
    change(&plane, &caller, &tenant, &exchange, ExchangeChange::Suspend).await
}

/// `POST …/exchanges/{exchange}/resume` (admin of the side that suspended it).
pub(crate) async fn resume(
    State(plane): State<Arc<ControlPlane>>,
    Path((tenant, exchange)): Path<(String, String)>,
    caller: Caller,
) -> Result<Json<ExchangeView>, ApiError> {
    change(&plane, &caller, &tenant, &exchange, ExchangeChange::Resume).await
}

/// `POST …/exchanges/{exchange}/end` (admin of either side; the partner ending an offer
/// declines it).
pub(crate) async fn end(
    State(plane): State<Arc<ControlPlane>>,
    Path((tenant, exchange)): Path<(String, String)>,
    caller: Caller,
) -> Result<Json<ExchangeView>, ApiError> {
    change(&plane, &caller, &tenant, &exchange, ExchangeChange::End).await
}

/// Whether `note` carries a cosignature of each party, with a key it registered (the current
/// one or one it retired since), and the two are different keys (a party with no key registered
/// cannot cosign, so the note is not cosigned by both).
pub(crate) async fn cosigned_by_both(
    store: &Store,
    exchange: &Exchange,
    note: &str,
) -> Result<bool, ApiError> {
    let mut signed_with = Vec::new();
    for tenant in [&exchange.offerer_tenant_id, &exchange.partner_tenant_id] {
        let (keys, _) = store.audit_cosigners(&tenant_log_id(tenant)).await?;
        let found = keys.iter().find(|k| {
            NoteVerifier::parse(&k.verifier).is_ok_and(|key| signature_line_of(note, &key).is_ok())
        });
        let Some(key) = found else { return Ok(false) };
        signed_with.push(key.verifier.rsplit('+').next().unwrap_or_default().to_owned());
    }
    Ok(signed_with[0] != signed_with[1])
}
