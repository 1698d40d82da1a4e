//! The figures next to their targets, and where the time went.

use std::time::Duration;

use super::db::{self, PgbenchResult};
use super::disk;
use super::probe::{self, Usage};
use super::scenarios::{Batch, Burst, Ceiling, Endpoint, Lateness, APPLY_PATIENCE};
use super::Bench;

/// Everything a run measured.
#[derive(Default)]
pub struct Results {
    machine: String,
    postgres: String,
    disk: String,
    plan: String,
    cores: usize,
    pub pgbench: Option<PgbenchResult>,
    /// pgbench paced at this rate, with its latencies.
    pub pgbench_paced: Option<(f64, PgbenchResult)>,
    /// pgbench flat out again, after the scenarios.
    pub pgbench_end: Option<PgbenchResult>,
    pub pgbench_missing: Option<String>,
    pub intake_small: Option<Endpoint>,
    pub intake_large: Option<Endpoint>,
    pub batch: Option<Batch>,
    pub webhooks: Option<Endpoint>,
    pub deadline_small: Option<Lateness>,
    pub deadline_large: Option<Lateness>,
    /// (pending, (RSS, peak RSS)).
    pub rss_small: Option<(u64, (u64, u64))>,
    pub rss_large: Option<(u64, (u64, u64))>,
    pub burst: Option<Burst>,
    pub burst_limited: Option<Burst>,
    pub burst_ceiling: Option<Ceiling>,
    usages: Vec<(String, Usage)>,
    errors: Vec<(String, String)>,
    pub notes: Vec<String>,
}

/// Targets of the issue.
const INTAKE_RATIO: f64 = 0.5;
const P99_MS: f64 = 20.0;
/// The share of pgbench's maximum at which it is paced for its latency: the
/// rate at which a service just meeting the throughput target (`INTAKE_RATIO`)
/// is asked for its p99 (half its maximum).
pub const PACED_SHARE: f64 = INTAKE_RATIO / 2.0;
const BATCH_PER_SEC: f64 = 50_000.0;
const LATE_P50_MS: f64 = 10.0;
const LATE_P99_MS: f64 = 50.0;
const LATE_MAX_MS: f64 = 250.0;
const BURST_PER_SEC: f64 = 5_000.0;
const FLAT_CHANGE: f64 = 0.2;
const RSS_BYTES: u64 = 100_000_000;
/// The share of a phase the disk's stalls must add up to before the limit
/// column names them: half the requests a p99 leaves out.
const STALLED_SHARE: f64 = 0.005;

/// `per_sec` as a share of `base`'s rate, printed and as a number.
fn share(per_sec: f64, base: Option<&PgbenchResult>) -> (String, Option<f64>) {
    match base {
        Some(p) if p.tps > 0.0 => {
            let r = per_sec / p.tps;
            (format!("{r:.2}"), Some(r))
        }
        _ => ("-".to_owned(), None),
    }
}

struct Row {
    figure: String,
    measured: String,
    target: String,
    vs_pgbench: String,
    result: &'static str,
    cpu: String,
}

fn verdict(ok: Option<bool>) -> &'static str {
    match ok {
        Some(true) => "pass",
        Some(false) => "FAIL",
        None => "-",
    }
}

pub fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 10.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{ms:.0} ms")
    }
}

/// The q-quantile of `sorted`, in milliseconds.
pub fn quantile_ms(sorted: &[Duration], q: f64) -> String {
    super::load::quantile(sorted, q).map_or("-".into(), ms)
}

/// "p50 …, p99 …, max …" of `sorted`.
pub fn spread(sorted: &[Duration]) -> String {
    let q = |q| quantile_ms(sorted, q);
    format!("p50 {}, p99 {}, max {}", q(0.5), q(0.99), q(1.0))
}

fn ms_f(d: Option<Duration>) -> f64 {
    d.map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
}

pub fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

/// 1234567.8 -> "1,234,568".
pub fn thousands(x: f64) -> String {
    let n = x.round() as i64;
    let s = n.abs().to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

pub fn endpoint_line(e: &Endpoint) -> String {
    let mut s = format!(
        "  {}/s at full load ({} errors); at {}/s: {} ({} errors{})",
        thousands(e.max.per_sec()),
        e.max.errors,
        thousands(e.half_rate),
        spread(&e.half.latencies),
        e.half.errors,
        if e.half.shed > 0 {
            format!(", {} shed", e.half.shed)
        } else {
            String::new()
        }
    );
    if let Some(err) = e.max.first_error.as_ref().or(e.half.first_error.as_ref()) {
        s.push_str(&format!("\n  first error: {err}"));
    }
    if e.max.exhausted || e.half.exhausted {
        s.push_str("\n  ran out of prepared targets before the time was up");
    }
    s
}

pub fn lateness_line(l: &Lateness) -> String {
    format!(
        "  {} of {} revoked; lateness {}{}",
        l.revoked,
        l.expected,
        spread(&l.lateness),
        if l.not_registered > 0 {
            format!(" ({} not registered)", l.not_registered)
        } else {
            String::new()
        }
    )
}

pub fn burst_line(b: &Burst) -> String {
    let mut s = format!(
        "  {} revoked, {} SMS accepted ({} created at Twilio) in {}: {} messages/s",
        b.revoked,
        b.sms_accepted,
        b.sms_created,
        b.pipeline
            .map_or("-".into(), |d| format!("{:.1} s", d.as_secs_f64())),
        b.per_sec().map_or("-".into(), thousands),
    );
    let secs = |d: Option<Duration>| d.map_or("-".into(), |d| format!("{:.1} s", d.as_secs_f64()));
    s.push_str(&format!(
        "\n  after the deadline: last DELETE {}, first SMS accepted {}, last {}",
        secs(b.revokes_span),
        secs(b.first_sms),
        secs(b.pipeline)
    ));
    if let Some(l) = &b.limits {
        s.push_str(&format!(
            "\n  limit {}/s, calls as they left the service: DELETEs mean {:.0}/s, most in 1 s {}, \
             bucket excess {:.0}; SMS mean {:.0}/s, most in 1 s {}, bucket excess {:.0}: {}\
             \n  as the emulators received them: DELETEs most in 1 s {}, bucket excess {:.0}; \
             SMS most in a calendar second {}, bucket excess {:.0}",
            l.rate,
            l.left.google.mean,
            l.left.google.max_1s,
            l.left.google.excess,
            l.left.twilio.mean,
            l.left.twilio.max_1s,
            l.left.twilio.excess,
            match (l.honoured(), l.binding()) {
                (true, true) => "honoured",
                (true, false) => "honoured, but the limit did not bind (the pipeline was slower)",
                (false, _) => "NOT honoured",
            },
            l.arrived.google.max_1s,
            l.arrived.google.excess,
            l.arrived.twilio.max_1s,
            l.arrived.twilio.excess,
        ));
    }
    for n in &b.notes {
        s.push_str(&format!("\n  note: {n}"));
    }
    s
}

impl Results {
    pub async fn new(bench: &Bench) -> Results {
        let (cores, model, mem) = probe::machine();
        let p = &bench.plan;
        Results {
            machine: format!(
                "{cores} CPUs ({model}), {:.1} GB memory",
                mem as f64 / 1e9
            ),
            postgres: format!(
                "PostgreSQL {} ({})",
                db::server_version(&bench.pool).await,
                db::settings(&bench.pool).await
            ),
            disk: match &bench.probe.disk {
                Ok(d) => format!(
                    "its WAL on {}, watched for stalls of {} or more",
                    d.device,
                    ms(disk::STALL)
                ),
                Err(why) => format!("its disk not watched ({why})"),
            },
            plan: format!(
                "{} build; concurrency {}, {} s per measurement (+{} s warm-up), backlogs {} and {} \
                 pending, {} deadlines/s for {} s{}, {} messages by :batch, burst {}, rate limit {}/s \
                 (burst of {}){}",
                if cfg!(debug_assertions) {
                    "DEBUG (figures not representative: use cargo run --release -- bench)"
                } else {
                    "release"
                },
                p.concurrency,
                p.duration.as_secs(),
                p.warmup.as_secs(),
                thousands(p.small_pending as f64),
                thousands(p.pending as f64),
                p.deadline_rate,
                p.deadline_secs,
                if p.revoke_only { " (revoke only)" } else { "" },
                thousands(p.batch_messages as f64),
                thousands(p.burst as f64),
                p.rate_limit,
                thousands(p.limited_burst as f64),
                if p.env.is_empty() {
                    String::new()
                } else {
                    format!(
                        "; service settings {}",
                        p.env
                            .iter()
                            .map(|(k, v)| format!("{k}={v}"))
                            .collect::<Vec<_>>()
                            .join(" ")
                    )
                }
            ),
            cores,
            ..Results::default()
        }
    }

    pub fn header(&self) -> String {
        format!(
            "rbm-fallback bench, {}\n  machine: {}\n  {}, {}\n  {}",
            chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
            self.machine,
            self.postgres,
            self.disk,
            self.plan
        )
    }

    /// Where the time went in an endpoint's phases: the pgbench run beside
    /// it, full load, half load; `pending` names the backlog they ran on.
    pub fn endpoint_usages(&mut self, what: &str, pending: Option<u64>, e: &Endpoint) {
        let at = pending.map_or(String::new(), |p| format!(", {p} pending"));
        if let Some((_, u)) = &e.beside {
            self.usage(&format!("pgbench beside {what}{at}"), u.clone());
        }
        self.usage(&format!("{what} max{at}"), e.max_usage.clone());
        self.usage(&format!("{what} half{at}"), e.half_usage.clone());
    }

    pub fn usage(&mut self, phase: &str, u: Usage) {
        self.usages.push((phase.to_owned(), u));
    }

    pub fn error(&mut self, scenario: &str, e: anyhow::Error) {
        println!("  {scenario} could not run: {e:#}");
        self.errors.push((scenario.to_owned(), format!("{e:#}")));
    }

    /// A short guess at the limit, from where the CPU went.
    fn cpu(&self, u: &Usage) -> String {
        let cap = 100.0 * self.cores as f64;
        let idle = u.pct(u.idle);
        let parts = [
            ("service", u.pct(u.service)),
            ("postgres", u.pct(u.postgres)),
            ("load+emulators", u.pct(u.bench)),
            ("other", u.pct(u.other)),
        ];
        let top = parts
            .iter()
            .copied()
            .fold(("", -1.0), |a, b| if b.1 > a.1 { b } else { a });
        let cpu = if idle > 0.25 * cap {
            format!("waits, CPU {:.0}% idle", 100.0 * idle / cap)
        } else {
            format!("CPU ({} {:.0}%)", top.0, top.1)
        };
        // A commit waits for its flush: a stalled disk holds every writer.
        // Named where the stalls add up to enough of the phase for a p99 to
        // fall in them.
        let stalls = u.disk_stalls.as_deref().unwrap_or_default();
        let stalled: Duration = stalls.iter().sum();
        match stalls.first() {
            Some(longest) if stalled.as_secs_f64() >= STALLED_SHARE * u.wall.as_secs_f64() => {
                format!(
                    "{cpu}; disk stalled {} in all (longest {})",
                    ms(stalled),
                    ms(*longest)
                )
            }
            _ => cpu,
        }
    }

    /// `per_sec` as a share of the first pgbench run.
    fn ratio(&self, per_sec: f64) -> (String, Option<f64>) {
        share(per_sec, self.pgbench.as_ref())
    }

    /// `p99` against pgbench's own p99, paced (see [`PACED_SHARE`]).
    fn p99_ratio(&self, p99: Option<Duration>) -> String {
        let paced = self
            .pgbench_paced
            .as_ref()
            .and_then(|(_, p)| super::load::quantile(&p.latencies, 0.99));
        match (p99, paced) {
            (Some(ours), Some(pg)) if !pg.is_zero() => {
                format!("{:.1}", ours.as_secs_f64() / pg.as_secs_f64())
            }
            _ => "-".into(),
        }
    }

    fn endpoint_rows(&self, rows: &mut Vec<Row>, what: &str, e: &Endpoint, backlog: bool) {
        let at = if backlog {
            format!(" ({} pending)", thousands(e.pending as f64))
        } else {
            String::new()
        };
        // Judged against pgbench run right before it where there is one,
        // else against the first run; the share of the first is shown too.
        let per_sec = e.max.per_sec();
        let mut measured = format!("{}/s", thousands(per_sec));
        let (base, beside) = match &e.beside {
            Some((p, _)) => {
                measured.push_str(&format!("; pgbench beside it {}/s", thousands(p.tps)));
                (Some(p), " beside it")
            }
            None => (self.pgbench.as_ref(), ""),
        };
        let (mut ratio, r) = share(per_sec, base);
        if let (Some(_), (first, Some(_))) = (&e.beside, self.ratio(per_sec)) {
            ratio.push_str(&format!(" ({first} of the first)"));
        }
        let target = base.map_or("50% of pgbench".to_owned(), |p| {
            format!(
                "≥ {}/s (50% of pgbench{beside})",
                thousands(p.tps * INTAKE_RATIO)
            )
        });
        rows.push(Row {
            figure: format!("{what} throughput{at}"),
            measured,
            target,
            vs_pgbench: ratio,
            result: verdict(r.map(|r| r >= INTAKE_RATIO)),
            cpu: self.cpu(&e.max_usage),
        });
        let p99 = e.half.quantile(0.99);
        rows.push(Row {
            figure: format!("{what} p99 at {}/s{at}", thousands(e.half_rate)),
            measured: p99.map_or("-".into(), ms),
            target: format!("≤ {P99_MS:.0} ms"),
            vs_pgbench: self.p99_ratio(p99),
            result: verdict(p99.map(|d| ms_f(Some(d)) <= P99_MS && e.half.errors == 0)),
            cpu: self.cpu(&e.half_usage),
        });
    }

    fn lateness_rows(&self, rows: &mut Vec<Row>, l: &Lateness, judged: bool) {
        let at = format!("{} pending", thousands(l.pending as f64));
        let complete = l.revoked == l.expected;
        for (name, q, limit) in [
            ("p50", 0.5, LATE_P50_MS),
            ("p99", 0.99, LATE_P99_MS),
            ("max", 1.0, LATE_MAX_MS),
        ] {
            let v = l.q(q);
            rows.push(Row {
                figure: format!("deadline lateness {name} ({at})"),
                measured: v.map_or("-".into(), ms),
                target: if judged {
                    format!("≤ {limit:.0} ms")
                } else {
                    "-".into()
                },
                vs_pgbench: "-".into(),
                result: if judged {
                    verdict(v.map(|d| ms_f(Some(d)) <= limit && complete))
                } else {
                    "-"
                },
                cpu: self.cpu(&l.usage),
            });
        }
    }

    fn rows(&self) -> Vec<Row> {
        let mut rows = Vec::new();
        if let Some(p) = &self.pgbench {
            rows.push(Row {
                figure: "pgbench single-row INSERT".into(),
                measured: format!("{}/s", thousands(p.tps)),
                target: "baseline".into(),
                vs_pgbench: "1.00".into(),
                result: "-",
                cpu: self
                    .usages
                    .iter()
                    .find(|(n, _)| n == "pgbench")
                    .map_or("-".into(), |(_, u)| self.cpu(u)),
            });
        }
        if let Some((rate, p)) = &self.pgbench_paced {
            let q = |q| quantile_ms(&p.latencies, q);
            rows.push(Row {
                figure: format!("pgbench p99 paced at {}/s", thousands(*rate)),
                measured: format!("{} (p50 {}, max {})", q(0.99), q(0.5), q(1.0)),
                target: "baseline".into(),
                vs_pgbench: "1.0".into(),
                result: "-",
                cpu: "-".into(),
            });
        }
        if let (Some(end), Some(first)) = (&self.pgbench_end, &self.pgbench) {
            // Not a baseline: the ratios stay to the first run. How far
            // the machine drifted under the figures between the two.
            rows.push(Row {
                figure: "pgbench single-row INSERT, again at the end".into(),
                measured: format!("{}/s", thousands(end.tps)),
                target: "-".into(),
                vs_pgbench: format!("{:.2}", end.tps / first.tps),
                result: "-",
                cpu: "-".into(),
            });
        }
        if let Some(e) = &self.intake_small {
            self.endpoint_rows(&mut rows, "intake", e, true);
        }
        if let Some(e) = &self.intake_large {
            self.endpoint_rows(&mut rows, "intake", e, true);
        }
        if let Some(b) = &self.batch {
            let (ratio, _) = self.ratio(b.per_sec);
            rows.push(Row {
                figure: "batch intake (1000 per request)".into(),
                measured: format!("{}/s", thousands(b.per_sec)),
                target: format!("≥ {}/s", thousands(BATCH_PER_SEC)),
                vs_pgbench: ratio,
                result: verdict(Some(b.per_sec >= BATCH_PER_SEC && b.requests.errors == 0)),
                cpu: self.cpu(&b.usage),
            });
        }
        if let Some(e) = &self.webhooks {
            self.endpoint_rows(&mut rows, "webhook ingest", e, false);
            if let Some(a) = &e.applying {
                let outcome = match a.drained {
                    Ok(_) if a.set_aside > 0 => {
                        format!("{} set aside", thousands(a.set_aside as f64))
                    }
                    Ok(after) => format!("all applied {} after the last 200", ms(after)),
                    Err(left) => format!(
                        "{} still waiting {} s after the last 200",
                        thousands(left as f64),
                        APPLY_PATIENCE.as_secs()
                    ),
                };
                rows.push(Row {
                    figure: "webhook events applied after their 200".into(),
                    measured: format!("at most {} waiting; {outcome}", thousands(a.deepest as f64)),
                    target: format!("all, within {} s", APPLY_PATIENCE.as_secs()),
                    vs_pgbench: "-".into(),
                    result: verdict(Some(a.drained.is_ok() && a.set_aside == 0)),
                    cpu: "-".into(),
                });
            }
        }
        if let Some(l) = &self.deadline_small {
            self.lateness_rows(&mut rows, l, self.deadline_large.is_none());
        }
        if let Some(l) = &self.deadline_large {
            self.lateness_rows(&mut rows, l, true);
        }
        if let Some(b) = &self.burst {
            let v = b.per_sec();
            let complete =
                b.sms_accepted as u64 == b.messages && b.sms_created as u64 == b.messages;
            rows.push(Row {
                figure: format!(
                    "burst pipeline, {} at one deadline, unthrottled",
                    thousands(b.messages as f64)
                ),
                measured: v.map_or("-".into(), |v| format!("{}/s", thousands(v))),
                target: format!("≥ {}/s", thousands(BURST_PER_SEC)),
                vs_pgbench: v.map_or("-".into(), |v| self.ratio(v).0),
                result: verdict(v.map(|v| v >= BURST_PER_SEC && complete)),
                cpu: self.cpu(&b.usage),
            });
        }
        if let Some(c) = &self.burst_ceiling {
            rows.push(Row {
                figure: format!(
                    "the burst's database work alone (pgbench, {} messages a statement)",
                    c.batch
                ),
                measured: format!("{}/s", thousands(c.per_sec)),
                target: "-".into(),
                vs_pgbench: self.ratio(c.per_sec).0,
                result: "-",
                cpu: self.cpu(&c.usage),
            });
        }
        if let Some(b) = &self.burst_limited {
            let v = b.per_sec();
            let complete =
                b.sms_accepted as u64 == b.messages && b.sms_created as u64 == b.messages;
            let rate = b.limits.as_ref().map_or(0, |l| l.rate);
            rows.push(Row {
                figure: format!(
                    "burst pipeline, {} at one deadline, limits {}/s",
                    thousands(b.messages as f64),
                    rate
                ),
                measured: v.map_or("-".into(), |v| format!("{}/s", thousands(v))),
                target: "-".into(),
                vs_pgbench: v.map_or("-".into(), |v| self.ratio(v).0),
                result: "-",
                cpu: self.cpu(&b.usage),
            });
            if let Some(l) = &b.limits {
                rows.push(Row {
                    figure: "rate limits honoured under burst".into(),
                    measured: format!(
                        "as they left: DELETE mean {:.0}/s, max {} in 1 s ({} as received); \
                         SMS mean {:.0}/s, max {} in 1 s; {} sent{}",
                        l.left.google.mean,
                        l.left.google.max_1s,
                        l.arrived.google.max_1s,
                        l.left.twilio.mean,
                        l.left.twilio.max_1s,
                        if complete { "all" } else { "NOT all" },
                        if l.binding() {
                            ""
                        } else {
                            "; limit did not bind"
                        }
                    ),
                    target: format!("token bucket {rate}/s + {rate} burst, none dropped"),
                    vs_pgbench: "-".into(),
                    result: verdict(Some(l.honoured() && complete)),
                    cpu: "-".into(),
                });
            }
        }
        if let (Some(a), Some(b)) = (&self.intake_small, &self.intake_large) {
            let (x, y) = (a.max.per_sec(), b.max.per_sec());
            let change = (y - x) / x;
            rows.push(Row {
                figure: "flat cost: intake throughput, large vs small backlog".into(),
                measured: format!("{:+.0}%", 100.0 * change),
                target: format!("within ±{:.0}%", 100.0 * FLAT_CHANGE),
                vs_pgbench: "-".into(),
                result: verdict(Some(change.abs() < FLAT_CHANGE)),
                cpu: "-".into(),
            });
        }
        if let (Some(a), Some(b)) = (&self.deadline_small, &self.deadline_large) {
            for (name, q) in [("p50", 0.5), ("p99", 0.99)] {
                let (x, y) = (ms_f(a.q(q)), ms_f(b.q(q)));
                let change = (y - x) / x;
                rows.push(Row {
                    figure: format!("flat cost: lateness {name}, large vs small backlog"),
                    measured: format!("{:+.0}% ({:.1} → {:.1} ms)", 100.0 * change, x, y),
                    target: format!("within ±{:.0}%", 100.0 * FLAT_CHANGE),
                    vs_pgbench: "-".into(),
                    result: verdict(change.is_finite().then_some(change.abs() < FLAT_CHANGE)),
                    cpu: "-".into(),
                });
            }
        }
        for (rss, label) in [(self.rss_small, "small"), (self.rss_large, "large")] {
            if let Some((p, (now, peak))) = rss {
                let judged = label == "large" || self.rss_large.is_none();
                rows.push(Row {
                    figure: format!("service RSS ({} pending)", thousands(p as f64)),
                    measured: format!("{} (peak {})", mb(now), mb(peak)),
                    target: if judged {
                        format!("≤ {}", mb(RSS_BYTES))
                    } else {
                        "-".into()
                    },
                    vs_pgbench: "-".into(),
                    result: if judged {
                        verdict(Some(peak <= RSS_BYTES))
                    } else {
                        "-"
                    },
                    cpu: "-".into(),
                });
            }
        }
        rows
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str(&self.header());
        out.push_str("\n\n");
        let rows = self.rows();
        let body: Vec<[String; 6]> = rows
            .into_iter()
            .map(|r| {
                [
                    r.figure,
                    r.measured,
                    r.target,
                    r.vs_pgbench,
                    r.result.to_owned(),
                    r.cpu,
                ]
            })
            .collect();
        out.push_str(&table(
            &[
                "figure",
                "measured",
                "target",
                "÷ pgbench",
                "result",
                "limit (CPU view)",
            ],
            &body,
        ));
        out.push_str("\nWhere the time went (CPU in % of one core; ");
        out.push_str(&format!(
            "{}% is the whole machine; disk stalls: spans of {} or more in which the disk under \
             PostgreSQL's WAL completed nothing while requests waited on it):\n\n",
            100 * self.cores,
            ms(disk::STALL)
        ));
        let body: Vec<[String; 13]> = self
            .usages
            .iter()
            .map(|(phase, u)| {
                let others: Vec<String> = u
                    .top_others
                    .iter()
                    .filter(|(_, t)| u.pct(*t) >= 2.0)
                    .map(|(name, t)| format!("{name} {:.0}%", u.pct(*t)))
                    .collect();
                [
                    phase.clone(),
                    format!("{:.1} s", u.wall.as_secs_f64()),
                    format!("{:.0}%", u.pct(u.service)),
                    format!("{:.0}%", u.pct(u.postgres)),
                    format!("{:.0}%", u.pct(u.bench)),
                    format!("{:.0}%", u.pct(u.other)),
                    if others.is_empty() {
                        "-".to_owned()
                    } else {
                        others.join(", ")
                    },
                    format!("{:.0}%", u.pct(u.idle)),
                    format!("{:.0}% / {:.0}%", u.pct(u.irq), u.pct(u.steal)),
                    thousands(u.commits_per_sec()),
                    thousands(u.wal_syncs_per_sec()),
                    format!("{:.1}", u.wal_mb_per_sec()),
                    match &u.disk_stalls {
                        None => "-".to_owned(),
                        Some(s) if s.is_empty() => "0".to_owned(),
                        Some(s) => format!("{}, longest {}", s.len(), ms(s[0])),
                    },
                ]
            })
            .collect();
        out.push_str(&table(
            &[
                "phase",
                "wall",
                "service",
                "postgres",
                "load+emulators",
                "other",
                "busiest others",
                "idle",
                "irq / steal",
                "commits/s",
                "WAL syncs/s",
                "WAL MB/s",
                "disk stalls",
            ],
            &body,
        ));
        let mut notes: Vec<String> = Vec::new();
        if let Some(m) = &self.pgbench_missing {
            notes.push(m.clone());
        }
        for (s, e) in &self.errors {
            notes.push(format!("{s} could not run: {e}"));
        }
        for l in [&self.deadline_small, &self.deadline_large]
            .into_iter()
            .flatten()
        {
            if l.revoked < l.expected {
                notes.push(format!(
                    "deadline at {} pending: {} of {} messages not revoked within 30 s of the last deadline ({} not registered); final states {:?}",
                    l.pending,
                    l.expected - l.revoked,
                    l.expected,
                    l.not_registered,
                    l.states
                ));
            }
        }
        for b in [&self.burst, &self.burst_limited].into_iter().flatten() {
            for n in &b.notes {
                notes.push(format!("burst: {n}"));
            }
            if b.sms_created as u64 != b.messages || b.sms_accepted as u64 != b.messages {
                notes.push(format!(
                    "burst of {}: {} SMS accepted, {} created at Twilio; states {:?}",
                    b.messages, b.sms_accepted, b.sms_created, b.states
                ));
            }
        }
        notes.extend(self.notes.iter().cloned());
        if !notes.is_empty() {
            out.push_str("\nNotes:\n");
            for n in notes {
                out.push_str(&format!("  - {n}\n"));
            }
        }
        out
    }
}

/// A Markdown table; cells that start with a digit, sign or ≤/≥ are
/// right-aligned by padding.
fn table<const N: usize>(header: &[&str; N], rows: &[[String; N]]) -> String {
    let mut widths = header.map(|h| h.chars().count());
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut s = String::from("|");
        for (cell, w) in cells.iter().zip(widths) {
            let pad = w - cell.chars().count();
            s.push_str(&format!(" {}{} |", cell, " ".repeat(pad)));
        }
        s.push('\n');
        s
    };
    let mut out = line(&header.map(str::to_owned));
    out.push('|');
    for w in widths {
        out.push_str(&format!("{}|", "-".repeat(w + 2)));
    }
    out.push('\n');
    for row in rows {
        out.push_str(&line(row));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn number_formats() {
        assert_eq!(thousands(1_234_567.8), "1,234,568");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(-1000.0), "-1,000");
        assert_eq!(ms(Duration::from_micros(2500)), "2.5 ms");
        assert_eq!(ms(Duration::from_millis(42)), "42 ms");
        assert_eq!(mb(45_300_000), "45.3 MB");
    }

    fn pgbench(tps: f64) -> PgbenchResult {
        PgbenchResult {
            tps,
            latency_ms: 1.0,
            transactions: 1,
            latencies: Vec::new(),
        }
    }

    fn endpoint(per_sec: u64, beside: Option<f64>) -> Endpoint {
        let load = |ok| crate::bench::load::LoadResult {
            ok,
            elapsed: Duration::from_secs(1),
            latencies: vec![Duration::from_millis(1); 100],
            ..Default::default()
        };
        Endpoint {
            pending: 10_000,
            beside: beside.map(|tps| (pgbench(tps), Usage::default())),
            max: load(per_sec),
            max_usage: Usage::default(),
            half: load(per_sec / 2),
            half_rate: per_sec as f64 / 2.0,
            half_usage: Usage::default(),
            applying: None,
        }
    }

    /// The throughput is judged against pgbench run beside it, the first
    /// run's share shown too; without one, against the first run.
    #[test]
    fn throughput_is_judged_against_pgbench_beside_it() {
        let r = Results {
            pgbench: Some(pgbench(20_000.0)),
            ..Default::default()
        };
        let mut rows = Vec::new();
        r.endpoint_rows(&mut rows, "intake", &endpoint(6_000, Some(10_000.0)), false);
        assert_eq!(rows[0].vs_pgbench, "0.60 (0.30 of the first)");
        assert_eq!(rows[0].result, "pass");
        assert!(rows[0].target.contains("≥ 5,000/s"), "{}", rows[0].target);
        assert!(rows[0].measured.contains("beside it 10,000/s"));

        let mut rows = Vec::new();
        r.endpoint_rows(&mut rows, "intake", &endpoint(6_000, None), false);
        assert_eq!(rows[0].vs_pgbench, "0.30");
        assert_eq!(rows[0].result, "FAIL");
    }

    /// The limit column names the disk's stalls only where they add up to
    /// enough of the phase for a p99 to fall in them.
    #[test]
    fn stalls_are_named_where_they_add_up() {
        let r = Results {
            cores: 2,
            ..Default::default()
        };
        let phase = |stalls: &[u64]| Usage {
            wall: Duration::from_secs(10),
            service: 19.0,
            disk_stalls: Some(stalls.iter().map(|&m| Duration::from_millis(m)).collect()),
            ..Default::default()
        };
        assert_eq!(r.cpu(&phase(&[])), "CPU (service 190%)");
        // 40 ms of 10 s: under half the 1% a p99 leaves out.
        assert_eq!(r.cpu(&phase(&[40])), "CPU (service 190%)");
        assert_eq!(
            r.cpu(&phase(&[120, 40])),
            "CPU (service 190%); disk stalled 160 ms in all (longest 120 ms)"
        );
    }

    #[test]
    fn tables_line_up() {
        let t = table(&["a", "bb"], &[["xyz".to_owned(), "1".to_owned()]]);
        assert_eq!(t, "| a   | bb |\n|-----|----|\n| xyz | 1  |\n");
    }
}
