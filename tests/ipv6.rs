//! A call over IPv6 loopback: SIP on [::1], media anchored on ::1 (SDP `IN IP6`), through
//! `tonewall run` between two in-repo UAs; RFC 4733 keys do not reach the contact centre.

mod common;

use std::net::{IpAddr, Ipv6Addr};
use std::time::Duration;

use tokio::sync::oneshot;
use tonewall::config::Config;
use tonewall::digit::Digit;
use tonewall::net::ua::{SipUa, UaConfig};
use tonewall::rtp::packet::RtpView;
use tonewall::rtp::trunk::{TrunkConfig, packetize};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_over_ipv6_is_relayed_and_scrubbed() {
    // A container without IPv6 loopback cannot run this at all; say so loudly rather than fail
    // the suite for the host's sake (this machine and CI's image have ::1).
    let port = match std::net::UdpSocket::bind("[::1]:0") {
        Ok(s) => s.local_addr().unwrap().port(),
        Err(e) => {
            eprintln!("SKIPPED: this host has no IPv6 loopback ({e})");
            return;
        }
    };
    let api_port = common::free_port();
    // SAFETY: the only test in this binary; set before tonewall reads them.
    unsafe {
        std::env::set_var("TONEWALL_V6_TEST_TOKENS", "ops:ipv6test0123456789:admin");
        std::env::set_var("TONEWALL_V6_TEST_KEY", "33".repeat(32));
    }
    let lo = IpAddr::from(Ipv6Addr::LOCALHOST);
    let ua = |user: &str| UaConfig {
        ip: lo,
        user: user.into(),
        timeout: Duration::from_secs(5),
        ..UaConfig::default()
    };
    let mut cc = SipUa::bind(ua("agents")).await.unwrap();
    let trunk = SipUa::bind(ua("caller")).await.unwrap();
    let text = format!(
        r#"
[sip]
listen = "[::1]:{port}"
transports = ["udp"]
[media]
address = "::1"
port_min = 43400
port_max = 43599
[[route]]
name = "v6"
sources = ["::1/128"]
target = "sip:agents@{cc}"
[api]
listen = "127.0.0.1:{api_port}"
tokens_env = "TONEWALL_V6_TEST_TOKENS"
[vault]
master_key_env = "TONEWALL_V6_TEST_KEY"
"#,
        cc = cc.local_addr()
    );
    let config = Config::parse(&text).unwrap();
    let sip = config.sip.listen;
    let (stop, stopped) = oneshot::channel::<()>();
    let relay = tokio::spawn(tonewall::net::run::run(config, async {
        let _ = stopped.await;
    }));
    tokio::time::sleep(Duration::from_millis(300)).await;

    let target = format!("sip:5550100@{sip}");
    let (a, b) = tokio::join!(trunk.call(&target, sip, &[]), async {
        let inc = cc.accept().await?;
        inc.answer().await
    });
    let (mut a, mut b) = (a.unwrap(), b.unwrap());
    assert!(a.remote_rtp().is_ipv6() && b.remote_rtp().is_ipv6());
    // Speech-like silence with three RFC 4733 keys in it.
    let audio = vec![0i16; 8000];
    let cfg = TrunkConfig {
        codec: a.codec(),
        event_pt: a.event_pt().unwrap_or(101),
        ..TrunkConfig::default()
    };
    let spans: Vec<_> = ["1", "2", "3"]
        .iter()
        .enumerate()
        .map(|(i, k)| tonewall::rtp::trunk::KeySpan {
            digit: Digit::from_char(k.chars().next().unwrap()).unwrap(),
            start: 1000 + 2000 * i as u64,
            end: 1000 + 2000 * i as u64 + 640,
        })
        .collect();
    let packets = packetize(&audio, &cfg, Some(&spans));
    let sent = a.send_packets(&packets).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = b.received_packets();
    assert_eq!(got.len(), sent, "one packet out for each packet in");
    let events = got
        .iter()
        .filter(|p| RtpView::parse(p).is_ok_and(|v| Some(v.payload_type()) == b.event_pt()))
        .count();
    assert_eq!(events, 0);
    a.hangup().await.unwrap();
    b.wait_ended(Duration::from_secs(5)).await.unwrap();
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(10), relay)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
