//! Load test for the media relay: N concurrent 50 pps G.711 streams (caller→agent, scrubbing
//! on) through `net::media` relays built in-process, then the same streams through bare UDP
//! forwarders (recv + send, no processing) in the same run, for comparison.
//!
//!     cargo run --release --example media_load -- --streams 2000 --seconds 20
//!
//! Options: --streams N (2000), --seconds S (20), --relay-threads T (1), --sink-threads K (1),
//! --no-scrub (relay with scrubbing off, to separate the relay's own cost from the DSP's),
//! --rounds R (1; relay and forwarder phases alternate R times, median ratio reported),
//! --dsp-seconds S (10; afterwards, S seconds of every stream's packets through bare scrubbers
//! with no sockets, to set the DSP's own cost against what scrubbing adds inside the relay),
//! --pin (measured threads on their own CPUs, generator and sinks on the others),
//! --interleave MS (0; otherwise relays and forwarders are all up for the whole round and the
//! generator feeds them in turn, MS milliseconds each),
//! --bare KINDS (loop,tokio: which bare forwarders to measure against; see `BareKind`),
//! --sink wait|poll (wait; how the sinks receive, see `SinkKind`), --srtp (SRTP on both legs),
//! --one-way-bare (`bare-loop` does not watch the sockets it sends from; see `forward_loop`),
//! --base-port P (30000; the relay takes 4 ports per stream from P upwards, the forwarders take
//! their own from the OS).
//!
//! What is measured, and how:
//! - CPU: the relays run on media threads (`net::media::MediaWorkers`, one event loop per
//!   thread, as `tonewall run` relays), and each bare forwarder on T threads of its own, pinned
//!   alike. They record their ids at start; the on-CPU time of exactly those
//!   threads is read from /proc/self/task/<tid>/schedstat (the scheduler's runtime in
//!   nanoseconds; utime+stime from /stat, in 10 ms clock ticks, where schedstat is missing) at
//!   the start and end of the traffic window. Reported as CPU time per 1000 packets received
//!   and forwarded. The traffic generator (its own OS thread, blocking sockets) and the sinks
//!   (their own runtime) are not counted.
//! - Two bare forwarders: `bare-loop` waits on its sockets as the relay does (one epoll loop per
//!   thread): the like-for-like baseline, whose ratio is the cost of the relay's own work.
//!   `bare-tokio` is a tokio task per stream, the way an async Rust forwarder is usually
//!   written, and the relay's own mechanism before it had a loop of its own.
//! - Loss: packets sent minus packets that reached the sink, after a 1 s drain.
//! - Added latency: the generator stamps each packet's send time in a side table keyed by
//!   (SSRC, sequence), which the relay keeps intact; the sink subtracts it from the receive time.
//!   The payload cannot carry the stamp because the scrubber's delay line rewrites it. This is
//!   processing and queueing latency; the scrubber's fixed algorithmic delay (D samples, 10 ms by
//!   default, carried inside the audio) is reported separately.
//!
//! Figures from a shared 2-core machine mix in other processes' load: compare the two phases
//! of one run, not runs across machines. With the phases in turn, that load changes between
//! them, and on the project's 2-core VM single rounds' ratios ranged over 0.9-1.5. With
//! `--pin --interleave 100` both see it alike, a tenth of a second apart, and rounds kept within
//! about ±0.05 of each other: use that to compare builds.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;
use tonewall::dsp::g711::Codec;
use tonewall::net::media::{
    MediaError, MediaHandle, MediaRelay, MediaWorkers, RelayOptions, RelayOutcome,
};
use tonewall::net::ports::PortPool;
use tonewall::rtp::packet::{RtpView, write_header};
use tonewall::rtp::scrubber::{Scrubber, ScrubberConfig};
use tonewall::rtp::srtp::{InboundSrtp, OutboundSrtp, SrtpMasterKey, SrtpSuite};
use tonewall::sip::b2bua::{LegCrypto, RelaySrtp};

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, default_value_t = 2000)]
    streams: usize,
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    #[arg(long, default_value_t = 1)]
    relay_threads: usize,
    #[arg(long, default_value_t = 30_000)]
    base_port: u16,
    /// Threads of the sinks' runtime (the generator has its own thread).
    #[arg(long, default_value_t = 1)]
    sink_threads: usize,
    /// Relay with scrubbing off (a bit-exact pass-through): isolates the relay's own cost
    /// from the DSP's.
    #[arg(long)]
    no_scrub: bool,
    /// Relay and forwarder phases alternate this many times; the ratio is reported per round
    /// and as the median, since a shared machine's other load moves single figures.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Seconds of every stream's audio put through bare scrubbers after the rounds, with no
    /// sockets (0: skip).
    #[arg(long, default_value_t = 10)]
    dsp_seconds: u64,
    /// Pins the relay's and the forwarders' threads to the last CPUs
    /// and the generator and sinks to the others, so the process being measured does not
    /// share its cores with the load; on a 2-core machine, one core each.
    #[arg(long)]
    pin: bool,
    /// 0: the relay phase, then each forwarder's. Otherwise all are set up for the whole round,
    /// each on threads of its own, and the generator feeds one after the other, this many
    /// milliseconds at a time: the machine's other load, which moves over seconds, then weighs
    /// on all alike. Only one of them has traffic at any moment, so none pays for another's
    /// work in its caches. Each gets an equal share of the round's packets.
    #[arg(long, default_value_t = 0)]
    interleave: u64,
    /// Bare forwarders to compare with, each measured in the same run: `loop` (one epoll loop
    /// per thread, as the relay) and `tokio` (a tokio task per stream).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [BareKind::Loop, BareKind::Tokio])]
    bare: Vec<BareKind>,
    /// How the sinks wait for packets: `wait` (blocked on readiness, woken by each burst) or
    /// `poll` (a thread that empties the sockets every millisecond and is never woken).
    #[arg(long, value_enum, default_value_t = SinkKind::Wait)]
    sink: SinkKind,
    /// `bare-loop` watches only the sockets it receives on, not the ones it sends from: a
    /// one-way forwarder, cheaper than anything that can carry a call (see `forward_loop`).
    #[arg(long)]
    one_way_bare: bool,
    /// SRTP (AES_CM_128_HMAC_SHA1_80) on both legs of every relay: the generator sends SRTP,
    /// the relay decrypts, scrubs and encrypts for the sinks. The bare forwarders carry the
    /// same SRTP bytes unread, as a forwarder that does not scrub would.
    #[arg(long)]
    srtp: bool,
}

/// The master key of one side of every SRTP stream in the run (`--srtp`): fixed, so the
/// generator and the relays agree without passing keys around; each stream still has its
/// own context (its own SSRC, sequence and replay window).
fn srtp_key(side: u8) -> SrtpMasterKey {
    SrtpMasterKey::from_key_salt(SrtpSuite::AesCm128HmacSha1_80, &[side; 30]).expect("key")
}

/// How the sinks receive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum SinkKind {
    /// Tasks blocked on their sockets' readiness. On loopback the sender's `sendto` delivers
    /// the packet in its own context and so pays for waking a sleeping reader, a cost a relay
    /// sending to another host never has.
    Wait,
    /// One thread that sleeps 1 ms and then empties every sink socket without waiting. Nothing
    /// waits on the sockets, so no send pays for a wake-up; latency figures gain up to the
    /// 1 ms period. On the project's VM this took about 1 ms per 1000 packets off the relay and
    /// the bare forwarder alike and left their ratio where it was: the wake-ups are not what
    /// sets the two apart.
    Poll,
}

/// Which CPUs the measured runtime and the load run on, when pinning.
#[derive(Clone, Debug)]
struct Placement {
    measured: Vec<core_affinity::CoreId>,
    load: Vec<core_affinity::CoreId>,
}

impl Placement {
    fn new(pin: bool, measured_threads: usize) -> Option<Placement> {
        if !pin {
            return None;
        }
        let cores = core_affinity::get_core_ids().unwrap_or_default();
        if cores.len() < 2 {
            eprintln!("--pin needs two CPUs or more; not pinning");
            return None;
        }
        let m = measured_threads.clamp(1, cores.len() - 1);
        let (load, measured) = cores.split_at(cores.len() - m);
        Some(Placement {
            measured: measured.to_vec(),
            load: load.to_vec(),
        })
    }
}

/// Pins the calling thread to one of `cores` (round robin over calls).
fn pin_to(cores: &[core_affinity::CoreId], next: &AtomicU64) {
    if cores.is_empty() {
        return;
    }
    let i = next.fetch_add(1, Ordering::Relaxed) as usize % cores.len();
    if let Some(&c) = cores.get(i) {
        core_affinity::set_for_current(c);
    }
}

/// Send-time ring per stream: enough slots for a second and a bit of packets in flight.
const SLOTS: usize = 64;
/// Latency histogram: 10 µs buckets up to 1 s.
const BUCKET_US: u64 = 10;
const BUCKETS: usize = 100_000;
/// Sockets the generator sends from and the sink receives on.
const GEN_SOCKETS: usize = 16;
const SINK_SOCKETS: usize = 32;

fn lo() -> IpAddr {
    IpAddr::from([127, 0, 0, 1])
}

/// CPU time of one thread of this process, in nanoseconds. The scheduler's own runtime
/// (schedstat) is exact; utime+stime come in 10 ms ticks, which at a few hundred milliseconds of
/// CPU per phase moved the ratio by several per cent on their own.
fn thread_cpu_ns(tid: u32) -> u64 {
    if let Some(ns) = std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat"))
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
    {
        return ns;
    }
    let Ok(s) = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")) else {
        return 0;
    };
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15, in
    // USER_HZ (100) ticks.
    let rest = s.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let g = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (g(11) + g(12)) * 10_000_000
}

/// Context switches of one thread (voluntary: it slept waiting for packets; involuntary: it was
/// preempted). Each sleep and wake-up costs scheduler work that lands in the thread's CPU time.
fn thread_switches(tid: u32) -> u64 {
    let Ok(s) = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")) else {
        return 0;
    };
    s.lines()
        .filter(|l| l.starts_with("voluntary_ctxt_switches") || l.starts_with("nonvoluntary"))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum()
}

fn own_tid() -> u32 {
    std::fs::read_to_string("/proc/thread-self/stat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Media threads (`net::media::MediaWorkers`, as `tonewall run` relays on) whose ids are all
/// known, so their CPU time can be read.
fn measured_workers(
    threads: usize,
    place: Option<&Placement>,
) -> (MediaWorkers, Arc<Mutex<Vec<u32>>>) {
    let tids = Arc::new(Mutex::new(Vec::new()));
    let t2 = tids.clone();
    let cores = place.map(|p| p.measured.clone()).unwrap_or_default();
    let next = AtomicU64::new(0);
    let workers = MediaWorkers::start_with(threads, move || {
        pin_to(&cores, &next);
        if let Ok(mut v) = t2.lock() {
            v.push(own_tid());
        }
    })
    .expect("media threads");
    // Each thread notes its id as it starts.
    for _ in 0..1000 {
        if tids.lock().map(|v| v.len()).unwrap_or(0) >= workers.threads() {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    (workers, tids)
}

/// `per_thread` summed over the measured threads.
fn sum_over(tids: &Mutex<Vec<u32>>, per_thread: fn(u32) -> u64) -> u64 {
    tids.lock()
        .map(|v| v.iter().map(|&t| per_thread(t)).sum())
        .unwrap_or(0)
}

struct Shared {
    origin: Instant,
    sent_at: Vec<AtomicU64>,
    /// Streams per subject: stream `i` belongs to subject `i / per_subject`.
    per_subject: usize,
    /// Per subject.
    sent: Vec<AtomicU64>,
    received: Vec<AtomicU64>,
    stop: AtomicBool,
    hist: Mutex<Vec<Vec<u64>>>,
}

impl Shared {
    fn now_us(&self) -> u64 {
        self.origin.elapsed().as_micros() as u64
    }
}

struct PhaseResult {
    name: &'static str,
    sent: u64,
    /// Packets the schedule asked for (the generator may fall behind on a loaded machine).
    target: u64,
    received: u64,
    forwarded: u64,
    cpu_s: f64,
    /// Context switches of the measured threads.
    switches: u64,
    /// Datagrams the kernel dropped at the forwarder's input sockets and at the sinks'.
    in_drops: u64,
    sink_drops: u64,
    p50_us: u64,
    p99_us: u64,
    max_us: u64,
}

fn percentile(hist: &[u64], q: f64) -> u64 {
    let total: u64 = hist.iter().sum();
    if total == 0 {
        return 0;
    }
    let want = ((total as f64) * q).ceil() as u64;
    let mut acc = 0;
    for (i, &c) in hist.iter().enumerate() {
        acc += c;
        if acc >= want {
            return i as u64 * BUCKET_US;
        }
    }
    BUCKETS as u64 * BUCKET_US
}

/// Speech-like audio as G.711 μ-law: the fixture if present, else a voiced-ish synthetic.
fn audio_bytes() -> Vec<u8> {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/speech_en_hello.wav");
    let pcm = tonewall::wav::read_wav(&path).unwrap_or_else(|_| {
        (0..80_000)
            .map(|i| (3000.0 * ((i as f64) * 0.07).sin() * ((i as f64) * 0.001).sin()) as i16)
            .collect()
    });
    pcm.iter().map(|&s| Codec::Pcmu.encode(s)).collect()
}

/// Packet `frame` of stream `i`: each stream plays the recording from its own offset.
fn fill_packet(pkt: &mut [u8; 172], audio: &[u8], i: usize, frame: u64) {
    let off = ((i * 1234 + frame as usize * 160) % (audio.len().saturating_sub(160).max(1)))
        .min(audio.len().saturating_sub(160));
    write_header(
        pkt,
        frame == 0,
        0,
        frame as u16,
        (frame as u32) * 160,
        i as u32 + 1,
    );
    let src = audio.get(off..off + 160).unwrap_or(&[0xff; 160]);
    pkt[12..].copy_from_slice(src);
}

/// The scrubber alone over the same streams' packets in the order the relay gets them, with no
/// sockets: what the DSP costs when nothing else competes for the caches, to set against what
/// scrubbing adds inside the relay. Microseconds per packet, packet building subtracted.
fn dsp_alone(streams: usize, seconds: u64) -> f64 {
    let audio = audio_bytes();
    let mut scrubbers: Vec<Box<Scrubber>> = (0..streams)
        .map(|_| Box::new(Scrubber::new(ScrubberConfig::default())))
        .collect();
    let mut pkt = [0u8; 172];
    let mut out = [0u8; 2048];
    let frames = seconds * 50;
    let build = Instant::now();
    for frame in 0..frames {
        for i in 0..streams {
            fill_packet(&mut pkt, &audio, i, frame);
            std::hint::black_box(&pkt);
        }
    }
    let build = build.elapsed();
    let start = Instant::now();
    for frame in 0..frames {
        for (i, s) in scrubbers.iter_mut().enumerate() {
            fill_packet(&mut pkt, &audio, i, frame);
            let v = s.process(frame * 20, std::hint::black_box(&pkt), &mut out, &mut |d| {
                std::hint::black_box(d);
            });
            std::hint::black_box(v);
        }
    }
    let total = start.elapsed().saturating_sub(build);
    total.as_secs_f64() * 1e6 / (frames as f64 * streams.max(1) as f64)
}

/// Sends one 20 ms packet per stream per 20 ms, spread over 1 ms slots; counts and stamps each.
///
/// Runs on its own OS thread with blocking std sockets: a `send_to` is then one system call with
/// no readiness bookkeeping, and the generator never waits behind the sinks (an async generator
/// sharing a runtime with them fell behind the schedule at 2000 streams). A slot that starts
/// late is sent at once (bursts catch up), so the offered load stays on schedule on average.
fn generate(
    shared: Arc<Shared>,
    socks: Arc<Vec<std::net::UdpSocket>>,
    targets: Arc<Vec<SocketAddr>>,
    seconds: u64,
    interleave_ms: u64,
    srtp: bool,
) {
    let audio = audio_bytes();
    let n = targets.len();
    // Built before the clock starts; protecting a packet is then the generator's own cost,
    // outside every measured thread.
    let mut ctxs: Vec<OutboundSrtp> = if srtp {
        (0..n)
            .map(|_| OutboundSrtp::new(&srtp_key(1)).expect("SRTP context"))
            .collect()
    } else {
        Vec::new()
    };
    let per = shared.per_subject.max(1);
    let subjects = n.div_ceil(per).max(1) as u64;
    // Each stream's own packet count, so that its sequence numbers and timestamps run on without
    // gaps while its subject waits its turn.
    let mut frames = vec![0u64; n];
    let mut pkt = [0u8; 172];
    let mut wire = [0u8; 256];
    let begin = Instant::now();
    let slots = seconds * 1000;
    for slot in 0..slots {
        let due = begin + Duration::from_millis(slot);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        let active = (interleave_ms > 0).then(|| ((slot / interleave_ms) % subjects) as usize);
        let sub = (slot % 20) as usize;
        for i in (sub..n).step_by(20) {
            let j = i / per;
            if active.is_some_and(|a| a != j) {
                continue;
            }
            let Some(frame) = frames.get_mut(i) else {
                continue;
            };
            let seq = *frame as u16;
            fill_packet(&mut pkt, &audio, i, *frame);
            *frame += 1;
            shared.sent_at[i * SLOTS + (seq as usize % SLOTS)]
                .store(shared.now_us(), Ordering::Relaxed);
            let out: &[u8] = match ctxs.get_mut(i) {
                Some(c) => {
                    wire[..pkt.len()].copy_from_slice(&pkt);
                    let len = c.protect_rtp(&mut wire, pkt.len()).unwrap_or(0);
                    &wire[..len]
                }
                None => &pkt,
            };
            if socks[i % GEN_SOCKETS].send_to(out, targets[i]).is_ok()
                && let Some(c) = shared.sent.get(j)
            {
                c.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// A sink's count of what reached it: packets and their latency per subject.
struct Tally {
    shared: Arc<Shared>,
    hist: Vec<Vec<u64>>,
    streams: usize,
}

impl Tally {
    fn new(shared: Arc<Shared>, streams: usize) -> Tally {
        Tally {
            hist: vec![vec![0u64; BUCKETS]; shared.received.len()],
            shared,
            streams,
        }
    }

    fn note(&mut self, pkt: &[u8], now_us: u64) {
        let Ok(v) = RtpView::parse(pkt) else {
            return;
        };
        let i = (v.ssrc() as usize).wrapping_sub(1);
        if i >= self.streams {
            return;
        }
        let j = i / self.shared.per_subject.max(1);
        let (Some(received), Some(h)) = (self.shared.received.get(j), self.hist.get_mut(j)) else {
            return;
        };
        received.fetch_add(1, Ordering::Relaxed);
        let sent = self.shared.sent_at[i * SLOTS + (v.sequence() as usize % SLOTS)]
            .load(Ordering::Relaxed);
        let lat = now_us.saturating_sub(sent) / BUCKET_US;
        h[(lat as usize).min(BUCKETS - 1)] += 1;
    }

    fn finish(self) {
        if let Ok(mut all) = self.shared.hist.lock() {
            for (mine, theirs) in self.hist.iter().zip(all.iter_mut()) {
                for (a, b) in theirs.iter_mut().zip(mine) {
                    *a += b;
                }
            }
        }
    }
}

async fn sink(shared: Arc<Shared>, sock: UdpSocket, streams: usize) {
    let mut tally = Tally::new(shared.clone(), streams);
    let mut buf = [0u8; 2048];
    loop {
        let r = tokio::time::timeout(Duration::from_millis(200), sock.recv_from(&mut buf)).await;
        let Ok(Ok((len, _))) = r else {
            if shared.stop.load(Ordering::Relaxed) {
                break;
            }
            continue;
        };
        tally.note(&buf[..len], shared.now_us());
    }
    tally.finish();
}

/// How often the polling sink empties its sockets.
const SINK_POLL: Duration = Duration::from_millis(1);

/// The `--sink poll` sink: one thread that sleeps and then empties every sink socket, so no
/// sender ever finds a reader waiting on them. See [`SinkKind::Poll`].
fn polled_sink(shared: Arc<Shared>, socks: Vec<std::net::UdpSocket>, streams: usize) {
    let mut tally = Tally::new(shared.clone(), streams);
    let mut buf = [0u8; 2048];
    loop {
        // Read before the flag, so the last sweep comes after the drain period has ended.
        let stop = shared.stop.load(Ordering::Relaxed);
        for s in &socks {
            while let Ok((len, _)) = s.recv_from(&mut buf) {
                tally.note(&buf[..len], shared.now_us());
            }
        }
        if stop {
            break;
        }
        std::thread::sleep(SINK_POLL);
    }
    tally.finish();
}

/// The sinks' runtime and the generator's sockets, kept apart from the measured runtime.
struct Generator {
    rt: tokio::runtime::Runtime,
    socks: Arc<Vec<std::net::UdpSocket>>,
    place: Option<Placement>,
}

/// Datagrams the kernel dropped at the loopback UDP sockets bound to `ports` (their receive
/// buffers were full), from /proc/net/udp's last column. Tells loss at the relay's own sockets
/// from loss at the sinks', whose thread shares the two cores with everything else.
fn udp_drops(ports: &std::collections::HashSet<u16>) -> u64 {
    let Ok(table) = std::fs::read_to_string("/proc/net/udp") else {
        return 0;
    };
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let port = f.get(1)?.rsplit_once(':')?.1;
            let port = u16::from_str_radix(port, 16).ok()?;
            ports
                .contains(&port)
                .then(|| f.last()?.parse::<u64>().ok())?
        })
        .sum()
}

/// A forwarder being measured: the addresses its streams go in at, the threads it runs on,
/// and how many packets it has sent on so far.
struct Subject<'a> {
    name: &'static str,
    inputs: Vec<SocketAddr>,
    tids: &'a Mutex<Vec<u32>>,
    forwarded: Box<dyn Fn() -> u64 + 'a>,
}

/// Runs `args.streams` streams into each subject (stream `i` of subject `j` is number
/// `j·streams + i`, its SSRC one more), all forwarding to `sinks`, while measuring the CPU of
/// each subject's threads. With more than one subject the generator takes them in turn
/// (`--interleave`).
fn drive(
    args: &Args,
    generator: &Generator,
    sinks: Vec<UdpSocket>,
    subjects: &[Subject<'_>],
) -> Vec<PhaseResult> {
    let per = args.streams;
    let total = per * subjects.len();
    let shared = Arc::new(Shared {
        origin: Instant::now(),
        sent_at: (0..total * SLOTS).map(|_| AtomicU64::new(0)).collect(),
        per_subject: per,
        sent: subjects.iter().map(|_| AtomicU64::new(0)).collect(),
        received: subjects.iter().map(|_| AtomicU64::new(0)).collect(),
        stop: AtomicBool::new(false),
        hist: Mutex::new(vec![vec![0; BUCKETS]; subjects.len()]),
    });
    let in_ports: Vec<std::collections::HashSet<u16>> = subjects
        .iter()
        .map(|s| s.inputs.iter().map(|a| a.port()).collect())
        .collect();
    let sink_ports: std::collections::HashSet<u16> = sinks
        .iter()
        .filter_map(|s| Some(s.local_addr().ok()?.port()))
        .collect();
    let in_drops0: Vec<u64> = in_ports.iter().map(udp_drops).collect();
    let sink_drops0 = udp_drops(&sink_ports);
    let fwd0: Vec<u64> = subjects.iter().map(|s| (s.forwarded)()).collect();
    // A per-thread figure summed over each subject's threads.
    let each = |per_thread: fn(u32) -> u64| -> Vec<u64> {
        subjects
            .iter()
            .map(|s| sum_over(s.tids, per_thread))
            .collect()
    };
    let (cpu0, sw0) = (each(thread_cpu_ns), each(thread_switches));
    let gen_rt = &generator.rt;
    let load_cores = generator
        .place
        .as_ref()
        .map(|p| p.load.clone())
        .unwrap_or_default();
    let (mut sink_tasks, mut sink_threads) = (Vec::new(), Vec::new());
    match args.sink {
        SinkKind::Wait => {
            sink_tasks = sinks
                .into_iter()
                .map(|s| gen_rt.spawn(sink(shared.clone(), s, total)))
                .collect();
        }
        SinkKind::Poll => {
            // Out of the reactor: a registered socket has epoll's callback on its wait queue,
            // which every send would run.
            let socks: Vec<std::net::UdpSocket> = sinks
                .into_iter()
                .map(|s| s.into_std().expect("sink socket"))
                .collect();
            let (shared, cores) = (shared.clone(), load_cores.clone());
            sink_threads.push(
                std::thread::Builder::new()
                    .name("sink-poll".into())
                    .spawn(move || {
                        pin_to(&cores, &AtomicU64::new(0));
                        polled_sink(shared, socks, total)
                    })
                    .expect("sink thread"),
            );
        }
    }
    {
        let (shared, socks, seconds) = (shared.clone(), generator.socks.clone(), args.seconds);
        let inputs: Arc<Vec<SocketAddr>> = Arc::new(
            subjects
                .iter()
                .flat_map(|s| s.inputs.iter().copied())
                .collect(),
        );
        let cores = load_cores;
        let srtp = args.srtp;
        let interleave = if subjects.len() > 1 {
            args.interleave.max(1)
        } else {
            0
        };
        std::thread::Builder::new()
            .name("generator".into())
            .spawn(move || {
                pin_to(&cores, &AtomicU64::new(0));
                generate(shared, socks, inputs, seconds, interleave, srtp)
            })
            .expect("generator thread")
            .join()
            .expect("generator");
    }
    std::thread::sleep(Duration::from_secs(1));
    let (cpu1, sw1) = (each(thread_cpu_ns), each(thread_switches));
    let fwd: Vec<u64> = subjects
        .iter()
        .zip(&fwd0)
        .map(|(s, f0)| (s.forwarded)().saturating_sub(*f0))
        .collect();
    let in_drops: Vec<u64> = in_ports
        .iter()
        .zip(&in_drops0)
        .map(|(p, d0)| udp_drops(p).saturating_sub(*d0))
        .collect();
    let sink_drops = udp_drops(&sink_ports).saturating_sub(sink_drops0);
    shared.stop.store(true, Ordering::Relaxed);
    for t in sink_tasks {
        let _ = gen_rt.block_on(t);
    }
    for t in sink_threads {
        let _ = t.join();
    }
    let hists = shared.hist.lock().map(|h| h.clone()).unwrap_or_default();
    let share = subjects.len().max(1) as u64;
    subjects
        .iter()
        .enumerate()
        .map(|(j, s)| {
            let hist = hists.get(j).cloned().unwrap_or_default();
            let max_bucket = hist.iter().rposition(|&c| c > 0).unwrap_or(0) as u64;
            let count = |v: &[AtomicU64]| v.get(j).map_or(0, |c| c.load(Ordering::Relaxed));
            PhaseResult {
                name: s.name,
                sent: count(&shared.sent),
                target: per as u64 * 50 * args.seconds / share,
                received: count(&shared.received),
                forwarded: fwd.get(j).copied().unwrap_or(0),
                cpu_s: cpu1[j].saturating_sub(cpu0[j]) as f64 / 1e9,
                switches: sw1[j].saturating_sub(sw0[j]),
                in_drops: in_drops.get(j).copied().unwrap_or(0),
                // The sinks serve every subject of the round.
                sink_drops,
                p50_us: percentile(&hist, 0.50),
                p99_us: percentile(&hist, 0.99),
                max_us: max_bucket * BUCKET_US,
            }
        })
        .collect()
}

fn bind_many(rt: &tokio::runtime::Runtime, n: usize) -> Vec<UdpSocket> {
    rt.block_on(async {
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            v.push(UdpSocket::bind((lo(), 0)).await.expect("bind"));
        }
        v
    })
}

fn local_addrs(sinks: &[UdpSocket]) -> Vec<SocketAddr> {
    sinks
        .iter()
        .map(|s| s.local_addr().expect("addr"))
        .collect()
}

fn report(r: &PhaseResult) {
    let loss = r.sent.saturating_sub(r.received);
    // The histogram (and the send-time ring, 1.28 s) cannot tell latencies beyond 1 s apart.
    let us = |v: u64| {
        if v >= (BUCKETS as u64 - 1) * BUCKET_US {
            ">1 s".to_string()
        } else {
            format!("{v} µs")
        }
    };
    let target = r.target;
    println!(
        "{:<10} offered {:>9} of {:>9} sent, received {:>9} loss {:>7} ({:.3} %)  cpu {:>6.2} s = {:>6.2} ms per 1000 pkts  switches {:>4.0} per 1000 pkts  latency p50 {} p99 {} max {}",
        r.name,
        r.sent,
        target,
        r.received,
        loss,
        100.0 * loss as f64 / r.sent.max(1) as f64,
        r.cpu_s,
        1000.0 * r.cpu_s / (r.forwarded.max(1) as f64 / 1000.0),
        r.switches as f64 / (r.forwarded.max(1) as f64 / 1000.0),
        us(r.p50_us),
        us(r.p99_us),
        us(r.max_us),
    );
    if loss > 0 {
        println!(
            "{:<10} of the loss, dropped by the kernel at full receive buffers: {} at the {} sockets, {} at the sinks' sockets",
            r.name, r.in_drops, r.name, r.sink_drops
        );
    }
}

type RelayTask = JoinHandle<Result<RelayOutcome, MediaError>>;

/// The streams' `net::media` relays on their media threads.
struct Relays {
    workers: MediaWorkers,
    tids: Arc<Mutex<Vec<u32>>>,
    relays: Vec<(MediaHandle, RelayTask)>,
}

impl Relays {
    fn start(
        args: &Args,
        generator: &Generator,
        gen_addrs: &[SocketAddr],
        sink_addrs: &[SocketAddr],
    ) -> Relays {
        let n = args.streams;
        let (workers, tids) = measured_workers(args.relay_threads, generator.place.as_ref());
        let top = args.base_port as u32 + 4 * n as u32 + 200;
        let pool = PortPool::new(lo(), args.base_port, top.min(65_534) as u16).expect("port range");
        // Ports are allocated (and their sockets registered) on another runtime, as the SIP
        // side does; each relay moves its sockets to its media thread.
        let _rt = generator.rt.enter();
        let mut relays = Vec::with_capacity(n);
        for i in 0..n {
            let a = pool.allocate().expect("leg A ports");
            let b = pool.allocate().expect("leg B ports");
            let leg = |peer: u8, ours: u8| LegCrypto {
                inbound: InboundSrtp::new(&srtp_key(peer)).expect("SRTP context"),
                outbound: OutboundSrtp::new(&srtp_key(ours)).expect("SRTP context"),
            };
            let srtp = args.srtp.then(|| {
                Box::new(RelaySrtp {
                    epoch: 1,
                    a: Some(leg(1, 2)),
                    b: Some(leg(3, 4)),
                })
            });
            relays.push(MediaRelay::start_secure(
                a,
                b,
                (
                    Some(gen_addrs[i % GEN_SOCKETS]),
                    Some(sink_addrs[i % SINK_SOCKETS]),
                ),
                ScrubberConfig::default(),
                !args.no_scrub,
                RelayOptions {
                    workers: Some(workers.clone()),
                    ..RelayOptions::default()
                },
                srtp,
            ));
        }
        Relays {
            workers,
            tids,
            relays,
        }
    }

    fn subject(&self) -> Subject<'_> {
        Subject {
            name: "relay",
            inputs: self.relays.iter().map(|(h, _)| h.a_addr).collect(),
            tids: &self.tids,
            forwarded: Box::new(|| self.forwarded()),
        }
    }

    fn forwarded(&self) -> u64 {
        self.relays.iter().map(|(h, _)| h.stats().b_out).sum()
    }

    /// Packets the relays dropped themselves (scrubber, strangers, no peer, send errors).
    fn dropped(&self) -> u64 {
        self.relays
            .iter()
            .map(|(h, _)| {
                let s = h.stats();
                s.dropped_scrubber + s.dropped_stranger + s.dropped_no_peer + s.send_errors
            })
            .sum()
    }

    /// Stops every relay and waits until it has ended, so its ports are closed before the next
    /// round takes the same range; then ends the media threads.
    fn stop(self, generator: &Generator) {
        generator.rt.block_on(async {
            for (h, task) in self.relays {
                h.stop().await;
                let _ = task.await;
            }
        });
        drop(self.workers);
    }
}

/// How a bare forwarder waits for its sockets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum BareKind {
    /// One epoll loop per thread (mio), the relay's own mechanism: the like-for-like baseline.
    Loop,
    /// A tokio task per stream on a single-threaded runtime per thread: what a forwarder
    /// written the obvious way in async Rust costs.
    Tokio,
}

impl BareKind {
    fn name(self) -> &'static str {
        match self {
            BareKind::Loop => "bare-loop",
            BareKind::Tokio => "bare-tokio",
        }
    }
}

/// One stream's forwarding sockets and where it forwards to.
type BareStream = (std::net::UdpSocket, std::net::UdpSocket, SocketAddr);

/// A bare forwarder per stream (recv + send per packet, no processing) on measured threads of
/// its own, pinned as the relays' are.
struct Bare {
    kind: BareKind,
    tids: Arc<Mutex<Vec<u32>>>,
    count: Arc<AtomicU64>,
    inputs: Vec<SocketAddr>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Bare {
    fn start(
        kind: BareKind,
        args: &Args,
        generator: &Generator,
        sink_addrs: &[SocketAddr],
    ) -> Bare {
        let threads = args.relay_threads.max(1);
        let one_way = args.one_way_bare;
        let count = Arc::new(AtomicU64::new(0));
        let mut inputs = Vec::with_capacity(args.streams);
        let mut per: Vec<Vec<BareStream>> = (0..threads).map(|_| Vec::new()).collect();
        for i in 0..args.streams {
            let bind = || {
                let s = std::net::UdpSocket::bind((lo(), 0)).expect("bind");
                s.set_nonblocking(true).expect("nonblocking");
                s
            };
            let (rx, tx) = (bind(), bind());
            inputs.push(rx.local_addr().expect("addr"));
            per[i % threads].push((rx, tx, sink_addrs[i % SINK_SOCKETS]));
        }
        let tids = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let cores = generator
            .place
            .as_ref()
            .map(|p| p.measured.clone())
            .unwrap_or_default();
        let next = Arc::new(AtomicU64::new(0));
        let handles = per
            .into_iter()
            .map(|streams| {
                let (count, stop, tids, cores, next) = (
                    count.clone(),
                    stop.clone(),
                    tids.clone(),
                    cores.clone(),
                    next.clone(),
                );
                std::thread::Builder::new()
                    .name(kind.name().into())
                    .spawn(move || {
                        pin_to(&cores, &next);
                        if let Ok(mut v) = tids.lock() {
                            v.push(own_tid());
                        }
                        match kind {
                            BareKind::Loop => forward_loop(streams, &count, &stop, one_way),
                            BareKind::Tokio => forward_tasks(streams, &count, &stop),
                        }
                    })
                    .expect("forwarder thread")
            })
            .collect();
        for _ in 0..1000 {
            if tids.lock().map(|v| v.len()).unwrap_or(0) >= threads {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Bare {
            kind,
            tids,
            count,
            inputs,
            stop,
            threads: handles,
        }
    }

    fn subject(&self) -> Subject<'_> {
        Subject {
            name: self.kind.name(),
            inputs: self.inputs.clone(),
            tids: &self.tids,
            forwarded: Box::new(|| self.count.load(Ordering::Relaxed)),
        }
    }

    /// Ends the forwarders and waits until their sockets are closed (an OS port one held may be
    /// in the relays' range next round).
    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// How often an idle forwarder looks at its stop flag.
const STOP_POLL: Duration = Duration::from_millis(50);

/// One epoll loop over the thread's streams: each readable socket is drained, every datagram
/// sent on as it came. Each stream's outgoing socket is watched too (token `2k + 1`), and what
/// comes in on it goes back to where the stream's last packet came from: a call forwarder must
/// take the far end's audio on the port it sends from (symmetric RTP), as the relay does. That
/// is not free even with nothing coming back: Linux runs the wait-queue callbacks of a socket
/// it has just sent from (sock_wfree → sock_def_write_space), and epoll's is one. `one_way`
/// leaves the outgoing sockets unwatched, the cheaper forwarder measured before.
fn forward_loop(streams: Vec<BareStream>, count: &AtomicU64, stop: &AtomicBool, one_way: bool) {
    let mut poll = mio::Poll::new().expect("poll");
    let mut socks: Vec<(mio::net::UdpSocket, mio::net::UdpSocket, SocketAddr)> = streams
        .into_iter()
        .map(|(rx, tx, to)| {
            let rx = mio::net::UdpSocket::from_std(rx);
            (rx, mio::net::UdpSocket::from_std(tx), to)
        })
        .collect();
    let mut back: Vec<Option<SocketAddr>> = vec![None; socks.len()];
    for (k, s) in socks.iter_mut().enumerate() {
        let r = poll.registry();
        r.register(&mut s.0, mio::Token(2 * k), mio::Interest::READABLE)
            .expect("register");
        if !one_way {
            r.register(&mut s.1, mio::Token(2 * k + 1), mio::Interest::READABLE)
                .expect("register");
        }
    }
    let mut events = mio::Events::with_capacity(1024);
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        if poll.poll(&mut events, Some(STOP_POLL)).is_err() {
            continue;
        }
        for ev in events.iter() {
            let (k, returning) = (ev.token().0 / 2, ev.token().0 % 2 == 1);
            let (Some((rx, tx, to)), Some(from)) = (socks.get(k), back.get_mut(k)) else {
                continue;
            };
            if returning {
                while let Ok((len, _)) = tx.recv_from(&mut buf) {
                    if let Some(caller) = *from {
                        let _ = rx.send_to(&buf[..len], caller);
                    }
                }
                continue;
            }
            while let Ok((len, src)) = rx.recv_from(&mut buf) {
                *from = Some(src);
                if tx.send_to(&buf[..len], *to).is_ok() {
                    count.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

/// A task per stream on this thread's own single-threaded runtime.
fn forward_tasks(streams: Vec<BareStream>, count: &Arc<AtomicU64>, stop: &AtomicBool) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        for (rx, tx, to) in streams {
            let count = count.clone();
            let rx = UdpSocket::from_std(rx).expect("register");
            let tx = UdpSocket::from_std(tx).expect("register");
            tokio::spawn(async move {
                let mut buf = [0u8; 2048];
                while let Ok((len, _)) = rx.recv_from(&mut buf).await {
                    if tx.send_to(&buf[..len], to).await.is_ok() {
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
        while !stop.load(Ordering::Relaxed) {
            tokio::time::sleep(STOP_POLL).await;
        }
    });
    // Dropping the runtime drops the tasks, and with them their sockets.
}

/// One round: the relays' phase, then each bare forwarder's; or, with `--interleave`, all set
/// up at once and fed in turn. The relays' result comes first.
fn run_round(
    args: &Args,
    generator: &Generator,
    gen_addrs: &[SocketAddr],
) -> (Vec<PhaseResult>, u64) {
    let sinks = bind_many(&generator.rt, SINK_SOCKETS);
    let to = local_addrs(&sinks);
    let relays = Relays::start(args, generator, gen_addrs, &to);
    if args.interleave > 0 {
        let bares: Vec<Bare> = args
            .bare
            .iter()
            .map(|&k| Bare::start(k, args, generator, &to))
            .collect();
        let mut subjects = vec![relays.subject()];
        subjects.extend(bares.iter().map(Bare::subject));
        let results = drive(args, generator, sinks, &subjects);
        drop(subjects);
        let dropped = relays.dropped();
        relays.stop(generator);
        bares.into_iter().for_each(Bare::stop);
        return (results, dropped);
    }
    let mut results = drive(args, generator, sinks, &[relays.subject()]);
    let dropped = relays.dropped();
    relays.stop(generator);
    for &kind in &args.bare {
        let sinks = bind_many(&generator.rt, SINK_SOCKETS);
        let bare = Bare::start(kind, args, generator, &local_addrs(&sinks));
        results.extend(drive(args, generator, sinks, &[bare.subject()]));
        bare.stop();
    }
    (results, dropped)
}

fn per_packet(r: &PhaseResult) -> f64 {
    r.cpu_s / (r.forwarded.max(1) as f64)
}

fn main() {
    let args = Args::parse();
    let n = args.streams;
    println!(
        "media_load: {n} streams × 50 pps for {} s, relay threads {}, scrubbing {}, {} round(s), {} CPUs online, shared with other processes",
        args.seconds,
        args.relay_threads,
        if args.no_scrub { "off" } else { "on" },
        args.rounds.max(1),
        std::thread::available_parallelism()
            .map(|p| p.get())
            .unwrap_or(0)
    );
    let place = Placement::new(args.pin, args.relay_threads);
    if let Some(p) = &place {
        println!(
            "pinned: measured runtime on CPUs {:?}, generator and sinks on {:?}",
            p.measured.iter().map(|c| c.id).collect::<Vec<_>>(),
            p.load.iter().map(|c| c.id).collect::<Vec<_>>()
        );
    }
    let sink_cores = place.as_ref().map(|p| p.load.clone()).unwrap_or_default();
    let sink_next = AtomicU64::new(0);
    let gen_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.sink_threads.max(1))
        .thread_name("sink")
        .on_thread_start(move || pin_to(&sink_cores, &sink_next))
        .enable_all()
        .build()
        .expect("sink runtime");
    let gen_socks: Arc<Vec<std::net::UdpSocket>> = Arc::new(
        (0..GEN_SOCKETS)
            .map(|_| std::net::UdpSocket::bind((lo(), 0)).expect("bind"))
            .collect(),
    );
    let generator = Generator {
        rt: gen_rt,
        socks: gen_socks.clone(),
        place,
    };
    let delay = Scrubber::new(ScrubberConfig::default()).delay_samples();
    let gen_addrs: Vec<SocketAddr> = gen_socks
        .iter()
        .map(|s| s.local_addr().expect("addr"))
        .collect();

    // Per bare forwarder, the ratio of each round.
    let mut ratios: Vec<Vec<f64>> = args.bare.iter().map(|_| Vec::new()).collect();
    for round in 1..=args.rounds.max(1) {
        let (results, dropped) = run_round(&args, &generator, &gen_addrs);
        if args.rounds > 1 {
            println!("round {round}");
        }
        results.iter().for_each(report);
        println!("relay drops (scrubber/stranger/no-peer/send errors): {dropped}");
        let Some((relay, bares)) = results.split_first() else {
            continue;
        };
        for (bare, rs) in bares.iter().zip(ratios.iter_mut()) {
            let ratio = per_packet(relay) / per_packet(bare).max(1e-12);
            println!("CPU ratio relay/{} per packet: {ratio:.2}", bare.name);
            rs.push(ratio);
        }
    }
    for (kind, rs) in args.bare.iter().zip(ratios.iter_mut()) {
        rs.sort_by(f64::total_cmp);
        let median = rs.get(rs.len() / 2).copied().unwrap_or(0.0);
        println!(
            "median CPU ratio relay/{} per packet over {} round(s): {median:.2} (min {:.2}, max {:.2})",
            kind.name(),
            rs.len(),
            rs.first().copied().unwrap_or(0.0),
            rs.last().copied().unwrap_or(0.0),
        );
    }
    println!(
        "scrubber's fixed algorithmic delay {delay} samples = {:.1} ms (not in the wall-clock latency above)",
        delay as f64 / 8.0
    );
    if args.dsp_seconds > 0 && !args.no_scrub {
        println!(
            "scrubber alone over the same {n} streams' packets, no sockets: {:.2} µs per packet",
            dsp_alone(n, args.dsp_seconds)
        );
    }
}
