//! tonewall: a SIP/RTP media relay that keeps payment-card DTMF out of the contact centre.
//!
//! The protocol and DSP modules (`dsp`, `rtp`, `sip`, `payment`) are sans-IO cores: they take
//! input and the current time and return outputs. The tokio shells live in `net`.

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
