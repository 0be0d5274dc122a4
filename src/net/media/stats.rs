//! A relay's counters, shared between its media thread (the only writer) and its handle.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters shared with the handle; updated with relaxed atomics by the relay's media thread only.
#[derive(Debug, Default)]
pub struct RelayStats {
    /// RTP received on leg A from its peer (caller→agent input).
    pub a_in: AtomicU64,
    /// RTP sent out of leg B (caller→agent output, scrubbed).
    pub b_out: AtomicU64,
    /// RTP received on leg B from its peer (agent→caller input).
    pub b_in: AtomicU64,
    /// RTP sent out of leg A (agent→caller output).
    pub a_out: AtomicU64,
    pub rtcp_a_in: AtomicU64,
    pub rtcp_b_out: AtomicU64,
    pub rtcp_b_in: AtomicU64,
    pub rtcp_a_out: AtomicU64,
    /// Packets from a source that is not the (latched) peer, RTP and RTCP.
    pub dropped_stranger: AtomicU64,
    /// Times a leg's latch moved to another source (RTP and RTCP, both legs).
    pub relatched: AtomicU64,
    /// Packets the scrubber refused (malformed, uninspectable, duplicates…).
    pub dropped_scrubber: AtomicU64,
    /// Packets with nowhere to go yet (the other leg has no peer).
    pub dropped_no_peer: AtomicU64,
    /// SRTP/SRTCP that failed authentication (or could not be read or protected), both legs.
    pub dropped_srtp_auth: AtomicU64,
    /// SRTP/SRTCP replayed or too old for the replay window, both legs.
    pub dropped_srtp_replay: AtomicU64,
    pub send_errors: AtomicU64,
    pub recv_errors: AtomicU64,
    /// Samples changed by masking on the agent leg.
    pub samples_masked: AtomicU64,
    /// RFC 4733 telephone-event packets replaced by masking audio on the agent leg.
    pub events_stripped: AtomicU64,
    /// Digits heard (sent to capture).
    pub digits: AtomicU64,
    /// Digits lost because the capture channel was full or closed.
    pub digits_lost: AtomicU64,
    /// Keys heard on the agent→caller direction (when listening for them).
    pub agent_digits: AtomicU64,
    /// Agent keys lost because their channel was full or closed.
    pub agent_digits_lost: AtomicU64,
}

/// A plain copy of [`RelayStats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RelayStatsSnapshot {
    pub a_in: u64,
    pub b_out: u64,
    pub b_in: u64,
    pub a_out: u64,
    pub rtcp_a_in: u64,
    pub rtcp_b_out: u64,
    pub rtcp_b_in: u64,
    pub rtcp_a_out: u64,
    pub dropped_stranger: u64,
    pub relatched: u64,
    pub dropped_scrubber: u64,
    pub dropped_no_peer: u64,
    pub dropped_srtp_auth: u64,
    pub dropped_srtp_replay: u64,
    pub send_errors: u64,
    pub recv_errors: u64,
    pub samples_masked: u64,
    pub events_stripped: u64,
    pub digits: u64,
    pub digits_lost: u64,
    pub agent_digits: u64,
    pub agent_digits_lost: u64,
}

impl RelayStats {
    pub fn snapshot(&self) -> RelayStatsSnapshot {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        RelayStatsSnapshot {
            a_in: g(&self.a_in),
            b_out: g(&self.b_out),
            b_in: g(&self.b_in),
            a_out: g(&self.a_out),
            rtcp_a_in: g(&self.rtcp_a_in),
            rtcp_b_out: g(&self.rtcp_b_out),
            rtcp_b_in: g(&self.rtcp_b_in),
            rtcp_a_out: g(&self.rtcp_a_out),
            dropped_stranger: g(&self.dropped_stranger),
            relatched: g(&self.relatched),
            dropped_scrubber: g(&self.dropped_scrubber),
            dropped_no_peer: g(&self.dropped_no_peer),
            dropped_srtp_auth: g(&self.dropped_srtp_auth),
            dropped_srtp_replay: g(&self.dropped_srtp_replay),
            send_errors: g(&self.send_errors),
            recv_errors: g(&self.recv_errors),
            samples_masked: g(&self.samples_masked),
            events_stripped: g(&self.events_stripped),
            digits: g(&self.digits),
            digits_lost: g(&self.digits_lost),
            agent_digits: g(&self.agent_digits),
            agent_digits_lost: g(&self.agent_digits_lost),
        }
    }
}
