//! Expectations and send-mode rules against hand-made ground truth.

use super::*;

const ID: &str = "6f1d2c3b-4a5e-4f60-8a7b-9c0d1e2f3a4b";
const PHONE: &str = "+15550000001";

fn deadline() -> DateTime<Utc> {
    "2026-11-22T15:00:00.250Z".parse().unwrap()
}

fn tracked(class: Class) -> Tracked {
    let at = deadline() - chrono::TimeDelta::seconds(3);
    Tracked {
        class,
        message_id: ID.into(),
        phone: PHONE.into(),
        deadline: deadline(),
        sent_at: at,
        registered_at: at,
    }
}

fn ground() -> Ground {
    Ground {
        sms_to: HashMap::new(),
        delivered_told: HashSet::new(),
        ttl_told: HashSet::new(),
        undelivered_told: HashSet::new(),
        deletes: HashMap::new(),
        webhooks: HashMap::new(),
        sends: HashMap::new(),
    }
}

fn send(id: &str, status: u16, traffic: &str) -> Send {
    Send {
        message_id: id.into(),
        received: deadline() - chrono::TimeDelta::seconds(2),
        status,
        lost: false,
        // The deadline plus the 30 s TTL margin.
        expire_time: Some("2026-11-22T15:00:30.250Z".into()),
        traffic_type: Some(traffic.into()),
    }
}

/// Google saw `sends` for the message's phone.
fn with_sends(mut g: Ground, sends: Vec<Send>) -> Ground {
    g.sends.insert(PHONE.into(), sends);
    g
}

fn delete(status: u16) -> Delete {
    Delete {
        received: deadline(),
        answered: deadline(),
        status,
        lost: false,
    }
}

fn observed(kinds: &[&str]) -> Observed {
    Observed {
        state: "sms_delivered".into(),
        outcome: "sms".into(),
        events: kinds
            .iter()
            .enumerate()
            .map(|(i, k)| {
                let at = deadline() - chrono::TimeDelta::milliseconds(2000 - 10 * i as i64);
                (at, (*k).to_owned())
            })
            .collect(),
        resource: Value::Null,
    }
}

const CALM: Trouble = Trouble {
    disruptions: false,
    late_sms: false,
};

#[test]
fn a_send_mode_message_google_never_held_must_get_the_sms() {
    for class in [Class::SendOnline, Class::SendAuthOnline, Class::SendOffline] {
        let g = with_sends(ground(), vec![send(ID, 0, "TRANSACTION")]);
        assert_eq!(expect(&tracked(class), &g, CALM), Expect::Exactly("sms"));
    }
}

#[test]
fn an_authentication_message_without_a_delivered_gets_the_sms() {
    let t = tracked(Class::SendAuthOnline);
    let mut g = with_sends(ground(), vec![send(ID, 200, "AUTHENTICATION")]);
    assert_eq!(expect(&t, &g, CALM), Expect::Exactly("sms"));
    g.delivered_told.insert(ID.into());
    assert_eq!(expect(&t, &g, CALM), Expect::Exactly("rcs"));
}

#[test]
fn an_offline_send_is_sms_once_revoked_or_reported_expired() {
    let t = tracked(Class::SendOffline);
    let g = with_sends(ground(), vec![send(ID, 200, "TRANSACTION")]);
    let mut revoked = with_sends(ground(), vec![send(ID, 200, "TRANSACTION")]);
    revoked.deletes.insert(ID.into(), vec![delete(200)]);
    let mut expired = with_sends(ground(), vec![send(ID, 200, "TRANSACTION")]);
    expired.deletes.insert(ID.into(), vec![delete(404)]);
    expired.ttl_told.insert(ID.into());
    assert_eq!(expect(&t, &revoked, CALM), Expect::Exactly("sms"));
    assert_eq!(expect(&t, &expired, CALM), Expect::Exactly("sms"));
    assert_eq!(expect(&t, &g, CALM), Expect::Either(&["rcs", "sms"]));
}

#[test]
fn sends_under_another_id_or_expiry_are_violations() {
    let t = tracked(Class::SendOnline);
    let o = observed(&["registered", "rcs_send_attempt", "rcs_sent"]);
    let g = with_sends(
        ground(),
        vec![send(ID, 200, "TRANSACTION"), send(ID, 200, "TRANSACTION")],
    );
    assert!(send_violations(&t, &o, &g, CALM).is_empty());

    let other = "0f1d2c3b-4a5e-4f60-8a7b-9c0d1e2f3a4b";
    let g = with_sends(
        ground(),
        vec![
            send(ID, 200, "TRANSACTION"),
            send(other, 200, "TRANSACTION"),
        ],
    );
    let v = send_violations(&t, &o, &g, CALM);
    assert!(v.iter().any(|v| v.contains(other)), "{v:?}");

    let mut late = send(ID, 200, "TRANSACTION");
    late.expire_time = Some("2026-11-22T15:00:01.250Z".into());
    let v = send_violations(&t, &o, &with_sends(ground(), vec![late]), CALM);
    assert!(v.iter().any(|v| v.contains("expireTime")), "{v:?}");
}

#[test]
fn a_tracked_message_is_never_sent_by_the_service() {
    let t = tracked(Class::Offline);
    let o = observed(&["registered"]);
    let g = with_sends(ground(), vec![send(ID, 200, "TRANSACTION")]);
    assert_eq!(send_violations(&t, &o, &g, CALM).len(), 1);
}

#[test]
fn a_phone_without_rcs_gets_no_delete_unless_the_deadline_came_first() {
    let t = tracked(Class::SendNotRcs);
    let mut g = with_sends(ground(), vec![send(ID, 404, "TRANSACTION")]);
    g.deletes.insert(ID.into(), vec![delete(404)]);
    let answered = observed(&[
        "registered",
        "rcs_send_attempt",
        "rcs_unreachable",
        "sms_attempt",
    ]);
    let v = send_violations(&t, &answered, &g, CALM);
    assert!(v.iter().any(|v| v.contains("DELETE")), "{v:?}");

    let expired = observed(&[
        "registered",
        "rcs_send_attempt",
        "rcs_send_retry",
        "rcs_send_expired",
        "revoke_attempt",
        "revoke_not_found",
        "sms_attempt",
    ]);
    assert!(send_violations(&t, &expired, &g, CALM).is_empty());

    // Answered 404, yet the SMS waited for the deadline.
    g.deletes.clear();
    let mut slow = answered.clone();
    slow.events[3].0 = deadline() + chrono::TimeDelta::milliseconds(5);
    let v = send_violations(&t, &slow, &g, CALM);
    assert!(v.iter().any(|v| v.contains("waited")), "{v:?}");
    assert!(send_violations(&t, &answered, &g, CALM).is_empty());
}
