//! Attacks on the media surface (see main.rs).
