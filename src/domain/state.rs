//! The vocabulary of a message's life. The string forms are part of the API
//! and of the database schema (a CHECK constraint lists them), so they never
//! change once published.

use std::fmt;
use std::str::FromStr;

macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl FromStr for $name {
            type Err = UnknownValue;
            fn from_str(s: &str) -> Result<Self, UnknownValue> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(UnknownValue { kind: stringify!($name), value: s.to_owned() }),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }
    };
}

string_enum! {
    /// Where a message is in its life.
    State {
        RcsSending => "rcs_sending",
        Pending => "pending",
        Revoking => "revoking",
        Confirming => "confirming",
        Verifying => "verifying",
        SmsSending => "sms_sending",
        SmsSent => "sms_sent",
        SmsDelivered => "sms_delivered",
        SmsFailed => "sms_failed",
        SmsSkipped => "sms_skipped",
        Delivered => "delivered",
        Cancelled => "cancelled",
        Failed => "failed",
    }
}

string_enum! {
    /// What reached the user, as far as we know.
    Outcome {
        Rcs => "rcs",
        Sms => "sms",
        Both => "both",
        None => "none",
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unknown {kind} {value:?}")]
pub struct UnknownValue {
    pub kind: &'static str,
    pub value: String,
}

impl State {
    /// No more work will ever be scheduled for a message in a final state.
    /// `sms_sent` is not final: Twilio's callbacks may still move it.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            State::SmsDelivered
                | State::SmsFailed
                | State::SmsSkipped
                | State::Delivered
                | State::Cancelled
                | State::Failed
        )
    }

    /// Work of our own is still to come: not final, and not `sms_sent`,
    /// which waits only on Twilio's callbacks with its outcome already `sms`.
    pub fn unsettled(self) -> bool {
        !self.is_final() && self != State::SmsSent
    }

    /// The names of the [`State::unsettled`] states, for SQL filters.
    pub fn unsettled_names() -> Vec<String> {
        State::ALL
            .iter()
            .filter(|s| s.unsettled())
            .map(|s| s.as_str().to_owned())
            .collect()
    }

    /// Twilio has taken the SMS and not (yet) reported it failed.
    pub fn sms_reached(self) -> bool {
        matches!(self, State::SmsSent | State::SmsDelivered)
    }
}

impl Outcome {
    /// The outcome is a function of two facts, never stored independently of
    /// them, so it cannot disagree with the history.
    pub fn of(state: State, rcs_delivered: bool) -> Outcome {
        match (rcs_delivered, state.sms_reached()) {
            (true, true) => Outcome::Both,
            (true, false) => Outcome::Rcs,
            (false, true) => Outcome::Sms,
            (false, false) => Outcome::None,
        }
    }
}

/// Twilio's message statuses, ranked so that callbacks can be applied
/// monotonically: a late "sent" never overwrites "delivered".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SmsStatus {
    Accepted,
    Scheduled,
    Queued,
    Sending,
    Sent,
    Delivered,
    Read,
    Undelivered,
    Failed,
    Canceled,
}

impl SmsStatus {
    pub fn parse(s: &str) -> Option<SmsStatus> {
        Some(match s {
            "accepted" => SmsStatus::Accepted,
            "scheduled" => SmsStatus::Scheduled,
            "queued" => SmsStatus::Queued,
            "sending" => SmsStatus::Sending,
            "sent" => SmsStatus::Sent,
            "delivered" => SmsStatus::Delivered,
            "read" => SmsStatus::Read,
            "undelivered" => SmsStatus::Undelivered,
            "failed" => SmsStatus::Failed,
            "canceled" => SmsStatus::Canceled,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SmsStatus::Accepted => "accepted",
            SmsStatus::Scheduled => "scheduled",
            SmsStatus::Queued => "queued",
            SmsStatus::Sending => "sending",
            SmsStatus::Sent => "sent",
            SmsStatus::Delivered => "delivered",
            SmsStatus::Read => "read",
            SmsStatus::Undelivered => "undelivered",
            SmsStatus::Failed => "failed",
            SmsStatus::Canceled => "canceled",
        }
    }

    /// Position in Twilio's lifecycle. Final statuses share the top rank: once
    /// one is known, no other status replaces it.
    pub fn rank(self) -> u8 {
        match self {
            SmsStatus::Accepted | SmsStatus::Scheduled => 0,
            SmsStatus::Queued => 1,
            SmsStatus::Sending => 2,
            SmsStatus::Sent => 3,
            SmsStatus::Delivered
            | SmsStatus::Read
            | SmsStatus::Undelivered
            | SmsStatus::Failed
            | SmsStatus::Canceled => 4,
        }
    }

    /// The message state this SMS status puts a sent message in.
    pub fn message_state(self) -> State {
        match self {
            SmsStatus::Delivered | SmsStatus::Read => State::SmsDelivered,
            SmsStatus::Undelivered | SmsStatus::Failed | SmsStatus::Canceled => State::SmsFailed,
            _ => State::SmsSent,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_is_left_before_the_sms_is_out() {
        assert_eq!(
            State::unsettled_names(),
            [
                "rcs_sending",
                "pending",
                "revoking",
                "confirming",
                "verifying",
                "sms_sending"
            ]
        );
    }

    #[test]
    fn string_forms_round_trip() {
        for s in State::ALL {
            assert_eq!(s.as_str().parse::<State>().unwrap(), *s);
        }
        for o in Outcome::ALL {
            assert_eq!(o.as_str().parse::<Outcome>().unwrap(), *o);
        }
        assert!("Pending".parse::<State>().is_err());
    }

    #[test]
    fn outcome_follows_the_two_facts() {
        assert_eq!(Outcome::of(State::Pending, false), Outcome::None);
        assert_eq!(Outcome::of(State::Delivered, true), Outcome::Rcs);
        assert_eq!(Outcome::of(State::SmsSent, false), Outcome::Sms);
        assert_eq!(Outcome::of(State::SmsDelivered, true), Outcome::Both);
        assert_eq!(Outcome::of(State::SmsFailed, true), Outcome::Rcs);
        assert_eq!(Outcome::of(State::SmsFailed, false), Outcome::None);
    }

    #[test]
    fn final_sms_statuses_outrank_everything() {
        assert!(SmsStatus::Delivered.rank() > SmsStatus::Sent.rank());
        assert!(SmsStatus::Sent.rank() > SmsStatus::Queued.rank());
        assert_eq!(SmsStatus::Undelivered.rank(), SmsStatus::Delivered.rank());
        assert_eq!(SmsStatus::parse("nonsense"), None);
    }
}
