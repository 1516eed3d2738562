//! MQTT topics as Tributary channels.
//!
//! A topic name *is* a channel name: `devices/42/temp` is the channel `devices/42/temp` (whose
//! namespace is the part before the first `:`, so a topic without `:` is in the default
//! namespace). Only what a channel name may hold is accepted: ASCII letters, digits and
//! `_ - : . @ / ! ~ =`, 1 to 255 bytes; anything else (spaces, `+`, `#`, `$`, non-ASCII) is
//! refused with reason code 0x90 "topic name invalid".
//!
//! A topic filter is matched the MQTT way, level by level (`+` one level, `#` the rest,
//! including the parent level itself), and a wildcard does not match a first level starting
//! with `$`. Before a subscription delivers anything, its filter's [`TopicFilter::patterns`] —
//! channel patterns that together match at least every topic the filter can — must all be
//! within the token's subscribe rights.

use tributary_protocol::{ChannelName, ChannelPattern};

/// Why a topic or filter is refused, with its MQTT 5 reason code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// Not a channel name (see the module documentation).
    #[error("topic name invalid: {0}")]
    InvalidName(String),
    /// A wildcard out of place (`a+`, `#/a`), or a filter with characters a channel cannot hold.
    #[error("topic filter invalid: {0}")]
    InvalidFilter(String),
}

impl TopicError {
    /// Returns the MQTT 5 reason code: 0x90 topic name invalid, 0x8F topic filter invalid.
    pub fn reason_code(&self) -> u8 {
        match self {
            TopicError::InvalidName(_) => 0x90,
            TopicError::InvalidFilter(_) => 0x8F,
        }
    }
}

/// Returns the channel of a topic name.
pub fn channel_of(topic: &str) -> Result<ChannelName, TopicError> {
    ChannelName::parse(topic).map_err(|e| TopicError::InvalidName(e.to_string()))
}

/// A validated topic filter: its text, matched level by level without allocating (it is
/// matched once per delivery).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicFilter {
    text: Box<str>,
    /// Whether a level is `+` or `#`.
    wildcard: bool,
}

impl TopicFilter {
    /// Validates a filter: `+` and `#` each fill a whole level, `#` only the last; every other
    /// level holds only channel-name characters.
    pub fn parse(filter: &str) -> Result<Self, TopicError> {
        if filter.is_empty() || filter.len() > tributary_protocol::channel::MAX_CHANNEL_LEN {
            return Err(TopicError::InvalidFilter("a filter is 1 to 255 bytes".into()));
        }
        let mut wildcard = false;
        let mut levels = filter.split('/').peekable();
        while let Some(level) = levels.next() {
            match level {
                "+" => wildcard = true,
                "#" if levels.peek().is_none() => wildcard = true,
                "#" => return Err(TopicError::InvalidFilter("# must be the last level".into())),
                text if text.contains(['+', '#']) => {
                    return Err(TopicError::InvalidFilter("a wildcard fills a whole level".into()));
                }
                "" => {}
                text => {
                    ChannelName::parse(text).map_err(|e| TopicError::InvalidFilter(e.to_string()))?;
                }
            }
        }
        Ok(Self { text: Box::from(filter), wildcard })
    }

    /// Returns whether the filter has no wildcard (it names one channel).
    pub fn is_exact(&self) -> bool {
        !self.wildcard
    }

    /// Returns whether `topic` matches the filter, the MQTT way.
    pub fn matches(&self, topic: &str) -> bool {
        if !self.wildcard {
            return *self.text == *topic;
        }
        if topic.starts_with('$') && (self.text.starts_with('+') || self.text.starts_with('#')) {
            return false;
        }
        let mut topic_levels = topic.split('/');
        for level in self.text.split('/') {
            match level {
                "#" => return true,
                "+" => {
                    if topic_levels.next().is_none() {
                        return false;
                    }
                }
                exact => {
                    if topic_levels.next() != Some(exact) {
                        return false;
                    }
                }
            }
        }
        topic_levels.next().is_none()
    }

    /// Returns channel patterns that together match every topic this filter matches (and
    /// possibly more: `*` spans levels): what the subscribe right must cover.
    pub fn patterns(&self) -> Vec<ChannelPattern> {
        let mut patterns = Vec::with_capacity(2);
        let as_glob = |filter: &str| {
            filter
                .split('/')
                .map(|l| if l == "+" || l == "#" { "*" } else { l })
                .collect::<Vec<_>>()
                .join("/")
        };
        if let Some(parent) = self.text.strip_suffix("/#") {
            // `a/#` also matches `a` itself.
            if let Ok(pattern) = ChannelPattern::parse(&as_glob(parent)) {
                patterns.push(pattern);
            }
        }
        if let Ok(pattern) = ChannelPattern::parse(&as_glob(&self.text)) {
            patterns.push(pattern);
        }
        patterns
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_are_channel_names_and_other_characters_are_refused() {
        assert_eq!(channel_of("devices/42/temp").unwrap().as_str(), "devices/42/temp");
        assert_eq!(channel_of("chat:lobby").unwrap().namespace(), "chat");
        for bad in ["", "a b", "a/+", "a/#", "$SYS/x", "température", &"x".repeat(256)] {
            assert_eq!(channel_of(bad).unwrap_err().reason_code(), 0x90, "{bad:?}");
        }
    }

    #[test]
    fn filters_match_level_by_level() {
        let f = |s: &str| TopicFilter::parse(s).unwrap();
        assert!(f("a/+/c").matches("a/b/c"));
        assert!(!f("a/+/c").matches("a/b/x/c"), "+ is one level");
        assert!(f("a/#").matches("a"), "# includes the parent level");
        assert!(f("a/#").matches("a/b/c"));
        assert!(!f("a/#").matches("ab"));
        assert!(f("#").matches("x/y") && f("+").matches("x") && !f("+").matches("x/y"));
        assert!(f("+/+").matches("/x"), "an empty level is a level");
        assert!(!f("#").matches("$SYS/x") && !f("+/x").matches("$SYS/x"), "wildcards skip $ topics");
        assert!(f("a/b").is_exact() && !f("a/+").is_exact());
        for bad in ["a/#/b", "a+", "a/b#", "", "a/ b"] {
            assert_eq!(TopicFilter::parse(bad).unwrap_err().reason_code(), 0x8F, "{bad:?}");
        }
    }

    #[test]
    fn a_filters_patterns_cover_every_topic_it_matches() {
        let patterns = |s: &str| {
            TopicFilter::parse(s)
                .unwrap()
                .patterns()
                .iter()
                .map(|p| p.as_str().to_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(patterns("devices/+/temp"), ["devices/*/temp"]);
        assert_eq!(patterns("firmware/#"), ["firmware", "firmware/*"]);
        assert_eq!(patterns("#"), ["*"]);
        assert_eq!(patterns("a/b"), ["a/b"]);
        // Sound: each topic the filter matches is matched by one of its patterns.
        let filter = TopicFilter::parse("a/+/c/#").unwrap();
        let pats = filter.patterns();
        for topic in ["a/x/c", "a/x/c/d", "a/y/c/d/e"] {
            assert!(filter.matches(topic));
            let channel = ChannelName::parse(topic).unwrap();
            assert!(pats.iter().any(|p| p.matches(&channel)), "{topic}");
        }
    }
}
