//! Rights, grants and the capabilities a token carries.
//!
//! A [`Grant`] gives a set of [`Rights`] on every channel matching a [`ChannelPattern`]. A
//! token's [`Capabilities`] are a list of grants; an operation is allowed when any grant allows
//! it. There is no "deny": rights only add up, so the order of grants never matters.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use tributary_protocol::{ChannelName, ChannelPattern};

use crate::error::CapabilityError;

/// One thing a client may do on a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Right {
    /// Receive the channel's publications.
    Subscribe,
    /// Publish to the channel.
    Publish,
    /// Appear in and read the channel's presence.
    Presence,
    /// Read the channel's history, including recovery after a reconnect.
    History,
    /// Register the client's own devices for push and subscribe them (or the client) to the
    /// channel's pushes.
    PushSubscribe,
    /// Publish with a push section: every device subscribed to the channel is pushed to (a
    /// push costs the tenant, so publishing alone does not allow it).
    PushPublish,
}

impl Right {
    /// Every right, in the order rights are serialized.
    pub const ALL: [Right; 6] = [
        Right::Subscribe,
        Right::Publish,
        Right::Presence,
        Right::History,
        Right::PushSubscribe,
        Right::PushPublish,
    ];

    /// Returns the snake_case name used in tokens and grant specs.
    pub const fn as_str(self) -> &'static str {
        match self {
            Right::Subscribe => "subscribe",
            Right::Publish => "publish",
            Right::Presence => "presence",
            Right::History => "history",
            Right::PushSubscribe => "push_subscribe",
            Right::PushPublish => "push_publish",
        }
    }

    const fn bit(self) -> u8 {
        1 << self as u8
    }
}

impl fmt::Display for Right {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Right {
    type Err = CapabilityError;

    /// Parses the snake_case name of a right.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Right::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| CapabilityError::UnknownRight(s.to_owned()))
    }
}

/// A set of [`Right`]s; serialized as a list of their names, in [`Right::ALL`] order.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "Vec<Right>", from = "Vec<Right>")]
pub struct Rights(u8);

impl Rights {
    /// Returns the empty set.
    pub const fn empty() -> Self {
        Self(0)
    }

    /// Returns the set of every right.
    pub const fn all() -> Self {
        let mut bits = 0;
        let mut i = 0;
        while i < Right::ALL.len() {
            bits |= Right::ALL[i].bit();
            i += 1;
        }
        Self(bits)
    }

    /// Adds `right` to the set.
    pub fn insert(&mut self, right: Right) {
        self.0 |= right.bit();
    }

    /// Returns whether the set holds `right`.
    pub const fn contains(self, right: Right) -> bool {
        self.0 & right.bit() != 0
    }

    /// Returns whether the set holds no right.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Returns the rights in the set, in [`Right::ALL`] order.
    pub fn iter(self) -> impl Iterator<Item = Right> {
        Right::ALL.into_iter().filter(move |r| self.contains(*r))
    }
}

impl fmt::Debug for Rights {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

impl FromIterator<Right> for Rights {
    fn from_iter<I: IntoIterator<Item = Right>>(iter: I) -> Self {
        let mut rights = Rights::empty();
        iter.into_iter().for_each(|r| rights.insert(r));
        rights
    }
}

impl From<Vec<Right>> for Rights {
    fn from(rights: Vec<Right>) -> Self {
        rights.into_iter().collect()
    }
}

impl From<Rights> for Vec<Right> {
    fn from(rights: Rights) -> Self {
        rights.iter().collect()
    }
}

/// A set of rights on every channel matching a pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The channels this grant covers.
    pub pattern: ChannelPattern,
    /// What the grant allows on those channels.
    pub rights: Rights,
}

impl Grant {
    /// Returns a grant of `rights` on the channels matching `pattern`.
    pub fn new(pattern: ChannelPattern, rights: Rights) -> Self {
        Self { pattern, rights }
    }
}

/// The grants a verified token carries; empty by default, which allows nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Capabilities {
    grants: Vec<Grant>,
}

impl Capabilities {
    /// Returns capabilities made of `grants`.
    pub fn new(grants: Vec<Grant>) -> Self {
        Self { grants }
    }

    /// Returns whether any grant whose pattern matches `channel` holds `right`.
    ///
    /// Linear in the number of grants, which a token bounds to [`crate::MAX_GRANTS`].
    pub fn allows(&self, channel: &ChannelName, right: Right) -> bool {
        self.grants.iter().any(|g| g.rights.contains(right) && g.pattern.matches(channel))
    }

    /// Returns the grants, in token order.
    pub fn grants(&self) -> &[Grant] {
        &self.grants
    }

    /// Parses one grant in the command-line form `<pattern>=<right>,<right>...`, for example
    /// `chat:*=subscribe,publish`; the right list `all` (or `*`) grants every right.
    ///
    /// The split is at the *last* `=`, because `=` is allowed in channel names and never
    /// appears in a right.
    pub fn parse_spec(spec: &str) -> Result<Grant, CapabilityError> {
        let (pattern, list) = spec.rsplit_once('=').ok_or_else(|| {
            CapabilityError::InvalidSpec("expected <pattern>=<right>,<right>...".to_owned())
        })?;
        let pattern = ChannelPattern::parse(pattern.trim())?;
        let rights = match list.trim() {
            "" => return Err(CapabilityError::InvalidSpec("the right list is empty".to_owned())),
            "all" | "*" => Rights::all(),
            list => list.split(',').map(|r| r.trim().parse::<Right>()).collect::<Result<Rights, _>>()?,
        };
        Ok(Grant::new(pattern, rights))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tributary_protocol::ChannelError;

    fn ch(s: &str) -> ChannelName {
        ChannelName::parse(s).unwrap()
    }

    fn grant(pattern: &str, rights: &[Right]) -> Grant {
        Grant::new(ChannelPattern::parse(pattern).unwrap(), rights.iter().copied().collect())
    }

    #[test]
    fn rights_hold_exactly_what_was_inserted() {
        let mut rights = Rights::empty();
        assert!(rights.is_empty());
        rights.insert(Right::Publish);
        assert!(rights.contains(Right::Publish));
        assert!(!rights.contains(Right::Subscribe));
        assert!(Right::ALL.into_iter().all(|r| Rights::all().contains(r)));
        assert_eq!(Rights::all().iter().count(), 6);
    }

    #[test]
    fn rights_serialize_as_a_list_of_names_in_fixed_order() {
        let rights: Rights = [Right::History, Right::Subscribe].into_iter().collect();
        assert_eq!(serde_json::to_string(&rights).unwrap(), r#"["subscribe","history"]"#);
        let back: Rights = serde_json::from_str(r#"["history","subscribe","history"]"#).unwrap();
        assert_eq!(back, rights);
        assert!(serde_json::from_str::<Rights>(r#"["admin"]"#).is_err());
        assert!(serde_json::from_str::<Rights>(r#""subscribe""#).is_err());
    }

    #[test]
    fn a_channel_is_allowed_when_any_matching_grant_holds_the_right() {
        let caps = Capabilities::new(vec![
            grant("chat:*", &[Right::Subscribe]),
            grant("chat:lobby", &[Right::Publish]),
            grant("user:*:inbox", &[Right::History]),
        ]);
        assert!(caps.allows(&ch("chat:room"), Right::Subscribe));
        assert!(caps.allows(&ch("chat:lobby"), Right::Subscribe));
        assert!(caps.allows(&ch("chat:lobby"), Right::Publish));
        assert!(!caps.allows(&ch("chat:room"), Right::Publish));
        assert!(caps.allows(&ch("user:7:inbox"), Right::History));
        assert!(!caps.allows(&ch("user:7:inbox"), Right::Subscribe));
        assert!(!caps.allows(&ch("news"), Right::Subscribe));
    }

    #[test]
    fn empty_capabilities_allow_nothing() {
        let caps = Capabilities::default();
        assert!(Right::ALL.into_iter().all(|r| !caps.allows(&ch("any"), r)));
    }

    #[test]
    fn a_spec_with_a_right_list_parses_into_a_grant() {
        let g = Capabilities::parse_spec("chat:*=subscribe, publish").unwrap();
        assert_eq!(g, grant("chat:*", &[Right::Subscribe, Right::Publish]));
        let all =
            Capabilities::parse_spec("*=subscribe,publish,presence,history,push_subscribe,push_publish")
                .unwrap();
        assert_eq!(all.rights, Rights::all());
    }

    #[test]
    fn all_and_star_are_shorthands_for_every_right() {
        assert_eq!(Capabilities::parse_spec("chat:*=all").unwrap().rights, Rights::all());
        assert_eq!(Capabilities::parse_spec("*=*").unwrap().rights, Rights::all());
    }

    #[test]
    fn a_spec_splits_at_the_last_equals_sign() {
        let g = Capabilities::parse_spec("key=value=publish").unwrap();
        assert_eq!(g.pattern.as_str(), "key=value");
        assert_eq!(g.rights, [Right::Publish].into_iter().collect());
    }

    #[test]
    fn bad_specs_are_refused_with_the_reason() {
        assert!(matches!(Capabilities::parse_spec("chat:*"), Err(CapabilityError::InvalidSpec(_))));
        assert!(matches!(Capabilities::parse_spec("chat:*="), Err(CapabilityError::InvalidSpec(_))));
        assert_eq!(
            Capabilities::parse_spec("chat:*=subscribe,admin"),
            Err(CapabilityError::UnknownRight("admin".into()))
        );
        assert_eq!(
            Capabilities::parse_spec("chat:*=publish,"),
            Err(CapabilityError::UnknownRight("".into()))
        );
        assert_eq!(
            Capabilities::parse_spec("=publish"),
            Err(CapabilityError::InvalidPattern(ChannelError::Empty))
        );
        assert_eq!(
            Capabilities::parse_spec("a b=publish"),
            Err(CapabilityError::InvalidPattern(ChannelError::BadChar(' ')))
        );
    }
}
