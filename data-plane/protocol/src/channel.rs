//! Channel names, namespaces and channel patterns.
//!
//! A channel name is 1 to [`MAX_CHANNEL_LEN`] bytes of ASCII letters, digits and `_ - : . @ / ! ~ =`.
//! The charset is closed on purpose: names appear in URLs, SSE cursors and Redis keys, and a
//! closed set means none of those needs escaping. The namespace is the part before the first
//! `:` (`chat:room-1` is in namespace `chat`); a name without `:` is in the default namespace.

use std::fmt;
use std::sync::Arc;

/// The namespace only the server publishes in: its channels carry what the platform tells a
/// tenant (an endpoint disabled after failing, and later notices of other services).
pub const SYSTEM_NAMESPACE: &str = "tributary";

/// The channel of each app where the server publishes notices to its tenant (see
/// [`SYSTEM_NAMESPACE`]); clients may subscribe to it (with a capability that names it), never
/// publish.
pub const SYSTEM_CHANNEL: &str = "tributary:system";

/// The longest channel name accepted, in bytes.
pub const MAX_CHANNEL_LEN: usize = 255;

/// Why a channel name or pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    /// The name was empty.
    #[error("channel name is empty")]
    Empty,
    /// The name was longer than [`MAX_CHANNEL_LEN`].
    #[error("channel name is longer than {MAX_CHANNEL_LEN} bytes")]
    TooLong,
    /// The name contained a character outside the allowed set.
    #[error("channel name contains {0:?}, allowed are letters, digits and _-:.@/!~=")]
    BadChar(char),
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b':' | b'.' | b'@' | b'/' | b'!' | b'~' | b'=')
}

/// A validated channel name; cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelName(Arc<str>);

impl ChannelName {
    /// Validates `name` and returns it as a channel name.
    pub fn parse(name: &str) -> Result<Self, ChannelError> {
        validate(name, false)?;
        Ok(Self(Arc::from(name)))
    }

    /// Returns the name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Returns the namespace: the part before the first `:`, or `""` for the default namespace.
    pub fn namespace(&self) -> &str {
        self.0.split_once(':').map(|(ns, _)| ns).unwrap_or("")
    }

    /// Returns the shared text of the name.
    pub fn shared(&self) -> &Arc<str> {
        &self.0
    }
}

impl fmt::Debug for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn validate(name: &str, allow_star: bool) -> Result<(), ChannelError> {
    if name.is_empty() {
        return Err(ChannelError::Empty);
    }
    if name.len() > MAX_CHANNEL_LEN {
        return Err(ChannelError::TooLong);
    }
    match name.chars().find(|&c| !(c.is_ascii() && (is_name_byte(c as u8) || (allow_star && c == '*')))) {
        Some(c) => Err(ChannelError::BadChar(c)),
        None => Ok(()),
    }
}

/// A channel pattern in a capability: a channel name in which `*` matches any run of
/// characters, including none (`chat:*`, `*`, `user:*:inbox`).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ChannelPattern(Arc<str>);

impl ChannelPattern {
    /// Validates `pattern` and returns it.
    pub fn parse(pattern: &str) -> Result<Self, ChannelError> {
        validate(pattern, true)?;
        Ok(Self(Arc::from(pattern)))
    }

    /// Returns the pattern as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Returns whether `channel` matches this pattern.
    pub fn matches(&self, channel: &ChannelName) -> bool {
        glob_match(self.0.as_bytes(), channel.as_str().as_bytes())
    }

    /// Returns whether every channel `other` matches, this pattern matches too (so a grant of
    /// `other` is no wider than one of `self`). Sound, and exact for the patterns people write:
    /// `other`'s text, its `*` included, must match this pattern, and only a `*` of this
    /// pattern can match a `*` of `other` (channel names have none).
    pub fn covers(&self, other: &ChannelPattern) -> bool {
        glob_match(self.0.as_bytes(), other.0.as_bytes())
    }
}

impl fmt::Debug for ChannelPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

/// Matches `*`-only globs in linear time with the classic single-backtrack algorithm, so a
/// hostile pattern such as `*a*a*a*a*b` cannot make matching exponential.
fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&b| b == b'*')
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_pattern_covers_the_patterns_it_is_wider_than() {
        let p = |s: &str| ChannelPattern::parse(s).unwrap();
        for (wide, narrow) in [
            ("*", "chat:*"),
            ("chat:*", "chat:room-*"),
            ("chat:*", "chat:lobby"),
            ("a*c", "ab*c"),
            ("x", "x"),
        ] {
            assert!(p(wide).covers(&p(narrow)), "{wide} covers {narrow}");
        }
        for (wide, narrow) in
            [("chat:*", "*"), ("chat:*", "news"), ("a*", "*a"), ("*x*", "*"), ("chat:room", "chat:*")]
        {
            assert!(!p(wide).covers(&p(narrow)), "{wide} does not cover {narrow}");
        }
    }

    use super::*;
    use proptest::prelude::*;

    fn ch(s: &str) -> ChannelName {
        ChannelName::parse(s).unwrap()
    }

    #[test]
    fn namespace_is_the_part_before_the_first_colon() {
        assert_eq!(ch("chat:room:1").namespace(), "chat");
        assert_eq!(ch("lobby").namespace(), "");
    }

    #[test]
    fn bad_names_are_refused_with_the_reason() {
        assert_eq!(ChannelName::parse(""), Err(ChannelError::Empty));
        assert_eq!(ChannelName::parse("a b"), Err(ChannelError::BadChar(' ')));
        assert_eq!(ChannelName::parse("chat:*"), Err(ChannelError::BadChar('*')));
        assert_eq!(ChannelName::parse("é"), Err(ChannelError::BadChar('é')));
        assert_eq!(ChannelName::parse(&"a".repeat(256)), Err(ChannelError::TooLong));
        assert!(ChannelName::parse(&"a".repeat(255)).is_ok());
    }

    #[test]
    fn patterns_match_like_globs() {
        let p = ChannelPattern::parse("chat:*").unwrap();
        assert!(p.matches(&ch("chat:room")));
        assert!(p.matches(&ch("chat:")));
        assert!(!p.matches(&ch("chatroom")));
        assert!(ChannelPattern::parse("*").unwrap().matches(&ch("anything")));
        let mid = ChannelPattern::parse("user:*:inbox").unwrap();
        assert!(mid.matches(&ch("user:42:inbox")));
        assert!(!mid.matches(&ch("user:42:outbox")));
        assert!(ChannelPattern::parse("exact").unwrap().matches(&ch("exact")));
        assert!(!ChannelPattern::parse("exact").unwrap().matches(&ch("exactly")));
    }

    proptest! {
        #[test]
        fn a_name_matches_itself_and_star(name in "[a-z0-9:_-]{1,40}") {
            let c = ch(&name);
            prop_assert!(ChannelPattern::parse(&name).unwrap().matches(&c));
            prop_assert!(ChannelPattern::parse("*").unwrap().matches(&c));
        }

        #[test]
        fn prefix_star_matches_exactly_the_names_with_that_prefix(
            prefix in "[a-z:]{0,6}", name in "[a-z:]{1,12}"
        ) {
            let p = ChannelPattern::parse(&format!("{prefix}*")).unwrap();
            prop_assert_eq!(p.matches(&ch(&name)), name.starts_with(&prefix));
        }

        #[test]
        fn parsing_arbitrary_text_never_panics(s in ".{0,300}") {
            let _ = ChannelName::parse(&s);
            let _ = ChannelPattern::parse(&s);
        }
    }
}
