//! Who a media leg's peer is, and whether a datagram came from it: the address the peer's SDP
//! gave, or the source the leg latched on (symmetric RTP, RFC 4961; latching, RFC 7362 §4).
//!
//! Owns the rules that keep a stranger from taking a leg. A stranger that owns a leg receives
//! the call's audio and has its own audio relayed to the other side, so the rules favour the
//! address the signalling vouched for:
//!
//! 1. A packet from exactly the SDP address (IP and port) is always the peer, and latches at
//!    once, whatever the leg had latched before.
//! 2. A packet from the latched source is the peer.
//! 3. While the leg has latched on nothing and heard nothing from the SDP address, a source on
//!    the SDP's IP with another port (a NAT that rewrote the port) is put on probation: its
//!    packets are dropped, the leg keeps sending to the SDP address, and it latches only after
//!    `NAT_GRACE_MS` of one RTP stream (one SSRC, sequence numbers going forward) with still
//!    nothing from the SDP address. A same-host stranger that speaks first is therefore dropped,
//!    and loses the leg for good the moment the real peer is heard.
//! 4. Once latched, the latch moves to another source only if that source carries on the
//!    latched stream: the same SSRC, a sequence number at most `RELATCH_WINDOW` ahead of the
//!    last one (RFC 3550 §A.1 keeps a source valid across such a step), and the latched source
//!    quiet for `RELATCH_QUIET_MS`, so that nobody can interleave packets with a live peer (a
//!    media server handing a stream over stops the old source first).
//! 5. Everything else is a stranger: dropped by the caller and counted.
//!
//! With no SDP address (a leg whose peer is not known yet), the first sender latches: there is
//! no address to prefer.
//!
//! A re-INVITE that changes the SDP address starts the leg over (see [`Latch::update`]): the
//! new address is the peer, any SSRC it sends is accepted (a new address is usually a new media
//! source with a new SSRC), the old latch stays only if it is exactly the new SDP address, and
//! the stream continuation is forgotten, so a new SSRC from anywhere else is a stranger. A
//! re-INVITE that keeps the address changes nothing; the latched source may change its SSRC at
//! any time, as its address is the proof.
//!
//! RTCP carries no sequence number: it is accepted from the SDP's RTCP address (RFC 3550 §11:
//! the RTP port plus one) or, once RTP has latched, from the latched IP with the SDP's RTCP port
//! or the latched port plus one, and from nothing else.
//!
//! Sans-IO and on the per-packet path: time is passed in, nothing allocates, logs or locks, and
//! only the 12-byte fixed RTP header is read.

use std::net::{IpAddr, SocketAddr};

use super::packet::FIXED_HEADER_LEN;

/// How far ahead of the last sequence number a stream may go on at a new source (RFC 3550
/// §A.1 style): 2 s of 20 ms packets, enough for the packets lost while a stream moves.
pub const RELATCH_WINDOW: u16 = 100;
/// How long the latched source must have been quiet before its stream may go on elsewhere:
/// longer than any packet interval in use (60 ms at most on the trunks we see).
pub const RELATCH_QUIET_MS: u64 = 200;
/// How long a source on the SDP's IP but another port must send one stream, with nothing from
/// the SDP address, before it may latch (the NAT case): time for the real peer to be heard.
pub const NAT_GRACE_MS: u64 = 1000;

/// What to do with one datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admit {
    /// From the peer: relay it.
    Peer,
    /// From the peer, at a source the latch has just moved to: relay it.
    Moved,
    /// Not from the peer: drop it and count it.
    Stranger,
}

impl Admit {
    pub fn is_peer(self) -> bool {
        !matches!(self, Admit::Stranger)
    }
}

/// The SSRC and sequence number of an RTP packet's fixed header (RFC 3550 §5.1), if it has a
/// version-2 one. Reads 12 bytes and nothing more.
pub fn stream_of(pkt: &[u8]) -> Option<(u32, u16)> {
    let h = pkt.first_chunk::<FIXED_HEADER_LEN>()?;
    if h[0] >> 6 != 2 {
        return None;
    }
    let seq = u16::from_be_bytes([h[2], h[3]]);
    let ssrc = u32::from_be_bytes([h[8], h[9], h[10], h[11]]);
    Some((ssrc, seq))
}

/// Whether `seq` is after `last` by 1 to `window` (modulo 2^16, RFC 3550 §A.1).
fn ahead(last: u16, seq: u16, window: u16) -> bool {
    let d = seq.wrapping_sub(last);
    (1..=window).contains(&d)
}

/// IP equality that sees an IPv4-mapped IPv6 source as its IPv4 address (dual-stack sockets).
fn same_ip(a: IpAddr, b: IpAddr) -> bool {
    a.to_canonical() == b.to_canonical()
}

fn same_addr(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port() && same_ip(a.ip(), b.ip())
}

/// The RTCP address implied by an RTP address (RFC 3550 §11: the next port up).
pub fn rtcp_of(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip(), a.port().wrapping_add(1))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stream {
    ssrc: u32,
    seq: u16,
}

/// A source on the SDP's IP with another port, on probation (rule 3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Candidate {
    src: SocketAddr,
    stream: Stream,
    since_ms: u64,
}

/// One leg's peer, for RTP and RTCP. Times are milliseconds on any clock that only goes
/// forward.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Latch {
    sdp: Option<SocketAddr>,
    latched: Option<SocketAddr>,
    /// Something came from exactly `sdp` since it was set: no probation any more.
    sdp_heard: bool,
    /// The latched source's stream, from its last packet that went forward.
    stream: Option<Stream>,
    /// When the latched source was last heard.
    last_ms: u64,
    candidate: Option<Candidate>,
    /// Where RTCP last came from (an address `rtcp_allowed` admits).
    rtcp_heard: Option<SocketAddr>,
}

impl Latch {
    /// A leg whose peer's SDP gave `sdp` (None: not known; the first sender latches).
    pub fn new(sdp: Option<SocketAddr>) -> Latch {
        Latch {
            sdp,
            ..Latch::default()
        }
    }

    /// The SDP address.
    pub fn sdp(&self) -> Option<SocketAddr> {
        self.sdp
    }

    /// The source the leg has latched on, if any.
    pub fn latched(&self) -> Option<SocketAddr> {
        self.latched
    }

    /// Judges an RTP datagram `pkt` from `src` at `now_ms`; see the module's rules.
    pub fn accept_rtp(&mut self, src: SocketAddr, pkt: &[u8], now_ms: u64) -> Admit {
        let hdr = stream_of(pkt);
        if self.latched == Some(src) {
            self.heard(hdr, now_ms);
            return Admit::Peer;
        }
        // Rule 1: the SDP address is the peer, whatever held the latch.
        if self.sdp.is_some_and(|s| same_addr(s, src)) {
            let moved = self.latched.is_some();
            self.sdp_heard = true;
            self.candidate = None;
            self.take(src, hdr, now_ms);
            return if moved { Admit::Moved } else { Admit::Peer };
        }
        let Some(sdp) = self.sdp else {
            if self.latched.is_none() {
                self.take(src, hdr, now_ms);
                return Admit::Peer;
            }
            return self.carry_on(src, hdr, now_ms);
        };
        if self.latched.is_some() {
            return self.carry_on(src, hdr, now_ms);
        }
        if !self.sdp_heard && same_ip(sdp.ip(), src.ip()) {
            return self.probation(src, hdr, now_ms);
        }
        Admit::Stranger
    }

    /// Rule 4: another source carrying on the latched stream after the latched source went
    /// quiet.
    fn carry_on(&mut self, src: SocketAddr, hdr: Option<(u32, u16)>, now_ms: u64) -> Admit {
        let (Some((ssrc, seq)), Some(st)) = (hdr, self.stream) else {
            return Admit::Stranger;
        };
        if ssrc != st.ssrc
            || !ahead(st.seq, seq, RELATCH_WINDOW)
            || now_ms.saturating_sub(self.last_ms) < RELATCH_QUIET_MS
        {
            return Admit::Stranger;
        }
        self.take(src, hdr, now_ms);
        Admit::Moved
    }

    /// Rule 3: a source on the SDP's IP, another port, while the SDP address is silent.
    fn probation(&mut self, src: SocketAddr, hdr: Option<(u32, u16)>, now_ms: u64) -> Admit {
        let Some((ssrc, seq)) = hdr else {
            return Admit::Stranger;
        };
        match self.candidate.as_mut() {
            Some(c) if c.src == src && c.stream.ssrc == ssrc => {
                if ahead(c.stream.seq, seq, u16::MAX / 2) {
                    c.stream.seq = seq;
                }
                if now_ms.saturating_sub(c.since_ms) < NAT_GRACE_MS {
                    return Admit::Stranger;
                }
                self.candidate = None;
                self.take(src, hdr, now_ms);
                Admit::Moved
            }
            // A new source or a new stream starts the wait over: two sources taking turns
            // latch neither.
            _ => {
                self.candidate = Some(Candidate {
                    src,
                    stream: Stream { ssrc, seq },
                    since_ms: now_ms,
                });
                Admit::Stranger
            }
        }
    }

    fn take(&mut self, src: SocketAddr, hdr: Option<(u32, u16)>, now_ms: u64) {
        self.latched = Some(src);
        self.stream = None;
        self.heard(hdr, now_ms);
    }

    /// Notes a packet from the latched source: its stream, when it went forward.
    fn heard(&mut self, hdr: Option<(u32, u16)>, now_ms: u64) {
        self.last_ms = now_ms;
        let Some((ssrc, seq)) = hdr else {
            return;
        };
        match self.stream.as_mut() {
            // Late and repeated packets leave the last sequence number where it was.
            Some(st) if st.ssrc == ssrc => {
                if ahead(st.seq, seq, u16::MAX / 2) {
                    st.seq = seq;
                }
            }
            // A new SSRC from the latched source (or its first packet): its address is proof.
            _ => self.stream = Some(Stream { ssrc, seq }),
        }
    }

    /// Where the leg's RTP goes: the latched source, else the SDP address.
    pub fn dest(&self) -> Option<SocketAddr> {
        self.latched.or(self.sdp)
    }

    /// Whether RTCP from `src` is the peer's; see the module's note on RTCP.
    fn rtcp_allowed(&self, src: SocketAddr) -> bool {
        if self.sdp.is_some_and(|s| same_addr(rtcp_of(s), src)) {
            return true;
        }
        let Some(l) = self.latched else {
            return false;
        };
        if !same_ip(l.ip(), src.ip()) {
            return false;
        }
        src.port() == l.port().wrapping_add(1)
            || self.sdp.is_some_and(|s| rtcp_of(s).port() == src.port())
    }

    /// Judges an RTCP datagram from `src`.
    pub fn accept_rtcp(&mut self, src: SocketAddr) -> Admit {
        if self.rtcp_heard == Some(src) && self.rtcp_allowed(src) {
            return Admit::Peer;
        }
        if self.rtcp_allowed(src) {
            let moved = self.rtcp_heard.is_some();
            self.rtcp_heard = Some(src);
            return if moved { Admit::Moved } else { Admit::Peer };
        }
        Admit::Stranger
    }

    /// Where the leg's RTCP goes: where the peer's RTCP comes from, else the RTCP port of the
    /// SDP address (or of the latched source when there is no SDP address).
    pub fn rtcp_dest(&self) -> Option<SocketAddr> {
        self.rtcp_heard
            .filter(|&h| self.rtcp_allowed(h))
            .or(self.sdp.map(rtcp_of))
            .or(self.latched.map(rtcp_of))
    }

    /// A new SDP address (re-INVITE). Unchanged: nothing changes. Changed: the leg starts over
    /// with the new address as its peer; the latch is kept only if it is exactly that address,
    /// and the stream is forgotten, so that a new SSRC is taken from the new address (and from
    /// nowhere else).
    pub fn update(&mut self, sdp: Option<SocketAddr>) {
        if sdp == self.sdp {
            return;
        }
        let keep = match (self.latched, sdp) {
            (Some(l), Some(s)) => same_addr(l, s),
            _ => false,
        };
        *self = Latch {
            sdp,
            latched: if keep { self.latched } else { None },
            sdp_heard: keep,
            last_ms: self.last_ms,
            ..Latch::default()
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn rtp(ssrc: u32, seq: u16) -> [u8; 172] {
        let mut p = [0u8; 172];
        p[0] = 0x80;
        p[2..4].copy_from_slice(&seq.to_be_bytes());
        p[8..12].copy_from_slice(&ssrc.to_be_bytes());
        p
    }

    const SDP: &str = "192.0.2.10:4000";
    const NAT: &str = "192.0.2.10:61000";

    #[test]
    fn sdp_address_latches_at_once() {
        let mut l = Latch::new(Some(sa(SDP)));
        assert_eq!(l.dest(), Some(sa(SDP)));
        assert_eq!(l.accept_rtp(sa(SDP), &rtp(1, 10), 0), Admit::Peer);
        assert_eq!(l.latched(), Some(sa(SDP)));
        assert_eq!(l.accept_rtp(sa(SDP), &rtp(1, 11), 20), Admit::Peer);
    }

    #[test]
    fn stranger_ip_is_refused() {
        let mut l = Latch::new(Some(sa(SDP)));
        assert_eq!(
            l.accept_rtp(sa("198.51.100.7:4000"), &rtp(1, 1), 0),
            Admit::Stranger
        );
        assert_eq!(l.latched(), None);
    }

    #[test]
    fn same_host_stranger_speaking_first_never_gets_the_leg() {
        let mut l = Latch::new(Some(sa(SDP)));
        for i in 0..40u16 {
            let t = u64::from(i) * 20;
            assert_eq!(l.accept_rtp(sa(NAT), &rtp(7, i), t), Admit::Stranger);
            assert_eq!(
                l.dest(),
                Some(sa(SDP)),
                "audio keeps going to the SDP address"
            );
        }
        // The real peer, late but within the stranger's probation.
        assert_eq!(l.accept_rtp(sa(SDP), &rtp(1, 100), 800), Admit::Peer);
        // Probation is over for good: the stranger never latches, however long it goes on.
        for i in 40..200u16 {
            let t = u64::from(i) * 20;
            assert_eq!(l.accept_rtp(sa(NAT), &rtp(7, i), t), Admit::Stranger);
        }
        assert_eq!(l.dest(), Some(sa(SDP)));
    }

    #[test]
    fn nat_rewritten_port_latches_after_the_grace() {
        let mut l = Latch::new(Some(sa(SDP)));
        let mut t = 0;
        let mut seq = 5000u16;
        while t < NAT_GRACE_MS {
            assert_eq!(l.accept_rtp(sa(NAT), &rtp(9, seq), t), Admit::Stranger);
            t += 20;
            seq = seq.wrapping_add(1);
        }
        assert_eq!(l.accept_rtp(sa(NAT), &rtp(9, seq), t), Admit::Moved);
        assert_eq!(l.dest(), Some(sa(NAT)));
        assert_eq!(l.accept_rtp(sa(NAT), &rtp(9, seq + 1), t + 20), Admit::Peer);
        // Latched: another port on the same IP is a stranger now.
        assert_eq!(
            l.accept_rtp(sa("192.0.2.10:62000"), &rtp(3, 1), t + 5000),
            Admit::Stranger
        );
        // The SDP address still wins.
        assert_eq!(l.accept_rtp(sa(SDP), &rtp(9, 1), t + 40), Admit::Moved);
        assert_eq!(l.dest(), Some(sa(SDP)));
    }

    #[test]
    fn probation_restarts_on_another_source_or_ssrc() {
        let mut l = Latch::new(Some(sa(SDP)));
        assert_eq!(l.accept_rtp(sa(NAT), &rtp(9, 1), 0), Admit::Stranger);
        // Another SSRC from the same source: the wait starts over.
        assert_eq!(l.accept_rtp(sa(NAT), &rtp(8, 2), 900), Admit::Stranger);
        assert_eq!(l.accept_rtp(sa(NAT), &rtp(8, 3), 1200), Admit::Stranger);
        // Two sources taking turns latch neither.
        let other = sa("192.0.2.10:61002");
        for i in 0..200u16 {
            let t = 1300 + u64::from(i) * 20;
            let src = if i % 2 == 0 { other } else { sa(NAT) };
            assert_eq!(l.accept_rtp(src, &rtp(8, 4 + i), t), Admit::Stranger);
        }
        // Non-RTP from the SDP's IP is never a candidate.
        assert_eq!(l.accept_rtp(sa(NAT), b"hello", 9000), Admit::Stranger);
        assert_eq!(l.latched(), None);
    }

    #[test]
    fn stream_moves_only_when_it_carries_on_after_the_source_went_quiet() {
        let mut l = Latch::new(Some(sa(SDP)));
        assert_eq!(l.accept_rtp(sa(SDP), &rtp(0xAB, 65530), 0), Admit::Peer);
        let new = sa("192.0.2.77:5000");
        // Another SSRC: stranger, however quiet the peer.
        assert_eq!(l.accept_rtp(new, &rtp(0xAC, 65531), 1000), Admit::Stranger);
        // Same SSRC, but the peer is live: no interleaving.
        assert_eq!(l.accept_rtp(sa(SDP), &rtp(0xAB, 65531), 1000), Admit::Peer);
        assert_eq!(l.accept_rtp(new, &rtp(0xAB, 65532), 1020), Admit::Stranger);
        // Behind, or too far ahead: stranger.
        assert_eq!(l.accept_rtp(new, &rtp(0xAB, 65531), 1500), Admit::Stranger);
        assert_eq!(
            l.accept_rtp(
                new,
                &rtp(0xAB, 65531u16.wrapping_add(RELATCH_WINDOW + 1)),
                1500
            ),
            Admit::Stranger
        );
        // Carries on across the wrap after the peer went quiet: the latch moves.
        assert_eq!(l.accept_rtp(new, &rtp(0xAB, 3), 1500), Admit::Moved);
        assert_eq!(l.dest(), Some(new));
        assert_eq!(l.accept_rtp(new, &rtp(0xAB, 4), 1520), Admit::Peer);
        // The SDP address takes it back at once.
        assert_eq!(l.accept_rtp(sa(SDP), &rtp(0xAB, 5), 1540), Admit::Moved);
        assert_eq!(l.accept_rtp(new, &rtp(0xAB, 6), 1560), Admit::Stranger);
    }

    #[test]
    fn latched_source_may_change_its_ssrc() {
        let mut l = Latch::new(Some(sa(SDP)));
        assert_eq!(l.accept_rtp(sa(SDP), &rtp(1, 1), 0), Admit::Peer);
        assert_eq!(l.accept_rtp(sa(SDP), &rtp(2, 900), 20), Admit::Peer);
        // The stream followed: the old SSRC carries on nowhere else.
        let new = sa("192.0.2.77:5000");
        assert_eq!(l.accept_rtp(new, &rtp(1, 2), 2000), Admit::Stranger);
        assert_eq!(l.accept_rtp(new, &rtp(2, 901), 2000), Admit::Moved);
    }

    #[test]
    fn no_sdp_address_latches_first_sender() {
        let mut l = Latch::new(None);
        assert_eq!(l.dest(), None);
        assert_eq!(
            l.accept_rtp(sa("203.0.113.5:7000"), &rtp(1, 1), 0),
            Admit::Peer
        );
        assert_eq!(
            l.accept_rtp(sa("203.0.113.6:7000"), &rtp(2, 1), 500),
            Admit::Stranger
        );
    }

    #[test]
    fn reinvite_to_a_new_address_starts_over() {
        let mut l = Latch::new(Some(sa(SDP)));
        assert_eq!(l.accept_rtp(sa(SDP), &rtp(1, 1), 0), Admit::Peer);
        // Unchanged SDP: nothing changes.
        l.update(Some(sa(SDP)));
        assert_eq!(l.latched(), Some(sa(SDP)));
        // A new port: the old source is no longer the peer, the new address is, with any SSRC.
        l.update(Some(sa("192.0.2.10:4002")));
        assert_eq!(l.dest(), Some(sa("192.0.2.10:4002")));
        assert_eq!(l.accept_rtp(sa(SDP), &rtp(1, 2), 3000), Admit::Stranger);
        assert_eq!(
            l.accept_rtp(sa("192.0.2.10:4002"), &rtp(5, 77), 3000),
            Admit::Peer
        );
        // A new IP: the same.
        l.update(Some(sa("192.0.2.20:4000")));
        assert_eq!(l.dest(), Some(sa("192.0.2.20:4000")));
        // The old stream does not carry on elsewhere: it was forgotten.
        assert_eq!(
            l.accept_rtp(sa("192.0.2.10:4002"), &rtp(5, 78), 9000),
            Admit::Stranger
        );
        assert_eq!(
            l.accept_rtp(sa("192.0.2.20:4000"), &rtp(6, 1), 9000),
            Admit::Peer
        );
    }

    #[test]
    fn reinvite_naming_the_latched_source_keeps_it() {
        let mut l = Latch::new(None);
        assert_eq!(l.accept_rtp(sa(NAT), &rtp(1, 1), 0), Admit::Peer);
        l.update(Some(sa(NAT)));
        assert_eq!(l.latched(), Some(sa(NAT)));
        // A latch made with no SDP address is dropped once one is known and differs.
        let mut l = Latch::new(None);
        assert_eq!(l.accept_rtp(sa(NAT), &rtp(1, 1), 0), Admit::Peer);
        l.update(Some(sa(SDP)));
        assert_eq!(l.latched(), None);
        assert_eq!(l.accept_rtp(sa(NAT), &rtp(1, 2), 20), Admit::Stranger);
    }

    #[test]
    fn mapped_ipv4_matches() {
        let mut l = Latch::new(Some(sa(SDP)));
        assert_eq!(
            l.accept_rtp(sa("[::ffff:192.0.2.10]:4000"), &rtp(1, 1), 0),
            Admit::Peer
        );
    }

    #[test]
    fn rtcp_from_the_sdp_rtcp_port_or_next_to_the_rtp_latch() {
        let mut l = Latch::new(Some(sa(SDP)));
        assert_eq!(l.rtcp_dest(), Some(sa("192.0.2.10:4001")));
        assert_eq!(l.accept_rtcp(sa("192.0.2.10:5555")), Admit::Stranger);
        assert_eq!(l.accept_rtcp(sa("198.51.100.1:4001")), Admit::Stranger);
        assert_eq!(l.accept_rtcp(sa("192.0.2.10:4001")), Admit::Peer);
        // RTP latched behind a NAT: RTCP next to it, or from the SDP's RTCP port on its IP.
        let mut l = Latch::new(Some(sa(SDP)));
        let mut t = 0;
        while l.accept_rtp(sa(NAT), &rtp(9, t as u16), t) != Admit::Moved {
            t += 20;
        }
        assert_eq!(l.accept_rtcp(sa("192.0.2.10:5555")), Admit::Stranger);
        assert_eq!(l.accept_rtcp(sa("192.0.2.10:61001")), Admit::Peer);
        assert_eq!(l.rtcp_dest(), Some(sa("192.0.2.10:61001")));
        // RTP moved to another host: RTCP from the old one is no longer admitted or sent to.
        let new = sa("192.0.2.77:5000");
        assert_eq!(
            l.accept_rtp(new, &rtp(9, t as u16 + 1), t + 500),
            Admit::Moved
        );
        assert_eq!(l.accept_rtcp(sa("192.0.2.10:61001")), Admit::Stranger);
        assert_eq!(l.rtcp_dest(), Some(sa("192.0.2.10:4001")));
        assert_eq!(l.accept_rtcp(sa("192.0.2.77:4001")), Admit::Moved);
        assert_eq!(l.accept_rtcp(sa("192.0.2.77:5001")), Admit::Moved);
    }

    #[test]
    fn header_read_is_bounded() {
        assert_eq!(stream_of(&[0x80; 11]), None);
        assert_eq!(stream_of(&rtp(0xDEADBEEF, 7)), Some((0xDEADBEEF, 7)));
        let mut v1 = rtp(1, 1);
        v1[0] = 0x40;
        assert_eq!(stream_of(&v1), None);
    }
}
