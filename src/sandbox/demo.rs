//! `sandbox --demo`: a mixed population of phones, each scenario with the
//! outcome the simulation implies, checked through the public API and
//! against what the emulators saw (sends and DELETEs at Google, SMS at
//! Twilio). Track-mode scenarios send the RCS as the agent would; send-mode
//! scenarios leave the send to the service.

use std::collections::HashSet;
use std::time::Duration;

use chrono::Utc;
use serde_json::{json, Value};

use super::Sandbox;
use crate::emulator::google::PhoneBehaviour;
use crate::emulator::twilio::RecipientBehaviour;

const PER_SCENARIO: usize = 6;

/// Who sends the RBM message.
#[derive(Clone)]
enum Mode {
    /// The agent sends it (with Google's own TTL, if set), then registers.
    Track { ttl: Option<Duration> },
    /// The service sends it: `rcs` is the request's `rcs` object. The
    /// request carries no message_id, so the service makes one.
    Send { rcs: Value },
}

impl Mode {
    fn label(&self) -> &'static str {
        match self {
            Mode::Track { .. } => "track",
            Mode::Send { .. } => "send",
        }
    }
}

struct Scenario {
    name: &'static str,
    mode: Mode,
    phone: PhoneBehaviour,
    recipient: RecipientBehaviour,
    /// The request's `policy` object, if any.
    policy: Option<Value>,
    /// The phone gets the message but its DELIVERED webhook is lost: done
    /// once Google has the message.
    silent_delivery: bool,
    /// Register to the phones of that earlier scenario, once its messages
    /// have settled: to show what the service remembers about them.
    reuses_phones_of: Option<&'static str>,
    deadline_in: Duration,
    /// The state the POST answers with, where it matters.
    registered_as: Option<&'static str>,
    state: &'static str,
    outcome: &'static str,
    /// Event kinds each message must show.
    events: &'static [&'static str],
    /// SMS per message.
    sms: usize,
    /// Sends to Google per message, where it matters.
    sends: Option<usize>,
}

impl Scenario {
    fn track(name: &'static str, phone: PhoneBehaviour, deadline_in: Duration) -> Scenario {
        Scenario {
            name,
            mode: Mode::Track { ttl: None },
            phone,
            recipient: RecipientBehaviour::Deliver,
            policy: None,
            silent_delivery: false,
            reuses_phones_of: None,
            deadline_in,
            registered_as: None,
            state: "sms_delivered",
            outcome: "sms",
            events: &[],
            sms: 1,
            // The agent's send goes around the recorded API.
            sends: Some(0),
        }
    }

    fn send(
        name: &'static str,
        traffic: &str,
        phone: PhoneBehaviour,
        deadline_in: Duration,
    ) -> Scenario {
        Scenario {
            mode: Mode::Send {
                rcs: json!({
                    "contentMessage": { "text": "Your sign-in code is ready" },
                    "messageTrafficType": traffic,
                }),
            },
            sends: Some(1),
            ..Scenario::track(name, phone, deadline_in)
        }
    }

    fn expects_rcs(self) -> Scenario {
        Scenario {
            state: "delivered",
            outcome: "rcs",
            sms: 0,
            ..self
        }
    }
}

/// Quiet hours from an hour ago to two hours ahead, in UTC: they cover
/// the whole run.
pub fn quiet_hours_now(action: &str) -> Value {
    let now = Utc::now();
    let hhmm = |t: chrono::DateTime<Utc>| t.format("%H:%M").to_string();
    json!({
        "start": hhmm(now - chrono::TimeDelta::hours(1)),
        "end": hhmm(now + chrono::TimeDelta::hours(2)),
        "time_zone": "UTC",
        "action": action,
    })
}

fn scenarios(confirm_window: Duration) -> Vec<Scenario> {
    let ms = Duration::from_millis;
    let far = Duration::from_secs(120);
    let online = PhoneBehaviour::Online {
        delay: ms(300),
        read_after: Some(ms(300)),
    };
    vec![
        Scenario::track("delivered in time", online.clone(), ms(2500)).expects_rcs(),
        Scenario::track(
            "offline: revoked, sent as SMS",
            PhoneBehaviour::Offline,
            ms(1500),
        ),
        Scenario::track(
            "delivered during the revoke race",
            PhoneBehaviour::RevokeRace {
                delay: confirm_window / 4,
            },
            ms(1500),
        )
        .expects_rcs(),
        Scenario {
            mode: Mode::Track {
                ttl: Some(ms(1000)),
            },
            ..Scenario::track("revoked by Google's TTL", PhoneBehaviour::Offline, far)
        },
        Scenario {
            mode: Mode::Track {
                ttl: Some(ms(1000)),
            },
            ..Scenario::track(
                "TTL revoke failed: delivered",
                PhoneBehaviour::TtlRevokeFails,
                far,
            )
            .expects_rcs()
        },
        Scenario {
            outcome: "both",
            ..Scenario::track(
                "delivered after the SMS went out",
                PhoneBehaviour::RevokeRace {
                    delay: confirm_window + ms(1500),
                },
                ms(1500),
            )
        },
        Scenario {
            recipient: RecipientBehaviour::Undeliverable { error_code: 30003 },
            state: "sms_failed",
            outcome: "none",
            ..Scenario::track("SMS undeliverable", PhoneBehaviour::Offline, ms(1500))
        },
        Scenario {
            recipient: RecipientBehaviour::InvalidNumber,
            state: "failed",
            outcome: "none",
            sms: 0,
            ..Scenario::track(
                "number refused by Twilio",
                PhoneBehaviour::Offline,
                ms(1500),
            )
        },
        Scenario {
            events: &["rcs_send_attempt", "rcs_sent", "rcs_delivered"],
            ..Scenario::send("sent and delivered", "TRANSACTION", online, ms(2500)).expects_rcs()
        },
        Scenario {
            events: &["rcs_sent"],
            ..Scenario::send(
                "sent, offline: revoked, SMS",
                "TRANSACTION",
                PhoneBehaviour::Offline,
                ms(1500),
            )
        },
        // The deadline is far: reaching SMS in time shows it did not wait.
        Scenario {
            events: &["rcs_unreachable"],
            ..Scenario::send(
                "no RCS (404): SMS at once",
                "TRANSACTION",
                PhoneBehaviour::NotRcs,
                far,
            )
        },
        Scenario {
            reuses_phones_of: Some("no RCS (404): SMS at once"),
            registered_as: Some("sms_sending"),
            sends: Some(0),
            ..Scenario::send(
                "same phones again: Google skipped",
                "TRANSACTION",
                PhoneBehaviour::NotRcs,
                far,
            )
        },
        Scenario {
            events: &["rcs_unreachable"],
            ..Scenario::send(
                "agent not launched (403): SMS",
                "TRANSACTION",
                PhoneBehaviour::NotLaunched,
                far,
            )
        },
        // Content the device cannot show: Google answers 400, and no SMS
        // can stand in for a message that was wrong from the start.
        Scenario {
            state: "failed",
            outcome: "none",
            events: &["rcs_rejected"],
            sms: 0,
            ..Scenario::send(
                "content refused by Google (400)",
                "TRANSACTION",
                PhoneBehaviour::ContentUnsupported,
                far,
            )
        },
        // AUTHENTICATION defaults to on_uncertain send_sms: a revoke that
        // answers 404 without a DELIVERED proves nothing.
        Scenario {
            silent_delivery: true,
            ..Scenario::send(
                "OTP, arrival unproven: SMS",
                "AUTHENTICATION",
                PhoneBehaviour::Offline,
                ms(1500),
            )
        },
        Scenario {
            silent_delivery: true,
            policy: Some(json!({ "on_uncertain": "skip" })),
            ..Scenario::send(
                "OTP, unproven, on_uncertain skip",
                "AUTHENTICATION",
                PhoneBehaviour::Offline,
                ms(1500),
            )
            .expects_rcs()
        },
        Scenario {
            policy: Some(json!({ "quiet_hours": quiet_hours_now("drop") })),
            state: "sms_skipped",
            outcome: "none",
            sms: 0,
            ..Scenario::send(
                "quiet hours: SMS dropped",
                "PROMOTION",
                PhoneBehaviour::Offline,
                ms(1500),
            )
        },
    ]
}

struct Tracked {
    scenario: usize,
    message_id: String,
    phone: String,
    sms_body: String,
    registered_as: String,
}

/// What the API shows for one message.
#[derive(Clone, Default)]
struct Seen {
    state: String,
    outcome: String,
    kinds: Vec<String>,
}

impl Seen {
    fn settled(&self, sc: &Scenario) -> bool {
        self.state == sc.state
            && self.outcome == sc.outcome
            && sc.events.iter().all(|k| self.kinds.iter().any(|s| s == k))
    }
}

fn text(v: &Value, key: &str) -> String {
    v.get(key)
        .and_then(|v| v.as_str())
        .unwrap_or("?")
        .to_owned()
}

async fn look(sandbox: &Sandbox, api: &reqwest::Client, id: &str) -> anyhow::Result<Seen> {
    let m: Value = api
        .get(format!("{}/v1/messages/{id}", sandbox.url))
        .send()
        .await?
        .json()
        .await?;
    let kinds = m
        .get("events")
        .and_then(|e| e.as_array())
        .map(|events| events.iter().map(|e| text(e, "kind")).collect())
        .unwrap_or_default();
    Ok(Seen {
        state: text(&m, "state"),
        outcome: text(&m, "outcome"),
        kinds,
    })
}

/// Polls until every message in `ids` settled as `sc` says, or `give_up`.
async fn wait_settled(
    sandbox: &Sandbox,
    api: &reqwest::Client,
    sc: &Scenario,
    ids: &[String],
    give_up: tokio::time::Instant,
) -> anyhow::Result<()> {
    loop {
        let mut all = true;
        for id in ids {
            all &= look(sandbox, api, id).await?.settled(sc);
        }
        if all || tokio::time::Instant::now() > give_up {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until Google has accepted the service's send of `message_id`.
async fn wait_sent(sandbox: &Sandbox, message_id: &str) -> anyhow::Result<()> {
    let give_up = tokio::time::Instant::now() + Duration::from_secs(5);
    while !sandbox
        .google
        .sends()
        .iter()
        .any(|s| s.message_id == message_id && s.status == 200)
    {
        anyhow::ensure!(
            tokio::time::Instant::now() < give_up,
            "the service did not send {message_id} to Google"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// Registers one message as `sc` says; returns its id and the state the
/// POST answered with.
async fn register(
    sandbox: &Sandbox,
    api: &reqwest::Client,
    sc: &Scenario,
    phone: &str,
    sms_body: &str,
) -> anyhow::Result<(String, String)> {
    let deadline = Utc::now() + chrono::TimeDelta::from_std(sc.deadline_in)?;
    let mut body = json!({
        "phone": phone,
        "deadline": deadline.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "sms": { "body": sms_body },
        "metadata": { "scenario": sc.name },
    });
    match &sc.mode {
        Mode::Track { ttl } => {
            // What the agent does: send the RCS, then register the fallback.
            let message_id = uuid::Uuid::new_v4().to_string();
            sandbox.google.agent_send(phone, &message_id, *ttl);
            body["message_id"] = message_id.into();
        }
        Mode::Send { rcs } => body["rcs"] = rcs.clone(),
    }
    if let Some(policy) = &sc.policy {
        body["policy"] = policy.clone();
    }
    let response = api
        .post(format!("{}/v1/messages", sandbox.url))
        .json(&body)
        .send()
        .await?;
    let status = response.status();
    let answer = response.text().await.unwrap_or_default();
    anyhow::ensure!(
        status == reqwest::StatusCode::CREATED,
        "registering failed: {status} {answer}"
    );
    let m: Value = serde_json::from_str(&answer)?;
    let message_id = text(&m, "message_id");
    if sc.silent_delivery {
        // In track mode the message is at Google already.
        if matches!(sc.mode, Mode::Send { .. }) {
            wait_sent(sandbox, &message_id).await?;
        }
        sandbox.google.deliver(&message_id, false).await;
    }
    Ok((message_id, text(&m, "state")))
}

/// An SMS text no other message in the run has, so that each SMS at
/// Twilio can be told apart even when messages share a phone.
fn unique_body(used: &mut HashSet<String>) -> String {
    loop {
        let body = format!("Your code is {:06}", rand::random::<u32>() % 1_000_000);
        if used.insert(body.clone()) {
            return body;
        }
    }
}

pub async fn run(sandbox: &Sandbox) -> anyhow::Result<bool> {
    let api = sandbox.api();
    let list = scenarios(sandbox.settings.fallback.confirm_window);
    println!(
        "sandbox demo: {} scenarios x {PER_SCENARIO} messages against {}",
        list.len(),
        sandbox.url
    );

    // The sandbox database outlives a run, and with it what the service
    // remembers about phones Google cannot reach: numbers new to each run
    // keep one run's memory out of the next.
    let run_tag = rand::random::<u32>() % 1_000_000;
    let mut tracked: Vec<Tracked> = Vec::new();
    let mut bodies = HashSet::new();
    for (si, sc) in list.iter().enumerate() {
        let phones: Vec<String> = match sc.reuses_phones_of {
            None => (0..PER_SCENARIO)
                .map(|i| format!("+1555{run_tag:06}{:02}{i:03}", si + 10))
                .collect(),
            Some(earlier) => {
                let ei = list
                    .iter()
                    .position(|s| s.name == earlier)
                    .filter(|&ei| ei < si)
                    .ok_or_else(|| anyhow::anyhow!("no earlier scenario {earlier:?}"))?;
                let theirs: Vec<&Tracked> = tracked.iter().filter(|t| t.scenario == ei).collect();
                let ids: Vec<String> = theirs.iter().map(|t| t.message_id.clone()).collect();
                let give_up = tokio::time::Instant::now() + Duration::from_secs(15);
                wait_settled(sandbox, &api, &list[ei], &ids, give_up).await?;
                theirs.iter().map(|t| t.phone.clone()).collect()
            }
        };
        for phone in phones {
            sandbox.google.set_phone(&phone, sc.phone.clone());
            sandbox.twilio.set_recipient(&phone, sc.recipient.clone());
            let sms_body = unique_body(&mut bodies);
            let (message_id, registered_as) =
                register(sandbox, &api, sc, &phone, &sms_body).await?;
            tracked.push(Tracked {
                scenario: si,
                message_id,
                phone,
                sms_body,
                registered_as,
            });
        }
    }

    // The demo watches from outside, like an operator would: poll the API
    // until every message shows its expected outcome, or time runs out.
    let give_up = tokio::time::Instant::now() + Duration::from_secs(45);
    let mut seen = vec![Seen::default(); tracked.len()];
    loop {
        for (t, slot) in tracked.iter().zip(seen.iter_mut()) {
            *slot = look(sandbox, &api, &t.message_id).await?;
        }
        let done = tracked
            .iter()
            .zip(&seen)
            .all(|(t, s)| s.settled(&list[t.scenario]));
        if done || tokio::time::Instant::now() > give_up {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    let sms = sandbox.twilio.messages();
    let sends = sandbox.google.sends();
    let revokes = sandbox.google.revokes();
    let sms_of = |t: &Tracked| {
        sms.iter()
            .filter(|m| m.to == t.phone && m.body == t.sms_body)
            .count()
    };
    let sends_of = |t: &Tracked| {
        sends
            .iter()
            .filter(|s| s.message_id == t.message_id)
            .count()
    };
    let deletes_of = |t: &Tracked| {
        revokes
            .iter()
            .filter(|r| r.message_id == t.message_id)
            .count()
    };

    println!();
    println!(
        "{:<34} {:<5} {:>4}  {:<22} {:>7}  {:>3}  {:>5}  {:>7}",
        "scenario", "mode", "msgs", "expected", "reached", "SMS", "sends", "DELETEs"
    );
    let mut all_ok = true;
    for (si, sc) in list.iter().enumerate() {
        let mine: Vec<&Tracked> = tracked.iter().filter(|t| t.scenario == si).collect();
        let message_ok = |t: &Tracked, s: &Seen| {
            s.settled(sc)
                && sms_of(t) == sc.sms
                && sc.sends.is_none_or(|n| sends_of(t) == n)
                && sc.registered_as.is_none_or(|r| t.registered_as == r)
        };
        let reached = tracked
            .iter()
            .zip(&seen)
            .filter(|(t, s)| t.scenario == si && s.settled(sc))
            .count();
        let ok = tracked
            .iter()
            .zip(&seen)
            .filter(|(t, _)| t.scenario == si)
            .all(|(t, s)| message_ok(t, s));
        all_ok &= ok;
        println!(
            "{:<34} {:<5} {:>4}  {:<22} {:>7}  {:>3}  {:>5}  {:>7}  {}",
            sc.name,
            sc.mode.label(),
            mine.len(),
            format!("{} / {}", sc.state, sc.outcome),
            reached,
            mine.iter().map(|t| sms_of(t)).sum::<usize>(),
            mine.iter().map(|t| sends_of(t)).sum::<usize>(),
            mine.iter().map(|t| deletes_of(t)).sum::<usize>(),
            if ok { "ok" } else { "MISMATCH" }
        );
        for (t, s) in tracked.iter().zip(&seen) {
            if t.scenario == si && !message_ok(t, s) {
                println!(
                    "    {} registered {}, ended {} / {}, {} SMS, {} sends, events {}",
                    t.message_id,
                    t.registered_as,
                    s.state,
                    s.outcome,
                    sms_of(t),
                    sends_of(t),
                    s.kinds.join(",")
                );
            }
        }
    }
    println!();
    println!(
        "{}: {} messages, {} SMS, {} sends, {} DELETEs",
        if all_ok {
            "every message reached its expected outcome"
        } else {
            "SOME MESSAGES DID NOT"
        },
        tracked.len(),
        sms.len(),
        sends.len(),
        revokes.len()
    );
    Ok(all_ok)
}
