//! Attacks on the sip surface (see main.rs).
