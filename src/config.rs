//! Configuration: the documented defaults in `config/default.toml`, an
//! optional file, then the environment; validated once at start so a bad
//! setting stops the process with a message naming it, never later mid-flight.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::domain::policy::{
    PolicyDefaults, PolicyOverrides, QuietSetting, TrafficType, MAX_CONFIRM_WINDOW,
};
use crate::domain::OnUncertain;

pub const DEFAULTS: &str = include_str!("../config/default.toml");

/// Stable environment names and the setting each one sets.
const ENV_NAMES: &[(&str, &str, &str)] = &[
    ("RBMF_LISTEN", "server", "listen"),
    ("RBMF_PUBLIC_URL", "server", "public_url"),
    ("RBMF_API_TOKEN", "server", "api_tokens"),
    ("DATABASE_URL", "database", "url"),
    ("OTEL_EXPORTER_OTLP_ENDPOINT", "telemetry", "otlp_endpoint"),
    ("RBMF_RBM_AGENT_ID", "rbm", "agent_id"),
    ("RBMF_RBM_CLIENT_TOKEN", "rbm", "client_token"),
    ("RBMF_RBM_BASE_URL", "rbm", "base_url"),
    ("RBMF_RBM_SERVICE_ACCOUNT_KEY", "rbm", "service_account_key"),
    ("RBMF_TWILIO_BASE_URL", "twilio", "base_url"),
    ("RBMF_TWILIO_ACCOUNT_SID", "twilio", "account_sid"),
    ("RBMF_TWILIO_AUTH_TOKEN", "twilio", "auth_token"),
    ("RBMF_TWILIO_FROM", "twilio", "from"),
    (
        "RBMF_TWILIO_MESSAGING_SERVICE_SID",
        "twilio",
        "messaging_service_sid",
    ),
    ("RBMF_CONFIRM_WINDOW_MS", "fallback", "confirm_window_ms"),
    ("RBMF_RELAY_URL", "rbm", "relay_url"),
    ("RBMF_CALLBACK_URL", "callbacks", "url"),
    ("RBMF_CALLBACK_SECRET", "callbacks", "secret"),
];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax { path: String, message: String },
    #[error("invalid setting {setting}: {message}")]
    Invalid { setting: String, message: String },
}

/// A secret: usable, but never printed by `Debug` or `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[derive(Clone, Debug)]
pub struct Settings {
    pub server: ServerSettings,
    pub database: DatabaseSettings,
    pub rbm: RbmSettings,
    pub twilio: TwilioSettings,
    pub fallback: FallbackSettings,
    pub worker: WorkerSettings,
    pub retention: RetentionSettings,
    pub metrics: MetricsSettings,
    pub telemetry: TelemetrySettings,
    pub relay: RelaySettings,
    pub callbacks: CallbackSettings,
    pub outbox: OutboxSettings,
    /// Every agent this deployment serves, the default one (`rbm`) first.
    pub agents: Vec<AgentSettings>,
}

/// One RBM agent: `[rbm]`, and each `[[agents]]` entry of the config file.
#[derive(Clone, Debug)]
pub struct AgentSettings {
    /// Bare agent id, without "@rbm.goog".
    pub id: String,
    pub client_token: Secret,
    pub base_url: String,
    pub service_account_key: PathBuf,
    pub relay_url: Option<String>,
    /// `None`: `worker.rbm_rate_per_sec`.
    pub rbm_rate_per_sec: Option<u32>,
    /// `None`: `worker.twilio_rate_per_sec`.
    pub twilio_rate_per_sec: Option<u32>,
    /// Used when a registration gives neither `deadline` nor
    /// `revoke_after_secs`; `None`: one of them is required.
    pub default_deadline: Option<Duration>,
    /// The SMS sender when a registration names none; `None`: Twilio's.
    pub sms_from: Option<String>,
    /// API tokens that may act for this agent. A token listed under some
    /// agent acts only for the agents listing it; any other API token acts
    /// for every agent.
    pub api_tokens: Vec<Secret>,
    /// The agent's policy defaults, over the deployment's.
    pub policy: PolicyDefaults,
}

#[derive(Clone, Debug)]
pub struct MetricsSettings {
    /// A listener of their own for /metrics and /dashboard; `None`: the
    /// main listener serves them.
    pub listen: Option<SocketAddr>,
}

#[derive(Clone, Debug, Default)]
pub struct TelemetrySettings {
    /// OTLP/HTTP base URL; traces go to `<base>/v1/traces`. `None`: no export.
    pub otlp_endpoint: Option<String>,
    pub service_name: String,
}

/// Where Google's webhooks are relayed (`[rbm] relay_url`).
#[derive(Clone, Debug)]
pub struct RelaySettings {
    /// The single agent's upstream; `None`: no relay.
    pub url: Option<String>,
}

#[derive(Clone, Debug)]
pub struct CallbackSettings {
    /// Default target of outcome callbacks; a message may name its own.
    pub url: Option<String>,
    /// The Standard Webhooks signing key (`whsec_…`); callbacks of any kind
    /// need it.
    pub secret: Option<crate::outbox::SigningSecret>,
}

#[derive(Clone, Debug)]
pub struct OutboxSettings {
    pub concurrency: usize,
    pub timeout: Duration,
    pub lease: Duration,
    pub max_idle: Duration,
    pub retry_base: Duration,
    pub retry_cap: Duration,
}

#[derive(Clone, Debug)]
pub struct RetentionSettings {
    /// `None`: keep everything.
    pub keep: Option<Duration>,
    pub sweep_interval: Duration,
    pub sweep_batch: i64,
}

#[derive(Clone, Debug)]
pub struct ServerSettings {
    pub listen: SocketAddr,
    /// Without a trailing slash.
    pub public_url: String,
    pub api_tokens: Vec<Secret>,
    pub request_timeout: Duration,
    /// Longest a client may take to send a request's line and headers (and
    /// longest an idle keep-alive connection stays open).
    pub header_timeout: Duration,
    pub body_limit_bytes: usize,
    pub shutdown_grace: Duration,
}

#[derive(Clone, Debug)]
pub struct DatabaseSettings {
    pub url: Secret,
    pub max_connections: u32,
    pub acquire_timeout: Duration,
    pub group_commit_flushes: usize,
}

#[derive(Clone, Debug)]
pub struct RbmSettings {
    /// Bare agent id, without "@rbm.goog".
    pub agent_id: String,
    pub client_token: Secret,
    pub base_url: String,
    pub service_account_key: PathBuf,
    pub timeout: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SmsSender {
    From(String),
    MessagingService(String),
}

#[derive(Clone, Debug)]
pub struct TwilioSettings {
    pub base_url: String,
    pub account_sid: String,
    pub auth_token: Secret,
    pub sender: SmsSender,
    pub timeout: Duration,
}

#[derive(Clone, Debug)]
pub struct FallbackSettings {
    pub confirm_window: Duration,
    pub max_deadline: Duration,
    /// The deployment's policy defaults (`on_uncertain`, `quiet_hours`, and
    /// per traffic type); `confirm_window` is its confirm window.
    pub policy: PolicyDefaults,
    /// The most SMS segments a message's text may need.
    pub max_sms_segments: u32,
    /// How long a phone Google could not reach over RCS goes straight to SMS.
    pub rcs_unreachable_ttl: Duration,
}

#[derive(Clone, Debug)]
pub struct WorkerSettings {
    pub concurrency: usize,
    pub batch_size: usize,
    pub lease: Duration,
    pub max_idle: Duration,
    /// How long before its deadline a pending message is claimed; its
    /// revoke still leaves at the deadline.
    pub claim_lead: Duration,
    pub retry_base: Duration,
    pub retry_cap: Duration,
    /// Calls per second; 0 = unlimited.
    pub rbm_rate_per_sec: u32,
    pub twilio_rate_per_sec: u32,
}

impl Settings {
    /// The configured agent with this id (bare or with "@rbm.goog").
    pub fn agent(&self, id: &str) -> Option<&AgentSettings> {
        let id = bare_agent_id(id);
        self.agents.iter().find(|a| a.id == id)
    }
}

/// Strips the "@rbm.goog" that webhook payloads carry: both forms name one agent.
pub fn bare_agent_id(id: &str) -> &str {
    id.strip_suffix("@rbm.goog").unwrap_or(id)
}

impl Settings {
    /// Loads from the built-in defaults, `file` if given, and the process environment.
    pub fn load(file: Option<&Path>) -> Result<Settings, ConfigError> {
        Settings::load_with(file, &|name| std::env::var(name).ok())
    }

    /// As [`Settings::load`], with the environment supplied by the caller.
    pub fn load_with(
        file: Option<&Path>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Settings, ConfigError> {
        let raw: Raw = deserialize(layered(file, env)?, None)?;
        raw.validate()
    }

    /// Only the telemetry settings: logging is set up before anything else
    /// is loaded.
    pub fn load_telemetry(file: Option<&Path>) -> Result<TelemetrySettings, ConfigError> {
        load_section::<RawTelemetry>(file, "telemetry")?.validate()
    }

    /// Only the database settings, for commands (like `migrate`) that need
    /// nothing else configured.
    pub fn load_database(file: Option<&Path>) -> Result<DatabaseSettings, ConfigError> {
        load_section::<RawDatabase>(file, "database")?.validate()
    }

    /// The environment a deployment would set to reproduce these settings;
    /// the sandbox uses it to wire the real server through ordinary configuration.
    pub fn env_name_of(section: &str, key: &str) -> String {
        ENV_NAMES
            .iter()
            .find(|(_, s, k)| *s == section && *k == key)
            .map(|(name, _, _)| (*name).to_owned())
            .unwrap_or_else(|| format!("RBMF__{}__{}", section.to_uppercase(), key.to_uppercase()))
    }
}

/// One section of the layered settings, from the process environment.
fn load_section<T: serde::de::DeserializeOwned>(
    file: Option<&Path>,
    section: &str,
) -> Result<T, ConfigError> {
    let mut tree = layered(file, &|name| std::env::var(name).ok())?;
    deserialize(
        tree.remove(section)
            .unwrap_or_else(|| toml::Table::new().into()),
        Some(section),
    )
}

/// Defaults, then the file, then the environment, as one TOML tree.
fn layered(
    file: Option<&Path>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<toml::Table, ConfigError> {
    let mut tree = parse("config/default.toml (built in)", DEFAULTS)?;
    if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        merge(&mut tree, parse(&path.display().to_string(), &text)?);
    }
    apply_env(&mut tree, env)?;
    Ok(tree)
}

/// `prefix` is the section the tree stands for, if it is not the whole file.
fn deserialize<T: serde::de::DeserializeOwned>(
    tree: impl Into<toml::Value>,
    prefix: Option<&str>,
) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize(tree.into()).map_err(|e| {
        let path = match prefix {
            Some(section) => format!("{section}.{}", e.path()),
            None => e.path().to_string(),
        };
        let setting = match path.split_once('.') {
            Some((section, _)) if section.starts_with("agents[") => path,
            Some((section, key)) => format!("{} ({path})", Settings::env_name_of(section, key)),
            None => path,
        };
        ConfigError::Invalid {
            setting,
            message: e.into_inner().to_string(),
        }
    })
}

fn parse(path: &str, text: &str) -> Result<toml::Table, ConfigError> {
    text.parse::<toml::Table>()
        .map_err(|e| ConfigError::Syntax {
            path: path.to_owned(),
            message: e.to_string(),
        })
}

fn merge(base: &mut toml::Table, over: toml::Table) {
    for (key, value) in over {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

fn apply_env(
    tree: &mut toml::Table,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    let mut overrides: BTreeMap<(String, String), (String, String)> = BTreeMap::new();
    // Generic names first, so that the stable names win where both are set.
    for (section, table) in tree.iter() {
        let Some(table) = table.as_table() else {
            continue;
        };
        for key in table.keys() {
            let name = format!("RBMF__{}__{}", section.to_uppercase(), key.to_uppercase());
            if let Some(v) = env(&name) {
                overrides.insert((section.clone(), key.clone()), (name, v));
            }
        }
    }
    for (name, section, key) in ENV_NAMES {
        if let Some(v) = env(name) {
            overrides.insert(
                (section.to_string(), key.to_string()),
                (name.to_string(), v),
            );
        }
    }
    for ((section, key), (name, raw)) in overrides {
        let table = tree
            .get_mut(&section)
            .and_then(|t| t.as_table_mut())
            .expect("sections come from the defaults");
        let value = match table.get(&key) {
            Some(toml::Value::Integer(_)) => raw
                .trim()
                .parse::<i64>()
                .map(toml::Value::Integer)
                .map_err(|_| ConfigError::Invalid {
                    setting: name.clone(),
                    message: format!("expected a whole number, got {raw:?}"),
                })?,
            Some(toml::Value::Boolean(_)) => raw
                .trim()
                .parse::<bool>()
                .map(toml::Value::Boolean)
                .map_err(|_| ConfigError::Invalid {
                setting: name.clone(),
                message: format!("expected true or false, got {raw:?}"),
            })?,
            Some(toml::Value::Array(_)) => toml::Value::Array(
                raw.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| toml::Value::String(s.to_owned()))
                    .collect(),
            ),
            _ => toml::Value::String(raw),
        };
        table.insert(key, value);
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    server: RawServer,
    database: RawDatabase,
    rbm: RawRbm,
    twilio: RawTwilio,
    fallback: RawFallback,
    worker: RawWorker,
    retention: RawRetention,
    metrics: RawMetrics,
    telemetry: RawTelemetry,
    callbacks: RawCallbacks,
    outbox: RawOutbox,
    #[serde(default)]
    agents: Vec<RawAgent>,
}

/// One `[[agents]]` entry; only the file can give these.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    id: Option<String>,
    base_url: Option<String>,
    region: Option<String>,
    service_account_key: Option<String>,
    client_token: Option<String>,
    relay_url: Option<String>,
    rbm_rate_per_sec: Option<u32>,
    twilio_rate_per_sec: Option<u32>,
    default_deadline_secs: Option<u64>,
    sms_from: Option<String>,
    #[serde(default)]
    api_tokens: Vec<String>,
    #[serde(default)]
    policy: PolicyOverrides,
    #[serde(default)]
    traffic: HashMap<TrafficType, PolicyOverrides>,
}

/// The regional RBM hosts an agent may live in.
const REGIONS: &[&str] = &["us", "europe", "asia"];

/// A level's policy defaults, checked; `at` names the level in errors.
fn policy_defaults(
    at: &str,
    all: &PolicyOverrides,
    traffic: &HashMap<TrafficType, PolicyOverrides>,
) -> Result<PolicyDefaults, ConfigError> {
    let checked = |o: &PolicyOverrides, path: String| {
        o.check().map_err(|(field, message)| ConfigError::Invalid {
            setting: format!("{path}.{field}"),
            message,
        })
    };
    checked(all, format!("{at}.policy"))?;
    for (t, o) in traffic {
        checked(o, format!("{at}.traffic.{}", t.as_str()))?;
    }
    Ok(PolicyDefaults {
        all: all.clone(),
        traffic: traffic.clone(),
    })
}

fn agent_invalid(i: usize, key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        setting: format!("agents[{i}].{key}"),
        message: message.into(),
    }
}

fn valid_agent_id(id: &str) -> bool {
    !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

impl RawAgent {
    fn validate(&self, i: usize, max_deadline: Duration) -> Result<AgentSettings, ConfigError> {
        let text = |key: &str, v: &Option<String>| -> Result<String, ConfigError> {
            match v.as_deref().map(str::trim) {
                Some(v) if !v.is_empty() => Ok(v.to_owned()),
                _ => Err(agent_invalid(i, key, "is required")),
            }
        };
        let id = bare_agent_id(&text("id", &self.id)?).to_owned();
        if !valid_agent_id(&id) {
            return Err(agent_invalid(
                i,
                "id",
                format!("unexpected characters in {id:?}"),
            ));
        }
        let base_url = match (&self.base_url, &self.region) {
            (Some(_), Some(_)) => {
                return Err(agent_invalid(
                    i,
                    "region",
                    "give base_url or region, not both",
                ))
            }
            (Some(url), None) => http_url("agents", "base_url", url)
                .map_err(|e| agent_invalid(i, "base_url", e.to_string()))?,
            (None, Some(region)) if REGIONS.contains(&region.trim()) => {
                format!(
                    "https://{}-rcsbusinessmessaging.googleapis.com",
                    region.trim()
                )
            }
            (None, Some(region)) => {
                return Err(agent_invalid(
                    i,
                    "region",
                    format!("unknown region {region:?}; one of {}", REGIONS.join(", ")),
                ))
            }
            (None, None) => "https://rcsbusinessmessaging.googleapis.com".to_owned(),
        };
        let relay_url = match self.relay_url.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(v) => Some(
                crate::outbox::validate_target_url(v)
                    .map_err(|e| agent_invalid(i, "relay_url", e))?,
            ),
        };
        let default_deadline = match self.default_deadline_secs {
            None => None,
            Some(secs) if secs >= 1 && secs <= max_deadline.as_secs() => {
                Some(Duration::from_secs(secs))
            }
            Some(_) => {
                return Err(agent_invalid(
                    i,
                    "default_deadline_secs",
                    format!(
                        "must be between 1 and fallback.max_deadline_secs ({})",
                        max_deadline.as_secs()
                    ),
                ))
            }
        };
        let api_tokens: Vec<Secret> = self
            .api_tokens
            .iter()
            .map(|t| t.trim())
            .filter(|t| !t.is_empty())
            .map(Secret::new)
            .collect();
        if api_tokens.iter().any(|t| t.expose().len() < 16) {
            return Err(agent_invalid(
                i,
                "api_tokens",
                "each token must be at least 16 characters",
            ));
        }
        Ok(AgentSettings {
            id,
            client_token: Secret::new(text("client_token", &self.client_token)?),
            base_url,
            service_account_key: PathBuf::from(text(
                "service_account_key",
                &self.service_account_key,
            )?),
            relay_url,
            rbm_rate_per_sec: self.rbm_rate_per_sec,
            twilio_rate_per_sec: self.twilio_rate_per_sec,
            default_deadline,
            sms_from: self
                .sms_from
                .as_deref()
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned),
            api_tokens,
            policy: policy_defaults(&format!("agents[{i}]"), &self.policy, &self.traffic)?,
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCallbacks {
    url: String,
    secret: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTelemetry {
    otlp_endpoint: String,
    service_name: String,
}

impl RawTelemetry {
    fn validate(&self) -> Result<TelemetrySettings, ConfigError> {
        let otlp_endpoint = match self.otlp_endpoint.trim() {
            "" => None,
            v => Some(http_url("telemetry", "otlp_endpoint", v)?),
        };
        Ok(TelemetrySettings {
            otlp_endpoint,
            service_name: required("telemetry", "service_name", &self.service_name)?,
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOutbox {
    concurrency: usize,
    timeout_ms: u64,
    lease_ms: u64,
    max_idle_ms: u64,
    retry_base_ms: u64,
    retry_cap_ms: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetention {
    keep_days: u64,
    sweep_interval_ms: u64,
    sweep_batch: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: String,
    public_url: String,
    api_tokens: Vec<String>,
    request_timeout_ms: u64,
    header_timeout_ms: u64,
    body_limit_bytes: usize,
    shutdown_grace_ms: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDatabase {
    url: String,
    max_connections: u32,
    acquire_timeout_ms: u64,
    group_commit_flushes: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRbm {
    agent_id: String,
    client_token: String,
    base_url: String,
    service_account_key: String,
    timeout_ms: u64,
    relay_url: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTwilio {
    base_url: String,
    account_sid: String,
    auth_token: String,
    from: String,
    messaging_service_sid: String,
    timeout_ms: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFallback {
    confirm_window_ms: u64,
    max_deadline_secs: u64,
    on_uncertain: OnUncertain,
    quiet_hours: QuietSetting,
    max_sms_segments: u32,
    rcs_unreachable_ttl_secs: u64,
    #[serde(default)]
    traffic: HashMap<TrafficType, PolicyOverrides>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWorker {
    concurrency: usize,
    batch_size: usize,
    lease_ms: u64,
    max_idle_ms: u64,
    claim_lead_ms: u64,
    retry_base_ms: u64,
    retry_cap_ms: u64,
    rbm_rate_per_sec: u32,
    twilio_rate_per_sec: u32,
}

impl RawDatabase {
    fn validate(&self) -> Result<DatabaseSettings, ConfigError> {
        let url = required("database", "url", &self.url)?;
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(invalid(
                "database",
                "url",
                "must start with postgres:// or postgresql://",
            ));
        }
        if self.max_connections == 0 {
            return Err(invalid("database", "max_connections", "must be at least 1"));
        }
        if !(1..=8).contains(&self.group_commit_flushes) {
            return Err(invalid(
                "database",
                "group_commit_flushes",
                "must be between 1 and 8",
            ));
        }
        // Each of the four group-commit writers (registrations, Google events,
        // Twilio statuses, worker results) may hold that many connections;
        // claims, reads and the notification listener need their own.
        let least = 4 * self.group_commit_flushes as u32 + 4;
        if self.max_connections < least {
            return Err(invalid(
                "database",
                "max_connections",
                format!(
                    "must be at least {least} (4 × group_commit_flushes + 4) with \
                     group_commit_flushes = {}",
                    self.group_commit_flushes
                ),
            ));
        }
        Ok(DatabaseSettings {
            url: Secret::new(url),
            max_connections: self.max_connections,
            group_commit_flushes: self.group_commit_flushes,
            acquire_timeout: millis(
                "database",
                "acquire_timeout_ms",
                self.acquire_timeout_ms,
                10,
                120_000,
            )?,
        })
    }
}

fn invalid(section: &str, key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        setting: format!("{} ({section}.{key})", Settings::env_name_of(section, key)),
        message: message.into(),
    }
}

fn required(section: &str, key: &str, value: &str) -> Result<String, ConfigError> {
    let v = value.trim();
    if v.is_empty() {
        Err(invalid(section, key, "is required"))
    } else {
        Ok(v.to_owned())
    }
}

fn http_url(section: &str, key: &str, value: &str) -> Result<String, ConfigError> {
    let v = required(section, key, value)?;
    let parsed = reqwest::Url::parse(&v)
        .map_err(|e| invalid(section, key, format!("not a URL ({e}): {v:?}")))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(invalid(
            section,
            key,
            format!("must be an http(s) URL, got {v:?}"),
        ));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(invalid(section, key, "must not have a query or fragment"));
    }
    Ok(v.trim_end_matches('/').to_owned())
}

/// An optional absolute http(s) URL that requests are sent to, kept exactly
/// as given (a query may carry the receiver's own token).
fn optional_target(section: &str, key: &str, value: &str) -> Result<Option<String>, ConfigError> {
    match value.trim() {
        "" => Ok(None),
        v => crate::outbox::validate_target_url(v)
            .map(Some)
            .map_err(|e| invalid(section, key, e)),
    }
}

fn millis(section: &str, key: &str, ms: u64, min: u64, max: u64) -> Result<Duration, ConfigError> {
    if ms < min || ms > max {
        return Err(invalid(
            section,
            key,
            format!("must be between {min} and {max} ms, got {ms}"),
        ));
    }
    Ok(Duration::from_millis(ms))
}

impl Raw {
    fn validate(self) -> Result<Settings, ConfigError> {
        let s = &self.server;
        let listen = s.listen.trim().parse::<SocketAddr>().map_err(|_| {
            invalid(
                "server",
                "listen",
                format!(
                    "expected host:port such as 0.0.0.0:8080, got {:?}",
                    s.listen
                ),
            )
        })?;
        let public_url = http_url("server", "public_url", &s.public_url)?;
        let api_tokens: Vec<Secret> = s
            .api_tokens
            .iter()
            .map(|t| t.trim())
            .filter(|t| !t.is_empty())
            .map(Secret::new)
            .collect();
        if api_tokens.is_empty() {
            return Err(invalid(
                "server",
                "api_tokens",
                "is required (at least one token)",
            ));
        }
        if api_tokens.iter().any(|t| t.expose().len() < 16) {
            return Err(invalid(
                "server",
                "api_tokens",
                "each token must be at least 16 characters",
            ));
        }
        if s.body_limit_bytes < 1024 {
            return Err(invalid(
                "server",
                "body_limit_bytes",
                "must be at least 1024",
            ));
        }
        let server = ServerSettings {
            listen,
            public_url,
            api_tokens,
            request_timeout: millis(
                "server",
                "request_timeout_ms",
                s.request_timeout_ms,
                100,
                300_000,
            )?,
            header_timeout: millis(
                "server",
                "header_timeout_ms",
                s.header_timeout_ms,
                100,
                300_000,
            )?,
            body_limit_bytes: s.body_limit_bytes,
            shutdown_grace: millis(
                "server",
                "shutdown_grace_ms",
                s.shutdown_grace_ms,
                0,
                600_000,
            )?,
        };

        let database = self.database.validate()?;

        // `[rbm]` (with its environment names) is the default agent; it may
        // be left empty when the file lists `[[agents]]`.
        let r = &self.rbm;
        let rbm_timeout = millis("rbm", "timeout_ms", r.timeout_ms, 100, 120_000)?;
        let rbm_given = [&r.agent_id, &r.client_token, &r.service_account_key]
            .iter()
            .any(|v| !v.trim().is_empty());
        let rbm_agent = if rbm_given || self.agents.is_empty() {
            let agent_id = bare_agent_id(&required("rbm", "agent_id", &r.agent_id)?).to_owned();
            if !valid_agent_id(&agent_id) {
                return Err(invalid(
                    "rbm",
                    "agent_id",
                    format!("unexpected characters in {agent_id:?}"),
                ));
            }
            Some(AgentSettings {
                id: agent_id,
                client_token: Secret::new(required("rbm", "client_token", &r.client_token)?),
                base_url: http_url("rbm", "base_url", &r.base_url)?,
                service_account_key: PathBuf::from(required(
                    "rbm",
                    "service_account_key",
                    &r.service_account_key,
                )?),
                relay_url: optional_target("rbm", "relay_url", &r.relay_url)?,
                rbm_rate_per_sec: None,
                twilio_rate_per_sec: None,
                default_deadline: None,
                sms_from: None,
                api_tokens: Vec::new(),
                policy: PolicyDefaults::default(),
            })
        } else {
            if !r.relay_url.trim().is_empty() {
                return Err(invalid(
                    "rbm",
                    "relay_url",
                    "belongs to an agent: set it in its [[agents]] entry, or set rbm.agent_id",
                ));
            }
            None
        };

        let t = &self.twilio;
        let sender = match (t.from.trim(), t.messaging_service_sid.trim()) {
            ("", "") => {
                return Err(invalid(
                    "twilio",
                    "from",
                    "set RBMF_TWILIO_FROM or RBMF_TWILIO_MESSAGING_SERVICE_SID",
                ))
            }
            (from, "") => SmsSender::From(from.to_owned()),
            ("", mss) if mss.starts_with("MG") => SmsSender::MessagingService(mss.to_owned()),
            ("", _) => {
                return Err(invalid(
                    "twilio",
                    "messaging_service_sid",
                    "must start with MG",
                ))
            }
            _ => {
                return Err(invalid(
                    "twilio",
                    "from",
                    "set only one of RBMF_TWILIO_FROM and RBMF_TWILIO_MESSAGING_SERVICE_SID",
                ))
            }
        };
        let account_sid = required("twilio", "account_sid", &t.account_sid)?;
        if !account_sid.starts_with("AC") {
            return Err(invalid("twilio", "account_sid", "must start with AC"));
        }
        let twilio = TwilioSettings {
            base_url: http_url("twilio", "base_url", &t.base_url)?,
            account_sid,
            auth_token: Secret::new(required("twilio", "auth_token", &t.auth_token)?),
            sender,
            timeout: millis("twilio", "timeout_ms", t.timeout_ms, 100, 120_000)?,
        };

        let f = &self.fallback;
        let fallback = FallbackSettings {
            confirm_window: millis(
                "fallback",
                "confirm_window_ms",
                f.confirm_window_ms,
                0,
                MAX_CONFIRM_WINDOW.as_millis() as u64,
            )?,
            max_deadline: Duration::from_secs(f.max_deadline_secs),
            policy: policy_defaults(
                "fallback",
                &PolicyOverrides {
                    on_uncertain: Some(f.on_uncertain),
                    confirm_window_ms: None,
                    quiet_hours: Some(f.quiet_hours.clone()),
                },
                &f.traffic,
            )?,
            max_sms_segments: f.max_sms_segments,
            rcs_unreachable_ttl: Duration::from_secs(f.rcs_unreachable_ttl_secs),
        };
        // 1600 characters (Twilio's limit) of emoji take 49 segments.
        if !(1..=49).contains(&f.max_sms_segments) {
            return Err(invalid(
                "fallback",
                "max_sms_segments",
                "must be between 1 and 49",
            ));
        }
        if f.max_deadline_secs == 0 {
            return Err(invalid("fallback", "max_deadline_secs", "must be positive"));
        }

        let mut agents: Vec<AgentSettings> = rbm_agent.into_iter().collect();
        for (i, raw) in self.agents.iter().enumerate() {
            let agent = raw.validate(i, fallback.max_deadline)?;
            if agents.iter().any(|a| a.id == agent.id) {
                return Err(agent_invalid(
                    i,
                    "id",
                    format!("agent {:?} is configured twice", agent.id),
                ));
            }
            agents.push(agent);
        }
        let default = &agents[0];
        let rbm = RbmSettings {
            agent_id: default.id.clone(),
            client_token: default.client_token.clone(),
            base_url: default.base_url.clone(),
            service_account_key: default.service_account_key.clone(),
            timeout: rbm_timeout,
        };

        let w = &self.worker;
        if w.concurrency == 0 || w.batch_size == 0 {
            return Err(invalid(
                "worker",
                "concurrency",
                "concurrency and batch_size must be at least 1",
            ));
        }
        let worker = WorkerSettings {
            concurrency: w.concurrency,
            batch_size: w.batch_size,
            lease: millis("worker", "lease_ms", w.lease_ms, 1_000, 3_600_000)?,
            max_idle: millis("worker", "max_idle_ms", w.max_idle_ms, 10, 60_000)?,
            claim_lead: millis("worker", "claim_lead_ms", w.claim_lead_ms, 0, 1_000)?,
            retry_base: millis("worker", "retry_base_ms", w.retry_base_ms, 1, 600_000)?,
            retry_cap: millis("worker", "retry_cap_ms", w.retry_cap_ms, 1, 86_400_000)?,
            rbm_rate_per_sec: w.rbm_rate_per_sec,
            twilio_rate_per_sec: w.twilio_rate_per_sec,
        };
        let longest_call = rbm.timeout.max(twilio.timeout);
        if worker.lease <= longest_call {
            return Err(invalid(
                "worker",
                "lease_ms",
                format!("must exceed the longest outbound timeout ({} ms), or a live call could be taken over", longest_call.as_millis()),
            ));
        }

        let r = &self.retention;
        if !(1..=100_000).contains(&r.sweep_batch) {
            return Err(invalid(
                "retention",
                "sweep_batch",
                "must be between 1 and 100000",
            ));
        }
        if r.keep_days > 36_500 {
            return Err(invalid(
                "retention",
                "keep_days",
                "must be at most 36500 (0 keeps everything)",
            ));
        }
        let retention = RetentionSettings {
            keep: (r.keep_days > 0).then(|| Duration::from_secs(r.keep_days * 86_400)),
            sweep_interval: millis(
                "retention",
                "sweep_interval_ms",
                r.sweep_interval_ms,
                100,
                86_400_000,
            )?,
            sweep_batch: r.sweep_batch,
        };

        let metrics = MetricsSettings {
            listen: match self.metrics.listen.trim() {
                "" => None,
                v => Some(v.parse::<SocketAddr>().map_err(|_| {
                    invalid(
                        "metrics",
                        "listen",
                        format!("expected host:port such as 127.0.0.1:9090, got {v:?}"),
                    )
                })?),
            },
        };
        let telemetry = self.telemetry.validate()?;
        let relay = RelaySettings {
            url: optional_target("rbm", "relay_url", &self.rbm.relay_url)?,
        };
        let c = &self.callbacks;
        let secret = match c.secret.trim() {
            "" => None,
            s => Some(
                crate::outbox::SigningSecret::parse(s)
                    .map_err(|e| invalid("callbacks", "secret", e))?,
            ),
        };
        let callbacks = CallbackSettings {
            url: optional_target("callbacks", "url", &c.url)?,
            secret,
        };
        if callbacks.url.is_some() && callbacks.secret.is_none() {
            return Err(invalid(
                "callbacks",
                "secret",
                "is required when RBMF_CALLBACK_URL is set: callbacks are always signed",
            ));
        }
        let o = &self.outbox;
        if !(1..=1024).contains(&o.concurrency) {
            return Err(invalid(
                "outbox",
                "concurrency",
                "must be between 1 and 1024",
            ));
        }
        let outbox = OutboxSettings {
            concurrency: o.concurrency,
            timeout: millis("outbox", "timeout_ms", o.timeout_ms, 100, 120_000)?,
            lease: millis("outbox", "lease_ms", o.lease_ms, 1_000, 3_600_000)?,
            max_idle: millis("outbox", "max_idle_ms", o.max_idle_ms, 10, 60_000)?,
            retry_base: millis("outbox", "retry_base_ms", o.retry_base_ms, 1, 600_000)?,
            retry_cap: millis("outbox", "retry_cap_ms", o.retry_cap_ms, 1, 86_400_000)?,
        };
        if outbox.lease <= outbox.timeout {
            return Err(invalid(
                "outbox",
                "lease_ms",
                "must exceed outbox.timeout_ms, or a delivery still in flight could be taken over",
            ));
        }

        Ok(Settings {
            server,
            database,
            rbm,
            twilio,
            fallback,
            worker,
            retention,
            metrics,
            telemetry,
            relay,
            callbacks,
            outbox,
            agents,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn base_env() -> HashMap<&'static str, &'static str> {
        HashMap::from([
            ("RBMF_PUBLIC_URL", "https://fallback.example.com/"),
            (
                "RBMF_API_TOKEN",
                "token-aaaaaaaaaaaaaaaa, token-bbbbbbbbbbbbbbbb",
            ),
            ("RBMF_RBM_AGENT_ID", "my-agent@rbm.goog"),
            ("RBMF_RBM_CLIENT_TOKEN", "client-token"),
            ("RBMF_RBM_SERVICE_ACCOUNT_KEY", "/etc/rbm/key.json"),
            ("RBMF_TWILIO_ACCOUNT_SID", "AC0123"),
            ("RBMF_TWILIO_AUTH_TOKEN", "twilio-secret"),
            ("RBMF_TWILIO_FROM", "+14155550100"),
        ])
    }

    fn load(env: &HashMap<&str, &str>) -> Result<Settings, ConfigError> {
        Settings::load_with(None, &|k| env.get(k).map(|v| v.to_string()))
    }

    fn error_of(env: &HashMap<&str, &str>) -> String {
        load(env).expect_err("should be refused").to_string()
    }

    #[test]
    fn defaults_plus_the_required_settings_load() {
        let s = load(&base_env()).unwrap();
        assert_eq!(s.server.listen.to_string(), "0.0.0.0:8080");
        assert_eq!(s.server.public_url, "https://fallback.example.com");
        assert_eq!(s.server.api_tokens.len(), 2);
        assert_eq!(s.rbm.agent_id, "my-agent");
        assert_eq!(
            s.rbm.base_url,
            "https://rcsbusinessmessaging.googleapis.com"
        );
        assert_eq!(s.twilio.base_url, "https://api.twilio.com");
        assert_eq!(s.twilio.sender, SmsSender::From("+14155550100".into()));
        assert_eq!(s.fallback.confirm_window, Duration::from_millis(5000));
        assert_eq!(s.server.header_timeout, Duration::from_millis(10_000));
    }

    #[test]
    fn the_header_timeout_is_a_bounded_server_setting() {
        let mut env = base_env();
        env.insert("RBMF__SERVER__HEADER_TIMEOUT_MS", "2500");
        assert_eq!(
            load(&env).unwrap().server.header_timeout,
            Duration::from_millis(2500)
        );
        for bad in ["0", "99", "300001", "soon"] {
            env.insert("RBMF__SERVER__HEADER_TIMEOUT_MS", bad);
            let err = error_of(&env);
            assert!(
                err.contains("RBMF__SERVER__HEADER_TIMEOUT_MS"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn the_stable_environment_names_override() {
        let mut env = base_env();
        env.insert("RBMF_LISTEN", "127.0.0.1:9999");
        env.insert("RBMF_CONFIRM_WINDOW_MS", "1500");
        env.insert("RBMF_RBM_BASE_URL", "http://127.0.0.1:1234");
        env.insert("RBMF_TWILIO_BASE_URL", "http://127.0.0.1:5678/");
        env.insert("DATABASE_URL", "postgres://u:p@db/x");
        let s = load(&env).unwrap();
        assert_eq!(s.server.listen.port(), 9999);
        assert_eq!(s.fallback.confirm_window, Duration::from_millis(1500));
        assert_eq!(s.rbm.base_url, "http://127.0.0.1:1234");
        assert_eq!(s.twilio.base_url, "http://127.0.0.1:5678");
        assert_eq!(s.database.url.expose(), "postgres://u:p@db/x");
    }

    #[test]
    fn generic_names_reach_every_setting() {
        let mut env = base_env();
        env.insert("RBMF__WORKER__CONCURRENCY", "7");
        assert_eq!(load(&env).unwrap().worker.concurrency, 7);
        env.insert("RBMF__WORKER__CONCURRENCY", "many");
        assert!(error_of(&env).contains("RBMF__WORKER__CONCURRENCY"));
    }

    #[test]
    fn a_file_layers_between_defaults_and_environment() {
        let dir = std::env::temp_dir().join(format!("rbmf-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(
            &path,
            "[worker]\nconcurrency = 3\n[fallback]\nconfirm_window_ms = 10\n",
        )
        .unwrap();
        let mut env = base_env();
        env.insert("RBMF_CONFIRM_WINDOW_MS", "20");
        let s = Settings::load_with(Some(&path), &|k| env.get(k).map(|v| v.to_string())).unwrap();
        assert_eq!(s.worker.concurrency, 3);
        assert_eq!(s.fallback.confirm_window, Duration::from_millis(20));

        std::fs::write(&path, "[worker]\nconcurency = 3\n").unwrap();
        let err = Settings::load_with(Some(&path), &|k| env.get(k).map(|v| v.to_string()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("concurency"), "{err}");
        std::fs::write(&path, "[worker\n").unwrap();
        assert!(matches!(
            Settings::load_with(Some(&path), &|_| None),
            Err(ConfigError::Syntax { .. })
        ));
    }

    #[test]
    fn missing_settings_are_named() {
        for name in [
            "RBMF_PUBLIC_URL",
            "RBMF_API_TOKEN",
            "RBMF_RBM_AGENT_ID",
            "RBMF_RBM_CLIENT_TOKEN",
            "RBMF_RBM_SERVICE_ACCOUNT_KEY",
            "RBMF_TWILIO_ACCOUNT_SID",
            "RBMF_TWILIO_AUTH_TOKEN",
            "RBMF_TWILIO_FROM",
        ] {
            let mut env = base_env();
            env.remove(name);
            let err = error_of(&env);
            assert!(err.contains(name), "{name}: {err}");
        }
    }

    #[test]
    fn invalid_settings_are_named() {
        let cases = [
            ("RBMF_LISTEN", "localhost", "RBMF_LISTEN"),
            ("RBMF_PUBLIC_URL", "ftp://x", "RBMF_PUBLIC_URL"),
            ("RBMF_PUBLIC_URL", "https://x/?a=1", "RBMF_PUBLIC_URL"),
            ("RBMF_API_TOKEN", "short", "RBMF_API_TOKEN"),
            ("RBMF_CONFIRM_WINDOW_MS", "-5", "RBMF_CONFIRM_WINDOW_MS"),
            ("RBMF_TWILIO_ACCOUNT_SID", "XX1", "RBMF_TWILIO_ACCOUNT_SID"),
            ("DATABASE_URL", "mysql://x", "DATABASE_URL"),
            (
                "RBMF_TWILIO_MESSAGING_SERVICE_SID",
                "MG123",
                "RBMF_TWILIO_FROM",
            ),
        ];
        for (name, value, named) in cases {
            let mut env = base_env();
            env.insert(name, value);
            let err = error_of(&env);
            assert!(err.contains(named), "{name}={value}: {err}");
        }
    }

    #[test]
    fn the_pool_must_hold_every_group_commit_writer() {
        let mut env = base_env();
        env.insert("RBMF__DATABASE__MAX_CONNECTIONS", "11");
        let err = error_of(&env);
        assert!(
            err.contains("RBMF__DATABASE__MAX_CONNECTIONS") && err.contains("at least 12"),
            "{err}"
        );
        env.insert("RBMF__DATABASE__GROUP_COMMIT_FLUSHES", "1");
        assert_eq!(load(&env).unwrap().database.max_connections, 11);
    }

    #[test]
    fn messaging_service_may_replace_from() {
        let mut env = base_env();
        env.remove("RBMF_TWILIO_FROM");
        env.insert("RBMF_TWILIO_MESSAGING_SERVICE_SID", "MG0123");
        assert_eq!(
            load(&env).unwrap().twilio.sender,
            SmsSender::MessagingService("MG0123".into())
        );
    }

    #[test]
    fn relay_and_callback_settings_are_validated() {
        let s = load(&base_env()).unwrap();
        assert!(s.relay.url.is_none() && s.callbacks.url.is_none());
        let mut env = base_env();
        env.insert("RBMF_RELAY_URL", "https://agent.example.com/rbm?k=1");
        env.insert("RBMF_CALLBACK_URL", "https://agent.example.com/cb/");
        env.insert(
            "RBMF_CALLBACK_SECRET",
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        );
        let s = load(&env).unwrap();
        assert_eq!(
            s.relay.url.as_deref(),
            Some("https://agent.example.com/rbm?k=1")
        );
        assert_eq!(
            s.callbacks.url.as_deref(),
            Some("https://agent.example.com/cb/")
        );
        assert!(!format!("{s:?}").contains("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"));

        let cases = [
            ("RBMF_RELAY_URL", "agent.example.com", "RBMF_RELAY_URL"),
            (
                "RBMF_CALLBACK_SECRET",
                "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                "RBMF_CALLBACK_SECRET",
            ),
            ("RBMF_CALLBACK_SECRET", "", "RBMF_CALLBACK_SECRET"),
            ("RBMF__OUTBOX__LEASE_MS", "5000", "RBMF__OUTBOX__LEASE_MS"),
        ];
        for (name, value, named) in cases {
            let mut env = env.clone();
            env.insert(name, value);
            let err = error_of(&env);
            assert!(err.contains(named), "{name}={value}: {err}");
        }
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        let mut env = base_env();
        env.insert("DATABASE_URL", "postgres://user:hunter2@db/x");
        let s = load(&env).unwrap();
        let dump = format!("{s:?}");
        for secret in [
            "hunter2",
            "client-token",
            "twilio-secret",
            "token-aaaaaaaaaaaaaaaa",
        ] {
            assert!(!dump.contains(secret), "{secret} leaked: {dump}");
        }
        assert!(dump.contains("[redacted]"));
    }

    fn load_file(text: &str, env: &HashMap<&str, &str>) -> Result<Settings, ConfigError> {
        let dir = std::env::temp_dir().join(format!(
            "rbmf-agents-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("agents.toml");
        std::fs::write(&path, text).unwrap();
        let loaded = Settings::load_with(Some(&path), &|k| env.get(k).map(|v| v.to_string()));
        let _ = std::fs::remove_dir_all(&dir);
        loaded
    }

    const TWO_AGENTS: &str = r#"
[[agents]]
id = "shop@rbm.goog"
region = "europe"
service_account_key = "/etc/rbm/shop.json"
client_token = "shop-client-token"
relay_url = "https://shop.example.com/rbm"
rbm_rate_per_sec = 5
default_deadline_secs = 60
sms_from = "Shop"
api_tokens = ["shop-api-token-0123456789"]

[[agents]]
id = "bank"
base_url = "http://127.0.0.1:9000/"
service_account_key = "/etc/rbm/bank.json"
client_token = "bank-client-token"
"#;

    fn without_rbm() -> HashMap<&'static str, &'static str> {
        let mut env = base_env();
        for name in [
            "RBMF_RBM_AGENT_ID",
            "RBMF_RBM_CLIENT_TOKEN",
            "RBMF_RBM_SERVICE_ACCOUNT_KEY",
        ] {
            env.remove(name);
        }
        env
    }

    #[test]
    fn the_single_agent_settings_define_one_agent() {
        let s = load(&base_env()).unwrap();
        assert_eq!(s.agents.len(), 1);
        assert_eq!(s.agents[0].id, "my-agent");
        assert_eq!(s.agent("my-agent@rbm.goog").unwrap().id, "my-agent");
        assert!(s.agent("other").is_none());
    }

    #[test]
    fn agents_are_read_from_the_file() {
        let s = load_file(TWO_AGENTS, &without_rbm()).unwrap();
        let ids: Vec<&str> = s.agents.iter().map(|a| a.id.as_str()).collect();
        assert_eq!(ids, ["shop", "bank"]);
        let shop = s.agent("shop").unwrap();
        assert_eq!(
            shop.base_url,
            "https://europe-rcsbusinessmessaging.googleapis.com"
        );
        assert_eq!(
            shop.relay_url.as_deref(),
            Some("https://shop.example.com/rbm")
        );
        assert_eq!(shop.rbm_rate_per_sec, Some(5));
        assert_eq!(shop.default_deadline, Some(Duration::from_secs(60)));
        assert_eq!(shop.sms_from.as_deref(), Some("Shop"));
        assert_eq!(shop.api_tokens.len(), 1);
        let bank = s.agent("bank@rbm.goog").unwrap();
        assert_eq!(bank.base_url, "http://127.0.0.1:9000");
        assert!(bank.relay_url.is_none() && bank.api_tokens.is_empty());
        // The first agent is the default one.
        assert_eq!(s.rbm.agent_id, "shop");
        assert!(!format!("{s:?}").contains("bank-client-token"));
    }

    #[test]
    fn the_rbm_section_is_one_more_agent_beside_the_file_s() {
        let s = load_file(TWO_AGENTS, &base_env()).unwrap();
        let ids: Vec<&str> = s.agents.iter().map(|a| a.id.as_str()).collect();
        assert_eq!(ids, ["my-agent", "shop", "bank"]);
        assert_eq!(s.rbm.agent_id, "my-agent");
    }

    #[test]
    fn bad_agent_lists_are_refused_with_the_entry_named() {
        let env = without_rbm();
        let twice = format!("{TWO_AGENTS}\n[[agents]]\nid = \"bank@rbm.goog\"\nservice_account_key = \"k\"\nclient_token = \"t\"\n");
        let err = load_file(&twice, &env).unwrap_err().to_string();
        assert!(
            err.contains("agents[2].id") && err.contains("twice"),
            "{err}"
        );

        let missing_key = TWO_AGENTS.replace("service_account_key = \"/etc/rbm/bank.json\"\n", "");
        let err = load_file(&missing_key, &env).unwrap_err().to_string();
        assert!(err.contains("agents[1].service_account_key"), "{err}");

        let both = TWO_AGENTS.replace(
            "region = \"europe\"",
            "region = \"europe\"\nbase_url = \"https://x.example.com\"",
        );
        let err = load_file(&both, &env).unwrap_err().to_string();
        assert!(err.contains("agents[0].region"), "{err}");

        let unknown = TWO_AGENTS.replace("region = \"europe\"", "region = \"mars\"");
        let err = load_file(&unknown, &env).unwrap_err().to_string();
        assert!(err.contains("agents[0].region"), "{err}");

        let typo = TWO_AGENTS.replace("sms_from", "sms_form");
        let err = load_file(&typo, &env).unwrap_err().to_string();
        assert!(
            err.contains("agents[0]") && err.contains("sms_form"),
            "{err}"
        );

        // The environment's agent clashing with one of the file's.
        let mut clash = base_env();
        clash.insert("RBMF_RBM_AGENT_ID", "bank");
        let err = load_file(TWO_AGENTS, &clash).unwrap_err().to_string();
        assert!(err.contains("agents[1].id"), "{err}");

        // Half an [rbm] agent is not silently dropped.
        let mut half = without_rbm();
        half.insert("RBMF_RBM_CLIENT_TOKEN", "client-token");
        let err = load_file(TWO_AGENTS, &half).unwrap_err().to_string();
        assert!(err.contains("RBMF_RBM_AGENT_ID"), "{err}");

        // No agent at all.
        let err = error_of(&without_rbm());
        assert!(err.contains("RBMF_RBM_AGENT_ID"), "{err}");
    }

    #[test]
    fn policies_come_from_the_deployment_the_traffic_types_and_each_agent() {
        use crate::domain::policy::{resolve, PolicyOverrides, QuietSetting};
        let s = load(&base_env()).unwrap();
        let deployment = &s.fallback.policy;
        // The shipped defaults.
        assert_eq!(deployment.all.on_uncertain, Some(OnUncertain::Skip));
        assert_eq!(deployment.all.quiet_hours, Some(QuietSetting::Off));
        assert_eq!(
            deployment.traffic[&TrafficType::Authentication].on_uncertain,
            Some(OnUncertain::SendSms)
        );
        assert!(matches!(
            deployment.traffic[&TrafficType::Promotion].quiet_hours,
            Some(QuietSetting::Rule(_))
        ));
        assert_eq!(s.fallback.max_sms_segments, 10);
        assert_eq!(s.fallback.rcs_unreachable_ttl, Duration::from_secs(86400));

        let file = format!(
            "{TWO_AGENTS}policy = {{ on_uncertain = \"send_sms\", confirm_window_ms = 2500 }}\n\
             [agents.traffic.PROMOTION]\nquiet_hours = \"off\"\n\
             [fallback.traffic.TRANSACTION]\nconfirm_window_ms = 700\n"
        );
        let s = load_file(&file, &without_rbm()).unwrap();
        let bank = s.agent("bank").unwrap();
        let none = PolicyOverrides::default();
        let r = |agent: &crate::config::AgentSettings, t| {
            resolve(
                &none,
                &agent.policy,
                &s.fallback.policy,
                Some(t),
                s.fallback.confirm_window,
            )
        };
        // Per traffic type the agent's word comes first, then the
        // deployment's, then the agent's general one...
        let promo = r(bank, TrafficType::Promotion);
        assert_eq!(promo.on_uncertain, OnUncertain::Skip);
        assert_eq!(promo.quiet_hours, None);
        assert_eq!(promo.confirm_window, Duration::from_millis(2500));
        let receipt = r(bank, TrafficType::Transaction);
        assert_eq!(receipt.on_uncertain, OnUncertain::SendSms);
        assert_eq!(receipt.confirm_window, Duration::from_millis(700));
        // ...and another agent keeps the deployment's.
        let shop = s.agent("shop").unwrap();
        let promo = r(shop, TrafficType::Promotion);
        assert_eq!(promo.on_uncertain, OnUncertain::Skip);
        assert!(promo.quiet_hours.is_some());
        assert_eq!(
            r(shop, TrafficType::Transaction).confirm_window,
            Duration::from_millis(700)
        );

        let bad = |text: &str| {
            load_file(&format!("{TWO_AGENTS}{text}"), &without_rbm())
                .unwrap_err()
                .to_string()
        };
        let err = bad("policy = { on_uncertain = \"maybe\" }\n");
        assert!(
            err.contains("agents[1]") && err.contains("send_sms"),
            "{err}"
        );
        let err = bad("[agents.traffic.SPAM]\non_uncertain = \"skip\"\n");
        assert!(err.contains("AUTHENTICATION"), "{err}");
        let err = bad("[agents.traffic.PROMOTION]\nconfirm_window_ms = 3600001\n");
        assert!(
            err.contains("agents[1].traffic.PROMOTION.confirm_window_ms"),
            "{err}"
        );
        let err = bad(
            "[fallback.traffic.PROMOTION]\nquiet_hours = { start = \"9:00\", end = \"25:00\" }\n",
        );
        assert!(
            err.contains("fallback.traffic.PROMOTION.quiet_hours"),
            "{err}"
        );
        let mut env = without_rbm();
        env.insert("RBMF__FALLBACK__MAX_SMS_SEGMENTS", "50");
        let err = load_file(TWO_AGENTS, &env).unwrap_err().to_string();
        assert!(err.contains("max_sms_segments"), "{err}");
    }
}
