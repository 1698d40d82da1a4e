//! rbm-fallback: revoke RCS Business Messaging messages that miss their
//! deadline and send them again as SMS, but only once the revocation is known
//! to have worked.
//!
//! The map: [`domain`] holds the state machine (no I/O); [`store`] is the
//! PostgreSQL side, where every transition is one transaction; [`http`] is the
//! internal API and the webhooks; [`worker`] claims due work and calls
//! [`google`] and [`twilio`]; [`app`] wires them; [`emulator`] and
//! [`sandbox`] stand in for Google and Twilio.

pub mod allocator;
pub mod app;
pub mod applier;
pub mod bench;
pub mod chaos;
pub mod check_config;
pub mod config;
pub mod domain;
pub mod emulator;
pub mod google;
pub mod http;
pub mod metrics;
pub mod outbound;
pub mod outbox;
pub mod sandbox;
pub mod signature;
pub mod store;
pub mod telemetry;
pub mod twilio;
pub mod worker;
