//! The messages of a chaos run: what each phone does, registering them the
//! way an agent would, and judging where each one ended against what its
//! phone's behaviour (and the faults that actually hit it) imply.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use rand::rngs::StdRng;
use rand::Rng;
use serde_json::{json, Value};

use crate::domain::{State, RCS_TTL_MARGIN};
use crate::emulator::google::PhoneBehaviour;
use crate::emulator::twilio::RecipientBehaviour;
use crate::sandbox::Rig;

/// The timing a run is built on.
#[derive(Clone, Debug)]
pub struct Timing {
    pub window: Duration,
    /// Deadlines fall this long after registration, plus up to `spread`.
    pub deadline_min: Duration,
    pub deadline_spread: Duration,
    /// Google's TTL expires this long before the deadline.
    pub ttl_gap: Duration,
    /// An online phone gets the message this long after it was sent.
    pub online_delay: Duration,
}

/// What a phone (and its SMS recipient) does with the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Class {
    /// Online: delivered (DELIVERED, then READ) well before the deadline.
    OnlineEarly,
    /// Online: delivered the moment it is sent, so the DELIVERED may reach
    /// the service before the agent has registered the message.
    OnlineInstant,
    /// Offline: never delivered, no TTL.
    Offline,
    /// Offline, with a TTL that expires before the deadline: Google revokes
    /// it and sends TTL_EXPIRATION_REVOKED.
    OfflineTtl,
    /// Offline, with the TTL equal to the deadline (an agent that sets both
    /// from one number): Google's expiry and the service's revoke race.
    TtlAtDeadline,
    /// At TTL expiry the revoke fails: DELIVERED and TTL_EXPIRATION_REVOKE_FAILED.
    TtlRevokeFails,
    /// TTL_EXPIRATION_REVOKED, then DELIVERED a fifth of the confirm window later.
    TtlRace,
    /// Revoke answered 200, DELIVERED a fifth of the confirm window later.
    RaceInside,
    /// Revoke answered 200, DELIVERED 1.5 s after the confirm window.
    RaceAfter,
    /// Offline; Twilio takes the SMS but cannot deliver it (30003).
    Undeliverable,
    /// Offline; Twilio refuses the number (21211).
    InvalidNumber,
    /// Send mode (the service sends the RBM message, TTL at the deadline):
    /// online, delivered (DELIVERED, then READ) well before the deadline.
    SendOnline,
    /// Send mode, offline: Google's expiry at the deadline races the
    /// service's revoke, so its TTL_EXPIRATION_REVOKED often decides.
    SendOffline,
    /// Send mode, a phone without RCS: Google answers the send 404.
    SendNotRcs,
    /// Send mode, AUTHENTICATION traffic (`on_uncertain = send_sms`):
    /// online, with a DELIVERED and no READ, so a dropped DELIVERED leaves
    /// nothing to prove the arrival.
    SendAuthOnline,
}

impl Class {
    pub fn name(self) -> &'static str {
        match self {
            Class::OnlineEarly => "online, delivered early",
            Class::OnlineInstant => "online, delivered at once",
            Class::Offline => "offline",
            Class::OfflineTtl => "offline, TTL before the deadline",
            Class::TtlAtDeadline => "offline, TTL at the deadline",
            Class::TtlRevokeFails => "TTL revoke fails (delivered)",
            Class::TtlRace => "TTL revoked, yet DELIVERED follows",
            Class::RaceInside => "DELIVERED inside the confirm window",
            Class::RaceAfter => "DELIVERED after the confirm window",
            Class::Undeliverable => "SMS undeliverable",
            Class::InvalidNumber => "number refused by Twilio",
            Class::SendOnline => "send mode, online",
            Class::SendOffline => "send mode, offline",
            Class::SendNotRcs => "send mode, no RCS (404)",
            Class::SendAuthOnline => "send mode, AUTHENTICATION, online",
        }
    }

    /// The service sends the RBM message itself (the request has `rcs`).
    pub fn send_mode(self) -> bool {
        self.traffic_type().is_some()
    }

    /// `rcs.messageTrafficType` of a send-mode message.
    fn traffic_type(self) -> Option<&'static str> {
        match self {
            Class::SendOnline | Class::SendOffline | Class::SendNotRcs => Some("TRANSACTION"),
            Class::SendAuthOnline => Some("AUTHENTICATION"),
            _ => None,
        }
    }

    fn phone(self, t: &Timing) -> PhoneBehaviour {
        match self {
            Class::OnlineEarly | Class::SendOnline => PhoneBehaviour::Online {
                delay: t.online_delay,
                read_after: Some(t.online_delay / 2),
            },
            Class::OnlineInstant => PhoneBehaviour::Online {
                delay: Duration::ZERO,
                read_after: None,
            },
            Class::SendAuthOnline => PhoneBehaviour::Online {
                delay: t.online_delay,
                read_after: None,
            },
            Class::Offline
            | Class::OfflineTtl
            | Class::TtlAtDeadline
            | Class::Undeliverable
            | Class::InvalidNumber
            | Class::SendOffline => PhoneBehaviour::Offline,
            Class::SendNotRcs => PhoneBehaviour::NotRcs,
            Class::TtlRevokeFails => PhoneBehaviour::TtlRevokeFails,
            Class::TtlRace => PhoneBehaviour::TtlRace {
                delay: t.window / 5,
            },
            Class::RaceInside => PhoneBehaviour::RevokeRace {
                delay: t.window / 5,
            },
            Class::RaceAfter => PhoneBehaviour::RevokeRace {
                delay: t.window + Duration::from_millis(1500),
            },
        }
    }

    fn recipient(self) -> RecipientBehaviour {
        match self {
            Class::Undeliverable => RecipientBehaviour::Undeliverable { error_code: 30003 },
            Class::InvalidNumber => RecipientBehaviour::InvalidNumber,
            _ => RecipientBehaviour::Deliver,
        }
    }

    /// Google's TTL for a message due `deadline_in` after it was sent.
    fn ttl(self, deadline_in: Duration, t: &Timing) -> Option<Duration> {
        match self {
            Class::OfflineTtl | Class::TtlRevokeFails | Class::TtlRace => Some(
                deadline_in
                    .saturating_sub(t.ttl_gap)
                    .max(t.deadline_min / 4),
            ),
            Class::TtlAtDeadline => Some(deadline_in),
            _ => None,
        }
    }
}

/// Shares of each class in a run (weights, not necessarily summing to 100).
pub type Mix = &'static [(Class, u32)];

/// Every behaviour at once; a quarter of the messages in send mode.
pub const FULL_MIX: Mix = &[
    (Class::OnlineEarly, 20),
    (Class::OnlineInstant, 5),
    (Class::Offline, 28),
    (Class::OfflineTtl, 7),
    (Class::TtlAtDeadline, 5),
    (Class::TtlRevokeFails, 7),
    (Class::TtlRace, 5),
    (Class::RaceInside, 10),
    (Class::RaceAfter, 5),
    (Class::Undeliverable, 4),
    (Class::InvalidNumber, 4),
    (Class::SendOnline, 10),
    (Class::SendOffline, 10),
    (Class::SendNotRcs, 6),
    (Class::SendAuthOnline, 7),
];

/// Where the SMS is at stake; a quarter in send mode.
pub const SMS_MIX: Mix = &[
    (Class::Offline, 75),
    (Class::Undeliverable, 10),
    (Class::RaceAfter, 10),
    (Class::InvalidNumber, 5),
    (Class::SendOffline, 20),
    (Class::SendNotRcs, 13),
];

/// Messages that all need their revoke and their SMS.
pub const OFFLINE_MIX: Mix = &[(Class::Offline, 1)];

/// As [`OFFLINE_MIX`], a quarter in send mode: the send itself meets the
/// outage, or the SMS does.
pub const OUTAGE_MIX: Mix = &[(Class::Offline, 3), (Class::SendOffline, 1)];

/// One message, decided before it is sent.
#[derive(Clone, Debug)]
pub struct Planned {
    pub class: Class,
    pub message_id: String,
    pub phone: String,
    pub deadline_in: Duration,
}

/// `n` messages of `mix` less the `excluded` classes, numbered from
/// `first` (which makes the phone numbers distinct across batches of one
/// run).
pub fn plan(
    n: usize,
    first: usize,
    mix: Mix,
    excluded: &[Class],
    t: &Timing,
    rng: &mut StdRng,
) -> Vec<Planned> {
    let mix: Vec<(Class, u32)> = mix
        .iter()
        .filter(|(c, _)| !excluded.contains(c))
        .copied()
        .collect();
    let total: u32 = mix.iter().map(|(_, w)| w).sum();
    (first..first + n)
        .map(|i| {
            let mut pick = rng.gen_range(0..total.max(1));
            let class = mix
                .iter()
                .find(|(_, w)| {
                    if pick < *w {
                        true
                    } else {
                        pick -= w;
                        false
                    }
                })
                .map(|(c, _)| *c)
                .unwrap_or(Class::Offline);
            let spread = t.deadline_spread.as_millis() as u64;
            let deadline_in =
                t.deadline_min + Duration::from_millis(rng.gen_range(0..=spread.max(1)));
            Planned {
                class,
                message_id: uuid::Builder::from_random_bytes(rng.gen())
                    .into_uuid()
                    .to_string(),
                phone: format!("+1555{i:07}"),
                deadline_in,
            }
        })
        .collect()
}

/// A registered message.
#[derive(Clone, Debug)]
pub struct Tracked {
    pub class: Class,
    pub message_id: String,
    pub phone: String,
    pub deadline: DateTime<Utc>,
    /// When the agent sent the RCS, and when its registration was answered.
    pub sent_at: DateTime<Utc>,
    pub registered_at: DateTime<Utc>,
}

/// The service's base URLs; requests rotate over them, so that one replica
/// down does not stop the run.
pub struct Endpoints {
    urls: Vec<String>,
    next: AtomicUsize,
}

impl Endpoints {
    pub fn new(urls: Vec<String>) -> Arc<Endpoints> {
        Arc::new(Endpoints {
            urls,
            next: AtomicUsize::new(0),
        })
    }

    fn pick(&self) -> &str {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        &self.urls[i % self.urls.len()]
    }
}

/// How one registration went.
pub enum Registration {
    Registered(Tracked),
    /// Unanswered until its deadline had passed, then refused as past
    /// (422), and not stored: the agent would have to fall back itself.
    TooLate,
    /// As above, but an earlier try had been stored after all: the repeat
    /// was refused instead of being answered 200.
    RepeatRefused(Tracked),
}

/// Does what the agent does: sends the RCS (to the Google emulator, with the
/// phone set to behave as planned), then registers the fallback. A failed
/// registration (service down, database down) is repeated with the very
/// same request until it is answered 201 or 200.
pub async fn register(
    rig: &Rig,
    api: &reqwest::Client,
    endpoints: &Endpoints,
    t: &Timing,
    p: &Planned,
) -> anyhow::Result<Registration> {
    rig.google.set_phone(&p.phone, p.class.phone(t));
    rig.twilio.set_recipient(&p.phone, p.class.recipient());
    let ttl = p.class.ttl(p.deadline_in, t);
    let sent_at = Utc::now();
    // Whole milliseconds, as sent: Google's expireTime must equal it.
    let deadline = (sent_at + chrono::TimeDelta::from_std(p.deadline_in)?).trunc_subsecs(3);
    let code = &p.message_id[..8];
    let mut body = json!({
        "phone": p.phone,
        "message_id": p.message_id,
        "deadline": deadline.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "sms": { "body": format!("Your code is {code}") },
    });
    match p.class.traffic_type() {
        // Send mode: the service sends it, so the agent does not.
        Some(traffic) => {
            body["rcs"] = json!({
                "contentMessage": { "text": format!("Your code is {code}") },
                "messageTrafficType": traffic,
            });
        }
        None => {
            rig.google.agent_send(&p.phone, &p.message_id, ttl);
        }
    }
    let mut tracked = Tracked {
        class: p.class,
        message_id: p.message_id.clone(),
        phone: p.phone.clone(),
        deadline,
        sent_at,
        registered_at: sent_at,
    };
    let give_up = tokio::time::Instant::now() + Duration::from_secs(120);
    let mut delay = Duration::from_millis(50);
    let mut tries = 0;
    loop {
        tries += 1;
        let url = format!("{}/v1/messages", endpoints.pick());
        let answer = api.post(&url).json(&body).send().await;
        match answer {
            Ok(r) if r.status().as_u16() == 201 || r.status().as_u16() == 200 => {
                tracked.registered_at = Utc::now();
                break;
            }
            Ok(r) if r.status().as_u16() == 422 && tries > 1 && Utc::now() >= deadline => {
                return Ok(match read_one(api, endpoints, &p.message_id).await {
                    Some(_) => Registration::RepeatRefused(tracked),
                    None => Registration::TooLate,
                });
            }
            Ok(r) if r.status().is_client_error() && r.status().as_u16() != 429 => {
                let status = r.status();
                let text = r.text().await.unwrap_or_default();
                anyhow::bail!("registration refused: {status} {text}");
            }
            _ if tokio::time::Instant::now() > give_up => {
                anyhow::bail!("registration of {} not answered for 120 s", p.message_id)
            }
            _ => {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_millis(500));
            }
        }
    }
    Ok(Registration::Registered(tracked))
}

/// The registrations of a batch.
#[derive(Default)]
pub struct Registrations {
    /// Every message the service holds.
    pub tracked: Vec<Tracked>,
    /// Never stored: unanswered until past their deadline.
    pub too_late: usize,
    /// Stored, yet a repeat of the identical request was refused.
    pub repeat_refused: Vec<String>,
}

/// Registers `planned` with at most `parallel` registrations at once, and
/// no faster than one per `pace` (zero: as fast as possible).
pub async fn register_all(
    rig: Arc<Rig>,
    api: reqwest::Client,
    endpoints: Arc<Endpoints>,
    t: Timing,
    planned: Vec<Planned>,
    parallel: usize,
    pace: Duration,
) -> anyhow::Result<Registrations> {
    let permits = Arc::new(tokio::sync::Semaphore::new(parallel.max(1)));
    let mut tasks = Vec::with_capacity(planned.len());
    let started = tokio::time::Instant::now();
    for (i, p) in planned.into_iter().enumerate() {
        if !pace.is_zero() {
            tokio::time::sleep_until(started + pace * i as u32).await;
        }
        let permit = permits.clone().acquire_owned().await?;
        let (rig, api, endpoints, t) = (rig.clone(), api.clone(), endpoints.clone(), t.clone());
        tasks.push(tokio::spawn(async move {
            let r = register(&rig, &api, &endpoints, &t, &p).await;
            drop(permit);
            r
        }));
    }
    let mut out = Registrations::default();
    for task in tasks {
        match task.await?? {
            Registration::Registered(t) => out.tracked.push(t),
            Registration::TooLate => out.too_late += 1,
            Registration::RepeatRefused(t) => {
                out.repeat_refused.push(t.message_id.clone());
                out.tracked.push(t);
            }
        }
    }
    Ok(out)
}

impl Registrations {
    /// The messages, and the rest for [`Registrations::annotate`].
    pub fn split(mut self) -> (Vec<Tracked>, Registrations) {
        (std::mem::take(&mut self.tracked), self)
    }

    /// Notes and violations for a report.
    pub fn annotate(&self, r: &mut super::Report) {
        if self.too_late > 0 {
            r.notes.push(format!(
                "{} registrations went unanswered until their deadline had passed (not stored, \
                 refused as past when repeated; the agent falls back itself)",
                self.too_late
            ));
        }
        for id in &self.repeat_refused {
            r.violations.push(format!(
                "{id}: a repeat of a stored registration was refused (422) instead of answered 200"
            ));
        }
    }
}

/// What the service says about one message.
#[derive(Clone, Debug)]
pub struct Observed {
    pub state: String,
    pub outcome: String,
    /// (time, kind), in order.
    pub events: Vec<(DateTime<Utc>, String)>,
    pub resource: Value,
}

/// Reads every message (with its history) through the API.
pub async fn observe(
    api: &reqwest::Client,
    endpoints: &Endpoints,
    tracked: &[Tracked],
) -> Vec<Option<Observed>> {
    let mut out = Vec::with_capacity(tracked.len());
    // A few at a time: the service is small and so is the machine.
    for chunk in tracked.chunks(8) {
        let reads = chunk
            .iter()
            .map(|t| read_one(api, endpoints, &t.message_id));
        out.extend(futures::future::join_all(reads).await);
    }
    out
}

async fn read_one(api: &reqwest::Client, endpoints: &Endpoints, id: &str) -> Option<Observed> {
    for _ in 0..20 {
        let url = format!("{}/v1/messages/{id}", endpoints.pick());
        let Ok(r) = api.get(&url).send().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        if r.status() != reqwest::StatusCode::OK {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        let Ok(v) = r.json::<Value>().await else {
            continue;
        };
        let text = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("?").to_owned();
        let events = v
            .get("events")
            .and_then(Value::as_array)
            .map(|evs| {
                evs.iter()
                    .filter_map(|e| {
                        let at = e.get("at")?.as_str()?.parse().ok()?;
                        Some((at, e.get("kind")?.as_str()?.to_owned()))
                    })
                    .collect()
            })
            .unwrap_or_default();
        return Some(Observed {
            state: text("state"),
            outcome: text("outcome"),
            events,
            resource: v,
        });
    }
    None
}

/// What the emulators saw: the ground truth the service is judged by.
pub struct Ground {
    sms_to: HashMap<String, usize>,
    /// Messages for which Google got a 200 for a DELIVERED, READ or
    /// TTL_EXPIRATION_REVOKE_FAILED.
    delivered_told: HashSet<String>,
    /// Messages for which Google got a 200 for TTL_EXPIRATION_REVOKED.
    ttl_told: HashSet<String>,
    /// Phones whose `undelivered` status callback was answered 2xx.
    undelivered_told: HashSet<String>,
    /// DELETEs per message.
    deletes: HashMap<String, Vec<Delete>>,
    /// Webhook tries per message.
    webhooks: HashMap<String, Vec<WebhookTry>>,
    /// The service's sends of RBM messages, per phone (each message has a
    /// phone of its own, so a phone's sends should all carry its id).
    sends: HashMap<String, Vec<Send>>,
}

/// The sends of a run's send-mode messages, as Google saw them.
#[derive(Debug, Default)]
pub struct SendCounts {
    pub messages: usize,
    /// Messages Google holds (a send carried out with a 200).
    pub at_google: usize,
    pub sends: usize,
    /// Sends answered 404 (phones without RCS).
    pub not_found: usize,
    /// Sends whose answer a fault kept from the service.
    pub lost: usize,
}

/// One send of an RBM message as Google saw it.
struct Send {
    message_id: String,
    received: DateTime<Utc>,
    status: u16,
    lost: bool,
    expire_time: Option<String>,
    traffic_type: Option<String>,
}

/// One try of a webhook: when, its event type, the status answered.
type WebhookTry = (DateTime<Utc>, String, Option<u16>);

/// One DELETE as Google saw it.
struct Delete {
    received: DateTime<Utc>,
    answered: DateTime<Utc>,
    status: u16,
    /// The answer never reached the caller (a hang or reset).
    lost: bool,
}

impl Ground {
    pub fn collect(rig: &Rig) -> Ground {
        let mut sms_to: HashMap<String, usize> = HashMap::new();
        let sms = rig.twilio.messages();
        let mut to_of_sid = HashMap::new();
        for m in &sms {
            *sms_to.entry(m.to.clone()).or_default() += 1;
            to_of_sid.insert(m.sid.clone(), m.to.clone());
        }
        let mut delivered_told = HashSet::new();
        let mut ttl_told = HashSet::new();
        for w in rig.google.webhooks_sent() {
            if w.status != Some(200) {
                continue;
            }
            match w.event_type.as_str() {
                "DELIVERED" | "READ" | "TTL_EXPIRATION_REVOKE_FAILED" => {
                    delivered_told.insert(w.message_id);
                }
                "TTL_EXPIRATION_REVOKED" => {
                    ttl_told.insert(w.message_id);
                }
                _ => {}
            }
        }
        let undelivered_told = rig
            .twilio
            .callbacks()
            .into_iter()
            .filter(|c| {
                c.status == "undelivered" && c.http_status.is_some_and(|s| (200..300).contains(&s))
            })
            .filter_map(|c| to_of_sid.get(&c.sid).cloned())
            .collect();
        let mut deletes: HashMap<String, Vec<Delete>> = HashMap::new();
        for r in rig.google.revokes() {
            deletes.entry(r.message_id).or_default().push(Delete {
                received: r.received_at,
                answered: r.answered_at,
                status: r.status,
                lost: r.answer_lost,
            });
        }
        let mut webhooks: HashMap<String, Vec<_>> = HashMap::new();
        for a in rig.google.webhook_attempts() {
            webhooks
                .entry(a.message_id)
                .or_default()
                .push((a.at, a.event_type, a.status));
        }
        let mut sends: HashMap<String, Vec<Send>> = HashMap::new();
        for r in rig.google.sends() {
            sends.entry(r.phone).or_default().push(Send {
                message_id: r.message_id,
                received: r.received_at,
                status: r.status,
                lost: r.answer_lost,
                expire_time: r.expire_time,
                traffic_type: r.traffic_type,
            });
        }
        Ground {
            sends,
            webhooks,
            sms_to,
            delivered_told,
            ttl_told,
            undelivered_told,
            deletes,
        }
    }

    /// Whether Google holds the message: a send of it carried out with a
    /// 200, whether or not the answer reached the service.
    fn at_google(&self, t: &Tracked) -> bool {
        self.sends.get(&t.phone).is_some_and(|s| {
            s.iter()
                .any(|s| s.message_id == t.message_id && s.status == 200)
        })
    }

    pub fn sms_count(&self, phone: &str) -> usize {
        self.sms_to.get(phone).copied().unwrap_or(0)
    }

    /// What Google saw of the sends of the send-mode messages in `tracked`.
    pub fn send_counts(&self, tracked: &[Tracked]) -> SendCounts {
        let mut n = SendCounts::default();
        for t in tracked.iter().filter(|t| t.class.send_mode()) {
            n.messages += 1;
            n.at_google += usize::from(self.at_google(t));
            for s in self.sends.get(&t.phone).into_iter().flatten() {
                n.sends += 1;
                n.not_found += usize::from(s.status == 404);
                n.lost += usize::from(s.lost);
            }
        }
        n
    }

    fn revoked_ok(&self, message_id: &str) -> bool {
        self.deletes
            .get(message_id)
            .is_some_and(|ds| ds.iter().any(|d| d.status == 200))
    }
}

/// What a message may end as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// Exactly this outcome.
    Exactly(&'static str),
    /// Not determined by the behaviour and the faults (see RELIABILITY.md):
    /// any of these, still settled and with at most one SMS.
    Either(&'static [&'static str]),
}

impl Expect {
    pub fn allows(self, outcome: &str) -> bool {
        match self {
            Expect::Exactly(o) => o == outcome,
            Expect::Either(set) => set.contains(&outcome),
        }
    }

    pub fn label(self) -> String {
        match self {
            Expect::Exactly(o) => o.to_owned(),
            Expect::Either(set) => set.join("|"),
        }
    }
}

/// What kind of trouble a run puts the service through, beyond faults that
/// the emulators record per message.
#[derive(Clone, Copy, Debug, Default)]
pub struct Trouble {
    /// The service (or its database) goes away for a while: webhooks and
    /// timers may be late.
    pub disruptions: bool,
    /// The SMS may go out later than the confirm window after Google's
    /// revoke (SMS sends retried, a revoke answer lost and retried).
    pub late_sms: bool,
}

/// The outcome a message must reach, from its class and from what Google
/// managed to tell the service (the faults may have dropped webhooks).
pub fn expect(t: &Tracked, g: &Ground, trouble: Trouble) -> Expect {
    let told_delivered = g.delivered_told.contains(&t.message_id);
    let told_ttl = g.ttl_told.contains(&t.message_id);
    // Without any DELIVERED, a revoke answers 404 for a delivered or
    // expired message: read as delivered unless an earlier revoke may have
    // removed it, then the SMS goes out.
    const UNTOLD: Expect = Expect::Either(&["rcs", "sms"]);
    if t.class.send_mode() && !g.at_google(t) {
        // No send ever took effect (refused, failed, or the deadline came
        // first): the phone cannot have it, and the SMS goes.
        return Expect::Exactly("sms");
    }
    match t.class {
        Class::Offline => Expect::Exactly("sms"),
        Class::InvalidNumber => Expect::Exactly("none"),
        Class::Undeliverable if g.undelivered_told.contains(&t.phone) => Expect::Exactly("none"),
        // Without that callback the service may still learn of the failure
        // (a reconciliation that finds the SMS already undelivered, a
        // callback applied by a process killed before it could answer), or
        // not (the SMS stays `sms_sent`).
        Class::Undeliverable => Expect::Either(&["sms", "none"]),
        Class::OnlineEarly | Class::OnlineInstant | Class::TtlRevokeFails if told_delivered => {
            Expect::Exactly("rcs")
        }
        Class::OnlineEarly | Class::OnlineInstant | Class::TtlRevokeFails => UNTOLD,
        // Google revoked it and said so: the phone never got it.
        Class::OfflineTtl | Class::TtlAtDeadline if told_ttl => Expect::Exactly("sms"),
        Class::OfflineTtl | Class::TtlAtDeadline => UNTOLD,
        Class::TtlRace | Class::RaceInside if told_delivered && trouble.disruptions => {
            Expect::Either(&["rcs", "both"])
        }
        Class::TtlRace | Class::RaceInside if told_delivered => Expect::Exactly("rcs"),
        Class::TtlRace if told_ttl => Expect::Exactly("sms"),
        Class::TtlRace => UNTOLD,
        Class::RaceInside => Expect::Exactly("sms"),
        Class::RaceAfter if told_delivered && (trouble.disruptions || trouble.late_sms) => {
            Expect::Either(&["both", "rcs"])
        }
        Class::RaceAfter if told_delivered => Expect::Exactly("both"),
        Class::RaceAfter => Expect::Exactly("sms"),
        // Google answers 404 and stores nothing.
        Class::SendNotRcs => Expect::Exactly("sms"),
        Class::SendOnline if told_delivered => Expect::Exactly("rcs"),
        // As a tracked message: a 404 without a DELIVERED reads as
        // delivered under `skip`, unless an earlier DELETE was in doubt.
        Class::SendOnline => UNTOLD,
        Class::SendAuthOnline if told_delivered => Expect::Exactly("rcs"),
        // Nothing proves the arrival, and `send_sms` sends it.
        Class::SendAuthOnline => Expect::Exactly("sms"),
        // Revoked by the service, or Google said its TTL removed it.
        Class::SendOffline if told_ttl || g.revoked_ok(&t.message_id) => Expect::Exactly("sms"),
        // Google's expiry won the race and its TTL_EXPIRATION_REVOKED was
        // dropped: the 404 reads as delivered under `skip`.
        Class::SendOffline => UNTOLD,
    }
}

/// The verdict on a set of messages.
#[derive(Debug, Default)]
pub struct Judgement {
    /// Messages by expected outcome ("either" for undetermined ones).
    pub expected: BTreeMap<String, usize>,
    /// Messages by actual outcome ("unsettled" and "unknown" included).
    pub actual: BTreeMap<String, usize>,
    /// Messages not at an allowed outcome (or not settled) by the end.
    pub lost: Vec<usize>,
    /// The lost ones by class.
    pub lost_by_class: BTreeMap<Class, usize>,
    /// Messages whose phone got more than one SMS.
    pub duplicate_sms: Vec<usize>,
    /// Broken invariants, each with the message it concerns.
    pub violations: Vec<(usize, String)>,
    /// Undetermined messages that ended `rcs` although no DELIVERED reached
    /// the service and the phone never got the RCS (its TTL expired).
    pub untold_expiries: usize,
    /// Send-mode messages: actual outcomes by class.
    pub send_outcomes: BTreeMap<Class, BTreeMap<String, usize>>,
}

const DELIVERED_KINDS: [&str; 3] = ["rcs_delivered", "rcs_read", "ttl_revoke_failed"];

pub fn judge(
    tracked: &[Tracked],
    observed: &[Option<Observed>],
    g: &Ground,
    trouble: Trouble,
) -> Judgement {
    let mut j = Judgement::default();
    for (i, (t, o)) in tracked.iter().zip(observed).enumerate() {
        let want = expect(t, g, trouble);
        let key = match want {
            Expect::Exactly(o) => o.to_owned(),
            Expect::Either(_) => "either".to_owned(),
        };
        *j.expected.entry(key).or_default() += 1;
        let sms = g.sms_count(&t.phone);
        if sms > 1 {
            j.duplicate_sms.push(i);
        }
        let Some(o) = o else {
            *j.actual.entry("unknown".into()).or_default() += 1;
            j.lost.push(i);
            *j.lost_by_class.entry(t.class).or_default() += 1;
            continue;
        };
        let settled = !o.state.parse::<State>().is_ok_and(State::unsettled);
        let actual = if settled {
            o.outcome.clone()
        } else {
            "unsettled".into()
        };
        if t.class.send_mode() {
            *j.send_outcomes
                .entry(t.class)
                .or_default()
                .entry(actual.clone())
                .or_default() += 1;
        }
        *j.actual.entry(actual).or_default() += 1;
        if !settled || !want.allows(&o.outcome) {
            j.lost.push(i);
            *j.lost_by_class.entry(t.class).or_default() += 1;
        }
        if matches!(want, Expect::Either(_))
            && o.outcome == "rcs"
            && matches!(
                t.class,
                Class::OfflineTtl | Class::TtlAtDeadline | Class::SendOffline
            )
        {
            j.untold_expiries += 1;
        }
        let sms_state = matches!(
            o.state.as_str(),
            "sms_sent" | "sms_delivered" | "sms_failed"
        );
        if sms_state && sms == 0 {
            j.violations
                .push((i, format!("state {} but Twilio has no SMS", o.state)));
        }
        if matches!(o.state.as_str(), "delivered" | "failed" | "cancelled") && sms > 0 {
            j.violations.push((
                i,
                format!("state {} but Twilio has {sms} SMS for it", o.state),
            ));
        }
        let first_sms = o
            .events
            .iter()
            .find(|(_, k)| k == "sms_attempt")
            .map(|(at, _)| *at);
        let first_rcs = o
            .events
            .iter()
            .find(|(_, k)| DELIVERED_KINDS.contains(&k.as_str()))
            .map(|(at, _)| *at);
        if let (Some(rcs), Some(sms_at)) = (first_rcs, first_sms) {
            if rcs < sms_at && sms > 0 {
                j.violations
                    .push((i, "SMS sent after a DELIVERED that came first".into()));
            }
        }
        for v in send_violations(t, o, g, trouble) {
            j.violations.push((i, v));
        }
        if let Some(ds) = g.deletes.get(&t.message_id) {
            let ok = ds.iter().filter(|d| d.status == 200).count();
            if ok > 1 {
                j.violations
                    .push((i, format!("{ok} DELETEs answered 200 (revoked twice)")));
            }
            let answered: Vec<&Delete> = ds.iter().filter(|d| !d.lost).collect();
            for (a, x) in answered.iter().enumerate() {
                for y in &answered[a + 1..] {
                    if x.received < y.answered && y.received < x.answered {
                        j.violations
                            .push((i, "two DELETEs in flight at once".into()));
                    }
                }
            }
        }
    }
    j
}

/// What send mode promises about one message, against what Google saw:
/// only send-mode messages are sent, every send of a message carries its
/// id, its traffic type and its deadline plus [`RCS_TTL_MARGIN`] as
/// `expireTime`, and a phone that
/// Google answered 404 gets its SMS at once, without any DELETE.
fn send_violations(t: &Tracked, o: &Observed, g: &Ground, trouble: Trouble) -> Vec<String> {
    let mut out = Vec::new();
    let sends = g.sends.get(&t.phone).map(Vec::as_slice).unwrap_or_default();
    let Some(traffic) = t.class.traffic_type() else {
        if !sends.is_empty() {
            out.push(format!(
                "{} sends to Google for a message the agent sent itself",
                sends.len()
            ));
        }
        return out;
    };
    let mut ids: Vec<&str> = sends.iter().map(|s| s.message_id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    if ids.iter().any(|id| *id != t.message_id) {
        out.push(format!("sent to Google under the ids {}", ids.join(", ")));
    }
    for s in sends {
        let expires = s
            .expire_time
            .as_deref()
            .and_then(|e| DateTime::parse_from_rfc3339(e).ok());
        let expected = t.deadline + chrono::TimeDelta::from_std(RCS_TTL_MARGIN).unwrap_or_default();
        if expires.is_none_or(|e| e != expected) {
            out.push(format!(
                "a send's expireTime {:?} is not the deadline plus the TTL margin",
                s.expire_time
            ));
        }
        if s.traffic_type.as_deref() != Some(traffic) {
            out.push(format!(
                "a send's traffic type {:?} is not {traffic}",
                s.traffic_type
            ));
        }
    }
    if t.class == Class::SendNotRcs {
        let kinds: Vec<&str> = o.events.iter().map(|(_, k)| k.as_str()).collect();
        // Only a deadline that came before any answer leaves the service
        // unsure whether Google holds it, and then it must revoke.
        let expired = kinds.contains(&"rcs_send_expired");
        let deletes = g.deletes.get(&t.message_id).map_or(0, Vec::len);
        if deletes > 0 && !expired {
            out.push(format!("{deletes} DELETEs for a phone Google answered 404"));
        }
        if !expired && !kinds.contains(&"rcs_unreachable") {
            out.push("Google's 404 never reached the history".into());
        }
        let first_sms = o
            .events
            .iter()
            .find(|(_, k)| k == "sms_attempt")
            .map(|(at, _)| *at);
        if !trouble.disruptions && !expired && first_sms.is_none_or(|at| at > t.deadline) {
            out.push("the SMS for a phone Google answered 404 waited for the deadline".into());
        }
    }
    out
}

/// One message's story, for a report: class, expectation, outcome, SMS
/// count and its history.
pub fn describe(t: &Tracked, o: Option<&Observed>, g: &Ground, trouble: Trouble) -> String {
    let want = expect(t, g, trouble);
    let mut s = format!(
        "{} [{}, phone {}, deadline {}] expected {}, ",
        t.message_id,
        t.class.name(),
        t.phone,
        t.deadline
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        want.label()
    );
    match o {
        None => s.push_str("never read from the API"),
        Some(o) => {
            s.push_str(&format!(
                "got {} / {}; SMS at Twilio: {}; DELETEs: {}; history:",
                o.state,
                o.outcome,
                g.sms_count(&t.phone),
                g.deletes
                    .get(&t.message_id)
                    .map(|d| {
                        d.iter()
                            .map(|d| {
                                if d.lost {
                                    format!("{}(answer lost)", d.status)
                                } else {
                                    d.status.to_string()
                                }
                            })
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                    .unwrap_or_default()
            ));
            let micros = |t: &DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
            s.push_str(&format!(
                "\n      {} (agent) {}; registration answered at {}",
                micros(&t.sent_at),
                if t.class.send_mode() {
                    "registration sent"
                } else {
                    "RCS sent"
                },
                micros(&t.registered_at)
            ));
            for send in g.sends.get(&t.phone).into_iter().flatten() {
                s.push_str(&format!(
                    "\n      {} (Google) send of {} {}{}",
                    micros(&send.received),
                    send.message_id,
                    match send.status {
                        0 => "not carried out".to_owned(),
                        st => format!("answered {st}"),
                    },
                    if send.lost { " (answer lost)" } else { "" }
                ));
            }
            for (at, kind, status) in g.webhooks.get(&t.message_id).into_iter().flatten() {
                let status = status.map_or("no answer".to_owned(), |s| s.to_string());
                let at = at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
                s.push_str(&format!(
                    "\n      {at} (Google) {kind} webhook answered {status}"
                ));
            }
            for e in o
                .resource
                .get("events")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let at = e.get("at").and_then(Value::as_str).unwrap_or("?");
                let kind = e.get("kind").and_then(Value::as_str).unwrap_or("?");
                let state = e.get("state").and_then(Value::as_str).unwrap_or("?");
                let detail = e.get("detail").map(Value::to_string).unwrap_or_default();
                s.push_str(&format!("\n      {at} {kind} -> {state} {detail}"));
            }
        }
    }
    s
}

#[cfg(test)]
#[path = "population_tests.rs"]
mod tests;
