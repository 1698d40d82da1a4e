//! OpenTelemetry export: with an OTLP endpoint configured, the spans of a
//! processed message reach a collector as OTLP/HTTP protobuf. The collector
//! is a loopback HTTP receiver that records what it is sent.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, Uri};
use common::*;
use rbm_fallback::config::TelemetrySettings;

#[derive(Clone, Debug)]
struct Export {
    path: String,
    content_type: String,
    body: Vec<u8>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_are_exported_over_otlp_http() {
    let received: Arc<Mutex<Vec<Export>>> = Arc::default();
    let sink = received.clone();
    let collector =
        axum::Router::new().fallback(move |uri: Uri, headers: HeaderMap, body: Bytes| {
            let sink = sink.clone();
            async move {
                let content_type = headers
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                sink.lock().unwrap().push(Export {
                    path: uri.path().to_owned(),
                    content_type,
                    body: body.to_vec(),
                });
                ""
            }
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, collector).await });

    // The global logger, as `main` installs it; its exporter blocks, so
    // set it up off the async workers.
    let settings = TelemetrySettings {
        otlp_endpoint: Some(endpoint),
        service_name: "rbm-fallback-test".into(),
    };
    let telemetry = Arc::new(
        tokio::task::spawn_blocking(move || rbm_fallback::telemetry::init(false, Some(&settings)))
            .await
            .unwrap()
            .expect("telemetry starts"),
    );

    let h = start().await;
    let id = h.send_and_register("+15550006001", 50).await;
    h.wait_state(&id, "sms_delivered").await;

    let give_up = tokio::time::Instant::now() + Duration::from_secs(20);
    let export = loop {
        let t = telemetry.clone();
        tokio::task::spawn_blocking(move || t.flush())
            .await
            .unwrap();
        // Protobuf keeps strings as they are: the message span's id
        // attribute shows in the bytes.
        if let Some(e) = received
            .lock()
            .unwrap()
            .iter()
            .find(|e| e.path == "/v1/traces" && contains(&e.body, id.as_bytes()))
        {
            break e.clone();
        }
        assert!(
            tokio::time::Instant::now() < give_up,
            "no export with the message's span arrived ({} exports)",
            received.lock().unwrap().len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(export.content_type, "application/x-protobuf");
    assert!(contains(&export.body, b"rbm-fallback-test"), "service.name");
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
