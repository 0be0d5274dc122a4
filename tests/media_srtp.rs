//! The relay with SRTP on a leg (issue 22): what an SRTP leg sends is decrypted before the
//! scrubber hears it and what goes to it is encrypted with our key for it, so a caller keying a
//! card through SRTP reaches the agent (in the clear or re-encrypted) with no key left in it;
//! the agent's audio reaches an SRTP caller bit-exact after decryption; a packet with a bad tag
//! or a replayed one is dropped and counted, and the call goes on. Loopback only, bounded waits.

mod common;

use std::net::IpAddr;
use std::time::Duration;

use common::*;
use tokio::time::timeout;
use tonewall::dsp::spectrum;
use tonewall::net::media::{MediaHandle, MediaRelay, RelayOptions, RelayOutcome};
use tonewall::net::ports::{PortPair, PortPool};
use tonewall::rtp::packet::RtpView;
use tonewall::rtp::scrubber::ScrubberConfig;
use tonewall::rtp::srtp::{InboundSrtp, OutboundSrtp, SrtpMasterKey, SrtpSuite};
use tonewall::rtp::trunk::{TrunkConfig, depacketize, packetize};
use tonewall::sip::b2bua::{LegCrypto, RelaySrtp};

const WAIT: Duration = Duration::from_secs(10);

/// One SRTP leg as its peer sees it: the peer's key (it protects with it, we check with it)
/// and ours (we protect with it, it checks with it).
struct Keys {
    peer: SrtpMasterKey,
    ours: SrtpMasterKey,
}

impl Keys {
    fn new(suite: SrtpSuite) -> Keys {
        Keys {
            peer: SrtpMasterKey::generate(suite).unwrap(),
            ours: SrtpMasterKey::generate(suite).unwrap(),
        }
    }

    fn relay_side(&self) -> LegCrypto {
        LegCrypto {
            inbound: InboundSrtp::new(&self.peer).unwrap(),
            outbound: OutboundSrtp::new(&self.ours).unwrap(),
        }
    }
}

struct Call {
    handle: MediaHandle,
    task: tokio::task::JoinHandle<Result<RelayOutcome, tonewall::net::media::MediaError>>,
    caller: PortPair,
    agent: PortPair,
}

async fn call(base: u16, a: Option<&Keys>, b: Option<&Keys>) -> Call {
    let lo = IpAddr::from([127, 0, 0, 1]);
    let pool = PortPool::new(lo, base, base + 99).unwrap();
    let (pa, pb) = (pool.allocate().unwrap(), pool.allocate().unwrap());
    let (caller, agent) = (pool.allocate().unwrap(), pool.allocate().unwrap());
    let srtp = RelaySrtp {
        epoch: 1,
        a: a.map(Keys::relay_side),
        b: b.map(Keys::relay_side),
    };
    let (handle, task) = MediaRelay::start_secure(
        pa,
        pb,
        (Some(caller.rtp_addr()), Some(agent.rtp_addr())),
        ScrubberConfig::default(),
        true,
        RelayOptions::default(),
        Some(Box::new(srtp)),
    );
    Call {
        handle,
        task,
        caller,
        agent,
    }
}

fn protect_all(key: &SrtpMasterKey, packets: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut ctx = OutboundSrtp::new(key).unwrap();
    packets
        .iter()
        .map(|p| {
            let mut buf = p.clone();
            buf.resize(p.len() + 32, 0);
            let n = ctx.protect_rtp(&mut buf, p.len()).unwrap();
            buf.truncate(n);
            buf
        })
        .collect()
}

fn unprotect_all(key: &SrtpMasterKey, packets: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut ctx = InboundSrtp::new(key).unwrap();
    packets
        .iter()
        .map(|p| {
            let mut buf = p.clone();
            let n = ctx
                .unprotect_rtp(&mut buf, p.len())
                .expect("our SRTP authenticates");
            buf.truncate(n);
            buf
        })
        .collect()
}

/// The test card keyed in-band over quiet speech, the CVV as RFC 4733 events.
fn card_packets(trunk: &TrunkConfig) -> Vec<Vec<u8>> {
    let (mut sig, spans) = tones(&card_keys(), ToneParams::default(), 500.0, 7);
    sig.extend(std::iter::repeat_n(0.0, 4000));
    let speech = tonewall::wav::read_wav(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/speech_en_hello.wav"),
    )
    .unwrap();
    mix_under(&mut sig, &speech, -12.0);
    packetize(&to_i16(&sig), trunk, Some(&spans[spans.len() - 3..]))
}

/// What the agent got carries no key: no telephone-event, nothing an independent decoder hears.
fn assert_no_keys(got: &[Vec<u8>], trunk: &TrunkConfig) {
    for p in got {
        assert_ne!(RtpView::parse(p).unwrap().payload_type(), 101);
    }
    let heard = depacketize(got.iter().map(|p| p.as_slice()), trunk.first_ts);
    assert_eq!(heard.non_audio_packets, 0);
    let found = spectrum::fft_decode(&heard.audio, &mut |_| {});
    assert!(found.is_empty(), "{} digits reached the agent", found.len());
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

#[tokio::test]
async fn srtp_trunk_plain_agent_card_is_captured_and_never_reaches_the_agent() {
    let trunk_keys = Keys::new(SrtpSuite::AesCm128HmacSha1_80);
    let c = call(43_000, Some(&trunk_keys), None).await;
    let trunk = TrunkConfig::default();
    let plain = card_packets(&trunk);
    let sent = protect_all(&trunk_keys.peer, &plain);
    // On the wire the trunk's packets are not the plain ones.
    assert_ne!(sent[0], plain[0]);
    let (most, last) = sent.split_at(sent.len() - 1);
    send_all(&c.caller.rtp, c.handle.a_addr, most).await;
    // The last packet tampered with (its tag), then as sent, then replayed: only the one as
    // sent goes through; the others are dropped and counted, and the call goes on.
    let mut bad = last[0].clone();
    let end = bad.len() - 1;
    bad[end] ^= 1;
    for p in [&bad, &last[0], &last[0]] {
        c.caller.rtp.send_to(p, c.handle.a_addr).await.unwrap();
    }
    let got = recv_n(&c.agent.rtp, plain.len()).await;
    assert_eq!(got.len(), plain.len(), "one packet out per packet in");
    assert_no_keys(&got, &trunk);
    // The agent's audio reaches the caller encrypted with our key, bit-exact once decrypted.
    let agent_cfg = TrunkConfig {
        ssrc: 0xa9e7,
        ..TrunkConfig::default()
    };
    let back = packetize(&to_i16(&vec![0.1; 8000]), &agent_cfg, None);
    send_all(&c.agent.rtp, c.handle.b_addr, &back).await;
    let heard = recv_n(&c.caller.rtp, back.len()).await;
    assert_eq!(heard.len(), back.len());
    assert_ne!(heard[0], back[0], "sent to the SRTP caller in the clear");
    assert_eq!(unprotect_all(&trunk_keys.ours, &heard), back);

    let (out, keys) = stop(c).await;
    assert_eq!(keys, card_keys(), "capture gets every key once");
    assert_eq!(out.stats.dropped_srtp_auth, 1);
    assert_eq!(out.stats.dropped_srtp_replay, 1, "{:?}", out.stats);
    assert_eq!(out.stats.a_in, plain.len() as u64);
}

#[tokio::test]
async fn plain_trunk_srtp_agent_and_both_encrypted() {
    for (base, suite, both) in [
        (43_200, SrtpSuite::AeadAes128Gcm, false),
        (43_400, SrtpSuite::AesCm128HmacSha1_32, true),
    ] {
        let trunk_keys = Keys::new(suite);
        let agent_keys = Keys::new(suite);
        let c = call(base, both.then_some(&trunk_keys), Some(&agent_keys)).await;
        let trunk = TrunkConfig::default();
        let plain = card_packets(&trunk);
        let sent = if both {
            protect_all(&trunk_keys.peer, &plain)
        } else {
            plain.clone()
        };
        send_all(&c.caller.rtp, c.handle.a_addr, &sent).await;
        let got = recv_n(&c.agent.rtp, plain.len()).await;
        assert_eq!(got.len(), plain.len());
        // The agent decrypts with the key we gave it; what it hears holds no key.
        let clear = unprotect_all(&agent_keys.ours, &got);
        assert_no_keys(&clear, &trunk);
        // Packets from the agent that do not authenticate never reach the caller.
        let forged = protect_all(&agent_keys.ours, &plain[..3]);
        send_all(&c.agent.rtp, c.handle.b_addr, &forged).await;
        let (out, keys) = stop(c).await;
        assert_eq!(keys, card_keys());
        assert_eq!(out.stats.dropped_srtp_auth, 3, "{suite}");
        assert_eq!(out.stats.a_out, 0);
    }
}
