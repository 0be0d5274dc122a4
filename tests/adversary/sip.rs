//! Attacks on SIP signalling, from 127.0.0.2 while the trunk allow-list is 127.0.0.1/32 and the
//! contact centre is 127.0.0.1 too (so the stranger is off every list): predicting identifiers
//! from our answers, then hanging up or re-routing a live call with the dialog's real
//! identifiers (as an eavesdropper on the signalling path has them), and answering our
//! requests in the contact centre's place.

use std::net::SocketAddr;
use std::sync::Once;
use std::time::Duration;

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonewall::config::Config;
use tonewall::net::ua::{Call, DialogIds, Incoming, SipUa, UaConfig};
use tonewall::sip::message::{Framing, Limits, Message, ResponseBuilder};

use crate::common::free_port;

/// The admin token this module's relays accept.
pub(crate) const ADMIN_TOKEN: &str = "adversarysiptoken01";
const DESK_TOKEN: &str = "adversarysipdesk001";
const TOKENS_ENV: &str = "TONEWALL_ADV_SIP_TOKENS";
const KEY_ENV: &str = "TONEWALL_ADV_SIP_KEY";
const STRANGER: &str = "127.0.0.2";

fn set_env() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: set once, before this module's relays read them; nothing else writes them.
        unsafe {
            std::env::set_var(
                TOKENS_ENV,
                format!("adm:{ADMIN_TOKEN}:admin,desk:{DESK_TOKEN}:desk"),
            );
            std::env::set_var(KEY_ENV, "5a".repeat(32));
        }
    });
}

pub(crate) struct Relay {
    pub(crate) sip: SocketAddr,
    pub(crate) api: u16,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Relay {
    /// `tonewall run` on 127.0.0.1, trunk allow-list 127.0.0.1/32, contact centre `cc`.
    pub(crate) async fn start(cc: SocketAddr, media_base: u16) -> Relay {
        let route = format!(
            "name = \"trunk\"\nsources = [\"127.0.0.1/32\"]\ntarget = \"sip:agents@{cc}\"\nscrub = \"always\"\n"
        );
        Relay::with_route(&route, media_base).await
    }

    /// `tonewall run` on 127.0.0.1 with one `[[route]]` whose body is `route`.
    pub(crate) async fn with_route(route: &str, media_base: u16) -> Relay {
        set_env();
        let (sip_port, api_port) = (free_port(), free_port());
        let text = format!(
            r#"
[sip]
listen = "127.0.0.1:{sip_port}"
transports = ["udp"]
[media]
port_min = {media_base}
port_max = {}
[[route]]
{route}
[api]
listen = "127.0.0.1:{api_port}"
tokens_env = "{TOKENS_ENV}"
[vault]
master_key_env = "{KEY_ENV}"
"#,
            media_base + 199
        );
        let config = Config::parse(&text).unwrap();
        let sip = config.sip.listen;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            tonewall::net::run::run(config, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        // Up once the API answers (SIP is bound before it).
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(("127.0.0.1", api_port))
                .await
                .is_ok()
            {
                return Relay {
                    sip,
                    api: api_port,
                    stop: Some(stop),
                    task,
                };
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("tonewall did not start");
    }

    /// GET `path` on the control API with `token`, as JSON.
    pub(crate) async fn get_json(&self, path: &str, token: &str) -> serde_json::Value {
        reqwest::Client::new()
            .get(format!("http://127.0.0.1:{}{path}", self.api))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub(crate) async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), &mut self.task).await;
    }
}

pub(crate) fn ua(user: &str) -> UaConfig {
    UaConfig {
        ip: "127.0.0.1".parse().unwrap(),
        user: user.into(),
        timeout: Duration::from_secs(5),
        ..UaConfig::default()
    }
}

/// A call trunk → tonewall → contact centre, answered on both legs.
pub(crate) async fn live_call(relay: &Relay, trunk: &SipUa, cc: &mut SipUa) -> (Call, Call) {
    let target = format!("sip:5550100@{}", relay.sip);
    let (a, b) = tokio::join!(trunk.call(&target, relay.sip, &[]), async {
        let inc = cc.accept().await?;
        inc.answer().await
    });
    (a.unwrap(), b.unwrap())
}

/// The trunk hangs up, the agent's side sees the end, the relay stops.
pub(crate) async fn end(mut a: Call, mut b: Call, relay: Relay) {
    a.hangup().await.unwrap();
    let _ = b.wait_ended(Duration::from_secs(3)).await;
    relay.stop().await;
}

/// Nothing arrives at `ear` within 300 ms.
async fn hears_nothing(ear: &UdpSocket) -> bool {
    let mut buf = [0u8; 2048];
    tokio::time::timeout(Duration::from_millis(300), ear.recv_from(&mut buf))
        .await
        .is_err()
}

/// The attacker's socket, off the allow-list.
async fn stranger() -> UdpSocket {
    UdpSocket::bind((STRANGER, 0)).await.unwrap()
}

/// Sends `msg` and returns the status of the first answer within `wait`, if any.
async fn ask(sock: &UdpSocket, to: SocketAddr, msg: &str, wait: Duration) -> Option<Message> {
    sock.send_to(msg.as_bytes(), to).await.unwrap();
    let mut buf = vec![0u8; 65_535];
    let (n, _) = tokio::time::timeout(wait, sock.recv_from(&mut buf))
        .await
        .ok()?
        .ok()?;
    Message::parse(
        Bytes::copy_from_slice(&buf[..n]),
        Framing::Datagram,
        &Limits::default(),
    )
    .ok()
}

/// An in-dialog request forged from one end's view of the dialog, sent from `via`.
fn forged(method: &str, ids: &DialogIds, cseq: u32, via: SocketAddr, body: Option<&str>) -> String {
    let (ct, body) = match body {
        Some(b) => ("Content-Type: application/sdp\r\n", b),
        None => ("", ""),
    };
    format!(
        "{method} {} SIP/2.0\r\nVia: SIP/2.0/UDP {via};branch=z9hG4bKevil{cseq}\r\n\
Max-Forwards: 70\r\nFrom: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {cseq} {method}\r\n\
Contact: <sip:evil@{via}>\r\n{ct}Content-Length: {}\r\n\r\n{body}",
        ids.remote_target,
        ids.local,
        ids.remote,
        ids.call_id,
        body.len()
    )
}

/// Audio flows trunk → agent: a second of a tone reaches the contact centre.
async fn audio_flows(trunk_call: &Call, cc_call: &Call) -> bool {
    let before = cc_call.received_packets().len();
    let tone: Vec<i16> = (0..8000)
        .map(|i| (3000.0 * (i as f64 * 0.3).sin()) as i16)
        .collect();
    trunk_call.send_audio(&tone, None).await.unwrap();
    for _ in 0..50 {
        if cc_call.received_packets().len() >= before + 40 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

fn options(n: u32, via: SocketAddr, to: SocketAddr) -> String {
    format!(
        "OPTIONS sip:{to} SIP/2.0\r\nVia: SIP/2.0/UDP {via};branch=z9hG4bKprobe{n}\r\n\
Max-Forwards: 70\r\nFrom: <sip:probe@{via}>;tag=p{n}\r\nTo: <sip:{to}>\r\n\
Call-ID: probe-{n}@{via}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    )
}

// SplitMix64 and its inverse: the generator tags came from before, and what an attacker who
// knows it does with two answers.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn invert_xorshift(y: u64, s: u32) -> u64 {
    let mut x = y;
    for _ in 0..=(64 / s) {
        x = y ^ (x >> s);
    }
    x
}

fn inv_mul(a: u64) -> u64 {
    // Newton's iteration for the inverse of an odd number modulo 2^64.
    let mut x = a;
    for _ in 0..6 {
        x = x.wrapping_mul(2u64.wrapping_sub(a.wrapping_mul(x)));
    }
    x
}

fn unmix(mut z: u64) -> u64 {
    z = invert_xorshift(z, 31);
    z = z.wrapping_mul(inv_mul(0x94D0_49BB_1331_11EB));
    z = invert_xorshift(z, 27);
    z = z.wrapping_mul(inv_mul(0xBF58_476D_1CE4_E5B9));
    z = invert_xorshift(z, 30);
    z.wrapping_sub(0x9E37_79B9_7F4A_7C15)
}

fn tag_value(m: &Message) -> Option<u64> {
    let tag = m.to_tag()?;
    let hex = tag.get(tag.len().checked_sub(16)?..)?;
    u64::from_str_radix(hex, 16).ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_answers_do_not_give_away_the_next_identifier() {
    assert_eq!(
        unmix(mix(0xdead_beef)),
        0xdead_beef,
        "the attacker's inverse works"
    );
    let cc = SipUa::bind(ua("agents")).await.unwrap();
    let relay = Relay::start(cc.local_addr(), 45_000).await;
    let sock = stranger().await;
    let me = sock.local_addr().unwrap();
    let mut tags = Vec::new();
    for n in 0..3 {
        let r = ask(
            &sock,
            relay.sip,
            &options(n, me, relay.sip),
            Duration::from_secs(2),
        )
        .await
        .expect("an off-list OPTIONS is answered");
        assert_eq!(r.status(), Some(403));
        tags.push(tag_value(&r).expect("a 64-bit hex tag"));
    }
    // The attack that worked: the seed from the first tag for each small counter, checked
    // against the second, then the third predicted.
    let predicted: Vec<u64> = (1..=100_000u64)
        .filter_map(|k| {
            let seed = unmix(tags[0]) ^ mix(k);
            (mix(seed ^ mix(k + 1)) == tags[1]).then(|| mix(seed ^ mix(k + 2)))
        })
        .collect();
    assert!(
        predicted.is_empty(),
        "two answers gave the generator away; next tag predicted: {}",
        predicted.contains(&tags[2])
    );
    assert_ne!(tags[0], tags[1]);
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_cannot_hang_up_a_call_with_guessed_or_correct_identifiers() {
    let mut cc = SipUa::bind(ua("agents")).await.unwrap();
    let trunk = SipUa::bind(ua("caller")).await.unwrap();
    let relay = Relay::start(cc.local_addr(), 45_200).await;
    let (a, b) = live_call(&relay, &trunk, &mut cc).await;
    let sock = stranger().await;
    let me = sock.local_addr().unwrap();
    let wait = Duration::from_millis(500);

    // Guessed: the right Call-ID (it travels in the clear) with tags from a counter.
    let ids = a.dialog_ids();
    for guess in 0..78u64 {
        let mut g = ids.clone();
        g.remote = format!("<sip:5550100@{}>;tag=a{:016x}", relay.sip, mix(guess));
        let r = ask(
            &sock,
            relay.sip,
            &forged("BYE", &g, 50 + guess as u32, me, None),
            wait,
        )
        .await;
        assert_eq!(r.and_then(|m| m.status()), Some(403), "guess {guess}");
    }
    // Correct: the trunk leg's and the contact-centre leg's real identifiers.
    let r = ask(
        &sock,
        relay.sip,
        &forged("BYE", &ids, ids.cseq + 1, me, None),
        wait,
    )
    .await;
    assert_eq!(r.and_then(|m| m.status()), Some(403));
    let cc_ids = b.dialog_ids();
    let r = ask(
        &sock,
        relay.sip,
        &forged("BYE", &cc_ids, cc_ids.cseq + 1, me, None),
        wait,
    )
    .await;
    assert_eq!(r.and_then(|m| m.status()), Some(403));

    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        a.ending().is_none(),
        "the caller was hung up: {:?}",
        a.ending()
    );
    assert!(
        b.ending().is_none(),
        "the agent was hung up: {:?}",
        b.ending()
    );
    assert!(audio_flows(&a, &b).await, "the call's audio stopped");
    end(a, b, relay).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_cannot_reroute_the_media_with_a_reinvite() {
    let mut cc = SipUa::bind(ua("agents")).await.unwrap();
    let trunk = SipUa::bind(ua("caller")).await.unwrap();
    let relay = Relay::start(cc.local_addr(), 45_400).await;
    let (a, b) = live_call(&relay, &trunk, &mut cc).await;
    let sock = stranger().await;
    let me = sock.local_addr().unwrap();
    let ear = UdpSocket::bind((STRANGER, 0)).await.unwrap();
    let ear_port = ear.local_addr().unwrap().port();
    let sdp = format!(
        "v=0\r\no=- 2 2 IN IP4 {STRANGER}\r\ns=-\r\nc=IN IP4 {STRANGER}\r\nt=0 0\r\n\
m=audio {ear_port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n\
a=sendrecv\r\n"
    );
    let wait = Duration::from_millis(800);
    for ids in [b.dialog_ids(), a.dialog_ids()] {
        let r = ask(
            &sock,
            relay.sip,
            &forged("INVITE", &ids, ids.cseq + 1, me, Some(&sdp)),
            wait,
        )
        .await;
        // The 403 may come after a 100 Trying on base; here it is the only answer.
        assert_eq!(r.and_then(|m| m.status()), Some(403));
    }
    assert!(
        audio_flows(&a, &b).await,
        "the agent no longer hears the caller"
    );
    assert!(
        hears_nothing(&ear).await,
        "the stranger received the call's audio"
    );
    end(a, b, relay).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_cannot_answer_in_the_contact_centres_place() {
    let mut cc = SipUa::bind(ua("agents")).await.unwrap();
    let trunk = SipUa::bind(ua("caller")).await.unwrap();
    let relay = Relay::start(cc.local_addr(), 45_600).await;
    let target = format!("sip:5550100@{}", relay.sip);
    let sock = stranger().await;
    let ear = UdpSocket::bind((STRANGER, 0)).await.unwrap();
    let ear_port = ear.local_addr().unwrap().port();
    let (a, b) = tokio::join!(trunk.call(&target, relay.sip, &[]), async {
        let inc: Incoming = cc.accept().await?;
        // Before the agent answers, the stranger answers tonewall's INVITE (right branch,
        // Call-ID and tags: it saw the INVITE) with its own media address.
        let sdp = format!(
            "v=0\r\no=- 3 3 IN IP4 {STRANGER}\r\ns=-\r\nc=IN IP4 {STRANGER}\r\nt=0 0\r\n\
m=audio {ear_port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n"
        );
        let fake = ResponseBuilder::new(inc.invite(), 200, "OK")
            .to_tag("evil")
            .header(
                "Contact",
                &format!("<sip:evil@{}>", sock.local_addr().unwrap()),
            )
            .body("application/sdp", sdp.into_bytes())
            .build()
            .unwrap();
        let to = inc.source();
        sock.send_to(fake.as_bytes(), to).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        inc.answer().await
    });
    let (a, b) = (a.unwrap(), b.unwrap());
    assert!(
        audio_flows(&a, &b).await,
        "the real agent does not hear the caller"
    );
    assert!(
        hears_nothing(&ear).await,
        "the stranger received the call's audio"
    );
    end(a, b, relay).await;
}

/// The loop number's locator guessed over SIP, from the contact centre's own PBX address (on the
/// allow-list, as in the attack that found a live 4-digit locator with 1,849 INVITEs): the
/// source is locked out long before 300 guesses, and the real locator, keyed last, finds
/// nothing either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_locator_guesses_over_sip_are_stopped() {
    let cc = SipUa::bind(ua("agents")).await.unwrap();
    let route = format!(
        "name = \"loop\"\nmode = \"loop\"\nsources = [\"127.0.0.1/32\"]\nuser = \"pay\"\n\
target = \"sip:return@{}\"\nlocator_from = [\"ruri\"]\n",
        cc.local_addr()
    );
    let relay = Relay::with_route(&route, 46_000).await;
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{}", relay.api);
    let created: serde_json::Value = http
        .post(format!("{base}/v1/sessions"))
        .bearer_auth(DESK_TOKEN)
        .json(&serde_json::json!({ "agent": "7001" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let locator = created["locator"].as_str().unwrap().to_string();
    let id = created["id"].as_str().unwrap().to_string();
    assert!(
        locator.len() >= 6,
        "default locators are six digits: {locator}"
    );

    let pbx = UdpSocket::bind(("127.0.0.1", 0)).await.unwrap();
    let me = pbx.local_addr().unwrap();
    let mut statuses = Vec::new();
    for n in 0..300u32 {
        let guess = if n == 299 {
            locator.clone()
        } else {
            // Wrong by construction: the real locator with its last digit changed.
            let last = locator.as_bytes()[locator.len() - 1] - b'0';
            let other = (u32::from(last) + 1 + n % 9) % 10;
            format!("{}{other}", &locator[..locator.len() - 1])
        };
        let sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
m=audio 4000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n";
        let invite = format!(
            "INVITE sip:pay*{guess}@{sip} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKguess{n}\r\n\
Max-Forwards: 70\r\nFrom: <sip:pbx@{me}>;tag=g{n}\r\nTo: <sip:pay*{guess}@{sip}>\r\n\
Call-ID: guess-{n}@{me}\r\nCSeq: 1 INVITE\r\nContact: <sip:pbx@{me}>\r\n\
Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
            sdp.len(),
            sip = relay.sip,
        );
        pbx.send_to(invite.as_bytes(), relay.sip).await.unwrap();
        let mut buf = vec![0u8; 65_535];
        let status = loop {
            let got = tokio::time::timeout(Duration::from_secs(3), pbx.recv_from(&mut buf)).await;
            let Ok(Ok((len, _))) = got else { break None };
            let Ok(m) = Message::parse(
                Bytes::copy_from_slice(&buf[..len]),
                Framing::Datagram,
                &Limits::default(),
            ) else {
                continue;
            };
            // Retransmitted finals of earlier guesses and 100 Trying are skipped.
            if m.call_id() == Some(format!("guess-{n}@{me}").as_str())
                && m.status().is_some_and(|s| s >= 200)
            {
                break m.status();
            }
        };
        statuses.push(status.expect("every guess is answered"));
    }
    let refused = statuses.iter().filter(|s| **s == 403).count();
    assert!(
        statuses.iter().all(|s| *s == 404 || *s == 403),
        "{statuses:?}"
    );
    assert!(refused >= 280, "only {refused} of 300 guesses refused");
    assert_eq!(
        statuses[299], 403,
        "the real locator, keyed while locked out"
    );
    let view = relay
        .get_json(&format!("/v1/sessions/{id}"), DESK_TOKEN)
        .await;
    assert!(view["call_id"].is_null(), "the session was bound: {view}");
    let metrics = http
        .get(format!("{base}/metrics"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("tonewall_locator_lookups_refused_total{surface=\"sip\"}"),
        "{metrics}"
    );
    relay.stop().await;
}
