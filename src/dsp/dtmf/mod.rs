//! DTMF detection. Two signals from one Goertzel front end (ARCHITECTURE.md, "The DTMF engine"):
//! a strict Q.24 digit decision for capture and scan, and a fast presence signal for masking.
//!
//! Both work on 16-sample steps from [`Bank`], phase-referenced to the absolute sample index.
//! The strict detector sums them into 96-sample blocks (12 ms) and measures each tone's
//! frequency from the phase advance between the block's halves, which is what lets it accept
//! ±1.5 % and reject ±3.5 % with a block far too short to resolve that by magnitude alone.
//! The presence detector sums the last three steps (48 samples) every 2 ms: coarse in
//! frequency but quick, so with `delay` samples of look-ahead it can mask a tone from before its
//! first sample. Neither allocates or reads a clock; sample offsets are the only time.
//!
//! `strict` and `presence` are the two detectors, `both` feeds them from one bank, and `simd`
//! holds the vectorisable helpers they share.

mod both;
mod presence;
mod simd;
mod strict;
#[cfg(test)]
mod testkit;

pub use both::process_both;
pub use presence::{PresenceConfig, PresenceDetector};
pub use strict::{DetectorConfig, DigitEvent, DtmfDetector};
