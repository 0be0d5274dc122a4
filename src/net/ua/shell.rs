//! The tokio shell around the sans-IO transactions of `sip::transaction`: a millisecond clock
//! for them, their actions performed on the UA's socket, their deadlines turned into sleeps,
//! and the tasks that keep a finished transaction alive for its wait state (Timers D, H, I).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{Inbound, Shared, UaError};
use crate::sip::message::Method;
use crate::sip::transaction::{ClientTx, ServerTx, TimerConfig, TxAction};

/// RFC 3261 §17.1.1.1 values (T1 500 ms, T2 4 s, T4 5 s), over UDP.
pub(super) const TIMERS: TimerConfig = TimerConfig {
    t1: 500,
    t2: 4000,
    t4: 5000,
};

/// The transactions' time: milliseconds since the UA was bound, on tokio's clock (so a test
/// that pauses time pauses the transactions too).
#[derive(Clone, Copy, Debug)]
pub(super) struct Clock(Instant);

impl Clock {
    pub(super) fn start() -> Clock {
        Clock(Instant::now())
    }

    pub(super) fn now(&self) -> u64 {
        u64::try_from(self.0.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The instant of a transaction deadline.
    pub(super) fn at(&self, ms: u64) -> Instant {
        self.0 + Duration::from_millis(ms)
    }

    /// When to wake for a transaction deadline, never later than `limit`.
    pub(super) fn wake(&self, deadline: Option<u64>, limit: Instant) -> Instant {
        deadline.map_or(limit, |d| self.at(d).min(limit))
    }
}

/// What performing a batch of transaction actions showed.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Performed {
    /// Timer B, F or H fired.
    pub(super) timed_out: bool,
    pub(super) terminated: bool,
}

impl Shared {
    /// Sends what the transaction asks to `to`, the transaction's peer.
    pub(super) async fn perform(
        &self,
        actions: Vec<TxAction>,
        to: SocketAddr,
    ) -> Result<Performed, UaError> {
        let mut seen = Performed::default();
        for a in actions {
            match a {
                TxAction::Send(bytes) => self.send(&bytes, to).await?,
                TxAction::Timeout => seen.timed_out = true,
                TxAction::Terminated => seen.terminated = true,
            }
        }
        Ok(seen)
    }
}

/// Keeps an INVITE client transaction that got a non-2xx final response until Timer D, so
/// each retransmission of that response is ACKed again (§17.1.1.2); then forgets the call.
pub(super) fn linger_client(
    sh: Arc<Shared>,
    mut rx: mpsc::Receiver<Inbound>,
    mut tx: ClientTx,
    server: SocketAddr,
    call_id: String,
) {
    tokio::spawn(async move {
        let far = Instant::now() + Duration::from_secs(3600);
        loop {
            let wake = sh.clock.wake(tx.next_deadline(), far);
            tokio::select! {
                m = rx.recv() => {
                    let Some(Inbound { msg, .. }) = m else { break };
                    let of_invite = msg.cseq().is_some_and(|c| c.method == "INVITE");
                    if let (Some(status), true) = (msg.status(), of_invite) {
                        let (_, actions) = tx.on_response(status, None, sh.clock.now());
                        // A lost ACK is the peer's retransmission's business.
                        let _ = sh.perform(actions, server).await;
                    }
                }
                () = tokio::time::sleep_until(wake) => {
                    let done = sh.perform(tx.poll(sh.clock.now()), server).await;
                    if done.is_ok_and(|d| d.terminated) || tx.next_deadline().is_none() {
                        break;
                    }
                }
            }
        }
        sh.forget(&call_id);
    });
}

/// Keeps an INVITE server transaction that answered non-2xx: resends the answer on Timer G
/// and for each retransmitted INVITE until the ACK comes, and absorbs ACKs until Timer I
/// (§17.2.1); then forgets the call.
pub(super) fn linger_server(
    sh: Arc<Shared>,
    mut rx: mpsc::Receiver<Inbound>,
    mut tx: ServerTx,
    peer: SocketAddr,
    call_id: String,
) {
    tokio::spawn(async move {
        let far = Instant::now() + Duration::from_secs(3600);
        loop {
            let wake = sh.clock.wake(tx.next_deadline(), far);
            let actions = tokio::select! {
                m = rx.recv() => {
                    let Some(Inbound { msg, .. }) = m else { break };
                    match msg.method() {
                        Some(Method::Invite) if msg.to_tag().is_none() => tx.on_retransmission(),
                        Some(Method::Ack) => tx.on_ack(sh.clock.now()),
                        _ => Vec::new(),
                    }
                }
                () = tokio::time::sleep_until(wake) => tx.poll(sh.clock.now()),
            };
            let done = sh.perform(actions, peer).await;
            if done.is_ok_and(|d| d.terminated) || tx.next_deadline().is_none() {
                break;
            }
        }
        sh.forget(&call_id);
    });
}

/// A response to `req` from us, with our To tag when the request has none.
pub(super) fn response(
    sh: &Shared,
    req: &crate::sip::message::Message,
    status: u16,
    reason: &str,
) -> Option<Bytes> {
    crate::sip::message::ResponseBuilder::new(req, status, reason)
        .to_tag(&super::random_id())
        .header("User-Agent", &sh.cfg.user_agent)
        .build()
        .ok()
        .map(|m| m.as_bytes().clone())
}
