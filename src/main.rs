use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use rbm_fallback::config::Settings;

// glibc's allocator showed as a quarter of the service's CPU time in
// profiles of the burst benchmark (many short-lived buffers per message).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Revoke RCS Business Messaging messages that miss their deadline, and send
/// them as SMS once the revocation is confirmed.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// A TOML file layered over the built-in defaults (see config/default.toml).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Log format: "text" or "json". RUST_LOG sets the filter (default: info).
    #[arg(long, global = true, env = "RBMF_LOG_FORMAT", default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP server, scheduler and workers (applies pending migrations first).
    Serve,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Load the configuration as `serve` would and check it, one line per
    /// check; exit 0 only if none fails.
    CheckConfig {
        /// Also obtain a Google access token, connect to the database and
        /// reach Twilio with the configured credentials.
        #[arg(long)]
        online: bool,
    },
    /// Run the service against loopback emulators of Google and Twilio.
    Sandbox {
        /// Drive a mixed scenario, print the outcome table, and exit 0 only if
        /// every message reached the outcome the simulation implies.
        #[arg(long)]
        demo: bool,
        /// Port for the service (0: any free port).
        #[arg(long, default_value_t = 8080)]
        port: u16,
    },
    /// Run fault scenarios (crashes, replicas, database restart, outages,
    /// injected faults) against the service and print a results table; exit
    /// non-zero if a message was lost or an SMS sent twice.
    Chaos {
        /// A scenario to run (repeatable): faults, crash, replicas,
        /// postgres-restart, outage, ambiguous-sms. Default: all.
        #[arg(long = "scenario", value_name = "NAME")]
        scenarios: Vec<String>,
        /// Messages per scenario (default 2000; 200 with --quick).
        #[arg(long)]
        messages: Option<usize>,
        /// Small, fast versions of the scenarios.
        #[arg(long)]
        quick: bool,
        /// Seed for the message mix, the faults and the kill moments.
        #[arg(long)]
        seed: Option<u64>,
        /// Faults layered over the `faults` scenario's own, e.g.
        /// google.error_rate=0.2,twilio.response_lost_rate=0.1.
        #[arg(long, value_name = "SPEC")]
        faults: Option<String>,
    },
    /// Measure throughput, latency, deadline precision, burst and memory
    /// against the emulators and a real PostgreSQL, next to a pgbench
    /// baseline, and print the figures with their targets (BENCHMARKS.md).
    /// Build with --release: `cargo run --release -- bench`.
    Bench(rbm_fallback::bench::Options),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // The service's processes only: the bench and chaos drivers keep
    // mimalloc's own behaviour, so their load is measured as before.
    if matches!(cli.command, Command::Serve | Command::Sandbox { .. }) {
        // SAFETY: no thread has started yet (clap spawns none).
        unsafe { rbm_fallback::allocator::return_freed_memory_promptly() };
    }
    // An invalid setting here is reported by the full load that follows.
    let otlp = Settings::load_telemetry(cli.config.as_deref()).ok();
    let telemetry = match rbm_fallback::telemetry::init(
        matches!(cli.log_format, LogFormat::Json),
        otlp.as_ref(),
    ) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let runtime = tokio::runtime::Runtime::new().expect("cannot start the async runtime");
    let code = match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    };
    drop(runtime);
    // Spans still buffered are sent before the process ends.
    telemetry.shutdown();
    code
}

async fn run(cli: Cli) -> anyhow::Result<std::process::ExitCode> {
    match cli.command {
        Command::Serve => {
            let settings = Settings::load(cli.config.as_deref())?;
            let listener = tokio::net::TcpListener::bind(settings.server.listen)
                .await
                .with_context(|| {
                    format!("cannot listen on {} (RBMF_LISTEN)", settings.server.listen)
                })?;
            rbm_fallback::app::run(settings, listener, shutdown_signal()).await?;
        }
        Command::Migrate => {
            let db = Settings::load_database(cli.config.as_deref())?;
            let store =
                rbm_fallback::app::connect_store(&db, std::time::Duration::from_secs(1)).await?;
            rbm_fallback::app::migrate(&store, std::time::Duration::from_secs(60)).await?;
            tracing::info!("migrations applied");
        }
        Command::CheckConfig { online } => {
            let checks = rbm_fallback::check_config::run(cli.config.as_deref(), online).await;
            for check in &checks {
                println!("{check}");
            }
            let failed = checks
                .iter()
                .filter(|c| c.verdict == rbm_fallback::check_config::Verdict::Fail)
                .count();
            if failed > 0 {
                println!("{failed} check(s) failed");
                return Ok(std::process::ExitCode::FAILURE);
            }
            println!("all checks passed");
        }
        Command::Chaos {
            scenarios,
            messages,
            quick,
            seed,
            faults,
        } => {
            let ok = rbm_fallback::chaos::run(rbm_fallback::chaos::Options {
                scenarios,
                messages,
                quick,
                seed,
                faults,
            })
            .await?;
            if !ok {
                return Ok(std::process::ExitCode::FAILURE);
            }
        }
        Command::Bench(opts) => rbm_fallback::bench::run(opts).await?,
        Command::Sandbox { demo, port } => {
            let ok = rbm_fallback::sandbox::run(
                rbm_fallback::sandbox::Options { demo, port },
                shutdown_signal(),
            )
            .await?;
            if !ok {
                return Ok(std::process::ExitCode::FAILURE);
            }
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// Cancelled on SIGTERM or Ctrl-C.
fn shutdown_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("cannot install the SIGTERM handler");
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("shutdown requested");
        cancel.cancel();
    });
    token
}
