//! Another instance of the service on the same database, on a runtime of its
//! own, so that several replicas share one outbox.

#![allow(dead_code)]

use rbm_fallback::config::Settings;
use tokio_util::sync::CancellationToken;

pub struct Replica {
    /// Its base URL, for requests to this instance in particular.
    pub url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Replica {
    pub fn spawn(base: &Settings) -> Replica {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut settings = base.clone();
        settings.server.listen = addr;
        settings.server.public_url = format!("http://{addr}");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                listener.set_nonblocking(true).unwrap();
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                tokio::select! {
                    r = rbm_fallback::app::run(settings, listener, CancellationToken::new()) => r.unwrap(),
                    _ = stopped => {}
                }
            });
            rt.shutdown_background();
        });
        Replica {
            url: format!("http://{addr}"),
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Replica {
    /// Stops it at once, as a crash would: its runtime is dropped wherever
    /// its tasks are.
    pub fn kill(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}
