//! Loopback emulators of Google (OAuth + RBM API + a population of phones that
//! send signed webhooks) and of Twilio (Messages API + signed status
//! callbacks). They speak the real wire formats, so the service reaches them
//! only through its ordinary base-URL configuration.
//!
//! Both can misbehave on demand ([`faults`]): errors, hangs, resets, lost
//! answers and slowness of their APIs, and duplicated, reordered or lost
//! webhooks and callbacks, switchable at run time.

mod conn;
pub mod faults;
pub mod google;
pub mod twilio;

pub use faults::{parse_faults, GoogleFaults, TwilioFaults};
