//! The fallback domain, free of HTTP and SQL: the vocabulary of a message's
//! life, the state machine that moves it, and the small rules around it.

pub mod backoff;
pub mod machine;
pub mod phone;
pub mod policy;
pub mod quiet;
pub mod ratelimit;
pub mod rbm_content;
pub mod sms_text;
pub mod state;

pub use machine::{
    apply, Action, Due, Facts, Input, Lease, OnUncertain, Policy, RcsSendResult, RevokeResult,
    SmsResult, SmsWindow, Step, Verdict, RCS_TTL_MARGIN,
};
pub use phone::Phone;
pub use state::{Outcome, SmsStatus, State};
