//! Wires the parts together from settings and runs them until shutdown. The
//! listener and the shutdown signal come from the caller, so `serve`, the
//! sandbox and the tests all start the service the same way.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{DatabaseSettings, Settings};
use crate::domain::{OnUncertain, Policy};
use crate::google::{RbmClient, TokenSource};
use crate::http::{router, AppState};
use crate::store::Store;
use crate::twilio::TwilioClient;
use crate::worker::Worker;

/// The deployment's policy: what a message without its own (one stored
/// before policies existed) lives by.
pub fn policy(settings: &Settings) -> Policy {
    Policy {
        confirm_window: settings.fallback.confirm_window,
        lease: settings.worker.lease,
        on_uncertain: OnUncertain::Skip,
    }
}

pub async fn connect_store(
    db: &DatabaseSettings,
    notify_horizon: Duration,
) -> anyhow::Result<Store> {
    Store::connect(db, notify_horizon)
        .await
        .context("DATABASE_URL is not a valid PostgreSQL URL")
}

/// Applies migrations, waiting (with a bounded back-off) for a database that
/// is still starting, as it is when started beside us by docker compose.
pub async fn migrate(store: &Store, patience: Duration) -> anyhow::Result<()> {
    let give_up = tokio::time::Instant::now() + patience;
    let mut delay = Duration::from_millis(200);
    loop {
        match store.migrate().await {
            Ok(()) => return Ok(()),
            Err(e) if e.is_unavailable() && tokio::time::Instant::now() + delay < give_up => {
                warn!(error = %e, "database not reachable yet; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e).context("applying database migrations (DATABASE_URL)"),
        }
    }
}

/// Runs the HTTP server and the scheduler until `shutdown` is cancelled.
pub async fn run(
    settings: Settings,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let settings = Arc::new(settings);
    let store = connect_store(&settings.database, settings.worker.max_idle)
        .await?
        .with_default_callback_url(settings.callbacks.url.as_deref())
        .with_unreachable_ttl(settings.fallback.rcs_unreachable_ttl)
        .with_claim_lead(settings.worker.claim_lead);
    migrate(&store, Duration::from_secs(60)).await?;

    let tokens =
        TokenSource::from_key_file(&settings.rbm.service_account_key, settings.rbm.timeout)
            .await
            .context("RBMF_RBM_SERVICE_ACCOUNT_KEY")?;
    let mut rbm = RbmClient::new(&settings.rbm, tokens);
    for agent in &settings.agents[1..] {
        let tokens = TokenSource::from_key_file(&agent.service_account_key, settings.rbm.timeout)
            .await
            .with_context(|| format!("the service_account_key of agent {}", agent.id))?;
        rbm = rbm.with_agent(&agent.id, &agent.base_url, tokens);
    }
    let metrics = crate::metrics::Metrics::new();
    let worker = Arc::new(Worker {
        store: store.clone(),
        rbm: rbm.with_metrics(metrics.clone()),
        twilio: TwilioClient::new(&settings.twilio).with_metrics(metrics.clone()),
        metrics: metrics.clone(),
        policy: policy(&settings),
        settings: settings.worker.clone(),
        public_url: settings.server.public_url.clone(),
        limits: crate::worker::Limits::new(&settings.worker).with_agents(&settings.agents),
        longest_call: settings.rbm.timeout.max(settings.twilio.timeout),
    });
    let grace = settings.server.shutdown_grace;
    let scheduler = tokio::spawn(worker.run(shutdown.clone(), grace));
    let outbox = tokio::spawn(crate::outbox::run(
        store.pool().clone(),
        settings.clone(),
        shutdown.clone(),
        grace,
    ));
    let applier = tokio::spawn(crate::applier::run(
        store.clone(),
        policy(&settings),
        settings.worker.max_idle,
        shutdown.clone(),
    ));
    tokio::spawn(crate::worker::prune(
        store.clone(),
        settings.retention.clone(),
        shutdown.clone(),
    ));

    let state = AppState::new(store.clone(), settings.clone(), policy(&settings), metrics);
    if let Some(addr) = settings.metrics.listen {
        let operator = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} (RBMF__METRICS__LISTEN)"))?;
        info!(%addr, "metrics and dashboard listening");
        tokio::spawn(serve(
            operator,
            crate::http::operator_router(state.clone()),
            settings.server.header_timeout,
            shutdown.clone(),
        ));
    }
    let app = router(state);
    let addr = listener.local_addr()?;
    info!(%addr, agent = %settings.rbm.agent_id, "rbm-fallback listening");
    // Requests in flight get the grace period to finish, then are dropped.
    let drain_deadline = async {
        shutdown.cancelled().await;
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        () = serve(listener, app, settings.server.header_timeout, shutdown.clone()) => {}
        () = drain_deadline => {
            warn!("requests still in flight after the grace period; closing them");
        }
    }
    shutdown.cancel();
    if tokio::time::timeout(grace + Duration::from_secs(1), scheduler)
        .await
        .is_err()
    {
        warn!("scheduler did not stop within the grace period");
    }
    // Its last batch is one transaction; what it did not take stays queued.
    let _ = tokio::time::timeout(grace, applier).await;
    // It bounds its own wait for deliveries in flight by the grace period.
    let _ = tokio::time::timeout(grace + Duration::from_secs(1), outbox).await;
    store.pool().close().await;
    info!("stopped");
    Ok(())
}

/// The largest request head (request line and headers) accepted; a larger
/// one is answered 431 and its connection closed.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// Serves HTTP/1.1 until `shutdown`, then lets the open connections finish
/// their requests (the caller bounds how long). `axum::serve` has no limit on
/// how long a client may take to send its headers, so a client trickling
/// them (slowloris) could hold a connection forever: this server closes a
/// connection whose request head is not complete within `header_timeout`,
/// which also bounds how long an idle keep-alive connection stays open. A
/// slow body is bounded by the per-request timeout in the router.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    header_timeout: Duration,
    shutdown: CancellationToken,
) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_header_size(MAX_HEADER_BYTES);
    let graceful = GracefulShutdown::new();
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(e) => {
                    if !is_connection_error(&e) {
                        // Out of file descriptors and the like: wait instead
                        // of spinning, as axum::serve does.
                        warn!(error = %e, "cannot accept connections");
                        tokio::select! {
                            () = tokio::time::sleep(Duration::from_secs(1)) => {}
                            () = shutdown.cancelled() => break,
                        }
                    }
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                // Slow or broken clients; nothing the service can act on.
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

fn is_connection_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}
