//! A small SIP user agent over UDP, for the demo and the tests: it plays the trunk that places a
//! call through tonewall and the contact centre that answers it, and it sends and records the
//! call's RTP.
//!
//! Built on the project's own SIP core: messages (`sip::message`, `sip::headers`, `sip::sdp`),
//! RFC 3261 §17 transactions (`sip::transaction`, driven here by a tokio shell that sleeps to
//! their deadlines) and §12 dialogs (`sip::dialog`). It is not a general UA: one UDP socket for
//! signalling, INVITE/ACK/BYE dialogs (§12, §13, §15), the 2xx retransmission of §13.3.1.4,
//! one SDP offer/answer with G.711 and telephone-event (RFC 3264, RFC 4733), and one RTP
//! socket per call. Every wait is bounded by a timeout, errors are typed, and nothing it
//! receives can make it panic: malformed datagrams are answered 4xx (when they can be) or
//! dropped.
//!
//! It must never log or print what it sends or receives in RTP (the caller's keys are in there).

mod call;
mod incoming;
mod media;
mod shell;

pub use call::{Call, DialogIds, Ending};
pub use incoming::Incoming;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::Transport;
use crate::dsp::g711::Codec;
use crate::sip::dialog::{Dialog, Local};
use crate::sip::error::EditError;
use crate::sip::headers::Contacts;
use crate::sip::message::{Framing, Limits, Message, Method, RequestBuilder};
use crate::sip::sdp::SdpError;
use crate::sip::transaction::{ClientTx, ResponseFate, TxKind};
use call::{Replay, Setup};
use media::{answer_media, sdp_body};
use shell::{Clock, TIMERS};

/// What our INVITEs and 200s say we take.
const ALLOW: &str = "INVITE, ACK, BYE, CANCEL, OPTIONS";
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
            timeout: Duration::from_millis(64 * TIMERS.t1),
            user_agent: concat!("tonewall-ua/", env!("CARGO_PKG_VERSION")).into(),
        }
    }
}

/// A received message and where it came from.
struct Inbound {
    msg: Message,
    from: SocketAddr,
}

/// What the UA's tasks share: the signalling socket, the Call-ID → call routing table and the
/// transactions' clock.
struct Shared {
    sock: UdpSocket,
    local: SocketAddr,
    cfg: UaConfig,
    calls: Mutex<HashMap<String, mpsc::Sender<Inbound>>>,
    clock: Clock,
    /// Our Contact value and the host of our Via, fixed once the socket is bound.
    contact: String,
    via_host: String,
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

    /// Answers, outside any transaction, a request that belongs to none of ours (a stray
    /// in-dialog request, an INVITE beyond the queue): there is nothing to retransmit for.
    async fn respond(&self, req: &Message, to: SocketAddr, status: u16, reason: &str) {
        if let Some(resp) = shell::response(self, req, status, reason) {
            // A lost answer is retransmission's business.
            let _ = self.send(&resp, to).await;
        }
    }

    /// What the dialog layer puts in the requests we originate.
    fn local(&self) -> Local<'_> {
        Local {
            via_host: &self.via_host,
            contact: &self.contact,
            user_agent: &self.cfg.user_agent,
        }
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
            contact: format!("<sip:{}@{local}>", cfg.user),
            via_host: local.to_string(),
            cfg,
            calls: Mutex::new(HashMap::new()),
            clock: Clock::start(),
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
            Ok(Some(p)) => Ok(Incoming::new(
                self.shared.clone(),
                self.task.clone(),
                p.invite,
                p.from,
                p.rx,
            )),
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
        let mut completed = None;
        // From here on the table entry must go on every early return.
        let result = self
            .invite(
                target_uri,
                server,
                headers,
                &call_id,
                &mut rx,
                &mut completed,
            )
            .await;
        match result {
            Ok(setup) => Ok(Call::start(sh.clone(), self.task.clone(), setup, rx)),
            Err(e) => {
                match completed {
                    // The rejected INVITE's transaction still ACKs retransmitted answers.
                    Some(tx) => shell::linger_client(sh.clone(), rx, tx, server, call_id),
                    None => sh.forget(&call_id),
                }
                Err(e)
            }
        }
    }

    /// The INVITE client transaction (§17.1.1) up to a final response. A transaction that
    /// ended in a non-2xx is left in `completed`, for its Timer D.
    async fn invite(
        &self,
        target_uri: &str,
        server: SocketAddr,
        headers: &[(&str, &str)],
        call_id: &str,
        rx: &mut mpsc::Receiver<Inbound>,
        completed: &mut Option<ClientTx>,
    ) -> Result<Setup, UaError> {
        let sh = &self.shared;
        let cfg = &sh.cfg;
        let (rtp, mut dialog, branch, invite) =
            self.offer(target_uri, server, headers, call_id).await?;

        let deadline = Instant::now() + cfg.timeout;
        let (mut tx, first) = ClientTx::start(
            TxKind::Invite,
            invite.as_bytes().clone(),
            false,
            TIMERS,
            sh.clock.now(),
        );
        sh.perform(first, server).await?;
        let mut seen = Vec::new();
        loop {
            let wake = sh.clock.wake(tx.next_deadline(), deadline);
            let got = tokio::select! {
                m = rx.recv() => m,
                () = tokio::time::sleep_until(wake) => {
                    // Timer A resends; Timer B (or our own limit) gives up.
                    let fired = sh.perform(tx.poll(sh.clock.now()), server).await?;
                    if fired.timed_out || Instant::now() >= deadline {
                        return Err(UaError::Timeout("an answer to INVITE"));
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
            // §17.1.3: a response matches by the branch and method of our INVITE.
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
            let ack = (status >= 300)
                .then(|| non_2xx_ack(&dialog, &sh.via_host, &branch, &msg))
                .flatten();
            let (fate, actions) = tx.on_response(status, ack, sh.clock.now());
            sh.perform(actions, server).await?;
            if fate == ResponseFate::Absorb {
                continue;
            }
            let reason: String =
                String::from_utf8_lossy(msg.reason_phrase().unwrap_or_default()).into();
            seen.push((status, reason.clone()));
            if status < 200 {
                continue;
            }
            if status >= 300 {
                *completed = Some(tx);
                return Err(UaError::Rejected { status, reason });
            }
            confirm(&mut dialog, &msg, peer)?;
            let media = answer_media(msg.body())?;
            // §13.2.2.4: the ACK of a 2xx is a new transaction with the INVITE's CSeq number.
            let ack = dialog.request("ACK", &new_branch(), &sh.local(), Some(1), &[], None)?;
            sh.send(ack.as_bytes(), peer).await?;
            dialog.last_ack = Some((1, ack.as_bytes().clone()));
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

    /// A new dialog's INVITE (and its branch), offering a new RTP socket.
    async fn offer(
        &self,
        target_uri: &str,
        server: SocketAddr,
        headers: &[(&str, &str)],
        call_id: &str,
    ) -> Result<(UdpSocket, Dialog, String, Message), UaError> {
        let sh = &self.shared;
        let cfg = &sh.cfg;
        let rtp = UdpSocket::bind(SocketAddr::new(cfg.ip, 0)).await?;
        let other = match cfg.codec {
            Codec::Pcmu => Codec::Pcma,
            Codec::Pcma => Codec::Pcmu,
        };
        let offer = sdp_body(
            cfg.ip,
            rtp.local_addr()?.port(),
            &[cfg.codec, other],
            Some(cfg.event_pt),
        );
        let mut dialog = self.new_dialog(target_uri, server, call_id);
        let branch = new_branch();
        let extra: Vec<(&str, String)> = std::iter::once(("Allow", ALLOW.to_owned()))
            .chain(headers.iter().map(|&(n, v)| (n, v.to_owned())))
            .collect();
        let body = Some(("application/sdp", offer.as_bytes()));
        let invite = dialog.request("INVITE", &branch, &sh.local(), None, &extra, body)?;
        Ok((rtp, dialog, branch, invite))
    }

    /// The dialog of a call we place, before the peer answers (§12.1.2 fills in the rest).
    fn new_dialog(&self, target_uri: &str, server: SocketAddr, call_id: &str) -> Dialog {
        let tag = random_id();
        Dialog {
            call_id: call_id.to_owned(),
            local: format!("<{}>;tag={tag}", self.uri()),
            remote: format!("<{target_uri}>"),
            local_tag: tag,
            remote_tag: None,
            remote_target: target_uri.to_owned(),
            route_set: Vec::new(),
            local_cseq: 0,
            remote_cseq: None,
            peer: server,
            transport: Transport::Udp,
            last_ack: None,
        }
    }
}

/// §17.1.1.3: the ACK of a non-2xx final response belongs to the INVITE's transaction: the
/// INVITE's branch and Request-URI, the response's To.
fn non_2xx_ack(dialog: &Dialog, via_host: &str, branch: &str, resp: &Message) -> Option<Bytes> {
    RequestBuilder::new("ACK", &dialog.remote_target)
        .header(
            "Via",
            &format!("SIP/2.0/UDP {via_host};branch={branch};rport"),
        )
        .header("Max-Forwards", "70")
        .header("From", &dialog.local)
        .header(
            "To",
            &String::from_utf8_lossy(resp.get("To").unwrap_or(b"")),
        )
        .header("Call-ID", &dialog.call_id)
        .header("CSeq", "1 ACK")
        .build()
        .ok()
        .map(Message::into_bytes)
}

/// §12.1.2: a 2xx to our INVITE fixes the dialog: their tag, their Contact as the target, the
/// Record-Route list reversed as the route set, and where they answer from.
fn confirm(dialog: &mut Dialog, resp: &Message, peer: SocketAddr) -> Result<(), UaError> {
    let to = resp
        .get("To")
        .filter(|_| resp.to_tag().is_some())
        .ok_or(UaError::Malformed("To tag"))?;
    dialog.remote_target = match resp.contacts() {
        Ok(Contacts::List(l)) => l.first().map(|n| n.uri_raw.to_owned()),
        _ => None,
    }
    .ok_or(UaError::Malformed("Contact"))?;
    dialog.remote = String::from_utf8_lossy(to).into_owned();
    dialog.remote_tag = resp.to_tag().map(str::to_owned);
    let mut route_set: Vec<String> = resp
        .get_all("Record-Route")
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect();
    route_set.reverse();
    dialog.route_set = route_set;
    dialog.peer = peer;
    Ok(())
}

/// A new INVITE as the receive task hands it to [`SipUa::accept`].
struct Pending {
    invite: Message,
    from: SocketAddr,
    rx: mpsc::Receiver<Inbound>,
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn branches_carry_the_magic_cookie_and_differ() {
        let (a, b) = (new_branch(), new_branch());
        assert!(a.starts_with("z9hG4bK") && b.starts_with("z9hG4bK"));
        assert_ne!(a, b);
    }
}
