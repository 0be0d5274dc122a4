//! One call's relay, as its media thread runs it: two legs (A = trunk/caller, B = contact
//! centre/agent), each a bound RTP/RTCP port pair, and the state that moves packets between
//! them.
//!
//! Caller→agent RTP goes through the `Scrubber`; agent→caller RTP and RTCP both ways pass
//! through untouched (the agent→caller RTP may be listened to for the agent's keys, read only,
//! when `MediaControl::AgentDigits` asks for it). Symmetric RTP with latching (RFC 4961; RFC
//! 7362 §4): each leg's peer is its SDP address, or the source the leg latched on by the rules
//! of `rtp::latch` (the SDP address wins at once; a NAT-rewritten port only after a grace with
//! the SDP address silent; a move only for a source carrying on the latched stream); packets
//! from any other source are dropped and counted. Until a leg has latched, packets for it go to
//! the SDP address.
//!
//! The relay is owned by one media thread's event loop (`workers`), so the packet path takes no
//! lock and does no map lookup; control (scrubbing on/off, new peers after a re-INVITE, stop)
//! arrives on a channel and applies between packets. Per packet it must never allocate (buffers
//! are reused), log, or block. Digits the scrubber hears go out on a channel for capture and are
//! never logged.
//!
//! Knows nothing of the loop that drives it nor of the handle that starts it: both build on
//! this file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::stats::{RelayStats, RelayStatsSnapshot};
use crate::net::ports::{PortLease, PortPair};
use crate::net::recording::Recorder;
use crate::rtp::announce::Announcer;
use crate::rtp::clock::{Flow, RelayClock, next_frame};
use crate::rtp::latch::{Admit, Latch};
use crate::rtp::record::Channel;
use crate::rtp::scrubber::{DigitTap, ScrubbedDigit, Scrubber, ScrubberConfig, Verdict};
use crate::rtp::srtp::{InboundSrtp, OutboundSrtp, SrtpError};
use crate::sip::b2bua::{Leg, LegCrypto, RelaySrtp};

/// Largest datagram accepted; RTP over UDP on Ethernet never comes close.
const MAX_DATAGRAM: usize = 2048;

/// A media thread's receive and output buffers, shared by all its calls: a packet is read,
/// scrubbed and sent before the next is read. Kept in cache, and not zeroed for every packet as
/// buffers on the stack would be (4 KB a packet). The scrubber writes every byte of what it
/// forwards (checked by `rtp::fuzz`), so no call's audio reaches another's packets.
pub(super) struct Scratch {
    rx: [u8; MAX_DATAGRAM],
    out: [u8; MAX_DATAGRAM],
}

impl Scratch {
    pub(super) fn new() -> Scratch {
        Scratch {
            rx: [0; MAX_DATAGRAM],
            out: [0; MAX_DATAGRAM],
        }
    }
}

/// The relay's sockets, numbered as the loop's tokens number them: A RTP, B RTP, A RTCP,
/// B RTCP.
pub(super) const SOCKETS: usize = 4;

/// Commands applied between packets.
#[derive(Debug, PartialEq, Eq)]
pub enum MediaControl {
    /// Scrubbing on or off on the caller→agent direction.
    Scrub(bool),
    /// New SDP peers (re-INVITE); a changed peer drops that leg's latch.
    Peers {
        a: Option<SocketAddr>,
        b: Option<SocketAddr>,
    },
    /// The caller's telephone-event payload type changed (re-INVITE offered another).
    EventPayloadType(Option<u8>),
    /// Listen for keys on the agent→caller direction (in-band with the strict detector, and
    /// RFC 4733 events) and report them on `MediaHandle::agent_digits`, leaving that audio
    /// untouched: the agent keying a payment session's locator binds the call to it. Off by
    /// default; switching it off reports a key still sounding.
    AgentDigits(bool),
    /// The call failed before reaching an agent (a loop call's locator led nowhere): stop
    /// relaying and play the intercept tone towards the caller for this long, or until `Stop`.
    Announce(Duration),
    /// New SRTP contexts for the legs (a re-INVITE keyed them anew).
    Srtp(Box<RelaySrtp>),
    Stop,
}

/// What the relay reports on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MediaEvent {
    /// No RTP from either side for the configured time. Raised once per silent spell.
    Inactive,
    /// RTP flows again after `Inactive`.
    Active,
}

#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    #[error("writing recording {path}: {message}")]
    Recording { path: PathBuf, message: String },
    #[error("recording task failed: {0}")]
    Join(String),
    #[error("handing the call's sockets to its media thread: {0}")]
    Register(String),
    #[error("the media thread ended before the relay was stopped")]
    ThreadEnded,
}

/// One direction of RTCP: the leg packets must come from, the leg and socket they go out on,
/// and the counters for that direction.
struct RtcpLeg<'a> {
    from: &'a mut Latch,
    to: &'a Latch,
    out: &'a mio::net::UdpSocket,
    counted_in: &'a AtomicU64,
    counted_out: &'a AtomicU64,
}

/// Admits a received RTP datagram (in `rx`) at `ms`: its length if it came from the leg's
/// peer, counted in; receive errors and strangers are counted and dropped.
fn admit(
    received: std::io::Result<(usize, SocketAddr)>,
    rx: &[u8],
    ms: u64,
    latch: &mut Latch,
    counted_in: &AtomicU64,
    stats: &RelayStats,
) -> Option<usize> {
    let Ok((n, src)) = received else {
        bump(&stats.recv_errors);
        return None;
    };
    let pkt = rx.get(..n).unwrap_or_default();
    counted(latch.accept_rtp(src, pkt, ms), stats)?;
    bump(counted_in);
    Some(n)
}

/// Counts a latch's verdict; None for a stranger.
fn counted(verdict: Admit, stats: &RelayStats) -> Option<()> {
    match verdict {
        Admit::Peer => Some(()),
        Admit::Moved => {
            bump(&stats.relatched);
            Some(())
        }
        Admit::Stranger => {
            bump(&stats.dropped_stranger);
            None
        }
    }
}

/// Starts fetching `v`'s bytes into cache, a line at a time; a hint only, which changes no
/// result.
#[inline]
pub(super) fn prefetch<T>(v: &T) {
    #[cfg(target_arch = "x86_64")]
    {
        let p = (v as *const T).cast::<u8>();
        for off in (0..std::mem::size_of::<T>()).step_by(64) {
            use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
            // SAFETY: a prefetch reads nothing architecturally and never faults, whatever the
            // address (Intel SDM, PREFETCHh); SSE is part of the x86_64 baseline.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(off).cast::<i8>()) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = v;
}

/// Relays one received RTCP packet (RTCP is passed through in both directions, decrypted from
/// an SRTP leg and encrypted for one).
fn relay_rtcp(
    received: std::io::Result<(usize, SocketAddr)>,
    buf: &mut [u8],
    leg: RtcpLeg<'_>,
    (inbound, outbound): (Option<&mut InboundSrtp>, Option<&mut OutboundSrtp>),
    stats: &RelayStats,
) {
    let Ok((n, src)) = received else {
        bump(&stats.recv_errors);
        return;
    };
    if counted(leg.from.accept_rtcp(src), stats).is_none() {
        return;
    }
    let mut n = n;
    if let Some(c) = inbound {
        match c.unprotect_rtcp(buf, n) {
            Ok(len) => n = len,
            Err(e) => return srtp_dropped(e, stats),
        }
    }
    bump(leg.counted_in);
    if let Some(c) = outbound {
        match c.protect_rtcp(buf, n) {
            Ok(len) => n = len,
            Err(e) => return srtp_dropped(e, stats),
        }
    }
    forward(
        leg.out,
        buf.get(..n).unwrap_or_default(),
        leg.to.rtcp_dest(),
        leg.counted_out,
        stats,
    );
}

/// Each leg's SRTP transforms, where it has them.
fn srtp_legs(s: &mut Option<Box<RelaySrtp>>) -> (Option<&mut LegCrypto>, Option<&mut LegCrypto>) {
    match s.as_deref_mut() {
        Some(s) => (s.a.as_mut(), s.b.as_mut()),
        None => (None, None),
    }
}

/// Counts a packet SRTP would not take.
fn srtp_dropped(e: SrtpError, stats: &RelayStats) {
    match e {
        SrtpError::Replayed => bump(&stats.dropped_srtp_replay),
        _ => bump(&stats.dropped_srtp_auth),
    }
}

/// Sends a packet to the other leg's peer, counted out. Never waits: a socket whose send buffer
/// is full drops the packet (counted as a send error), as a late RTP packet is worth nothing
/// and waiting would stall both directions. False when the other leg has no peer yet.
fn forward(
    out: &mio::net::UdpSocket,
    pkt: &[u8],
    to: Option<SocketAddr>,
    counted_out: &AtomicU64,
    stats: &RelayStats,
) -> bool {
    let Some(dest) = to else {
        bump(&stats.dropped_no_peer);
        return false;
    };
    match out.send_to(pkt, dest) {
        Ok(_) => bump(counted_out),
        Err(_) => bump(&stats.send_errors),
    }
    true
}

/// Counts one. Each counter has a single writer (the relay's media thread), so a plain load and store
/// is enough and avoids a locked read-modify-write per packet; readers see a recent value.
fn bump(a: &AtomicU64) {
    a.store(a.load(Ordering::Relaxed).wrapping_add(1), Ordering::Relaxed);
}

fn set(a: &AtomicU64, v: u64) {
    a.store(v, Ordering::Relaxed);
}

/// What the relay returns when it ends.
#[derive(Debug)]
pub struct RelayOutcome {
    pub stats: RelayStatsSnapshot,
    /// The recording written, if recording was on.
    pub recording: Option<PathBuf>,
}

/// One leg's sockets, owned by the media thread's loop, and the lease on their ports.
pub(super) struct LegSockets {
    rtp: mio::net::UdpSocket,
    rtcp: mio::net::UdpSocket,
    lease: PortLease,
}

impl LegSockets {
    /// Takes the sockets out of the runtime that bound them, for a media thread's loop.
    pub(super) fn take(p: PortPair) -> Result<LegSockets, MediaError> {
        let err = |e: std::io::Error| MediaError::Register(e.to_string());
        let own = |s: tokio::net::UdpSocket| s.into_std().map(mio::net::UdpSocket::from_std);
        Ok(LegSockets {
            rtp: own(p.rtp).map_err(err)?,
            rtcp: own(p.rtcp).map_err(err)?,
            lease: p.lease,
        })
    }
}

/// The failure announcement being played to the caller.
struct Announcing {
    announcer: Announcer,
    end: Instant,
    next: Instant,
}

/// What the loop does after a control command.
pub(super) enum After {
    Go,
    /// The next tick is due at this time.
    Rearm(Instant),
    Stop,
}

pub(super) struct Relay {
    a: LegSockets,
    b: LegSockets,
    /// Each leg's peer, RTP and RTCP.
    a_peer: Latch,
    b_peer: Latch,
    scrubber: Scrubber,
    /// Listens to the agent→caller direction when agent keys are wanted.
    agent_tap: Option<Box<DigitTap>>,
    stats: Arc<RelayStats>,
    digits: mpsc::Sender<ScrubbedDigit>,
    agent_digits: mpsc::Sender<ScrubbedDigit>,
    key_tap: Option<KeyTap>,
    events: mpsc::Sender<MediaEvent>,
    control: mpsc::Receiver<MediaControl>,
    /// Boxed: most calls record nothing, and inline it was two more cache lines of the
    /// relay's state fetched for every packet.
    recorder: Option<Box<Recorder>>,
    clock: RelayClock,
    announcing: Option<Box<Announcing>>,
    /// Each SRTP leg's transforms; boxed and off the plain path, like the recorder.
    srtp: Option<Box<RelaySrtp>>,
}

/// A consumer the media thread hands each key to itself, instead of the handle's channels:
/// called with whether the key came from the agent's direction, and the key; false when it had
/// no room (the key is counted lost). The SIP shell puts keys straight on its core's queue, so
/// a key wakes one task, not a per-call one first.
#[derive(Clone)]
pub struct KeyTap(pub Arc<dyn Fn(bool, ScrubbedDigit) -> bool + Send + Sync>);

impl std::fmt::Debug for KeyTap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyTap")
    }
}

/// Hands a digit to capture without waiting: the packet path cannot block on a slow consumer.
fn digit_sink<'a>(
    tx: &'a mpsc::Sender<ScrubbedDigit>,
    tap: Option<&'a KeyTap>,
    stats: &'a RelayStats,
) -> impl FnMut(ScrubbedDigit) + 'a {
    counted_sink(
        tx,
        tap.map(|t| (t, false)),
        &stats.digits,
        &stats.digits_lost,
    )
}

/// The same for keys heard on the agent→caller direction.
fn agent_sink<'a>(
    tx: &'a mpsc::Sender<ScrubbedDigit>,
    tap: Option<&'a KeyTap>,
    stats: &'a RelayStats,
) -> impl FnMut(ScrubbedDigit) + 'a {
    counted_sink(
        tx,
        tap.map(|t| (t, true)),
        &stats.agent_digits,
        &stats.agent_digits_lost,
    )
}

fn counted_sink<'a>(
    tx: &'a mpsc::Sender<ScrubbedDigit>,
    tap: Option<(&'a KeyTap, bool)>,
    heard: &'a AtomicU64,
    lost: &'a AtomicU64,
) -> impl FnMut(ScrubbedDigit) + 'a {
    move |d| {
        bump(heard);
        let taken = match tap {
            Some((t, agent)) => (t.0)(agent, d),
            None => tx.try_send(d).is_ok(),
        };
        if !taken {
            bump(lost);
        }
    }
}

/// The channels a relay talks to its handle on.
pub(super) struct Wires {
    pub(super) stats: Arc<RelayStats>,
    pub(super) digits: mpsc::Sender<ScrubbedDigit>,
    pub(super) agent_digits: mpsc::Sender<ScrubbedDigit>,
    pub(super) events: mpsc::Sender<MediaEvent>,
    pub(super) control: mpsc::Receiver<MediaControl>,
    pub(super) key_tap: Option<KeyTap>,
}

impl Relay {
    /// A relay between legs `a` and `b`, sending to the SDP peers given until each latches.
    /// `scrubber` is taken as it is (its `enabled` included); `agent_digits` listens for the
    /// agent's keys from the start.
    pub(super) fn new(
        (a, b): (LegSockets, LegSockets),
        (a_peer, b_peer): (Option<SocketAddr>, Option<SocketAddr>),
        scrubber: ScrubberConfig,
        agent_digits: bool,
        wires: Wires,
        inactivity: Duration,
        (recorder, srtp): (Option<Box<Recorder>>, Option<Box<RelaySrtp>>),
    ) -> Relay {
        let agent_tap = agent_digits.then(|| Box::new(DigitTap::new(&scrubber)));
        let now = Instant::now();
        Relay {
            a,
            b,
            a_peer: Latch::new(a_peer),
            b_peer: Latch::new(b_peer),
            scrubber: Scrubber::new(scrubber),
            agent_tap,
            stats: wires.stats,
            digits: wires.digits,
            agent_digits: wires.agent_digits,
            key_tap: wires.key_tap,
            events: wires.events,
            control: wires.control,
            recorder,
            clock: RelayClock::new(inactivity, now),
            announcing: None,
            srtp: srtp.filter(|s| s.a.is_some() || s.b.is_some()),
        }
    }

    /// Socket `i` in the loop's numbering.
    pub(super) fn socket(&mut self, i: usize) -> &mut mio::net::UdpSocket {
        match i {
            0 => &mut self.a.rtp,
            1 => &mut self.b.rtp,
            2 => &mut self.a.rtcp,
            _ => &mut self.b.rtcp,
        }
    }

    /// The counters shared with the call's handle, for the media loop to fetch ahead.
    pub(super) fn counters(&self) -> Arc<RelayStats> {
        self.stats.clone()
    }

    /// The media thread has taken the call on at `now`; returns when its first tick is due.
    pub(super) fn started(&mut self, now: Instant) -> Instant {
        self.clock.restart(now)
    }

    /// Reads and relays what socket `i` holds, up to `budget` datagrams. True when the budget
    /// ran out first (the socket may hold more).
    pub(super) fn readable(
        &mut self,
        i: usize,
        now: Instant,
        scratch: &mut Scratch,
        budget: usize,
    ) -> bool {
        let Scratch { rx, out } = scratch;
        for _ in 0..budget {
            let r = match self.socket(i).recv_from(rx) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
                r => r,
            };
            // Being given up: nothing is relayed any more (read, so that nothing piles up).
            if self.announcing.is_some() {
                continue;
            }
            match i {
                0 => self.caller_rtp(r, rx, out, now),
                1 => self.agent_rtp(r, rx, out, now),
                2 => {
                    let leg = RtcpLeg {
                        from: &mut self.a_peer,
                        to: &self.b_peer,
                        out: &self.b.rtcp,
                        counted_in: &self.stats.rtcp_a_in,
                        counted_out: &self.stats.rtcp_b_out,
                    };
                    let (sa, sb) = srtp_legs(&mut self.srtp);
                    let keys = (sa.map(|c| &mut c.inbound), sb.map(|c| &mut c.outbound));
                    relay_rtcp(r, rx, leg, keys, &self.stats);
                }
                _ => {
                    let leg = RtcpLeg {
                        from: &mut self.b_peer,
                        to: &self.a_peer,
                        out: &self.a.rtcp,
                        counted_in: &self.stats.rtcp_b_in,
                        counted_out: &self.stats.rtcp_a_out,
                    };
                    let (sa, sb) = srtp_legs(&mut self.srtp);
                    let keys = (sb.map(|c| &mut c.inbound), sa.map(|c| &mut c.outbound));
                    relay_rtcp(r, rx, leg, keys, &self.stats);
                }
            }
        }
        true
    }

    /// Caller→agent RTP: latched, scrubbed and sent on.
    fn caller_rtp(
        &mut self,
        received: std::io::Result<(usize, SocketAddr)>,
        rx: &mut [u8],
        out: &mut [u8],
        now: Instant,
    ) {
        let ms = self.clock.ms(now);
        // Authenticated before the latch sees it: a forged packet must not move the peer.
        let Some(received) = self.unprotect(Leg::A, received, rx) else {
            return;
        };
        let Some(n) = admit(
            received,
            rx,
            ms,
            &mut self.a_peer,
            &self.stats.a_in,
            &self.stats,
        ) else {
            return;
        };
        self.clock.heard(now);
        let input = rx.get(..n).unwrap_or_default();
        let verdict = {
            let mut sink = digit_sink(&self.digits, self.key_tap.as_ref(), &self.stats);
            self.scrubber.process(ms, input, out, &mut sink)
        };
        let sc = self.scrubber.stats();
        set(&self.stats.samples_masked, sc.samples_masked);
        set(&self.stats.events_stripped, sc.events_converted);
        let len = match verdict {
            Verdict::Forward(len) => len,
            Verdict::Drop(_) => {
                bump(&self.stats.dropped_scrubber);
                return;
            }
        };
        // Recorded in the clear, as the agent hears it, and only what has somewhere to go;
        // before an SRTP leg's encryption overwrites it.
        if self.b_peer.dest().is_some()
            && let Some(rec) = self.recorder.as_mut()
        {
            rec.put(
                Channel::Agent,
                out.get(..len).unwrap_or_default(),
                ms as usize * 8,
            );
        }
        let len = match self.srtp.as_deref_mut().and_then(|s| s.b.as_mut()) {
            Some(c) => match c.outbound.protect_rtp(out, len) {
                Ok(len) => len,
                Err(e) => return srtp_dropped(e, &self.stats),
            },
            None => len,
        };
        forward(
            &self.b.rtp,
            out.get(..len).unwrap_or_default(),
            self.b_peer.dest(),
            &self.stats.b_out,
            &self.stats,
        );
    }

    /// Decrypts, in `rx`, what `leg`'s SRTP peer sent; `None` (counted) when it does not
    /// authenticate. Plain legs pass through.
    fn unprotect(
        &mut self,
        leg: Leg,
        received: std::io::Result<(usize, SocketAddr)>,
        rx: &mut [u8],
    ) -> Option<std::io::Result<(usize, SocketAddr)>> {
        let Some(s) = self.srtp.as_deref_mut() else {
            return Some(received);
        };
        let c = match leg {
            Leg::A => s.a.as_mut(),
            Leg::B => s.b.as_mut(),
        };
        match (c, received) {
            (Some(c), Ok((n, src))) => match c.inbound.unprotect_rtp(rx, n) {
                Ok(len) => Some(Ok((len, src))),
                Err(e) => {
                    srtp_dropped(e, &self.stats);
                    None
                }
            },
            (_, received) => Some(received),
        }
    }

    /// Agent→caller RTP: latched and sent on as it came, then listened to for the agent's
    /// keys when that is on.
    fn agent_rtp(
        &mut self,
        received: std::io::Result<(usize, SocketAddr)>,
        rx: &mut [u8],
        out: &mut [u8],
        now: Instant,
    ) {
        let ms = self.clock.ms(now);
        let Some(received) = self.unprotect(Leg::B, received, rx) else {
            return;
        };
        let Some(n) = admit(
            received,
            rx,
            ms,
            &mut self.b_peer,
            &self.stats.b_in,
            &self.stats,
        ) else {
            return;
        };
        self.clock.heard(now);
        let pkt = rx.get(..n).unwrap_or_default();
        let wire = match self.srtp.as_deref_mut().and_then(|s| s.a.as_mut()) {
            // Encrypted from a copy: the tap and the recorder below read the clear packet.
            Some(c) => {
                let Some(o) = out.get_mut(..n) else { return };
                o.copy_from_slice(pkt);
                match c.outbound.protect_rtp(out, n) {
                    Ok(len) => out.get(..len).unwrap_or_default(),
                    Err(e) => return srtp_dropped(e, &self.stats),
                }
            }
            None => pkt,
        };
        if !forward(
            &self.a.rtp,
            wire,
            self.a_peer.dest(),
            &self.stats.a_out,
            &self.stats,
        ) {
            return;
        }
        // Listened to after it has gone out as it came: the tap only reads.
        if let Some(tap) = self.agent_tap.as_mut() {
            let mut sink = agent_sink(&self.agent_digits, self.key_tap.as_ref(), &self.stats);
            tap.observe(ms, pkt, &mut sink);
        }
        if let Some(rec) = self.recorder.as_mut() {
            rec.put(Channel::Caller, pkt, ms as usize * 8);
        }
    }

    /// Whether an RFC 4733 event is sounding, whose timeout needs the short tick.
    fn event_pending(&self) -> bool {
        self.scrubber.event_pending()
            || self
                .agent_tap
                .as_deref()
                .is_some_and(DigitTap::event_pending)
    }

    /// When a tick is needed by, if sooner than the idle period: an RFC 4733 event whose end
    /// packets may be lost needs the short tick for its timeout (RFC 4733 §2.5.2.2).
    pub(super) fn tick_needed_by(&self, now: Instant) -> Option<Instant> {
        self.clock.tick_needed_by(now, self.event_pending())
    }

    /// The tick due at `at` (the loop runs it at `now`): time for the scrubber's event timeouts,
    /// the inactivity check, or the announcement's next packet. Returns when the next is due.
    pub(super) fn tick(&mut self, at: Instant, now: Instant) -> Instant {
        if let Some(ann) = self.announcing.as_deref_mut() {
            if now < ann.end {
                if let Some(dest) = self.a_peer.dest() {
                    let mut buf = [0u8; 256];
                    let mut n = ann.announcer.next_packet(&mut buf);
                    if let Some(c) = self.srtp.as_deref_mut().and_then(|s| s.a.as_mut()) {
                        n = c.outbound.protect_rtp(&mut buf, n).unwrap_or(0);
                    }
                    match self.a.rtp.send_to(buf.get(..n).unwrap_or_default(), dest) {
                        Ok(_) => bump(&self.stats.a_out),
                        Err(_) => bump(&self.stats.send_errors),
                    }
                }
                ann.next = next_frame(ann.next, now);
                return ann.next;
            }
            // Played out: relaying resumes, should the call go on.
            self.announcing = None;
        }
        let ms = self.clock.ms(at);
        {
            let mut sink = digit_sink(&self.digits, self.key_tap.as_ref(), &self.stats);
            self.scrubber.tick(ms, &mut sink);
        }
        if let Some(tap) = self.agent_tap.as_mut() {
            let mut sink = agent_sink(&self.agent_digits, self.key_tap.as_ref(), &self.stats);
            tap.tick(ms, &mut sink);
        }
        if let Some(flow) = self.clock.check(at) {
            let ev = match flow {
                Flow::Stopped => MediaEvent::Inactive,
                Flow::Resumed => MediaEvent::Active,
            };
            let _ = self.events.try_send(ev);
        }
        self.clock.next_tick(now, self.event_pending())
    }

    pub(super) fn next_control(&mut self) -> Result<MediaControl, mpsc::error::TryRecvError> {
        self.control.try_recv()
    }

    /// Applies a control command between packets.
    pub(super) fn apply(&mut self, c: MediaControl, now: Instant) -> After {
        if self.announcing.is_some() {
            // Scrubbing, peers and the rest no longer matter for this call.
            return match c {
                MediaControl::Stop => After::Stop,
                _ => After::Go,
            };
        }
        match c {
            MediaControl::Scrub(on) => {
                let mut sink = digit_sink(&self.digits, self.key_tap.as_ref(), &self.stats);
                self.scrubber.set_enabled(on, &mut sink);
            }
            MediaControl::Peers { a, b } => {
                self.a_peer.update(a);
                self.b_peer.update(b);
            }
            MediaControl::EventPayloadType(pt) => {
                self.scrubber.set_event_pt(pt);
                if let Some(tap) = self.agent_tap.as_mut() {
                    tap.set_event_pt(pt);
                }
            }
            MediaControl::AgentDigits(on) => {
                if on && self.agent_tap.is_none() {
                    self.agent_tap = Some(Box::new(DigitTap::new(self.scrubber.config())));
                } else if !on && let Some(mut tap) = self.agent_tap.take() {
                    let mut sink =
                        agent_sink(&self.agent_digits, self.key_tap.as_ref(), &self.stats);
                    tap.finish(&mut sink);
                }
            }
            MediaControl::Announce(d) => {
                // With no caller address there is nobody to play it to.
                if self.a_peer.dest().is_some() {
                    let codec = self.scrubber.config().default_codec;
                    self.announcing = Some(Box::new(Announcing {
                        announcer: Announcer::new(
                            codec,
                            rand::random(),
                            rand::random(),
                            rand::random(),
                        ),
                        end: now + d,
                        next: now,
                    }));
                    return After::Rearm(now);
                }
            }
            MediaControl::Srtp(s) => {
                self.srtp = Some(s).filter(|s| s.a.is_some() || s.b.is_some());
            }
            MediaControl::Stop => return After::Stop,
        }
        After::Go
    }

    /// Ends the relay: reports what the detectors still held, closes the sockets and gives the
    /// ports back. The recording, if any, is left to be written off the media thread.
    pub(super) fn finish(mut self) -> Finished {
        {
            let mut sink = digit_sink(&self.digits, self.key_tap.as_ref(), &self.stats);
            self.scrubber.finish(&mut sink);
        }
        if let Some(tap) = self.agent_tap.as_mut() {
            let mut sink = agent_sink(&self.agent_digits, self.key_tap.as_ref(), &self.stats);
            tap.finish(&mut sink);
        }
        set(
            &self.stats.samples_masked,
            self.scrubber.stats().samples_masked,
        );
        let Relay {
            a,
            b,
            recorder,
            stats,
            ..
        } = self;
        // Sockets closed before the leases re-queue their ports.
        let leases: (PortLease, PortLease) = (a.lease, b.lease);
        drop((a.rtp, a.rtcp, b.rtp, b.rtcp));
        drop(leases);
        Finished { recorder, stats }
    }
}

/// A stopped relay's counters and recording, handed from its media thread back to the runtime
/// that started it.
pub(super) struct Finished {
    recorder: Option<Box<Recorder>>,
    stats: Arc<RelayStats>,
}

impl Finished {
    /// Writes the recording, if any, off the media thread and off the runtime's workers.
    pub(super) async fn write(self) -> Result<RelayOutcome, MediaError> {
        let recording = match self.recorder {
            None => None,
            Some(rec) => {
                let (path, dropped) = tokio::task::spawn_blocking(move || rec.finish())
                    .await
                    .map_err(|e| MediaError::Join(e.to_string()))?
                    .map_err(|(path, message)| MediaError::Recording { path, message })?;
                if dropped > 0 {
                    tracing::warn!(
                        path = %path.display(),
                        chunks = dropped,
                        "recording lost audio: the disk fell behind"
                    );
                }
                Some(path)
            }
        };
        Ok(RelayOutcome {
            stats: self.stats.snapshot(),
            recording,
        })
    }
}
