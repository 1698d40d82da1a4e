//! Logs and traces: log lines (text or JSON) on stderr, and, when an OTLP
//! endpoint is configured, every span (one per message action, carrying the
//! message id) exported to an OpenTelemetry collector over OTLP/HTTP.

use std::io::IsTerminal;
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use crate::config::TelemetrySettings;

const DEFAULT_FILTER: &str = "info,sqlx=warn,tower_http=warn";

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("cannot set up the OTLP exporter for {endpoint}: {message}")]
    Exporter { endpoint: String, message: String },
    #[error("a global logger is already installed")]
    AlreadyInstalled,
}

/// Keeps the exporter running; [`Telemetry::shutdown`] sends what is still
/// buffered.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

/// Installs the global logger, with the OTLP export if `settings` names an
/// endpoint. Call it outside an async runtime, or from a thread that may
/// block: the exporter's HTTP client runs on a thread of its own.
pub fn init(json: bool, settings: Option<&TelemetrySettings>) -> Result<Telemetry, TelemetryError> {
    let filter =
        || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    // Colours only for a terminal: a log file or collector gets plain text.
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let mut layers: Vec<Box<dyn Layer<Registry> + Send + Sync>> = vec![if json {
        fmt.json().with_filter(filter()).boxed()
    } else {
        fmt.with_filter(filter()).boxed()
    }];
    let mut provider = None;
    if let Some((endpoint, name)) = settings.and_then(|s| {
        s.otlp_endpoint
            .as_deref()
            .map(|e| (e, s.service_name.as_str()))
    }) {
        let p = otlp_provider(endpoint, name)?;
        let tracer = p.tracer("rbm-fallback");
        layers.push(
            tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_filter(filter())
                .boxed(),
        );
        provider = Some(p);
    }
    tracing_subscriber::registry()
        .with(layers)
        .try_init()
        .map_err(|_| TelemetryError::AlreadyInstalled)?;
    Ok(Telemetry { provider })
}

fn otlp_provider(endpoint: &str, service_name: &str) -> Result<SdkTracerProvider, TelemetryError> {
    let traces = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(&traces)
        .with_timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| TelemetryError::Exporter {
            endpoint: traces.clone(),
            message: e.to_string(),
        })?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service_name.to_owned())
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

impl Telemetry {
    /// Sends the spans buffered so far. Blocks until they are sent.
    pub fn flush(&self) {
        if let Some(p) = &self.provider {
            if let Err(e) = p.force_flush() {
                tracing::warn!(error = %e, "cannot export spans");
            }
        }
    }

    /// Sends what is buffered and stops the exporter. Blocks.
    pub fn shutdown(mut self) {
        if let Some(p) = self.provider.take() {
            if let Err(e) = p.shutdown() {
                eprintln!("cannot export the last spans: {e}");
            }
        }
    }
}
