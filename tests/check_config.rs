//! `rbm-fallback check-config`, run as the real binary against settings that
//! point at the emulators: one verdict per check, exit 0 only if none fails.

mod common;

use std::net::SocketAddr;

use common::TestDb;
use rbm_fallback::sandbox::{free_port, Rig, SandboxConfig};

struct Run {
    success: bool,
    lines: Vec<String>,
}

impl Run {
    /// The line of the named check, e.g. "Twilio account".
    fn line(&self, check: &str) -> &str {
        self.lines
            .iter()
            .find(|l| {
                l.get(8..)
                    .is_some_and(|rest| rest.starts_with(&format!("{check}:")))
            })
            .unwrap_or_else(|| panic!("no line for {check}: {:#?}", self.lines))
    }

    fn verdict(&self, check: &str) -> &str {
        self.line(check)[..8].trim_end()
    }
}

async fn check_config(env: Vec<(String, String)>, online: bool) -> Run {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_rbm-fallback"));
    // Only the settings given here, none from the environment of the tests.
    cmd.env_clear().envs(env).arg("check-config");
    if online {
        cmd.arg("--online");
    }
    let out = cmd.output().await.expect("the binary runs");
    let stdout = String::from_utf8(out.stdout).unwrap();
    Run {
        success: out.status.success(),
        lines: stdout.lines().map(str::to_owned).collect(),
    }
}

async fn rig(db: &TestDb) -> Rig {
    Rig::start(&SandboxConfig::new(&db.url)).await.unwrap()
}

fn env_of(rig: &Rig) -> Vec<(String, String)> {
    let listen: SocketAddr = "127.0.0.1:8080".parse().unwrap();
    rig.service_env(listen, "https://fallback.example.com")
}

fn with(mut env: Vec<(String, String)>, name: &str, value: &str) -> Vec<(String, String)> {
    env.retain(|(k, _)| k != name);
    env.push((name.to_owned(), value.to_owned()));
    env
}

#[tokio::test]
async fn a_good_configuration_passes_every_check_online() {
    let db = TestDb::new().await;
    let rig = rig(&db).await;
    let run = check_config(env_of(&rig), true).await;
    assert!(run.success, "{:#?}", run.lines);
    for check in [
        "configuration",
        "database URL",
        "database connection",
        "service-account key",
        "API tokens",
        "public URL",
        "Twilio credentials",
        "Google access token",
        "Twilio account",
    ] {
        assert_eq!(run.verdict(check), "ok", "{}", run.line(check));
    }
    assert!(run.line("database connection").contains("PostgreSQL"));
    assert!(run
        .line("Google access token")
        .contains(&rig.google.base_url()));
    assert!(run.line("Twilio account").contains("is active"));
    assert_eq!(rig.twilio.requests(), 1);
    assert_eq!(run.lines.last().unwrap(), "all checks passed");
}

#[tokio::test]
async fn offline_the_calls_out_are_skipped_and_nothing_is_called() {
    let db = TestDb::new().await;
    let rig = rig(&db).await;
    let run = check_config(env_of(&rig), false).await;
    assert!(run.success, "{:#?}", run.lines);
    for check in [
        "database connection",
        "Google access token",
        "Twilio account",
    ] {
        assert_eq!(run.verdict(check), "skipped", "{}", run.line(check));
        assert!(run.line(check).ends_with("needs --online"));
    }
    assert_eq!(run.verdict("service-account key"), "ok");
    assert_eq!(rig.twilio.requests(), 0);
}

#[tokio::test]
async fn a_missing_key_file_fails_its_check() {
    let db = TestDb::new().await;
    let rig = rig(&db).await;
    let missing = rig.dir().join("no-such-key.json");
    let env = with(
        env_of(&rig),
        "RBMF_RBM_SERVICE_ACCOUNT_KEY",
        missing.to_str().unwrap(),
    );
    let run = check_config(env, true).await;
    assert!(!run.success);
    assert_eq!(run.verdict("service-account key"), "FAIL");
    assert!(run.line("service-account key").contains("cannot read it"));
    assert_eq!(run.verdict("Google access token"), "skipped");
    // The other checks still run and pass.
    assert_eq!(run.verdict("Twilio account"), "ok");
    assert_eq!(run.lines.last().unwrap(), "1 check(s) failed");
}

#[tokio::test]
async fn a_key_that_is_not_a_service_account_key_fails() {
    let db = TestDb::new().await;
    let rig = rig(&db).await;
    let path = rig.dir().join("wrong.json");
    std::fs::write(&path, r#"{"type": "authorized_user", "client_id": "x"}"#).unwrap();
    let run = check_config(
        with(
            env_of(&rig),
            "RBMF_RBM_SERVICE_ACCOUNT_KEY",
            path.to_str().unwrap(),
        ),
        false,
    )
    .await;
    assert!(!run.success);
    assert!(run
        .line("service-account key")
        .contains("not \"service_account\""));
}

#[tokio::test]
async fn a_malformed_account_sid_fails_the_twilio_check() {
    let db = TestDb::new().await;
    let rig = rig(&db).await;
    let run = check_config(
        with(env_of(&rig), "RBMF_TWILIO_ACCOUNT_SID", "AC123"),
        false,
    )
    .await;
    assert!(!run.success);
    assert_eq!(run.verdict("configuration"), "ok");
    assert_eq!(run.verdict("Twilio credentials"), "FAIL");
    assert!(run
        .line("Twilio credentials")
        .contains("32 hexadecimal digits"));
}

#[tokio::test]
async fn an_unreachable_or_refusing_twilio_fails_online() {
    let db = TestDb::new().await;
    let rig = rig(&db).await;
    let nowhere = format!("http://127.0.0.1:{}", free_port().unwrap());
    let run = check_config(with(env_of(&rig), "RBMF_TWILIO_BASE_URL", &nowhere), true).await;
    assert!(!run.success);
    assert_eq!(run.verdict("Twilio account"), "FAIL");
    assert!(
        run.line("Twilio account").contains("cannot reach"),
        "{}",
        run.line("Twilio account")
    );
    assert_eq!(run.verdict("Google access token"), "ok");

    let wrong_token = "0123456789abcdef0123456789abcdef";
    let run = check_config(
        with(env_of(&rig), "RBMF_TWILIO_AUTH_TOKEN", wrong_token),
        true,
    )
    .await;
    assert!(!run.success);
    let line = run.line("Twilio account");
    assert!(line.contains("refused") && line.contains("20003"), "{line}");
}

#[tokio::test]
async fn an_invalid_configuration_fails_and_skips_the_rest() {
    let db = TestDb::new().await;
    let rig = rig(&db).await;
    let run = check_config(with(env_of(&rig), "RBMF_PUBLIC_URL", ""), true).await;
    assert!(!run.success);
    assert_eq!(run.verdict("configuration"), "FAIL");
    assert!(run.line("configuration").contains("RBMF_PUBLIC_URL"));
    assert_eq!(run.verdict("Twilio account"), "skipped");
    assert_eq!(rig.twilio.requests(), 0);
}

#[tokio::test]
async fn each_agent_s_key_is_checked() {
    let db = TestDb::new().await;
    let rig = rig(&db).await;
    let missing = rig.dir().join("no-such-key.json");
    let file = rig.dir().join("agents.toml");
    std::fs::write(
        &file,
        format!(
            "[[agents]]\nid = \"agent-b\"\nservice_account_key = \"{}\"\nclient_token = \"b-token\"\n",
            missing.display()
        ),
    )
    .unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_rbm-fallback"))
        .env_clear()
        .envs(env_of(&rig))
        .arg("--config")
        .arg(&file)
        .arg("check-config")
        .output()
        .await
        .expect("the binary runs");
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(!out.status.success(), "{stdout}");
    let keys: Vec<&str> = stdout
        .lines()
        .filter(|l| {
            l.get(8..)
                .is_some_and(|r| r.starts_with("service-account key:"))
        })
        .collect();
    assert_eq!(keys.len(), 2, "{stdout}");
    let a = format!("agent {}:", rig.google.agent_id());
    assert!(
        keys[0].starts_with("ok") && keys[0].contains(&a),
        "{stdout}"
    );
    assert!(
        keys[1].starts_with("FAIL")
            && keys[1].contains("agent agent-b:")
            && keys[1].contains("no-such-key.json"),
        "{stdout}"
    );
}
