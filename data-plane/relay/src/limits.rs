//! Per-connection rate limiting.

use tokio::time::Instant;

/// A token bucket: `rate` tokens per second, at most `burst` saved up.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// Creates a full bucket.
    pub fn new(rate_per_second: u32, burst: u32) -> Self {
        Self { rate: rate_per_second.into(), burst: burst.into(), tokens: burst.into(), last: Instant::now() }
    }

    /// Takes one token; returns false when none is left.
    pub fn try_take(&mut self) -> bool {
        let now = Instant::now();
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
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
        let mut bucket = TokenBucket::new(10, 3);
        assert!(bucket.try_take() && bucket.try_take() && bucket.try_take());
        assert!(!bucket.try_take());
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(bucket.try_take());
        assert!(!bucket.try_take());
    }
}
