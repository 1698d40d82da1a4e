//! `sandbox --demo`: a mixed population of phones, each scenario with the
//! outcome the simulation implies, checked through the public API and
//! against what the emulators saw (DELETEs at Google, SMS at Twilio).

use std::time::Duration;

use chrono::Utc;
use serde_json::json;

use super::Sandbox;
use crate::emulator::google::PhoneBehaviour;
use crate::emulator::twilio::RecipientBehaviour;

const PER_SCENARIO: usize = 6;

struct Scenario {
    name: &'static str,
    phone: PhoneBehaviour,
    recipient: RecipientBehaviour,
    /// Google's own TTL, when the agent set one.
    ttl: Option<Duration>,
    deadline_in: Duration,
    state: &'static str,
    outcome: &'static str,
    sms: usize,
}

fn scenarios(confirm_window: Duration) -> Vec<Scenario> {
    let ms = Duration::from_millis;
    let deliver = RecipientBehaviour::Deliver;
    vec![
        Scenario {
            name: "delivered in time",
            phone: PhoneBehaviour::Online {
                delay: ms(300),
                read_after: Some(ms(300)),
            },
            recipient: deliver.clone(),
            ttl: None,
            deadline_in: ms(2500),
            state: "delivered",
            outcome: "rcs",
            sms: 0,
        },
        Scenario {
            name: "offline: revoked, sent as SMS",
            phone: PhoneBehaviour::Offline,
            recipient: deliver.clone(),
            ttl: None,
            deadline_in: ms(1500),
            state: "sms_delivered",
            outcome: "sms",
            sms: 1,
        },
        Scenario {
            name: "delivered during the revoke race",
            phone: PhoneBehaviour::RevokeRace {
                delay: confirm_window / 4,
            },
            recipient: deliver.clone(),
            ttl: None,
            deadline_in: ms(1500),
            state: "delivered",
            outcome: "rcs",
            sms: 0,
        },
        Scenario {
            name: "revoked by Google's TTL",
            phone: PhoneBehaviour::Offline,
            recipient: deliver.clone(),
            ttl: Some(ms(1000)),
            deadline_in: Duration::from_secs(120),
            state: "sms_delivered",
            outcome: "sms",
            sms: 1,
        },
        Scenario {
            name: "TTL revoke failed: delivered",
            phone: PhoneBehaviour::TtlRevokeFails,
            recipient: deliver.clone(),
            ttl: Some(ms(1000)),
            deadline_in: Duration::from_secs(120),
            state: "delivered",
            outcome: "rcs",
            sms: 0,
        },
        Scenario {
            name: "delivered after the SMS went out",
            phone: PhoneBehaviour::RevokeRace {
                delay: confirm_window + ms(1500),
            },
            recipient: deliver,
            ttl: None,
            deadline_in: ms(1500),
            state: "sms_delivered",
            outcome: "both",
            sms: 1,
        },
        Scenario {
            name: "SMS undeliverable",
            phone: PhoneBehaviour::Offline,
            recipient: RecipientBehaviour::Undeliverable { error_code: 30003 },
            ttl: None,
            deadline_in: ms(1500),
            state: "sms_failed",
            outcome: "none",
            sms: 1,
        },
        Scenario {
            name: "number refused by Twilio",
            phone: PhoneBehaviour::Offline,
            recipient: RecipientBehaviour::InvalidNumber,
            ttl: None,
            deadline_in: ms(1500),
            state: "failed",
            outcome: "none",
            sms: 0,
        },
    ]
}

struct Tracked {
    scenario: usize,
    message_id: String,
    phone: String,
}

pub async fn run(sandbox: &Sandbox) -> anyhow::Result<bool> {
    let api = sandbox.api();
    let list = scenarios(sandbox.settings.fallback.confirm_window);
    println!(
        "sandbox demo: {} scenarios x {PER_SCENARIO} messages against {}",
        list.len(),
        sandbox.url
    );

    let mut tracked = Vec::new();
    for (si, sc) in list.iter().enumerate() {
        for i in 0..PER_SCENARIO {
            let phone = format!("+1555{:02}{:05}", si + 10, i);
            let message_id = uuid::Uuid::new_v4().to_string();
            sandbox.google.set_phone(&phone, sc.phone.clone());
            sandbox.twilio.set_recipient(&phone, sc.recipient.clone());
            // What the agent does: send the RCS, then register the fallback.
            sandbox.google.agent_send(&phone, &message_id, sc.ttl);
            let deadline = Utc::now() + chrono::TimeDelta::from_std(sc.deadline_in)?;
            let response = api
                .post(format!("{}/v1/messages", sandbox.url))
                .json(&json!({
                    "phone": phone,
                    "message_id": message_id,
                    "deadline": deadline.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                    "sms": { "body": format!("Your code is {:06}", rand::random::<u32>() % 1_000_000) },
                    "metadata": { "scenario": sc.name },
                }))
                .send()
                .await?;
            anyhow::ensure!(
                response.status() == reqwest::StatusCode::CREATED,
                "registering failed: {} {}",
                response.status(),
                response.text().await.unwrap_or_default()
            );
            tracked.push(Tracked {
                scenario: si,
                message_id,
                phone,
            });
        }
    }

    // The demo watches from outside, like an operator would: poll the API
    // until every message shows its expected outcome, or time runs out.
    let give_up = tokio::time::Instant::now() + Duration::from_secs(45);
    let mut reached = vec![None::<(String, String)>; tracked.len()];
    loop {
        for (t, slot) in tracked.iter().zip(reached.iter_mut()) {
            let m: serde_json::Value = api
                .get(format!("{}/v1/messages/{}", sandbox.url, t.message_id))
                .send()
                .await?
                .json()
                .await?;
            let text = |k: &str| m.get(k).and_then(|v| v.as_str()).unwrap_or("?").to_owned();
            *slot = Some((text("state"), text("outcome")));
        }
        let done = tracked.iter().zip(&reached).all(|(t, r)| {
            let sc = &list[t.scenario];
            r.as_ref()
                .is_some_and(|(s, o)| s == sc.state && o == sc.outcome)
        });
        if done || tokio::time::Instant::now() > give_up {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    let sms = sandbox.twilio.messages();
    let revokes = sandbox.google.revokes();
    println!();
    println!(
        "{:<34} {:>5}  {:<22} {:>7}  {:>9}  {:>8}",
        "scenario", "msgs", "expected", "reached", "SMS sent", "DELETEs"
    );
    let mut all_ok = true;
    for (si, sc) in list.iter().enumerate() {
        let mine: Vec<usize> = (0..tracked.len())
            .filter(|&i| tracked[i].scenario == si)
            .collect();
        let ok_count = mine
            .iter()
            .filter(|&&i| {
                reached[i]
                    .as_ref()
                    .is_some_and(|(s, o)| s == sc.state && o == sc.outcome)
            })
            .count();
        let sms_count: usize = mine
            .iter()
            .map(|&i| sms.iter().filter(|m| m.to == tracked[i].phone).count())
            .sum();
        let sms_ok = mine
            .iter()
            .all(|&i| sms.iter().filter(|m| m.to == tracked[i].phone).count() == sc.sms);
        let deletes = mine
            .iter()
            .map(|&i| {
                revokes
                    .iter()
                    .filter(|r| r.message_id == tracked[i].message_id)
                    .count()
            })
            .sum::<usize>();
        let ok = ok_count == mine.len() && sms_ok;
        all_ok &= ok;
        println!(
            "{:<34} {:>5}  {:<22} {:>7}  {:>9}  {:>8}  {}",
            sc.name,
            mine.len(),
            format!("{} / {}", sc.state, sc.outcome),
            ok_count,
            sms_count,
            deletes,
            if ok { "ok" } else { "MISMATCH" }
        );
        if !ok {
            for &i in &mine {
                if let Some((s, o)) = &reached[i] {
                    if s != sc.state || o != sc.outcome {
                        println!("    {} ended {s} / {o}", tracked[i].message_id);
                    }
                }
            }
        }
    }
    println!();
    println!(
        "{}: {} messages, {} SMS, {} DELETEs",
        if all_ok {
            "every message reached its expected outcome"
        } else {
            "SOME MESSAGES DID NOT"
        },
        tracked.len(),
        sms.len(),
        revokes.len()
    );
    Ok(all_ok)
}
