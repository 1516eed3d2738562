//! Exchanges between tenants, on the data plane (docs/exchanges.md).
//!
//! An accepted exchange routes one namespace: the partner's app's channels of it are the
//! offering app's (the same names, in the offering app's streams), and each side may use them
//! only within the rights the exchange gives it, on top of what its own tokens and keys allow.
//! Both apps' policies carry the exchange ([`ExchangeRoute`]), so a request is routed from
//! memory: [`RelayState::route`] is one lookup for an app without exchanges.
//!
//! In a routed namespace every message names the app that published it: the engine stores its
//! client id as `<app id>/<client id>` (`<app id>/key:<key id>` for an API key), whichever side
//! published, so neither side can pass its messages off as the other's, subscribers see who
//! sent what, the exchange's log records it, and deliveries are counted to the publishing app
//! ([`Payers`]).
//!
//! A suspended exchange refuses every use of the namespace (`exchange_suspended`); when a
//! reload finds an exchange suspended, ended or its rights narrowed, the connections of the app
//! subscribed through it are closed with `3507 exchange suspended or ended`
//! ([`close_lost_routes`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tributary_capability::{Right, Rights};
use tributary_protocol::{ChannelName, CloseCode, ErrorCode};

use crate::ops::OpError;
use crate::policy::AppPolicy;
use crate::state::RelayState;

/// One exchange that routes a namespace of an app, as its policy holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExchangeRoute {
    /// The exchange.
    pub exchange_id: String,
    /// The namespace.
    pub namespace: String,
    /// Whether this app is the partner's (its channels of the namespace are the offerer's).
    pub partner: bool,
    /// The app whose streams hold the channels.
    pub offerer_app: Arc<str>,
    /// The partner's app.
    pub partner_app: Arc<str>,
    /// What this side may do on the namespace.
    pub rights: Rights,
    /// Whether it is suspended (everything refused).
    pub suspended: bool,
}

/// Where a channel of an app is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routed {
    /// The app whose streams hold it.
    pub app: Arc<str>,
    /// Whether an exchange routes its namespace.
    pub exchanged: bool,
    /// What the exchange gives the app's side there (every right without an exchange).
    pub rights: Rights,
}

impl RelayState {
    /// Returns where `channel` of `app` is (another tenant's app, through an exchange), after
    /// checking that the exchange, if any, gives `app`'s side `right` there. The app's policy
    /// must be loaded (every request loads it before it gets here).
    pub async fn route(
        &self,
        app: &Arc<str>,
        channel: &ChannelName,
        right: Right,
    ) -> Result<Routed, OpError> {
        match self.policies.peek(app) {
            Some(policy) => self.route_in(&policy, app, channel, right).await,
            None => Ok(Routed { app: app.clone(), exchanged: false, rights: Rights::all() }),
        }
    }

    /// [`RelayState::route`] with the app's policy in hand (a publish holds it already: no
    /// second lookup on the message path).
    pub async fn route_in(
        &self,
        policy: &AppPolicy,
        app: &Arc<str>,
        channel: &ChannelName,
        right: Right,
    ) -> Result<Routed, OpError> {
        let own = |exchanged, rights| Ok(Routed { app: app.clone(), exchanged, rights });
        let Some(route) = policy.exchange(channel.namespace()) else { return own(false, Rights::all()) };
        if route.suspended {
            return Err(OpError::new(
                ErrorCode::ExchangeSuspended,
                format!("the exchange of namespace {:?} is suspended", route.namespace),
            ));
        }
        if !route.rights.contains(right) {
            return Err(OpError::new(
                ErrorCode::Forbidden,
                format!("the exchange of namespace {:?} gives this side no {right} right", route.namespace),
            ));
        }
        if !route.partner {
            return own(true, route.rights);
        }
        // The offering app's namespace options apply: load its policy here if nothing did.
        let offerer = self
            .policies
            .get(&*self.directory, &route.offerer_app)
            .await
            .map_err(crate::session::unavailable)?
            .ok_or(ErrorCode::NotFound)?;
        if !offerer.served() {
            return Err(OpError::new(
                ErrorCode::TenantSuspended,
                "the tenant that offered this exchange is suspended",
            ));
        }
        Ok(Routed { app: route.offerer_app.clone(), exchanged: true, rights: route.rights })
    }

    /// Returns whether `channel` of `app` is still routed to `to` with `right` (an exchange
    /// active and giving it). A subscription checks this again once it is in the hub: a change
    /// that landed while it was routed is then either seen here or closes it there.
    pub fn still_routed(&self, app: &Arc<str>, channel: &ChannelName, to: &str, right: Right) -> bool {
        let Some(policy) = self.policies.peek(app) else { return false };
        match policy.exchange(channel.namespace()) {
            Some(route) => {
                !route.suspended
                    && route.rights.contains(right)
                    && (if route.partner { &*route.offerer_app } else { &**app }) == to
            }
            None => &**app == to,
        }
    }

    /// Returns the app whose streams hold `channel` of `app`, without checking rights (for
    /// what a checked request already reached: MQTT's retained messages).
    pub fn routed_app(&self, app: &Arc<str>, channel: &ChannelName) -> Arc<str> {
        self.policies
            .peek(app)
            .and_then(|policy| {
                policy.exchange(channel.namespace()).filter(|r| r.partner).map(|r| r.offerer_app.clone())
            })
            .unwrap_or_else(|| app.clone())
    }
}

/// Returns whether an exchange routes `channel`'s namespace for `app`.
pub fn is_exchanged(state: &RelayState, app: &str, channel: &ChannelName) -> bool {
    state.policies.peek(app).is_some_and(|policy| policy.exchange(channel.namespace()).is_some())
}

/// The client id a message published by `app` through an exchange is stored with.
pub fn publisher_id(app: &str, client_id: Option<&str>, api_key: Option<&str>) -> Arc<str> {
    match (client_id, api_key) {
        (Some(client), _) => format!("{app}/{client}").into(),
        (None, Some(key)) => format!("{app}/key:{key}").into(),
        (None, None) => format!("{app}/server").into(),
    }
}

/// Closes the subscriptions of `app`'s connections that a reload from `before` to `after`
/// takes away; returns how many were closed:
/// - through a route lost, suspended or no longer giving subscribe: `3507`;
/// - to the partner's own channels of a namespace an exchange now routes (they are hidden while
///   it lasts): `3007`, reconnect (and subscribe through the exchange);
/// - to the offering app's channels of a namespace newly exchanged without subscribe for it: `3507`.
pub fn close_changed_routes(
    state: &RelayState,
    app: &Arc<str>,
    before: Option<&AppPolicy>,
    after: Option<&AppPolicy>,
) -> usize {
    // A first load: this node has no connection of the app yet.
    let Some(before) = before else { return 0 };
    let mut closed = 0;
    for new in after.into_iter().flat_map(AppPolicy::exchanges) {
        let known = before.exchange(&new.namespace).is_some_and(|old| old.exchange_id == new.exchange_id);
        if known {
            continue;
        }
        if new.partner {
            closed += state.hub.close_subscribers(app, &new.namespace, app, CloseCode::Disconnected);
        } else if new.suspended || !new.rights.contains(Right::Subscribe) {
            closed += state.hub.close_subscribers(app, &new.namespace, app, CloseCode::ExchangeClosed);
        }
    }
    for old in before.exchanges() {
        let kept = after.and_then(|p| p.exchange(&old.namespace)).is_some_and(|new| {
            new.exchange_id == old.exchange_id && !new.suspended && new.rights.contains(Right::Subscribe)
        });
        if !kept {
            closed +=
                state.hub.close_subscribers(&old.offerer_app, &old.namespace, app, CloseCode::ExchangeClosed);
        }
    }
    closed
}

/// An exchange as [`Payers`] knows it: the offering app, the namespace, the partner's app.
type PaidRoute = (Arc<str>, String, Arc<str>);

/// Which app pays for the deliveries of a message: the one that published it, for a message of
/// an exchange's namespace (its client id starts with the app's id, see the module's doc), else
/// the app whose channel it is. Learnt from the policies loaded on this node.
#[derive(Default)]
pub struct Payers {
    /// Whether any exchange is known: the message path looks no further without one.
    any: AtomicBool,
    /// Per exchange: the offering app, the namespace and the partner's app.
    routes: Mutex<HashMap<String, PaidRoute>>,
}

impl Payers {
    /// Learns the exchanges of `app`'s policy (`None`: the app is gone), forgetting those the
    /// app took part in that it no longer does.
    pub fn learn(&self, app: &str, policy: Option<&AppPolicy>) {
        let mut routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        routes.retain(|id, (offerer, _, partner)| {
            (&**offerer != app && &**partner != app)
                || policy.is_some_and(|p| p.exchanges().any(|r| &r.exchange_id == id))
        });
        for route in policy.into_iter().flat_map(AppPolicy::exchanges) {
            routes.insert(
                route.exchange_id.clone(),
                (route.offerer_app.clone(), route.namespace.clone(), route.partner_app.clone()),
            );
        }
        self.any.store(!routes.is_empty(), Ordering::Relaxed);
    }

    /// Returns the app that pays for delivering a message of `client_id` on `channel` of
    /// `app`, when it is not `app` itself (the partner of an exchange published it).
    pub fn payer(&self, app: &str, channel: &ChannelName, client_id: Option<&str>) -> Option<Arc<str>> {
        if !self.any.load(Ordering::Relaxed) {
            return None;
        }
        let (publisher, _) = client_id?.split_once('/')?;
        if publisher == app {
            return None;
        }
        let routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        routes
            .values()
            .find(|(offerer, namespace, partner)| {
                &**offerer == app && namespace == channel.namespace() && &**partner == publisher
            })
            .map(|(_, _, partner)| partner.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publishers_are_named_by_their_app() {
        assert_eq!(&*publisher_id("app_a", Some("alice"), None), "app_a/alice");
        assert_eq!(&*publisher_id("app_a", None, Some("key_1")), "app_a/key:key_1");
        assert_eq!(&*publisher_id("app_a", None, None), "app_a/server");
    }

    #[test]
    fn deliveries_are_paid_by_the_publishing_side_of_an_exchange_only() {
        let payers = Payers::default();
        let (x, y): (Arc<str>, Arc<str>) = ("app_x".into(), "app_y".into());
        let channel = ChannelName::parse("orders:1").expect("a channel");
        let other = ChannelName::parse("chat:1").expect("a channel");
        assert_eq!(payers.payer(&x, &channel, Some("app_y/bob")), None, "no exchange known");
        payers.routes.lock().expect("lock").insert("exc_1".into(), (x.clone(), "orders".into(), y.clone()));
        payers.any.store(true, Ordering::Relaxed);
        assert_eq!(payers.payer(&x, &channel, Some("app_y/bob")), Some(y));
        assert_eq!(payers.payer(&x, &channel, Some("app_x/alice")), None);
        assert_eq!(payers.payer(&x, &other, Some("app_y/bob")), None, "another namespace");
        assert_eq!(payers.payer(&x, &channel, Some("app_z/eve")), None, "not the partner");
        assert_eq!(payers.payer(&x, &channel, None), None);
    }
}
