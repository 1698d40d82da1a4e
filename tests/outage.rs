//! A PostgreSQL outage, simulated per test by a loopback TCP proxy between the
//! service and the server that can cut every connection and refuse new ones:
//! the service reports it, refuses what it cannot record (so senders retry),
//! reconnects by itself, and loses nothing.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

struct Proxy {
    port: u16,
    cut: watch::Sender<bool>,
}

impl Proxy {
    async fn start(target: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (cut, _) = watch::channel(false);
        let cut_rx = cut.subscribe();
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                let mut cut = cut_rx.clone();
                if *cut.borrow() {
                    continue; // refused: dropped at once
                }
                let target = target.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.wait_for(|c| *c) => {}
                    }
                });
            }
        });
        Proxy { port, cut }
    }

    fn set_cut(&self, cut: bool) {
        self.cut.send_replace(cut);
    }
}

async fn readyz(h: &Harness) -> u16 {
    reqwest::get(h.url("/readyz"))
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn a_database_outage_is_reported_refused_and_recovered_without_loss() {
    let server = std::env::var("TEST_DATABASE_URL")
        .or_else(|_| std::env::var("DATABASE_URL"))
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let url = reqwest::Url::parse(&server).unwrap();
    let target = format!("{}:{}", url.host_str().unwrap(), url.port().unwrap_or(5432));
    let proxy = Proxy::start(target).await;
    let h = start_with(|c| {
        let mut db = reqwest::Url::parse(&c.database_url).unwrap();
        db.set_host(Some("127.0.0.1")).unwrap();
        db.set_port(Some(proxy.port)).unwrap();
        c.database_url = db.to_string();
        c.env
            .push(("RBMF__DATABASE__ACQUIRE_TIMEOUT_MS".into(), "300".into()));
    })
    .await;

    let late = "+15550300001";
    let soon = "+15550300002";
    let to_deliver = h.send_and_register(late, 600_000).await;
    let to_revoke = h.send_and_register(soon, 1_000).await;

    proxy.set_cut(true);
    // Readiness reports the outage.
    let mut status = readyz(&h).await;
    for _ in 0..100 {
        if status == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        status = readyz(&h).await;
    }
    assert_eq!(status, 503);
    // What cannot be recorded is refused, so the sender retries later.
    let r = h
        .post(&message("+15550300003", "during-outage", 60_000))
        .await;
    assert_eq!(r.status(), 503);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unavailable");
    let event = google_event(&h, "DELIVERED", late, &to_deliver);
    assert_ne!(h.s.google.post_event(&event).await.unwrap(), 200);
    // Google's own delivery of the DELIVERED retries with back-off...
    let google = h.s.google.clone();
    let id = to_deliver.clone();
    let delivery = tokio::spawn(async move { google.deliver(&id, true).await });

    // ...while the outage lasts past the other message's deadline.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    proxy.set_cut(false);

    // The service reconnects by itself: ready again, the retried webhook is
    // recorded, and the overdue revocation happens.
    delivery.await.unwrap();
    let sent = h.s.google.webhooks_sent();
    // The last record is the emulator's own delivery (the first, our single try).
    let record = sent.iter().rfind(|w| w.message_id == to_deliver).unwrap();
    assert_eq!(record.status, Some(200));
    assert!(record.attempts > 1, "{record:?}");
    assert_eq!(
        h.wait_state(&to_deliver, "delivered").await["outcome"],
        "rcs"
    );
    let m = h.wait_state(&to_revoke, "sms_delivered").await;
    assert_eq!(m["outcome"], "sms");
    assert_eq!(readyz(&h).await, 200);
    assert_eq!(h.sms_to(soon).await, 1);
    assert_eq!(h.sms_to(late).await, 0);
    // Nothing was stored for the refused registration.
    let r = h
        .api
        .get(h.url("/v1/messages/during-outage"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}
