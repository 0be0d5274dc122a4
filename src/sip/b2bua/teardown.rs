//! Ending calls: BYE and CANCEL from either side, hang-ups we decide, failed INVITEs, and the
//! timers (transaction timers, our 2xx until its ACK, ended calls forgotten after 64·T1).

#![warn(clippy::unwrap_used, clippy::indexing_slicing)]

use super::B2bua;
use super::context::{Cx, Reply};
use super::state::{ClientEntry, Incoming, Phase, Purpose, SKey};
use super::transactions::lossy;
use super::types::{CallEvent, CallId, EndCause, Leg, Output};
use crate::sip::dialog::Local;
use crate::sip::transaction::{ClientState, ClientTx, ServerState, TxAction, TxKind};
use crate::sip::{Side, Transport};

/// Why a request of ours got no answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ClientFailure {
    /// Timer B or F fired.
    Timeout,
    /// The shell could not reach the peer over this transport.
    Unreachable(Transport),
}

impl ClientFailure {
    fn cause(self, side: Side) -> EndCause {
        match self {
            ClientFailure::Timeout => EndCause::Timeout(side),
            ClientFailure::Unreachable(_) => EndCause::Unreachable(side),
        }
    }
}

impl B2bua {
    pub(super) fn end_call(&mut self, call: CallId, cause: EndCause, cx: &mut Cx<'_>) {
        let Some(c) = self.calls.get_mut(&call) else {
            return;
        };
        if c.ended() {
            return;
        }
        c.phase = Phase::Ended { at: cx.now };
        c.retrans = None;
        c.ack_wait = None;
        cx.ports.release(c.ports_a);
        cx.ports.release(c.ports_b);
        self.active = self.active.saturating_sub(1);
        cx.out.push(Output::MediaStopped { call });
        cx.out.push(Output::Event {
            call,
            event: CallEvent::Ended(cause),
        });
    }

    /// Ends a call from our side: BYE both confirmed legs, or stop a set-up in progress.
    pub(super) fn hangup(
        &mut self,
        call: CallId,
        cause: EndCause,
        reason: Option<&str>,
        cx: &mut Cx<'_>,
    ) {
        let Some(c) = self.calls.get(&call) else {
            return;
        };
        let extra: Vec<(&str, String)> = reason
            .map(|r| vec![("Reason", r.to_owned())])
            .unwrap_or_default();
        let a_answered = c.a_answered();
        match c.phase {
            Phase::Confirmed => {
                for leg in [Leg::A, Leg::B] {
                    self.bye(call, leg, &extra, cx);
                }
            }
            Phase::Calling | Phase::Locating | Phase::Announcing { .. } if a_answered => {
                // Loop call answered by us: the A dialog is up, the return leg is not.
                self.bye(call, Leg::A, &extra, cx);
                self.cancel_b(call, cx);
            }
            Phase::Locating | Phase::Announcing { .. } => {
                // Loop call still locating: the A-leg INVITE is open; no B-leg exists yet.
                let server = c.lp.as_ref().map(|l| l.server.clone());
                let tag = c.a.local_tag.clone();
                if let Some(key) = server {
                    let answer = Reply::new(480, "Temporarily Unavailable")
                        .tag(&tag)
                        .extra(&extra);
                    self.fail_invite(call, &key, answer, None, cx);
                }
            }
            Phase::Calling => {
                // The trunk's INVITE is still open: refuse it, and CANCEL the B-leg (§9.1).
                let server = self.initial_server(call);
                if let Some(key) = server {
                    let tag = c.a.local_tag.clone();
                    self.reply(
                        &key,
                        Reply::new(480, "Temporarily Unavailable")
                            .tag(&tag)
                            .extra(&extra),
                        cx,
                    );
                }
                self.cancel_b(call, cx);
            }
            Phase::Cancelling | Phase::Ended { .. } => {}
        }
        self.end_call(call, cause, cx);
    }

    /// CANCELs the outstanding B-leg INVITE (§9.1): at once if it has had a provisional
    /// response, otherwise as soon as one arrives.
    pub(super) fn cancel_b(&mut self, call: CallId, cx: &mut Cx<'_>) {
        let ua = self.cfg.user_agent.clone();
        let Some(host) = self.calls.get(&call).map(|c| self.via_host(c.b.transport)) else {
            return;
        };
        let Some(c) = self.calls.get_mut(&call) else {
            return;
        };
        if !c.ended() {
            c.phase = Phase::Cancelling;
        }
        let Some(branch) = c.b_invite.clone() else {
            return;
        };
        let Some(e) = self.clients.get(&branch) else {
            return;
        };
        if e.tx.state() != ClientState::Proceeding {
            c.cancel_pending = true;
            return;
        }
        c.cancel_pending = false;
        let inv = &e.request;
        let seq = inv.cseq().map_or(1, |s| s.seq);
        let local = Local {
            via_host: &host,
            contact: "",
            user_agent: &ua,
        };
        let Ok(cancel) = c.b.request("CANCEL", &branch, &local, Some(seq), &[], None) else {
            return;
        };
        // The CANCEL's To has no tag and its Request-URI is the INVITE's (§9.1).
        let mut cancel = cancel;
        if let (Some(uri), Some(to)) = (inv.request_uri_str(), inv.get("To")) {
            let to = lossy(to);
            let _ = cancel.set_request_uri(uri);
            let _ = cancel.set_header("To", &to);
        }
        let (transport, peer) = (c.b.transport, c.b.peer);
        let (tx, actions) = ClientTx::start(
            TxKind::NonInvite,
            cancel.as_bytes().clone(),
            transport.reliable(),
            self.cfg.timers,
            cx.now,
        );
        for a in actions {
            if let TxAction::Send(b) = a {
                cx.send(transport, peer, b);
            }
        }
        // CANCEL shares the INVITE's branch; key it apart so responses find it.
        self.clients.insert(
            format!("{branch}/CANCEL"),
            ClientEntry {
                tx,
                call,
                leg: Leg::B,
                transport,
                peer,
                purpose: Purpose::Own,
                request: cancel,
            },
        );
    }

    /// A CANCEL from the trunk: answered, and the INVITE it matches ended (§9.2).
    pub(super) fn on_cancel(&mut self, inc: Incoming, cx: &mut Cx<'_>) {
        let Incoming {
            transport,
            from,
            msg,
            key,
            ..
        } = inc;
        // §9.2: the CANCEL matches the INVITE transaction with the same branch.
        let inv_key: SKey = (from, key.1.clone(), "INVITE".to_owned());
        let Some(inv) = self.servers.get(&inv_key) else {
            let r = "Call/Transaction Does Not Exist";
            self.reply_stateless(&msg, transport, from, 481, r, cx);
            return;
        };
        let call = inv.call;
        let open = inv.tx.state() == ServerState::Proceeding;
        self.new_server(key.clone(), call, TxKind::NonInvite, transport, from, msg);
        let tag = call
            .and_then(|c| self.calls.get(&c))
            .map(|c| c.a.local_tag.clone());
        self.reply(&key, Reply::new(200, "OK").maybe_tag(tag.as_deref()), cx);
        let Some(call) = call else { return };
        if !open {
            return; // already answered: the CANCEL has no effect (§9.2)
        }
        self.reply(
            &inv_key,
            Reply::new(487, "Request Terminated").maybe_tag(tag.as_deref()),
            cx,
        );
        let was_calling = self
            .calls
            .get(&call)
            .is_some_and(|c| c.phase == Phase::Calling);
        if was_calling {
            self.cancel_b(call, cx);
        }
        self.end_call(call, EndCause::Cancelled, cx);
    }

    pub(super) fn on_tick(&mut self, cx: &mut Cx<'_>) {
        self.poll_servers(cx);
        self.poll_clients(cx);
        let ids: Vec<CallId> = self.calls.keys().copied().collect();
        for id in ids {
            self.tick_call(id, cx);
        }
        let live: std::collections::HashSet<CallId> = self.calls.keys().copied().collect();
        self.servers.retain(|_, e| {
            e.call.is_none_or(|c| live.contains(&c)) || e.tx.next_deadline().is_some()
        });
        self.servers
            .retain(|_, e| !(e.tx.state() == ServerState::Terminated && e.call.is_none()));
    }

    /// One call's timers: it is forgotten 64·T1 after it ended; until then the loop timers
    /// run and our 2xx is resent until its ACK.
    fn tick_call(&mut self, id: CallId, cx: &mut Cx<'_>) {
        let Some(c) = self.calls.get(&id) else {
            return;
        };
        if let Phase::Ended { at } = c.phase {
            if cx.now >= at + 64 * self.cfg.timers.t1 {
                self.forget_call(id);
            }
            return;
        }
        self.loop_tick(id, cx);
        self.tick_retrans(id, cx);
        self.session_tick(id, cx);
    }

    /// Drops an ended call, its dialogs, and its server transactions without timers
    /// (terminated 2xx INVITE server transactions have none).
    fn forget_call(&mut self, id: CallId) {
        let Some(c) = self.calls.remove(&id) else {
            return;
        };
        self.dialogs.remove(&c.a.call_id);
        self.dialogs.remove(&c.b.call_id);
        self.servers
            .retain(|_, e| e.call != Some(id) || e.tx.next_deadline().is_some());
    }

    /// Resends our 2xx (T1 doubling up to T2), or ends the call when no ACK came (§13.3.1.4).
    fn tick_retrans(&mut self, id: CallId, cx: &mut Cx<'_>) {
        let Some(c) = self.calls.get_mut(&id) else {
            return;
        };
        let Some(r) = &mut c.retrans else { return };
        if cx.now >= r.deadline {
            // §13.3.1.4: no ACK within 64·T1: the dialog is over; BYE both legs (the
            // other leg's 2xx is ACKed first, which we held for the end-to-end ACK).
            let silent = Side::from(r.leg);
            c.retrans = None;
            let wait = c.ack_wait.take();
            if !wait.is_some_and(|w| w.own) {
                c.phase = Phase::Confirmed;
            }
            if let Some(w) = wait.filter(|w| !w.own) {
                self.send_ack(id, w.from.other(), w.to_cseq, None, cx);
            }
            self.hangup(id, EndCause::Timeout(silent), None, cx);
            return;
        }
        if cx.now >= r.next {
            let d = match r.leg {
                Leg::A => &c.a,
                Leg::B => &c.b,
            };
            cx.send(d.transport, d.peer, r.bytes.clone());
            r.interval = (r.interval * 2).min(self.cfg.timers.t2);
            r.next = cx.now + r.interval;
        }
    }

    /// Every client transaction towards `peer` over `transport` ends now as if the peer had
    /// answered 503 (§8.1.3.1, §17.1.4): the shell could not reach it.
    pub(super) fn transport_failed(
        &mut self,
        transport: Transport,
        peer: std::net::SocketAddr,
        cx: &mut Cx<'_>,
    ) {
        let failed: Vec<String> = self
            .clients
            .iter()
            .filter(|(_, e)| e.transport == transport && e.peer == peer)
            .map(|(k, _)| k.clone())
            .collect();
        for k in failed {
            if let Some(e) = self.clients.remove(&k) {
                let failure = ClientFailure::Unreachable(transport);
                self.client_failed(e.call, e.purpose, failure, cx);
            }
        }
    }

    /// A request of ours that got no answer: Timer B/F fired (a 408 from the far side), or the
    /// far side could not be reached (a 503), handed on to the side the request came from.
    pub(super) fn client_failed(
        &mut self,
        call: CallId,
        purpose: Purpose,
        failure: ClientFailure,
        cx: &mut Cx<'_>,
    ) {
        let (status, reason) = match failure {
            ClientFailure::Timeout => (408, "Request Timeout"),
            ClientFailure::Unreachable(_) => (503, "Service Unavailable"),
        };
        let (server, from, initial) = match purpose {
            Purpose::Own => return,
            Purpose::Refresh => {
                // RFC 4028 §10: a refresh that times out ends the session.
                self.session_gone(call, cx);
                return;
            }
            Purpose::Return => {
                let cause = failure.cause(Side::ContactCentre);
                self.return_failed(call, status, cause, cx);
                return;
            }
            Purpose::Invite(r) => (r.server, r.from, r.initial),
            Purpose::Relay { server, from } => (server, from, false),
        };
        let tag = self.calls.get(&call).map(|c| c.local_tag(from).to_owned());
        if initial && from == Leg::A && self.try_fallback(call, cx) {
            return;
        }
        let end = initial.then_some(failure.cause(Side::from(from.other())));
        // RFC 3261 §20.43: 399 is a warning of our own; it tells the caller's side why
        // without the peer's address or the TLS error, which stay in our log.
        let warning = match failure {
            ClientFailure::Timeout => None,
            ClientFailure::Unreachable(t) => Some(format!(
                "399 {} \"{} unreachable over {}\"",
                self.cfg.sip_host,
                match from.other() {
                    Leg::A => "trunk",
                    Leg::B => "contact centre",
                },
                t.via_name()
            )),
        };
        let extra: Vec<(&str, String)> = warning.map(|w| ("Warning", w)).into_iter().collect();
        let answer = Reply::new(status, reason)
            .maybe_tag(tag.as_deref())
            .extra(&extra);
        self.fail_invite(call, &server, answer, end, cx);
    }

    /// Answers the INVITE transaction `server` with a failure, frees the call for the next
    /// INVITE, and ends the call when it was the initial INVITE (`end`).
    pub(super) fn fail_invite(
        &mut self,
        call: CallId,
        server: &SKey,
        answer: Reply<'_>,
        end: Option<EndCause>,
        cx: &mut Cx<'_>,
    ) {
        self.reply(server, answer, cx);
        if let Some(c) = self.calls.get_mut(&call) {
            c.invite_busy = false;
        }
        if let Some(cause) = end {
            self.end_call(call, cause, cx);
        }
    }
}
