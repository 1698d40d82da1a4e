//! Retry delays: exponential with jitter, never sooner than the upstream asked.

use std::time::Duration;

#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
}

/// The longest Retry-After we honour; a longer one would park a deadline-bound
/// message for longer than any fallback is worth.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

impl Backoff {
    /// Delay before attempt `attempt + 1`, where `attempt` (from 1) just failed.
    /// `jitter` in [0, 1) spreads retries of a burst ("equal jitter": half the
    /// delay is fixed, half random), so a recovering upstream is not hit by
    /// every message at the same instant.
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>, jitter: f64) -> Duration {
        let exp = attempt.saturating_sub(1).min(30);
        let full = self.base.saturating_mul(1u32 << exp).min(self.cap);
        let jittered = full / 2 + full.mul_f64(jitter.clamp(0.0, 1.0) / 2.0);
        match retry_after {
            Some(asked) => jittered.max(asked.min(MAX_RETRY_AFTER)),
            None => jittered,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: Backoff = Backoff {
        base: Duration::from_millis(500),
        cap: Duration::from_secs(60),
    };

    #[test]
    fn grows_exponentially_within_jitter_bounds() {
        assert_eq!(B.delay(1, None, 0.0), Duration::from_millis(250));
        assert_eq!(B.delay(1, None, 1.0), Duration::from_millis(500));
        assert_eq!(B.delay(3, None, 1.0), Duration::from_secs(2));
        assert_eq!(B.delay(3, None, 0.0), Duration::from_secs(1));
    }

    #[test]
    fn is_capped_even_for_absurd_attempt_counts() {
        assert_eq!(B.delay(50, None, 1.0), Duration::from_secs(60));
        assert_eq!(B.delay(u32::MAX, None, 0.0), Duration::from_secs(30));
    }

    #[test]
    fn honours_retry_after_up_to_an_hour() {
        assert_eq!(
            B.delay(1, Some(Duration::from_secs(7)), 0.5),
            Duration::from_secs(7)
        );
        assert_eq!(
            B.delay(1, Some(Duration::from_secs(86_400)), 0.5),
            Duration::from_secs(3600)
        );
        // A Retry-After shorter than our own back-off does not make us hurry.
        assert_eq!(
            B.delay(5, Some(Duration::from_millis(1)), 1.0),
            Duration::from_secs(8)
        );
    }
}
