//! Where the time went during a measurement: CPU time of the service
//! process, of PostgreSQL working for this run (the backends connected to
//! the benchmark's database and the server's own background processes), of
//! this process (load generator and emulators) and of everything else on
//! the machine (including backends serving other databases on a shared
//! server), read from /proc. Backends that exit between two readings are
//! not counted anywhere but in the machine's total ("other"): on a shared
//! server, that is mostly other people's short connections; and the database's commits and WAL flushes, read from
//! PostgreSQL's statistics; and the stalls of the disk under PostgreSQL
//! (`disk`). Linux only; elsewhere the CPU figures are absent.

use std::collections::HashMap;
use std::time::Duration;

use sqlx::PgPool;
use tokio::time::Instant;

use super::disk::{self, DiskWatch, Stalls};

/// The kernel's unit for the CPU times in /proc (USER_HZ), 100 on every
/// Linux architecture this runs on.
const TICKS_PER_SEC: f64 = 100.0;

/// One reading.
#[derive(Clone, Debug)]
pub struct Sample {
    at: Instant,
    /// Busy and idle ticks of the whole machine, and of those busy ones,
    /// interrupt handling (loopback networking, mostly) and time stolen by
    /// the hypervisor.
    busy: u64,
    idle: u64,
    irq: u64,
    steal: u64,
    /// Every other process: (name, CPU ticks).
    others: HashMap<u32, (String, u64)>,
    service: u64,
    postgres: u64,
    bench: u64,
    commits: i64,
    wal_syncs: i64,
    wal_bytes: i64,
    /// The disk's stalls so far, when it is watched.
    disk: Option<Stalls>,
}

/// The difference between two readings.
#[derive(Clone, Debug, Default)]
pub struct Usage {
    pub wall: Duration,
    /// CPU seconds.
    pub service: f64,
    pub postgres: f64,
    pub bench: f64,
    /// Everything else busy: other processes and the kernel's own work.
    pub other: f64,
    /// Of `other`: interrupt handling, and time stolen by the hypervisor.
    pub irq: f64,
    pub steal: f64,
    /// Of `other`: the busiest other processes, CPU seconds.
    pub top_others: Vec<(String, f64)>,
    pub idle: f64,
    pub commits: i64,
    pub wal_syncs: i64,
    pub wal_bytes: i64,
    /// Stalls of PostgreSQL's disk of at least [`disk::STALL`], the part of
    /// each within the phase, longest first; None when it is not watched.
    pub disk_stalls: Option<Vec<Duration>>,
}

impl Usage {
    /// A share of the machine's CPU capacity over the wall time, in percent
    /// of one core (so 200 % is both cores of a 2-core machine).
    pub fn pct(&self, cpu_secs: f64) -> f64 {
        if self.wall.is_zero() {
            return 0.0;
        }
        100.0 * cpu_secs / self.wall.as_secs_f64()
    }

    pub fn commits_per_sec(&self) -> f64 {
        if self.wall.is_zero() {
            return 0.0;
        }
        self.commits as f64 / self.wall.as_secs_f64()
    }

    pub fn wal_syncs_per_sec(&self) -> f64 {
        if self.wall.is_zero() {
            return 0.0;
        }
        self.wal_syncs as f64 / self.wall.as_secs_f64()
    }

    /// WAL written, in MB a second: what the flushes carry.
    pub fn wal_mb_per_sec(&self) -> f64 {
        if self.wall.is_zero() {
            return 0.0;
        }
        self.wal_bytes as f64 / 1e6 / self.wall.as_secs_f64()
    }
}

pub struct Probe {
    pub service_pid: Option<u32>,
    pool: PgPool,
    /// The benchmark's database: backends connected to another one work
    /// for someone else.
    database: String,
    /// The watch of PostgreSQL's disk, or why there is none.
    pub disk: Result<DiskWatch, String>,
}

impl Probe {
    pub fn new(pool: PgPool, database: &str) -> Probe {
        Probe {
            service_pid: None,
            pool,
            database: database.to_owned(),
            disk: Err("not started".into()),
        }
    }

    /// Starts watching the disk under PostgreSQL's WAL, if it is on this
    /// machine and readable from here.
    pub async fn watch_disk(&mut self) {
        self.disk = match sqlx::query_scalar::<_, String>("SHOW data_directory")
            .fetch_one(&self.pool)
            .await
        {
            Ok(dir) => DiskWatch::start(&dir),
            Err(e) => Err(format!("the server would not say where its data is: {e}")),
        };
    }

    pub async fn sample(&self) -> Sample {
        // The database's counters first: they are flushed at most once a
        // second, so their reading is the coarser one either way.
        let commits: i64 = sqlx::query_scalar(
            "SELECT (xact_commit + xact_rollback)::bigint FROM pg_stat_database
             WHERE datname = current_database()",
        )
        .fetch_one(&self.pool)
        .await
        .unwrap_or(0);
        let (wal_syncs, wal_bytes): (i64, i64) =
            sqlx::query_as("SELECT wal_sync::bigint, wal_bytes::bigint FROM pg_stat_wal")
                .fetch_one(&self.pool)
                .await
                .unwrap_or((0, 0));
        let m = machine_ticks().unwrap_or_default();
        let procs = Procs::read(self.service_pid, &self.database);
        Sample {
            at: Instant::now(),
            busy: m.busy,
            idle: m.idle,
            irq: m.irq,
            steal: m.steal,
            service: procs.service,
            postgres: procs.postgres,
            bench: procs.bench,
            others: procs.others,
            commits,
            wal_syncs,
            wal_bytes,
            disk: self.disk.as_ref().ok().map(|d| d.stalls.clone()),
        }
    }
}

/// `later - earlier`.
pub fn usage(earlier: &Sample, later: &Sample) -> Usage {
    let secs = |a: u64, b: u64| b.saturating_sub(a) as f64 / TICKS_PER_SEC;
    let busy = secs(earlier.busy, later.busy);
    let service = secs(earlier.service, later.service);
    let postgres = secs(earlier.postgres, later.postgres);
    let bench = secs(earlier.bench, later.bench);
    // By name: a test suite's many processes, a database's many backends.
    let mut by_name: HashMap<&str, f64> = HashMap::new();
    for (pid, (name, t)) in &later.others {
        if let Some((_, t0)) = earlier.others.get(pid) {
            *by_name.entry(name.as_str()).or_default() += secs(*t0, *t);
        }
    }
    let mut top_others: Vec<(String, f64)> = by_name
        .into_iter()
        .map(|(name, t)| (name.to_owned(), t))
        .collect();
    top_others.sort_by(|a, b| b.1.total_cmp(&a.1));
    top_others.truncate(3);
    Usage {
        wall: later.at.saturating_duration_since(earlier.at),
        service,
        postgres,
        bench,
        other: (busy - service - postgres - bench).max(0.0),
        irq: secs(earlier.irq, later.irq),
        steal: secs(earlier.steal, later.steal),
        top_others,
        idle: secs(earlier.idle, later.idle),
        commits: later.commits - earlier.commits,
        wal_syncs: later.wal_syncs - earlier.wal_syncs,
        wal_bytes: later.wal_bytes - earlier.wal_bytes,
        disk_stalls: later
            .disk
            .as_ref()
            .and_then(|d| disk::between(d, earlier.at, later.at)),
    }
}

struct ProcStat {
    comm: String,
    ppid: u32,
    /// utime + stime.
    own: u64,
}

fn proc_stat(pid: &str) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may itself hold spaces.
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_owned();
    let rest: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    // rest[0] is field 3 (state); utime is field 14.
    let num = |i: usize| rest.get(i).and_then(|v| v.parse::<u64>().ok());
    Some(ProcStat {
        comm,
        ppid: num(1)? as u32,
        own: num(11)? + num(12)?,
    })
}

/// CPU ticks of the processes, by kind.
#[derive(Default)]
struct Procs {
    service: u64,
    /// PostgreSQL processes but other databases' backends.
    postgres: u64,
    /// This process, and the pgbench it runs.
    bench: u64,
    others: HashMap<u32, (String, u64)>,
}

impl Procs {
    fn read(service: Option<u32>, database: &str) -> Procs {
        let mut procs = Procs::default();
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return procs;
        };
        let me = std::process::id();
        let mut pg: Vec<(u32, ProcStat)> = Vec::new();
        for entry in dir.flatten() {
            let name = entry.file_name();
            let Some(pid) = name
                .to_str()
                .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let Some(s) = proc_stat(&pid.to_string()) else {
                continue;
            };
            if Some(pid) == service {
                procs.service = s.own;
            } else if pid == me || (s.ppid == me && s.comm == "pgbench") {
                procs.bench += s.own;
            } else if s.comm == "postgres" || s.comm == "postmaster" {
                match backend_database(pid) {
                    Some(db) if db != database => {
                        procs
                            .others
                            .insert(pid, (format!("postgres ({db})"), s.own));
                    }
                    _ => pg.push((pid, s)),
                }
            } else {
                // Its own time only: a parent's count of reaped children
                // jumps by a child's whole life when it ends.
                procs.others.insert(pid, (s.comm, s.own));
            }
        }
        procs.postgres = pg.iter().map(|(_, s)| s.own).sum();
        procs
    }
}

/// The database a PostgreSQL client backend serves, from its process title
/// ("postgres: [cluster:] user database host(port) activity"); None for the
/// server's own processes.
fn backend_database(pid: u32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    title_database(&String::from_utf8_lossy(&raw).replace('\0', " "))
}

fn title_database(title: &str) -> Option<String> {
    let tokens: Vec<&str> = title.split_whitespace().collect();
    let host = tokens
        .iter()
        .position(|t| *t == "[local]" || (t.contains('(') && t.ends_with(')')))?;
    // Before the host: the database, before that the user.
    (host >= 3).then(|| tokens[host - 1].to_owned())
}

#[derive(Default)]
struct MachineTicks {
    busy: u64,
    idle: u64,
    irq: u64,
    steal: u64,
}

/// Ticks summed over all CPUs, from /proc/stat.
fn machine_ticks() -> Option<MachineTicks> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest is in user).
    let get = |i: usize| v.get(i).copied().unwrap_or(0);
    Some(MachineTicks {
        busy: get(0) + get(1) + get(2) + get(5) + get(6) + get(7),
        idle: get(3) + get(4),
        irq: get(5) + get(6),
        steal: get(7),
    })
}

/// Resident set size and its peak, in bytes, from /proc/<pid>/status.
pub fn rss(pid: u32) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map(|kb| kb * 1024)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// The machine, for the report: (cores, CPU model, memory in bytes).
pub fn machine() -> (usize, String, u64) {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024);
    (cores, model, mem)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_its_own_process() {
        if cfg!(target_os = "linux") {
            let me = proc_stat("self").expect("/proc/self/stat");
            assert!(!me.comm.is_empty());
            assert!(rss(std::process::id()).is_some_and(|(rss, hwm)| rss > 0 && hwm >= rss));
            assert!(machine_ticks().is_some());
        }
    }

    #[test]
    fn backend_titles_name_their_database() {
        let db = |t: &str| title_database(t);
        assert_eq!(
            db("postgres: 15/main: postgres rbmf_x 127.0.0.1(45826) idle").as_deref(),
            Some("rbmf_x")
        );
        assert_eq!(
            db("postgres: app shop [local] idle in transaction").as_deref(),
            Some("shop")
        );
        assert_eq!(db("postgres: 15/main: checkpointer"), None);
        assert_eq!(
            db("/usr/lib/postgresql/15/bin/postgres -D /var/lib/x -c config_file=/etc/x"),
            None
        );
    }
}
