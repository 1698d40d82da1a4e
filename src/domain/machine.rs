//! The fallback state machine: given what we know about a message and one
//! thing that happened to it, decide its next state, what work is due, and
//! what a worker must do. Pure: no clock, no randomness, no I/O. Every caller
//! (webhook handlers, the API, workers) goes through [`apply`], inside the one
//! database transaction that also appends the event to the history.
//!
//! In send mode the message starts in `rcs_sending`: rbm-fallback sends the
//! RBM message itself, with Google's TTL just after the deadline, then waits in
//! `pending` as a tracked message does.
//!
//! Two rules carry the product's promise:
//! - an SMS is never sent once an RCS delivery is known, and never sent twice:
//!   a send whose fate is unknown is reconciled with Twilio before any retry;
//! - a revocation that may already have happened is never read as "already
//!   delivered": a 404 after an unanswered DELETE may mean our own first DELETE
//!   worked, so the message goes to the confirm window instead of being dropped.

use std::time::Duration;

use super::state::{SmsStatus, State};

/// In send mode Google's TTL ends this long after the deadline. Our revoke
/// at the deadline then normally reaches Google first, and its answer means
/// what it does in track mode (200 revoked, 404 delivered); were the TTL
/// exactly at the deadline, the two would race and a 404 would often mean
/// "expired", which only a TTL event (never guaranteed) could tell. The TTL
/// stays the backstop: should our revoke not get through, Google expires the
/// message itself and reports it.
pub const RCS_TTL_MARGIN: Duration = Duration::from_secs(30);

/// What the machine needs to know about a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Facts {
    pub state: State,
    /// A DELIVERED or READ arrived (or Google told us so another way).
    pub rcs_delivered: bool,
    /// The delivery was only inferred from a revoke's 404, which also means
    /// "already removed" (by Google's TTL, say): a later TTL_EXPIRATION_REVOKED
    /// overrides it.
    pub rcs_inferred: bool,
    /// A worker claimed the current step and has not recorded a result: its
    /// call may be under way, or it died holding the claim.
    pub in_flight: bool,
    /// An earlier call for the current step may have taken effect without our
    /// knowing (a timeout or reset after the request went out).
    pub in_doubt: bool,
    pub sms_sid: Option<String>,
    pub sms_status: Option<SmsStatus>,
    /// Whether an SMS may go out now, by the recipient's quiet hours. Only
    /// claims read it (see `unless_quiet`).
    pub sms_window: SmsWindow,
}

/// Whether the recipient's quiet hours let an SMS go out now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SmsWindow {
    Open,
    /// Quiet for this much longer; the SMS waits.
    WaitFor(Duration),
    /// Quiet, and the message's policy drops SMS that would land then.
    Closed,
}

impl Facts {
    pub fn new_pending() -> Facts {
        Facts {
            state: State::Pending,
            rcs_delivered: false,
            rcs_inferred: false,
            in_flight: false,
            in_doubt: false,
            sms_sid: None,
            sms_status: None,
            sms_window: SmsWindow::Open,
        }
    }
}

/// Everything that can happen to a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// Google: DELIVERED, or READ (which implies delivered).
    Delivered { read: bool },
    /// Google's TTL expired the message and revoked it.
    TtlRevoked,
    /// Google's TTL expired the message but the revoke failed: it was or is being delivered.
    TtlRevokeFailed,
    /// The agent cancelled the fallback through the API.
    Cancel,
    /// A worker claimed the message's due step.
    Claim,
    /// A worker's send of the RBM message came back (or failed).
    RcsSend(RcsSendResult),
    /// A worker's DELETE came back (or failed).
    Revoke(RevokeResult),
    /// A worker's SMS send came back (or failed).
    Sms(SmsResult),
    /// Twilio's status callback.
    SmsStatus { sid: String, status: SmsStatus },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RcsSendResult {
    /// 200: Google holds the message, its TTL just after the deadline.
    Sent,
    /// 404 (the phone is not RCS-capable, or its carrier has not launched
    /// RBM) or 403 (the agent is not launched for this user): the RCS can
    /// never arrive, so the SMS goes at once.
    Unreachable { status: u16, detail: String },
    /// Google refused the content (400): nothing can be sent.
    Rejected { status: u16, detail: String },
    /// The deadline came before any send got through; the worker did not
    /// call Google.
    Expired,
    /// Worth trying again, with the same messageId (Google ignores repeats).
    Retry {
        delay: Duration,
        ambiguous: bool,
        detail: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RevokeResult {
    /// 200: revoked (or, per the older docs, merely accepted).
    Revoked,
    /// 404: nothing to revoke; normally because it was already delivered.
    NotFound,
    /// Worth trying again after `delay`. `ambiguous` when the request may
    /// have reached Google (timeout, reset) rather than being refused.
    Retry {
        delay: Duration,
        ambiguous: bool,
        detail: String,
    },
    /// Google refused in a way retrying cannot fix.
    Rejected { status: u16, detail: String },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SmsResult {
    /// Twilio holds the message: just created, or found by reconciliation.
    Accepted {
        sid: String,
        status: SmsStatus,
        reconciled: bool,
    },
    /// Reconciliation found no SMS, and sending was no longer allowed.
    NotSent,
    /// Twilio refused in a way retrying cannot fix (e.g. 21211 invalid To).
    Rejected { code: Option<u32>, detail: String },
    Retry {
        delay: Duration,
        ambiguous: bool,
        detail: String,
    },
}

/// What a worker must do after claiming a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send the RBM message at Google, TTL just after the deadline. Repeats carry the
    /// same messageId, which Google ignores.
    SendRcs,
    /// DELETE the agent message at Google. `after_doubt`: an earlier DELETE
    /// may have worked, so a 404 no longer proves delivery.
    Revoke { after_doubt: bool },
    /// Send the SMS through Twilio. `reconcile`: first ask Twilio whether an
    /// earlier attempt created it. `may_send`: whether a new send is allowed
    /// if none is found (not once the RCS arrived).
    SendSms { reconcile: bool, may_send: bool },
}

/// When the message's next step falls due.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Due {
    /// No more work (final state, or waiting only on outside events).
    Never,
    /// Now plus this long, by the database clock.
    In(Duration),
    /// At the message's deadline.
    AtDeadline,
    /// Leave as it is.
    Keep,
}

/// What happens to a worker's claim on the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lease {
    /// The caller (a worker) takes a fresh claim.
    Take,
    /// Any claim ends: a worker recorded its result, or the message moved on
    /// and a late result from the old claim must be discarded.
    Release,
    Keep,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub state: State,
    pub rcs_delivered: bool,
    pub rcs_inferred: bool,
    pub in_doubt: bool,
    pub sms_sid: Option<String>,
    pub sms_status: Option<SmsStatus>,
    pub due: Due,
    pub lease: Lease,
    pub action: Option<Action>,
    /// The history entry's kind.
    pub event: &'static str,
    /// Why, for the history, where the input alone does not say.
    pub note: Option<&'static str>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Record the event and store the step.
    Apply(Step),
    /// Record the event; nothing else changes (duplicates, late news).
    Record {
        event: &'static str,
        note: &'static str,
    },
    /// The input is not allowed now; record nothing and tell the caller.
    Refuse { reason: &'static str },
}

/// The message's own policy (resolved at intake from the message, its
/// agent and its traffic type) and the deployment's lease.
#[derive(Clone, Copy, Debug)]
pub struct Policy {
    /// How long to wait after a revoke for a racing DELIVERED before the SMS,
    /// and after a failed revoke for the DELIVERED that would prove it.
    pub confirm_window: Duration,
    /// How long a worker's claim lasts before another worker may take over.
    pub lease: Duration,
    pub on_uncertain: OnUncertain,
}

/// What to do when Google says the revoke failed (404, or
/// TTL_EXPIRATION_REVOKE_FAILED) yet no DELIVERED or READ comes within the
/// confirm window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OnUncertain {
    /// Trust Google: the RCS arrived; no SMS. No duplicate, maybe a miss.
    Skip,
    /// Send the SMS. No miss, maybe a duplicate (Google's advice for
    /// one-time codes).
    SendSms,
}

impl OnUncertain {
    pub fn as_str(self) -> &'static str {
        match self {
            OnUncertain::Skip => "skip",
            OnUncertain::SendSms => "send_sms",
        }
    }

    pub fn parse(s: &str) -> Option<OnUncertain> {
        match s {
            "skip" => Some(OnUncertain::Skip),
            "send_sms" => Some(OnUncertain::SendSms),
            _ => None,
        }
    }
}

impl Input {
    /// The input a Google event of this `eventType` is, if it concerns the fallback.
    pub fn from_rbm_event(event_type: &str) -> Option<Input> {
        match event_type {
            "DELIVERED" => Some(Input::Delivered { read: false }),
            "READ" => Some(Input::Delivered { read: true }),
            "TTL_EXPIRATION_REVOKED" => Some(Input::TtlRevoked),
            "TTL_EXPIRATION_REVOKE_FAILED" => Some(Input::TtlRevokeFailed),
            _ => None,
        }
    }
}

pub fn apply(facts: &Facts, input: &Input, policy: &Policy) -> Verdict {
    use State::*;
    let f = facts;
    // A step that keeps everything as it is; each arm below changes what it must.
    let base = |event: &'static str| Step {
        state: f.state,
        rcs_delivered: f.rcs_delivered,
        rcs_inferred: f.rcs_inferred,
        in_doubt: f.in_doubt,
        sms_sid: f.sms_sid.clone(),
        sms_status: f.sms_status,
        due: Due::Keep,
        lease: Lease::Keep,
        action: None,
        event,
        note: None,
    };
    // Moving to another state ends the old state's work and any claim on it.
    let goto = |event: &'static str, state: State, due: Due| Step {
        state,
        due,
        lease: Lease::Release,
        in_doubt: false,
        ..base(event)
    };

    match input {
        Input::Delivered { read } => {
            let event = if *read { "rcs_read" } else { "rcs_delivered" };
            rcs_arrived(f, event, &base, &goto)
        }
        Input::TtlRevokeFailed => match (policy.on_uncertain, f.state) {
            (OnUncertain::Skip, _) => rcs_arrived(f, "ttl_revoke_failed", &base, &goto),
            // Only a DELIVERED or READ proves the arrival under this policy.
            (OnUncertain::SendSms, RcsSending | Pending | Revoking) => Verdict::Apply(Step {
                note: Some("Google could not revoke it at TTL expiry: waiting for a DELIVERED to prove it arrived"),
                ..goto("ttl_revoke_failed", Verifying, Due::In(policy.confirm_window))
            }),
            (OnUncertain::SendSms, _) => Verdict::Record {
                event: "ttl_revoke_failed",
                note: "not proof of delivery under on_uncertain send_sms",
            },
        },

        Input::TtlRevoked => match f.state {
            RcsSending | Pending | Revoking | Verifying => Verdict::Apply(goto(
                "ttl_revoked",
                Confirming,
                Due::In(policy.confirm_window),
            )),
            Confirming => Verdict::Record {
                event: "ttl_revoked",
                note: "already confirming the revocation",
            },
            // The 404 we read as "delivered" meant "expired": it never arrived.
            Delivered if f.rcs_inferred => Verdict::Apply(Step {
                rcs_delivered: false,
                rcs_inferred: false,
                note: Some("Google's TTL had removed it: the revoke's 404 did not mean delivered"),
                ..goto("ttl_revoked", Confirming, Due::In(policy.confirm_window))
            }),
            _ => Verdict::Record {
                event: "ttl_revoked",
                note: "arrived after the revocation was settled",
            },
        },

        Input::Cancel => match f.state {
            Pending => Verdict::Apply(goto("cancelled", Cancelled, Due::Never)),
            // Between two send attempts nothing is under way.
            RcsSending if !f.in_flight => {
                Verdict::Apply(goto("cancelled", Cancelled, Due::Never))
            }
            RcsSending => Verdict::Refuse {
                reason: "the RCS send is under way",
            },
            Cancelled => Verdict::Refuse {
                reason: "already cancelled",
            },
            s if s.is_final() => Verdict::Refuse {
                reason: "the message already reached its outcome",
            },
            _ => Verdict::Refuse {
                reason: "the fallback is already under way",
            },
        },

        Input::RcsSend(result) => {
            if f.state != RcsSending || !f.in_flight {
                return Verdict::Record {
                    event: rcs_send_event(result),
                    note: "late answer: the message had moved on",
                };
            }
            Verdict::Apply(match result {
                RcsSendResult::Sent => goto("rcs_sent", Pending, Due::AtDeadline),
                RcsSendResult::Unreachable { .. } => Step {
                    note: Some("not reachable over RCS: the SMS goes at once"),
                    ..goto("rcs_unreachable", SmsSending, Due::In(Duration::ZERO))
                },
                RcsSendResult::Rejected { .. } => goto("rcs_rejected", Failed, Due::Never),
                // An earlier send may have reached Google: take it back first.
                RcsSendResult::Expired if f.in_doubt => Step {
                    in_doubt: true,
                    note: Some("the deadline came while an earlier send may have reached Google"),
                    ..goto("rcs_send_expired", Revoking, Due::In(Duration::ZERO))
                },
                RcsSendResult::Expired => Step {
                    note: Some("the deadline came before the RCS could be sent"),
                    ..goto("rcs_send_expired", SmsSending, Due::In(Duration::ZERO))
                },
                RcsSendResult::Retry {
                    delay, ambiguous, ..
                } => Step {
                    in_doubt: f.in_doubt || *ambiguous,
                    due: Due::In(*delay),
                    lease: Lease::Release,
                    ..base("rcs_send_retry")
                },
            })
        }

        Input::Claim => claim(f, policy, &base, &goto),

        Input::Revoke(result) => {
            if f.state != Revoking || !f.in_flight {
                return Verdict::Record {
                    event: revoke_event(result),
                    note: "late answer: the message had moved on",
                };
            }
            Verdict::Apply(match result {
                RevokeResult::Revoked => goto(
                    "revoke_ok",
                    Confirming,
                    Due::In(policy.confirm_window),
                ),
                RevokeResult::NotFound if f.in_doubt => Step {
                    note: Some("404 after an unanswered DELETE: our own revoke may have removed it, so confirm instead of assuming delivery"),
                    ..goto("revoke_not_found", Confirming, Due::In(policy.confirm_window))
                },
                // Delivered, or already removed by Google's TTL: a DELIVERED
                // or a TTL event will say which, else the policy decides.
                RevokeResult::NotFound => goto(
                    "revoke_not_found",
                    Verifying,
                    Due::In(policy.confirm_window),
                ),
                RevokeResult::Retry {
                    delay, ambiguous, ..
                } => Step {
                    in_doubt: f.in_doubt || *ambiguous,
                    due: Due::In(*delay),
                    lease: Lease::Release,
                    ..base("revoke_retry")
                },
                RevokeResult::Rejected { .. } => goto("revoke_rejected", Failed, Due::Never),
            })
        }

        Input::Sms(result) => {
            if f.state != SmsSending || !f.in_flight {
                return Verdict::Record {
                    event: sms_event(result),
                    note: "late answer: the message had moved on",
                };
            }
            Verdict::Apply(match result {
                SmsResult::Accepted { sid, status, .. } => Step {
                    sms_sid: Some(sid.clone()),
                    sms_status: Some(*status),
                    ..goto("sms_accepted", status.message_state(), Due::Never)
                },
                SmsResult::NotSent => goto("sms_not_sent", Delivered, Due::Never),
                SmsResult::Rejected { .. } if f.rcs_delivered => {
                    goto("sms_rejected", Delivered, Due::Never)
                }
                SmsResult::Rejected { .. } => goto("sms_rejected", Failed, Due::Never),
                SmsResult::Retry {
                    delay, ambiguous, ..
                } => {
                    let in_doubt = f.in_doubt || *ambiguous;
                    if f.rcs_delivered && !in_doubt {
                        // Twilio surely has nothing and the RCS arrived: stop here.
                        Step {
                            note: Some("the RCS arrived; no SMS will be sent"),
                            ..goto("sms_retry", Delivered, Due::Never)
                        }
                    } else {
                        Step {
                            in_doubt,
                            due: Due::In(*delay),
                            lease: Lease::Release,
                            ..base("sms_retry")
                        }
                    }
                }
            })
        }

        Input::SmsStatus { sid, status } => sms_status(f, sid, *status, &base, &goto),
    }
}

/// DELIVERED, READ and TTL_EXPIRATION_REVOKE_FAILED all say the RCS reached
/// the phone.
fn rcs_arrived(
    f: &Facts,
    event: &'static str,
    base: &dyn Fn(&'static str) -> Step,
    goto: &dyn Fn(&'static str, State, Due) -> Step,
) -> Verdict {
    use State::*;
    let delivered = |step: Step| Step {
        rcs_delivered: true,
        rcs_inferred: false,
        ..step
    };
    match f.state {
        RcsSending | Pending | Revoking | Confirming | Verifying => {
            Verdict::Apply(delivered(goto(event, Delivered, Due::Never)))
        }
        // Nothing has gone to Twilio, or nothing could have arrived there:
        // the SMS is no longer needed.
        SmsSending if !f.in_flight && !f.in_doubt => {
            Verdict::Apply(delivered(goto(event, Delivered, Due::Never)))
        }
        _ if f.rcs_delivered && !f.rcs_inferred => Verdict::Record {
            event,
            note: "delivery already known",
        },
        Delivered => Verdict::Apply(Step {
            note: Some("confirms the delivery the revoke's 404 implied"),
            ..delivered(base(event))
        }),
        // An SMS may be on its way or already out: the state stays (never
        // backwards) and the outcome becomes "both" if the SMS went out.
        _ => Verdict::Apply(Step {
            note: Some("arrived after the SMS may have been sent"),
            ..delivered(base(event))
        }),
    }
}

fn claim(
    f: &Facts,
    policy: &Policy,
    base: &dyn Fn(&'static str) -> Step,
    goto: &dyn Fn(&'static str, State, Due) -> Step,
) -> Verdict {
    use State::*;
    let lease = Due::In(policy.lease);
    // A claim still set at the next claim means its holder died mid-call.
    let doubt = f.in_doubt || f.in_flight;
    let take = |step: Step, action: Action| {
        Verdict::Apply(Step {
            due: lease,
            lease: Lease::Take,
            action: Some(action),
            ..step
        })
    };
    let first_sms = |step: Step| {
        take(
            step,
            Action::SendSms {
                reconcile: false,
                may_send: true,
            },
        )
    };
    match f.state {
        RcsSending => take(
            Step {
                in_doubt: doubt,
                ..base("rcs_send_attempt")
            },
            Action::SendRcs,
        ),
        Pending => take(
            goto("revoke_attempt", Revoking, Due::Keep),
            Action::Revoke { after_doubt: false },
        ),
        Revoking => take(
            Step {
                in_doubt: doubt,
                ..base("revoke_attempt")
            },
            Action::Revoke { after_doubt: doubt },
        ),
        Confirming => unless_quiet(f, first_sms(goto("sms_attempt", SmsSending, Due::Keep)), base, goto),
        Verifying => match policy.on_uncertain {
            OnUncertain::Skip => Verdict::Apply(Step {
                rcs_delivered: true,
                rcs_inferred: true,
                note: Some("no DELIVERED within the confirm window; on_uncertain skip takes Google's word that it arrived"),
                ..goto("unconfirmed", Delivered, Due::Never)
            }),
            OnUncertain::SendSms => unless_quiet(
                f,
                first_sms(Step {
                    note: Some("no DELIVERED within the confirm window; on_uncertain send_sms sends the SMS"),
                    ..goto("sms_attempt", SmsSending, Due::Keep)
                }),
                base,
                goto,
            ),
        },
        SmsSending if f.rcs_delivered && !doubt => Verdict::Apply(Step {
            rcs_delivered: true,
            note: Some("the RCS arrived; no SMS will be sent"),
            ..goto("sms_not_sent", Delivered, Due::Never)
        }),
        // Nothing can have reached Twilio yet.
        SmsSending if !doubt => unless_quiet(f, first_sms(base("sms_attempt")), base, goto),
        SmsSending => take(
            Step {
                in_doubt: doubt,
                ..base("sms_attempt")
            },
            Action::SendSms {
                reconcile: doubt,
                may_send: !f.rcs_delivered,
            },
        ),
        // Due work on a state that has none: a leftover; clear it.
        _ => Verdict::Apply(Step {
            due: Due::Never,
            lease: Lease::Release,
            note: Some("nothing to do in this state"),
            ..base("claim_ignored")
        }),
    }
}

fn sms_status(
    f: &Facts,
    sid: &str,
    status: SmsStatus,
    base: &dyn Fn(&'static str) -> Step,
    goto: &dyn Fn(&'static str, State, Due) -> Step,
) -> Verdict {
    use State::*;
    if f.sms_sid.as_deref().is_some_and(|known| known != sid) {
        return Verdict::Record {
            event: "sms_status",
            note: "callback for an SMS this message did not send",
        };
    }
    match f.state {
        // The callback beat the worker's own record of the send (or the
        // response was lost): it proves Twilio took the message.
        SmsSending => Verdict::Apply(Step {
            sms_sid: Some(sid.to_owned()),
            sms_status: Some(status),
            ..goto("sms_status", status.message_state(), Due::Never)
        }),
        SmsSent | SmsDelivered | SmsFailed => {
            let newer = f
                .sms_status
                .is_none_or(|known| status.rank() > known.rank());
            if !newer {
                return Verdict::Record {
                    event: "sms_status",
                    note: "older than the status already known",
                };
            }
            let state = status.message_state();
            Verdict::Apply(Step {
                sms_sid: Some(sid.to_owned()),
                sms_status: Some(status),
                ..if state == f.state {
                    base("sms_status")
                } else {
                    goto("sms_status", state, Due::Never)
                }
            })
        }
        _ => Verdict::Record {
            event: "sms_status",
            note: "no SMS is expected for this message",
        },
    }
}

/// The first SMS attempt, unless the recipient's quiet hours hold it back
/// (or, by the message's policy, drop it).
fn unless_quiet(
    f: &Facts,
    send: Verdict,
    base: &dyn Fn(&'static str) -> Step,
    goto: &dyn Fn(&'static str, State, Due) -> Step,
) -> Verdict {
    match f.sms_window {
        SmsWindow::Open => send,
        SmsWindow::WaitFor(wait) => Verdict::Apply(Step {
            due: Due::In(wait),
            lease: Lease::Release,
            note: Some("quiet hours at the recipient: the SMS waits until they end"),
            ..base("sms_deferred")
        }),
        SmsWindow::Closed => Verdict::Apply(Step {
            note: Some("quiet hours at the recipient: the message's policy drops the SMS"),
            ..goto("sms_dropped", State::SmsSkipped, Due::Never)
        }),
    }
}

fn rcs_send_event(r: &RcsSendResult) -> &'static str {
    match r {
        RcsSendResult::Sent => "rcs_sent",
        RcsSendResult::Unreachable { .. } => "rcs_unreachable",
        RcsSendResult::Rejected { .. } => "rcs_rejected",
        RcsSendResult::Expired => "rcs_send_expired",
        RcsSendResult::Retry { .. } => "rcs_send_retry",
    }
}

fn revoke_event(r: &RevokeResult) -> &'static str {
    match r {
        RevokeResult::Revoked => "revoke_ok",
        RevokeResult::NotFound => "revoke_not_found",
        RevokeResult::Retry { .. } => "revoke_retry",
        RevokeResult::Rejected { .. } => "revoke_rejected",
    }
}

fn sms_event(r: &SmsResult) -> &'static str {
    match r {
        SmsResult::Accepted { .. } => "sms_accepted",
        SmsResult::NotSent => "sms_not_sent",
        SmsResult::Rejected { .. } => "sms_rejected",
        SmsResult::Retry { .. } => "sms_retry",
    }
}

#[cfg(test)]
#[path = "machine_tests.rs"]
mod tests;
