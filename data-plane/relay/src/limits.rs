//! Per-connection rate limiting.

use tokio::time::Instant;

/// A token bucket: `rate` tokens per second, at most `burst` saved up. The rate and burst come
/// from the configuration on every call rather than being stored: every connection holds two
/// buckets.
#[derive(Debug)]
pub struct TokenBucket {
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// Creates a full bucket.
    pub fn new(burst: u32) -> Self {
        Self { tokens: burst.into(), last: Instant::now() }
    }

    /// Takes one token; returns false when none is left.
    pub fn try_take(&mut self, rate_per_second: u32, burst: u32) -> bool {
        let now = Instant::now();
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * f64::from(rate_per_second)).min(burst.into());
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn bucket_allows_the_burst_then_the_rate() {
        let mut bucket = TokenBucket::new(3);
        let mut take = || bucket.try_take(10, 3);
        assert!(take() && take() && take());
        assert!(!take());
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(take());
        assert!(!take());
    }
}
