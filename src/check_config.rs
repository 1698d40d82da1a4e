//! `rbm-fallback check-config`: loads the configuration exactly as `serve`
//! does and checks what a start would only discover later (the key file, the
//! credentials' shape) and, with `--online`, what only Google, Twilio and
//! PostgreSQL can tell: that the credentials work.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::pkcs8::DecodePrivateKey;

use crate::config::{Settings, SmsSender};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    Fail,
    Skipped,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad`, so the report can align verdicts with a width.
        f.pad(match self {
            Verdict::Ok => "ok",
            Verdict::Fail => "FAIL",
            Verdict::Skipped => "skipped",
        })
    }
}

/// One line of the report.
#[derive(Debug)]
pub struct Check {
    pub name: &'static str,
    pub verdict: Verdict,
    pub detail: String,
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:<8}{}: {}", self.verdict, self.name, self.detail)
    }
}

fn ok(name: &'static str, detail: impl Into<String>) -> Check {
    Check {
        name,
        verdict: Verdict::Ok,
        detail: detail.into(),
    }
}

fn fail(name: &'static str, detail: impl Into<String>) -> Check {
    Check {
        name,
        verdict: Verdict::Fail,
        detail: detail.into(),
    }
}

fn skipped(name: &'static str, detail: impl Into<String>) -> Check {
    Check {
        name,
        verdict: Verdict::Skipped,
        detail: detail.into(),
    }
}

const DATABASE_URL: &str = "database URL";
const DATABASE: &str = "database connection";
const KEY: &str = "service-account key";
const TOKENS: &str = "API tokens";
const PUBLIC_URL: &str = "public URL";
const TWILIO_CREDENTIALS: &str = "Twilio credentials";
const GOOGLE_TOKEN: &str = "Google access token";
const TWILIO_ACCOUNT: &str = "Twilio account";

/// Runs every check; `online` adds the ones that call out.
pub async fn run(file: Option<&Path>, online: bool) -> Vec<Check> {
    let settings = match Settings::load(file) {
        Ok(s) => s,
        Err(e) => {
            let mut checks = vec![fail("configuration", e.to_string())];
            for name in [
                DATABASE_URL,
                DATABASE,
                KEY,
                TOKENS,
                PUBLIC_URL,
                TWILIO_CREDENTIALS,
                GOOGLE_TOKEN,
                TWILIO_ACCOUNT,
            ] {
                checks.push(skipped(name, "the configuration did not load"));
            }
            return checks;
        }
    };
    let source = match file {
        Some(path) => format!("defaults, {}, environment", path.display()),
        None => "defaults, environment".to_owned(),
    };
    let mut checks = vec![ok(
        "configuration",
        format!("parses and validates ({source})"),
    )];
    check_all(&settings, online, &mut checks).await;
    checks
}

async fn check_all(settings: &Settings, online: bool, checks: &mut Vec<Check>) {
    let offline = "needs --online";

    let db_options = sqlx::postgres::PgConnectOptions::from_str(settings.database.url.expose());
    match &db_options {
        Ok(o) => checks.push(ok(
            DATABASE_URL,
            format!(
                "PostgreSQL at {}:{}, database {}",
                o.get_host(),
                o.get_port(),
                o.get_database().unwrap_or("(the user's default)")
            ),
        )),
        // The error would quote the URL, password included.
        Err(_) => checks.push(fail(DATABASE_URL, "is not a valid PostgreSQL URL")),
    }
    checks.push(match (&db_options, online) {
        (Err(_), _) => skipped(DATABASE, "the URL is invalid"),
        (Ok(_), false) => skipped(DATABASE, offline),
        (Ok(o), true) => connect(o.clone(), settings.database.acquire_timeout).await,
    });

    // One key per agent; with several, each line names its agent.
    let several = settings.agents.len() > 1;
    let keys: Vec<_> = settings
        .agents
        .iter()
        .map(|a| {
            let path = &a.service_account_key;
            let named = if several {
                format!("agent {}: {}", a.id, path.display())
            } else {
                path.display().to_string()
            };
            (a, named, read_key(path))
        })
        .collect();
    for (_, named, key) in &keys {
        checks.push(match key {
            Ok(k) => ok(
                KEY,
                format!(
                    "{named}: service account {}, RSA key of {} bits, token endpoint {}",
                    k.client_email, k.bits, k.token_uri
                ),
            ),
            Err(why) => fail(KEY, format!("{named}: {why}")),
        });
    }

    let tokens = &settings.server.api_tokens;
    checks.push(ok(
        TOKENS,
        format!(
            "{} bearer token(s), each at least 16 characters",
            tokens.len()
        ),
    ));

    checks.push(match reqwest::Url::parse(&settings.server.public_url) {
        Ok(url) if url.has_host() => {
            let base = &settings.server.public_url;
            let mut detail = format!("{base}; Twilio will call {base}/webhooks/twilio/status");
            if url.scheme() != "https" {
                detail.push_str(" (plain http: fine behind a proxy on the same host only)");
            }
            ok(PUBLIC_URL, detail)
        }
        _ => fail(PUBLIC_URL, "is not an absolute http(s) URL"),
    });

    checks.push(twilio_shape(settings));

    for (agent, _, key) in &keys {
        let whose = if several {
            format!("agent {}: ", agent.id)
        } else {
            String::new()
        };
        checks.push(match (key, online) {
            (Err(_), _) => skipped(GOOGLE_TOKEN, format!("{whose}the key is unusable")),
            (Ok(_), false) => skipped(GOOGLE_TOKEN, format!("{whose}{offline}")),
            (Ok(k), true) => {
                google_token(&agent.service_account_key, settings, &k.token_uri, &whose).await
            }
        });
    }
    checks.push(if online {
        twilio_account(settings).await
    } else {
        skipped(TWILIO_ACCOUNT, offline)
    });
}

async fn connect(options: sqlx::postgres::PgConnectOptions, timeout: std::time::Duration) -> Check {
    use sqlx::Connection;
    let attempt = async {
        let mut conn = sqlx::PgConnection::connect_with(&options).await?;
        let version: String = sqlx::query_scalar("SHOW server_version")
            .fetch_one(&mut conn)
            .await?;
        let _ = conn.close().await;
        Ok::<_, sqlx::Error>(version)
    };
    match tokio::time::timeout(timeout.max(std::time::Duration::from_secs(5)), attempt).await {
        Ok(Ok(version)) => ok(DATABASE, format!("connected (PostgreSQL {version})")),
        Ok(Err(e)) => fail(DATABASE, format!("cannot connect: {e}")),
        Err(_) => fail(DATABASE, "no answer in time"),
    }
}

struct KeyFacts {
    client_email: String,
    token_uri: String,
    bits: usize,
}

/// Reads the key file the way a start needs it: a Google service-account key
/// with an RSA private key and a token endpoint.
fn read_key(path: &Path) -> Result<KeyFacts, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read it: {e}"))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("is not JSON: {e}"))?;
    let field = |name: &str| {
        json[name]
            .as_str()
            .filter(|v| !v.trim().is_empty())
            .ok_or_else(|| format!("has no {name:?}"))
    };
    let kind = field("type")?;
    if kind != "service_account" {
        return Err(format!("\"type\" is {kind:?}, not \"service_account\""));
    }
    let client_email = field("client_email")?.to_owned();
    let token_uri = field("token_uri")?.to_owned();
    reqwest::Url::parse(&token_uri).map_err(|e| format!("\"token_uri\" is not a URL: {e}"))?;
    let pem = field("private_key")?;
    let key = rsa::RsaPrivateKey::from_pkcs8_pem(pem)
        .or_else(|_| rsa::RsaPrivateKey::from_pkcs1_pem(pem))
        .map_err(|e| format!("\"private_key\" is not an RSA private key in PEM: {e}"))?;
    use rsa::traits::PublicKeyParts;
    Ok(KeyFacts {
        client_email,
        token_uri,
        bits: key.n().bits(),
    })
}

fn is_sid(s: &str, prefix: &str) -> bool {
    s.len() == 34 && s.starts_with(prefix) && s[2..].bytes().all(|b| b.is_ascii_hexdigit())
}

/// What can be told without asking Twilio: SIDs are two letters and 32 hex
/// digits, auth tokens 32 hex digits.
fn twilio_shape(settings: &Settings) -> Check {
    let t = &settings.twilio;
    if !is_sid(&t.account_sid, "AC") {
        return fail(
            TWILIO_CREDENTIALS,
            "account_sid must be AC followed by 32 hexadecimal digits",
        );
    }
    let token = t.auth_token.expose();
    if token.len() != 32 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
        return fail(
            TWILIO_CREDENTIALS,
            "auth_token must be 32 hexadecimal digits (an API key secret is not supported)",
        );
    }
    let sender = match &t.sender {
        SmsSender::From(from) => format!("sender {from}"),
        SmsSender::MessagingService(sid) if is_sid(sid, "MG") => {
            format!("messaging service {sid}")
        }
        SmsSender::MessagingService(_) => {
            return fail(
                TWILIO_CREDENTIALS,
                "messaging_service_sid must be MG followed by 32 hexadecimal digits",
            )
        }
    };
    ok(
        TWILIO_CREDENTIALS,
        format!("account {}, {sender}", t.account_sid),
    )
}

async fn google_token(key: &Path, settings: &Settings, token_uri: &str, whose: &str) -> Check {
    let tokens = match crate::google::TokenSource::from_key_file(key, settings.rbm.timeout).await {
        Ok(t) => t,
        Err(e) => return fail(GOOGLE_TOKEN, format!("{whose}{e}")),
    };
    match tokens.token().await {
        Ok(_) => ok(GOOGLE_TOKEN, format!("{whose}obtained from {token_uri}")),
        Err(e) => fail(GOOGLE_TOKEN, format!("{whose}{e} (from {token_uri})")),
    }
}

/// Fetches the Account resource, which needs nothing but valid credentials.
async fn twilio_account(settings: &Settings) -> Check {
    let t = &settings.twilio;
    let url = format!(
        "{}/2010-04-01/Accounts/{}.json",
        t.base_url.trim_end_matches('/'),
        t.account_sid
    );
    let basic = B64.encode(format!("{}:{}", t.account_sid, t.auth_token.expose()));
    let answer = crate::outbound::client(t.timeout)
        .get(&url)
        .header(reqwest::header::AUTHORIZATION, format!("Basic {basic}"))
        .send()
        .await;
    let response = match answer {
        Ok(r) => r,
        Err(e) => {
            return fail(
                TWILIO_ACCOUNT,
                format!(
                    "cannot reach {}: {}",
                    t.base_url,
                    crate::outbound::CallError::from_reqwest(e)
                ),
            )
        }
    };
    let status = response.status();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    if status.is_success() {
        let state = body["status"].as_str().unwrap_or("unknown");
        let name = body["friendly_name"].as_str().unwrap_or("");
        if state == "active" {
            ok(TWILIO_ACCOUNT, format!("{name:?} is active"))
        } else {
            fail(TWILIO_ACCOUNT, format!("{name:?} is {state}, not active"))
        }
    } else {
        let code = body["code"]
            .as_u64()
            .map(|c| format!(", Twilio error {c}"))
            .unwrap_or_default();
        let why = if status == reqwest::StatusCode::UNAUTHORIZED {
            "the account SID and auth token were refused"
        } else {
            "unexpected answer"
        };
        fail(TWILIO_ACCOUNT, format!("{why} ({status}{code})"))
    }
}
