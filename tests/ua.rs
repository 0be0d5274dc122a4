//! The demo's SIP user agent against itself on 127.0.0.1: a call with headers, media both ways
//! (audio bit-exact through G.711, keys as RFC 4733 events), BYE; rejection, timeouts and
//! garbage on the signalling socket.
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use std::time::Duration;

use tokio::net::UdpSocket;
use tonewall::digit::Digit;
use tonewall::dsp::g711::Codec;
use tonewall::net::ua::{Ending, SipUa, UaConfig, UaError};
use tonewall::rtp::event::TelephoneEvent;
use tonewall::rtp::packet::RtpView;
use tonewall::rtp::trunk::{KeySpan, TrunkConfig, packetize};

const WAIT: Duration = Duration::from_secs(10);

fn cfg(user: &str) -> UaConfig {
    UaConfig {
        user: user.into(),
        timeout: Duration::from_secs(5),
        ..UaConfig::default()
    }
}

/// A second of a chord, already G.711-exact so that what arrives can be compared bit for bit.
fn audio(codec: Codec, f: f64) -> Vec<i16> {
    (0..8000)
        .map(|i| {
            let t = f64::from(i) / 8000.0;
            let s = (6000.0 * (2.0 * std::f64::consts::PI * f * t).sin()) as i16;
            codec.decode(codec.encode(s))
        })
        .collect()
}

/// Waits until `n` packets have arrived (media is asynchronous to the call's methods).
async fn until_received(call: &tonewall::net::ua::Call, n: usize) {
    let t0 = tokio::time::Instant::now();
    while call.received_packets().len() < n && t0.elapsed() < WAIT {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn two_uas_call_exchange_media_and_hang_up() {
    let caller = SipUa::bind(cfg("trunk")).await.unwrap();
    let mut callee = SipUa::bind(cfg("agents")).await.unwrap();
    let target = callee.uri();
    let callee_addr = callee.local_addr();

    let answer = tokio::spawn(async move {
        let inc = callee.accept().await.unwrap();
        let uri = inc.request_uri().to_owned();
        let agent = inc.header("X-Agent").map(str::to_owned);
        inc.ring().await.unwrap();
        let call = inc.answer().await.unwrap();
        (callee, call, uri, agent)
    });
    let mut a = caller
        .call(&target, callee_addr, &[("X-Agent", "7001")])
        .await
        .unwrap();
    let (_callee, mut b, uri, agent) = tokio::time::timeout(WAIT, answer).await.unwrap().unwrap();
    assert_eq!(uri, target);
    assert_eq!(agent.as_deref(), Some("7001"));
    let statuses: Vec<u16> = a.responses().iter().map(|r| r.0).collect();
    assert_eq!(statuses, [180, 200]);
    assert_eq!(a.codec(), Codec::Pcmu);
    assert_eq!(a.event_pt(), Some(101));
    assert_eq!(b.event_pt(), Some(101));
    assert_eq!(a.remote_rtp(), b.local_rtp().unwrap());
    assert_eq!(b.remote_rtp(), a.local_rtp().unwrap());
    assert_eq!(a.call_id(), b.call_id());

    // A sends prepared packets with two keys as events; B sends its own audio back.
    let a_audio = audio(Codec::Pcmu, 440.0);
    let spans = [
        KeySpan {
            digit: Digit::from_char('4').unwrap(),
            start: 1600,
            end: 2160,
        },
        KeySpan {
            digit: Digit::from_char('#').unwrap(),
            start: 4000,
            end: 4560,
        },
    ];
    let trunk = TrunkConfig::default();
    let packets = packetize(&a_audio, &trunk, Some(&spans));
    let b_audio = audio(Codec::Pcmu, 697.0);
    let (sent_a, sent_b) = tokio::join!(a.send_packets(&packets), b.send_audio(&b_audio, None));
    assert_eq!(sent_a.unwrap(), packets.len());
    let sent_b = sent_b.unwrap();
    assert_eq!(sent_b, 50);
    until_received(&b, packets.len()).await;
    until_received(&a, sent_b).await;

    // Packets arrive unchanged; audio outside the keys' frames is bit-exact.
    assert_eq!(b.received_packets(), packets);
    let rx = b.received_audio();
    assert_eq!(rx.non_audio_packets, packets.len() - rx.audio_packets);
    for f in [0usize, 5, 20, 40, 49] {
        let r = f * 160..(f + 1) * 160;
        assert_eq!(rx.audio[r.clone()], a_audio[r], "frame {f}");
    }
    let heard = a.received_audio();
    assert_eq!(heard.audio, b_audio);

    // Keys on demand: B sends two events on its own stream, A sees their codes with E bits.
    let keys = [
        Digit::from_char('1').unwrap(),
        Digit::from_char('*').unwrap(),
    ];
    let before = a.received_packets().len();
    let n = b.send_keys(&keys, 60, 60).await.unwrap();
    until_received(&a, before + n).await;
    let events: Vec<TelephoneEvent> = a.received_packets()[before..]
        .iter()
        .filter_map(|p| {
            let v = RtpView::parse(p).unwrap();
            (v.payload_type() == 101).then(|| TelephoneEvent::parse(v.payload()).unwrap())
        })
        .collect();
    let ended: Vec<u8> = events.iter().filter(|e| e.end).map(|e| e.event).collect();
    assert!(ended.contains(&keys[0].event_code()), "{ended:?}");
    assert!(ended.contains(&keys[1].event_code()), "{ended:?}");
    // The call's own stream continues: one SSRC, sequence numbers without a gap.
    let seqs: Vec<u16> = a.received_packets()[..]
        .iter()
        .map(|p| RtpView::parse(p).unwrap())
        .filter(|v| v.ssrc() != trunk.ssrc)
        .map(|v| v.sequence())
        .collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0].wrapping_add(1)));

    assert_eq!(a.hangup().await.unwrap(), Ending::ByUs(200));
    assert_eq!(b.wait_ended(WAIT).await.unwrap(), Ending::ByPeer);
    // Hanging up an ended call sends nothing and says how it ended.
    assert_eq!(b.hangup().await.unwrap(), Ending::ByPeer);
}

#[tokio::test]
async fn a_rejected_call_is_an_error_with_the_status() {
    let caller = SipUa::bind(cfg("trunk")).await.unwrap();
    let mut callee = SipUa::bind(cfg("agents")).await.unwrap();
    let (target, addr) = (callee.uri(), callee.local_addr());
    let reject = tokio::spawn(async move {
        let inc = callee.accept().await.unwrap();
        inc.reject(486, "Busy Here").await.unwrap();
        callee
    });
    let err = caller.call(&target, addr, &[]).await.err().unwrap();
    match err {
        UaError::Rejected { status, reason } => {
            assert_eq!(status, 486);
            assert_eq!(reason, "Busy Here");
        }
        other => panic!("{other}"),
    }
    let _ = reject.await.unwrap();
}

#[tokio::test]
async fn silence_ends_in_a_timeout_and_garbage_is_answered_or_dropped() {
    // Nobody answers on this socket: the INVITE is retransmitted, then the call times out.
    let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let ua = SipUa::bind(UaConfig {
        timeout: Duration::from_millis(1600),
        ..cfg("trunk")
    })
    .await
    .unwrap();
    let err = ua
        .call("sip:x@127.0.0.1", silent.local_addr().unwrap(), &[])
        .await
        .err()
        .unwrap();
    assert!(matches!(err, UaError::Timeout(_)), "{err}");
    let mut buf = [0u8; 4096];
    let mut invites = 0;
    while let Ok(Ok((n, _))) =
        tokio::time::timeout(Duration::from_millis(100), silent.recv_from(&mut buf)).await
    {
        assert!(buf[..n].starts_with(b"INVITE "));
        invites += 1;
    }
    assert!(invites >= 2, "Timer A retransmits: {invites}");

    // Garbage, a request missing its Via, and an in-dialog request for no dialog.
    let mut callee = SipUa::bind(cfg("agents")).await.unwrap();
    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let to = callee.local_addr();
    peer.send_to(b"\x00\xffnot sip at all\r\n\r\n", to)
        .await
        .unwrap();
    peer.send_to(b"\r\n\r\n", to).await.unwrap();
    let bye = "BYE sip:agents@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKx1\r\n\
From: <sip:a@127.0.0.1>;tag=1\r\nTo: <sip:b@127.0.0.1>;tag=2\r\nCall-ID: nothing@here\r\n\
CSeq: 2 BYE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n";
    peer.send_to(bye.as_bytes(), to).await.unwrap();
    let (n, _) = tokio::time::timeout(WAIT, peer.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(
        buf[..n].starts_with(b"SIP/2.0 481 "),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    // Still serving: a real call goes through.
    let caller = SipUa::bind(cfg("trunk")).await.unwrap();
    let target = callee.uri();
    let answer = tokio::spawn(async move { callee.accept().await.unwrap().answer().await });
    let mut a = caller.call(&target, to, &[]).await.unwrap();
    let b = answer.await.unwrap().unwrap();
    assert_eq!(a.hangup().await.unwrap(), Ending::ByUs(200));
    drop(b);
}
