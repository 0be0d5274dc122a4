//! The RTP relay shell on loopback sockets: a caller keys a card over speech (in-band tones and
//! RFC 4733 events) and the agent's socket gets neither, while the digit channel gets the keys;
//! agent→caller and scrub-off paths are bit-exact; latching drops strangers; RTCP is relayed;
//! silence raises an inactivity event. Every wait has a timeout; nothing asserts on speed.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use common::*;
use tokio::net::UdpSocket;
use tokio::time::timeout;
use tonewall::dsp::spectrum;
use tonewall::net::media::{MediaEvent, MediaHandle, MediaRelay, RelayOptions, RelayOutcome};
use tonewall::net::ports::{PortPair, PortPool};
use tonewall::rtp::packet::RtpView;
use tonewall::rtp::scrubber::ScrubberConfig;
use tonewall::rtp::trunk::{KeySpan, TrunkConfig, depacketize, packetize};

const WAIT: Duration = Duration::from_secs(10);

fn lo() -> IpAddr {
    IpAddr::from([127, 0, 0, 1])
}

struct Call {
    handle: MediaHandle,
    task: tokio::task::JoinHandle<Result<RelayOutcome, tonewall::net::media::MediaError>>,
    /// The trunk's sockets (caller side) and the contact centre's (agent side).
    caller: PortPair,
    agent: PortPair,
    a_rtcp: SocketAddr,
    b_rtcp: SocketAddr,
}

/// A relay between a caller and an agent, each a port pair from a pool over `base..`. Each test
/// uses its own range so tests in this binary never compete for ports.
async fn call(base: u16, scrub_on: bool, opts: RelayOptions) -> Call {
    let pool = PortPool::new(lo(), base, base + 99).unwrap();
    let a = pool.allocate().unwrap();
    let b = pool.allocate().unwrap();
    let caller = pool.allocate().unwrap();
    let agent = pool.allocate().unwrap();
    let (a_rtcp, b_rtcp) = (a.rtcp_addr(), b.rtcp_addr());
    let (handle, task) = MediaRelay::start_with(
        a,
        b,
        Some(caller.rtp_addr()),
        Some(agent.rtp_addr()),
        ScrubberConfig::default(),
        scrub_on,
        opts,
    );
    Call {
        handle,
        task,
        caller,
        agent,
        a_rtcp,
        b_rtcp,
    }
}

async fn stop(mut c: Call) -> (RelayOutcome, String) {
    assert!(c.handle.stop().await);
    let out = timeout(WAIT, c.task).await.unwrap().unwrap().unwrap();
    let mut keys = String::new();
    while let Ok(Some(d)) = timeout(WAIT, c.handle.digits.recv()).await {
        keys.push(d.digit.reveal());
    }
    (out, keys)
}

/// The test card keyed over quiet speech, with a trailing pause.
fn card_over_speech() -> (Vec<i16>, Vec<KeySpan>) {
    let (mut sig, spans) = tones(&card_keys(), ToneParams::default(), 500.0, 7);
    sig.extend(std::iter::repeat_n(0.0, 4000));
    let speech = tonewall::wav::read_wav(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/speech_en_hello.wav"),
    )
    .unwrap();
    mix_under(&mut sig, &speech, -12.0);
    (to_i16(&sig), spans)
}

#[tokio::test]
async fn card_over_speech_in_band_and_rfc4733_never_reaches_the_agent() {
    let c = call(41_000, true, RelayOptions::default()).await;
    let (audio, spans) = card_over_speech();
    // PAN and expiry in-band, CVV as RFC 4733 events (a gateway that strips some tones).
    let trunk = TrunkConfig::default();
    let events = &spans[spans.len() - 3..];
    let packets = packetize(&audio, &trunk, Some(events));
    assert!(
        packets
            .iter()
            .any(|p| RtpView::parse(p).unwrap().payload_type() == 101)
    );
    send_all(&c.caller.rtp, c.handle.a_addr, &packets).await;
    let got = recv_n(&c.agent.rtp, packets.len()).await;
    assert_eq!(got.len(), packets.len(), "one packet out per packet in");
    for p in &got {
        assert_ne!(
            RtpView::parse(p).unwrap().payload_type(),
            101,
            "telephone-event reached the agent"
        );
    }
    let heard = depacketize(got.iter().map(|p| p.as_slice()), trunk.first_ts);
    assert_eq!(heard.non_audio_packets, 0);
    let found = spectrum::fft_decode(&heard.audio, &mut |_| {});
    assert!(
        found.is_empty(),
        "independent decoder heard {} digits on the agent leg",
        found.len()
    );
    // The same audio unscrubbed is decodable: the judge can hear the keys when they are there.
    let sent = depacketize(
        packetize(&audio, &trunk, None).iter().map(|p| p.as_slice()),
        trunk.first_ts,
    );
    assert!(spectrum::fft_decode(&sent.audio, &mut |_| {}).len() >= spans.len() - 2);

    let (out, keys) = stop(c).await;
    assert_eq!(keys, card_keys(), "capture gets every key once");
    assert_eq!(out.stats.a_in, packets.len() as u64);
    assert_eq!(out.stats.b_out, packets.len() as u64);
    assert!(out.stats.samples_masked > 0);
    assert_eq!(out.stats.digits, card_keys().len() as u64);
}

#[tokio::test]
async fn agent_to_caller_is_bit_exact() {
    let c = call(41_200, true, RelayOptions::default()).await;
    let (audio, _) = card_over_speech();
    let trunk = TrunkConfig {
        ssrc: 0xa9e7,
        ..TrunkConfig::default()
    };
    // Tones from the agent's side are not ours to scrub.
    let packets = packetize(&audio, &trunk, None);
    send_all(&c.agent.rtp, c.handle.b_addr, &packets).await;
    let got = recv_n(&c.caller.rtp, packets.len()).await;
    assert_eq!(got, packets);
    let (out, keys) = stop(c).await;
    assert!(keys.is_empty());
    assert_eq!(out.stats.b_in, packets.len() as u64);
    assert_eq!(out.stats.a_out, packets.len() as u64);
}

#[tokio::test]
async fn scrub_off_is_bit_exact_and_switches_on_between_packets() {
    let c = call(41_400, false, RelayOptions::default()).await;
    let (audio, _) = card_over_speech();
    let trunk = TrunkConfig::default();
    let packets = packetize(&audio, &trunk, None);
    send_all(&c.caller.rtp, c.handle.a_addr, &packets).await;
    let got = recv_n(&c.agent.rtp, packets.len()).await;
    assert_eq!(got, packets, "scrubbing off passes bytes through unchanged");

    // Switched on, the same keys are masked.
    assert!(c.handle.set_scrubbing(true).await);
    let second = packetize(
        &audio,
        &TrunkConfig {
            first_seq: 5000,
            first_ts: 900_000,
            ..trunk
        },
        None,
    );
    send_all(&c.caller.rtp, c.handle.a_addr, &second).await;
    let got = recv_n(&c.agent.rtp, second.len()).await;
    assert_eq!(got.len(), second.len());
    let heard = depacketize(got.iter().map(|p| p.as_slice()), 900_000);
    assert!(spectrum::fft_decode(&heard.audio, &mut |_| {}).is_empty());
    let (_, keys) = stop(c).await;
    assert_eq!(keys, card_keys(), "only the scrubbed pass is captured");
}

#[tokio::test]
async fn latched_peer_only_strangers_dropped_and_counted() {
    let c = call(41_600, true, RelayOptions::default()).await;
    let trunk = TrunkConfig::default();
    let packets = packetize(&vec![0i16; 160 * 20], &trunk, None);
    // The caller latches leg A and the agent leg B. On loopback a stranger shares their IP,
    // so it could only win a race to the first packet; the unit tests cover other IPs.
    send_all(&c.caller.rtp, c.handle.a_addr, &packets[..10]).await;
    assert_eq!(recv_n(&c.agent.rtp, 10).await.len(), 10);
    send_all(&c.agent.rtp, c.handle.b_addr, &packets[..1]).await;
    assert_eq!(recv_n(&c.caller.rtp, 1).await.len(), 1);
    // A stranger (same host, other port) injects audio on both legs.
    let stranger = UdpSocket::bind((lo(), 0)).await.unwrap();
    send_all(&stranger, c.handle.a_addr, &packets[10..]).await;
    send_all(&stranger, c.handle.b_addr, &packets[10..]).await;
    // The caller carries on; only its packets arrive.
    send_all(&c.caller.rtp, c.handle.a_addr, &packets[10..15]).await;
    let got = recv_n(&c.agent.rtp, 5).await;
    assert_eq!(got.len(), 5);
    for (g, p) in got.iter().zip(&packets[10..15]) {
        assert_eq!(
            RtpView::parse(g).unwrap().sequence(),
            RtpView::parse(p).unwrap().sequence()
        );
    }
    // Nothing else is queued at the agent or at the caller.
    assert!(recv_n(&c.agent.rtp, 1).await.is_empty());
    assert!(recv_n(&c.caller.rtp, 1).await.is_empty());
    let stranger_count = 2 * (packets.len() - 10) as u64;
    let (out, _) = stop(c).await;
    assert_eq!(out.stats.dropped_stranger, stranger_count);
    assert_eq!(out.stats.a_in, 15);
    assert_eq!(out.stats.a_out, 1);
}

#[tokio::test]
async fn rtcp_is_relayed_both_ways() {
    let c = call(41_800, true, RelayOptions::default()).await;
    // A receiver report (RFC 3550 §6.4.2) with no report blocks, then an SR-sized blob.
    let rr = vec![0x80u8, 201, 0, 1, 0xde, 0xad, 0xbe, 0xef];
    let sr: Vec<u8> = (0..28u8).collect();
    c.caller.rtcp.send_to(&rr, c.a_rtcp).await.unwrap();
    assert_eq!(recv_n(&c.agent.rtcp, 1).await, vec![rr.clone()]);
    c.agent.rtcp.send_to(&sr, c.b_rtcp).await.unwrap();
    assert_eq!(recv_n(&c.caller.rtcp, 1).await, vec![sr.clone()]);
    let (out, _) = stop(c).await;
    assert_eq!((out.stats.rtcp_a_in, out.stats.rtcp_b_out), (1, 1));
    assert_eq!((out.stats.rtcp_b_in, out.stats.rtcp_a_out), (1, 1));
}

#[tokio::test]
async fn silence_raises_inactive_then_media_raises_active() {
    let opts = RelayOptions {
        inactivity: Duration::from_millis(300),
        ..RelayOptions::default()
    };
    let mut c = call(42_000, true, opts).await;
    let ev = timeout(WAIT, c.handle.events.recv()).await.unwrap();
    assert_eq!(ev, Some(MediaEvent::Inactive));
    let packets = packetize(&vec![0i16; 160 * 3], &TrunkConfig::default(), None);
    send_all(&c.caller.rtp, c.handle.a_addr, &packets).await;
    let ev = timeout(WAIT, c.handle.events.recv()).await.unwrap();
    assert_eq!(ev, Some(MediaEvent::Active));
    let ev = timeout(WAIT, c.handle.events.recv()).await.unwrap();
    assert_eq!(ev, Some(MediaEvent::Inactive));
    stop(c).await;
}

#[tokio::test]
async fn recording_is_stereo_agent_left_caller_right() {
    use std::os::unix::fs::PermissionsExt;
    use tonewall::dsp::g711::Codec;
    let dir = tempfile::tempdir().unwrap();
    let opts = RelayOptions {
        record_dir: Some(dir.path().to_path_buf()),
        call_label: "call-42".into(),
        ..RelayOptions::default()
    };
    let c = call(42_200, true, opts.clone()).await;
    let trunk = TrunkConfig::default();
    // 6 s: longer than the recorder's ring (about 2 s), so most of it goes to disk mid-call.
    let tone: Vec<i16> = (0..8000 * 6)
        .map(|i| (8000.0 * (i as f64 * 0.3).sin()) as i16)
        .collect();
    let packets = packetize(&tone, &trunk, None);
    // Only the agent talks: the caller channel (right) carries it, the agent channel is empty.
    // Received while sent: 6 s of packets overflow a socket buffer.
    let (_, got) = tokio::join!(
        send_all(&c.agent.rtp, c.handle.b_addr, &packets),
        recv_n(&c.caller.rtp, packets.len())
    );
    assert_eq!(got.len(), packets.len());
    let (out, _) = stop(c).await;
    let path = out.recording.unwrap();
    // Named by call and start time, never `call-42.wav` again (which a restart overwrote).
    let name = path.file_name().unwrap().to_str().unwrap().to_string();
    assert_eq!(path.parent(), Some(dir.path()));
    assert!(
        name.starts_with("call-42-") && name.ends_with(".wav"),
        "{name}"
    );
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(
        mode, 0o600,
        "recordings are readable by the relay's user only"
    );
    let mut r = hound::WavReader::open(&path).unwrap();
    assert_eq!(r.spec().channels, 2);
    let s: Vec<i16> = r.samples::<i16>().map(|s| s.unwrap()).collect();
    let left: i64 = s.iter().step_by(2).map(|&v| i64::from(v).abs()).sum();
    let right: Vec<i16> = s.iter().skip(1).step_by(2).copied().collect();
    assert_eq!(left, 0);
    // The right channel is what the caller received, sample for sample, after the lead-in
    // before the first packet.
    let heard: Vec<i16> = packets
        .iter()
        .flat_map(|p| RtpView::parse(p).unwrap().payload().to_vec())
        .map(|b| Codec::Pcmu.decode(b))
        .collect();
    let at = right
        .windows(160)
        .position(|w| w == &heard[..160])
        .expect("the caller's audio is in the recording");
    assert_eq!(
        &right[at..],
        &heard[..],
        "recorded exactly, in order, whole"
    );

    // Another call of the same id (a restart reuses ids) gets a file of its own.
    let c = call(42_300, true, opts).await;
    let (out, _) = stop(c).await;
    let second = out.recording.unwrap();
    assert_ne!(second, path);
    assert_eq!(
        hound::WavReader::open(&path).unwrap().len() as usize,
        s.len()
    );
}

#[tokio::test]
async fn reinvite_changes_the_event_payload_type() {
    let c = call(42_400, true, RelayOptions::default()).await;
    let (sig, spans) = tones("59", ToneParams::default(), 200.0, 3);
    let mut audio = to_i16(&sig);
    audio.extend(std::iter::repeat_n(0, 1600));
    let trunk = TrunkConfig {
        event_pt: 96,
        ..TrunkConfig::default()
    };
    let packets = packetize(&audio, &trunk, Some(&spans));
    let control = c.handle.control();
    control
        .send(tonewall::net::media::MediaControl::EventPayloadType(Some(
            96,
        )))
        .await
        .unwrap();
    send_all(&c.caller.rtp, c.handle.a_addr, &packets).await;
    let got = recv_n(&c.agent.rtp, packets.len()).await;
    // Every event packet became masking audio in the audio payload type.
    assert_eq!(got.len(), packets.len());
    assert!(
        got.iter()
            .all(|p| RtpView::parse(p).unwrap().payload_type() == 0)
    );
    let (_, keys) = stop(c).await;
    assert_eq!(keys, "59");
}

#[tokio::test]
async fn agent_keys_are_reported_when_asked_and_their_audio_passes_untouched() {
    let mut c = call(42_600, true, RelayOptions::default()).await;
    let trunk = TrunkConfig {
        ssrc: 0xa9e8,
        ..TrunkConfig::default()
    };
    // Until asked for, the agent's keys are not listened to.
    let (sig, _) = tones("555", ToneParams::default(), 200.0, 11);
    let mut before = to_i16(&sig);
    before.extend(std::iter::repeat_n(0, 1600));
    let first = packetize(&before, &trunk, None);
    send_all(&c.agent.rtp, c.handle.b_addr, &first).await;
    assert_eq!(recv_n(&c.caller.rtp, first.len()).await, first);

    assert!(c.handle.set_agent_digits(true).await);
    // A locator keyed on the agent's phone: three keys in-band, the last two as RFC 4733 events.
    let (sig, spans) = tones("40721", ToneParams::default(), 300.0, 12);
    let mut audio = to_i16(&sig);
    audio.extend(std::iter::repeat_n(0, 1600));
    let second = packetize(
        &audio,
        &TrunkConfig {
            first_seq: 3000,
            first_ts: 400_000,
            ..trunk
        },
        Some(&spans[3..]),
    );
    assert!(
        second
            .iter()
            .any(|p| RtpView::parse(p).unwrap().payload_type() == 101)
    );
    send_all(&c.agent.rtp, c.handle.b_addr, &second).await;
    let got = recv_n(&c.caller.rtp, second.len()).await;
    assert_eq!(got, second, "the agent's audio and events pass unchanged");

    assert!(c.handle.stop().await);
    let out = timeout(WAIT, &mut c.task).await.unwrap().unwrap().unwrap();
    let mut agent_keys = String::new();
    while let Ok(Some(d)) = timeout(WAIT, c.handle.agent_digits.recv()).await {
        agent_keys.push(d.digit.reveal());
    }
    assert_eq!(agent_keys, "40721");
    assert_eq!(out.stats.agent_digits, 5);
    assert_eq!(out.stats.digits, 0, "nothing came from the caller");
    assert!(
        timeout(WAIT, c.handle.digits.recv())
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn announce_plays_the_intercept_tone_to_the_caller_until_stopped() {
    use tonewall::dsp::g711::Codec;
    use tonewall::net::media::MediaControl;
    let c = call(42_800, true, RelayOptions::default()).await;
    // Nothing to relay: the call is being given up; the caller hears the tone.
    c.handle
        .control()
        .send(MediaControl::Announce(Duration::from_secs(5)))
        .await
        .unwrap();
    let got = recv_n(&c.caller.rtp, 10).await;
    assert_eq!(got.len(), 10);
    let views: Vec<_> = got.iter().map(|p| RtpView::parse(p).unwrap()).collect();
    for w in views.windows(2) {
        assert_eq!(w[1].sequence(), w[0].sequence().wrapping_add(1));
        assert_eq!(w[1].timestamp(), w[0].timestamp().wrapping_add(160));
        assert_eq!(w[1].ssrc(), w[0].ssrc());
    }
    assert!(
        views
            .iter()
            .all(|v| v.payload_type() == 0 && v.payload().len() == 160)
    );
    // Audible: the first tone is well above silence.
    let loud = views[2]
        .payload()
        .iter()
        .map(|&b| i32::from(Codec::Pcmu.decode(b)).abs())
        .max()
        .unwrap();
    assert!(loud > 1000, "{loud}");
    let (out, keys) = stop(c).await;
    assert!(keys.is_empty());
    assert!(out.stats.a_out >= 10);
}

/// Threads of this process whose name starts with `prefix`, with their on-CPU time (ns).
fn threads_named(prefix: &str) -> Vec<u64> {
    let mut out = Vec::new();
    for t in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if comm.starts_with(prefix) {
            let ns = std::fs::read_to_string(t.path().join("schedstat"))
                .ok()
                .and_then(|s| s.split_whitespace().next()?.parse().ok())
                .unwrap_or(0);
            out.push(ns);
        }
    }
    out
}

/// The card keyed over speech, from the caller through `c`: every packet comes out at the
/// agent, where the auditor's decoder hears no digit. Returns the caller's audio, the packets
/// sent and those the agent got.
async fn card_through(c: &Call) -> (Vec<i16>, Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let (audio, _) = card_over_speech();
    let trunk = TrunkConfig::default();
    let packets = packetize(&audio, &trunk, None);
    send_all(&c.caller.rtp, c.handle.a_addr, &packets).await;
    let got = recv_n(&c.agent.rtp, packets.len()).await;
    assert_eq!(got.len(), packets.len(), "one packet out per packet in");
    let heard = depacketize(got.iter().map(|p| p.as_slice()), trunk.first_ts);
    assert!(spectrum::fft_decode(&heard.audio, &mut |_| {}).is_empty());
    (audio, packets, got)
}

#[tokio::test]
async fn a_relay_on_a_media_thread_scrubs_relays_and_the_threads_end_with_their_owner() {
    let workers = tonewall::net::media::MediaWorkers::start(2).unwrap();
    assert_eq!(workers.threads(), 2);
    // Named threads may take a moment to show up in /proc.
    let mut before = threads_named("tw-media-");
    for _ in 0..100 {
        if before.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        before = threads_named("tw-media-");
    }
    assert_eq!(before.len(), 2, "two media threads");
    let opts = RelayOptions {
        workers: Some(workers.clone()),
        ..RelayOptions::default()
    };
    // The ports are allocated here, on the test's runtime, and must move to the media thread.
    let c = call(43_000, true, opts).await;
    let (audio, packets, _) = card_through(&c).await;
    let back = packetize(
        &audio[..8000],
        &TrunkConfig {
            ssrc: 0x5eed,
            ..TrunkConfig::default()
        },
        None,
    );
    send_all(&c.agent.rtp, c.handle.b_addr, &back).await;
    assert_eq!(recv_n(&c.caller.rtp, back.len()).await, back);
    // The work was done on the media threads, not on this runtime.
    let after: u64 = threads_named("tw-media-").iter().sum();
    assert!(
        after > before.iter().sum::<u64>(),
        "media threads did no work"
    );
    let (out, keys) = stop(c).await;
    assert_eq!(keys, card_keys());
    assert_eq!(out.stats.b_out, packets.len() as u64);
    drop(workers);
    let mut left = threads_named("tw-media-").len();
    for _ in 0..200 {
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        left = threads_named("tw-media-").len();
    }
    assert_eq!(left, 0, "media threads outlived their owner");
}

#[tokio::test]
async fn a_media_thread_that_rests_between_wake_ups_still_relays_every_packet_scrubbed() {
    // The production setting (media.batch_us): after a wake-up with packets the thread rests,
    // and the next wake-up takes all that came meanwhile. Nothing may be lost or reordered.
    let workers =
        tonewall::net::media::MediaWorkers::start_batched(1, Duration::from_millis(2)).unwrap();
    let opts = RelayOptions {
        workers: Some(workers.clone()),
        ..RelayOptions::default()
    };
    let c = call(43_100, true, opts).await;
    let (_, packets, got) = card_through(&c).await;
    let seqs: Vec<u16> = got
        .iter()
        .map(|p| RtpView::parse(p).unwrap().sequence())
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0].wrapping_add(1)),
        "in order"
    );
    let (out, keys) = stop(c).await;
    assert_eq!(keys, card_keys());
    assert_eq!(out.stats.b_out, packets.len() as u64);
}
