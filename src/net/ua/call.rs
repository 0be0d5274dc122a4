//! An established call: its dialog (`sip::dialog`), its signalling after setup with a server
//! transaction per request the peer sends in it, and its RTP.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use super::shell::{TIMERS, response};
use super::{
    CALL_QUEUE, Inbound, MAX_KEPT_PACKETS, PTIME, ReceiveTask, Shared, UaError, new_branch,
};
use crate::digit::Digit;
use crate::dsp::g711::Codec;
use crate::rtp::packet::RtpView;
use crate::rtp::trunk::{KeySpan, Received, TrunkConfig, depacketize, packetize};
use crate::sip::dialog::Dialog;
use crate::sip::message::{Message, Method};
use crate::sip::transaction::{ClientTx, ResponseFate, ServerTx, TxKind};

/// What the signalling task resends when the peer retransmits: our ACK when a 2xx to our
/// INVITE comes again (§13.2.2.4), our 2xx when their INVITE comes again (§13.3.1.4).
pub(super) enum Replay {
    Ack(Bytes),
    Ok(Bytes),
}

/// A call as set up by [`super::SipUa::call`] or [`super::Incoming::answer`].
pub(super) struct Setup {
    pub(super) dialog: Dialog,
    pub(super) rtp: UdpSocket,
    pub(super) remote_rtp: SocketAddr,
    pub(super) codec: Codec,
    pub(super) event_pt: Option<u8>,
    pub(super) responses: Vec<(u16, String)>,
    pub(super) invite: Message,
    pub(super) replay: Replay,
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
    pub(super) fn start(
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
            cseq: self.dialog.local_cseq,
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

    /// Ends the call with BYE (§15.1.1) in a non-INVITE client transaction (Timers E and F).
    /// Returns the peer's final status; a call the peer already ended is not BYEd again.
    pub async fn hangup(&mut self) -> Result<Ending, UaError> {
        if let Some(e) = self.ending() {
            return Ok(e);
        }
        let sh = self.shared.clone();
        let branch = new_branch();
        let bye = self
            .dialog
            .request("BYE", &branch, &sh.local(), None, &[], None)?;
        let seq = self.dialog.local_cseq;
        let peer = self.dialog.peer;
        let deadline = Instant::now() + sh.cfg.timeout;
        let (mut tx, first) = ClientTx::start(
            TxKind::NonInvite,
            bye.as_bytes().clone(),
            false,
            TIMERS,
            sh.clock.now(),
        );
        sh.perform(first, peer).await?;
        let status = loop {
            let wake = sh.clock.wake(tx.next_deadline(), deadline);
            let got = tokio::select! {
                m = self.bye_rx.recv() => m,
                () = tokio::time::sleep_until(wake) => {
                    let fired = sh.perform(tx.poll(sh.clock.now()), peer).await?;
                    if fired.timed_out || Instant::now() >= deadline {
                        return Err(UaError::Timeout("an answer to BYE"));
                    }
                    continue;
                }
            };
            let Some(resp) = got else {
                return Err(UaError::Closed);
            };
            let ours = resp
                .cseq()
                .is_some_and(|c| c.seq == seq && c.method == "BYE");
            let Some(s) = resp.status().filter(|_| ours) else {
                continue;
            };
            let (fate, actions) = tx.on_response(s, None, sh.clock.now());
            sh.perform(actions, peer).await?;
            if fate == ResponseFate::PassUp && s >= 200 {
                break s;
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
/// each in its own server transaction (a retransmitted request gets the same answer again),
/// replays our ACK or 200 when the peer retransmits, passes responses to [`Call::hangup`].
async fn signalling(
    sh: Arc<Shared>,
    mut rx: mpsc::Receiver<Inbound>,
    responses: mpsc::Sender<Message>,
    ended: Arc<watch::Sender<Option<Ending>>>,
    replay: Replay,
) {
    // Keyed by branch and whether the request is an INVITE (§17.2.3; a CANCEL shares the
    // INVITE's branch), with where the answers go.
    let mut servers: HashMap<(String, bool), (ServerTx, SocketAddr)> = HashMap::new();
    let far = Instant::now() + Duration::from_secs(3600);
    loop {
        let next = servers
            .values()
            .filter_map(|(t, _)| t.next_deadline())
            .min();
        let got = tokio::select! {
            m = rx.recv() => m,
            () = tokio::time::sleep_until(sh.clock.wake(next, far)) => {
                let now = sh.clock.now();
                for (tx, to) in servers.values_mut() {
                    let _ = sh.perform(tx.poll(now), *to).await;
                }
                servers.retain(|_, (t, _)| t.next_deadline().is_some());
                continue;
            }
        };
        let Some(Inbound { msg, from }) = got else {
            break;
        };
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
        let method = msg.method();
        let branch = msg
            .top_via()
            .and_then(|v| v.branch().map(str::to_owned))
            .unwrap_or_default();
        let is_invite = matches!(method, Some(Method::Invite | Method::Ack));
        let known = servers.get_mut(&(branch.clone(), is_invite));
        let actions = match (method, known) {
            // The ACK of a non-2xx answer to a re-INVITE ends that transaction (§17.2.3);
            // other ACKs belong to our 2xx and need nothing.
            (Some(Method::Ack), Some((tx, _))) => tx.on_ack(sh.clock.now()),
            (Some(Method::Ack), None) => continue,
            (Some(Method::Invite), _) if msg.to_tag().is_none() => {
                if let Replay::Ok(ok) = &replay {
                    let _ = sh.send(ok, from).await;
                }
                continue;
            }
            (_, Some((tx, _))) => tx.on_retransmission(),
            (_, None) => {
                let (status, reason) = match method {
                    Some(Method::Bye) => (200, "OK"),
                    // A re-INVITE would change the media this UA was set up with.
                    Some(Method::Invite) => (488, "Not Acceptable Here"),
                    Some(Method::Cancel | Method::Options | Method::Info | Method::Update) => {
                        (200, "OK")
                    }
                    _ => (501, "Not Implemented"),
                };
                let kind = if is_invite {
                    TxKind::Invite
                } else {
                    TxKind::NonInvite
                };
                let mut tx = ServerTx::new(kind, false, TIMERS);
                let actions = response(&sh, &msg, status, reason)
                    .map(|bytes| tx.respond(status, bytes, sh.clock.now()))
                    .unwrap_or_default();
                if method == Some(Method::Bye) {
                    ended.send_if_modified(|e| {
                        let first = e.is_none();
                        if first {
                            *e = Some(Ending::ByPeer);
                        }
                        first
                    });
                }
                servers.insert((branch, is_invite), (tx, from));
                actions
            }
        };
        let _ = sh.perform(actions, from).await;
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
