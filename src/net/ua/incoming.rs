//! The UAS side of call setup: a new INVITE, its server transaction (RFC 3261 §17.2.1), and
//! the 2xx that the transaction user resends until the ACK (§13.3.1.4).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::call::{Call, Replay, Setup};
use super::media::{offer_media, sdp_body};
use super::shell::{self, TIMERS};
use super::{Inbound, ReceiveTask, Shared, UaError};
use crate::config::Transport;
use crate::sip::dialog::Dialog;
use crate::sip::headers::Contacts;
use crate::sip::message::{Message, Method, ResponseBuilder};
use crate::sip::transaction::{ServerTx, TxAction, TxKind};

/// A new INVITE waiting to be answered.
pub struct Incoming {
    pub(super) shared: Arc<Shared>,
    pub(super) receiver: Arc<ReceiveTask>,
    pub(super) invite: Message,
    pub(super) from: SocketAddr,
    pub(super) rx: mpsc::Receiver<Inbound>,
    pub(super) tag: String,
    pub(super) answered: bool,
    /// Behind a lock only because [`Incoming::ring`] takes `&self`; never held across a wait.
    pub(super) tx: Mutex<ServerTx>,
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
    pub(super) fn new(
        shared: Arc<Shared>,
        receiver: Arc<ReceiveTask>,
        invite: Message,
        from: SocketAddr,
        rx: mpsc::Receiver<Inbound>,
    ) -> Incoming {
        Incoming {
            shared,
            receiver,
            invite,
            from,
            rx,
            tag: super::random_id(),
            answered: false,
            tx: Mutex::new(ServerTx::new(TxKind::Invite, false, TIMERS)),
        }
    }

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

    /// Passes a response to the server transaction and sends what it says to.
    async fn respond(&self, status: u16, resp: &Message) -> Result<(), UaError> {
        let actions: Vec<TxAction> = {
            let mut tx = self.tx.lock().unwrap_or_else(PoisonError::into_inner);
            tx.respond(status, resp.as_bytes().clone(), self.shared.clock.now())
        };
        self.shared.perform(actions, self.from).await?;
        Ok(())
    }

    /// Sends 180 Ringing.
    pub async fn ring(&self) -> Result<(), UaError> {
        let resp = ResponseBuilder::new(&self.invite, 180, "Ringing")
            .to_tag(&self.tag)
            .build()?;
        self.respond(180, &resp).await
    }

    /// Refuses the call with a final status (RFC 3261 §13.3.1.3). The transaction stays until
    /// the ACK (and Timer I) in the background, resending the answer if the INVITE comes again.
    pub async fn reject(mut self, status: u16, reason: &str) -> Result<(), UaError> {
        let resp = ResponseBuilder::new(&self.invite, status, reason)
            .to_tag(&self.tag)
            .build()?;
        self.respond(status, &resp).await?;
        let tx = std::mem::replace(
            self.tx.get_mut().unwrap_or_else(PoisonError::into_inner),
            ServerTx::new(TxKind::Invite, false, TIMERS),
        );
        if let Some(id) = self.invite.call_id().map(str::to_owned) {
            self.answered = true;
            let rx = std::mem::replace(&mut self.rx, mpsc::channel(1).1);
            shell::linger_server(self.shared.clone(), rx, tx, self.from, id);
        }
        Ok(())
    }

    /// Answers 200 with an SDP answer, resends it until the ACK arrives (§13.3.1.4) and
    /// returns the established call.
    pub async fn answer(self) -> Result<Call, UaError> {
        self.answer_with(&[]).await
    }

    /// [`Incoming::answer`] with `headers` in the 200 (a contact centre naming the agent who
    /// took the call, say).
    pub async fn answer_with(mut self, headers: &[(&str, &str)]) -> Result<Call, UaError> {
        let sh = self.shared.clone();
        let cfg = &sh.cfg;
        let (remote_rtp, codec, event_pt) = offer_media(self.invite.body(), cfg.codec)?;
        let rtp = UdpSocket::bind(SocketAddr::new(cfg.ip, 0)).await?;
        let body = sdp_body(cfg.ip, rtp.local_addr()?.port(), &[codec], event_pt);
        let mut ok = ResponseBuilder::new(&self.invite, 200, "OK")
            .to_tag(&self.tag)
            .record_route()
            .header("Contact", &sh.contact)
            .header("User-Agent", &cfg.user_agent)
            .header("Allow", super::ALLOW);
        for (name, value) in headers {
            ok = ok.header(name, value);
        }
        let ok = ok.body("application/sdp", body.into_bytes()).build()?;
        // The transaction ends with the 2xx; from here the retransmissions are ours.
        self.respond(200, &ok).await?;
        self.await_ack(&ok).await?;

        let dialog = self.dialog();
        self.answered = true;
        let rx = std::mem::replace(&mut self.rx, mpsc::channel(1).1);
        let setup = Setup {
            dialog,
            rtp,
            remote_rtp,
            codec,
            event_pt,
            responses: vec![(200, "OK".into())],
            invite: self.invite.clone(),
            replay: Replay::Ok(ok.as_bytes().clone()),
        };
        Ok(Call::start(sh, self.receiver.clone(), setup, rx))
    }

    /// §13.3.1.4: resends the 2xx at T1, doubling up to T2, until the ACK (Timer H: 64·T1,
    /// or the configured timeout).
    async fn await_ack(&mut self, ok: &Message) -> Result<(), UaError> {
        let sh = self.shared.clone();
        let ok_bytes = ok.as_bytes();
        let deadline = Instant::now() + sh.cfg.timeout;
        let mut interval = TIMERS.t1;
        let mut next = sh.clock.now() + interval;
        loop {
            let wake = sh.clock.wake(Some(next), deadline);
            let got = tokio::select! {
                m = self.rx.recv() => m,
                () = tokio::time::sleep_until(wake) => {
                    if Instant::now() >= deadline {
                        return Err(UaError::Timeout("the ACK of our 200"));
                    }
                    sh.send(ok_bytes, self.from).await?;
                    interval = (interval * 2).min(TIMERS.t2);
                    next = sh.clock.now() + interval;
                    continue;
                }
            };
            let Some(Inbound { msg, from }) = got else {
                return Err(UaError::Closed);
            };
            match msg.method() {
                Some(Method::Ack) => return Ok(()),
                // The INVITE again: our 200 was lost or is late.
                Some(Method::Invite) if msg.to_tag().is_none() => sh.send(ok_bytes, from).await?,
                // Too late to cancel (§9.2): the CANCEL itself still gets its 200.
                Some(Method::Cancel) => sh.respond(&msg, from, 200, "OK").await,
                _ => {}
            }
        }
    }

    /// The dialog as the UAS creates it (§12.1.1).
    fn dialog(&self) -> Dialog {
        let inv = &self.invite;
        let remote_target = match inv.contacts() {
            Ok(Contacts::List(l)) => l.first().map(|n| n.uri_raw.to_owned()),
            _ => None,
        }
        .unwrap_or_else(|| format!("sip:{}", self.from));
        let to = String::from_utf8_lossy(inv.get("To").unwrap_or(b""));
        let local = if inv.to_tag().is_some() {
            to.into_owned()
        } else {
            format!("{to};tag={}", self.tag)
        };
        Dialog {
            call_id: inv.call_id().unwrap_or_default().to_owned(),
            local,
            remote: String::from_utf8_lossy(inv.get("From").unwrap_or(b"")).into_owned(),
            local_tag: inv.to_tag().unwrap_or(&self.tag).to_owned(),
            remote_tag: inv.from_tag().map(str::to_owned),
            remote_target,
            // §12.1.1: the UAS's route set is the Record-Route list in order.
            route_set: inv
                .get_all("Record-Route")
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .collect(),
            local_cseq: 0,
            remote_cseq: inv.cseq().map(|c| c.seq),
            peer: self.from,
            transport: Transport::Udp,
            last_ack: None,
        }
    }
}
