//! The sandbox: the real service wired to loopback emulators of Google and
//! Twilio through ordinary configuration (base URLs, a service-account key
//! file, tokens). The same harness drives the integration tests.
//!
//! The service runs on a runtime of its own, so that a test can kill it at
//! any instant, as a crash would: every task stops where it is, and only
//! what PostgreSQL committed survives.
//!
//! [`Rig`] is the part without the service: the emulators and the settings
//! that point a service at them. [`Sandbox`] runs one service in this
//! process on top of it; [`ServiceProcess`] runs one as a child OS process
//! (`rbm-fallback serve`), for SIGKILL and for several replicas.

pub mod demo;
mod process;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use rand::Rng;
use sqlx::{Connection, PgConnection};
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::emulator::google::{GoogleEmulator, GoogleEmulatorConfig, PhoneBehaviour};
use crate::emulator::twilio::{TwilioEmulator, TwilioEmulatorConfig};

pub use process::{free_port, ServiceProcess};

pub const SANDBOX_FROM: &str = "+15005550006";
const DEFAULT_DATABASE: &str = "postgres://postgres@127.0.0.1:5432/rbm_fallback_sandbox";

pub struct Options {
    pub demo: bool,
    pub port: u16,
}

/// How to build a sandbox.
pub struct SandboxConfig {
    pub database_url: String,
    /// 0 picks a free port.
    pub port: u16,
    pub confirm_window: Duration,
    pub default_phone: PhoneBehaviour,
    /// Further settings, by environment name (e.g. RBMF__WORKER__LEASE_MS).
    pub env: Vec<(String, String)>,
    /// How often the Google emulator tries one webhook, and its longest
    /// pause between tries.
    pub webhook_max_attempts: u32,
    pub webhook_retry_cap: Duration,
    /// Seeds the emulators' deterministic parts.
    pub seed: u64,
    /// A config file layered under `env`, as `--config` would be; e.g. to
    /// add `[[agents]]` beside the emulator's own. Services in this process
    /// only: child processes get the environment alone.
    pub config_file: Option<PathBuf>,
}

impl SandboxConfig {
    pub fn new(database_url: impl Into<String>) -> SandboxConfig {
        SandboxConfig {
            database_url: database_url.into(),
            port: 0,
            confirm_window: Duration::from_millis(1500),
            default_phone: PhoneBehaviour::Offline,
            env: Vec::new(),
            webhook_max_attempts: GoogleEmulatorConfig::default().webhook_max_attempts,
            webhook_retry_cap: GoogleEmulatorConfig::default().webhook_retry_cap,
            seed: 0,
            config_file: None,
        }
    }
}

/// The emulators, a service-account key file for the Google one, and the
/// settings that wire a service to them. Every service started from one rig
/// (in this process or as child processes) shares the emulators, the API
/// token and the database.
pub struct Rig {
    pub google: GoogleEmulator,
    pub twilio: TwilioEmulator,
    pub api_token: String,
    pub database_url: String,
    client_token: String,
    key_dir: PathBuf,
    key_path: PathBuf,
    confirm_window: Duration,
    env: Vec<(String, String)>,
    config_file: Option<PathBuf>,
}

impl Rig {
    pub async fn start(cfg: &SandboxConfig) -> anyhow::Result<Rig> {
        let client_token = random_hex(12);
        let google = GoogleEmulator::start(GoogleEmulatorConfig {
            client_token: client_token.clone(),
            default_phone: cfg.default_phone.clone(),
            webhook_max_attempts: cfg.webhook_max_attempts,
            webhook_retry_cap: cfg.webhook_retry_cap,
            seed: cfg.seed,
            ..GoogleEmulatorConfig::default()
        })
        .await
        .context("starting the Google emulator")?;
        let twilio = TwilioEmulator::start(TwilioEmulatorConfig::default())
            .await
            .context("starting the Twilio emulator")?;

        let key_dir = std::env::temp_dir().join(format!("rbm-fallback-sandbox-{}", random_hex(6)));
        std::fs::create_dir_all(&key_dir)?;
        let key_path = key_dir.join("service-account.json");
        std::fs::write(&key_path, google.service_account_key_json())?;
        Ok(Rig {
            google,
            twilio,
            api_token: format!("sandbox-{}", random_hex(16)),
            database_url: cfg.database_url.clone(),
            client_token,
            key_dir,
            key_path,
            confirm_window: cfg.confirm_window,
            env: cfg.env.clone(),
            config_file: cfg.config_file.clone(),
        })
    }

    /// The settings of one service instance, by their environment names:
    /// listening on `listen`, reachable by Twilio at `public_url`.
    pub fn service_env(&self, listen: SocketAddr, public_url: &str) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = [
            ("RBMF_LISTEN", listen.to_string()),
            ("RBMF_PUBLIC_URL", public_url.to_owned()),
            ("RBMF_API_TOKEN", self.api_token.clone()),
            ("DATABASE_URL", self.database_url.clone()),
            ("RBMF_RBM_AGENT_ID", self.google.agent_id().to_owned()),
            ("RBMF_RBM_CLIENT_TOKEN", self.client_token.clone()),
            ("RBMF_RBM_BASE_URL", self.google.base_url()),
            (
                "RBMF_RBM_SERVICE_ACCOUNT_KEY",
                self.key_path.display().to_string(),
            ),
            ("RBMF_TWILIO_BASE_URL", self.twilio.base_url()),
            (
                "RBMF_TWILIO_ACCOUNT_SID",
                self.twilio.account_sid().to_owned(),
            ),
            (
                "RBMF_TWILIO_AUTH_TOKEN",
                self.twilio.auth_token().to_owned(),
            ),
            ("RBMF_TWILIO_FROM", SANDBOX_FROM.to_owned()),
            (
                "RBMF_CONFIRM_WINDOW_MS",
                self.confirm_window.as_millis().to_string(),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        // Later entries win, as they would in a shell.
        env.extend(self.env.iter().cloned());
        env
    }

    /// The same settings, loaded and validated as the service would.
    pub fn settings(&self, listen: SocketAddr, public_url: &str) -> anyhow::Result<Settings> {
        let env: HashMap<String, String> =
            self.service_env(listen, public_url).into_iter().collect();
        Ok(Settings::load_with(self.config_file.as_deref(), &|name| {
            env.get(name).cloned()
        })?)
    }

    /// Starts `exe serve` (the rbm-fallback binary) as a child process on
    /// 127.0.0.1:`port` (0: a free port), wired to this rig. Its log goes to
    /// a file in the rig's temporary directory. It is not yet ready when
    /// this returns: see [`ServiceProcess::wait_ready`].
    pub fn spawn_process(&self, exe: &Path, port: u16) -> anyhow::Result<ServiceProcess> {
        let port = if port == 0 { free_port()? } else { port };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let url = format!("http://{addr}");
        // Refuse settings the service would refuse, here, with the reason.
        self.settings(addr, &url)?;
        let log = self.key_dir.join(format!("service-{port}.log"));
        ServiceProcess::spawn(exe, self.service_env(addr, &url), addr, log)
    }

    /// A client for the internal API, with the bearer token set.
    pub fn api(&self) -> reqwest::Client {
        api_client(&self.api_token)
    }

    /// The rig's temporary directory (key file, child process logs).
    pub fn dir(&self) -> &Path {
        &self.key_dir
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.key_dir);
    }
}

fn api_client(token: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    let bearer = format!("Bearer {token}");
    headers.insert(
        reqwest::header::AUTHORIZATION,
        bearer.parse().expect("token is ASCII"),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .pool_idle_timeout(crate::emulator::CLIENT_IDLE)
        .build()
        .expect("static client configuration")
}

pub struct Sandbox {
    pub google: GoogleEmulator,
    pub twilio: TwilioEmulator,
    /// The service's base URL.
    pub url: String,
    pub api_token: String,
    pub settings: Settings,
    service: Option<Service>,
    rig: Rig,
}

struct Service {
    shutdown: CancellationToken,
    crash: Option<tokio::sync::oneshot::Sender<()>>,
    thread: std::thread::JoinHandle<anyhow::Result<()>>,
}

fn random_hex(bytes: usize) -> String {
    let mut rng = rand::thread_rng();
    (0..bytes)
        .map(|_| format!("{:02x}", rng.gen::<u8>()))
        .collect()
}

impl Sandbox {
    pub async fn start(cfg: SandboxConfig) -> anyhow::Result<Sandbox> {
        let rig = Rig::start(&cfg).await?;
        let listener = std::net::TcpListener::bind(("127.0.0.1", cfg.port))
            .with_context(|| format!("cannot listen on 127.0.0.1:{}", cfg.port))?;
        let addr = listener.local_addr()?;
        let url = format!("http://{addr}");
        let settings = rig.settings(addr, &url)?;
        rig.google.set_webhook_url(&format!("{url}/webhooks/rbm"));

        let mut sandbox = Sandbox {
            google: rig.google.clone(),
            twilio: rig.twilio.clone(),
            url,
            api_token: rig.api_token.clone(),
            settings,
            service: None,
            rig,
        };
        sandbox.service = Some(spawn_service(sandbox.settings.clone(), listener));
        Ok(sandbox)
    }

    /// The emulators and settings under this sandbox.
    pub fn rig(&self) -> &Rig {
        &self.rig
    }

    /// Kills the service at once, as a crash would.
    pub fn crash(&mut self) {
        if let Some(mut service) = self.service.take() {
            if let Some(crash) = service.crash.take() {
                let _ = crash.send(());
            }
            let _ = service.thread.join();
        }
    }

    /// Stops the service gracefully (as on SIGTERM) and returns how it ended.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        match self.service.take() {
            Some(service) => {
                service.shutdown.cancel();
                service
                    .thread
                    .join()
                    .map_err(|_| anyhow::anyhow!("the service thread panicked"))?
            }
            None => Ok(()),
        }
    }

    /// Starts the service again on the same address and database.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.crash();
        let listener = std::net::TcpListener::bind(self.settings.server.listen)?;
        self.service = Some(spawn_service(self.settings.clone(), listener));
        Ok(())
    }

    /// A client for the internal API, with the bearer token set.
    pub fn api(&self) -> reqwest::Client {
        api_client(&self.api_token)
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        // The rig (and its key file) goes after the service has stopped.
        self.crash();
    }
}

fn spawn_service(settings: Settings, listener: std::net::TcpListener) -> Service {
    let shutdown = CancellationToken::new();
    let (crash_tx, crash_rx) = tokio::sync::oneshot::channel::<()>();
    let token = shutdown.clone();
    let thread = std::thread::spawn(move || -> anyhow::Result<()> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let result = runtime.block_on(async move {
            listener.set_nonblocking(true)?;
            let listener = tokio::net::TcpListener::from_std(listener)?;
            tokio::select! {
                r = crate::app::run(settings, listener, token) => r,
                _ = crash_rx => Ok(()),
            }
        });
        // After a crash this drops every task mid-flight.
        runtime.shutdown_background();
        result
    });
    Service {
        shutdown,
        crash: Some(crash_tx),
        thread,
    }
}

/// The database name in `url` (checked to be a plain identifier, since
/// identifiers cannot be bound) and a connection to the server's
/// `postgres` database, from where it can be created or dropped.
async fn admin_connection(url: &str) -> anyhow::Result<(String, PgConnection)> {
    let parsed = reqwest::Url::parse(url).context("DATABASE_URL is not a URL")?;
    let name = parsed.path().trim_start_matches('/').to_owned();
    anyhow::ensure!(
        !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
        "database name {name:?} must be letters, digits and underscores"
    );
    let mut admin = parsed;
    admin.set_path("/postgres");
    let conn = PgConnection::connect(admin.as_str())
        .await
        .with_context(|| format!("cannot reach PostgreSQL at {}", redact(&admin)))?;
    Ok((name, conn))
}

/// Creates the database named in `url` if it does not exist yet.
pub async fn ensure_database(url: &str) -> anyhow::Result<()> {
    let (name, mut conn) = admin_connection(url).await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&mut conn)
            .await?;
    if !exists {
        // The name was checked above; identifiers cannot be bound.
        match sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut conn)
            .await
        {
            Ok(_) => {}
            // Another process created it in the meantime.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Drops the database named in `url` (if it exists), disconnecting whoever
/// is still connected to it.
pub async fn drop_database(url: &str) -> anyhow::Result<()> {
    let (name, mut conn) = admin_connection(url).await?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .execute(&mut conn)
        .await?;
    Ok(())
}

fn redact(url: &reqwest::Url) -> String {
    let mut shown = url.clone();
    if shown.password().is_some() {
        let _ = shown.set_password(Some("***"));
    }
    shown.to_string()
}

/// `rbm-fallback sandbox [--demo]`.
pub async fn run(opts: Options, shutdown: CancellationToken) -> anyhow::Result<bool> {
    let database_url =
        std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_DATABASE.to_owned());
    ensure_database(&database_url).await?;
    let mut cfg = SandboxConfig::new(&database_url);
    cfg.port = if opts.demo { 0 } else { opts.port };
    cfg.default_phone = PhoneBehaviour::Online {
        delay: Duration::from_secs(3),
        read_after: Some(Duration::from_secs(2)),
    };
    let mut sandbox = Sandbox::start(cfg).await?;
    if opts.demo {
        let ok = demo::run(&sandbox).await;
        sandbox.stop()?;
        return ok;
    }
    print_welcome(&sandbox);
    shutdown.cancelled().await;
    sandbox.stop()?;
    Ok(true)
}

fn print_welcome(s: &Sandbox) {
    let id = uuid::Uuid::new_v4();
    let send_id = uuid::Uuid::new_v4();
    println!(
        r#"
rbm-fallback sandbox is running.

  service         {url}   (API token: {token})
  Google emulator {google}   (webhooks go to {url}/webhooks/rbm)
  Twilio emulator {twilio}
  dashboard       {url}/dashboard?token={token}
  metrics         {url}/metrics
  API reference   {url}/docs   (OpenAPI document: {url}/openapi.json)

Phones deliver RCS 3 s after it is sent; the confirm window is {window} ms.
Try it: send an RCS as the agent would, then register it with a 2 s deadline.
The phone is too slow, so the service revokes it and falls back to SMS.

  curl -s {google}/emulator/agent-send -H 'Content-Type: application/json' \
    -d '{{"phone":"+15550100001","message_id":"{id}"}}'
  curl -s {url}/v1/messages -H 'Authorization: Bearer {token}' \
    -H 'Content-Type: application/json' \
    -d '{{"phone":"+15550100001","message_id":"{id}","revoke_after_secs":2,"sms":{{"body":"Your code is 123456"}}}}'
  sleep 5; curl -s {url}/v1/messages/{id} -H 'Authorization: Bearer {token}'

Or hand the send over (send mode): the service sends the RCS itself, here with
Google's TTL and the revoke at 2 s.

  curl -s {url}/v1/messages -H 'Authorization: Bearer {token}' \
    -H 'Content-Type: application/json' \
    -d '{{"phone":"+15550100002","message_id":"{send_id}","revoke_after_secs":2,"rcs":{{"contentMessage":{{"text":"Your code is 654321"}},"messageTrafficType":"AUTHENTICATION"}},"sms":{{"body":"Your code is 654321"}}}}'
  sleep 5; curl -s {url}/v1/messages/{send_id} -H 'Authorization: Bearer {token}'

Faults can be switched on and off while it runs (see RELIABILITY.md):

  curl -s {google}/emulator/faults -d 'error_rate=0.2,hang_rate=0.05,webhook_duplicates=3'
  curl -s {twilio}/emulator/faults -d 'response_lost_rate=0.3'
  curl -s {google}/emulator/faults -d ''     # all Google faults off

Ctrl-C stops it.
"#,
        url = s.url,
        token = s.api_token,
        google = s.google.base_url(),
        twilio = s.twilio.base_url(),
        window = s.settings.fallback.confirm_window.as_millis(),
    );
}
