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

/// How long the emulators' clients (and the sandbox's) keep an idle
/// connection to the service: below its idle keep-alive limit
/// (`server.header_timeout_ms`, 10 s by default), so that a client never
/// reuses a connection the service is closing at that moment, which fails
/// the request sent on it.
pub const CLIENT_IDLE: std::time::Duration = std::time::Duration::from_secs(5);
