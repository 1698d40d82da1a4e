//! The Google client against the emulator: one shared OAuth token, obtained
//! with the real JWT-bearer grant, refreshed once however many callers race.

use std::sync::Arc;
use std::time::Duration;

use rbm_fallback::config::{RbmSettings, Secret};
use rbm_fallback::emulator::google::{GoogleEmulator, GoogleEmulatorConfig, PhoneBehaviour};
use rbm_fallback::google::{RbmClient, Revoked, TokenSource};
use rbm_fallback::outbound::CallError;

async fn emulator_and_key() -> (GoogleEmulator, tempdir::Dir) {
    let google = GoogleEmulator::start(GoogleEmulatorConfig {
        default_phone: PhoneBehaviour::Offline,
        ..GoogleEmulatorConfig::default()
    })
    .await
    .unwrap();
    let dir = tempdir::Dir::new();
    std::fs::write(dir.key(), google.service_account_key_json()).unwrap();
    (google, dir)
}

mod tempdir {
    pub struct Dir(std::path::PathBuf);
    impl Dir {
        pub fn new() -> Dir {
            let p =
                std::env::temp_dir().join(format!("rbmf-key-{}", uuid::Uuid::new_v4().simple()));
            std::fs::create_dir_all(&p).unwrap();
            Dir(p)
        }
        pub fn key(&self) -> std::path::PathBuf {
            self.0.join("key.json")
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

#[tokio::test]
async fn concurrent_callers_share_one_token_request() {
    let (google, dir) = emulator_and_key().await;
    let tokens = Arc::new(
        TokenSource::from_key_file(&dir.key(), Duration::from_secs(5))
            .await
            .unwrap(),
    );
    let calls = (0..32).map(|_| {
        let tokens = tokens.clone();
        tokio::spawn(async move { tokens.token().await.unwrap() })
    });
    let got: Vec<Arc<str>> = futures::future::join_all(calls)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    assert!(got.iter().all(|t| *t == got[0]));
    assert_eq!(google.token_requests(), 1);
}

#[tokio::test]
async fn a_refused_token_is_replaced_on_the_next_call() {
    let (google, dir) = emulator_and_key().await;
    let tokens = TokenSource::from_key_file(&dir.key(), Duration::from_secs(5))
        .await
        .unwrap();
    let settings = RbmSettings {
        agent_id: google.agent_id().to_owned(),
        client_token: Secret::new(google.client_token()),
        base_url: google.base_url(),
        service_account_key: dir.key(),
        timeout: Duration::from_secs(5),
    };
    let client = RbmClient::new(&settings, tokens);
    google.agent_send("+15550001001", "m-1", None);
    assert_eq!(
        client
            .revoke(google.agent_id(), "+15550001001", "m-1")
            .await
            .unwrap(),
        Revoked::Ok
    );

    // Google stops accepting the token (revoked, or expired early).
    google.expire_access_tokens();
    google.agent_send("+15550001001", "m-2", None);
    let first = client
        .revoke(google.agent_id(), "+15550001001", "m-2")
        .await;
    assert!(
        matches!(first, Err(CallError::Retryable { .. })),
        "{first:?}"
    );
    assert_eq!(
        client
            .revoke(google.agent_id(), "+15550001001", "m-2")
            .await
            .unwrap(),
        Revoked::Ok
    );
    assert_eq!(google.token_requests(), 2);
    // Unknown (or already revoked) messages answer 404.
    assert_eq!(
        client
            .revoke(google.agent_id(), "+15550001001", "m-2")
            .await
            .unwrap(),
        Revoked::NotFound
    );
}

#[tokio::test]
async fn a_key_file_that_is_not_a_service_account_is_refused_clearly() {
    let dir = tempdir::Dir::new();
    std::fs::write(dir.key(), "{\"type\": \"authorized_user\"}").unwrap();
    let err = TokenSource::from_key_file(&dir.key(), Duration::from_secs(5))
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("key.json"), "{err}");
}
