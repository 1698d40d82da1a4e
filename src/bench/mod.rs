//! `rbm-fallback bench`: the performance figures of issue "Performance",
//! measured against the loopback emulators and a real PostgreSQL, each
//! next to its target, plus a pgbench baseline on the same database so the
//! figures can be read as ratios to what PostgreSQL itself does on the
//! machine. BENCHMARKS.md records a run and what limited each figure.
//!
//! The service runs as a child process (`rbm-fallback serve`, this same
//! executable, so a release build benchmarks a release service), so its CPU
//! time and memory can be read from /proc. The load generator and the
//! emulators run in this process. Each run creates a database of its own
//! (`rbmf_bench_<random>`) on the server named by DATABASE_URL and drops it
//! at the end. Nothing here asserts: every figure is printed with its target
//! and whether it was met.

mod db;
mod disk;
mod load;
mod probe;
mod report;
mod scenarios;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use rand::Rng;
use sqlx::PgPool;

use crate::emulator::google::PhoneBehaviour;
use crate::sandbox::{self, free_port, Rig, SandboxConfig, ServiceProcess};
use probe::Probe;
use report::Results;
use scenarios::Ceiling;

/// pgbench clients for the burst's database work alone: about the statements
/// the service has in flight in a burst (claims, and two batches of results
/// being written); more measured no faster.
const CEILING_CLIENTS: usize = 4;

const DEFAULT_SERVER: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// The scenarios, in the order they run.
pub const SCENARIOS: [&str; 7] = [
    "pgbench",
    "intake",
    "batch",
    "webhooks",
    "deadline",
    "burst",
    "burst-limited",
];

/// `rbm-fallback bench` options.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct Options {
    /// A scenario to run (repeatable): pgbench, intake, batch, webhooks,
    /// deadline, burst, burst-limited. Default: all. intake and deadline run
    /// at both backlog sizes, which gives the flat-cost and memory figures.
    #[arg(long = "scenario", value_name = "NAME")]
    pub scenarios: Vec<String>,
    /// A smaller run that takes about a minute.
    #[arg(long)]
    pub quick: bool,
    /// Connections of the load generator, and pgbench clients (default 16).
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// Seconds of each throughput and latency measurement (default 20; 4
    /// with --quick).
    #[arg(long, value_name = "SECS")]
    pub duration: Option<u64>,
    /// The large pending backlog (default 1000000; 100000 with --quick).
    #[arg(long, value_name = "N")]
    pub pending: Option<u64>,
    /// The small pending backlog (default 10000).
    #[arg(long, value_name = "N")]
    pub small_pending: Option<u64>,
    /// Messages reaching their deadline per second (default 2000).
    #[arg(long, value_name = "PER_SEC")]
    pub deadline_rate: Option<u32>,
    /// Seconds of the deadline stream (default 20; 5 with --quick).
    #[arg(long, value_name = "SECS")]
    pub deadline_secs: Option<u64>,
    /// Messages sent through :batch (default 100000; 20000 with --quick).
    #[arg(long, value_name = "N")]
    pub batch_messages: Option<u64>,
    /// Messages sharing one deadline in the burst (default 100000; 10000
    /// with --quick).
    #[arg(long, value_name = "N")]
    pub burst: Option<u64>,
    /// Outbound rate limits of burst-limited, per second (default 2000).
    #[arg(long, value_name = "PER_SEC")]
    pub rate_limit: Option<u32>,
    /// Messages in burst-limited (default: as --burst).
    #[arg(long, value_name = "N")]
    pub limited_burst: Option<u64>,
    /// Deadline stream of messages Google does not know: each DELETE is
    /// answered 404 and the message ends one confirm window later without an
    /// SMS (one more claim, no other call), which isolates the scheduler
    /// from the rest of the fallback.
    #[arg(long)]
    pub revoke_only: bool,
    /// A service setting by environment name (repeatable), e.g.
    /// RBMF__WORKER__CONCURRENCY=128, to try a change.
    #[arg(long = "set", value_name = "NAME=VALUE")]
    pub set: Vec<String>,
}

/// Sizes and durations of a run.
#[derive(Clone, Debug)]
pub struct Plan {
    pub scenarios: Vec<&'static str>,
    pub quick: bool,
    pub concurrency: usize,
    pub warmup: Duration,
    pub duration: Duration,
    pub small_pending: u64,
    pub pending: u64,
    pub deadline_rate: u32,
    pub deadline_secs: u64,
    pub batch_messages: u64,
    pub batch_size: usize,
    pub batch_concurrency: usize,
    pub burst: u64,
    pub rate_limit: u32,
    pub limited_burst: u64,
    pub revoke_only: bool,
    pub env: Vec<(String, String)>,
}

impl Plan {
    pub fn new(opts: &Options) -> anyhow::Result<Plan> {
        let mut scenarios = Vec::new();
        for name in &opts.scenarios {
            let s = SCENARIOS
                .iter()
                .find(|s| **s == name.as_str())
                .with_context(|| {
                    format!(
                        "unknown scenario {name:?} (known: {})",
                        SCENARIOS.join(", ")
                    )
                })?;
            if !scenarios.contains(s) {
                scenarios.push(*s);
            }
        }
        if scenarios.is_empty() {
            scenarios = SCENARIOS.to_vec();
        }
        scenarios.sort_by_key(|s| SCENARIOS.iter().position(|x| x == s));
        let q = opts.quick;
        let mut env = Vec::new();
        for kv in &opts.set {
            let (k, v) = kv
                .split_once('=')
                .with_context(|| format!("--set {kv:?}: expected NAME=VALUE"))?;
            env.push((k.trim().to_owned(), v.to_owned()));
        }
        let burst = opts.burst.unwrap_or(if q { 10_000 } else { 100_000 });
        let plan = Plan {
            scenarios,
            quick: q,
            concurrency: opts.concurrency.unwrap_or(16),
            warmup: Duration::from_secs(if q { 1 } else { 2 }),
            duration: Duration::from_secs(opts.duration.unwrap_or(if q { 4 } else { 20 })),
            small_pending: opts.small_pending.unwrap_or(10_000),
            pending: opts.pending.unwrap_or(if q { 100_000 } else { 1_000_000 }),
            deadline_rate: opts.deadline_rate.unwrap_or(2000),
            deadline_secs: opts.deadline_secs.unwrap_or(if q { 5 } else { 20 }),
            batch_messages: opts
                .batch_messages
                .unwrap_or(if q { 20_000 } else { 100_000 }),
            batch_size: crate::http::messages::MAX_BATCH,
            batch_concurrency: 4,
            burst,
            rate_limit: opts.rate_limit.unwrap_or(2000),
            limited_burst: opts.limited_burst.unwrap_or(burst),
            revoke_only: opts.revoke_only,
            env,
        };
        anyhow::ensure!(plan.concurrency >= 1, "--concurrency must be at least 1");
        anyhow::ensure!(!plan.duration.is_zero(), "--duration must be at least 1");
        anyhow::ensure!(
            plan.pending >= plan.small_pending,
            "--pending must be at least --small-pending"
        );
        anyhow::ensure!(
            plan.burst >= 1 && plan.limited_burst >= 1,
            "--burst and --limited-burst must be at least 1"
        );
        anyhow::ensure!(plan.rate_limit >= 1, "--rate-limit must be at least 1");
        anyhow::ensure!(
            plan.deadline_rate >= 10,
            "--deadline-rate must be at least 10"
        );
        Ok(plan)
    }

    fn has(&self, name: &str) -> bool {
        self.scenarios.contains(&name)
    }
}

/// One run: the emulators, the database, the service process.
pub struct Bench {
    plan: Plan,
    rig: Rig,
    exe: PathBuf,
    pool: PgPool,
    probe: Probe,
    service: Option<ServiceProcess>,
    api: reqwest::Client,
    /// Distinguishes this run's message ids.
    tag: String,
    notes: Vec<String>,
    /// Where pgbench is, once the baseline has found it.
    pgbench_exe: Option<PathBuf>,
}

fn random_hex(bytes: usize) -> String {
    let mut rng = rand::thread_rng();
    (0..bytes)
        .map(|_| format!("{:02x}", rng.gen::<u8>()))
        .collect()
}

/// `rbm-fallback bench`. Prints the figures; an error only when the run
/// itself could not go on (a missed target is a result, not an error).
pub async fn run(opts: Options) -> anyhow::Result<()> {
    let plan = Plan::new(&opts)?;
    let server = std::env::var("DATABASE_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| DEFAULT_SERVER.to_owned());
    let tag = random_hex(4);
    let url = db::database_url(&server, &format!("rbmf_bench_{tag}"))?;
    sandbox::ensure_database(&url).await?;
    let outcome = run_on(plan, &url, tag).await;
    if let Err(e) = sandbox::drop_database(&url).await {
        eprintln!("warning: could not drop the benchmark database: {e:#}");
    }
    let results = outcome?;
    println!();
    print!("{}", results.render());
    Ok(())
}

async fn run_on(plan: Plan, url: &str, tag: String) -> anyhow::Result<Results> {
    let database = format!("rbmf_bench_{tag}");
    let exe = std::env::current_exe().context("locating the rbm-fallback executable")?;
    let mut cfg = SandboxConfig::new(url);
    cfg.confirm_window = Duration::from_secs(1);
    cfg.default_phone = PhoneBehaviour::Offline;
    cfg.env = plan.env.clone();
    let rig = Rig::start(&cfg).await?;
    let pool = db::pool(url).await?;
    let mut bench = Bench {
        api: rig.api(),
        probe: Probe::new(pool.clone(), &database),
        plan,
        rig,
        exe,
        pool,
        service: None,
        tag,
        notes: Vec::new(),
        pgbench_exe: None,
    };
    bench.probe.watch_disk().await;
    let mut results = Results::new(&bench).await;
    println!("{}", results.header());
    let outcome = bench.all(&mut results).await;
    bench.stop_service();
    results.notes.append(&mut bench.notes);
    outcome?;
    Ok(results)
}

impl Bench {
    fn service_url(&self) -> String {
        self.service
            .as_ref()
            .map(|s| s.url.clone())
            .unwrap_or_default()
    }

    fn service_pid(&self) -> Option<u32> {
        self.service.as_ref().and_then(|s| s.pid())
    }

    fn stop_service(&mut self) {
        if let Some(mut s) = self.service.take() {
            s.kill();
        }
        self.probe.service_pid = None;
    }

    /// (Re)starts the service process with the rig's settings plus `extra`
    /// and waits until it is ready (migrations applied).
    async fn start_service(&mut self, extra: &[(String, String)]) -> anyhow::Result<()> {
        self.stop_service();
        let port = free_port()?;
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let url = format!("http://{addr}");
        let mut env = self.rig.service_env(addr, &url);
        env.extend(extra.iter().cloned());
        // The user's own settings win over the scenario's.
        env.extend(self.plan.env.iter().cloned());
        let log = self.rig.dir().join(format!("service-{port}.log"));
        let mut service = ServiceProcess::spawn(&self.exe, env, addr, log)?;
        service.wait_ready(Duration::from_secs(60)).await?;
        self.probe.service_pid = service.pid();
        self.service = Some(service);
        Ok(())
    }

    fn rss(&self) -> Option<(u64, u64)> {
        self.service_pid().and_then(probe::rss)
    }

    async fn all(&mut self, r: &mut Results) -> anyhow::Result<()> {
        self.start_service(&[]).await?;
        if self.plan.has("pgbench") {
            self.pgbench_exe = self.pgbench_baseline(r).await?;
        }

        let small = self.plan.small_pending;
        let large = self.plan.pending;
        let two_sizes = self.plan.has("intake") || self.plan.has("deadline");
        let needs_small = two_sizes || self.plan.has("batch") || self.plan.has("webhooks");
        if needs_small {
            say(&format!(
                "inserting a backlog of {small} pending messages ..."
            ));
            db::insert_pending(
                &self.pool,
                &format!("bl-{}-", self.tag),
                0,
                small,
                chrono::Utc::now() + chrono::TimeDelta::days(7),
                1000,
            )
            .await?;
            db::vacuum(&self.pool).await?;
            db::checkpoint(&self.pool).await;
            self.start_service(&[]).await?;
        }
        let p = small;
        if self.plan.has("intake") {
            say(&format!("intake at {p} pending ..."));
            match self.intake("s").await {
                Ok(e) => {
                    say(&report::endpoint_line(&e));
                    r.endpoint_usages("intake", Some(p), &e);
                    r.intake_small = Some(e);
                }
                Err(e) => r.error("intake", e),
            }
        }
        if self.plan.has("batch") {
            say("batch intake ...");
            match self.batch().await {
                Ok(b) => {
                    say(&format!(
                        "  {} messages in {:.1} s: {:.0} messages/s",
                        b.messages,
                        b.requests.elapsed.as_secs_f64(),
                        b.per_sec
                    ));
                    r.usage("batch", b.usage.clone());
                    r.batch = Some(b);
                }
                Err(e) => r.error("batch", e),
            }
        }
        if self.plan.has("webhooks") {
            say("webhook ingest ...");
            match self.webhooks().await {
                Ok(e) => {
                    say(&report::endpoint_line(&e));
                    r.endpoint_usages("webhooks", None, &e);
                    r.webhooks = Some(e);
                }
                Err(e) => r.error("webhooks", e),
            }
        }
        if self.plan.has("deadline") {
            say(&format!("deadline precision at {p} pending ..."));
            match self.deadline("s").await {
                Ok(l) => {
                    say(&report::lateness_line(&l));
                    r.usage(&format!("deadline, {p} pending"), l.usage.clone());
                    r.deadline_small = Some(l);
                }
                Err(e) => r.error("deadline", e),
            }
        }
        if needs_small {
            r.rss_small = self.rss().map(|m| (p, m));
        }

        if two_sizes {
            say(&format!(
                "growing the backlog to {large} pending messages ..."
            ));
            let started = tokio::time::Instant::now();
            db::insert_pending(
                &self.pool,
                &format!("bl-{}-", self.tag),
                small,
                large - small,
                chrono::Utc::now() + chrono::TimeDelta::days(7),
                1000,
            )
            .await?;
            db::vacuum(&self.pool).await?;
            db::checkpoint(&self.pool).await;
            say(&format!(
                "  done in {:.0} s",
                started.elapsed().as_secs_f64()
            ));
            // A fresh process: its peak memory is then this phase's.
            self.start_service(&[]).await?;
            let p = db::pending(&self.pool).await? as u64;
            if self.plan.has("intake") {
                say(&format!("intake at {p} pending ..."));
                match self.intake("l").await {
                    Ok(e) => {
                        say(&report::endpoint_line(&e));
                        r.endpoint_usages("intake", Some(p), &e);
                        r.intake_large = Some(e);
                    }
                    Err(e) => r.error("intake (large backlog)", e),
                }
            }
            if self.plan.has("deadline") {
                say(&format!("deadline precision at {p} pending ..."));
                match self.deadline("l").await {
                    Ok(l) => {
                        say(&report::lateness_line(&l));
                        r.usage(&format!("deadline, {p} pending"), l.usage.clone());
                        r.deadline_large = Some(l);
                    }
                    Err(e) => r.error("deadline (large backlog)", e),
                }
            }
            r.rss_large = self.rss().map(|m| (p, m));
            if let Some((_, (rss, hwm))) = r.rss_large {
                say(&format!(
                    "  service memory at {p} pending: RSS {}, peak {}",
                    report::mb(rss),
                    report::mb(hwm)
                ));
            }
        }

        for (name, limited) in [("burst", false), ("burst-limited", true)] {
            if !self.plan.has(name) {
                continue;
            }
            let m = if limited {
                self.plan.limited_burst
            } else {
                self.plan.burst
            };
            say(&format!("{name}: {m} messages sharing one deadline ..."));
            match self.burst(limited).await {
                Ok(b) => {
                    say(&report::burst_line(&b));
                    r.usage(name, b.usage.clone());
                    if limited {
                        r.burst_limited = Some(b);
                        continue;
                    }
                    let batch = b.steps_per_statement;
                    r.burst = Some(b);
                    self.burst_ceiling(r, batch).await;
                }
                Err(e) => r.error(name, e),
            }
        }
        self.pgbench_again(r).await
    }

    /// pgbench flat out, then paced: the baselines of the throughput and p99
    /// figures. Answers where pgbench is, if it was found.
    async fn pgbench_baseline(
        &self,
        r: &mut Results,
    ) -> anyhow::Result<Option<std::path::PathBuf>> {
        say("pgbench baseline ...");
        let Some(exe) = db::find_pgbench() else {
            r.pgbench_missing = Some(db::PGBENCH_MISSING.to_owned());
            say(&format!("  skipped: {}", db::PGBENCH_MISSING));
            return Ok(None);
        };
        let (got, usage) = self.pgbench_probed(&exe).await?;
        match got {
            Ok(p) => {
                say(&format!(
                    "  {:.0} single-row INSERT transactions/s at {} clients \
                     ({} in all, {:.1} ms average latency)",
                    p.tps, self.plan.concurrency, p.transactions, p.latency_ms
                ));
                r.usage("pgbench", usage);
                let paced = p.tps * report::PACED_SHARE;
                r.pgbench = Some(p);
                // PostgreSQL's own latency at the rate where the latency
                // targets apply, on this machine now: the baseline of the p99
                // figures.
                say(&format!("pgbench paced at {paced:.0}/s ..."));
                match self.pgbench(&exe, Some(paced)).await? {
                    Ok(p) => {
                        say(&format!("  {}", report::spread(&p.latencies)));
                        r.pgbench_paced = Some((paced, p));
                    }
                    Err(e) => r.error("pgbench paced", e),
                }
            }
            Err(e) => r.error("pgbench", e),
        }
        Ok(Some(exe))
    }

    /// pgbench flat out, with where the time went while it ran: sampled
    /// while its connections are all open, since their CPU time cannot be
    /// told from others' once they have exited.
    async fn pgbench_probed(
        &self,
        exe: &std::path::Path,
    ) -> anyhow::Result<(anyhow::Result<db::PgbenchResult>, probe::Usage)> {
        let (got, usage) = self.probed(self.pgbench(exe, None)).await;
        Ok((got?, usage))
    }

    /// A pgbench run with where the time went while it ran, sampled while
    /// its connections are all open.
    async fn probed<T>(&self, run: impl std::future::Future<Output = T>) -> (T, probe::Usage) {
        let secs = self.pgbench_secs();
        let probe = async {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let s0 = self.probe.sample().await;
            tokio::time::sleep(Duration::from_secs(secs) - Duration::from_secs(3)).await;
            (s0, self.probe.sample().await)
        };
        let (got, (s0, s1)) = tokio::join!(run, probe);
        (got, probe::usage(&s0, &s1))
    }

    fn pgbench_secs(&self) -> u64 {
        self.plan.duration.as_secs().max(4)
    }

    /// pgbench at the run's concurrency, flat out or paced at `rate`, into a
    /// table of its own that is dropped afterwards, so that each run starts
    /// alike and the scenarios never see it. The outer error is the drop's.
    async fn pgbench(
        &self,
        exe: &std::path::Path,
        rate: Option<f64>,
    ) -> anyhow::Result<anyhow::Result<db::PgbenchResult>> {
        let script = db::insert_script(&self.pool, self.rig.dir()).await?;
        let run = db::pgbench(
            exe,
            &self.rig.database_url,
            &script,
            self.rig.dir(),
            self.plan.concurrency,
            self.pgbench_secs(),
            rate,
        )
        .await;
        sqlx::query("DROP TABLE IF EXISTS bench_pgbench")
            .execute(&self.pool)
            .await?;
        Ok(run)
    }

    /// pgbench flat out right before a throughput measurement: what
    /// PostgreSQL itself did on this machine then, which that figure's ratio
    /// is taken to. pgbench moved by a third within one run here, so a
    /// baseline taken minutes earlier judged the figure by the drift.
    pub(crate) async fn pgbench_beside(
        &mut self,
        what: &str,
    ) -> anyhow::Result<Option<(db::PgbenchResult, probe::Usage)>> {
        let Some(exe) = self.pgbench_exe.clone() else {
            return Ok(None);
        };
        say(&format!("  pgbench beside {what} ..."));
        let (got, usage) = self.pgbench_probed(&exe).await?;
        // What follows starts from a clean checkpoint, as after a backlog's
        // load, not behind pgbench's WAL.
        db::checkpoint(&self.pool).await;
        match got {
            Ok(p) => {
                say(&format!("    {:.0} transactions/s", p.tps));
                Ok(Some((p, usage)))
            }
            Err(e) => {
                self.notes.push(format!(
                    "pgbench beside {what} failed ({e:#}); that figure is taken to the first"
                ));
                Ok(None)
            }
        }
    }

    /// PostgreSQL alone doing what the burst asked of it, flat out, into
    /// `r`: the pipeline's six steps a message, in statements of as many
    /// messages as the burst's own carried (`batch`; `db::pipeline_script`).
    /// It estimates the most the burst could reach here if nothing but the
    /// database took CPU. Needs pgbench, like the baseline.
    async fn burst_ceiling(&mut self, r: &mut Results, batch: Option<f64>) {
        const WHAT: &str = "the burst's database work alone";
        let Some(exe) = self.pgbench_exe.clone().or_else(db::find_pgbench) else {
            return;
        };
        let Some(batch) = batch else {
            r.error(
                WHAT,
                anyhow::anyhow!("the burst wrote no steps to take its size from"),
            );
            return;
        };
        say("  its database work alone, in pgbench ...");
        // Nothing else may take the rows it loads.
        self.stop_service();
        match self.ceiling_run(&exe, (batch.round() as u64).max(1)).await {
            Ok(c) => {
                say(&format!(
                    "    {:.0} messages/s in statements of {}",
                    c.per_sec, c.batch
                ));
                r.usage("burst's database work alone", c.usage.clone());
                r.burst_ceiling = Some(c);
            }
            Err(e) => r.error(WHAT, e),
        }
    }

    async fn ceiling_run(&self, exe: &std::path::Path, batch: u64) -> anyhow::Result<Ceiling> {
        // As many rows as a run at 30,000 messages a second would take:
        // five times what this machine does, so that a faster one does not
        // run out.
        let rows = (self.pgbench_secs() * 30_000).max(batch * 10);
        let script = db::ceiling_script(&self.pool, self.rig.dir(), batch, rows).await?;
        db::checkpoint(&self.pool).await;
        let (run, usage) = self
            .probed(db::pgbench(
                exe,
                &self.rig.database_url,
                &script,
                self.rig.dir(),
                CEILING_CLIENTS,
                self.pgbench_secs(),
                None,
            ))
            .await;
        let run = run?;
        db::ceiling_check(&self.pool, batch, run.transactions, rows).await?;
        db::truncate(&self.pool).await?;
        Ok(Ceiling {
            batch,
            per_sec: run.tps * batch as f64,
            usage,
        })
    }

    /// pgbench flat out once more, after the scenarios: how far the machine
    /// itself drifted during the run.
    async fn pgbench_again(&self, r: &mut Results) -> anyhow::Result<()> {
        let ran_others = SCENARIOS
            .iter()
            .any(|s| *s != "pgbench" && self.plan.has(s));
        let Some(exe) = &self.pgbench_exe else {
            return Ok(());
        };
        if r.pgbench.is_none() || !ran_others {
            return Ok(());
        }
        say("pgbench again, at the end ...");
        match self.pgbench(exe, None).await? {
            Ok(p) => {
                say(&format!(
                    "  {:.0} single-row INSERT transactions/s at {} clients",
                    p.tps, self.plan.concurrency
                ));
                r.pgbench_end = Some(p);
            }
            Err(e) => r.error("pgbench at the end", e),
        }
        Ok(())
    }
}

fn say(line: &str) {
    println!("{line}");
}
