//! The service as a child OS process (`rbm-fallback serve`), so that it can
//! be killed with SIGKILL, restarted, and run as several replicas.

use std::fs::OpenOptions;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;

/// One `rbm-fallback serve` child process and how to start it again.
pub struct ServiceProcess {
    pub addr: SocketAddr,
    /// Its base URL (also its `RBMF_PUBLIC_URL`).
    pub url: String,
    exe: PathBuf,
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
    http: reqwest::Client,
}

impl ServiceProcess {
    /// Starts `exe serve` with exactly the settings in `env` (inherited
    /// `RBMF_*` and `DATABASE_URL` variables are removed), stdout and stderr
    /// appended to `log`.
    pub fn spawn(
        exe: &Path,
        env: Vec<(String, String)>,
        addr: SocketAddr,
        log: PathBuf,
    ) -> anyhow::Result<ServiceProcess> {
        let mut p = ServiceProcess {
            addr,
            url: format!("http://{addr}"),
            exe: exe.to_owned(),
            env,
            log,
            child: None,
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(2))
                .build()
                .context("building an HTTP client")?,
        };
        p.start()?;
        Ok(p)
    }

    /// Starts the process again if it is not running.
    pub fn start(&mut self) -> anyhow::Result<()> {
        if self.is_running() {
            return Ok(());
        }
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        let err = out.try_clone()?;
        let mut cmd = Command::new(&self.exe);
        cmd.arg("serve")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        for (name, _) in std::env::vars_os() {
            let n = name.to_string_lossy();
            if n.starts_with("RBMF_") || n == "DATABASE_URL" {
                cmd.env_remove(&name);
            }
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {} serve", self.exe.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// SIGKILL: the process stops at once, wherever it is; only what
    /// PostgreSQL committed survives. Returns once it is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the process and starts it again on the same address.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.start()
    }

    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Where its stdout and stderr go.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Polls `/readyz` until it answers 200 (migrations applied, database
    /// reachable); fails early if the process exits.
    pub async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let give_up = tokio::time::Instant::now() + timeout;
        let url = format!("{}/readyz", self.url);
        loop {
            if !self.is_running() {
                anyhow::bail!(
                    "the service process exited before it was ready; see {}",
                    self.log.display()
                );
            }
            if let Ok(r) = self.http.get(&url).send().await {
                if r.status() == reqwest::StatusCode::OK {
                    return Ok(());
                }
            }
            if tokio::time::Instant::now() >= give_up {
                anyhow::bail!(
                    "the service at {} was not ready within {timeout:?}; see {}",
                    self.url,
                    self.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
    Ok(listener.local_addr()?.port())
}
