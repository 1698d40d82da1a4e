//! Google emulator (being written).
