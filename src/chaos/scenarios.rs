//! The fault scenarios. Each runs real `rbm-fallback serve` processes
//! against the emulators and a database of its own, and returns what it
//! found as table rows.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sqlx::PgPool;
use tokio::time::Instant;

use super::monitor::{self, Claim, ReadyWatch};
use super::population::{
    self, describe, judge, Endpoints, Ground, Judgement, Mix, Observed, Planned, Timing, Tracked,
    Trouble, FULL_MIX, OFFLINE_MIX, OUTAGE_MIX, SMS_MIX,
};
use super::{Config, Report};
use crate::emulator::{parse_faults, GoogleFaults, TwilioFaults};
use crate::sandbox::{self, Rig, SandboxConfig, ServiceProcess};

/// The scenarios, in the order they run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    Faults,
    Crash,
    Replicas,
    PostgresRestart,
    Outage,
    AmbiguousSms,
}

impl Scenario {
    pub const ALL: [Scenario; 6] = [
        Scenario::Faults,
        Scenario::Crash,
        Scenario::Replicas,
        Scenario::PostgresRestart,
        Scenario::Outage,
        Scenario::AmbiguousSms,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Faults => "faults",
            Scenario::Crash => "crash",
            Scenario::Replicas => "replicas",
            Scenario::PostgresRestart => "postgres-restart",
            Scenario::Outage => "outage",
            Scenario::AmbiguousSms => "ambiguous-sms",
        }
    }

    pub fn parse(name: &str) -> anyhow::Result<Scenario> {
        Scenario::ALL
            .into_iter()
            .find(|s| s.name() == name)
            .ok_or_else(|| {
                let known: Vec<_> = Scenario::ALL.iter().map(|s| s.name()).collect();
                anyhow::anyhow!("unknown scenario {name:?} (known: {})", known.join(", "))
            })
    }
}

/// Durations a run is built on; `--quick` shrinks them.
#[derive(Clone, Debug)]
pub struct Scale {
    pub timing: Timing,
    /// Registrations of the progressive scenarios spread over this long.
    pub register_over: Duration,
    /// The service's RBM and Twilio timeouts.
    pub timeout: Duration,
    /// Leases: short where processes die (and must be taken over), and the
    /// ordinary one elsewhere.
    pub crash_lease: Duration,
    pub lease: Duration,
    /// How long an injected hang holds a request.
    pub hang_for: Duration,
    pub webhook_delay: Duration,
    pub callback_delay: Duration,
    /// Google and Twilio outages.
    pub outage: Duration,
    /// How long the database stays down.
    pub db_outage: Duration,
    /// How long a killed process stays down, at most.
    pub max_down: Duration,
    /// The longest a run may take to settle after its last registration.
    pub settle_limit: Duration,
}

impl Scale {
    pub fn new(quick: bool) -> Scale {
        let ms = Duration::from_millis;
        if quick {
            Scale {
                timing: Timing {
                    window: ms(2000),
                    deadline_min: ms(2500),
                    deadline_spread: ms(2000),
                    ttl_gap: ms(2000),
                    online_delay: ms(300),
                },
                register_over: ms(2500),
                timeout: ms(800),
                crash_lease: ms(2000),
                lease: ms(3000),
                hang_for: ms(1500),
                webhook_delay: ms(200),
                callback_delay: ms(200),
                outage: ms(5000),
                db_outage: ms(2000),
                max_down: ms(800),
                settle_limit: Duration::from_secs(90),
            }
        } else {
            Scale {
                timing: Timing {
                    window: ms(3000),
                    deadline_min: ms(4000),
                    deadline_spread: ms(10_000),
                    ttl_gap: ms(3000),
                    online_delay: ms(1000),
                },
                register_over: ms(12_000),
                timeout: ms(1500),
                crash_lease: ms(3000),
                lease: ms(5000),
                hang_for: ms(3000),
                webhook_delay: ms(500),
                callback_delay: ms(300),
                outage: ms(20_000),
                db_outage: ms(8000),
                max_down: ms(1500),
                settle_limit: Duration::from_secs(240),
            }
        }
    }
}

/// Slow answers from both upstreams (no failures): claims stay held long
/// enough that a kill finds some in flight.
fn slow(cfg: &Config) -> (GoogleFaults, TwilioFaults) {
    let latency = Duration::from_millis(400);
    (
        GoogleFaults {
            seed: cfg.seed,
            latency,
            ..GoogleFaults::default()
        },
        TwilioFaults {
            seed: cfg.seed.wrapping_add(1),
            latency,
            ..TwilioFaults::default()
        },
    )
}

/// The default faults of the `faults` scenario.
pub fn default_faults(cfg: &Config, scale: &Scale) -> (GoogleFaults, TwilioFaults) {
    let google = GoogleFaults {
        seed: cfg.seed,
        error_rate: 0.15,
        hang_rate: 0.03,
        hang_for: scale.hang_for,
        reset_rate: 0.03,
        latency: Duration::from_millis(100),
        unavailable: false,
        webhook_duplicates: 3,
        webhook_delay: scale.webhook_delay,
        webhook_drop_rate: 0.03,
    };
    let twilio = TwilioFaults {
        seed: cfg.seed.wrapping_add(1),
        error_rate: 0.15,
        hang_rate: 0.03,
        hang_for: scale.hang_for,
        reset_rate: 0.03,
        response_lost_rate: 0.05,
        latency: Duration::from_millis(100),
        unavailable: false,
        callback_duplicates: 2,
        callback_delay: scale.callback_delay,
        callback_drop_rate: 0.03,
    };
    (google, twilio)
}

pub async fn run(scenario: Scenario, cfg: &Config) -> anyhow::Result<Vec<Report>> {
    let scale = Scale::new(cfg.quick);
    match scenario {
        Scenario::Faults => faults(cfg, &scale).await,
        Scenario::Crash => crash(cfg, &scale).await,
        Scenario::Replicas => replicas(cfg, &scale).await,
        Scenario::PostgresRestart => postgres_restart(cfg, &scale).await,
        Scenario::Outage => outage(cfg, &scale).await,
        Scenario::AmbiguousSms => ambiguous_sms(cfg, &scale).await,
    }
}

// ---------------------------------------------------------------------------
// The stage every scenario runs on

struct Stage {
    rig: Arc<Rig>,
    db_url: String,
    pool: PgPool,
    api: reqwest::Client,
    procs: Vec<ServiceProcess>,
    timing: Timing,
    rng: StdRng,
    excluded: Vec<population::Class>,
}

fn service_env(scale: &Scale, lease: Duration) -> Vec<(String, String)> {
    let ms = |d: Duration| d.as_millis().to_string();
    [
        ("RBMF__WORKER__LEASE_MS", ms(lease)),
        ("RBMF__RBM__TIMEOUT_MS", ms(scale.timeout)),
        ("RBMF__TWILIO__TIMEOUT_MS", ms(scale.timeout)),
        ("RBMF__WORKER__RETRY_BASE_MS", "200".to_owned()),
        ("RBMF__WORKER__RETRY_CAP_MS", "2000".to_owned()),
        ("RBMF__WORKER__MAX_IDLE_MS", "200".to_owned()),
        ("RBMF__SERVER__SHUTDOWN_GRACE_MS", "1000".to_owned()),
        (
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info,sqlx=warn,tower_http=warn".into()),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// A fresh database, the emulators, and `replicas` service processes
/// (ready), with Google's webhook taking turns over them.
async fn stage(
    cfg: &Config,
    name: &'static str,
    scale: &Scale,
    env: Vec<(String, String)>,
    replicas: usize,
) -> anyhow::Result<Stage> {
    let mut url = reqwest::Url::parse(&cfg.server_url).context("the database URL")?;
    let db = format!(
        "rbmf_chaos_{}_{:08x}",
        name.replace('-', "_"),
        rand::random::<u32>()
    );
    url.set_path(&format!("/{db}"));
    let db_url = url.to_string();
    sandbox::ensure_database(&db_url).await?;
    match stage_on(cfg, name, scale, env, replicas, &db_url).await {
        Ok(s) => Ok(s),
        Err(e) => {
            let _ = sandbox::drop_database(&db_url).await;
            Err(e)
        }
    }
}

async fn stage_on(
    cfg: &Config,
    name: &'static str,
    scale: &Scale,
    env: Vec<(String, String)>,
    replicas: usize,
    db_url: &str,
) -> anyhow::Result<Stage> {
    let mut sc = SandboxConfig::new(db_url);
    sc.confirm_window = scale.timing.window;
    sc.env = env;
    // Google retries for days; enough tries here to outlast any outage a
    // scenario causes.
    sc.webhook_max_attempts = 200;
    sc.webhook_retry_cap = Duration::from_millis(500);
    sc.seed = cfg.seed;
    let rig = Arc::new(Rig::start(&sc).await?);
    let mut s = Stage {
        api: rig.api(),
        rig,
        pool: monitor::connect(db_url).await?,
        db_url: db_url.to_owned(),
        procs: Vec::new(),
        timing: scale.timing.clone(),
        rng: StdRng::seed_from_u64(cfg.seed ^ seed_of(name)),
        excluded: cfg.exclude.clone(),
    };
    for _ in 0..replicas.max(1) {
        let mut p = s.rig.spawn_process(&cfg.exe, 0)?;
        p.wait_ready(Duration::from_secs(60)).await?;
        s.procs.push(p);
    }
    let hooks: Vec<String> = s
        .procs
        .iter()
        .map(|p| format!("{}/webhooks/rbm", p.url))
        .collect();
    s.rig.google.set_webhook_urls(&hooks);
    Ok(s)
}

fn seed_of(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

impl Stage {
    fn endpoints(&mut self) -> Arc<Endpoints> {
        let live = self
            .procs
            .iter_mut()
            .filter_map(|p| p.is_running().then(|| p.url.clone()))
            .collect();
        Endpoints::new(live)
    }

    fn plan(&mut self, n: usize, first: usize, mix: Mix) -> Vec<Planned> {
        population::plan(n, first, mix, &self.excluded, &self.timing, &mut self.rng)
    }

    /// Registers in the background, `parallel` at a time, paced over `over`.
    fn register(
        &mut self,
        planned: Vec<Planned>,
        over: Duration,
    ) -> tokio::task::JoinHandle<anyhow::Result<population::Registrations>> {
        let pace = if planned.is_empty() {
            Duration::ZERO
        } else {
            over / planned.len() as u32
        };
        let endpoints = self.endpoints();
        tokio::spawn(population::register_all(
            self.rig.clone(),
            self.api.clone(),
            endpoints,
            self.timing.clone(),
            planned,
            16,
            pace,
        ))
    }

    async fn settle(&self, limit: Duration) -> bool {
        monitor::settled(&self.pool, &self.rig, limit).await
    }

    async fn observe(&mut self, tracked: &[Tracked]) -> Vec<Option<Observed>> {
        let endpoints = self.endpoints();
        population::observe(&self.api, &endpoints, tracked).await
    }

    async fn teardown(mut self) {
        for p in &mut self.procs {
            p.kill();
        }
        self.pool.close().await;
        if let Err(e) = sandbox::drop_database(&self.db_url).await {
            tracing::warn!(error = %e, "could not drop the chaos database");
        }
    }
}

/// Builds a report row from a judgement.
fn report(
    row: &str,
    tracked: &[Tracked],
    observed: &[Option<Observed>],
    ground: &Ground,
    trouble: Trouble,
    recovery: Option<Duration>,
) -> Report {
    let j: Judgement = judge(tracked, observed, ground, trouble);
    let mut r = Report::new(row);
    r.messages = tracked.len();
    r.expected = j.expected.clone();
    r.actual = j.actual.clone();
    r.lost = j.lost.len();
    r.duplicate_sms = j.duplicate_sms.len();
    r.recovery = recovery;
    if !j.lost_by_class.is_empty() {
        let by: Vec<String> = j
            .lost_by_class
            .iter()
            .map(|(c, n)| format!("{n} {}", c.name()))
            .collect();
        r.notes
            .push(format!("lost by phone behaviour: {}", by.join("; ")));
    }
    let sends = ground.send_counts(tracked);
    if sends.messages > 0 {
        let by: Vec<String> = j
            .send_outcomes
            .iter()
            .map(|(c, outcomes)| {
                let o: Vec<String> = outcomes.iter().map(|(k, n)| format!("{k} {n}")).collect();
                format!("{} {}", c.name(), o.join(" "))
            })
            .collect();
        r.notes.push(format!(
            "{} messages in send mode ({}): {} sends to Google ({} answered 404, {} answers \
             lost), {} messages held by Google",
            sends.messages,
            by.join("; "),
            sends.sends,
            sends.not_found,
            sends.lost,
            sends.at_google
        ));
    }
    if j.untold_expiries > 0 {
        r.notes.push(format!(
            "{} message(s) whose TTL expired ended rcs: Google's TTL_EXPIRATION_REVOKED never \
             reached the service (dropped by the faults), so the revoke's 404 read as delivered",
            j.untold_expiries
        ));
    }
    let mut shown = std::collections::HashSet::new();
    let mut show = |i: usize, why: &str, r: &mut Report| {
        if shown.insert(i) && r.details.len() < 8 {
            r.details.push(format!(
                "{why}: {}",
                describe(&tracked[i], observed[i].as_ref(), ground, trouble)
            ));
        }
    };
    for &i in &j.lost {
        show(i, "lost", &mut r);
    }
    for &i in &j.duplicate_sms {
        show(i, "duplicate SMS", &mut r);
    }
    for (i, v) in &j.violations {
        r.violations
            .push(format!("{}: {v}", tracked[*i].message_id));
        show(*i, v, &mut r);
    }
    r
}

fn rng_between(rng: &mut StdRng, lo: Duration, hi: Duration) -> Duration {
    let (lo, hi) = (lo.as_millis() as u64, hi.as_millis() as u64);
    Duration::from_millis(rng.gen_range(lo..=hi.max(lo)))
}

/// Claims held when a process was killed, and what became of them.
struct Takeovers {
    /// Claims the killed process left behind, taken over by a new attempt.
    taken: usize,
    /// Of those, taken over within one lease of becoming free.
    within_lease: usize,
    /// The latest and the earliest such attempt, relative to the moment the
    /// claim became free (its lease expired, and a process was up to take
    /// it). Negative: taken over before the lease expired.
    latest: chrono::TimeDelta,
    earliest: chrono::TimeDelta,
}

/// `claims` were read at `seen_at`, just before a kill; `live_again` is when
/// a process could take them over. A claim counts as abandoned and taken
/// over when the first thing that happens to its message after `seen_at` is
/// a new attempt at the same step (not a result, nor a webhook).
fn takeovers(
    lease: Duration,
    claims: &[Claim],
    seen_at: DateTime<Utc>,
    live_again: DateTime<Utc>,
    tracked: &[Tracked],
    observed: &[Option<Observed>],
) -> Takeovers {
    let lease = chrono::TimeDelta::from_std(lease).unwrap_or_default();
    let mut t = Takeovers {
        taken: 0,
        within_lease: 0,
        latest: chrono::TimeDelta::zero(),
        earliest: chrono::TimeDelta::zero(),
    };
    for c in claims {
        let Some(i) = tracked.iter().position(|t| t.message_id == c.message_id) else {
            continue;
        };
        let Some(o) = &observed[i] else { continue };
        let Some((at, kind)) = o.events.iter().find(|(at, _)| *at > seen_at) else {
            continue;
        };
        let same_step = match c.state.as_str() {
            "rcs_sending" => kind == "rcs_send_attempt",
            "revoking" => kind == "revoke_attempt",
            "sms_sending" => kind == "sms_attempt",
            _ => false,
        };
        if !same_step {
            continue;
        }
        let late = *at - c.expiry.max(live_again);
        t.latest = if t.taken == 0 {
            late
        } else {
            t.latest.max(late)
        };
        t.earliest = if t.taken == 0 {
            late
        } else {
            t.earliest.min(late)
        };
        t.taken += 1;
        if late <= lease {
            t.within_lease += 1;
        }
    }
    t
}

impl Takeovers {
    fn merge(&mut self, other: Takeovers) {
        if other.taken == 0 {
            return;
        }
        if self.taken == 0 {
            *self = other;
            return;
        }
        self.taken += other.taken;
        self.within_lease += other.within_lease;
        self.latest = self.latest.max(other.latest);
        self.earliest = self.earliest.min(other.earliest);
    }

    /// The note and the violations for a report.
    /// The note and the violations for a report. How late a claim is
    /// taken over after its lease expired depends on the work due before it
    /// (everything whose deadline passed while no process ran); taken over
    /// before its lease expired would mean two workers on one call.
    fn judge(&self, lease: Duration, r: &mut Report) {
        r.notes.push(format!(
            "{} claims left by killed processes were taken over, {:.2} to {:.2} s after their \
             lease (of {}) expired; {} of them within one more lease, the rest waited behind \
             older due work",
            self.taken,
            self.earliest.as_seconds_f64(),
            self.latest.as_seconds_f64(),
            secs(lease),
            self.within_lease,
        ));
        // The database clock decides both; allow for rounding.
        if self.taken > 0 && self.earliest < chrono::TimeDelta::milliseconds(-50) {
            r.violations.push(format!(
                "a claim was taken over {:.2} s before its lease expired",
                -self.earliest.as_seconds_f64()
            ));
        }
    }
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

// ---------------------------------------------------------------------------
// a. faults

async fn faults(cfg: &Config, scale: &Scale) -> anyhow::Result<Vec<Report>> {
    let (mut google, mut twilio) = default_faults(cfg, scale);
    if let Some(spec) = &cfg.faults {
        parse_faults(spec, &mut google, &mut twilio)?;
    }
    let env = service_env(scale, scale.lease);
    let mut s = stage(cfg, "faults", scale, env, 1).await?;
    let result = async {
        s.rig.google.set_faults(google.clone());
        s.rig.twilio.set_faults(twilio.clone());
        let planned = s.plan(cfg.messages, 0, FULL_MIX);
        let (tracked, regs) = s.register(planned, Duration::ZERO).await??.split();
        let settled = s.settle(scale.settle_limit).await;
        // Judge with the faults off, so reading back is not disturbed.
        s.rig.google.set_faults(GoogleFaults::default());
        s.rig.twilio.set_faults(TwilioFaults::default());
        let observed = s.observe(&tracked).await;
        let ground = Ground::collect(&s.rig);
        let trouble = Trouble {
            disruptions: false,
            late_sms: !twilio.is_none() || google.hang_rate > 0.0 || google.reset_rate > 0.0,
        };
        let mut r = report("faults", &tracked, &observed, &ground, trouble, None);
        regs.annotate(&mut r);
        r.notes.push(format!("google faults: {google}"));
        r.notes.push(format!("twilio faults: {twilio}"));
        r.notes.push(format!(
            "{} DELETEs and {} Twilio requests for {} messages; {} webhooks and {} status \
             callbacks dropped by the faults",
            s.rig.google.revokes().len(),
            s.rig.twilio.requests(),
            tracked.len(),
            s.rig.google.webhooks_dropped().len(),
            s.rig.twilio.callbacks_dropped().len()
        ));
        if !settled {
            r.violations.push("the run did not settle in time".into());
        }
        Ok(vec![r])
    }
    .await;
    s.teardown().await;
    result
}

// ---------------------------------------------------------------------------
// b. crash

async fn crash(cfg: &Config, scale: &Scale) -> anyhow::Result<Vec<Report>> {
    let env = service_env(scale, scale.crash_lease);
    let mut s = stage(cfg, "crash", scale, env, 1).await?;
    let result = async {
        let (google, twilio) = slow(cfg);
        s.rig.google.set_faults(google);
        s.rig.twilio.set_faults(twilio);
        let planned = s.plan(cfg.messages, 0, FULL_MIX);
        let kills = cfg.kills.max(1);
        // Registrations go on through the kills, so that every kill finds
        // work falling due, some registrations fail, and claims are held.
        let over = (scale.register_over * kills as u32 / 2).max(scale.register_over);
        let registering = s.register(planned, over);
        tokio::time::sleep(scale.timing.deadline_min * 3 / 4).await;
        let mut recovery = Duration::ZERO;
        let mut undrained = 0;
        let mut recoveries = Vec::new();
        let mut claims_at_kill = Vec::new();
        let mut backlogs = Vec::new();
        let mut downtimes = Vec::new();
        for _ in 0..kills {
            // A random moment, once the previous kill's backlog has drained.
            let pause = rng_between(&mut s.rng, Duration::from_millis(200), scale.max_down);
            tokio::time::sleep(pause).await;
            let backlog = monitor::backlog(&s.pool).await.unwrap_or_default();
            let claims = monitor::claims(&s.pool).await.unwrap_or_default();
            let seen_at = Utc::now();
            let killed = Instant::now();
            s.procs[0].kill();
            let down = rng_between(&mut s.rng, Duration::from_millis(200), scale.max_down);
            tokio::time::sleep(down).await;
            // From here a process may take the claims over (even before
            // /readyz says so).
            let restarted_at = Utc::now();
            let restarting = Instant::now();
            s.procs[0].start()?;
            s.procs[0].wait_ready(Duration::from_secs(60)).await?;
            downtimes.push(format!(
                "{:.1}+{:.1}",
                down.as_secs_f64(),
                restarting.elapsed().as_secs_f64()
            ));
            backlogs.push(backlog.len());
            claims_at_kill.push((claims, seen_at, restarted_at));
            match monitor::drained(&s.pool, backlog, killed, Duration::from_secs(120)).await {
                Some(d) => {
                    recovery = recovery.max(d);
                    recoveries.push(format!("{:.1}", d.as_secs_f64()));
                }
                None => {
                    undrained += 1;
                    recoveries.push("-".into());
                }
            }
        }
        let (tracked, regs) = registering.await??.split();
        let settled = s.settle(scale.settle_limit).await;
        let observed = s.observe(&tracked).await;
        let ground = Ground::collect(&s.rig);
        let trouble = Trouble {
            disruptions: true,
            late_sms: true,
        };
        let mut r = report(
            "crash",
            &tracked,
            &observed,
            &ground,
            trouble,
            Some(recovery),
        );
        regs.annotate(&mut r);
        let mut all = Takeovers {
            taken: 0,
            within_lease: 0,
            latest: chrono::TimeDelta::zero(),
            earliest: chrono::TimeDelta::zero(),
        };
        for (claims, seen_at, restarted_at) in &claims_at_kill {
            all.merge(takeovers(
                scale.crash_lease,
                claims,
                *seen_at,
                *restarted_at,
                &tracked,
                &observed,
            ));
        }
        r.notes.push(format!(
            "{kills} SIGKILLs; at each: open work {backlogs:?} messages, claims held {:?}, \
             down+restart {} s, open work drained after {} s",
            claims_at_kill.iter().map(|c| c.0.len()).collect::<Vec<_>>(),
            downtimes.join(", "),
            recoveries.join(", "),
        ));
        all.judge(scale.crash_lease, &mut r);
        if undrained > 0 || !settled {
            r.violations.push("the run did not settle in time".into());
        }
        Ok(vec![r])
    }
    .await;
    s.teardown().await;
    result
}

// ---------------------------------------------------------------------------
// c. replicas

async fn replicas(cfg: &Config, scale: &Scale) -> anyhow::Result<Vec<Report>> {
    let n = cfg.replicas.max(2);
    let env = service_env(scale, scale.crash_lease);
    let mut s = stage(cfg, "replicas", scale, env, n).await?;
    let result = async {
        let (google, twilio) = slow(cfg);
        s.rig.google.set_faults(google);
        s.rig.twilio.set_faults(twilio);
        let planned = s.plan(cfg.messages, 0, FULL_MIX);
        let registering = s.register(planned, scale.register_over);
        // Mid-run: half the registrations in, and the first deadlines passed.
        let at = scale.register_over / 2 + scale.timing.deadline_min;
        tokio::time::sleep(at).await;
        let backlog = monitor::backlog(&s.pool).await.unwrap_or_default();
        let claims = monitor::claims(&s.pool).await.unwrap_or_default();
        let seen_at = Utc::now();
        let killed = Instant::now();
        let killed_at = Utc::now();
        let victim = n - 1;
        s.procs[victim].kill();
        // A load balancer's health check takes the dead replica out.
        let hooks: Vec<String> = s.procs[..victim]
            .iter()
            .map(|p| format!("{}/webhooks/rbm", p.url))
            .collect();
        s.rig.google.set_webhook_urls(&hooks);
        let pool = s.pool.clone();
        let drain = tokio::spawn(async move {
            monitor::drained(&pool, backlog, killed, Duration::from_secs(180)).await
        });
        let (tracked, regs) = registering.await??.split();
        let settled = s.settle(scale.settle_limit).await;
        let recovery = drain.await?;
        let observed = s.observe(&tracked).await;
        let ground = Ground::collect(&s.rig);
        let trouble = Trouble {
            disruptions: true,
            late_sms: true,
        };
        let row = format!("replicas ({n}, 1 killed)");
        let mut r = report(&row, &tracked, &observed, &ground, trouble, recovery);
        regs.annotate(&mut r);
        r.notes.push(format!(
            "{} claims held at the kill (all replicas); {} DELETEs, {} SMS",
            claims.len(),
            s.rig.google.revokes().len(),
            s.rig.twilio.messages().len()
        ));
        takeovers(
            scale.crash_lease,
            &claims,
            seen_at,
            killed_at,
            &tracked,
            &observed,
        )
        .judge(scale.crash_lease, &mut r);
        if recovery.is_none() || !settled {
            r.violations.push("the run did not settle in time".into());
        }
        Ok(vec![r])
    }
    .await;
    s.teardown().await;
    result
}

// ---------------------------------------------------------------------------
// d. postgres-restart

/// The local Debian cluster serving `url`: (version, name), if there is one.
fn local_cluster(url: &str) -> Result<(String, String), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| e.to_string())?;
    let host = parsed.host_str().unwrap_or("");
    if !matches!(host, "127.0.0.1" | "localhost" | "::1" | "[::1]") {
        return Err(format!("the database server {host} is not local"));
    }
    let port = parsed.port().unwrap_or(5432).to_string();
    let out = std::process::Command::new("pg_lsclusters")
        .arg("--no-header")
        .output()
        .map_err(|_| "pg_lsclusters is not available (not a Debian PostgreSQL)".to_owned())?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() >= 4 && f[2] == port && f[3].starts_with("online"))
        .map(|f| (f[0].to_owned(), f[1].to_owned()))
        .ok_or_else(|| format!("no local cluster online on port {port}"))
}

async fn pg_ctl(version: &str, cluster: &str, action: &str) -> anyhow::Result<()> {
    let args = [
        "--skip-systemctl-redirect".to_owned(),
        version.to_owned(),
        cluster.to_owned(),
        action.to_owned(),
    ];
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("pg_ctlcluster")
            .args(&args)
            .output()
    })
    .await??;
    anyhow::ensure!(
        out.status.success(),
        "pg_ctlcluster {action} failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

async fn postgres_restart(cfg: &Config, scale: &Scale) -> anyhow::Result<Vec<Report>> {
    let (version, cluster) = match local_cluster(&cfg.server_url) {
        Ok(c) => c,
        Err(why) => {
            let mut r = Report::new("postgres-restart");
            r.skipped = Some(why);
            return Ok(vec![r]);
        }
    };
    let env = service_env(scale, scale.lease);
    let mut s = stage(cfg, "postgres-restart", scale, env, 1).await?;
    let result = async {
        let planned = s.plan(cfg.messages, 0, FULL_MIX);
        let registering = s.register(planned, scale.register_over);
        tokio::time::sleep(scale.register_over * 2 / 5).await;
        let watch = ReadyWatch::start(&s.procs[0].url);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let stop_at = Utc::now();
        pg_ctl(&version, &cluster, "stop").await?;
        let stopped_at = Utc::now();
        tokio::time::sleep(scale.db_outage).await;
        let start_at = Utc::now();
        pg_ctl(&version, &cluster, "start").await?;
        let started = Instant::now();
        let started_at = Utc::now();
        // The backlog as the database comes back.
        let backlog = loop {
            match monitor::backlog(&s.pool).await {
                Ok(b) => break b,
                Err(_) if started.elapsed() < Duration::from_secs(30) => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Err(e) => return Err(e),
            }
        };
        let drained =
            monitor::drained(&s.pool, backlog.clone(), started, Duration::from_secs(180)).await;
        let (tracked, regs) = registering.await??.split();
        let settled = s.settle(scale.settle_limit).await;
        let ready = watch.finish().await;
        let observed = s.observe(&tracked).await;
        let ground = Ground::collect(&s.rig);
        let trouble = Trouble {
            disruptions: true,
            late_sms: true,
        };
        let mut r = report(
            "postgres-restart",
            &tracked,
            &observed,
            &ground,
            trouble,
            drained,
        );
        regs.annotate(&mut r);
        // What /readyz said while the database was surely down.
        // Polls sent while the database was surely down, and what they got.
        let during: Vec<&monitor::Poll> = ready
            .iter()
            .filter(|p| p.sent > stopped_at && p.sent < start_at)
            .collect();
        let unavailable = during.iter().filter(|p| p.status == 503).count();
        let took = |p: &monitor::Poll| chrono::TimeDelta::from_std(p.took).unwrap_or_default();
        // A 200 answered before the database was even being started.
        let ok_while_down = during
            .iter()
            .filter(|p| p.status == 200 && p.sent + took(p) < start_at)
            .count();
        let polls: Vec<String> = during
            .iter()
            .map(|p| {
                format!(
                    "{} after {:.1} s",
                    match p.status {
                        0 => "no answer".to_owned(),
                        s => s.to_string(),
                    },
                    p.took.as_secs_f64()
                )
            })
            .collect();
        let back = ready
            .iter()
            .find(|p| p.sent > started_at && p.status == 200)
            .map(|p| (p.sent - started_at).as_seconds_f64());
        r.notes.push(format!(
            "cluster {version}/{cluster} stopped {:.1} s after the stop began and stayed down \
             {}; /readyz polls sent meanwhile: {}; ready again {} after the start",
            (stopped_at - stop_at).as_seconds_f64(),
            secs(scale.db_outage),
            if polls.is_empty() {
                "none".to_owned()
            } else {
                polls.join(", ")
            },
            back.map(|b| format!("{b:.1} s"))
                .unwrap_or_else(|| "never seen".into())
        ));
        if ok_while_down > 0 {
            r.violations.push(format!(
                "/readyz answered 200 {ok_while_down} times while the database was down"
            ));
        }
        if !during.is_empty() && unavailable == 0 {
            r.violations
                .push("/readyz never answered 503 while the database was down".into());
        }
        // Webhooks: refused while the database was down, every one accepted later.
        let margin = chrono::TimeDelta::milliseconds(300);
        let attempts = s.rig.google.webhook_attempts();
        let in_outage: Vec<_> = attempts
            .iter()
            .filter(|a| a.at > stopped_at + margin && a.at < start_at)
            .collect();
        let acked = in_outage.iter().filter(|a| a.status == Some(200)).count();
        let given_up = s
            .rig
            .google
            .webhooks_sent()
            .iter()
            .filter(|w| w.status != Some(200))
            .count();
        r.notes.push(format!(
            "{} webhook tries during the outage, {} of them answered non-200 (Google retries \
             them); {given_up} webhooks given up",
            in_outage.len(),
            in_outage.len() - acked
        ));
        if acked > 0 {
            r.violations.push(format!(
                "{acked} webhooks answered 200 while the database was down"
            ));
        }
        if given_up > 0 {
            r.violations
                .push(format!("{given_up} webhooks never answered 200"));
        }
        if drained.is_none() || !settled {
            r.violations.push("the run did not settle in time".into());
        }
        Ok(vec![r])
    }
    .await;
    if result.is_err() {
        // Never leave the server down.
        let _ = pg_ctl(&version, &cluster, "start").await;
    }
    s.teardown().await;
    result
}

// ---------------------------------------------------------------------------
// e. outage

/// The most attempts one message can make within `d` when every attempt
/// fails: each retry waits at least half its un-jittered back-off (the
/// service's equal jitter), doubling from `base` up to `cap`.
pub fn max_attempts(d: Duration, base: Duration, cap: Duration) -> usize {
    let mut waited = Duration::ZERO;
    let mut n = 1usize;
    loop {
        let exp = (n as u32 - 1).min(30);
        let full = base.saturating_mul(1u32 << exp).min(cap);
        waited += full / 2;
        if waited > d {
            return n;
        }
        n += 1;
    }
}

async fn outage(cfg: &Config, scale: &Scale) -> anyhow::Result<Vec<Report>> {
    let base = Duration::from_millis(500);
    let cap = Duration::from_secs(8);
    let mut env = service_env(scale, scale.lease);
    env.push((
        "RBMF__WORKER__RETRY_BASE_MS".into(),
        base.as_millis().to_string(),
    ));
    env.push((
        "RBMF__WORKER__RETRY_CAP_MS".into(),
        cap.as_millis().to_string(),
    ));
    let mut s = stage(cfg, "outage", scale, env, 1).await?;
    let result = async {
        // One message first, so the service holds an access token before
        // Google goes away (a token request would count as one more call).
        let mut t = s.timing.clone();
        t.deadline_min = Duration::from_millis(200);
        t.deadline_spread = Duration::ZERO;
        let warm = population::plan(1, 0, OFFLINE_MIX, &[], &t, &mut s.rng);
        let endpoints = s.endpoints();
        population::register(&s.rig, &s.api, &endpoints, &t, &warm[0]).await?;
        s.rig
            .google
            .wait_for_revokes(1, Duration::from_secs(30))
            .await?;

        let per_phase = (cfg.messages / 2).max(1);
        // Everything falls due within the first quarter of the outage.
        t.deadline_min = Duration::from_millis(300);
        t.deadline_spread = scale.outage / 4;
        let mut rows = Vec::new();
        let mut all = Vec::new();
        for (phase, upstream) in ["google", "twilio"].into_iter().enumerate() {
            let planned = population::plan(
                per_phase,
                1 + phase * per_phase,
                OUTAGE_MIX,
                &[],
                &t,
                &mut s.rng,
            );
            let before = match upstream {
                "google" => s.rig.google.requests(),
                _ => s.rig.twilio.requests(),
            };
            match upstream {
                "google" => s.rig.google.set_faults(GoogleFaults {
                    unavailable: true,
                    ..GoogleFaults::default()
                }),
                _ => s.rig.twilio.set_faults(TwilioFaults {
                    unavailable: true,
                    ..TwilioFaults::default()
                }),
            }
            let began = Instant::now();
            let endpoints = s.endpoints();
            let (tracked, regs) = population::register_all(
                s.rig.clone(),
                s.api.clone(),
                endpoints,
                t.clone(),
                planned,
                16,
                Duration::ZERO,
            )
            .await?
            .split();
            tokio::time::sleep_until(began + scale.outage).await;
            let during = match upstream {
                "google" => {
                    s.rig.google.set_faults(GoogleFaults::default());
                    s.rig.google.requests() - before
                }
                _ => {
                    s.rig.twilio.set_faults(TwilioFaults::default());
                    s.rig.twilio.requests() - before
                }
            };
            let ended = Instant::now();
            let ids = tracked.iter().map(|t| t.message_id.clone()).collect();
            let drain = monitor::drained(&s.pool, ids, ended, Duration::from_secs(180)).await;
            let bound = tracked.len() * (max_attempts(scale.outage, base, cap) + 1);
            all.push((upstream, tracked, regs, during, bound, drain));
        }
        let settled = s.settle(scale.settle_limit).await;
        let ground = Ground::collect(&s.rig);
        for (upstream, tracked, regs, during, bound, drain) in all {
            let observed = s.observe(&tracked).await;
            let row = format!("outage ({upstream}, {})", secs(scale.outage));
            let mut r = report(
                &row,
                &tracked,
                &observed,
                &ground,
                Trouble::default(),
                drain,
            );
            regs.annotate(&mut r);
            r.notes.push(format!(
                "{during} requests reached {upstream} during the outage for {} waiting messages \
                 ({:.1}/s; back-off bound {bound}); drained {} after it ended",
                tracked.len(),
                during as f64 / scale.outage.as_secs_f64(),
                drain.map(secs).unwrap_or_else(|| "never".into())
            ));
            if during > bound {
                r.violations.push(format!(
                    "{during} requests during the outage, more than the back-off allows ({bound})"
                ));
            }
            if drain.is_none() || !settled {
                r.violations.push("the run did not settle in time".into());
            }
            rows.push(r);
        }
        Ok(rows)
    }
    .await;
    s.teardown().await;
    result
}

// ---------------------------------------------------------------------------
// f. ambiguous-sms

async fn ambiguous_sms(cfg: &Config, scale: &Scale) -> anyhow::Result<Vec<Report>> {
    let twilio = TwilioFaults {
        seed: cfg.seed.wrapping_add(1),
        error_rate: 0.05,
        hang_rate: 0.1,
        hang_for: scale.hang_for,
        reset_rate: 0.1,
        response_lost_rate: 0.15,
        // Late and sometimes missing callbacks, so that a send left without
        // an answer is mostly settled by asking Twilio, not by a callback.
        callback_delay: scale.hang_for * 2,
        callback_drop_rate: 0.1,
        ..TwilioFaults::default()
    };
    let env = service_env(scale, scale.lease);
    let mut s = stage(cfg, "ambiguous-sms", scale, env, 1).await?;
    let result = async {
        s.rig.twilio.set_faults(twilio.clone());
        let planned = s.plan(cfg.messages, 0, SMS_MIX);
        let (tracked, regs) = s.register(planned, Duration::ZERO).await??.split();
        let settled = s.settle(scale.settle_limit).await;
        s.rig.twilio.set_faults(TwilioFaults::default());
        let observed = s.observe(&tracked).await;
        let ground = Ground::collect(&s.rig);
        let trouble = Trouble {
            disruptions: false,
            late_sms: true,
        };
        let mut r = report("ambiguous-sms", &tracked, &observed, &ground, trouble, None);
        regs.annotate(&mut r);
        let sms = s.rig.twilio.messages().len();
        let reconciled = observed
            .iter()
            .flatten()
            .filter(|o| {
                o.resource["events"].as_array().is_some_and(|evs| {
                    evs.iter()
                        .any(|e| e["kind"] == "sms_accepted" && e["detail"]["reconciled"] == true)
                })
            })
            .count();
        r.notes.push(format!("twilio faults: {twilio}"));
        r.notes.push(format!(
            "{} create requests for {sms} SMS; {reconciled} SMS found by reconciling with \
             Twilio after an unanswered send",
            s.rig.twilio.create_requests()
        ));
        if !settled {
            r.violations.push("the run did not settle in time".into());
        }
        Ok(vec![r])
    }
    .await;
    s.teardown().await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempts_within_an_outage_follow_the_back_off() {
        let ms = Duration::from_millis;
        // Waits of at least 250, 500, 1000, 2000, 4000, 4000, ... ms.
        assert_eq!(max_attempts(ms(200), ms(500), Duration::from_secs(8)), 1);
        assert_eq!(max_attempts(ms(300), ms(500), Duration::from_secs(8)), 2);
        // Tries at 0, 0.25, 0.75, 1.75, 3.75, 7.75, 11.75, 15.75, 19.75 s.
        assert_eq!(max_attempts(ms(7_749), ms(500), Duration::from_secs(8)), 5);
        assert_eq!(max_attempts(ms(7_750), ms(500), Duration::from_secs(8)), 6);
        assert_eq!(max_attempts(ms(20_000), ms(500), Duration::from_secs(8)), 9);
    }

    #[test]
    fn scenario_names_round_trip() {
        for s in Scenario::ALL {
            assert_eq!(Scenario::parse(s.name()).ok(), Some(s));
        }
        assert!(Scenario::parse("everything").is_err());
    }
}
