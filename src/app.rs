//! Wires the parts together from settings and runs them until shutdown. The
//! listener and the shutdown signal come from the caller, so `serve`, the
//! sandbox and the tests all start the service the same way.

use std::sync::Arc;
use std::time::Duration;

use std::future::IntoFuture;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{DatabaseSettings, Settings};
use crate::domain::Policy;
use crate::google::{RbmClient, TokenSource};
use crate::http::{router, AppState};
use crate::store::Store;
use crate::twilio::TwilioClient;
use crate::worker::Worker;

pub fn policy(settings: &Settings) -> Policy {
    Policy {
        confirm_window: settings.fallback.confirm_window,
        lease: settings.worker.lease,
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
    let store = connect_store(&settings.database, settings.worker.max_idle).await?;
    migrate(&store, Duration::from_secs(60)).await?;

    let tokens =
        TokenSource::from_key_file(&settings.rbm.service_account_key, settings.rbm.timeout)
            .await
            .context("RBMF_RBM_SERVICE_ACCOUNT_KEY")?;
    let worker = Arc::new(Worker {
        store: store.clone(),
        rbm: RbmClient::new(&settings.rbm, tokens),
        twilio: TwilioClient::new(&settings.twilio),
        policy: policy(&settings),
        settings: settings.worker.clone(),
        public_url: settings.server.public_url.clone(),
    });
    let grace = settings.server.shutdown_grace;
    let scheduler = tokio::spawn(worker.run(shutdown.clone(), grace));

    let app = router(AppState {
        store: store.clone(),
        settings: settings.clone(),
        policy: policy(&settings),
    });
    let addr = listener.local_addr()?;
    info!(%addr, agent = %settings.rbm.agent_id, "rbm-fallback listening");
    let server_shutdown = shutdown.clone();
    let server = axum::serve(listener, app)
        .with_graceful_shutdown(async move { server_shutdown.cancelled().await })
        .into_future();
    // Requests in flight get the grace period to finish, then are dropped.
    let drain_deadline = async {
        shutdown.cancelled().await;
        tokio::time::sleep(grace).await;
    };
    let result = tokio::select! {
        r = server => r.context("HTTP server failed"),
        _ = drain_deadline => {
            warn!("requests still in flight after the grace period; closing them");
            Ok(())
        }
    };
    // The server may also end on its own (an accept error): stop the rest.
    shutdown.cancel();
    if tokio::time::timeout(grace + Duration::from_secs(1), scheduler)
        .await
        .is_err()
    {
        warn!("scheduler did not stop within the grace period");
    }
    store.pool().close().await;
    info!("stopped");
    result
}
