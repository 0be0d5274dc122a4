//! Attacks on the api surface (see main.rs).
