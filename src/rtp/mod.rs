//! Pure RTP logic: header views, RFC 4733 events and the per-direction scrubber.

pub mod announce;
pub mod event;
pub mod fuzz;
pub mod latch;
pub mod packet;
pub mod record;
pub mod scrubber;
pub mod trunk;
