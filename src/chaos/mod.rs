//! `rbm-fallback chaos`: fault scenarios against the real service (as child
//! processes), the emulators and a real PostgreSQL, each on a database of
//! its own; prints one table row per scenario and tells whether every
//! message reached its expected outcome with never more than one SMS.
//!
//! RELIABILITY.md describes what is promised and how each scenario tests it.

mod monitor;
mod population;
mod scenarios;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

pub use population::{Class, Expect, Trouble};
pub use scenarios::{default_faults, max_attempts, Scale, Scenario};

const DEFAULT_SERVER: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// The command line.
pub struct Options {
    /// Scenario names; empty: all of them.
    pub scenarios: Vec<String>,
    pub messages: Option<usize>,
    pub quick: bool,
    pub seed: Option<u64>,
    /// Faults layered over the `faults` scenario's own (compact form).
    pub faults: Option<String>,
}

/// How to run scenarios.
#[derive(Clone, Debug)]
pub struct Config {
    /// The rbm-fallback binary to run as the service.
    pub exe: PathBuf,
    /// A PostgreSQL URL; each scenario gets a fresh database on that server.
    pub server_url: String,
    pub messages: usize,
    pub quick: bool,
    pub seed: u64,
    pub faults: Option<String>,
    /// Service processes in the `replicas` scenario.
    pub replicas: usize,
    /// SIGKILLs in the `crash` scenario.
    pub kills: usize,
    /// Phone behaviours left out of every scenario's mix.
    pub exclude: Vec<Class>,
}

impl Config {
    pub fn new(exe: PathBuf, server_url: String, quick: bool) -> Config {
        Config {
            exe,
            server_url,
            messages: if quick { 200 } else { 2000 },
            quick,
            seed: 1,
            faults: None,
            replicas: 3,
            kills: if quick { 2 } else { 5 },
            exclude: Vec::new(),
        }
    }
}

/// One row of the table.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub scenario: String,
    pub messages: usize,
    /// By expected outcome ("either" for the undetermined ones).
    pub expected: BTreeMap<String, usize>,
    /// By actual outcome.
    pub actual: BTreeMap<String, usize>,
    pub lost: usize,
    pub duplicate_sms: usize,
    /// Longest time from a disruption (kill, outage) until the backlog it
    /// left had drained.
    pub recovery: Option<Duration>,
    /// Broken invariants besides lost messages and duplicate SMS.
    pub violations: Vec<String>,
    pub notes: Vec<String>,
    /// Message histories of what went wrong.
    pub details: Vec<String>,
    /// Why the scenario did not run.
    pub skipped: Option<String>,
    /// Why it could not complete.
    pub error: Option<String>,
}

impl Report {
    pub fn new(scenario: &str) -> Report {
        Report {
            scenario: scenario.to_owned(),
            ..Report::default()
        }
    }

    /// Nothing lost, no duplicate SMS, no broken invariant, no error. A
    /// skipped scenario passes (it says why).
    pub fn passed(&self) -> bool {
        self.error.is_none()
            && (self.skipped.is_some()
                || (self.lost == 0 && self.duplicate_sms == 0 && self.violations.is_empty()))
    }
}

/// Runs one scenario; an error that stops it becomes a failed row.
pub async fn run_scenario(scenario: Scenario, cfg: &Config) -> Vec<Report> {
    match scenarios::run(scenario, cfg).await {
        Ok(rows) => rows,
        Err(e) => {
            let mut r = Report::new(scenario.name());
            r.error = Some(format!("{e:#}"));
            vec![r]
        }
    }
}

/// `rbm-fallback chaos`.
pub async fn run(opts: Options) -> anyhow::Result<bool> {
    let mut chosen = Vec::new();
    for name in &opts.scenarios {
        let s = Scenario::parse(name)?;
        if !chosen.contains(&s) {
            chosen.push(s);
        }
    }
    if chosen.is_empty() {
        chosen = Scenario::ALL.to_vec();
    }
    let exe = std::env::current_exe()?;
    let server = std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_SERVER.to_owned());
    let mut cfg = Config::new(exe, server, opts.quick);
    if let Some(n) = opts.messages {
        anyhow::ensure!(n > 0, "--messages must be at least 1");
        cfg.messages = n;
    }
    cfg.seed = opts.seed.unwrap_or_else(rand::random);
    cfg.faults = opts.faults;
    if let Some(spec) = &cfg.faults {
        // Refuse a bad fault string before anything starts.
        let (mut g, mut t) = default_faults(&cfg, &Scale::new(cfg.quick));
        crate::emulator::parse_faults(spec, &mut g, &mut t)?;
    }

    println!(
        "rbm-fallback chaos: {} messages per scenario{}, seed {} (rerun with --seed {})",
        cfg.messages,
        if cfg.quick { ", quick" } else { "" },
        cfg.seed,
        cfg.seed
    );
    let mut rows = Vec::new();
    for s in chosen {
        println!("running {} ...", s.name());
        let started = std::time::Instant::now();
        let got = run_scenario(s, &cfg).await;
        for r in &got {
            println!(
                "  {} {} in {:.0} s",
                r.scenario,
                verdict(r),
                started.elapsed().as_secs_f64()
            );
        }
        rows.extend(got);
    }
    println!();
    print!("{}", table(&rows));
    let ok = rows.iter().all(Report::passed);
    println!();
    println!(
        "{}",
        if ok {
            "PASS: no message lost, no SMS sent twice"
        } else {
            "FAIL: see the rows marked FAIL above"
        }
    );
    Ok(ok)
}

fn verdict(r: &Report) -> &'static str {
    if r.error.is_some() {
        "ERROR"
    } else if r.skipped.is_some() {
        "skipped"
    } else if r.passed() {
        "ok"
    } else {
        "FAIL"
    }
}

fn counts(m: &BTreeMap<String, usize>) -> String {
    const ORDER: [&str; 7] = [
        "rcs",
        "sms",
        "both",
        "none",
        "either",
        "unsettled",
        "unknown",
    ];
    let mut parts: Vec<String> = ORDER
        .iter()
        .filter_map(|k| m.get(*k).filter(|n| **n > 0).map(|n| format!("{k} {n}")))
        .collect();
    parts.extend(
        m.iter()
            .filter(|(k, n)| !ORDER.contains(&k.as_str()) && **n > 0)
            .map(|(k, n)| format!("{k} {n}")),
    );
    if parts.is_empty() {
        "-".to_owned()
    } else {
        parts.join(", ")
    }
}

/// The results table, then the notes and details of each row.
pub fn table(rows: &[Report]) -> String {
    let header = [
        "scenario",
        "msgs",
        "expected outcomes",
        "actual outcomes",
        "lost",
        "dup SMS",
        "recovery",
        "result",
    ];
    let body: Vec<[String; 8]> = rows
        .iter()
        .map(|r| {
            let skipped = r.skipped.is_some() || r.error.is_some();
            let blank = |s: String| if skipped { "-".to_owned() } else { s };
            [
                r.scenario.clone(),
                blank(r.messages.to_string()),
                blank(counts(&r.expected)),
                blank(counts(&r.actual)),
                blank(r.lost.to_string()),
                blank(r.duplicate_sms.to_string()),
                r.recovery
                    .map(|d| format!("{:.1} s", d.as_secs_f64()))
                    .unwrap_or_else(|| "-".to_owned()),
                verdict(r).to_owned(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &body {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut s = String::from("|");
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            let pad = w - cell.chars().count();
            // Numbers right-aligned, text left-aligned.
            if matches!(i, 1 | 4 | 5 | 6) {
                s.push_str(&format!(" {}{} |", " ".repeat(pad), cell));
            } else {
                s.push_str(&format!(" {}{} |", cell, " ".repeat(pad)));
            }
        }
        s.push('\n');
        s
    };
    let mut out = line(&header.map(str::to_owned));
    out.push('|');
    for (i, w) in widths.iter().enumerate() {
        let right = matches!(i, 1 | 4 | 5 | 6);
        out.push_str(&format!(
            "{}{}|",
            "-".repeat(w + 1),
            if right { ":" } else { "-" }
        ));
    }
    out.push('\n');
    for row in &body {
        out.push_str(&line(row));
    }
    for r in rows {
        let mut lines = Vec::new();
        if let Some(why) = &r.skipped {
            lines.push(format!("skipped: {why}"));
        }
        if let Some(e) = &r.error {
            lines.push(format!("error: {e}"));
        }
        lines.extend(r.notes.iter().cloned());
        lines.extend(
            r.violations
                .iter()
                .take(10)
                .map(|v| format!("VIOLATION {v}")),
        );
        if r.violations.len() > 10 {
            lines.push(format!(
                "... and {} more violations",
                r.violations.len() - 10
            ));
        }
        lines.extend(r.details.iter().cloned());
        if !lines.is_empty() {
            out.push_str(&format!("\n{}:\n", r.scenario));
            for l in lines {
                out.push_str(&format!("  - {l}\n"));
            }
        }
    }
    out
}
