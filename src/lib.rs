//! rbm-fallback: revoke RCS Business Messaging messages that miss their
//! deadline and send them again as SMS, but only once the revocation is known
//! to have worked.

pub mod domain;
pub mod emulator;
pub mod signature;
