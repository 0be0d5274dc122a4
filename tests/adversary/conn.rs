//! Attacks on the conn surface (see main.rs).
