//! Loopback emulators of Google (OAuth + RBM API + a population of phones that
//! send signed webhooks) and of Twilio (Messages API + signed status
//! callbacks). They speak the real wire formats, so the service reaches them
//! only through its ordinary base-URL configuration.

pub mod google;
pub mod twilio;
