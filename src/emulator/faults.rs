//! Switchable faults of the emulators: errors, hangs, resets, lost answers
//! and slowness of the APIs, and duplicated, reordered and lost callbacks.
//!
//! Each emulator holds one plain struct ([`GoogleFaults`], [`TwilioFaults`])
//! set with its `set_faults` at any time, from a test or, through
//! [`parse_faults`], from a compact command-line string such as
//! `google.error_rate=0.2,google.hang_rate=0.05,twilio.response_lost_rate=0.1,google.webhook_duplicates=3`.
//!
//! Every decision is drawn from a generator seeded by the fault seed and the
//! identity of what it decides about (e.g. "the 2nd DELETE of message X", "the
//! DELIVERED webhook of message Y"), never from a shared stream. So a seed
//! fixes which request of which message fails and how, whatever order
//! requests arrive in; only timing can still differ between two runs.

use std::fmt;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};

/// Statuses of an injected API error: a plain failure, an outage and a rate
/// limit (answered with `Retry-After`).
pub const ERROR_STATUSES: [u16; 3] = [500, 503, 429];

/// Faults of the Google emulator. The default injects nothing.
#[derive(Clone, Debug, PartialEq)]
pub struct GoogleFaults {
    /// Seeds every decision below.
    pub seed: u64,
    /// Share of RBM API requests answered 500, 503 or 429 (with
    /// `Retry-After`); nothing is done.
    pub error_rate: f64,
    /// Share of RBM API requests held unanswered for `hang_for`, after which
    /// the connection is dropped. Half of them take effect first (a revoke
    /// that happened although no answer came), half do not.
    pub hang_rate: f64,
    pub hang_for: Duration,
    /// Share of RBM API requests whose connection is reset instead of
    /// answered. Half of them take effect first, half do not.
    pub reset_rate: f64,
    /// Every RBM API request is delayed by a random time up to this.
    pub latency: Duration,
    /// Every request (RBM API and token endpoint) is answered 503: an outage.
    pub unavailable: bool,
    /// Each webhook goes out between 1 and this many times (a uniform
    /// choice), every copy with the same eventId.
    pub webhook_duplicates: u32,
    /// Every copy of a webhook waits a random time up to this before its
    /// first try, so webhooks overtake each other.
    pub webhook_delay: Duration,
    /// Share of webhooks never sent at all.
    pub webhook_drop_rate: f64,
}

impl Default for GoogleFaults {
    fn default() -> Self {
        Self {
            seed: 0,
            error_rate: 0.0,
            hang_rate: 0.0,
            hang_for: Duration::from_secs(30),
            reset_rate: 0.0,
            latency: Duration::ZERO,
            unavailable: false,
            webhook_duplicates: 1,
            webhook_delay: Duration::ZERO,
            webhook_drop_rate: 0.0,
        }
    }
}

/// Faults of the Twilio emulator. The default injects nothing.
#[derive(Clone, Debug, PartialEq)]
pub struct TwilioFaults {
    /// Seeds every decision below.
    pub seed: u64,
    /// Share of create requests answered 500, 503 or 429 (with
    /// `Retry-After`); nothing is created.
    pub error_rate: f64,
    /// Share of create requests held unanswered for `hang_for`, after which
    /// the connection is dropped. Half of them create the message first.
    pub hang_rate: f64,
    pub hang_for: Duration,
    /// Share of create requests whose connection is reset instead of
    /// answered. Half of them create the message first.
    pub reset_rate: f64,
    /// Share of create requests that create the message, yet whose answer
    /// never arrives (the connection drops).
    pub response_lost_rate: f64,
    /// Every create request is delayed by a random time up to this.
    pub latency: Duration,
    /// Every API request (create, list, fetch) is answered 503: an outage.
    pub unavailable: bool,
    /// Each status callback goes out between 1 and this many times.
    pub callback_duplicates: u32,
    /// Every copy of a status callback waits a random time up to this, so
    /// callbacks overtake each other.
    pub callback_delay: Duration,
    /// Share of status callbacks never sent at all.
    pub callback_drop_rate: f64,
}

impl Default for TwilioFaults {
    fn default() -> Self {
        Self {
            seed: 0,
            error_rate: 0.0,
            hang_rate: 0.0,
            hang_for: Duration::from_secs(30),
            reset_rate: 0.0,
            response_lost_rate: 0.0,
            latency: Duration::ZERO,
            unavailable: false,
            callback_duplicates: 1,
            callback_delay: Duration::ZERO,
            callback_drop_rate: 0.0,
        }
    }
}

impl GoogleFaults {
    /// Sets one field by its name, e.g. `("hang_for", "3s")`.
    pub fn set(&mut self, key: &str, value: &str) -> anyhow::Result<()> {
        let v = value.trim();
        match key.trim() {
            "seed" => self.seed = parse_u64(v)?,
            "error_rate" => self.error_rate = parse_rate(v)?,
            "hang_rate" => self.hang_rate = parse_rate(v)?,
            "hang_for" => self.hang_for = parse_duration(v)?,
            "reset_rate" => self.reset_rate = parse_rate(v)?,
            "latency" => self.latency = parse_duration(v)?,
            "unavailable" => self.unavailable = parse_bool(v)?,
            "webhook_duplicates" => self.webhook_duplicates = parse_copies(v)?,
            "webhook_delay" => self.webhook_delay = parse_duration(v)?,
            "webhook_drop_rate" => self.webhook_drop_rate = parse_rate(v)?,
            other => bail!(
                "unknown Google fault {other:?} (known: seed, error_rate, hang_rate, hang_for, \
                 reset_rate, latency, unavailable, webhook_duplicates, webhook_delay, webhook_drop_rate)"
            ),
        }
        self.check()
    }

    fn check(&self) -> anyhow::Result<()> {
        let sum = self.error_rate + self.hang_rate + self.reset_rate;
        if sum > 1.0 + 1e-9 {
            bail!("google error_rate + hang_rate + reset_rate is {sum}, more than 1");
        }
        Ok(())
    }

    /// True when nothing is injected.
    pub fn is_none(&self) -> bool {
        *self
            == GoogleFaults {
                seed: self.seed,
                ..GoogleFaults::default()
            }
    }

    /// The fault an RBM API request meets; `key` names the request.
    pub(crate) fn plan(&self, key: &[&str]) -> Plan {
        let mut rng = rng_for(self.seed, key);
        plan(
            &mut rng,
            [self.error_rate, self.hang_rate, self.reset_rate, 0.0],
            self.latency,
        )
    }

    /// The delays of the copies of one webhook (empty: never sent).
    pub(crate) fn fanout(&self, key: &[&str]) -> Vec<Duration> {
        let mut rng = rng_for(self.seed, key);
        fanout(
            &mut rng,
            self.webhook_drop_rate,
            self.webhook_duplicates,
            self.webhook_delay,
        )
    }
}

impl TwilioFaults {
    /// Sets one field by its name, e.g. `("response_lost_rate", "0.1")`.
    pub fn set(&mut self, key: &str, value: &str) -> anyhow::Result<()> {
        let v = value.trim();
        match key.trim() {
            "seed" => self.seed = parse_u64(v)?,
            "error_rate" => self.error_rate = parse_rate(v)?,
            "hang_rate" => self.hang_rate = parse_rate(v)?,
            "hang_for" => self.hang_for = parse_duration(v)?,
            "reset_rate" => self.reset_rate = parse_rate(v)?,
            "response_lost_rate" => self.response_lost_rate = parse_rate(v)?,
            "latency" => self.latency = parse_duration(v)?,
            "unavailable" => self.unavailable = parse_bool(v)?,
            "callback_duplicates" => self.callback_duplicates = parse_copies(v)?,
            "callback_delay" => self.callback_delay = parse_duration(v)?,
            "callback_drop_rate" => self.callback_drop_rate = parse_rate(v)?,
            other => bail!(
                "unknown Twilio fault {other:?} (known: seed, error_rate, hang_rate, hang_for, \
                 reset_rate, response_lost_rate, latency, unavailable, callback_duplicates, \
                 callback_delay, callback_drop_rate)"
            ),
        }
        self.check()
    }

    fn check(&self) -> anyhow::Result<()> {
        let sum = self.error_rate + self.hang_rate + self.reset_rate + self.response_lost_rate;
        if sum > 1.0 + 1e-9 {
            bail!("twilio error_rate + hang_rate + reset_rate + response_lost_rate is {sum}, more than 1");
        }
        Ok(())
    }

    /// True when nothing is injected.
    pub fn is_none(&self) -> bool {
        *self
            == TwilioFaults {
                seed: self.seed,
                ..TwilioFaults::default()
            }
    }

    /// The fault a create request meets; `key` names the request.
    pub(crate) fn plan(&self, key: &[&str]) -> Plan {
        let mut rng = rng_for(self.seed, key);
        plan(
            &mut rng,
            [
                self.error_rate,
                self.hang_rate,
                self.reset_rate,
                self.response_lost_rate,
            ],
            self.latency,
        )
    }

    /// The delays of the copies of one status callback (empty: never sent).
    pub(crate) fn fanout(&self, key: &[&str]) -> Vec<Duration> {
        let mut rng = rng_for(self.seed, key);
        fanout(
            &mut rng,
            self.callback_drop_rate,
            self.callback_duplicates,
            self.callback_delay,
        )
    }
}

/// The compact form, naming only what differs from the default (and the
/// seed), e.g. `seed=7,error_rate=0.2,webhook_duplicates=3`.
impl fmt::Display for GoogleFaults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = GoogleFaults::default();
        let mut w = Fields::new(f);
        w.put("seed", self.seed)?;
        w.changed("error_rate", self.error_rate, d.error_rate)?;
        w.changed("hang_rate", self.hang_rate, d.hang_rate)?;
        w.changed("hang_for", Ms(self.hang_for), Ms(d.hang_for))?;
        w.changed("reset_rate", self.reset_rate, d.reset_rate)?;
        w.changed("latency", Ms(self.latency), Ms(d.latency))?;
        w.changed("unavailable", self.unavailable, d.unavailable)?;
        w.changed(
            "webhook_duplicates",
            self.webhook_duplicates,
            d.webhook_duplicates,
        )?;
        w.changed("webhook_delay", Ms(self.webhook_delay), Ms(d.webhook_delay))?;
        w.changed(
            "webhook_drop_rate",
            self.webhook_drop_rate,
            d.webhook_drop_rate,
        )
    }
}

impl fmt::Display for TwilioFaults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = TwilioFaults::default();
        let mut w = Fields::new(f);
        w.put("seed", self.seed)?;
        w.changed("error_rate", self.error_rate, d.error_rate)?;
        w.changed("hang_rate", self.hang_rate, d.hang_rate)?;
        w.changed("hang_for", Ms(self.hang_for), Ms(d.hang_for))?;
        w.changed("reset_rate", self.reset_rate, d.reset_rate)?;
        w.changed(
            "response_lost_rate",
            self.response_lost_rate,
            d.response_lost_rate,
        )?;
        w.changed("latency", Ms(self.latency), Ms(d.latency))?;
        w.changed("unavailable", self.unavailable, d.unavailable)?;
        w.changed(
            "callback_duplicates",
            self.callback_duplicates,
            d.callback_duplicates,
        )?;
        w.changed(
            "callback_delay",
            Ms(self.callback_delay),
            Ms(d.callback_delay),
        )?;
        w.changed(
            "callback_drop_rate",
            self.callback_drop_rate,
            d.callback_drop_rate,
        )
    }
}

struct Fields<'a, 'b> {
    f: &'a mut fmt::Formatter<'b>,
    first: bool,
}

impl<'a, 'b> Fields<'a, 'b> {
    fn new(f: &'a mut fmt::Formatter<'b>) -> Self {
        Self { f, first: true }
    }

    fn put(&mut self, key: &str, value: impl fmt::Display) -> fmt::Result {
        if !self.first {
            self.f.write_str(",")?;
        }
        self.first = false;
        write!(self.f, "{key}={value}")
    }

    /// Only what differs from the default.
    fn changed<T: fmt::Display + PartialEq>(
        &mut self,
        key: &str,
        value: T,
        default: T,
    ) -> fmt::Result {
        if value == default {
            return Ok(());
        }
        self.put(key, value)
    }
}

#[derive(PartialEq)]
struct Ms(Duration);

impl fmt::Display for Ms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0.as_millis())
    }
}

/// Applies a compact fault string on top of `google` and `twilio`: comma
/// separated `emulator.key=value` pairs, e.g.
/// `google.error_rate=0.2,google.hang_for=3s,twilio.response_lost_rate=0.1`.
/// Rates are shares from 0 to 1; durations take `ms` or `s` (a bare number
/// is milliseconds); booleans are `true`/`false` (a bare key means `true`).
pub fn parse_faults(
    spec: &str,
    google: &mut GoogleFaults,
    twilio: &mut TwilioFaults,
) -> anyhow::Result<()> {
    for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (key, value) = item.split_once('=').unwrap_or((item, "true"));
        let key = key.trim();
        let (emulator, field) = key.split_once('.').ok_or_else(|| {
            anyhow!("fault {key:?} must be named google.<field> or twilio.<field>")
        })?;
        let applied = match emulator {
            "google" => google.set(field, value),
            "twilio" => twilio.set(field, value),
            other => bail!("unknown emulator {other:?} in fault {key:?} (google or twilio)"),
        };
        applied.with_context(|| format!("in fault {item:?}"))?;
    }
    Ok(())
}

/// Like [`parse_faults`] for one emulator only; the `google.`/`twilio.`
/// prefix is optional. Used by the emulators' own `/emulator/faults`.
pub(crate) fn parse_one(
    spec: &str,
    prefix: &str,
    set: &mut dyn FnMut(&str, &str) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (key, value) = item.split_once('=').unwrap_or((item, "true"));
        let key = key.trim();
        let field = key
            .strip_prefix(prefix)
            .and_then(|k| k.strip_prefix('.'))
            .unwrap_or(key);
        set(field, value).with_context(|| format!("in fault {item:?}"))?;
    }
    Ok(())
}

fn parse_rate(v: &str) -> anyhow::Result<f64> {
    let r: f64 = v.parse().map_err(|_| anyhow!("{v:?} is not a share"))?;
    if !(0.0..=1.0).contains(&r) {
        bail!("{v:?} is not a share between 0 and 1");
    }
    Ok(r)
}

fn parse_u64(v: &str) -> anyhow::Result<u64> {
    v.parse().map_err(|_| anyhow!("{v:?} is not a number"))
}

fn parse_copies(v: &str) -> anyhow::Result<u32> {
    match v.parse::<u32>() {
        Ok(n) if (1..=10).contains(&n) => Ok(n),
        _ => bail!("{v:?} is not a number of copies from 1 to 10"),
    }
}

fn parse_bool(v: &str) -> anyhow::Result<bool> {
    match v {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => bail!("{v:?} is not true or false"),
    }
}

/// `250ms`, `3s`, `1.5s`, or a bare number of milliseconds.
pub(crate) fn parse_duration(v: &str) -> anyhow::Result<Duration> {
    let bad = || anyhow!("{v:?} is not a duration (e.g. 250ms or 3s)");
    let (num, scale) = if let Some(n) = v.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1.0)
    } else {
        (v, 0.001)
    };
    let n: f64 = num.trim().parse().map_err(|_| bad())?;
    if !n.is_finite() || n < 0.0 || n * scale > 86_400.0 {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(n * scale))
}

/// A generator for one decision, seeded by the fault seed and what is being
/// decided about.
pub(crate) fn rng_for(seed: u64, key: &[&str]) -> StdRng {
    let mut h = Sha256::new();
    h.update(seed.to_le_bytes());
    for part in key {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    StdRng::from_seed(h.finalize().into())
}

/// What one request meets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fault {
    None,
    /// Answer this error status; do nothing.
    Status(u16),
    /// Hold the request, then drop the connection; `applied`: do it first.
    Hang {
        applied: bool,
    },
    /// Drop the connection at once; `applied`: do it first.
    Reset {
        applied: bool,
    },
    /// Do it, then drop the connection.
    ResponseLost,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Plan {
    pub fault: Fault,
    pub latency: Duration,
}

/// `rates`: error, hang, reset, response lost, as shares of all requests.
fn plan(rng: &mut StdRng, rates: [f64; 4], max_latency: Duration) -> Plan {
    let u: f64 = rng.gen();
    let [error, hang, reset, lost] = rates;
    let fault = if u < error {
        Fault::Status(ERROR_STATUSES[rng.gen_range(0..ERROR_STATUSES.len())])
    } else if u < error + hang {
        Fault::Hang {
            applied: rng.gen_bool(0.5),
        }
    } else if u < error + hang + reset {
        Fault::Reset {
            applied: rng.gen_bool(0.5),
        }
    } else if u < error + hang + reset + lost {
        Fault::ResponseLost
    } else {
        Fault::None
    };
    Plan {
        fault,
        latency: random_up_to(rng, max_latency),
    }
}

fn fanout(rng: &mut StdRng, drop_rate: f64, duplicates: u32, max_delay: Duration) -> Vec<Duration> {
    if rng.gen::<f64>() < drop_rate {
        return Vec::new();
    }
    let copies = rng.gen_range(1..=duplicates.max(1));
    (0..copies).map(|_| random_up_to(rng, max_delay)).collect()
}

fn random_up_to(rng: &mut StdRng, max: Duration) -> Duration {
    if max.is_zero() {
        return Duration::ZERO;
    }
    Duration::from_micros(rng.gen_range(0..=max.as_micros() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_compact_string_sets_both_emulators() {
        let (mut g, mut t) = (GoogleFaults::default(), TwilioFaults::default());
        parse_faults(
            "google.error_rate=0.2, google.hang_rate=0.05,twilio.response_lost_rate=0.1,\
             google.webhook_duplicates=3,google.hang_for=2.5s,twilio.latency=40ms,\
             twilio.unavailable,google.webhook_delay=300",
            &mut g,
            &mut t,
        )
        .expect("valid");
        assert_eq!(g.error_rate, 0.2);
        assert_eq!(g.hang_rate, 0.05);
        assert_eq!(g.webhook_duplicates, 3);
        assert_eq!(g.hang_for, Duration::from_millis(2500));
        assert_eq!(g.webhook_delay, Duration::from_millis(300));
        assert_eq!(t.response_lost_rate, 0.1);
        assert_eq!(t.latency, Duration::from_millis(40));
        assert!(t.unavailable);
        // What is not named keeps its value.
        assert_eq!(t.error_rate, 0.0);
        assert!(!g.unavailable);
    }

    #[test]
    fn bad_fault_strings_say_what_is_wrong() {
        let bad = [
            ("google.error_rate=1.5", "between 0 and 1"),
            ("google.nope=1", "unknown Google fault"),
            ("sms.error_rate=0.1", "unknown emulator"),
            ("error_rate=0.1", "google.<field>"),
            ("twilio.hang_for=soon", "not a duration"),
            ("google.webhook_duplicates=0", "copies"),
            (
                "twilio.error_rate=0.6,twilio.response_lost_rate=0.6",
                "more than 1",
            ),
            ("google.unavailable=maybe", "true or false"),
        ];
        for (spec, wanted) in bad {
            let (mut g, mut t) = (GoogleFaults::default(), TwilioFaults::default());
            let err = parse_faults(spec, &mut g, &mut t).expect_err(spec);
            assert!(format!("{err:#}").contains(wanted), "{spec}: {err:#}");
        }
    }

    #[test]
    fn display_round_trips_through_the_parser() {
        let (mut g, mut t) = (GoogleFaults::default(), TwilioFaults::default());
        parse_faults(
            "google.seed=9,google.reset_rate=0.1,google.webhook_drop_rate=0.02,\
             twilio.seed=4,twilio.hang_rate=0.3,twilio.callback_delay=1s",
            &mut g,
            &mut t,
        )
        .expect("valid");
        assert_eq!(
            g.to_string(),
            "seed=9,reset_rate=0.1,webhook_drop_rate=0.02"
        );
        assert_eq!(t.to_string(), "seed=4,hang_rate=0.3,callback_delay=1000ms");
        let (mut g2, mut t2) = (GoogleFaults::default(), TwilioFaults::default());
        parse_one(&g.to_string(), "google", &mut |k, v| g2.set(k, v)).expect("google");
        parse_one(&t.to_string(), "twilio", &mut |k, v| t2.set(k, v)).expect("twilio");
        assert_eq!((g2, t2), (g, t));
        assert!(GoogleFaults::default().is_none());
        assert!(!TwilioFaults {
            callback_drop_rate: 0.1,
            ..TwilioFaults::default()
        }
        .is_none());
    }

    #[test]
    fn decisions_depend_on_the_seed_and_the_key_only() {
        let faults = GoogleFaults {
            seed: 42,
            error_rate: 0.3,
            hang_rate: 0.2,
            reset_rate: 0.2,
            latency: Duration::from_millis(100),
            ..GoogleFaults::default()
        };
        let keys: Vec<String> = (0..200).map(|i| format!("message-{i}")).collect();
        let first: Vec<Plan> = keys.iter().map(|k| faults.plan(&["DELETE", k])).collect();
        // Asked again, in reverse order: the same answers.
        let again: Vec<Plan> = keys
            .iter()
            .rev()
            .map(|k| faults.plan(&["DELETE", k]))
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        assert_eq!(first, again);
        let other_seed = GoogleFaults {
            seed: 43,
            ..faults.clone()
        };
        let other: Vec<Plan> = keys
            .iter()
            .map(|k| other_seed.plan(&["DELETE", k]))
            .collect();
        assert_ne!(first, other);
    }

    #[test]
    fn shares_are_roughly_what_was_asked() {
        let faults = TwilioFaults {
            seed: 1,
            error_rate: 0.2,
            hang_rate: 0.1,
            reset_rate: 0.1,
            response_lost_rate: 0.1,
            latency: Duration::from_millis(50),
            callback_drop_rate: 0.25,
            callback_duplicates: 3,
            callback_delay: Duration::from_millis(200),
            ..TwilioFaults::default()
        };
        let n = 10_000;
        let (mut errors, mut hangs, mut resets, mut lost, mut applied) = (0, 0, 0, 0, 0);
        let mut statuses = std::collections::BTreeSet::new();
        for i in 0..n {
            let p = faults.plan(&["create", &i.to_string()]);
            assert!(p.latency <= Duration::from_millis(50));
            match p.fault {
                Fault::Status(s) => {
                    errors += 1;
                    statuses.insert(s);
                }
                Fault::Hang { applied: a } => {
                    hangs += 1;
                    applied += usize::from(a);
                }
                Fault::Reset { .. } => resets += 1,
                Fault::ResponseLost => lost += 1,
                Fault::None => {}
            }
        }
        let near = |count: usize, share: f64| {
            let expected = share * n as f64;
            (count as f64 - expected).abs() < 0.15 * expected
        };
        assert!(near(errors, 0.2), "{errors}");
        assert!(near(hangs, 0.1), "{hangs}");
        assert!(near(resets, 0.1), "{resets}");
        assert!(near(lost, 0.1), "{lost}");
        assert!(near(applied, 0.05), "{applied}");
        assert_eq!(statuses.into_iter().collect::<Vec<_>>(), [429, 500, 503]);

        let (mut dropped, mut copies) = (0, [0usize; 4]);
        for i in 0..n {
            let delays = faults.fanout(&["callback", &i.to_string()]);
            if delays.is_empty() {
                dropped += 1;
            }
            copies[delays.len()] += 1;
            assert!(delays.iter().all(|d| *d <= Duration::from_millis(200)));
        }
        assert!(near(dropped, 0.25), "{dropped}");
        for (k, count) in copies.iter().enumerate().skip(1) {
            assert!(near(*count, 0.75 / 3.0), "{k} copies: {count}");
        }
    }

    #[test]
    fn durations_in_ms_or_s() {
        assert_eq!(
            parse_duration("250ms").ok(),
            Some(Duration::from_millis(250))
        );
        assert_eq!(parse_duration("3s").ok(), Some(Duration::from_secs(3)));
        assert_eq!(
            parse_duration("1.5s").ok(),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(parse_duration("80").ok(), Some(Duration::from_millis(80)));
        for bad in ["", "-1s", "fast", "1e9s", "NaNms"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
