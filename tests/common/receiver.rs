//! A tiny HTTP receiver on 127.0.0.1:0 that records every request it gets
//! and can be switched to fail (503) and back, standing in for the agent's
//! webhook endpoint or a callback receiver.

#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use tokio::sync::Notify;

#[derive(Clone, Debug)]
pub struct Received {
    /// Path and query.
    pub target: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// Answered 2xx.
    pub accepted: bool,
}

impl Received {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("no {name} header"))
            .to_str()
            .unwrap()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

#[derive(Default)]
struct Shared {
    failing: Mutex<bool>,
    got: Mutex<Vec<Received>>,
    arrived: Notify,
}

#[derive(Clone)]
pub struct Receiver {
    /// Base URL, without a trailing slash.
    pub url: String,
    shared: Arc<Shared>,
}

impl Receiver {
    pub async fn start() -> Receiver {
        let shared = Arc::new(Shared::default());
        let app = axum::Router::new()
            .fallback(record)
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Receiver { url, shared }
    }

    /// While true, every request is answered 503.
    pub fn set_failing(&self, failing: bool) {
        *self.shared.failing.lock().unwrap() = failing;
    }

    /// Every request, answered or refused, in arrival order.
    pub fn all(&self) -> Vec<Received> {
        self.shared.got.lock().unwrap().clone()
    }

    /// The requests answered 2xx, in arrival order.
    pub fn accepted(&self) -> Vec<Received> {
        self.all().into_iter().filter(|r| r.accepted).collect()
    }

    /// Waits until `done` holds for the requests seen so far.
    pub async fn wait(&self, what: &str, done: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let arrived = self.shared.arrived.notified();
            let all = self.all();
            if done(&all) {
                return all;
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                panic!("receiver never saw {what}; got {} requests", all.len());
            }
        }
    }

    pub async fn wait_accepted(&self, n: usize) -> Vec<Received> {
        self.wait(&format!("{n} accepted requests"), |all| {
            all.iter().filter(|r| r.accepted).count() >= n
        })
        .await;
        self.accepted()
    }

    pub async fn wait_attempts(&self, n: usize) -> Vec<Received> {
        self.wait(&format!("{n} requests"), |all| all.len() >= n)
            .await
    }
}

async fn record(
    State(shared): State<Arc<Shared>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let accepted = !*shared.failing.lock().unwrap();
    shared.got.lock().unwrap().push(Received {
        target: uri
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_default(),
        headers,
        body,
        accepted,
    });
    shared.arrived.notify_waiters();
    if accepted {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}
