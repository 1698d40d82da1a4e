//! Twilio emulator (being written).
