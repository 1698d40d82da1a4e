//! Every arrow of the lifecycle, then properties over random histories.

use super::*;
use crate::domain::Outcome;
use proptest::prelude::*;

const POLICY: Policy = Policy {
    confirm_window: Duration::from_secs(5),
    lease: Duration::from_secs(30),
    on_uncertain: OnUncertain::Skip,
};

/// The one-time-code policy: no miss, at the risk of a duplicate.
const SEND_SMS: Policy = Policy {
    on_uncertain: OnUncertain::SendSms,
    ..POLICY
};

fn facts(state: State) -> Facts {
    Facts {
        state,
        ..Facts::new_pending()
    }
}

fn step(f: &Facts, input: Input) -> Step {
    match apply(f, &input, &POLICY) {
        Verdict::Apply(s) => s,
        other => panic!("{input:?} on {f:?} gave {other:?}"),
    }
}

fn recorded(f: &Facts, input: Input) -> &'static str {
    match apply(f, &input, &POLICY) {
        Verdict::Record { event, .. } => event,
        other => panic!("{input:?} on {f:?} gave {other:?}"),
    }
}

/// What the database layer does with a step: the next facts.
fn next(f: &Facts, s: &Step) -> Facts {
    Facts {
        state: s.state,
        rcs_delivered: s.rcs_delivered,
        rcs_inferred: s.rcs_inferred,
        in_flight: match s.lease {
            Lease::Take => true,
            Lease::Release => false,
            Lease::Keep => f.in_flight,
        },
        in_doubt: s.in_doubt,
        sms_sid: s.sms_sid.clone(),
        sms_status: s.sms_status,
        sms_window: f.sms_window,
    }
}

fn step_with(f: &Facts, input: Input, policy: &Policy) -> Step {
    match apply(f, &input, policy) {
        Verdict::Apply(s) => s,
        other => panic!("{input:?} on {f:?} gave {other:?}"),
    }
}

fn claimed(state: State) -> Facts {
    Facts {
        in_flight: true,
        ..facts(state)
    }
}

fn retry(ambiguous: bool) -> (RevokeResult, SmsResult) {
    let d = Duration::from_secs(2);
    (
        RevokeResult::Retry {
            delay: d,
            ambiguous,
            detail: "503".into(),
        },
        SmsResult::Retry {
            delay: d,
            ambiguous,
            detail: "503".into(),
        },
    )
}

fn accepted(status: SmsStatus) -> Input {
    Input::Sms(SmsResult::Accepted {
        sid: "SM1".into(),
        status,
        reconciled: false,
    })
}

// ---- pending ----

#[test]
fn pending_delivered_or_read_becomes_delivered() {
    for read in [false, true] {
        let s = step(&facts(State::Pending), Input::Delivered { read });
        assert_eq!(s.state, State::Delivered);
        assert!(s.rcs_delivered);
        assert_eq!(s.due, Due::Never);
        assert_eq!(s.event, if read { "rcs_read" } else { "rcs_delivered" });
    }
}

#[test]
fn pending_deadline_claim_starts_the_revoke() {
    let s = step(&facts(State::Pending), Input::Claim);
    assert_eq!(s.state, State::Revoking);
    assert_eq!(s.action, Some(Action::Revoke { after_doubt: false }));
    assert_eq!(s.lease, Lease::Take);
    assert_eq!(s.due, Due::In(POLICY.lease));
}

#[test]
fn pending_can_be_cancelled_once() {
    let s = step(&facts(State::Pending), Input::Cancel);
    assert_eq!(s.state, State::Cancelled);
    assert_eq!(s.due, Due::Never);
    assert!(matches!(
        apply(&facts(State::Cancelled), &Input::Cancel, &POLICY),
        Verdict::Refuse { .. }
    ));
}

#[test]
fn cancel_is_refused_once_revocation_began_or_finished() {
    let cancellable = [State::Pending, State::RcsSending];
    for state in State::ALL
        .iter()
        .copied()
        .filter(|s| !cancellable.contains(s))
    {
        assert!(
            matches!(
                apply(&facts(state), &Input::Cancel, &POLICY),
                Verdict::Refuse { .. }
            ),
            "{state}"
        );
    }
}

// ---- revoking ----

#[test]
fn revoke_200_waits_the_confirm_window() {
    let s = step(
        &claimed(State::Revoking),
        Input::Revoke(RevokeResult::Revoked),
    );
    assert_eq!(s.state, State::Confirming);
    assert_eq!(s.due, Due::In(POLICY.confirm_window));
    assert_eq!(s.lease, Lease::Release);
}

#[test]
fn revoke_404_waits_for_proof_then_the_policy_decides() {
    let s = step(
        &claimed(State::Revoking),
        Input::Revoke(RevokeResult::NotFound),
    );
    assert_eq!(s.state, State::Verifying);
    assert!(!s.rcs_delivered);
    assert_eq!(s.due, Due::In(POLICY.confirm_window));
    assert_eq!(s.lease, Lease::Release);
    let verifying = next(&claimed(State::Revoking), &s);

    // skip: Google's word stands; the delivery is inferred, no SMS.
    let s = step(&verifying, Input::Claim);
    assert_eq!(s.state, State::Delivered);
    assert!(s.rcs_delivered && s.rcs_inferred);
    assert_eq!(s.action, None);
    assert_eq!(s.event, "unconfirmed");

    // send_sms: the SMS goes.
    let s = step_with(&verifying, Input::Claim, &SEND_SMS);
    assert_eq!(s.state, State::SmsSending);
    assert_eq!(
        s.action,
        Some(Action::SendSms {
            reconcile: false,
            may_send: true
        })
    );
    assert!(!s.rcs_delivered);
}

#[test]
fn proof_within_the_window_settles_a_404_either_way() {
    let verifying = facts(State::Verifying);
    for policy in [POLICY, SEND_SMS] {
        let s = step_with(&verifying, Input::Delivered { read: false }, &policy);
        assert_eq!(s.state, State::Delivered);
        assert!(s.rcs_delivered && !s.rcs_inferred);
        // Google's TTL had removed it: the 404 did not mean delivered.
        let s = step_with(&verifying, Input::TtlRevoked, &policy);
        assert_eq!(s.state, State::Confirming);
    }
    // TTL_EXPIRATION_REVOKE_FAILED is proof enough only for skip.
    assert_eq!(
        step(&verifying, Input::TtlRevokeFailed).state,
        State::Delivered
    );
    assert!(matches!(
        apply(&verifying, &Input::TtlRevokeFailed, &SEND_SMS),
        Verdict::Record { .. }
    ));
}

#[test]
fn ttl_revoke_failed_under_send_sms_waits_for_a_delivered() {
    for state in [State::RcsSending, State::Pending, State::Revoking] {
        let s = step_with(&facts(state), Input::TtlRevokeFailed, &SEND_SMS);
        assert_eq!(s.state, State::Verifying, "{state}");
        assert!(!s.rcs_delivered);
        assert_eq!(s.due, Due::In(SEND_SMS.confirm_window));
    }
    // While the SMS is being sent it stops nothing.
    assert!(matches!(
        apply(
            &facts(State::SmsSending),
            &Input::TtlRevokeFailed,
            &SEND_SMS
        ),
        Verdict::Record { .. }
    ));
}

#[test]
fn a_ttl_revocation_after_a_404_overrides_the_inferred_delivery() {
    let verifying = next(
        &claimed(State::Revoking),
        &step(
            &claimed(State::Revoking),
            Input::Revoke(RevokeResult::NotFound),
        ),
    );
    let s = step(&verifying, Input::Claim);
    assert!(s.rcs_inferred);
    let f = next(&verifying, &s);
    let s = step(&f, Input::TtlRevoked);
    assert_eq!(s.state, State::Confirming);
    assert!(!s.rcs_delivered && !s.rcs_inferred);
    assert_eq!(s.due, Due::In(POLICY.confirm_window));
}

#[test]
fn a_delivered_after_a_404_confirms_it_and_then_ttl_changes_nothing() {
    let f = next(
        &claimed(State::Revoking),
        &step(
            &claimed(State::Revoking),
            Input::Revoke(RevokeResult::NotFound),
        ),
    );
    let s = step(&f, Input::Delivered { read: false });
    assert!(s.rcs_delivered && !s.rcs_inferred);
    assert_eq!(s.state, State::Delivered);
    assert_eq!(recorded(&next(&f, &s), Input::TtlRevoked), "ttl_revoked");
}

#[test]
fn revoke_404_after_an_unanswered_delete_is_confirmed_not_assumed() {
    let f = Facts {
        in_doubt: true,
        ..claimed(State::Revoking)
    };
    let s = step(&f, Input::Revoke(RevokeResult::NotFound));
    assert_eq!(s.state, State::Confirming);
    assert!(!s.rcs_delivered);
}

#[test]
fn revoke_retry_keeps_revoking_and_remembers_doubt() {
    let (r, _) = retry(true);
    let s = step(&claimed(State::Revoking), Input::Revoke(r));
    assert_eq!(s.state, State::Revoking);
    assert!(s.in_doubt);
    assert_eq!(s.due, Due::In(Duration::from_secs(2)));
    let (r, _) = retry(false);
    assert!(!step(&claimed(State::Revoking), Input::Revoke(r)).in_doubt);
}

#[test]
fn reclaim_after_a_dead_worker_revokes_in_doubt() {
    // in_flight at claim time: the previous holder never recorded a result.
    let s = step(&claimed(State::Revoking), Input::Claim);
    assert_eq!(s.action, Some(Action::Revoke { after_doubt: true }));
    assert!(s.in_doubt);
}

#[test]
fn revoke_rejected_fails_the_message() {
    let s = step(
        &claimed(State::Revoking),
        Input::Revoke(RevokeResult::Rejected {
            status: 403,
            detail: "forbidden".into(),
        }),
    );
    assert_eq!(s.state, State::Failed);
}

#[test]
fn a_revoke_answer_without_the_claim_is_only_recorded() {
    // The claim moved on (a webhook settled it, or another worker took over).
    assert_eq!(
        recorded(
            &facts(State::Revoking),
            Input::Revoke(RevokeResult::NotFound)
        ),
        "revoke_not_found"
    );
    assert_eq!(
        recorded(
            &claimed(State::Delivered),
            Input::Revoke(RevokeResult::Revoked)
        ),
        "revoke_ok"
    );
}

#[test]
fn delivered_during_the_revoke_call_wins_and_drops_the_claim() {
    let s = step(&claimed(State::Revoking), Input::Delivered { read: false });
    assert_eq!(s.state, State::Delivered);
    assert_eq!(s.lease, Lease::Release);
}

// ---- TTL events ----

#[test]
fn ttl_revoked_confirms_from_pending_or_revoking() {
    for state in [State::Pending, State::Revoking] {
        let s = step(&facts(state), Input::TtlRevoked);
        assert_eq!(s.state, State::Confirming, "{state}");
        assert_eq!(s.due, Due::In(POLICY.confirm_window));
    }
    assert_eq!(
        recorded(&facts(State::Confirming), Input::TtlRevoked),
        "ttl_revoked"
    );
    assert_eq!(
        recorded(&facts(State::Delivered), Input::TtlRevoked),
        "ttl_revoked"
    );
}

#[test]
fn ttl_revoke_failed_means_delivered() {
    for state in [State::Pending, State::Revoking, State::Confirming] {
        let s = step(&facts(state), Input::TtlRevokeFailed);
        assert_eq!(s.state, State::Delivered, "{state}");
        assert!(s.rcs_delivered);
    }
}

// ---- confirming ----

#[test]
fn confirming_delivered_cancels_the_sms() {
    let s = step(&facts(State::Confirming), Input::Delivered { read: false });
    assert_eq!(s.state, State::Delivered);
    assert_eq!(s.due, Due::Never);
}

#[test]
fn confirm_window_elapsed_sends_the_sms() {
    let s = step(&facts(State::Confirming), Input::Claim);
    assert_eq!(s.state, State::SmsSending);
    assert_eq!(
        s.action,
        Some(Action::SendSms {
            reconcile: false,
            may_send: true
        })
    );
    assert_eq!(s.lease, Lease::Take);
}

#[test]
fn a_send_given_up_at_the_deadline_revokes_first_if_google_may_have_it() {
    let clean = step(
        &claimed(State::RcsSending),
        Input::RcsSend(RcsSendResult::Expired),
    );
    assert_eq!(clean.event, "rcs_send_expired");
    assert_eq!(clean.state, State::SmsSending);
    let doubtful = Facts {
        in_doubt: true,
        ..claimed(State::RcsSending)
    };
    let s = step(&doubtful, Input::RcsSend(RcsSendResult::Expired));
    assert_eq!(s.event, "rcs_send_expired");
    assert_eq!(s.state, State::Revoking);
    assert!(s.in_doubt);
    assert_eq!(s.due, Due::In(Duration::ZERO));
}

#[test]
fn quiet_hours_defer_or_drop_a_first_sms_attempt() {
    let wait = Duration::from_secs(600);
    for state in [State::Confirming, State::SmsSending] {
        let waiting = Facts {
            sms_window: SmsWindow::WaitFor(wait),
            ..facts(state)
        };
        let s = step(&waiting, Input::Claim);
        assert_eq!(s.event, "sms_deferred", "{state:?}");
        assert_eq!(s.state, state);
        assert_eq!(s.due, Due::In(wait));
        assert_eq!(s.lease, Lease::Release);
        assert_eq!(s.action, None);

        let closed = Facts {
            sms_window: SmsWindow::Closed,
            ..facts(state)
        };
        let s = step(&closed, Input::Claim);
        assert_eq!(s.event, "sms_dropped", "{state:?}");
        assert_eq!(s.state, State::SmsSkipped);
        assert_eq!(s.action, None);
        assert_eq!(Outcome::of(s.state, s.rcs_delivered), Outcome::None);
    }
}

#[test]
fn an_sms_that_may_be_out_is_looked_for_in_quiet_hours_too() {
    for window in [
        SmsWindow::WaitFor(Duration::from_secs(600)),
        SmsWindow::Closed,
    ] {
        let f = Facts {
            in_doubt: true,
            sms_window: window,
            ..facts(State::SmsSending)
        };
        let s = step(&f, Input::Claim);
        assert_eq!(s.state, State::SmsSending, "{window:?}");
        assert_eq!(
            s.action,
            Some(Action::SendSms {
                reconcile: true,
                may_send: true
            })
        );
    }
}

// ---- sms_sending ----

#[test]
fn twilio_accepting_makes_it_sms_sent() {
    let s = step(&claimed(State::SmsSending), accepted(SmsStatus::Queued));
    assert_eq!(s.state, State::SmsSent);
    assert_eq!(s.sms_sid.as_deref(), Some("SM1"));
    assert_eq!(Outcome::of(s.state, s.rcs_delivered), Outcome::Sms);
}

#[test]
fn permanent_twilio_error_fails_the_message() {
    let s = step(
        &claimed(State::SmsSending),
        Input::Sms(SmsResult::Rejected {
            code: Some(21211),
            detail: "invalid To".into(),
        }),
    );
    assert_eq!(s.state, State::Failed);
    assert_eq!(Outcome::of(s.state, s.rcs_delivered), Outcome::None);
}

#[test]
fn sms_retry_after_an_ambiguous_failure_reconciles_first() {
    let (_, r) = retry(true);
    let f = next(
        &claimed(State::SmsSending),
        &step(&claimed(State::SmsSending), Input::Sms(r)),
    );
    assert!(f.in_doubt && !f.in_flight);
    let s = step(&f, Input::Claim);
    assert_eq!(
        s.action,
        Some(Action::SendSms {
            reconcile: true,
            may_send: true
        })
    );
}

#[test]
fn sms_retry_after_a_clean_refusal_sends_without_reconciling() {
    let (_, r) = retry(false);
    let f = next(
        &claimed(State::SmsSending),
        &step(&claimed(State::SmsSending), Input::Sms(r)),
    );
    assert_eq!(
        step(&f, Input::Claim).action,
        Some(Action::SendSms {
            reconcile: false,
            may_send: true
        })
    );
}

#[test]
fn delivered_between_sms_retries_stops_the_sms() {
    let f = facts(State::SmsSending); // waiting to retry, nothing in flight, nothing in doubt
    let s = step(&f, Input::Delivered { read: true });
    assert_eq!(s.state, State::Delivered);
    assert_eq!(s.due, Due::Never);
}

#[test]
fn delivered_while_the_sms_is_in_flight_leads_to_both() {
    let f = claimed(State::SmsSending);
    let s = step(&f, Input::Delivered { read: false });
    assert_eq!(s.state, State::SmsSending);
    assert_eq!(s.lease, Lease::Keep);
    let f = next(&f, &s);
    let s = step(&f, accepted(SmsStatus::Queued));
    assert_eq!(Outcome::of(s.state, s.rcs_delivered), Outcome::Both);
}

#[test]
fn delivered_while_in_doubt_reconciles_but_never_sends() {
    let f = Facts {
        in_doubt: true,
        rcs_delivered: true,
        ..facts(State::SmsSending)
    };
    let s = step(&f, Input::Claim);
    assert_eq!(
        s.action,
        Some(Action::SendSms {
            reconcile: true,
            may_send: false
        })
    );
    let f = next(&f, &s);
    assert_eq!(
        step(&f, Input::Sms(SmsResult::NotSent)).state,
        State::Delivered
    );
}

#[test]
fn a_clean_sms_failure_after_delivery_ends_delivered() {
    let f = Facts {
        rcs_delivered: true,
        ..claimed(State::SmsSending)
    };
    let (_, r) = retry(false);
    assert_eq!(step(&f, Input::Sms(r)).state, State::Delivered);
}

#[test]
fn status_callback_before_the_worker_records_proves_the_send() {
    let s = step(
        &claimed(State::SmsSending),
        Input::SmsStatus {
            sid: "SM9".into(),
            status: SmsStatus::Sent,
        },
    );
    assert_eq!(s.state, State::SmsSent);
    assert_eq!(s.sms_sid.as_deref(), Some("SM9"));
    assert_eq!(s.lease, Lease::Release);
}

// ---- sms_sent and after ----

fn sent(status: SmsStatus) -> Facts {
    Facts {
        sms_sid: Some("SM1".into()),
        sms_status: Some(status),
        ..facts(status.message_state())
    }
}

fn status(s: SmsStatus) -> Input {
    Input::SmsStatus {
        sid: "SM1".into(),
        status: s,
    }
}

#[test]
fn callbacks_move_sms_sent_to_delivered_or_failed() {
    assert_eq!(
        step(&sent(SmsStatus::Queued), status(SmsStatus::Sent)).state,
        State::SmsSent
    );
    assert_eq!(
        step(&sent(SmsStatus::Sent), status(SmsStatus::Delivered)).state,
        State::SmsDelivered
    );
    assert_eq!(
        step(&sent(SmsStatus::Sent), status(SmsStatus::Undelivered)).state,
        State::SmsFailed
    );
    assert_eq!(
        step(&sent(SmsStatus::Queued), status(SmsStatus::Failed)).state,
        State::SmsFailed
    );
}

#[test]
fn callbacks_apply_monotonically() {
    assert_eq!(
        recorded(&sent(SmsStatus::Delivered), status(SmsStatus::Sent)),
        "sms_status"
    );
    assert_eq!(
        recorded(&sent(SmsStatus::Sent), status(SmsStatus::Sent)),
        "sms_status"
    );
    assert_eq!(
        recorded(&sent(SmsStatus::Delivered), status(SmsStatus::Failed)),
        "sms_status"
    );
}

#[test]
fn callbacks_for_another_sid_change_nothing() {
    let input = Input::SmsStatus {
        sid: "SMother".into(),
        status: SmsStatus::Delivered,
    };
    assert_eq!(recorded(&sent(SmsStatus::Sent), input), "sms_status");
}

#[test]
fn delivered_after_the_sms_went_out_is_both_and_never_backwards() {
    for st in [SmsStatus::Queued, SmsStatus::Delivered] {
        let f = sent(st);
        let s = step(&f, Input::Delivered { read: false });
        assert_eq!(s.state, f.state);
        assert_eq!(Outcome::of(s.state, s.rcs_delivered), Outcome::Both);
        // A second one is only recorded.
        assert_eq!(
            recorded(&next(&f, &s), Input::Delivered { read: true }),
            "rcs_read"
        );
    }
}

#[test]
fn final_states_have_no_due_work() {
    for state in State::ALL.iter().copied().filter(|s| s.is_final()) {
        let s = step(&facts(state), Input::Claim);
        assert_eq!(s.state, state);
        assert_eq!(s.due, Due::Never);
        assert_eq!(s.action, None);
    }
}

// ---- properties over random histories ----

#[derive(Clone, Debug)]
enum Event {
    Delivered,
    Read,
    TtlRevoked,
    TtlRevokeFailed,
    Cancel,
    Claim,
    /// The worker holding the claim finishes its call; the u8 picks the answer.
    Finish(u8),
    /// The worker holding the claim dies; its lease will expire. `true`:
    /// it died after Twilio had created the SMS.
    Crash(bool),
    Callback(u8),
    /// The recipient's quiet hours begin or end: open, wait, or drop.
    Quiet(u8),
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        1 => Just(Event::Delivered),
        1 => Just(Event::Read),
        1 => Just(Event::TtlRevoked),
        1 => Just(Event::TtlRevokeFailed),
        1 => Just(Event::Cancel),
        3 => Just(Event::Claim),
        4 => any::<u8>().prop_map(Event::Finish),
        1 => any::<bool>().prop_map(Event::Crash),
        1 => any::<u8>().prop_map(Event::Callback),
        1 => any::<u8>().prop_map(Event::Quiet),
    ]
}

/// Google and Twilio as far as the properties need them.
#[derive(Default, Debug)]
struct World {
    action: Option<Action>,
    /// Google took the RCS we sent (send mode), whether or not we heard so.
    rcs_at_google: bool,
    sms_created: u32,
    sms_sid: Option<String>,
    rcs_delivered_at: Option<usize>,
    sms_sent_at: Option<usize>,
}

fn finish(world: &mut World, action: Action, pick: u8, t: usize) -> Input {
    match action {
        Action::SendRcs => Input::RcsSend(match pick % 6 {
            0 | 1 => {
                world.rcs_at_google = true;
                RcsSendResult::Sent
            }
            2 => RcsSendResult::Unreachable {
                status: 404,
                detail: String::new(),
            },
            3 => {
                // No answer: Google may have taken it all the same.
                let ambiguous = pick & 0x80 != 0;
                if ambiguous && pick & 0x40 != 0 {
                    world.rcs_at_google = true;
                }
                RcsSendResult::Retry {
                    delay: Duration::from_secs(1),
                    ambiguous,
                    detail: String::new(),
                }
            }
            4 => RcsSendResult::Expired,
            _ => RcsSendResult::Rejected {
                status: 400,
                detail: String::new(),
            },
        }),
        Action::Revoke { .. } => Input::Revoke(match pick % 5 {
            0 | 1 => RevokeResult::Revoked,
            2 => RevokeResult::NotFound,
            3 => retry(pick & 0x80 != 0).0,
            _ => RevokeResult::Rejected {
                status: 403,
                detail: String::new(),
            },
        }),
        Action::SendSms {
            reconcile,
            may_send,
        } => {
            if reconcile {
                if let Some(sid) = &world.sms_sid {
                    return Input::Sms(SmsResult::Accepted {
                        sid: sid.clone(),
                        status: SmsStatus::Queued,
                        reconciled: true,
                    });
                }
            }
            if !may_send {
                return Input::Sms(SmsResult::NotSent);
            }
            let create = |world: &mut World| {
                world.sms_created += 1;
                world.sms_sid = Some(format!("SM{}", world.sms_created));
                world.sms_sent_at.get_or_insert(t);
            };
            Input::Sms(match pick % 5 {
                0 | 1 => {
                    create(world);
                    SmsResult::Accepted {
                        sid: world.sms_sid.clone().unwrap(),
                        status: SmsStatus::Queued,
                        reconciled: false,
                    }
                }
                2 => retry(false).1,
                3 => {
                    // Timed out: Twilio may or may not have created it.
                    if pick & 0x80 != 0 {
                        create(world);
                    }
                    retry(true).1
                }
                _ => SmsResult::Rejected {
                    code: Some(21211),
                    detail: String::new(),
                },
            })
        }
    }
}

/// Where a history starts: a tracked message, or one rbm-fallback sends.
fn start(send_mode: bool) -> Facts {
    Facts {
        state: if send_mode {
            State::RcsSending
        } else {
            State::Pending
        },
        ..Facts::new_pending()
    }
}

fn policy(send_sms: bool) -> Policy {
    if send_sms {
        SEND_SMS
    } else {
        POLICY
    }
}

fn run(events: &[Event], mut f: Facts, policy: &Policy) -> (Facts, World) {
    let mut w = World::default();
    // Whether the message has work due: a registration schedules some.
    let mut due = true;
    for (t, e) in events.iter().enumerate() {
        let before = f.clone();
        let input = match e {
            Event::Delivered => Input::Delivered { read: false },
            Event::Read => Input::Delivered { read: true },
            Event::TtlRevoked => Input::TtlRevoked,
            Event::TtlRevokeFailed => Input::TtlRevokeFailed,
            Event::Cancel => Input::Cancel,
            Event::Claim => Input::Claim,
            Event::Finish(pick) => match w.action.take() {
                Some(a) if f.in_flight => finish(&mut w, a, *pick, t),
                _ => continue,
            },
            Event::Crash(after_create) => {
                // The claim stays set in the database; only the worker is gone.
                let action = w.action.take();
                if action == Some(Action::SendRcs) && *after_create {
                    // Died after Google took the RCS.
                    w.rcs_at_google = true;
                }
                if let Some(Action::SendSms { may_send: true, .. }) = action {
                    if *after_create && w.sms_sid.is_none() {
                        // Died after Twilio created the message.
                        w.sms_created += 1;
                        w.sms_sid = Some(format!("SM{}", w.sms_created));
                        w.sms_sent_at.get_or_insert(t);
                    }
                }
                continue;
            }
            Event::Quiet(pick) => {
                f.sms_window = match pick % 3 {
                    0 => SmsWindow::Open,
                    1 => SmsWindow::WaitFor(Duration::from_secs(60)),
                    _ => SmsWindow::Closed,
                };
                continue;
            }
            Event::Callback(pick) => match &w.sms_sid {
                Some(sid) => Input::SmsStatus {
                    sid: sid.clone(),
                    status: [
                        SmsStatus::Sent,
                        SmsStatus::Delivered,
                        SmsStatus::Undelivered,
                    ][*pick as usize % 3],
                },
                None => continue,
            },
        };
        // Under send_sms, only a DELIVERED or READ proves the arrival.
        let proof = match input {
            Input::Delivered { .. } => true,
            Input::TtlRevokeFailed => policy.on_uncertain == OnUncertain::Skip,
            _ => false,
        };
        if proof {
            w.rcs_delivered_at.get_or_insert(t);
        }
        // A claim is only made while no live worker holds one.
        if input == Input::Claim && w.action.is_some() {
            continue;
        }
        match apply(&f, &input, policy) {
            Verdict::Apply(s) => {
                if let Some(Action::SendSms { may_send: true, .. }) = s.action {
                    assert!(
                        !f.rcs_delivered,
                        "a send was allowed after the RCS was known delivered"
                    );
                }
                // Quiet hours hold back a first attempt; an SMS that may be
                // out already is looked for whatever the hour.
                if let Some(Action::SendSms {
                    reconcile: false, ..
                }) = s.action
                {
                    assert_eq!(
                        f.sms_window,
                        SmsWindow::Open,
                        "an SMS started in quiet hours"
                    );
                }
                if s.lease == Lease::Take {
                    w.action = s.action;
                } else if s.lease == Lease::Release {
                    w.action = None;
                }
                due = match s.due {
                    Due::Never => false,
                    Due::In(_) | Due::AtDeadline => true,
                    Due::Keep => due,
                };
                f = next(&f, &s);
            }
            Verdict::Record { .. } | Verdict::Refuse { .. } => {}
        }
        // Only claims move a message on without an outside event, and only
        // due work is claimed: a state with work left and nothing due would
        // strand the message, and a settled one with work due would be
        // claimed for nothing.
        assert_eq!(
            due,
            f.state.unsettled(),
            "{} with work due: {due}, after {input:?}",
            f.state
        );
        // Final states stay, except a delivery only inferred from a 404,
        // which a TTL revocation proves wrong.
        if before.state.is_final() && !before.rcs_inferred {
            assert_eq!(before.state, f.state, "a final state changed on {input:?}");
        }
        assert!(
            f.rcs_delivered || !before.rcs_delivered || before.rcs_inferred,
            "a confirmed delivery was forgotten"
        );
    }
    (f, w)
}

/// Histories in which nothing proves the RCS arrived and nobody refuses:
/// no DELIVERED or READ, no cancel, no permanent refusal from Google or
/// Twilio, no quiet hours that drop the SMS.
fn unproven_event() -> impl Strategy<Value = Event> {
    // finish() reads a pick modulo 6 (sends), 5 (revokes, SMS): 5 and 4
    // are the refusals.
    let answer = any::<u8>().prop_filter("a refusal", |p| p % 6 != 5 && p % 5 != 4);
    prop_oneof![
        1 => Just(Event::TtlRevoked),
        1 => Just(Event::TtlRevokeFailed),
        3 => Just(Event::Claim),
        4 => answer.prop_map(Event::Finish),
        1 => any::<bool>().prop_map(Event::Crash),
        1 => any::<u8>().prop_map(Event::Callback),
        1 => (0u8..2).prop_map(Event::Quiet),
    ]
}

/// What happens to a send-mode message on our side alone: no Google event
/// (none can come for an RCS Google never took), no cancel, no refusal, no
/// quiet hours that drop the SMS.
fn our_side_event() -> impl Strategy<Value = Event> {
    let answer = any::<u8>().prop_filter("a refusal", |p| p % 6 != 5 && p % 5 != 4);
    prop_oneof![
        3 => Just(Event::Claim),
        4 => answer.prop_map(Event::Finish),
        1 => any::<bool>().prop_map(Event::Crash),
        1 => any::<u8>().prop_map(Event::Callback),
        1 => (0u8..2).prop_map(Event::Quiet),
    ]
}

/// From wherever a history left the message, claims and clean answers
/// (quiet hours over) until it rests; the last facts.
fn settle(mut f: Facts, w: &mut World, policy: &Policy) -> Facts {
    f.sms_window = SmsWindow::Open;
    for _ in 0..10 {
        if f.state.is_final() || f.state == State::SmsSent {
            break;
        }
        let input = match w.action.take() {
            Some(a) if f.in_flight => finish(w, a, 0, 0),
            _ => Input::Claim,
        };
        if let Verdict::Apply(s) = apply(&f, &input, policy) {
            if s.lease == Lease::Take {
                w.action = s.action;
            }
            f = next(&f, &s);
        }
    }
    f
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn at_most_one_sms_and_none_after_a_known_delivery(
        events in prop::collection::vec(event(), 0..40),
        send_mode in any::<bool>(),
        send_sms in any::<bool>(),
    ) {
        let (f, w) = run(&events, start(send_mode), &policy(send_sms));
        prop_assert!(w.sms_created <= 1, "{} SMS created", w.sms_created);
        if let (Some(rcs), Some(sms)) = (w.rcs_delivered_at, w.sms_sent_at) {
            // An SMS may follow a DELIVERED only if its claim was made before it.
            prop_assert!(sms > rcs || f.rcs_delivered);
        }
        // The outcome agrees with what the world saw.
        let outcome = Outcome::of(f.state, f.rcs_delivered);
        if matches!(outcome, Outcome::Sms | Outcome::Both) {
            prop_assert!(w.sms_sid.is_some());
        }
        if matches!(outcome, Outcome::Rcs | Outcome::Both) {
            prop_assert!(w.rcs_delivered_at.is_some() || events.iter().any(|e| matches!(e, Event::Finish(_))));
        }
    }

    #[test]
    fn google_events_in_any_order_and_multiplicity_settle_the_same(
        picks in prop::collection::vec(0u8..4, 1..12),
        send_mode in any::<bool>(),
        send_sms in any::<bool>(),
    ) {
        let policy = policy(send_sms);
        let to_input = |p: u8| match p {
            0 => Input::Delivered { read: false },
            1 => Input::Delivered { read: true },
            2 => Input::TtlRevoked,
            _ => Input::TtlRevokeFailed,
        };
        let settle = |order: &[u8]| {
            let mut f = start(send_mode);
            for p in order {
                if let Verdict::Apply(s) = apply(&f, &to_input(*p), &policy) {
                    f = next(&f, &s);
                }
            }
            (f.state, f.rcs_delivered)
        };
        // One in-order delivery of each distinct event...
        let mut once = picks.clone();
        once.sort();
        once.dedup();
        let expected = settle(&once);
        // ...against the same events reversed and duplicated.
        let mut shuffled: Vec<u8> = picks.iter().rev().copied().collect();
        shuffled.extend(picks.iter().copied());
        prop_assert_eq!(settle(&shuffled), expected);
    }

    #[test]
    fn send_sms_never_misses_without_proof_of_the_rcs(
        events in prop::collection::vec(unproven_event(), 0..40),
        send_mode in any::<bool>(),
    ) {
        let (f, mut w) = run(&events, start(send_mode), &SEND_SMS);
        let f = settle(f, &mut w, &SEND_SMS);
        prop_assert!(f.state.is_final() || f.state == State::SmsSent, "stuck in {}", f.state);
        prop_assert_eq!(w.sms_created, 1, "ended {} without the SMS", f.state);
        prop_assert!(!f.rcs_delivered, "a delivery nothing proved");
    }

    #[test]
    fn an_rcs_google_never_took_is_never_taken_for_delivered(
        events in prop::collection::vec(our_side_event(), 0..40),
        send_sms in any::<bool>(),
    ) {
        let policy = policy(send_sms);
        let (f, mut w) = run(&events, start(true), &policy);
        let f = settle(f, &mut w, &policy);
        if !w.rcs_at_google {
            prop_assert!(!f.rcs_delivered, "{} with a delivery Google could not make", f.state);
            prop_assert_eq!(w.sms_created, 1, "ended {} without the SMS", f.state);
        }
    }

    #[test]
    fn a_cooperative_world_always_settles(
        events in prop::collection::vec(event(), 0..30),
        send_mode in any::<bool>(),
        send_sms in any::<bool>(),
    ) {
        let policy = policy(send_sms);
        let (f, mut w) = run(&events, start(send_mode), &policy);
        // From wherever the history left it, claims and clean answers must
        // bring the message to rest within a few steps.
        let f = settle(f, &mut w, &policy);
        prop_assert!(f.state.is_final() || f.state == State::SmsSent, "stuck in {}", f.state);
        prop_assert!(w.sms_created <= 1);
    }
}
