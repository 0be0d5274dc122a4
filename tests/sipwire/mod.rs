//! The in-memory SIP wire the B2BUA tests share: a scripted trunk UAC and contact-centre UAS
//! exchanging bytes with the core on a virtual clock. Every message crossing the wire is checked
//! for header leaks (nothing of the trunk's routing reaches the contact centre and vice versa).
#![allow(dead_code, clippy::unwrap_used, clippy::indexing_slicing)]

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;

use bytes::Bytes;
use tonewall::config::{RouteMode, Transport};
use tonewall::sip::b2bua::{
    B2bua, B2buaConfig, CallEvent, EndCause, Input, Output, PortAllocator, RelayPorts, Route,
};
use tonewall::sip::message::{Framing, Limits, Message, ResponseBuilder};
use tonewall::sip::transaction::TimerConfig;

pub const TRUNK: &str = "192.0.2.10:5060";
pub const CC: &str = "198.51.100.20:5080";
pub const STRANGER: &str = "203.0.113.66:5060";

/// Bytes that identify the trunk's side: none may reach the contact centre.
pub const TRUNK_MARKS: [&str; 4] = [
    "192.0.2.10",
    "rr.trunk.example",
    "trunk-call",
    "z9hG4bKtrunk",
];
/// Bytes that identify the contact centre's side: none may reach the trunk.
pub const CC_MARKS: [&str; 4] = ["198.51.100.20", "rr.cc.example", "cc-dialog", "z9hG4bKcc"];

pub fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

pub fn parse(bytes: &[u8]) -> Message {
    Message::parse(
        Bytes::copy_from_slice(bytes),
        Framing::Datagram,
        &Limits::default(),
    )
    .unwrap()
}

pub fn text(m: &Message) -> String {
    String::from_utf8_lossy(m.as_bytes()).into_owned()
}

#[derive(Default)]
pub struct Pool {
    pub next: u16,
    pub live: HashSet<u16>,
    pub released: Vec<u16>,
}

impl PortAllocator for Pool {
    fn allocate(&mut self) -> Option<RelayPorts> {
        let rtp = 30_000 + self.next;
        self.next += 2;
        self.live.insert(rtp);
        Some(RelayPorts { rtp, rtcp: rtp + 1 })
    }
    fn release(&mut self, ports: RelayPorts) {
        assert!(self.live.remove(&ports.rtp), "double release {}", ports.rtp);
        self.released.push(ports.rtp);
    }
}

pub struct Wire {
    pub core: B2bua,
    pub pool: Pool,
    pub now: u64,
    pub trunk: VecDeque<Message>,
    pub cc: VecDeque<Message>,
    /// What we answered an address on no allow-list (echoes whatever it sent us).
    pub stranger: VecDeque<Message>,
    pub events: Vec<Output>,
    /// The transport `deliver` hands messages over (UDP unless a test says otherwise).
    pub transport: Transport,
    /// The transport and destination of every message the core sent, in order.
    pub sent: Vec<(Transport, SocketAddr)>,
}

pub fn config(max_calls: usize) -> B2buaConfig {
    B2buaConfig {
        sip_host: "10.0.0.1:5060".into(),
        tls_host: "10.0.0.1:5061".into(),
        media_address: "10.0.0.1".parse().unwrap(),
        routes: vec![Route {
            name: "inline".into(),
            sources: vec!["192.0.2.0/24".parse().unwrap()],
            user: None,
            target_uri: "sip:agents@198.51.100.20:5080".into(),
            target: addr(CC),
            transport: Transport::Udp,
            peer_sources: Vec::new(),
            mode: RouteMode::Inline,
            loop_route: None,
            srtp_trunk: tonewall::rtp::srtp::SrtpPolicy::Optional,
            srtp_target: tonewall::rtp::srtp::SrtpPolicy::Off,
        }],
        max_calls,
        retry_after_s: 7,
        carry_headers: vec!["X-Call-Ref".into()],
        user_agent: "tonewall-test".into(),
        timers: TimerConfig::default(),
        id_seed: [42; 32],
    }
}

impl Wire {
    pub fn new() -> Wire {
        Wire::with(config(10))
    }
    pub fn with(cfg: B2buaConfig) -> Wire {
        Wire {
            core: B2bua::new(cfg),
            pool: Pool::default(),
            now: 0,
            trunk: VecDeque::new(),
            cc: VecDeque::new(),
            stranger: VecDeque::new(),
            events: Vec::new(),
            transport: Transport::Udp,
            sent: Vec::new(),
        }
    }

    pub fn dispatch(&mut self, out: Vec<Output>) {
        for o in out {
            match o {
                Output::Send {
                    to,
                    bytes,
                    transport,
                } => {
                    self.sent.push((transport, to));
                    let m = parse(&bytes);
                    let t = text(&m);
                    if to == addr(STRANGER) {
                        self.stranger.push_back(m);
                    } else if to == addr(CC) {
                        for mark in TRUNK_MARKS {
                            assert!(!t.contains(mark), "trunk's {mark} leaked to CC:\n{t}");
                        }
                        self.cc.push_back(m);
                    } else {
                        for mark in CC_MARKS {
                            assert!(!t.contains(mark), "CC's {mark} leaked to trunk:\n{t}");
                        }
                        self.trunk.push_back(m);
                    }
                }
                other => self.events.push(other),
            }
        }
    }

    pub fn deliver(&mut self, from: &str, msg: &str) {
        let mut out = Vec::new();
        let input = Input::Received {
            transport: self.transport,
            from: addr(from),
            msg: parse(msg.as_bytes()),
        };
        self.core.handle(input, self.now, &mut self.pool, &mut out);
        self.dispatch(out);
    }

    /// Feeds `msg` and returns what the core sent, unchecked: for a test whose sender forges
    /// the other side's identifiers (the leak check would see its own bytes echoed back).
    pub fn deliver_unchecked(&mut self, from: &str, msg: &str) -> Vec<Message> {
        let mut out = Vec::new();
        let input = Input::Received {
            transport: Transport::Udp,
            from: addr(from),
            msg: parse(msg.as_bytes()),
        };
        self.core.handle(input, self.now, &mut self.pool, &mut out);
        let mut sent = Vec::new();
        for o in out {
            match o {
                Output::Send { bytes, .. } => sent.push(parse(&bytes)),
                other => self.events.push(other),
            }
        }
        sent
    }

    pub fn input(&mut self, input: Input) {
        let mut out = Vec::new();
        self.core.handle(input, self.now, &mut self.pool, &mut out);
        self.dispatch(out);
    }

    /// Advances the virtual clock, firing every deadline on the way.
    pub fn advance(&mut self, ms: u64) {
        let end = self.now + ms;
        while let Some(d) = self.core.next_deadline().filter(|d| *d <= end) {
            self.now = d.max(self.now);
            self.input(Input::Tick);
        }
        self.now = end;
    }

    pub fn next_to_trunk(&mut self) -> Message {
        self.trunk
            .pop_front()
            .expect("expected a message to the trunk")
    }
    pub fn next_to_cc(&mut self) -> Message {
        self.cc
            .pop_front()
            .expect("expected a message to the contact centre")
    }
    /// Next message to the trunk that is not a 100 Trying.
    pub fn trunk_final_or_prov(&mut self) -> Message {
        loop {
            let m = self.next_to_trunk();
            if m.status() != Some(100) {
                return m;
            }
        }
    }

    pub fn ended(&self) -> Vec<EndCause> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Output::Event {
                    event: CallEvent::Ended(c),
                    ..
                } => Some(*c),
                _ => None,
            })
            .collect()
    }
}

pub fn sdp(ip: &str, port: u16, codecs: &str, dir: &str) -> String {
    let mut s = format!(
        "v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio {port} RTP/AVP {codecs}\r\n"
    );
    for pt in codecs.split(' ') {
        let name = match pt {
            "0" => "PCMU/8000",
            "8" => "PCMA/8000",
            "18" => "G729/8000",
            "101" => "telephone-event/8000",
            _ => continue,
        };
        s.push_str(&format!("a=rtpmap:{pt} {name}\r\n"));
    }
    s.push_str(&format!("a={dir}\r\n"));
    s
}

pub fn with_body(head: &str, body: Option<&str>) -> String {
    match body {
        Some(b) => format!(
            "{head}Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{b}",
            b.len()
        ),
        None => format!("{head}Content-Length: 0\r\n\r\n"),
    }
}

pub fn trunk_invite(branch: &str, body: Option<&str>, extra: &str) -> String {
    with_body(
        &format!(
            "INVITE sip:5551234@10.0.0.1:5060 SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKtrunk{branch}\r\n\
Max-Forwards: 70\r\n\
From: \"Alice\" <sip:4155550100@192.0.2.10>;tag=t1\r\n\
To: <sip:5551234@10.0.0.1>\r\n\
Call-ID: trunk-call-{branch}@192.0.2.10\r\n\
CSeq: 1 INVITE\r\n\
Contact: <sip:trunk@192.0.2.10:5060>\r\n\
Record-Route: <sip:rr.trunk.example;lr>\r\n\
P-Asserted-Identity: <sip:+14155550100@pai.example>\r\n\
X-Call-Ref: ref-77\r\n\
Supported: 100rel, timer\r\n\
{extra}"
        ),
        body,
    )
}

/// A peer's view of its dialog with tonewall.
pub struct Peer {
    pub host: &'static str,
    pub call_id: String,
    pub local: String,
    pub remote: String,
    pub target: String,
    pub cseq: u32,
    pub n: u32,
}

impl Peer {
    pub fn request(&mut self, method: &str, body: Option<&str>, extra: &str) -> String {
        self.n += 1;
        if method != "ACK" {
            self.cseq += 1;
        }
        let tag = if self.host == TRUNK { "trunk" } else { "cc" };
        with_body(
            &format!(
                "{method} {} SIP/2.0\r\nVia: SIP/2.0/UDP {};branch=z9hG4bK{tag}{}x{}\r\n\
Max-Forwards: 70\r\nFrom: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {} {method}\r\n{extra}",
                self.target,
                self.host,
                self.call_id.len(),
                self.n,
                self.local,
                self.remote,
                self.call_id,
                self.cseq
            ),
            body,
        )
    }
}

/// The contact centre answers `req` (status, optional SDP).
pub fn cc_answer(req: &Message, status: u16, reason: &str, body: Option<&str>) -> String {
    let mut b = ResponseBuilder::new(req, status, reason)
        .to_tag("cc-dialog-tag")
        .header("Contact", "<sip:agent@198.51.100.20:5080>")
        .header("Record-Route", "<sip:rr.cc.example;lr>");
    if let Some(s) = body {
        b = b.body("application/sdp", s.to_owned());
    }
    text(&b.build().unwrap())
}

/// The contact centre's side of the dialog the INVITE `inv` created.
pub fn cc_peer(inv: &Message) -> Peer {
    Peer {
        host: CC,
        call_id: inv.call_id().unwrap().to_owned(),
        local: format!(
            "{};tag=cc-dialog-tag",
            String::from_utf8_lossy(inv.get("To").unwrap())
        ),
        remote: String::from_utf8_lossy(inv.get("From").unwrap()).into_owned(),
        target: inv
            .contacts()
            .map(|c| match c {
                tonewall::sip::headers::Contacts::List(l) => l[0].uri_raw.to_owned(),
                _ => panic!(),
            })
            .unwrap(),
        cseq: 100,
        n: 0,
    }
}

/// The trunk's side of the dialog after tonewall's 2xx `ok` to `inv`.
pub fn trunk_peer(ok: &Message) -> Peer {
    Peer {
        host: TRUNK,
        call_id: ok.call_id().unwrap().to_owned(),
        local: String::from_utf8_lossy(ok.get("From").unwrap()).into_owned(),
        remote: String::from_utf8_lossy(ok.get("To").unwrap()).into_owned(),
        target: ok
            .contacts()
            .map(|c| match c {
                tonewall::sip::headers::Contacts::List(l) => l[0].uri_raw.to_owned(),
                _ => panic!(),
            })
            .unwrap(),
        cseq: 1,
        n: 0,
    }
}

pub fn m_port(m: &Message) -> u16 {
    let body = String::from_utf8_lossy(m.body()).into_owned();
    let line = body.lines().find(|l| l.starts_with("m=audio ")).unwrap();
    line.split(' ').nth(1).unwrap().parse().unwrap()
}

pub fn assert_relay_sdp(m: &Message, port: u16) {
    let body = String::from_utf8_lossy(m.body()).into_owned();
    assert!(body.contains("c=IN IP4 10.0.0.1"), "not anchored:\n{body}");
    assert_eq!(m_port(m), port, "{body}");
}

/// Sets up an answered, confirmed call; returns the trunk's and the CC's peers.
pub fn answered_call(w: &mut Wire) -> (Peer, Peer) {
    let offer = sdp("192.0.2.10", 40000, "0 8 101", "sendrecv");
    w.deliver(TRUNK, &trunk_invite("1", Some(&offer), ""));
    assert_eq!(w.next_to_trunk().status(), Some(100));
    let inv = w.next_to_cc();
    assert_relay_sdp(&inv, 30002);
    let mut cc = cc_peer(&inv);
    w.deliver(CC, &cc_answer(&inv, 180, "Ringing", None));
    assert_eq!(w.trunk_final_or_prov().status(), Some(180));
    let answer = sdp("198.51.100.20", 50000, "0 101", "sendrecv");
    w.deliver(CC, &cc_answer(&inv, 200, "OK", Some(&answer)));
    let ok = w.trunk_final_or_prov();
    assert_eq!(ok.status(), Some(200));
    assert_relay_sdp(&ok, 30000);
    assert!(w.cc.is_empty(), "B-leg ACK must wait for the trunk's ACK");
    let mut trunk = trunk_peer(&ok);
    // The ACK reuses the INVITE's CSeq (Peer::request does not step it for ACK).
    w.deliver(TRUNK, &trunk.request("ACK", None, ""));
    let b_ack = w.next_to_cc();
    assert_eq!(b_ack.method().unwrap().as_str(), "ACK");
    assert_eq!(b_ack.cseq().unwrap().seq, inv.cseq().unwrap().seq);
    cc.cseq = 100;
    (trunk, cc)
}
