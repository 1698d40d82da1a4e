//! A token bucket that hands out reservations: a caller learns how long to
//! wait for its slot, and may decline a slot too far away instead of holding
//! a claim while it waits. Pure: the caller supplies the time.

use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    /// May go negative: slots already promised to waiting callers.
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// `rate` per second, up to `burst` at once (at least one).
    pub fn new(rate: f64, burst: f64, now: Instant) -> TokenBucket {
        let burst = burst.max(1.0);
        TokenBucket {
            rate,
            burst,
            tokens: burst,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.last = now;
    }

    /// Reserves the next slot if it comes within `max_wait`, returning how
    /// long to wait for it; `Err` carries when a slot would be free instead.
    pub fn reserve(&mut self, now: Instant, max_wait: Duration) -> Result<Duration, Duration> {
        self.refill(now);
        let wait = if self.tokens >= 1.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((1.0 - self.tokens) / self.rate)
        };
        if wait > max_wait {
            return Err(wait);
        }
        self.tokens -= 1.0;
        Ok(wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_the_rate_holds() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10.0, 3.0, t0);
        for _ in 0..3 {
            assert_eq!(b.reserve(t0, Duration::ZERO), Ok(Duration::ZERO));
        }
        // The fourth waits a tenth of a second, the fifth two tenths.
        assert_eq!(
            b.reserve(t0, Duration::from_secs(1)),
            Ok(Duration::from_millis(100))
        );
        assert_eq!(
            b.reserve(t0, Duration::from_secs(1)),
            Ok(Duration::from_millis(200))
        );
    }

    #[test]
    fn a_slot_too_far_away_is_declined_without_being_taken() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1.0, 1.0, t0);
        assert!(b.reserve(t0, Duration::ZERO).is_ok());
        assert_eq!(
            b.reserve(t0, Duration::from_millis(500)),
            Err(Duration::from_secs(1))
        );
        // Declining reserved nothing: one second later the slot is free.
        assert_eq!(
            b.reserve(t0 + Duration::from_secs(1), Duration::ZERO),
            Ok(Duration::ZERO)
        );
    }

    #[test]
    fn over_any_window_no_more_than_burst_plus_rate_times_window_start() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(50.0, 5.0, t0);
        // 1000 callers arriving at once, each accepting any wait.
        let mut starts: Vec<Duration> = (0..1000)
            .map(|_| b.reserve(t0, Duration::from_secs(60)).unwrap())
            .collect();
        starts.sort();
        for window_ms in [0u64, 100, 1000, 10_000] {
            let window = Duration::from_millis(window_ms);
            let within = starts.iter().filter(|s| **s <= window).count() as f64;
            assert!(
                within <= 5.0 + 50.0 * window.as_secs_f64() + 1e-9,
                "{window_ms} ms: {within}"
            );
        }
        // And the last one starts when the rate says it must.
        assert_eq!(starts[999], Duration::from_secs_f64(995.0 / 50.0));
    }
}
