//! The per-direction scrubber: RTP in → sanitized RTP out, plus digit events.
