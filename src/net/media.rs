//! The per-call RTP relay: two legs (A = trunk/caller, B = contact centre/agent), each a bound
//! RTP/RTCP port pair, and one task that moves packets between them.
//!
//! Caller→agent RTP goes through the `Scrubber`; agent→caller RTP and RTCP both ways pass
//! through untouched (the agent→caller RTP may be listened to for the agent's keys, read only,
//! when `MediaControl::AgentDigits` asks for it). Symmetric RTP with latching (RFC 4961 for the symmetric part; latching as
//! in RFC 7362 §4): each leg's first packet from the peer IP the SDP advertised fixes the peer's
//! address (the port may differ behind NAT); packets from any other source are dropped and
//! counted. Until a leg has latched, packets for it go to the SDP address.
//!
//! One task owns all of a call's media state, so the packet path takes no lock and does no map
//! lookup; control (scrubbing on/off, new peers after a re-INVITE, stop) arrives on a channel
//! and applies between packets. Per packet it must never allocate (buffers are reused), log, or
//! hold anything across an await but its own buffers. Digits the scrubber hears go out on a
//! channel for capture and are never logged.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::task::{Context, Poll, Wake as TaskWake, Waker};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, Sleep};

use crate::dsp::g711::Codec;
use crate::net::ports::{PortLease, PortPair};
use crate::rtp::announce::Announcer;
use crate::rtp::packet::RtpView;
use crate::rtp::scrubber::{DigitTap, ScrubbedDigit, Scrubber, ScrubberConfig, Verdict};

/// Largest datagram accepted; RTP over UDP on Ethernet never comes close.
const MAX_DATAGRAM: usize = 2048;

/// A relay's receive and output buffers. A packet is read, scrubbed and sent with no await in
/// between, so one pair per media thread serves all its calls: it stays in cache, and is not
/// zeroed for every packet as buffers on the stack were (4 KB a packet). It is never borrowed
/// twice: nothing called while it is held runs another task. The scrubber writes every byte of
/// what it forwards (checked by `rtp::fuzz`), so no call's audio reaches another's packets.
struct Scratch {
    rx: [u8; MAX_DATAGRAM],
    out: [u8; MAX_DATAGRAM],
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = const {
        std::cell::RefCell::new(Scratch {
            rx: [0; MAX_DATAGRAM],
            out: [0; MAX_DATAGRAM],
        })
    };
}

/// How often time is fed to the scrubber (event timeouts) and inactivity is checked.
// 100 ms: event timeouts are 250 ms and inactivity is seconds; at thousands of calls a finer tick
// would cost as many wake-ups as the packets themselves.
const TICK: Duration = Duration::from_millis(100);
/// The longest tick, used while no RFC 4733 event is pending: at thousands of calls, ticks
/// every 100 ms would cost a fifth as many wake-ups as the packets themselves.
const IDLE_TICK: Duration = Duration::from_secs(1);
/// Digits waiting for the capture side; a full channel means capture has stalled.
const DIGIT_QUEUE: usize = 64;

/// Options beyond the two legs; the defaults suit tests and a plain relay.
#[derive(Clone, Debug)]
pub struct RelayOptions {
    /// No RTP from either side for this long raises `MediaEvent::Inactive`.
    pub inactivity: Duration,
    /// Directory for a stereo recording written on stop (agent-received left, caller-received
    /// right); none when unset.
    pub record_dir: Option<PathBuf>,
    /// File name stem for the recording (the call id).
    pub call_label: String,
    /// Listen for keys on the agent→caller direction from the start (see
    /// [`MediaControl::AgentDigits`]).
    pub agent_digits: bool,
    /// Recording length cap, seconds per channel.
    pub max_record_s: u64,
    /// Media threads to run the relay on (one picked per call); the current runtime when unset.
    pub workers: Option<MediaWorkers>,
}

impl Default for RelayOptions {
    fn default() -> Self {
        RelayOptions {
            inactivity: Duration::from_secs(60),
            record_dir: None,
            call_label: "call".into(),
            agent_digits: false,
            max_record_s: 3600,
            workers: None,
        }
    }
}

/// Threads that run the media relays. Each runs its own single-threaded tokio runtime, and a
/// call's relay stays on the one it was given for its whole life, so its state (2-3 KB, read on
/// every packet) and its sockets stay with one core; on a work-stealing runtime a relay task
/// could move between cores and take that state with it. `media_load` shows no change in CPU
/// per packet from this (it runs its bare forwarder on the same threads); the gain is a
/// predictable placement. Calls are dealt round-robin.
#[derive(Clone)]
pub struct MediaWorkers {
    inner: Arc<WorkersInner>,
}

struct WorkersInner {
    handles: Vec<tokio::runtime::Handle>,
    next: std::sync::atomic::AtomicUsize,
    /// Dropped with the last clone: each thread's runtime then stops, ending its relays.
    _stops: Vec<tokio::sync::oneshot::Sender<()>>,
}

impl std::fmt::Debug for MediaWorkers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MediaWorkers")
            .field("threads", &self.threads())
            .finish()
    }
}

impl MediaWorkers {
    /// Starts `threads` media threads (at least one), named `tw-media-N`.
    pub fn start(threads: usize) -> std::io::Result<MediaWorkers> {
        MediaWorkers::start_with(threads, || {})
    }

    /// [`MediaWorkers::start`], running `on_start` first on each new thread (to pin it to a
    /// CPU, or note its id for accounting).
    pub fn start_with(
        threads: usize,
        on_start: impl Fn() + Send + Sync + 'static,
    ) -> std::io::Result<MediaWorkers> {
        let on_start = Arc::new(on_start);
        let mut handles = Vec::new();
        let mut stops = Vec::new();
        for i in 0..threads.max(1) {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            handles.push(rt.handle().clone());
            let on_start = on_start.clone();
            std::thread::Builder::new()
                .name(format!("tw-media-{i}"))
                .spawn(move || {
                    on_start();
                    // Ends when every `MediaWorkers` clone is gone (the sender drops).
                    rt.block_on(async {
                        let _ = stopped.await;
                    });
                })?;
            stops.push(stop);
        }
        Ok(MediaWorkers {
            inner: Arc::new(WorkersInner {
                handles,
                next: std::sync::atomic::AtomicUsize::new(0),
                _stops: stops,
            }),
        })
    }

    pub fn threads(&self) -> usize {
        self.inner.handles.len()
    }

    /// Runs `fut` on the next media thread. Sockets it uses must be registered there (created
    /// or converted from std inside `fut`) for their readiness to come from that thread.
    pub fn spawn<F>(&self, fut: F) -> Option<JoinHandle<F::Output>>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.pick().map(|h| h.spawn(fut))
    }

    fn pick(&self) -> Option<&tokio::runtime::Handle> {
        let n = self.inner.next.fetch_add(1, Ordering::Relaxed);
        self.inner.handles.get(n % self.inner.handles.len().max(1))
    }
}

/// Commands applied between packets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
    #[error("moving the call's sockets to its media thread: {0}")]
    Rehome(String),
}

/// Counters shared with the handle; updated with relaxed atomics by the relay task only.
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
    /// Packets the scrubber refused (malformed, uninspectable, duplicates…).
    pub dropped_scrubber: AtomicU64,
    /// Packets with nowhere to go yet (the other leg has no peer).
    pub dropped_no_peer: AtomicU64,
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
    pub dropped_scrubber: u64,
    pub dropped_no_peer: u64,
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
            dropped_scrubber: g(&self.dropped_scrubber),
            dropped_no_peer: g(&self.dropped_no_peer),
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

/// One direction of RTCP: the latch packets must come from, the latch and socket they go out on,
/// and the counters for that direction.
struct RtcpLeg<'a> {
    from: &'a mut Latch,
    to: &'a Latch,
    out: &'a tokio::net::UdpSocket,
    counted_in: &'a AtomicU64,
    counted_out: &'a AtomicU64,
}

/// Admits a received datagram: its length if it came from the leg's latched (or latching)
/// peer, counted in; receive errors and strangers are counted and dropped.
fn admit(
    received: std::io::Result<(usize, SocketAddr)>,
    latch: &mut Latch,
    counted_in: &AtomicU64,
    stats: &RelayStats,
) -> Option<usize> {
    let Ok((n, src)) = received else {
        bump(&stats.recv_errors);
        return None;
    };
    if !latch.accept(src) {
        bump(&stats.dropped_stranger);
        return None;
    }
    bump(counted_in);
    Some(n)
}

/// Starts fetching `v`'s bytes into cache, a line at a time; a hint only, which changes no
/// result.
#[inline]
fn prefetch<T>(v: &T) {
    #[cfg(target_arch = "x86_64")]
    {
        let p = v as *const T as *const u8;
        for off in (0..std::mem::size_of::<T>()).step_by(64) {
            use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
            // SAFETY: a prefetch reads nothing architecturally and never faults, whatever the
            // address (Intel SDM, PREFETCHh); SSE is part of the x86_64 baseline.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(off) as *const i8) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = v;
}

/// Relays one received RTCP packet (RTCP is passed through untouched in both directions).
fn relay_rtcp(
    received: std::io::Result<(usize, SocketAddr)>,
    buf: &[u8],
    leg: RtcpLeg<'_>,
    stats: &RelayStats,
) {
    let Some(n) = admit(received, leg.from, leg.counted_in, stats) else {
        return;
    };
    forward(
        leg.out,
        buf.get(..n).unwrap_or_default(),
        leg.to,
        leg.counted_out,
        stats,
    );
}

/// Sends a packet to the other leg's peer, counted out. Never waits: a socket whose send buffer
/// is full drops the packet (counted as a send error), as a late RTP packet is worth nothing
/// and waiting would stall both directions. False when the other leg has no peer yet.
fn forward(
    out: &tokio::net::UdpSocket,
    pkt: &[u8],
    to: &Latch,
    counted_out: &AtomicU64,
    stats: &RelayStats,
) -> bool {
    let Some(dest) = to.dest() else {
        bump(&stats.dropped_no_peer);
        return false;
    };
    match out.try_send_to(pkt, dest) {
        Ok(_) => bump(counted_out),
        Err(_) => bump(&stats.send_errors),
    }
    true
}

/// Counts one. Each counter has a single writer (the relay task), so a plain load and store
/// is enough and avoids a locked read-modify-write per packet; readers see a recent value.
fn bump(a: &AtomicU64) {
    a.store(a.load(Ordering::Relaxed).wrapping_add(1), Ordering::Relaxed);
}

fn set(a: &AtomicU64, v: u64) {
    a.store(v, Ordering::Relaxed);
}

/// The caller's side of a running relay.
#[derive(Debug)]
pub struct MediaHandle {
    control: mpsc::Sender<MediaControl>,
    stats: Arc<RelayStats>,
    /// Digits heard on the caller→agent direction, for capture. Never log them.
    pub digits: mpsc::Receiver<ScrubbedDigit>,
    /// Keys the agent pressed (agent→caller direction), while listening for them is on
    /// ([`MediaControl::AgentDigits`]). Never log them.
    pub agent_digits: mpsc::Receiver<ScrubbedDigit>,
    pub events: mpsc::Receiver<MediaEvent>,
    /// Addresses to advertise in SDP: leg A (towards the trunk) and leg B (towards the agent).
    pub a_addr: SocketAddr,
    pub b_addr: SocketAddr,
}

impl MediaHandle {
    pub fn stats(&self) -> RelayStatsSnapshot {
        self.stats.snapshot()
    }

    /// A sender for control commands, for callers that want to keep one apart from the handle.
    pub fn control(&self) -> mpsc::Sender<MediaControl> {
        self.control.clone()
    }

    /// Returns false when the relay has already stopped.
    pub async fn set_scrubbing(&self, on: bool) -> bool {
        self.control.send(MediaControl::Scrub(on)).await.is_ok()
    }

    pub async fn update_peers(&self, a: Option<SocketAddr>, b: Option<SocketAddr>) -> bool {
        self.control
            .send(MediaControl::Peers { a, b })
            .await
            .is_ok()
    }

    /// Listens for the agent's keys (or stops); returns false when the relay has stopped.
    pub async fn set_agent_digits(&self, on: bool) -> bool {
        self.control
            .send(MediaControl::AgentDigits(on))
            .await
            .is_ok()
    }

    pub async fn stop(&self) -> bool {
        self.control.send(MediaControl::Stop).await.is_ok()
    }
}

/// What the relay task returns when it ends.
#[derive(Debug)]
pub struct RelayOutcome {
    pub stats: RelayStatsSnapshot,
    /// The recording written, if recording was on.
    pub recording: Option<PathBuf>,
}

/// Where one leg's peer is: the SDP address and the latched source.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Latch {
    sdp: Option<SocketAddr>,
    latched: Option<SocketAddr>,
}

impl Latch {
    fn new(sdp: Option<SocketAddr>) -> Latch {
        Latch { sdp, latched: None }
    }

    /// Whether a packet from `src` is the peer's; latches on the first one from the SDP IP (or
    /// from anyone when the SDP gave no address).
    fn accept(&mut self, src: SocketAddr) -> bool {
        match self.latched {
            Some(l) => l == src,
            None => {
                let ok = self.sdp.is_none_or(|s| same_ip(s.ip(), src.ip()));
                if ok {
                    self.latched = Some(src);
                }
                ok
            }
        }
    }

    fn dest(&self) -> Option<SocketAddr> {
        self.latched.or(self.sdp)
    }

    /// A new SDP address; the latch survives only if the IP did not change.
    fn update(&mut self, sdp: Option<SocketAddr>) {
        if sdp != self.sdp {
            let keep = match (self.latched, sdp) {
                (Some(l), Some(s)) => same_ip(l.ip(), s.ip()),
                _ => false,
            };
            self.sdp = sdp;
            if !keep {
                self.latched = None;
            }
        }
    }
}

/// IP equality that sees an IPv4-mapped IPv6 source as its IPv4 address (dual-stack sockets).
fn same_ip(a: IpAddr, b: IpAddr) -> bool {
    a.to_canonical() == b.to_canonical()
}

/// The RTCP address implied by an RTP address (RFC 3550 §11: next port up).
fn rtcp_of(a: Option<SocketAddr>) -> Option<SocketAddr> {
    a.map(|s| SocketAddr::new(s.ip(), s.port().wrapping_add(1)))
}

/// One channel of the optional recording: decoded audio placed by RTP timestamp, anchored at
/// the wall-clock time of the channel's first packet so the two channels line up.
struct Track {
    samples: Vec<i16>,
    origin: Option<(u32, usize)>,
    cap: usize,
}

impl Track {
    fn new(cap: usize) -> Track {
        Track {
            samples: Vec::new(),
            origin: None,
            cap,
        }
    }

    fn put(&mut self, pkt: &[u8], now_sample: usize) {
        let Ok(v) = RtpView::parse(pkt) else {
            return;
        };
        let Some(codec) = Codec::from_payload_type(v.payload_type()) else {
            return;
        };
        let (ts0, at0) = *self.origin.get_or_insert((v.timestamp(), now_sample));
        let off = v.timestamp().wrapping_sub(ts0);
        // A timestamp jump backwards or far ahead (new SSRC) re-anchors on the clock.
        let at = if off < 8000 * 600 {
            at0 + off as usize
        } else {
            self.origin = Some((v.timestamp(), now_sample));
            now_sample
        };
        let payload = v.payload();
        let end = (at + payload.len()).min(self.cap);
        if end <= at {
            return;
        }
        if self.samples.len() < end {
            self.samples.resize(end, 0);
        }
        if let Some(dst) = self.samples.get_mut(at..end) {
            for (o, &b) in dst.iter_mut().zip(payload) {
                *o = codec.decode(b);
            }
        }
    }
}

struct Recorder {
    path: PathBuf,
    /// Audio sent to the agent (leg B out): left.
    agent: Track,
    /// Audio sent to the caller (leg A out): right.
    caller: Track,
}

pub struct MediaRelay;

impl MediaRelay {
    /// Starts a relay with default options. See [`MediaRelay::start_with`].
    pub fn start(
        a: PortPair,
        b: PortPair,
        a_peer: Option<SocketAddr>,
        b_peer: Option<SocketAddr>,
        scrubber: ScrubberConfig,
        scrub_on: bool,
    ) -> (MediaHandle, JoinHandle<Result<RelayOutcome, MediaError>>) {
        MediaRelay::start_with(
            a,
            b,
            a_peer,
            b_peer,
            scrubber,
            scrub_on,
            RelayOptions::default(),
        )
    }

    /// Spawns the relay task on the current tokio runtime. `a_peer`/`b_peer` are the RTP
    /// addresses from each side's SDP (None: latch on whoever sends first).
    pub fn start_with(
        a: PortPair,
        b: PortPair,
        a_peer: Option<SocketAddr>,
        b_peer: Option<SocketAddr>,
        scrubber: ScrubberConfig,
        scrub_on: bool,
        opts: RelayOptions,
    ) -> (MediaHandle, JoinHandle<Result<RelayOutcome, MediaError>>) {
        let (control_tx, control_rx) = mpsc::channel(16);
        let (digit_tx, digit_rx) = mpsc::channel(DIGIT_QUEUE);
        let (agent_tx, agent_rx) = mpsc::channel(DIGIT_QUEUE);
        let (event_tx, event_rx) = mpsc::channel(8);
        let stats = Arc::new(RelayStats::default());
        let handle = MediaHandle {
            control: control_tx,
            stats: stats.clone(),
            digits: digit_rx,
            agent_digits: agent_rx,
            events: event_rx,
            a_addr: a.rtp_addr(),
            b_addr: b.rtp_addr(),
        };
        let recorder = opts.record_dir.as_ref().map(|dir| {
            let cap = (opts.max_record_s as usize).saturating_mul(8000);
            Recorder {
                path: dir.join(format!("{}.wav", sanitize(&opts.call_label))),
                agent: Track::new(cap),
                caller: Track::new(cap),
            }
        });
        let mut cfg = scrubber;
        cfg.enabled = scrub_on;
        let agent_tap = opts.agent_digits.then(|| Box::new(DigitTap::new(&cfg)));
        let task = Relay {
            a,
            b,
            a_rtp: Latch::new(a_peer),
            b_rtp: Latch::new(b_peer),
            a_rtcp: Latch::new(rtcp_of(a_peer)),
            b_rtcp: Latch::new(rtcp_of(b_peer)),
            scrubber: Scrubber::new(cfg),
            agent_tap,
            stats,
            digits: digit_tx,
            agent_digits: agent_tx,
            events: event_tx,
            control: control_rx,
            inactivity: opts.inactivity,
            recorder,
        };
        let mut task = Box::new(task);
        match opts.workers.as_ref().and_then(MediaWorkers::pick) {
            Some(worker) => {
                let task = worker.spawn(async move {
                    // The sockets were registered with the runtime that allocated them; their
                    // readiness must come from this thread's own reactor.
                    task.rehome()?;
                    task.run().await
                });
                (handle, task)
            }
            None => (handle, tokio::spawn(task.run())),
        }
    }
}

/// Keeps a label usable as a file name stem.
fn sanitize(label: &str) -> String {
    let s: String = label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() || s.starts_with('.') {
        format!("call{s}")
    } else {
        s
    }
}

struct Relay {
    a: PortPair,
    b: PortPair,
    a_rtp: Latch,
    b_rtp: Latch,
    a_rtcp: Latch,
    b_rtcp: Latch,
    scrubber: Scrubber,
    /// Listens to the agent→caller direction when agent keys are wanted.
    agent_tap: Option<Box<DigitTap>>,
    stats: Arc<RelayStats>,
    digits: mpsc::Sender<ScrubbedDigit>,
    agent_digits: mpsc::Sender<ScrubbedDigit>,
    events: mpsc::Sender<MediaEvent>,
    control: mpsc::Receiver<MediaControl>,
    inactivity: Duration,
    recorder: Option<Recorder>,
}

/// Hands a digit to capture without waiting: the packet path cannot block on a slow consumer.
fn digit_sink<'a>(
    tx: &'a mpsc::Sender<ScrubbedDigit>,
    stats: &'a RelayStats,
) -> impl FnMut(ScrubbedDigit) + 'a {
    counted_sink(tx, &stats.digits, &stats.digits_lost)
}

/// The same for keys heard on the agent→caller direction.
fn agent_sink<'a>(
    tx: &'a mpsc::Sender<ScrubbedDigit>,
    stats: &'a RelayStats,
) -> impl FnMut(ScrubbedDigit) + 'a {
    counted_sink(tx, &stats.agent_digits, &stats.agent_digits_lost)
}

fn counted_sink<'a>(
    tx: &'a mpsc::Sender<ScrubbedDigit>,
    heard: &'a AtomicU64,
    lost: &'a AtomicU64,
) -> impl FnMut(ScrubbedDigit) + 'a {
    move |d| {
        bump(heard);
        if tx.try_send(d).is_err() {
            bump(lost);
        }
    }
}

/// What woke the relay task.
enum Wake {
    Control(Option<MediaControl>),
    /// One of the four sockets (index into [`SOCKETS`]) has something to read.
    Readable(usize),
    Tick,
}

/// The relay's sockets in polling order: A RTP, B RTP, A RTCP, B RTCP.
const SOCKETS: usize = 4;
/// The other two sources the task waits on, numbered after the sockets.
const CONTROL: usize = SOCKETS;
const TIMER: usize = SOCKETS + 1;
const SOURCES: usize = SOCKETS + 2;
const ALL_SOURCES: u8 = (1 << SOURCES) - 1;

/// Which of the relay task's sources have fired since it last looked.
struct WakeSet {
    fired: AtomicU8,
    task: AtomicWaker,
}

/// The waker one source (a socket, the control channel, the timer) is polled with: it notes
/// the source, then wakes the task.
struct SourceWaker {
    set: Arc<WakeSet>,
    bit: u8,
}

impl TaskWake for SourceWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.set.fired.fetch_or(self.bit, Ordering::AcqRel);
        self.set.task.wake();
    }
}

/// Polls only the sources that can be ready. Every source is polled with its own waker, so a
/// wake-up says which source fired; at 50 packets a second on one socket the other five cost
/// nothing per packet (in tokio each poll of a source that is not ready takes a lock to store
/// its waker, and a channel poll walks its block list).
struct Sources {
    set: Arc<WakeSet>,
    wakers: [Waker; SOURCES],
    /// Sources to poll on this wake-up: those that fired, and those that were ready last time
    /// (a socket that gave a datagram may hold more; it is polled until it says Pending).
    due: u8,
}

impl Sources {
    fn new() -> Sources {
        let set = Arc::new(WakeSet {
            fired: AtomicU8::new(0),
            task: AtomicWaker::new(),
        });
        let wakers = std::array::from_fn(|i| {
            Waker::from(Arc::new(SourceWaker {
                set: set.clone(),
                bit: 1 << i,
            }))
        });
        Sources {
            set,
            wakers,
            due: ALL_SOURCES,
        }
    }

    /// Polls a source with its own waker; a source that is not ready drops out of `due` until
    /// its waker fires.
    fn poll<T>(&mut self, i: usize, f: impl FnOnce(&mut Context<'_>) -> Poll<T>) -> Poll<T> {
        let bit = 1u8 << i;
        if self.due & bit == 0 {
            return Poll::Pending;
        }
        let Some(waker) = self.wakers.get(i) else {
            return Poll::Pending;
        };
        let r = f(&mut Context::from_waker(waker));
        if r.is_pending() {
            self.due &= !bit;
        }
        r
    }

    /// Re-arms the timer; it is polled on the next wake-up so that it registers its deadline
    /// under its own waker.
    fn rearm(&mut self, tick: Pin<&mut Sleep>, at: Instant) {
        tick.reset(at);
        self.due |= 1 << TIMER;
    }

    /// After something else has polled the sources with the task's own waker (the
    /// announcement), every source is polled again to get its own waker back.
    fn poll_all(&mut self) {
        self.due = ALL_SOURCES;
    }
}

/// Polls the sources that may be ready, starting the sockets at `first` so that a flooded
/// socket cannot starve the others. Unlike `select!` over fresh `recv_from` futures, nothing is
/// registered and deregistered per packet.
fn poll_wake(
    cx: &mut Context<'_>,
    src: &mut Sources,
    control: &mut mpsc::Receiver<MediaControl>,
    socks: [&tokio::net::UdpSocket; SOCKETS],
    mut tick: Pin<&mut Sleep>,
    first: usize,
) -> Poll<Wake> {
    // Registered before the fired set is read, so a source firing in between wakes us again.
    src.set.task.register(cx.waker());
    src.due |= src.set.fired.swap(0, Ordering::AcqRel);
    if let Poll::Ready(c) = src.poll(CONTROL, |cx| control.poll_recv(cx)) {
        return Poll::Ready(Wake::Control(c));
    }
    for j in 0..SOCKETS {
        let i = (first + j) % SOCKETS;
        let Some(sock) = socks.get(i) else {
            continue;
        };
        // Readiness only: the datagram is read after the wait, into a buffer on the stack.
        if src.poll(i, |cx| sock.poll_recv_ready(cx)).is_ready() {
            return Poll::Ready(Wake::Readable(i));
        }
    }
    if src.poll(TIMER, |cx| tick.as_mut().poll(cx)).is_ready() {
        // An elapsed sleep stays ready; the tick is handled once and then re-armed.
        src.due &= !(1 << TIMER);
        return Poll::Ready(Wake::Tick);
    }
    Poll::Pending
}

impl Relay {
    /// Re-registers the call's four sockets with the current runtime's reactor. Each is
    /// duplicated and the duplicate registered here; the original leaves the reactor it was
    /// allocated under when it drops.
    fn rehome(&mut self) -> Result<(), MediaError> {
        fn here(sock: &tokio::net::UdpSocket) -> std::io::Result<tokio::net::UdpSocket> {
            use std::os::fd::AsFd;
            let fd = sock.as_fd().try_clone_to_owned()?;
            tokio::net::UdpSocket::from_std(std::net::UdpSocket::from(fd))
        }
        let err = |e: std::io::Error| MediaError::Rehome(e.to_string());
        for pair in [&mut self.a, &mut self.b] {
            pair.rtp = here(&pair.rtp).map_err(err)?;
            pair.rtcp = here(&pair.rtcp).map_err(err)?;
        }
        Ok(())
    }

    /// Plays the failure announcement ([`Announcer`]) to the caller leg in real time. Nothing
    /// is relayed meanwhile: the call is being given up. True when told to stop.
    async fn announce(&mut self, dur: Duration) -> bool {
        let Some(dest) = self.a_rtp.dest() else {
            return false;
        };
        let codec = self.scrubber.config().default_codec;
        let mut ann = Announcer::new(codec, rand::random(), rand::random(), rand::random());
        let mut buf = [0u8; 256];
        let mut every = tokio::time::interval(Duration::from_millis(20));
        let end = Instant::now() + dur;
        while Instant::now() < end {
            tokio::select! {
                _ = every.tick() => {
                    let n = ann.next_packet(&mut buf);
                    match self.a.rtp.send_to(buf.get(..n).unwrap_or_default(), dest).await {
                        Ok(_) => bump(&self.stats.a_out),
                        Err(_) => bump(&self.stats.send_errors),
                    }
                }
                c = self.control.recv() => match c {
                    Some(MediaControl::Stop) | None => return true,
                    // Scrubbing, peers and the rest no longer matter for this call.
                    Some(_) => {}
                },
            }
        }
        false
    }

    /// Caller→agent RTP: latched, scrubbed and sent on. Returns when it arrived if it came
    /// from the caller.
    fn caller_rtp(
        &mut self,
        received: std::io::Result<(usize, SocketAddr)>,
        rx: &[u8],
        out: &mut [u8],
        sources: &mut Sources,
        tick: Pin<&mut Sleep>,
        start: Instant,
    ) -> Option<Instant> {
        let now = Instant::now();
        let n = admit(received, &mut self.a_rtp, &self.stats.a_in, &self.stats)?;
        let ms = now.duration_since(start).as_millis() as u64;
        let input = rx.get(..n).unwrap_or_default();
        let verdict = {
            let mut sink = digit_sink(&self.digits, &self.stats);
            self.scrubber.process(ms, input, out, &mut sink)
        };
        // An RFC 4733 event whose end packets may be lost needs the short tick for its timeout
        // (RFC 4733 §2.5.2.2); re-armed only when that starts.
        if self.scrubber.event_pending() && tick.deadline() > now + TICK {
            sources.rearm(tick, now + TICK);
        }
        let sc = self.scrubber.stats();
        set(&self.stats.samples_masked, sc.samples_masked);
        set(&self.stats.events_stripped, sc.events_converted);
        let len = match verdict {
            Verdict::Forward(len) => len,
            Verdict::Drop(_) => {
                bump(&self.stats.dropped_scrubber);
                return Some(now);
            }
        };
        let pkt = out.get(..len).unwrap_or_default();
        if !forward(
            &self.b.rtp,
            pkt,
            &self.b_rtp,
            &self.stats.b_out,
            &self.stats,
        ) {
            return Some(now);
        }
        if let Some(rec) = self.recorder.as_mut() {
            rec.agent.put(pkt, ms as usize * 8);
        }
        Some(now)
    }

    /// Agent→caller RTP: latched and sent on as it came, then listened to for the agent's
    /// keys when that is on. Returns when it arrived if it came from the agent.
    fn agent_rtp(
        &mut self,
        received: std::io::Result<(usize, SocketAddr)>,
        rx: &[u8],
        sources: &mut Sources,
        tick: Pin<&mut Sleep>,
        start: Instant,
    ) -> Option<Instant> {
        let now = Instant::now();
        let n = admit(received, &mut self.b_rtp, &self.stats.b_in, &self.stats)?;
        let ms = now.duration_since(start).as_millis() as u64;
        let pkt = rx.get(..n).unwrap_or_default();
        if !forward(
            &self.a.rtp,
            pkt,
            &self.a_rtp,
            &self.stats.a_out,
            &self.stats,
        ) {
            return Some(now);
        }
        // Listened to after it has gone out as it came: the tap only reads.
        if let Some(tap) = self.agent_tap.as_mut() {
            let mut sink = agent_sink(&self.agent_digits, &self.stats);
            tap.observe(ms, pkt, &mut sink);
            if tap.event_pending() && tick.deadline() > now + TICK {
                sources.rearm(tick, now + TICK);
            }
        }
        if let Some(rec) = self.recorder.as_mut() {
            rec.caller.put(pkt, ms as usize * 8);
        }
        Some(now)
    }

    /// How often time is fed to the scrubber and silence checked while no RFC 4733 event is
    /// sounding: a tenth of the inactivity period, between `TICK` and `IDLE_TICK`.
    fn idle_tick(&self) -> Duration {
        (self.inactivity / 10).clamp(TICK, IDLE_TICK)
    }

    // Boxed: the task's future then holds a pointer, not the relay's state twice over (an
    // async fn keeps its argument and the moved-in value apart), and the state a packet touches
    // sits in one allocation — at thousands of calls, cache and TLB misses are most of the
    // relay's own cost per packet.
    async fn run(mut self: Box<Self>) -> Result<RelayOutcome, MediaError> {
        let start = Instant::now();
        let idle_tick = self.idle_tick();
        let mut tick = Box::pin(tokio::time::sleep_until(start + idle_tick));
        let mut last_rtp = start;
        let mut inactive = false;
        let mut first = 0usize;
        let mut sources = Sources::new();
        let now_ms = |t: Instant| t.duration_since(start).as_millis() as u64;

        loop {
            let wake = std::future::poll_fn(|cx| {
                poll_wake(
                    cx,
                    &mut sources,
                    &mut self.control,
                    [&self.a.rtp, &self.b.rtp, &self.a.rtcp, &self.b.rtcp],
                    tick.as_mut(),
                    first,
                )
            })
            .await;
            first = (first + 1) % SOCKETS;
            match wake {
                Wake::Readable(i) => {
                    // A caller packet goes through the scrubber, whose state has left the cache
                    // in the 20 ms since the call's last one: fetching it all now overlaps those
                    // misses with the receive system call instead of stalling the detectors on
                    // them one line at a time. Other packets never read most of it.
                    if i == 0 {
                        prefetch(&*self);
                        prefetch(&*self.stats);
                    }
                    // Read and sent without an await in between, so the buffers are the media
                    // thread's, not the task's.
                    let rtp = SCRATCH.with_borrow_mut(|scratch| {
                        let Scratch { rx, out } = scratch;
                        let sock = match i {
                            0 => &self.a.rtp,
                            1 => &self.b.rtp,
                            2 => &self.a.rtcp,
                            _ => &self.b.rtcp,
                        };
                        let r = match sock.try_recv_from(rx) {
                            // Readiness was stale; tokio has cleared it and the next poll waits.
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return None,
                            r => r,
                        };
                        match i {
                            0 => self.caller_rtp(r, rx, out, &mut sources, tick.as_mut(), start),
                            1 => self.agent_rtp(r, rx, &mut sources, tick.as_mut(), start),
                            2 => {
                                let leg = RtcpLeg {
                                    from: &mut self.a_rtcp,
                                    to: &self.b_rtcp,
                                    out: &self.b.rtcp,
                                    counted_in: &self.stats.rtcp_a_in,
                                    counted_out: &self.stats.rtcp_b_out,
                                };
                                relay_rtcp(r, rx, leg, &self.stats);
                                None
                            }
                            _ => {
                                let leg = RtcpLeg {
                                    from: &mut self.b_rtcp,
                                    to: &self.a_rtcp,
                                    out: &self.a.rtcp,
                                    counted_in: &self.stats.rtcp_b_in,
                                    counted_out: &self.stats.rtcp_a_out,
                                };
                                relay_rtcp(r, rx, leg, &self.stats);
                                None
                            }
                        }
                    });
                    if let Some(at) = rtp {
                        last_rtp = at;
                    }
                }
                Wake::Control(c) => match c {
                    Some(MediaControl::Scrub(on)) => {
                        let mut sink = digit_sink(&self.digits, &self.stats);
                        self.scrubber.set_enabled(on, &mut sink);
                    }
                    Some(MediaControl::Peers { a, b }) => {
                        self.a_rtp.update(a);
                        self.b_rtp.update(b);
                        self.a_rtcp.update(rtcp_of(a));
                        self.b_rtcp.update(rtcp_of(b));
                    }
                    Some(MediaControl::EventPayloadType(pt)) => {
                        self.scrubber.set_event_pt(pt);
                        if let Some(tap) = self.agent_tap.as_mut() {
                            tap.set_event_pt(pt);
                        }
                    }
                    Some(MediaControl::AgentDigits(on)) => {
                        if on && self.agent_tap.is_none() {
                            self.agent_tap = Some(Box::new(DigitTap::new(self.scrubber.config())));
                        } else if !on && let Some(mut tap) = self.agent_tap.take() {
                            let mut sink = agent_sink(&self.agent_digits, &self.stats);
                            tap.finish(&mut sink);
                        }
                    }
                    Some(MediaControl::Announce(d)) => {
                        if self.announce(d).await {
                            break;
                        }
                        sources.poll_all();
                    }
                    // Every handle gone is a stop too: nobody could stop us later.
                    Some(MediaControl::Stop) | None => break,
                },
                Wake::Tick => {
                    let t = tick.deadline();
                    {
                        let mut sink = digit_sink(&self.digits, &self.stats);
                        self.scrubber.tick(now_ms(t), &mut sink);
                    }
                    if let Some(tap) = self.agent_tap.as_mut() {
                        let mut sink = agent_sink(&self.agent_digits, &self.stats);
                        tap.tick(now_ms(t), &mut sink);
                    }
                    let silent = t.saturating_duration_since(last_rtp) >= self.inactivity;
                    if silent != inactive {
                        inactive = silent;
                        let ev = if silent {
                            MediaEvent::Inactive
                        } else {
                            MediaEvent::Active
                        };
                        let _ = self.events.try_send(ev);
                    }
                    // Missed ticks are not made up: the next is one period from now.
                    let tap_pending = self
                        .agent_tap
                        .as_deref()
                        .is_some_and(DigitTap::event_pending);
                    let period = if self.scrubber.event_pending() || tap_pending {
                        TICK
                    } else {
                        idle_tick
                    };
                    sources.rearm(tick.as_mut(), Instant::now() + period);
                }
            }
        }
        self.finish().await
    }

    async fn finish(mut self: Box<Self>) -> Result<RelayOutcome, MediaError> {
        {
            let mut sink = digit_sink(&self.digits, &self.stats);
            self.scrubber.finish(&mut sink);
        }
        if let Some(tap) = self.agent_tap.as_mut() {
            let mut sink = agent_sink(&self.agent_digits, &self.stats);
            tap.finish(&mut sink);
        }
        self.stats
            .samples_masked
            .store(self.scrubber.stats().samples_masked, Ordering::Relaxed);
        // Close the sockets and give the ports back before the (slow) recording write.
        let Relay {
            a,
            b,
            recorder,
            stats,
            ..
        } = *self;
        let leases: (PortLease, PortLease) = (a.lease, b.lease);
        drop((a.rtp, a.rtcp, b.rtp, b.rtcp));
        drop(leases);
        let recording = match recorder {
            None => None,
            Some(rec) => {
                let path = rec.path.clone();
                let write_path = path.clone();
                tokio::task::spawn_blocking(move || {
                    crate::wav::write_wav_stereo(
                        &write_path,
                        &rec.agent.samples,
                        &rec.caller.samples,
                    )
                })
                .await
                .map_err(|e| MediaError::Join(e.to_string()))?
                .map_err(|e| MediaError::Recording {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
                Some(path)
            }
        };
        Ok(RelayOutcome {
            stats: stats.snapshot(),
            recording,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn latches_on_sdp_ip_with_any_port_then_only_that_source() {
        let mut l = Latch::new(Some(sa("192.0.2.10:4000")));
        assert_eq!(l.dest(), Some(sa("192.0.2.10:4000")));
        assert!(!l.accept(sa("198.51.100.7:4000")), "stranger IP");
        assert!(l.accept(sa("192.0.2.10:61000")), "NAT-rewritten port");
        assert_eq!(l.dest(), Some(sa("192.0.2.10:61000")));
        assert!(
            !l.accept(sa("192.0.2.10:4000")),
            "latched: other port refused"
        );
        assert!(l.accept(sa("192.0.2.10:61000")));
    }

    #[test]
    fn no_sdp_address_latches_first_sender() {
        let mut l = Latch::new(None);
        assert_eq!(l.dest(), None);
        assert!(l.accept(sa("203.0.113.5:7000")));
        assert!(!l.accept(sa("203.0.113.6:7000")));
    }

    #[test]
    fn reinvite_to_new_ip_unlatches_same_ip_keeps() {
        let mut l = Latch::new(Some(sa("192.0.2.10:4000")));
        assert!(l.accept(sa("192.0.2.10:5000")));
        l.update(Some(sa("192.0.2.10:4002")));
        assert_eq!(l.dest(), Some(sa("192.0.2.10:5000")));
        l.update(Some(sa("192.0.2.20:4000")));
        assert_eq!(l.dest(), Some(sa("192.0.2.20:4000")));
        assert!(!l.accept(sa("192.0.2.10:5000")));
        assert!(l.accept(sa("192.0.2.20:4000")));
    }

    #[test]
    fn mapped_ipv4_matches() {
        let mut l = Latch::new(Some(sa("192.0.2.10:4000")));
        assert!(l.accept(sa("[::ffff:192.0.2.10]:4000")));
    }

    #[test]
    fn labels_become_safe_file_names() {
        assert_eq!(sanitize("abc-1_2.x"), "abc-1_2.x");
        assert_eq!(sanitize("../etc/passwd"), "call.._etc_passwd");
        assert_eq!(sanitize(""), "call");
    }
}
