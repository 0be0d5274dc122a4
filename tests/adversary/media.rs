//! Attacks on the media surface (see main.rs): strangers sending RTP to a live call's relay
//! ports, from the host the SDP names (127.0.0.1, another port) and from 127.0.0.2. A call runs
//! through `tonewall::net::run::run` in-process between a trunk UA and a contact-centre UA,
//! both on 127.0.0.1. The stranger must never receive the call's audio, and its packets must
//! never reach either side; the real peers' audio must still flow.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::oneshot;
use tonewall::config::Config;
use tonewall::net::ua::{Call, SipUa, UaConfig};
use tonewall::rtp::packet::RtpView;

use super::common::free_port;

/// The strangers' SSRC, and a payload byte no G.711 silence or test tone produces in a row.
const STRANGER_SSRC: u32 = 0x5757_5757;
const STRANGER_BYTE: u8 = 0x55;

/// A call in progress through tonewall.
struct Through {
    trunk: Call,
    agent: Call,
    stop: Option<oneshot::Sender<()>>,
    run: tokio::task::JoinHandle<()>,
    _uas: (SipUa, SipUa),
    _key: tempfile::NamedTempFile,
}

impl Through {
    /// Starts tonewall with one inline route (trunk allow-list 127.0.0.1/32, scrubbing always)
    /// on media ports `port_min..=port_min+99`, and sets up one call through it.
    async fn start(tag: &str, port_min: u16) -> Through {
        let mut key = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut key, "33".repeat(32).as_bytes()).unwrap();
        let tokens_env = format!("TONEWALL_ADV_MEDIA_{tag}_TOKENS");
        // SAFETY: a name of this test's own, set before tonewall reads it.
        unsafe { std::env::set_var(&tokens_env, "adv:advmedia0123456789abcdef:admin") };
        let lo = IpAddr::from(Ipv4Addr::LOCALHOST);
        let ua = |user: &str| UaConfig {
            ip: lo,
            user: user.into(),
            timeout: Duration::from_secs(5),
            ..UaConfig::default()
        };
        let mut cc = SipUa::bind(ua("agents")).await.unwrap();
        let trunk = SipUa::bind(ua("caller")).await.unwrap();
        let (sip_port, api_port) = (free_port(), free_port());
        let text = format!(
            r#"
[sip]
listen = "127.0.0.1:{sip_port}"
transports = ["udp"]
[media]
port_min = {port_min}
port_max = {port_max}
[[route]]
name = "inline"
sources = ["127.0.0.1/32"]
target = "sip:agents@{cc}"
scrub = "always"
agent_locator = false
[api]
listen = "127.0.0.1:{api_port}"
tokens_env = "{tokens_env}"
[vault]
master_key_file = "{key}"
"#,
            port_max = port_min + 99,
            cc = cc.local_addr(),
            key = key.path().display(),
        );
        let config = Config::parse(&text).unwrap();
        let sip: SocketAddr = config.sip.listen;
        let (stop, stopped) = oneshot::channel::<()>();
        let run = tokio::spawn(async move {
            let r = tonewall::net::run::run(config, async {
                let _ = stopped.await;
            })
            .await;
            assert!(r.is_ok(), "tonewall run failed: {:?}", r.err());
        });
        let mut up = false;
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(("127.0.0.1", api_port))
                .await
                .is_ok()
            {
                up = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(up, "tonewall did not start");
        let target = format!("sip:5550100@{sip}");
        let (a, b) = tokio::join!(trunk.call(&target, sip, &[]), async {
            let inc = cc.accept().await?;
            inc.answer().await
        });
        Through {
            trunk: a.unwrap(),
            agent: b.unwrap(),
            stop: Some(stop),
            run,
            _uas: (cc, trunk),
            _key: key,
        }
    }

    async fn end(mut self) {
        let _ = self.trunk.hangup().await;
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), &mut self.run).await;
    }
}

/// A stranger's RTP packet: PCMU, its own SSRC, a payload of `STRANGER_BYTE`.
fn stranger_packet(seq: u16) -> [u8; 172] {
    let mut p = [STRANGER_BYTE; 172];
    p[0] = 0x80;
    p[1] = 0;
    p[2..4].copy_from_slice(&seq.to_be_bytes());
    p[4..8].copy_from_slice(&(u32::from(seq) * 160).to_be_bytes());
    p[8..12].copy_from_slice(&STRANGER_SSRC.to_be_bytes());
    p
}

/// Sends `count` stranger packets, one every 20 ms, to each of `to`.
async fn send_stream(sock: &UdpSocket, to: &[SocketAddr], count: u16) {
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    for seq in 0..count {
        tick.tick().await;
        for &t in to {
            let _ = sock.send_to(&stranger_packet(seq), t).await;
        }
    }
}

/// Everything a stranger's socket was sent, waiting up to 300 ms for more.
async fn drain(sock: &UdpSocket) -> usize {
    let mut buf = [0u8; 2048];
    let mut n = 0;
    while let Ok(Ok(_)) =
        tokio::time::timeout(Duration::from_millis(300), sock.recv_from(&mut buf)).await
    {
        n += 1;
    }
    n
}

/// Audio the real peers send: a quiet 440 Hz tone (no DTMF pair).
fn speech_like(ms: usize) -> Vec<i16> {
    (0..ms * 8)
        .map(|i| ((i as f64 * 440.0 * std::f64::consts::TAU / 8000.0).sin() * 3000.0) as i16)
        .collect()
}

/// Of the packets a peer received: how many came from the stranger (its SSRC or its payload)
/// and how many from the real other side.
fn split(packets: &[Vec<u8>]) -> (usize, usize) {
    let mut stranger = 0;
    let mut real = 0;
    for p in packets {
        let Ok(v) = RtpView::parse(p) else { continue };
        let marked = v.payload().len() > 8 && v.payload().iter().all(|&b| b == STRANGER_BYTE);
        if v.ssrc() == STRANGER_SSRC || marked {
            stranger += 1;
        } else {
            real += 1;
        }
    }
    (stranger, real)
}

/// A stranger on the SDP's host (127.0.0.1, another port) sends to both legs before either peer
/// has spoken, and goes on all through the call. It must not take either leg: it receives
/// nothing, nothing of it reaches the trunk or the agent, and the peers hear each other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_host_stranger_speaking_first_gets_no_leg() {
    let call = Through::start("FIRST", 47600).await;
    let stranger = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let legs = [call.trunk.remote_rtp(), call.agent.remote_rtp()];
    let audio = speech_like(1500);
    let (_, _, _) = tokio::join!(
        send_stream(&stranger, &legs, 150),
        async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            call.trunk.send_audio(&audio, None).await.unwrap()
        },
        async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            call.agent.send_audio(&audio, None).await.unwrap()
        },
    );
    let got = drain(&stranger).await;
    let (at_agent_stranger, at_agent_real) = split(&call.agent.received_packets());
    let (at_trunk_stranger, at_trunk_real) = split(&call.trunk.received_packets());
    call.end().await;
    assert_eq!(got, 0, "the stranger received the call's audio");
    assert_eq!(
        at_agent_stranger, 0,
        "the stranger's audio reached the agent"
    );
    assert_eq!(
        at_trunk_stranger, 0,
        "the stranger's audio reached the caller"
    );
    assert!(
        at_agent_real >= 50,
        "caller audio at the agent: {at_agent_real}"
    );
    assert!(
        at_trunk_real >= 50,
        "agent audio at the caller: {at_trunk_real}"
    );
}

/// Mid-call, while the caller talks and the agent is still silent, strangers send their own
/// RTP stream (another SSRC) to both legs, from the SDP's host and from 127.0.0.2; then the
/// agent talks. The strangers must be dropped: they receive none of the caller's audio, their
/// stream reaches nobody, and both peers' audio flows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stranger_stream_mid_call_is_dropped() {
    let call = Through::start("MID", 47700).await;
    let near = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let far = UdpSocket::bind("127.0.0.2:0").await.unwrap();
    let legs = [call.trunk.remote_rtp(), call.agent.remote_rtp()];
    let caller_audio = speech_like(2500);
    let agent_audio = speech_like(1500);
    let (_, _, _, _) = tokio::join!(
        call.trunk.send_audio(&caller_audio, None),
        async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            send_stream(&near, &legs, 40).await
        },
        async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            send_stream(&far, &legs, 40).await
        },
        async {
            tokio::time::sleep(Duration::from_millis(700)).await;
            call.agent.send_audio(&agent_audio, None).await.unwrap()
        },
    );
    let (got_near, got_far) = tokio::join!(drain(&near), drain(&far));
    let (at_agent_stranger, at_agent_real) = split(&call.agent.received_packets());
    let (at_trunk_stranger, at_trunk_real) = split(&call.trunk.received_packets());
    call.end().await;
    assert_eq!(got_near, 0, "the same-host stranger received call audio");
    assert_eq!(got_far, 0, "the 127.0.0.2 stranger received call audio");
    assert_eq!(at_agent_stranger, 0, "a stranger's audio reached the agent");
    assert_eq!(
        at_trunk_stranger, 0,
        "a stranger's audio reached the caller"
    );
    assert!(
        at_agent_real >= 100,
        "caller audio at the agent: {at_agent_real}"
    );
    assert!(
        at_trunk_real >= 50,
        "agent audio at the caller: {at_trunk_real}"
    );
}
