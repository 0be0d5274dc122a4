//! Shells around the sans-IO cores: RTP sockets and the port pool, SIP transports, the control
//! API and metrics on tokio; the media relays on event loops of their own (`media::workers`), where a
//! tokio task per call cost more per packet than the scrubber. They own sockets, timers and
//! tasks and feed the cores; protocol and DSP rules live in `sip`, `rtp`, `dsp` and `payment`.

pub mod api;
pub mod calls;
pub mod clock;
pub mod drain;
pub mod fuzz;
pub mod http;
pub mod limits;
pub mod media;
pub mod metrics;
pub mod ports;
mod recording;
pub mod run;
pub mod sip;
#[cfg(feature = "tools")]
pub mod ua;
