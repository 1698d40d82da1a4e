//! The benchmark's database: created fresh for the run and dropped at the
//! end; rows inserted straight with SQL where the figure is not about how
//! they got there (the pending backlog, the burst, the webhook targets); and
//! the pgbench baseline on the same database.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

/// The agent id the emulator gives the sandbox, as the service stores it.
pub const AGENT: &str = "sandbox-agent";

/// `server_url` (any database) with the database replaced by `name`.
pub fn database_url(server_url: &str, name: &str) -> anyhow::Result<String> {
    let mut url = reqwest::Url::parse(server_url).context("DATABASE_URL is not a URL")?;
    url.set_path(&format!("/{name}"));
    Ok(url.to_string())
}

pub async fn pool(url: &str) -> anyhow::Result<PgPool> {
    PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(30))
        .connect(url)
        .await
        .context("connecting to the benchmark database")
}

/// The phone of message `n`: distinct E.164 numbers.
pub fn phone(n: u64) -> String {
    format!("+1555{:07}", n % 10_000_000)
}

/// Inserts `count` pending messages named `{prefix}{n}` for n in
/// `first..first+count`, straight into the table as a registration would
/// leave them, with their `registered` history event, in chunks.
/// Each row is due at `due` plus `step_us` microseconds per n (0: all
/// share one deadline).
pub async fn insert_pending(
    pool: &PgPool,
    prefix: &str,
    first: u64,
    count: u64,
    due: DateTime<Utc>,
    step_us: i64,
) -> anyhow::Result<()> {
    const CHUNK: u64 = 50_000;
    let mut done = 0;
    while done < count {
        let n = CHUNK.min(count - done);
        let from = (first + done) as i64;
        let to = (first + done + n - 1) as i64;
        // Each with its first history event, as registered messages have:
        // a backlog without history would leave the planner statistics of
        // an empty history table.
        sqlx::query(
            "WITH ins AS (
                 INSERT INTO messages (message_id, agent_id, phone, deadline, sms_body, request_digest,
                                       state, outcome, due_at)
                 SELECT $1 || g, $2, '+1555' || lpad((g % 10000000)::text, 7, '0'), d,
                        'Your code is ' || lpad((g % 1000000)::text, 6, '0'), '\\x00'::bytea,
                        'pending', 'none', d
                 FROM generate_series($3::bigint, $4::bigint) AS g,
                      LATERAL (SELECT $5::timestamptz + (g - $3) * $6::bigint * interval '1 microsecond' AS d) AS dl
                 RETURNING id, deadline
             )
             INSERT INTO message_events (message_id, kind, state_before, state_after, detail)
             SELECT id, 'registered', NULL, 'pending', jsonb_build_object('deadline', deadline) FROM ins",
        )
        .bind(prefix)
        .bind(AGENT)
        .bind(from)
        .bind(to)
        .bind(due)
        .bind(step_us)
        .execute(pool)
        .await
        .context("inserting pending messages")?;
        done += n;
    }
    Ok(())
}

/// Pending messages (state 'pending'), counted from the due-work index.
pub async fn pending(pool: &PgPool) -> anyhow::Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM messages WHERE state = 'pending'")
            .fetch_one(pool)
            .await?,
    )
}

/// The highest message row id so far (0 for none): rows created after this
/// reading have larger ids.
pub async fn max_id(pool: &PgPool) -> anyhow::Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT COALESCE(max(id), 0)::bigint FROM messages")
            .fetch_one(pool)
            .await?,
    )
}

/// Deletes the messages with row ids above `after` (and their history), then
/// vacuums, so a scenario leaves the tables as it found them.
pub async fn delete_after(pool: &PgPool, after: i64) -> anyhow::Result<()> {
    sqlx::query(
        "WITH gone AS (DELETE FROM messages WHERE id > $1)
         DELETE FROM message_events WHERE message_id > $1",
    )
    .bind(after)
    .execute(pool)
    .await?;
    vacuum(pool).await
}

/// Empties every table of the service.
pub async fn truncate(pool: &PgPool) -> anyhow::Result<()> {
    sqlx::query("TRUNCATE messages, message_events, rbm_events, rbm_inbox")
        .execute(pool)
        .await?;
    Ok(())
}

/// VACUUM ANALYZE of the service's tables, as autovacuum would do between
/// bursts of churn (the server may run with autovacuum off).
pub async fn vacuum(pool: &PgPool) -> anyhow::Result<()> {
    for table in ["messages", "message_events", "rbm_events", "rbm_inbox"] {
        // VACUUM cannot run in a transaction: the simple protocol.
        sqlx::raw_sql(&format!("VACUUM (ANALYZE) {table}"))
            .execute(pool)
            .await
            .with_context(|| format!("VACUUM {table}"))?;
    }
    Ok(())
}

/// A checkpoint, so that a measurement after a bulk load does not pay for
/// writing it out (and for the full-page images that follow a checkpoint
/// started midway). Needs superuser rights; without them, skipped.
pub async fn checkpoint(pool: &PgPool) {
    if let Err(e) = sqlx::raw_sql("CHECKPOINT").execute(pool).await {
        tracing::warn!(error = %e, "CHECKPOINT failed; measuring without it");
    }
}

/// A task sampling how many rows `table` (a queue with an identity `id`,
/// taken from its head) holds, every `every`: at most its id span (see
/// [`queue_span`]).
pub struct QueueDepth {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<i64>,
}

impl QueueDepth {
    /// The most rows seen.
    pub async fn stop(self) -> i64 {
        let _ = self.stop.send(());
        self.task.await.unwrap_or(-1)
    }
}

pub fn sample_queue(pool: &PgPool, table: &'static str, every: Duration) -> QueueDepth {
    let (stop, mut stopped) = tokio::sync::oneshot::channel();
    let pool = pool.clone();
    let task = tokio::spawn(async move {
        let mut deepest = 0;
        loop {
            if let Ok(n) = queue_span(&pool, table).await {
                deepest = deepest.max(n);
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = &mut stopped => return deepest,
            }
        }
    });
    QueueDepth { stop, task }
}

/// Rows in `table`.
pub async fn queue_len(pool: &PgPool, table: &str) -> sqlx::Result<i64> {
    sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
        .fetch_one(pool)
        .await
}

/// The ids a queue spans, head to tail: 0 only when it is empty, otherwise
/// an upper bound of its depth (ids of inserts not committed yet, or rolled
/// back, count too). Read from the two ends of its primary key. `count(*)`
/// visited every row the queue had held since its last vacuum on every
/// sample: every few milliseconds, that cost PostgreSQL as much CPU as the
/// applier it measured, and slowed it. The index walk passes over the rows
/// taken too, but once an index scan has found them dead it skips them
/// without reading the table.
async fn queue_span(pool: &PgPool, table: &str) -> sqlx::Result<i64> {
    sqlx::query_scalar(&format!(
        "SELECT coalesce(max(id) - min(id) + 1, 0) FROM {table}"
    ))
    .fetch_one(pool)
    .await
}

/// Waits, polling every 5 ms, until the queue `table` is empty; when it was
/// first seen so, or `None` if it was not within `patience`. Each poll walks
/// the dead end of the queue's key (see [`queue_span`]), so polling more
/// often would weigh on the applier being waited for.
pub async fn wait_empty(
    pool: &PgPool,
    table: &str,
    patience: Duration,
) -> anyhow::Result<Option<tokio::time::Instant>> {
    let give_up = tokio::time::Instant::now() + patience;
    while tokio::time::Instant::now() < give_up {
        if queue_span(pool, table).await? == 0 {
            return Ok(Some(tokio::time::Instant::now()));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(None)
}

/// Messages with row id above `after`, by state.
pub async fn states_after(pool: &PgPool, after: i64) -> anyhow::Result<Vec<(String, i64)>> {
    Ok(sqlx::query_as(
        "SELECT state, count(*) FROM messages WHERE id > $1 GROUP BY state ORDER BY state",
    )
    .bind(after)
    .fetch_all(pool)
    .await?)
}

/// When the service's outbound calls for messages with row id above `after`
/// left it, by their history (`sent_at`): the calls to Google (revokes, RBM
/// sends), then those to Twilio.
pub async fn departures(
    pool: &PgPool,
    after: i64,
) -> anyhow::Result<(Vec<DateTime<Utc>>, Vec<DateTime<Utc>>)> {
    let rows: Vec<(bool, DateTime<Utc>)> = sqlx::query_as(
        "SELECT kind NOT LIKE 'sms%', (detail->>'sent_at')::timestamptz
         FROM message_events WHERE message_id > $1 AND detail ? 'sent_at'",
    )
    .bind(after)
    .fetch_all(pool)
    .await?;
    let (google, twilio): (Vec<_>, Vec<_>) = rows.into_iter().partition(|(g, _)| *g);
    let times = |v: Vec<(bool, DateTime<Utc>)>| v.into_iter().map(|(_, t)| t).collect();
    Ok((times(google), times(twilio)))
}

/// (count, first, last) time of the history events of `kind` of messages
/// with row id above `after`.
pub async fn event_span(
    pool: &PgPool,
    after: i64,
    kind: &str,
) -> anyhow::Result<(i64, Option<DateTime<Utc>>, Option<DateTime<Utc>>)> {
    Ok(sqlx::query_as(
        "SELECT count(*), min(at), max(at) FROM message_events WHERE message_id > $1 AND kind = $2",
    )
    .bind(after)
    .bind(kind)
    .fetch_one(pool)
    .await?)
}

pub async fn server_version(pool: &PgPool) -> String {
    sqlx::query_scalar::<_, String>("SHOW server_version")
        .fetch_one(pool)
        .await
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// Server settings that shape commit cost, for the report.
pub async fn settings(pool: &PgPool) -> String {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT name, setting FROM pg_settings
         WHERE name IN ('synchronous_commit', 'fsync', 'shared_buffers', 'autovacuum',
                        'wal_level', 'commit_delay', 'max_connections')
         ORDER BY name",
    )
    .fetch_all(pool)
    .await
    .unwrap_or_default();
    rows.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Finds pgbench on PATH, else in the usual Debian/Ubuntu server layout.
pub fn find_pgbench() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join("pgbench");
            if p.is_file() {
                return Some(p);
            }
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let p = e.path().join("bin").join("pgbench");
            p.is_file().then_some((v, p))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, p)| p)
}

pub const PGBENCH_MISSING: &str = "pgbench not found (looked on PATH and in \
/usr/lib/postgresql/<version>/bin). Install it with your PostgreSQL client tools: \
Debian/Ubuntu `apt-get install postgresql-contrib` (or the postgresql-<version> server \
package, which ships it), Fedora/RHEL `dnf install postgresql-contrib`, macOS \
`brew install postgresql`";

/// What pgbench measured.
#[derive(Clone, Debug)]
pub struct PgbenchResult {
    pub tps: f64,
    pub latency_ms: f64,
    pub transactions: u64,
    /// Paced runs only: each transaction's latency from its scheduled
    /// start, as the bench's own open loop measures them, ascending.
    pub latencies: Vec<Duration>,
}

/// The baseline's script: single-row INSERT transactions into a table of
/// their own in the benchmark database.
pub async fn insert_script(pool: &PgPool, dir: &Path) -> anyhow::Result<PathBuf> {
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS bench_pgbench (
             id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
             v  text        NOT NULL,
             at timestamptz NOT NULL DEFAULT now())",
    )
    .execute(pool)
    .await?;
    let script = dir.join("pgbench-insert.sql");
    std::fs::write(&script, "INSERT INTO bench_pgbench (v) VALUES ('x');\n")?;
    Ok(script)
}

/// `script` run by pgbench (`-n -f script -c C -j C -T secs`); with `rate`,
/// paced at that many transactions a second (`-R`), each one's latency
/// logged (`-l`).
pub async fn pgbench(
    exe: &Path,
    url: &str,
    script: &Path,
    dir: &Path,
    clients: usize,
    secs: u64,
    rate: Option<f64>,
) -> anyhow::Result<PgbenchResult> {
    let parsed = reqwest::Url::parse(url)?;
    let mut cmd = tokio::process::Command::new(exe);
    cmd.arg("-n")
        .arg("-f")
        .arg(script)
        .arg("-c")
        .arg(clients.to_string())
        .arg("-j")
        .arg(clients.to_string())
        .arg("-T")
        .arg(secs.to_string())
        .arg("-h")
        .arg(parsed.host_str().unwrap_or("127.0.0.1"))
        .arg("-p")
        .arg(parsed.port().unwrap_or(5432).to_string())
        .arg("-U")
        .arg(if parsed.username().is_empty() {
            "postgres"
        } else {
            parsed.username()
        })
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let log = dir.join("pgbench-paced");
    if let Some(rate) = rate {
        cmd.arg("-R")
            .arg(format!("{:.0}", rate.max(1.0)))
            .arg("-l")
            .arg(format!("--log-prefix={}", log.display()));
    }
    cmd.arg(parsed.path().trim_start_matches('/'));
    if let Some(pw) = parsed.password() {
        cmd.env("PGPASSWORD", pw);
    }
    // The same transport as the service's connections (TLS or not).
    for (k, v) in parsed.query_pairs() {
        if k == "sslmode" {
            cmd.env("PGSSLMODE", v.as_ref());
        }
    }
    let out = tokio::time::timeout(Duration::from_secs(secs + 60), cmd.output())
        .await
        .context("pgbench did not finish")?
        .context("running pgbench")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(
        out.status.success(),
        "pgbench failed: {}{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    let mut result = parse_pgbench(&stdout)
        .with_context(|| format!("cannot read pgbench's output:\n{stdout}"))?;
    if rate.is_some() {
        result.latencies = paced_latencies(dir, "pgbench-paced")?;
    }
    Ok(result)
}

/// The latencies in pgbench's per-transaction logs (one file per thread,
/// named `<prefix>.<pid>[.<thread>]`; the third field is the latency in
/// microseconds), ascending. The logs are removed once read.
fn paced_latencies(dir: &Path, prefix: &str) -> anyhow::Result<Vec<Duration>> {
    let mut latencies = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let ours = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(&format!("{prefix}.")));
        if !ours {
            continue;
        }
        latencies.extend(log_latencies(&std::fs::read_to_string(&path)?));
        std::fs::remove_file(&path)?;
    }
    anyhow::ensure!(!latencies.is_empty(), "pgbench logged no transactions");
    latencies.sort_unstable();
    Ok(latencies)
}

fn log_latencies(log: &str) -> impl Iterator<Item = Duration> + '_ {
    log.lines().filter_map(|line| {
        let us: u64 = line.split_whitespace().nth(2)?.parse().ok()?;
        Some(Duration::from_micros(us))
    })
}

fn parse_pgbench(out: &str) -> anyhow::Result<PgbenchResult> {
    let number_after = |prefix: &str| {
        out.lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse::<f64>().ok())
    };
    Ok(PgbenchResult {
        tps: number_after("tps = ").context("no tps line")?,
        latency_ms: number_after("latency average = ").unwrap_or(0.0),
        transactions: number_after("number of transactions actually processed: ").unwrap_or(0.0)
            as u64,
        latencies: Vec::new(),
    })
}

/// One of the burst's steps: the history entry it writes, the state it
/// leaves, and what else of the row it sets. The values are of the shape the
/// service writes; the instants and tokens are the database's.
struct Step {
    kind: &'static str,
    before: &'static str,
    after: &'static str,
    sets: &'static str,
    detail: &'static str,
}

/// The burst's steps, in the order a message takes them.
const PIPELINE: [Step; 6] = [
    Step {
        kind: "revoke_attempt",
        before: "pending",
        after: "revoking",
        sets: "due_at = i.at + interval '30 s', lease_token = gen_random_uuid(), attempts = 1",
        detail: r#"{"attempt": 1}"#,
    },
    Step {
        kind: "revoke_ok",
        before: "revoking",
        after: "confirming",
        sets: "due_at = i.at + interval '1 s', lease_token = NULL, attempts = 0",
        detail: r#"{"status": 200, "sent_at": "2026-11-24T04:00:00.123456Z"}"#,
    },
    Step {
        kind: "sms_attempt",
        before: "confirming",
        after: "sms_sending",
        sets: "due_at = i.at + interval '30 s', lease_token = gen_random_uuid(), attempts = 1",
        detail: r#"{"attempt": 1}"#,
    },
    Step {
        kind: "sms_accepted",
        before: "sms_sending",
        after: "sms_sent",
        sets: "due_at = NULL, lease_token = NULL, attempts = 0, \
               sms_sid = 'SM' || md5(m.id::text), sms_status = 'queued', outcome = 'sms'",
        detail: r#"{"sid": "SM0123456789abcdef0123456789abcdef", "status": "queued", "sent_at": "2026-11-24T04:00:00.123456Z"}"#,
    },
    Step {
        kind: "sms_status",
        before: "sms_sent",
        after: "sms_sent",
        sets: "sms_status = 'sent'",
        detail: r#"{"status": "sent"}"#,
    },
    Step {
        kind: "sms_status",
        before: "sms_sent",
        after: "sms_delivered",
        sets: "sms_status = 'delivered'",
        detail: r#"{"status": "delivered"}"#,
    },
];

/// The sequence that hands each pgbench transaction its block of messages.
const CEILING_BLOCKS: &str = "bench_ceiling_blocks";

/// What the burst asks of PostgreSQL for `batch` messages, as one pgbench
/// transaction: each of the six steps a transaction of its own that locks
/// the rows and writes the step (history entries and row update in one
/// statement), as the service's batches do. It leaves out what the service
/// adds (the claim's search of the due index, encoding its arrays, NOTIFY),
/// so what it reaches should be more than the service's database could.
pub fn pipeline_script(batch: u64) -> String {
    let mut s = format!(
        "SELECT nextval('{CEILING_BLOCKS}') AS block \\gset\n\
         \\set lo :block * {batch} + 1\n\
         \\set hi :block * {batch} + {batch}\n"
    );
    for Step {
        kind,
        before,
        after,
        sets,
        detail,
    } in PIPELINE
    {
        s.push_str(&format!(
            "BEGIN;\n\
             SELECT * FROM messages WHERE id BETWEEN :lo AND :hi ORDER BY id FOR UPDATE;\n\
             WITH i AS MATERIALIZED (SELECT clock_timestamp() AS at), \
             history AS (INSERT INTO message_events (message_id, at, kind, state_before, state_after, detail) \
             SELECT g, i.at, '{kind}', '{before}', '{after}', '{detail}'::jsonb \
             FROM generate_series(:lo, :hi) AS g CROSS JOIN i) \
             UPDATE messages AS m SET state = '{after}', {sets}, updated_at = i.at FROM i \
             WHERE m.id BETWEEN :lo AND :hi RETURNING m.id, m.due_at, m.updated_at;\n\
             COMMIT;\n"
        ));
    }
    s
}

/// Readies the database for [`pipeline_script`]: `rows` pending messages
/// with ids from 1, and blocks handed out from 0. Runs block 0 itself and
/// checks that it took every message to the end with its six history
/// entries, so a script the schema has outgrown fails here rather than
/// measuring nothing. Returns the script's path.
pub async fn ceiling_script(
    pool: &PgPool,
    dir: &Path,
    batch: u64,
    rows: u64,
) -> anyhow::Result<PathBuf> {
    sqlx::query("TRUNCATE messages, message_events RESTART IDENTITY")
        .execute(pool)
        .await?;
    insert_pending(pool, "ceiling-", 0, rows, Utc::now(), 0).await?;
    vacuum(pool).await?;
    sqlx::raw_sql(&format!(
        "DROP SEQUENCE IF EXISTS {CEILING_BLOCKS}; CREATE SEQUENCE {CEILING_BLOCKS} MINVALUE 0 START 0"
    ))
    .execute(pool)
    .await?;
    let script = pipeline_script(batch);
    sqlx::query(&format!("SELECT nextval('{CEILING_BLOCKS}')"))
        .execute(pool)
        .await?;
    sqlx::raw_sql(&block_sql(&script, 0, batch))
        .execute(pool)
        .await?;
    ceiling_check(pool, batch, 0, rows).await?;
    let path = dir.join("pgbench-pipeline.sql");
    std::fs::write(&path, script)?;
    Ok(path)
}

/// `script`'s work for one block of messages, as plain SQL: without the
/// meta-commands that draw the block, its bounds written in.
fn block_sql(script: &str, block: u64, batch: u64) -> String {
    script
        .lines()
        .filter(|l| !l.starts_with('\\') && !l.starts_with("SELECT nextval"))
        .collect::<Vec<_>>()
        .join("\n")
        .replace(":lo", &(block * batch + 1).to_string())
        .replace(":hi", &(block * batch + batch).to_string())
}

/// Checks that pgbench did the work it counted: each transaction it
/// reported took a block of messages to the end with six history entries
/// each (block 0, the check, besides), and no block ran past the rows loaded.
/// An `UPDATE` that finds no rows is no error, so a script that missed its
/// rows would otherwise be counted as fast.
pub async fn ceiling_check(
    pool: &PgPool,
    batch: u64,
    transactions: u64,
    rows: u64,
) -> anyhow::Result<()> {
    let last: i64 = sqlx::query_scalar(&format!("SELECT last_value FROM {CEILING_BLOCKS}"))
        .fetch_one(pool)
        .await?;
    let handed = (last as u64 + 1) * batch;
    anyhow::ensure!(
        handed <= rows,
        "pgbench ran out of messages ({handed} wanted, {rows} loaded)"
    );
    let (done, steps): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM messages WHERE state = 'sms_delivered'),
                (SELECT count(*) FROM message_events WHERE kind <> 'registered')",
    )
    .fetch_one(pool)
    .await?;
    let want = (transactions + 1) * batch;
    anyhow::ensure!(
        done as u64 == want && steps as u64 == want * PIPELINE.len() as u64,
        "block 0 and {transactions} more of {batch} messages were counted, but {done} messages \
         of {want} were taken to the end, with {steps} steps ({} each expected)",
        PIPELINE.len()
    );
    Ok(())
}

/// History entries a burst's step statements wrote at a time, on average
/// (each statement stamps its entries with one instant): the batch size
/// its writers reached.
pub async fn steps_per_statement(pool: &PgPool, after: i64) -> anyhow::Result<Option<f64>> {
    Ok(sqlx::query_scalar(
        "SELECT count(*)::float8 / NULLIF(count(DISTINCT at), 0)
         FROM message_events WHERE message_id > $1 AND kind <> 'registered'",
    )
    .bind(after)
    .fetch_one(pool)
    .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pipeline_script_takes_each_block_through_six_steps_to_delivered() {
        let mut state = "pending";
        for step in PIPELINE {
            assert_eq!(
                step.before, state,
                "each step starts where the last one left"
            );
            state = step.after;
        }
        assert_eq!(state, "sms_delivered");
        let script = pipeline_script(61);
        assert!(script.starts_with(&format!(
            "SELECT nextval('{CEILING_BLOCKS}') AS block \\gset\n"
        )));
        assert!(script.contains("\\set lo :block * 61 + 1\n\\set hi :block * 61 + 61\n"));
        assert_eq!(script.matches("BEGIN;").count(), 6);
        assert_eq!(script.matches("FOR UPDATE;").count(), 6);
        assert_eq!(script.matches("INSERT INTO message_events").count(), 6);
        assert_eq!(script.matches("COMMIT;").count(), 6);
        // `block_sql` drops whole lines: the meta-commands and the draw.
        assert!(script
            .lines()
            .all(|l| l.starts_with('\\') || l.ends_with(';') || l.ends_with("\\gset")));
        let block = block_sql(&script, 2, 61);
        assert!(!block.contains(":lo") && !block.contains(":hi"));
        assert!(block.contains("BETWEEN 123 AND 183"));
        assert!(block.contains("generate_series(123, 183)"));
        assert!(!block.contains("nextval") && !block.contains("\\set"));
    }

    /// The ceiling counts only work the database did: pgbench's count is
    /// checked against the messages its blocks took to the end, and against
    /// the rows loaded. Needs the PostgreSQL the test suite runs against.
    #[tokio::test]
    async fn the_ceiling_counts_only_work_the_database_did() {
        let server = std::env::var("TEST_DATABASE_URL")
            .or_else(|_| std::env::var("DATABASE_URL"))
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let url = database_url(
            &server,
            &format!("rbmf_t_{}", uuid::Uuid::new_v4().simple()),
        )
        .unwrap();
        crate::sandbox::ensure_database(&url).await.unwrap();
        let checked = async {
            let pool = pool(&url).await?;
            crate::store::Store::new(pool.clone(), Duration::ZERO)
                .migrate()
                .await?;
            let dir = std::env::temp_dir();
            let (batch, rows) = (5, 30);
            // Block 0 runs and is checked as the script is readied.
            let script = std::fs::read_to_string(ceiling_script(&pool, &dir, batch, rows).await?)?;
            anyhow::ensure!(
                ceiling_check(&pool, batch, 1, rows).await.is_err(),
                "a transaction counted but never run passed"
            );
            // Block 1, as a pgbench transaction would run it.
            sqlx::query("SELECT nextval('bench_ceiling_blocks')")
                .execute(&pool)
                .await?;
            sqlx::raw_sql(&block_sql(&script, 1, batch))
                .execute(&pool)
                .await?;
            ceiling_check(&pool, batch, 1, rows).await?;
            // Blocks drawn past the rows loaded find nothing to update.
            sqlx::query("SELECT setval('bench_ceiling_blocks', 6)")
                .execute(&pool)
                .await?;
            let Err(e) = ceiling_check(&pool, batch, 1, rows).await else {
                anyhow::bail!("blocks past the rows loaded passed");
            };
            anyhow::ensure!(
                e.to_string()
                    .contains("ran out of messages (35 wanted, 30 loaded)"),
                "{e}"
            );
            anyhow::Ok(())
        }
        .await;
        crate::sandbox::drop_database(&url).await.unwrap();
        checked.unwrap();
    }

    #[test]
    fn reads_pgbench_output() {
        let out = "pgbench (15.20 (Debian 15.20-0+deb12u1))\n\
                   transaction type: /tmp/x.sql\n\
                   number of transactions actually processed: 21465\n\
                   latency average = 3.666 ms\n\
                   initial connection time = 109.652 ms\n\
                   tps = 4363.870124 (without initial connection time)\n";
        let r = parse_pgbench(out).unwrap();
        assert!((r.tps - 4363.870124).abs() < 1e-6);
        assert!((r.latency_ms - 3.666).abs() < 1e-9);
        assert_eq!(r.transactions, 21465);
    }

    #[test]
    fn reads_pgbench_transaction_logs() {
        // client_id transaction_no time script_no time_epoch time_us schedule_lag
        let log = "0 0 1534 0 1763913600 123456 210\n\
                   3 17 25010 0 1763913600 223456 24000\n\
                   garbage\n";
        assert_eq!(
            log_latencies(log).collect::<Vec<_>>(),
            [Duration::from_micros(1534), Duration::from_micros(25010)]
        );
    }

    #[test]
    fn urls_and_phones() {
        assert_eq!(
            database_url("postgres://u:p@127.0.0.1:5433/postgres", "rbmf_bench_x").unwrap(),
            "postgres://u:p@127.0.0.1:5433/rbmf_bench_x"
        );
        assert_eq!(phone(42), "+15550000042");
        assert_eq!(phone(12_345_678), "+15552345678");
    }
}
