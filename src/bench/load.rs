//! The HTTP load generator: closed loop (a fixed number of connections, each
//! sending its next request as soon as the previous one is answered) for
//! sustained throughput, and open loop (requests started on a fixed schedule,
//! whatever the answers do) for latency at a given rate. Open-loop latency is
//! measured from when a request was due to start, so a stall is charged to
//! every request it delayed (no coordinated omission).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// Builds request number `n`; `None` when there is nothing left to send.
pub type MakeRequest = Arc<dyn Fn(u64) -> Option<reqwest::RequestBuilder> + Send + Sync>;

/// What one run of requests came to.
#[derive(Debug, Default)]
pub struct LoadResult {
    /// Answered with the expected status.
    pub ok: u64,
    /// Answered otherwise, or not at all.
    pub errors: u64,
    pub first_error: Option<String>,
    /// Time over which `ok` was counted.
    pub elapsed: Duration,
    /// Latencies of the successful requests.
    pub latencies: Vec<Duration>,
    /// The request factory ran dry before the time was up.
    pub exhausted: bool,
    /// Open loop: requests not started because too many were in flight.
    pub shed: u64,
}

impl LoadResult {
    pub fn per_sec(&self) -> f64 {
        if self.elapsed.is_zero() {
            return 0.0;
        }
        self.ok as f64 / self.elapsed.as_secs_f64()
    }

    /// The q-quantile (0..=1) of the latencies.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        quantile(&self.latencies, q)
    }
}

/// The q-quantile of `sorted` (ascending), nearest rank.
pub fn quantile(sorted: &[Duration], q: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

struct Tally {
    ok: u64,
    errors: u64,
    first_error: Option<String>,
    latencies: Vec<Duration>,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            ok: 0,
            errors: 0,
            first_error: None,
            latencies: Vec::new(),
        }
    }

    fn merge(&mut self, other: Tally) {
        self.ok += other.ok;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.latencies.extend(other.latencies);
    }

    fn error(&mut self, e: String) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(e);
        }
    }
}

/// Sends one request and reads its whole answer (so the connection can be
/// reused); Ok when it had the expected status.
async fn send(req: reqwest::RequestBuilder, expect: &[u16]) -> Result<(), String> {
    let resp = req.send().await.map_err(|e| format!("{e}"))?;
    let status = resp.status().as_u16();
    let body = resp.bytes().await.map_err(|e| format!("{e}"))?;
    if expect.contains(&status) {
        Ok(())
    } else {
        let text = String::from_utf8_lossy(&body);
        Err(format!(
            "status {status}: {}",
            text.chars().take(200).collect::<String>()
        ))
    }
}

/// `concurrency` loops, each sending its next request when the previous one
/// is answered, for `duration` after a warm-up of `warmup` (whose requests
/// are not counted). Stops early if `make` runs dry.
pub async fn closed_loop(
    concurrency: usize,
    warmup: Duration,
    duration: Duration,
    expect: &'static [u16],
    make: MakeRequest,
) -> LoadResult {
    let seq = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let count_from = start + warmup;
    let end = count_from + duration;
    let exhausted = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let (seq, make, exhausted) = (seq.clone(), make.clone(), exhausted.clone());
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally::new();
            loop {
                let t0 = Instant::now();
                if t0 >= end {
                    break;
                }
                let Some(req) = make(seq.fetch_add(1, Ordering::Relaxed)) else {
                    exhausted.store(true, Ordering::Relaxed);
                    break;
                };
                let outcome = send(req, expect).await;
                let done = Instant::now();
                if t0 < count_from || done > end {
                    continue;
                }
                match outcome {
                    Ok(()) => {
                        tally.ok += 1;
                        tally.latencies.push(done - t0);
                    }
                    Err(e) => tally.error(e),
                }
            }
            tally
        }));
    }
    let mut all = Tally::new();
    for t in tasks {
        if let Ok(tally) = t.await {
            all.merge(tally);
        }
    }
    let finished = Instant::now().min(end);
    finish(
        all,
        finished.saturating_duration_since(count_from),
        exhausted.load(Ordering::Relaxed),
        0,
    )
}

/// Starts requests at `rate` per second for `duration` (after `warmup` at
/// the same rate, not counted), each on its own task, with at most
/// `max_in_flight` outstanding (the excess is counted as shed, not sent).
/// Latency runs from when a request was due to start.
pub async fn open_loop(
    rate: f64,
    warmup: Duration,
    duration: Duration,
    max_in_flight: usize,
    expect: &'static [u16],
    make: MakeRequest,
) -> LoadResult {
    let interval = Duration::from_secs_f64(1.0 / rate.max(0.1));
    let start = Instant::now() + Duration::from_millis(20);
    let count_from = start + warmup;
    let end = count_from + duration;
    let tally = Arc::new(Mutex::new(Tally::new()));
    let in_flight = Arc::new(tokio::sync::Semaphore::new(max_in_flight));
    let mut next = start;
    let mut n: u64 = 0;
    let mut shed = 0;
    let mut exhausted = false;
    let mut tasks = tokio::task::JoinSet::new();
    'schedule: while next < end {
        tokio::time::sleep_until(next).await;
        let now = Instant::now();
        // Catch up on every start that is due by now (timer granularity is
        // coarser than the interval at high rates).
        while next <= now && next < end {
            let due = next;
            next += interval;
            let Some(req) = make(n) else {
                exhausted = true;
                break 'schedule;
            };
            n += 1;
            let Ok(permit) = in_flight.clone().try_acquire_owned() else {
                if due >= count_from {
                    shed += 1;
                }
                continue;
            };
            let tally = tally.clone();
            tasks.spawn(async move {
                let outcome = send(req, expect).await;
                let done = Instant::now();
                drop(permit);
                if due < count_from {
                    return;
                }
                let mut t = tally.lock().unwrap_or_else(|e| e.into_inner());
                match outcome {
                    Ok(()) => {
                        t.ok += 1;
                        t.latencies.push(done - due);
                    }
                    Err(e) => t.error(e),
                }
            });
        }
        // Reap finished tasks so the set does not grow with the run.
        while tasks.try_join_next().is_some() {}
    }
    // Bounded: every request has the client's timeout.
    while tasks.join_next().await.is_some() {}
    let all = std::mem::replace(
        &mut *tally.lock().unwrap_or_else(|e| e.into_inner()),
        Tally::new(),
    );
    finish(all, duration, exhausted, shed)
}

fn finish(mut all: Tally, elapsed: Duration, exhausted: bool, shed: u64) -> LoadResult {
    all.latencies.sort_unstable();
    LoadResult {
        ok: all.ok,
        errors: all.errors,
        first_error: all.first_error,
        elapsed,
        latencies: all.latencies,
        exhausted,
        shed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_quantiles() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(quantile(&v, 0.5), Some(Duration::from_millis(50)));
        assert_eq!(quantile(&v, 0.99), Some(Duration::from_millis(99)));
        assert_eq!(quantile(&v, 1.0), Some(Duration::from_millis(100)));
        assert_eq!(quantile(&v, 0.0), Some(Duration::from_millis(1)));
        assert_eq!(quantile(&[], 0.5), None);
    }
}
