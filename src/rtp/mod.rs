//! Pure RTP logic: header views, RFC 4733 events, the per-direction scrubber, and the decisions
//! of the media relay and the call recorder (latching, timing, the recording's layout).

pub mod announce;
pub mod clock;
pub mod event;
pub mod fuzz;
pub mod latch;
pub mod packet;
pub mod record;
pub mod scrubber;
pub mod srtp;
pub mod trunk;
