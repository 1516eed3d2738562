//! When a failed delivery is tried again.
//!
//! The default schedule follows Svix's: after the first attempt fails, again after 5 seconds,
//! 5 minutes, 30 minutes, 2 hours, 5 hours and 10 hours, then twice more 10 hours apart: nine
//! attempts over about a day and a half, after which the event is dead-lettered (never
//! dropped). Each delay is spread by up to a fifth either way (jitter), so endpoints that
//! failed together are not all tried again in the same second. A receiver's `Retry-After` is
//! honoured: the next attempt comes no sooner than it asks (but no later than the schedule's
//! longest delay, so a receiver cannot park an event for ever).

use std::time::Duration;

/// The delays between attempts: after attempt `n` fails, attempt `n + 1` waits `delays[n - 1]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetrySchedule {
    delays: Vec<Duration>,
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextStep {
    /// Try again after this long.
    RetryAfter(Duration),
    /// That was the last attempt: dead-letter the event.
    DeadLetter,
}

impl Default for RetrySchedule {
    fn default() -> Self {
        let minutes = |m: u64| Duration::from_secs(m * 60);
        Self {
            delays: vec![
                Duration::from_secs(5),
                minutes(5),
                minutes(30),
                minutes(120),
                minutes(300),
                minutes(600),
                minutes(600),
                minutes(600),
            ],
        }
    }
}

impl RetrySchedule {
    /// A schedule of these delays (an empty one dead-letters after the first failure).
    pub fn new(delays: Vec<Duration>) -> Self {
        Self { delays }
    }

    /// Reads a schedule from its configuration form, e.g. `5s,5m,30m,2h,5h,10h,10h,10h`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let delays = text
            .split(',')
            .map(str::trim)
            .filter(|part| !part.is_empty())
            .map(|part| {
                let (number, unit) =
                    part.split_at(part.find(|c: char| !c.is_ascii_digit()).unwrap_or(part.len()));
                let n: u64 =
                    number.parse().map_err(|_| format!("{part}: expected a number and s, m or h"))?;
                let seconds = match unit {
                    "s" => n,
                    "m" => n.saturating_mul(60),
                    "h" => n.saturating_mul(3600),
                    _ => return Err(format!("{part}: expected a number and s, m or h")),
                };
                Ok(Duration::from_secs(seconds))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { delays })
    }

    /// How many attempts an event gets in all.
    pub fn attempts(&self) -> usize {
        self.delays.len() + 1
    }

    /// What follows the failure of attempt `tries` (from 1), given the receiver's
    /// `Retry-After` and a random number in `[0, 1)` for the jitter.
    pub fn after_failure(&self, tries: usize, retry_after: Option<Duration>, random: f64) -> NextStep {
        let Some(&delay) = tries.checked_sub(1).and_then(|i| self.delays.get(i)) else {
            return NextStep::DeadLetter;
        };
        // Up to a fifth either way.
        let spread = delay.as_secs_f64() * 0.2 * (random.clamp(0.0, 1.0) * 2.0 - 1.0);
        let jittered = Duration::from_secs_f64((delay.as_secs_f64() + spread).max(0.0));
        let longest = self.delays.iter().max().copied().unwrap_or(delay);
        let wait = match retry_after {
            Some(asked) => jittered.max(asked.min(longest)),
            None => jittered,
        };
        NextStep::RetryAfter(wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_schedule_spans_about_a_day_and_a_half_then_dead_letters() {
        let schedule = RetrySchedule::default();
        assert_eq!(schedule.attempts(), 9);
        let total: Duration = (1..schedule.attempts())
            .map(|n| match schedule.after_failure(n, None, 0.5) {
                NextStep::RetryAfter(wait) => wait,
                NextStep::DeadLetter => panic!("attempt {n} is not the last"),
            })
            .sum();
        assert_eq!(total, Duration::from_secs(5 + 60 * (5 + 30 + 120 + 300 + 600 * 3)));
        assert_eq!(schedule.after_failure(9, None, 0.5), NextStep::DeadLetter);
        assert_eq!(schedule.after_failure(0, None, 0.5), NextStep::DeadLetter, "no attempt 0");
    }

    #[test]
    fn jitter_spreads_a_delay_by_a_fifth_either_way() {
        let schedule = RetrySchedule::default();
        let at = |random| schedule.after_failure(2, None, random);
        assert_eq!(at(0.0), NextStep::RetryAfter(Duration::from_secs(240)));
        assert_eq!(at(0.5), NextStep::RetryAfter(Duration::from_secs(300)));
        assert_eq!(at(0.999_999), NextStep::RetryAfter(Duration::from_secs_f64(300.0 + 60.0 * 0.999_998)));
    }

    #[test]
    fn retry_after_is_honoured_up_to_the_longest_delay() {
        let schedule = RetrySchedule::default();
        let wait = schedule.after_failure(1, Some(Duration::from_secs(90)), 0.5);
        assert_eq!(wait, NextStep::RetryAfter(Duration::from_secs(90)), "later than the schedule's 5 s");
        let wait = schedule.after_failure(3, Some(Duration::from_secs(1)), 0.5);
        assert_eq!(wait, NextStep::RetryAfter(Duration::from_secs(1800)), "never sooner than the schedule");
        let wait = schedule.after_failure(1, Some(Duration::from_secs(7 * 86_400)), 0.5);
        assert_eq!(wait, NextStep::RetryAfter(Duration::from_secs(36_000)), "capped at the longest delay");
    }

    #[test]
    fn schedules_are_read_from_configuration_and_bad_ones_say_why() {
        let schedule = RetrySchedule::parse("5s, 1m,2h").unwrap();
        assert_eq!(
            schedule,
            RetrySchedule::new(vec![
                Duration::from_secs(5),
                Duration::from_secs(60),
                Duration::from_secs(7200)
            ])
        );
        assert_eq!(RetrySchedule::parse("5s,5m,30m,2h,5h,10h,10h,10h").unwrap(), RetrySchedule::default());
        assert!(RetrySchedule::parse("5x").unwrap_err().contains("5x"));
        assert!(RetrySchedule::parse("m").is_err());
        assert_eq!(RetrySchedule::parse("").unwrap().attempts(), 1);
    }
}
