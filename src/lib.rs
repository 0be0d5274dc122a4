//! tonewall: a SIP/RTP media relay that keeps payment-card DTMF out of the contact centre.
//!
//! # Layout
//!
//! Layers, top to bottom; a module imports only from the layers below it (`ARCHITECTURE.md`
//! has the map, the flows and the invariants):
//!
//! - the binary (`main.rs`), and the offline tools behind the default `tools` feature:
//!   [`demo`], [`tools`] (`tonewall scrub`), [`spectrogram`], `net::ua` (the test user agent);
//! - [`net`]: the shells. They own sockets, threads and tasks and read the clock: the SIP
//!   transports and core task (`net::sip`), the media threads (`net::media`), the control API
//!   (`net::api`), metrics, ports, recording, start-up (`net::run`);
//! - [`call`]: the call core, sans-IO: one call's policy on top of the B2BUA (route flags,
//!   where keys go, the pre-bridge phase, relay start and update, announcements);
//! - the sans-IO cores: [`sip`] (messages, SDP, transactions, dialogs, the B2BUA), [`rtp`]
//!   (packets, events, latch, scrubber, recorder logic), [`dsp`] (G.711, Goertzel, the DTMF
//!   detectors, masking, the auditor's FFT), [`payment`] (cards, capture, sessions, the desk,
//!   the vault and its stores); and [`config`] beside them;
//! - values every layer shares: [`ids`] (`CallId`), [`digit`] (`Digit`).
//!
//! The cores take input and the current time and return outputs; none opens a socket, spawns a
//! task or reads a clock, so each is tested on a virtual clock without a network.

pub mod call;
pub mod config;
#[cfg(feature = "tools")]
pub mod demo;
pub mod digit;
pub mod dsp;
pub mod ids;
pub mod logging;
pub mod net;
pub mod payment;
pub mod process;
pub mod rtp;
pub mod sip;
#[cfg(feature = "tools")]
pub mod spectrogram;
#[cfg(feature = "tools")]
pub mod tools;
pub mod wav;
