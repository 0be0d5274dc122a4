//! Attacks on a running tonewall, written as an outsider would make them: from an address off
//! the allow-list (127.0.0.2), with guessed and with correct identifiers. Each module is one
//! surface; each test is one attack that must fail.

#[path = "../common/mod.rs"]
mod common;

mod api;
mod conn;
mod media;
mod scrub;
mod sip;
