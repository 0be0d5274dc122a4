//! A small SIP user agent over UDP, for the demo and the tests: it plays the trunk that places a
//! call through tonewall and the contact centre that answers it, and it sends and records the
//! call's RTP.
//!
//! Built on the project's own message layer (`sip::message`, `sip::headers`, `sip::sdp`). It
//! is not a general UA: one UDP socket for signalling, INVITE/ACK/BYE dialogs (RFC 3261 §12,
//! §13, §15) with the retransmissions UDP needs (§17.1.1.2 Timer A, §17.1.2.2 Timer E,
//! §13.3.1.4 2xx retransmission), one SDP offer/answer with G.711 and telephone-event
//! (RFC 3264, RFC 4733), and one RTP socket per call. Every wait is bounded by a timeout, errors
//! are typed, and nothing it receives can make it panic: malformed datagrams are answered 4xx
//! (when they can be) or dropped.
//!
//! It must never log or print what it sends or receives in RTP (the caller's keys are in there).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use crate::digit::Digit;
use crate::dsp::g711::Codec;
use crate::rtp::packet::RtpView;
use crate::rtp::trunk::{KeySpan, Received, TrunkConfig, depacketize, packetize};
use crate::sip::error::EditError;
use crate::sip::headers::Contacts;
use crate::sip::message::{Framing, Limits, Message, Method, RequestBuilder, ResponseBuilder};
use crate::sip::sdp::{Sdp, SdpError};

/// RFC 3261 §17.1.1.1: RTT estimate and the cap of non-INVITE retransmission intervals.
const T1: Duration = Duration::from_millis(500);
const T2: Duration = Duration::from_secs(4);
/// One RTP packet every 20 ms (160 samples at 8 kHz).
const PTIME: Duration = Duration::from_millis(20);
/// Messages waiting for one call's signalling task; beyond it a datagram is dropped, as UDP
/// would drop it, and retransmission recovers.
const CALL_QUEUE: usize = 64;
/// New INVITEs waiting for [`SipUa::accept`]; beyond it they are answered 486.
const INCOMING_QUEUE: usize = 16;
/// RTP packets a call keeps (an hour at 50 packets a second); later ones are counted, not kept.
const MAX_KEPT_PACKETS: usize = 180_000;

/// Why a UA operation failed. Never carries media content.
#[derive(Debug, thiserror::Error)]
pub enum UaError {
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    #[error("call rejected: {status} {reason}")]
    Rejected { status: u16, reason: String },
    #[error("cannot build a SIP message: {0}")]
    Build(#[from] EditError),
    #[error("peer's SDP: {0}")]
    Sdp(#[from] SdpError),
    #[error("peer's SDP has no usable audio stream (G.711 with an address and a port)")]
    NoAudio,
    #[error("peer did not offer telephone-event, so keys cannot be sent as RFC 4733 events")]
    NoTelephoneEvent,
    #[error("peer's {0} is missing or malformed")]
    Malformed(&'static str),
    #[error("the user agent has stopped")]
    Closed,
}

/// Who this UA is and how long it waits.
#[derive(Clone, Debug)]
pub struct UaConfig {
    /// Address the SIP and RTP sockets bind to (port chosen by the OS) and that SDP advertises.
    pub ip: IpAddr,
    /// User part of our From and Contact URIs.
    pub user: String,
    /// Codec offered first, and chosen in an answer when the offer has it.
    pub codec: Codec,
    /// Payload type offered for telephone-event/8000.
    pub event_pt: u8,
    /// Longest wait for any one answer (RFC 3261 Timers B, F and H are 64·T1 = 32 s).
    pub timeout: Duration,
    pub user_agent: String,
}

impl Default for UaConfig {
    fn default() -> Self {
        UaConfig {
            ip: IpAddr::from([127, 0, 0, 1]),
            user: "ua".into(),
            codec: Codec::Pcmu,
            event_pt: 101,
            timeout: T1 * 64,
            user_agent: concat!("tonewall-ua/", env!("CARGO_PKG_VERSION")).into(),
        }
    }
}

/// A received message and where it came from.
struct Inbound {
    msg: Message,
    from: SocketAddr,
}

/// What the UA's tasks share: the signalling socket and the Call-ID → call routing table.
struct Shared {
    sock: UdpSocket,
    local: SocketAddr,
    cfg: UaConfig,
    calls: Mutex<HashMap<String, mpsc::Sender<Inbound>>>,
}

impl Shared {
    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<String, mpsc::Sender<Inbound>>> {
        self.calls.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn register(&self, call_id: &str) -> mpsc::Receiver<Inbound> {
        let (tx, rx) = mpsc::channel(CALL_QUEUE);
        self.table().insert(call_id.to_owned(), tx);
        rx
    }

    fn forget(&self, call_id: &str) {
        self.table().remove(call_id);
    }

    async fn send(&self, bytes: &[u8], to: SocketAddr) -> Result<(), UaError> {
        self.sock.send_to(bytes, to).await?;
        Ok(())
    }

    /// Answers a request with a bodiless response.
    async fn respond(&self, req: &Message, to: SocketAddr, status: u16, reason: &str) {
        let built = ResponseBuilder::new(req, status, reason)
            .to_tag(&random_id())
            .header("User-Agent", &self.cfg.user_agent)
            .build();
        if let Ok(resp) = built {
            // A lost answer is retransmission's business.
            let _ = self.send(resp.as_bytes(), to).await;
        }
    }

    fn contact(&self) -> String {
        format!("<sip:{}@{}>", self.cfg.user, self.local)
    }

    fn via(&self, branch: &str) -> String {
        format!("SIP/2.0/UDP {};branch={branch};rport", self.local)
    }
}

fn random_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// RFC 3261 §8.1.1.7: branches start with the magic cookie.
fn new_branch() -> String {
    format!("z9hG4bK{}", random_id())
}

/// Stops the receive task when the UA and every call of it are gone.
struct ReceiveTask(JoinHandle<()>);

impl Drop for ReceiveTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A SIP user agent on one UDP socket. Its calls keep receiving when the `SipUa` is dropped.
pub struct SipUa {
    shared: Arc<Shared>,
    incoming: mpsc::Receiver<Pending>,
    task: Arc<ReceiveTask>,
}

impl SipUa {
    /// Binds the signalling socket on `cfg.ip` with a port the OS chooses.
    pub async fn bind(cfg: UaConfig) -> Result<SipUa, UaError> {
        let sock = UdpSocket::bind(SocketAddr::new(cfg.ip, 0)).await?;
        let local = sock.local_addr()?;
        let shared = Arc::new(Shared {
            sock,
            local,
            cfg,
            calls: Mutex::new(HashMap::new()),
        });
        let (tx, incoming) = mpsc::channel(INCOMING_QUEUE);
        let task = Arc::new(ReceiveTask(tokio::spawn(receive(shared.clone(), tx))));
        Ok(SipUa {
            shared,
            incoming,
            task,
        })
    }

    /// Where this UA receives SIP.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local
    }

    /// Our SIP URI (`sip:user@ip:port`).
    pub fn uri(&self) -> String {
        format!("sip:{}@{}", self.shared.cfg.user, self.shared.local)
    }

    /// Waits up to the configured timeout for a new INVITE.
    pub async fn accept(&mut self) -> Result<Incoming, UaError> {
        let timeout = self.shared.cfg.timeout;
        self.accept_within(timeout).await
    }

    /// Waits up to `timeout` for a new INVITE.
    pub async fn accept_within(&mut self, timeout: Duration) -> Result<Incoming, UaError> {
        match tokio::time::timeout(timeout, self.incoming.recv()).await {
            Ok(Some(p)) => Ok(Incoming {
                shared: self.shared.clone(),
                receiver: self.task.clone(),
                invite: p.invite,
                from: p.from,
                rx: p.rx,
                tag: random_id(),
                answered: false,
            }),
            Ok(None) => Err(UaError::Closed),
            Err(_) => Err(UaError::Timeout("an INVITE")),
        }
    }

    /// Places a call: INVITE `target_uri` (sent to `server`) with an SDP offer and `headers`,
    /// through 1xx to 2xx, then ACK (RFC 3261 §13.2). A final non-2xx is ACKed (§17.1.1.3) and
    /// returned as [`UaError::Rejected`].
    pub async fn call(
        &self,
        target_uri: &str,
        server: SocketAddr,
        headers: &[(&str, &str)],
    ) -> Result<Call, UaError> {
        let sh = &self.shared;
        let call_id = format!("{}@{}", random_id(), sh.local.ip());
        let mut rx = sh.register(&call_id);
        // From here on the table entry must go on every early return.
        let result = self
            .invite(target_uri, server, headers, &call_id, &mut rx)
            .await;
        match result {
            Ok(setup) => Ok(Call::start(sh.clone(), self.task.clone(), setup, rx)),
            Err(e) => {
                sh.forget(&call_id);
                Err(e)
            }
        }
    }

    async fn invite(
        &self,
        target_uri: &str,
        server: SocketAddr,
        headers: &[(&str, &str)],
        call_id: &str,
        rx: &mut mpsc::Receiver<Inbound>,
    ) -> Result<Setup, UaError> {
        let sh = &self.shared;
        let cfg = &sh.cfg;
        let rtp = UdpSocket::bind(SocketAddr::new(cfg.ip, 0)).await?;
        let rtp_port = rtp.local_addr()?.port();
        let other = match cfg.codec {
            Codec::Pcmu => Codec::Pcma,
            Codec::Pcma => Codec::Pcmu,
        };
        let offer = sdp_body(cfg.ip, rtp_port, &[cfg.codec, other], Some(cfg.event_pt));
        let from = format!("<{}>;tag={}", self.uri(), random_id());
        let to = format!("<{target_uri}>");
        let branch = new_branch();
        let mut b = RequestBuilder::new("INVITE", target_uri)
            .header("Via", &sh.via(&branch))
            .header("Max-Forwards", "70")
            .header("From", &from)
            .header("To", &to)
            .header("Call-ID", call_id)
            .header("CSeq", "1 INVITE")
            .header("Contact", &sh.contact())
            .header("User-Agent", &cfg.user_agent)
            .header("Allow", "INVITE, ACK, BYE, CANCEL, OPTIONS");
        for (n, v) in headers {
            b = b.header(n, v);
        }
        let invite = b.body("application/sdp", offer.into_bytes()).build()?;
        let bytes = invite.as_bytes().clone();

        let deadline = Instant::now() + cfg.timeout;
        // Timer A (§17.1.1.2) until a provisional response arrives.
        let mut resend: Option<Duration> = Some(T1);
        let mut next = Instant::now() + T1;
        let mut seen = Vec::new();
        sh.send(&bytes, server).await?;
        loop {
            let wake = match resend {
                Some(_) => next.min(deadline),
                None => deadline,
            };
            let got = tokio::select! {
                m = rx.recv() => m,
                () = tokio::time::sleep_until(wake) => {
                    if Instant::now() >= deadline {
                        return Err(UaError::Timeout("an answer to INVITE"));
                    }
                    if let Some(iv) = resend {
                        sh.send(&bytes, server).await?;
                        let iv = iv * 2;
                        resend = Some(iv);
                        next = Instant::now() + iv;
                    }
                    continue;
                }
            };
            let Some(Inbound { msg, from: peer }) = got else {
                return Err(UaError::Closed);
            };
            let Some(status) = msg.status() else {
                // A request inside a dialog that does not exist yet (§12.2.2).
                if msg.method() != Some(Method::Ack) {
                    sh.respond(&msg, peer, 481, "Call/Transaction Does Not Exist")
                        .await;
                }
                continue;
            };
            let ours = msg
                .cseq()
                .is_some_and(|c| c.seq == 1 && c.method == "INVITE")
                && msg
                    .top_via()
                    .and_then(|v| v.branch())
                    .is_some_and(|b| b == branch);
            if !ours {
                continue;
            }
            let reason: String =
                String::from_utf8_lossy(msg.reason_phrase().unwrap_or_default()).into();
            seen.push((status, reason.clone()));
            if status < 200 {
                resend = None;
                continue;
            }
            if status >= 300 {
                // §17.1.1.3: the ACK for a non-2xx is in the INVITE's transaction.
                let ack = RequestBuilder::new("ACK", target_uri)
                    .header("Via", &sh.via(&branch))
                    .header("Max-Forwards", "70")
                    .header("From", &from)
                    .header("To", &String::from_utf8_lossy(msg.get("To").unwrap_or(b"")))
                    .header("Call-ID", call_id)
                    .header("CSeq", "1 ACK")
                    .build();
                if let Ok(ack) = ack {
                    let _ = sh.send(ack.as_bytes(), peer).await;
                }
                return Err(UaError::Rejected { status, reason });
            }
            // 2xx: the dialog is established (§12.1.2).
            let to_value = msg
                .get("To")
                .filter(|_| msg.to_tag().is_some())
                .ok_or(UaError::Malformed("To tag"))?;
            let remote_target = match msg.contacts() {
                Ok(Contacts::List(l)) => l.first().map(|n| n.uri_raw.to_owned()),
                _ => None,
            }
            .ok_or(UaError::Malformed("Contact"))?;
            // §12.1.2: the UAC's route set is the Record-Route list reversed.
            let mut route_set: Vec<String> = msg
                .get_all("Record-Route")
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .collect();
            route_set.reverse();
            let media = answer_media(msg.body())?;
            let mut dialog = Dialog {
                call_id: call_id.to_owned(),
                local: from,
                remote: String::from_utf8_lossy(to_value).into_owned(),
                remote_target,
                route_set,
                cseq: 1,
                peer,
            };
            // §13.2.2.4: the ACK of a 2xx is a new transaction with the INVITE's CSeq number.
            let ack = dialog.request(sh, "ACK", Some(1))?;
            sh.send(ack.as_bytes(), peer).await?;
            return Ok(Setup {
                dialog,
                rtp,
                remote_rtp: media.0,
                codec: media.1,
                event_pt: media.2,
                responses: seen,
                invite,
                replay: Replay::Ack(ack.into_bytes()),
            });
        }
    }
}

/// The peer's RTP address, the codec to send and the telephone-event payload type, from an
/// SDP answer.
fn answer_media(body: &[u8]) -> Result<(SocketAddr, Codec, Option<u8>), UaError> {
    let sdp = Sdp::parse(body)?;
    let media = sdp.media()?;
    let audio = media
        .iter()
        .find(|m| m.kind == "audio" && !m.is_disabled())
        .ok_or(UaError::NoAudio)?;
    let addr = audio.rtp_addr().ok_or(UaError::NoAudio)?;
    // The first G.711 format of the answer is what the peer will send (RFC 3264 §6.1).
    let codec = audio
        .payload_types
        .iter()
        .find_map(|&pt| {
            if Some(pt) == audio.codecs.pcmu {
                Some(Codec::Pcmu)
            } else if Some(pt) == audio.codecs.pcma {
                Some(Codec::Pcma)
            } else {
                None
            }
        })
        .ok_or(UaError::NoAudio)?;
    Ok((addr, codec, audio.codecs.telephone_event))
}

fn sdp_body(ip: IpAddr, port: u16, codecs: &[Codec], event_pt: Option<u8>) -> String {
    let family = if ip.is_ipv4() { "IP4" } else { "IP6" };
    let session = rand::random::<u32>();
    let mut pts: Vec<String> = codecs
        .iter()
        .map(|c| c.payload_type().to_string())
        .collect();
    pts.extend(event_pt.map(|p| p.to_string()));
    let mut s = format!(
        "v=0\r\no=- {session} {session} IN {family} {ip}\r\ns=tonewall-ua\r\nc=IN {family} {ip}\r\nt=0 0\r\nm=audio {port} RTP/AVP {}\r\n",
        pts.join(" ")
    );
    for c in codecs {
        let name = match c {
            Codec::Pcmu => "PCMU",
            Codec::Pcma => "PCMA",
        };
        s.push_str(&format!("a=rtpmap:{} {name}/8000\r\n", c.payload_type()));
    }
    if let Some(pt) = event_pt {
        s.push_str(&format!(
            "a=rtpmap:{pt} telephone-event/8000\r\na=fmtp:{pt} 0-15\r\n"
        ));
    }
    s.push_str("a=ptime:20\r\na=sendrecv\r\n");
    s
}

/// Our side of a dialog (RFC 3261 §12): what in-dialog requests carry.
#[derive(Debug)]
struct Dialog {
    call_id: String,
    /// From of our requests: our URI and tag.
    local: String,
    /// To of our requests: their URI and tag.
    remote: String,
    /// Request-URI of our requests: the peer's Contact.
    remote_target: String,
    route_set: Vec<String>,
    cseq: u32,
    /// Where the peer's requests come from; symmetric signalling sends ours there.
    peer: SocketAddr,
}

impl Dialog {
    /// §12.2.1.1; `cseq` overrides the next number (ACK reuses the INVITE's).
    fn request(
        &mut self,
        sh: &Shared,
        method: &str,
        cseq: Option<u32>,
    ) -> Result<Message, UaError> {
        let seq = match cseq {
            Some(n) => n,
            None => {
                self.cseq = self.cseq.wrapping_add(1);
                self.cseq
            }
        };
        let mut b = RequestBuilder::new(method, &self.remote_target)
            .header("Via", &sh.via(&new_branch()))
            .header("Max-Forwards", "70");
        for r in &self.route_set {
            b = b.header("Route", r);
        }
        b = b
            .header("From", &self.local)
            .header("To", &self.remote)
            .header("Call-ID", &self.call_id)
            .header("CSeq", &format!("{seq} {method}"))
            .header("User-Agent", &sh.cfg.user_agent);
        Ok(b.build()?)
    }
}

/// What the signalling task resends when the peer retransmits: our ACK when a 2xx to our
/// INVITE comes again (§13.2.2.4), our 2xx when their INVITE comes again (§13.3.1.4).
enum Replay {
    Ack(Bytes),
    Ok(Bytes),
}

/// A call as set up by [`SipUa::call`] or [`Incoming::answer`].
struct Setup {
    dialog: Dialog,
    rtp: UdpSocket,
    remote_rtp: SocketAddr,
    codec: Codec,
    event_pt: Option<u8>,
    responses: Vec<(u16, String)>,
    invite: Message,
    replay: Replay,
}

/// A new INVITE as the receive task hands it to [`SipUa::accept`].
struct Pending {
    invite: Message,
    from: SocketAddr,
    rx: mpsc::Receiver<Inbound>,
}

/// A new INVITE waiting to be answered.
pub struct Incoming {
    shared: Arc<Shared>,
    receiver: Arc<ReceiveTask>,
    invite: Message,
    from: SocketAddr,
    rx: mpsc::Receiver<Inbound>,
    tag: String,
    answered: bool,
}

impl Drop for Incoming {
    fn drop(&mut self) {
        if !self.answered
            && let Some(id) = self.invite.call_id()
        {
            self.shared.forget(id);
        }
    }
}

impl Incoming {
    /// The Request-URI as written.
    pub fn request_uri(&self) -> &str {
        self.invite.request_uri_str().unwrap_or_default()
    }

    /// The first value of a header of the INVITE, if it is UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.invite.get_str(name)
    }

    pub fn invite(&self) -> &Message {
        &self.invite
    }

    /// Where the INVITE came from.
    pub fn source(&self) -> SocketAddr {
        self.from
    }

    /// Sends 180 Ringing.
    pub async fn ring(&self) -> Result<(), UaError> {
        let resp = ResponseBuilder::new(&self.invite, 180, "Ringing")
            .to_tag(&self.tag)
            .build()?;
        self.shared.send(resp.as_bytes(), self.from).await
    }

    /// Refuses the call with a final status (RFC 3261 §13.3.1.3).
    pub async fn reject(self, status: u16, reason: &str) -> Result<(), UaError> {
        let resp = ResponseBuilder::new(&self.invite, status, reason)
            .to_tag(&self.tag)
            .build()?;
        self.shared.send(resp.as_bytes(), self.from).await
    }

    /// Answers 200 with an SDP answer, resends it until the ACK arrives (§13.3.1.4) and
    /// returns the established call.
    pub async fn answer(mut self) -> Result<Call, UaError> {
        let sh = self.shared.clone();
        let cfg = &sh.cfg;
        let offer = Sdp::parse(self.invite.body())?;
        let media = offer.media()?;
        let audio = media
            .iter()
            .find(|m| m.kind == "audio" && !m.is_disabled())
            .ok_or(UaError::NoAudio)?;
        let remote_rtp = audio.rtp_addr().ok_or(UaError::NoAudio)?;
        let (pcmu, pcma) = (audio.codecs.pcmu.is_some(), audio.codecs.pcma.is_some());
        let codec = match cfg.codec {
            Codec::Pcmu if pcmu => Codec::Pcmu,
            Codec::Pcma if pcma => Codec::Pcma,
            _ if pcmu => Codec::Pcmu,
            _ if pcma => Codec::Pcma,
            _ => return Err(UaError::NoAudio),
        };
        let event_pt = audio.codecs.telephone_event;
        let rtp = UdpSocket::bind(SocketAddr::new(cfg.ip, 0)).await?;
        let body = sdp_body(cfg.ip, rtp.local_addr()?.port(), &[codec], event_pt);
        let ok = ResponseBuilder::new(&self.invite, 200, "OK")
            .to_tag(&self.tag)
            .record_route()
            .header("Contact", &sh.contact())
            .header("User-Agent", &cfg.user_agent)
            .header("Allow", "INVITE, ACK, BYE, CANCEL, OPTIONS")
            .body("application/sdp", body.into_bytes())
            .build()?;
        let ok_bytes = ok.as_bytes().clone();

        // §13.3.1.4: resend the 2xx at T1, doubling up to T2, until the ACK (Timer H: 64·T1).
        let deadline = Instant::now() + cfg.timeout;
        let mut interval = T1;
        sh.send(&ok_bytes, self.from).await?;
        loop {
            let wake = (Instant::now() + interval).min(deadline);
            let got = tokio::select! {
                m = self.rx.recv() => m,
                () = tokio::time::sleep_until(wake) => {
                    if Instant::now() >= deadline {
                        return Err(UaError::Timeout("the ACK of our 200"));
                    }
                    sh.send(&ok_bytes, self.from).await?;
                    interval = (interval * 2).min(T2);
                    continue;
                }
            };
            let Some(Inbound { msg, from }) = got else {
                return Err(UaError::Closed);
            };
            match msg.method() {
                Some(Method::Ack) => break,
                // The INVITE again: our 200 was lost or is late.
                Some(Method::Invite) if msg.to_tag().is_none() => {
                    sh.send(&ok_bytes, from).await?;
                }
                // Too late to cancel (§9.2): the CANCEL itself still gets its 200.
                Some(Method::Cancel) => sh.respond(&msg, from, 200, "OK").await,
                _ => {}
            }
        }

        let remote_target = match self.invite.contacts() {
            Ok(Contacts::List(l)) => l.first().map(|n| n.uri_raw.to_owned()),
            _ => None,
        }
        .unwrap_or_else(|| format!("sip:{}", self.from));
        let to = String::from_utf8_lossy(self.invite.get("To").unwrap_or(b""));
        let local = if self.invite.to_tag().is_some() {
            to.into_owned()
        } else {
            format!("{to};tag={}", self.tag)
        };
        let dialog = Dialog {
            call_id: self.invite.call_id().unwrap_or_default().to_owned(),
            local,
            remote: String::from_utf8_lossy(self.invite.get("From").unwrap_or(b"")).into_owned(),
            remote_target,
            // §12.1.1: the UAS's route set is the Record-Route list in order.
            route_set: self
                .invite
                .get_all("Record-Route")
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .collect(),
            cseq: 0,
            peer: self.from,
        };
        self.answered = true;
        let (_, rx) = mpsc::channel(1);
        let rx = std::mem::replace(&mut self.rx, rx);
        let setup = Setup {
            dialog,
            rtp,
            remote_rtp,
            codec,
            event_pt,
            responses: vec![(200, "OK".into())],
            invite: self.invite.clone(),
            replay: Replay::Ok(ok_bytes),
        };
        Ok(Call::start(sh, self.receiver.clone(), setup, rx))
    }
}

/// The receive task: parses datagrams and hands each to its call, new INVITEs to `accept`.
async fn receive(sh: Arc<Shared>, incoming: mpsc::Sender<Pending>) {
    let mut buf = vec![0u8; 65_536];
    let limits = Limits::default();
    loop {
        let (n, from) = match sh.sock.recv_from(&mut buf).await {
            Ok(r) => r,
            // ICMP port unreachable from an earlier send surfaces here on Linux; keep going.
            Err(_) => continue,
        };
        let Some(data) = buf.get(..n) else { continue };
        if data.iter().all(|b| matches!(b, b'\r' | b'\n')) {
            continue;
        }
        let msg = match Message::parse(Bytes::copy_from_slice(data), Framing::Datagram, &limits) {
            Ok(m) => m,
            Err(rej) => {
                if let Some(resp) = rej.response(&random_id()) {
                    let _ = sh.send(resp.as_bytes(), from).await;
                }
                continue;
            }
        };
        let Some(call_id) = msg.call_id().map(str::to_owned) else {
            continue;
        };
        let known = sh.table().get(&call_id).cloned();
        if let Some(tx) = known {
            let _ = tx.try_send(Inbound { msg, from });
            continue;
        }
        if msg.is_response() {
            continue;
        }
        match msg.method() {
            Some(Method::Invite) if msg.to_tag().is_none() => {
                let rx = sh.register(&call_id);
                let pending = Pending {
                    invite: msg,
                    from,
                    rx,
                };
                if let Err(e) = incoming.try_send(pending) {
                    sh.forget(&call_id);
                    sh.respond(&e.into_inner().invite, from, 486, "Busy Here")
                        .await;
                }
            }
            Some(Method::Ack) => {}
            _ => {
                sh.respond(&msg, from, 481, "Call/Transaction Does Not Exist")
                    .await;
            }
        }
    }
}

/// How a call ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// The peer sent BYE (and got our 200).
    ByPeer,
    /// We sent BYE; the peer's final status.
    ByUs(u16),
}

/// A dialog's identifiers seen from one end (RFC 3261 §12): Call-ID, our From (with our tag),
/// our To (with theirs), the peer's Contact and our last CSeq.
#[derive(Clone, Debug)]
pub struct DialogIds {
    pub call_id: String,
    pub local: String,
    pub remote: String,
    pub remote_target: String,
    pub cseq: u32,
}

/// An established call: its dialog, its RTP socket and what it has received.
pub struct Call {
    shared: Arc<Shared>,
    _receiver: Arc<ReceiveTask>,
    dialog: Dialog,
    responses: Vec<(u16, String)>,
    invite: Message,
    bye_rx: mpsc::Receiver<Message>,
    ended: watch::Receiver<Option<Ending>>,
    ended_tx: Arc<watch::Sender<Option<Ending>>>,
    signalling: JoinHandle<()>,
    rtp: Arc<UdpSocket>,
    remote_rtp: SocketAddr,
    codec: Codec,
    event_pt: Option<u8>,
    received: Arc<Mutex<RxStore>>,
    rtp_task: JoinHandle<()>,
    stream: Mutex<TrunkConfig>,
}

#[derive(Default)]
struct RxStore {
    packets: Vec<Vec<u8>>,
    dropped: u64,
}

impl Drop for Call {
    fn drop(&mut self) {
        self.signalling.abort();
        self.rtp_task.abort();
        self.shared.forget(&self.dialog.call_id);
    }
}

impl Call {
    fn start(
        shared: Arc<Shared>,
        receiver: Arc<ReceiveTask>,
        setup: Setup,
        rx: mpsc::Receiver<Inbound>,
    ) -> Call {
        let (ended_tx, ended) = watch::channel(None);
        let ended_tx = Arc::new(ended_tx);
        let (resp_tx, bye_rx) = mpsc::channel(CALL_QUEUE);
        let signalling = tokio::spawn(signalling(
            shared.clone(),
            rx,
            resp_tx,
            ended_tx.clone(),
            setup.replay,
        ));
        let rtp = Arc::new(setup.rtp);
        let received = Arc::new(Mutex::new(RxStore::default()));
        let rtp_task = tokio::spawn(receive_rtp(rtp.clone(), received.clone()));
        let stream = TrunkConfig {
            codec: setup.codec,
            event_pt: setup.event_pt.unwrap_or(101),
            ssrc: rand::random(),
            first_seq: rand::random(),
            first_ts: rand::random(),
            ..TrunkConfig::default()
        };
        Call {
            shared,
            _receiver: receiver,
            dialog: setup.dialog,
            responses: setup.responses,
            invite: setup.invite,
            bye_rx,
            ended,
            ended_tx,
            signalling,
            rtp,
            remote_rtp: setup.remote_rtp,
            codec: setup.codec,
            event_pt: setup.event_pt,
            received,
            rtp_task,
            stream: Mutex::new(stream),
        }
    }

    /// The responses to our INVITE in the order they came (for an answered call: its 200).
    pub fn responses(&self) -> &[(u16, String)] {
        &self.responses
    }

    /// The INVITE that set the call up (ours or the peer's).
    pub fn invite(&self) -> &Message {
        &self.invite
    }

    pub fn call_id(&self) -> &str {
        &self.dialog.call_id
    }

    /// The dialog as anyone on the signalling path sees it: what an attack test needs to
    /// forge an in-dialog request with the right identifiers.
    pub fn dialog_ids(&self) -> DialogIds {
        DialogIds {
            call_id: self.dialog.call_id.clone(),
            local: self.dialog.local.clone(),
            remote: self.dialog.remote.clone(),
            remote_target: self.dialog.remote_target.clone(),
            cseq: self.dialog.cseq,
        }
    }

    /// Where we send RTP (the peer's SDP address).
    pub fn remote_rtp(&self) -> SocketAddr {
        self.remote_rtp
    }

    pub fn local_rtp(&self) -> Result<SocketAddr, UaError> {
        Ok(self.rtp.local_addr()?)
    }

    /// The codec agreed in SDP, which [`Call::send_audio`] uses.
    pub fn codec(&self) -> Codec {
        self.codec
    }

    /// The telephone-event payload type agreed in SDP, if any.
    pub fn event_pt(&self) -> Option<u8> {
        self.event_pt
    }

    /// How the call ended, if it has.
    pub fn ending(&self) -> Option<Ending> {
        *self.ended.borrow()
    }

    /// Sends prepared RTP packets to the peer, one every 20 ms in real time (each packet is
    /// taken to fill one 20 ms slot, as `rtp::trunk::packetize` makes them). Stops early when
    /// the call ends; returns how many were sent.
    pub async fn send_packets(&self, packets: &[Vec<u8>]) -> Result<usize, UaError> {
        let mut tick = tokio::time::interval(PTIME);
        // Late ticks are caught up so the stream keeps its real-time rate on average.
        tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
        let mut sent = 0;
        for p in packets {
            tick.tick().await;
            if self.ended.borrow().is_some() {
                break;
            }
            self.rtp.send_to(p, self.remote_rtp).await?;
            sent += 1;
        }
        Ok(sent)
    }

    /// Packetizes `audio` on this call's own RTP stream (its SSRC, continuing sequence numbers
    /// and timestamps) in the agreed codec, with the keys in `events` as RFC 4733 events, and
    /// sends it paced.
    pub async fn send_audio(
        &self,
        audio: &[i16],
        events: Option<&[KeySpan]>,
    ) -> Result<usize, UaError> {
        if events.is_some_and(|e| !e.is_empty()) && self.event_pt.is_none() {
            return Err(UaError::NoTelephoneEvent);
        }
        let packets = {
            let mut st = self.stream.lock().unwrap_or_else(PoisonError::into_inner);
            let packets = packetize(audio, &st, events);
            let frames = audio.len().div_ceil(st.ptime.max(1));
            st.first_seq = st.first_seq.wrapping_add(packets.len() as u16);
            st.first_ts = st.first_ts.wrapping_add((frames * st.ptime) as u32);
            packets
        };
        self.send_packets(&packets).await
    }

    /// Sends keys as RFC 4733 events (each `tone_ms` long, `gap_ms` of silence after), on the
    /// call's own RTP stream: how a phone keys a locator or a menu choice.
    pub async fn send_keys(
        &self,
        keys: &[Digit],
        tone_ms: u32,
        gap_ms: u32,
    ) -> Result<usize, UaError> {
        let tone = (tone_ms as usize * 8).max(1);
        let step = tone + gap_ms as usize * 8;
        let spans: Vec<KeySpan> = keys
            .iter()
            .enumerate()
            .map(|(i, &digit)| KeySpan {
                digit,
                start: (i * step) as u64,
                end: (i * step + tone) as u64,
            })
            .collect();
        // Silence between and after the keys, so the end packets have frame slots to go in.
        let audio = vec![0i16; keys.len() * step + 3 * 160];
        self.send_audio(&audio, Some(&spans)).await
    }

    /// Every RTP packet received so far, in arrival order.
    pub fn received_packets(&self) -> Vec<Vec<u8>> {
        self.received
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .packets
            .clone()
    }

    /// RTP packets that arrived beyond what a call keeps.
    pub fn packets_not_kept(&self) -> u64 {
        self.received
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .dropped
    }

    /// The received audio, placed by timestamp from the first packet's.
    pub fn received_audio(&self) -> Received {
        let st = self.received.lock().unwrap_or_else(PoisonError::into_inner);
        let origin = st
            .packets
            .first()
            .and_then(|p| RtpView::parse(p).ok())
            .map_or(0, |v| v.timestamp());
        depacketize(st.packets.iter().map(Vec::as_slice), origin)
    }

    /// Ends the call with BYE (§15.1.1), resending it until a final response (Timer E/F).
    /// Returns the peer's final status; a call the peer already ended is not BYEd again.
    pub async fn hangup(&mut self) -> Result<Ending, UaError> {
        if let Some(e) = self.ending() {
            return Ok(e);
        }
        let sh = self.shared.clone();
        let bye = self.dialog.request(&sh, "BYE", None)?;
        let seq = self.dialog.cseq;
        let peer = self.dialog.peer;
        let deadline = Instant::now() + sh.cfg.timeout;
        let mut interval = T1;
        sh.send(bye.as_bytes(), peer).await?;
        let status = loop {
            let wake = (Instant::now() + interval).min(deadline);
            let got = tokio::select! {
                m = self.bye_rx.recv() => m,
                () = tokio::time::sleep_until(wake) => {
                    if Instant::now() >= deadline {
                        return Err(UaError::Timeout("an answer to BYE"));
                    }
                    sh.send(bye.as_bytes(), peer).await?;
                    interval = (interval * 2).min(T2);
                    continue;
                }
            };
            let Some(resp) = got else {
                return Err(UaError::Closed);
            };
            let ours = resp
                .cseq()
                .is_some_and(|c| c.seq == seq && c.method == "BYE");
            match resp.status() {
                Some(s) if ours && s >= 200 => break s,
                _ => {}
            }
        };
        let ending = Ending::ByUs(status);
        self.ended_tx.send_replace(Some(ending));
        self.rtp_task.abort();
        Ok(ending)
    }

    /// Waits up to `timeout` for the peer to end the call.
    pub async fn wait_ended(&mut self, timeout: Duration) -> Result<Ending, UaError> {
        let wait = self.ended.wait_for(Option::is_some);
        match tokio::time::timeout(timeout, wait).await {
            Ok(Ok(e)) => Ok((*e).unwrap_or(Ending::ByPeer)),
            Ok(Err(_)) => Err(UaError::Closed),
            Err(_) => Err(UaError::Timeout("the call to end")),
        }
    }
}

/// One call's signalling after setup: answers the peer's BYE and other in-dialog requests,
/// replays our ACK or 200 when the peer retransmits, passes responses to [`Call::hangup`].
async fn signalling(
    sh: Arc<Shared>,
    mut rx: mpsc::Receiver<Inbound>,
    responses: mpsc::Sender<Message>,
    ended: Arc<watch::Sender<Option<Ending>>>,
    replay: Replay,
) {
    while let Some(Inbound { msg, from }) = rx.recv().await {
        if msg.is_response() {
            let of_invite = msg.cseq().is_some_and(|c| c.method == "INVITE");
            if of_invite {
                if let (Replay::Ack(ack), Some(200..=299)) = (&replay, msg.status()) {
                    let _ = sh.send(ack, from).await;
                }
            } else {
                let _ = responses.try_send(msg);
            }
            continue;
        }
        match msg.method() {
            Some(Method::Bye) => {
                sh.respond(&msg, from, 200, "OK").await;
                ended.send_if_modified(|e| {
                    if e.is_none() {
                        *e = Some(Ending::ByPeer);
                        true
                    } else {
                        false
                    }
                });
            }
            Some(Method::Ack) => {}
            Some(Method::Invite) if msg.to_tag().is_none() => {
                if let Replay::Ok(ok) = &replay {
                    let _ = sh.send(ok, from).await;
                }
            }
            // A re-INVITE would change the media this UA was set up with.
            Some(Method::Invite) => sh.respond(&msg, from, 488, "Not Acceptable Here").await,
            Some(Method::Cancel | Method::Options | Method::Info | Method::Update) => {
                sh.respond(&msg, from, 200, "OK").await;
            }
            _ => sh.respond(&msg, from, 501, "Not Implemented").await,
        }
    }
}

/// Keeps every RTP packet the call's socket receives (anything that is not RTP is dropped).
async fn receive_rtp(sock: Arc<UdpSocket>, store: Arc<Mutex<RxStore>>) {
    let mut buf = vec![0u8; 2048];
    loop {
        let n = match sock.recv_from(&mut buf).await {
            Ok((n, _)) => n,
            Err(_) => continue,
        };
        let Some(pkt) = buf.get(..n) else { continue };
        if RtpView::parse(pkt).is_err() {
            continue;
        }
        let mut st = store.lock().unwrap_or_else(PoisonError::into_inner);
        if st.packets.len() < MAX_KEPT_PACKETS {
            st.packets.push(pkt.to_vec());
        } else {
            st.dropped += 1;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn our_offer_reads_back_as_what_we_offered() {
        let ip = IpAddr::from([127, 0, 0, 1]);
        let body = sdp_body(ip, 40_000, &[Codec::Pcma, Codec::Pcmu], Some(96));
        let (addr, codec, te) = answer_media(body.as_bytes()).unwrap();
        assert_eq!(addr, SocketAddr::new(ip, 40_000));
        // The first G.711 format listed is the one the peer sends.
        assert_eq!(codec, Codec::Pcma);
        assert_eq!(te, Some(96));
    }

    #[test]
    fn answers_without_usable_audio_are_typed_errors() {
        let no_g711 = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
m=audio 4000 RTP/AVP 18\r\na=rtpmap:18 G729/8000\r\n";
        assert!(matches!(
            answer_media(no_g711.as_bytes()),
            Err(UaError::NoAudio)
        ));
        let disabled = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
m=audio 0 RTP/AVP 0\r\n";
        assert!(matches!(
            answer_media(disabled.as_bytes()),
            Err(UaError::NoAudio)
        ));
        assert!(matches!(answer_media(b"not sdp\r\n"), Err(UaError::Sdp(_))));
        assert!(matches!(answer_media(b""), Err(UaError::NoAudio)));
    }

    #[test]
    fn branches_carry_the_magic_cookie_and_differ() {
        let (a, b) = (new_branch(), new_branch());
        assert!(a.starts_with("z9hG4bK") && b.starts_with("z9hG4bK"));
        assert_ne!(a, b);
    }
}
