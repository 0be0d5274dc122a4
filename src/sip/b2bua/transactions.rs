//! Sending through transactions: responses to requests we serve, requests we originate in a
//! dialog, ACKs, and the responses to our requests, dispatched to what they were for.

#![warn(clippy::unwrap_used, clippy::indexing_slicing)]

use std::net::SocketAddr;

use bytes::Bytes;

use super::B2bua;
use super::context::{Cx, Outgoing, Reply};
use super::state::{AckWait, ClientEntry, Purpose, Retrans, SKey, ServerEntry};
use super::teardown::ClientFailure;
use super::types::{CallId, Leg, Output, Refusal};
use crate::sip::Transport;
use crate::sip::dialog::{Local, is_sips};
use crate::sip::message::{Message, Method, RequestBuilder, ResponseBuilder};
use crate::sip::transaction::{ClientTx, ResponseFate, ServerTx, TxAction, TxKind};

/// Methods we implement; anything else gets 501 (RFC 3261 §8.2.1) and the call goes on.
pub(super) const ALLOW: &str = "INVITE, ACK, BYE, CANCEL, OPTIONS, INFO, UPDATE";

pub(super) fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// What a failure from the contact centre becomes towards the trunk (same class; challenges
/// for the contact centre's realm mean nothing to the trunk).
pub(super) fn map_failure(status: u16) -> u16 {
    match status {
        401 | 407 => 403,
        s => s,
    }
}

impl B2bua {
    /// Sends a response through the server transaction `key` (if it still exists).
    pub(super) fn respond(&mut self, key: &SKey, resp: Message, cx: &mut Cx<'_>) {
        let Some(status) = resp.status() else { return };
        let Some(e) = self.servers.get_mut(key) else {
            return;
        };
        for a in e.tx.respond(status, resp.into_bytes(), cx.now) {
            if let TxAction::Send(b) = a {
                cx.out.push(Output::Send {
                    transport: e.transport,
                    to: e.peer,
                    bytes: b,
                });
            }
        }
        // A terminated INVITE server transaction (2xx) is kept until its linger would end, so
        // retransmitted INVITEs are still recognised; poll() removes nothing that is needed.
    }

    /// Builds and sends a simple response to the request of server transaction `key`.
    pub(super) fn reply(&mut self, key: &SKey, r: Reply<'_>, cx: &mut Cx<'_>) {
        let Reply {
            status,
            reason,
            to_tag,
            extra,
            body,
        } = r;
        let tag = match to_tag {
            Some(t) => t.to_owned(),
            None => self.new_id("o"),
        };
        let Some(e) = self.servers.get(key) else {
            return;
        };
        let mut b = ResponseBuilder::new(&e.request, status, reason);
        if status > 100 {
            b = b.to_tag(&tag);
        }
        // An early dialog's route set comes from Record-Route in the provisional response
        // (RFC 3261 §12.1.1), as a confirmed one's from the 2xx (`build_2xx`).
        if status > 100 && status < 200 && e.request.method() == Some(Method::Invite) {
            b = b.record_route();
        }
        for (n, v) in extra {
            b = b.header(n, v);
        }
        b = b.header("Server", &self.cfg.user_agent);
        if let Some((ct, body)) = body {
            b = b.body(ct, body);
        }
        if let Ok(resp) = b.build() {
            self.respond(key, resp, cx);
        }
    }

    /// Answers a request outside any transaction we keep (stateless; used for what we refuse
    /// before a transaction exists, e.g. 481 to a stray CANCEL).
    pub(super) fn reply_stateless(
        &mut self,
        req: &Message,
        transport: Transport,
        to: SocketAddr,
        status: u16,
        reason: &str,
        cx: &mut Cx<'_>,
    ) {
        let tag = self.new_id("s");
        if let Ok(r) = ResponseBuilder::new(req, status, reason)
            .to_tag(&tag)
            .build()
        {
            cx.send(transport, to, r.into_bytes());
        }
    }

    /// Refuses a request because of who sent it: counted, and answered 403 unless it is an
    /// ACK (which gets no answer, §17.2.3).
    pub(super) fn refuse_request(
        &mut self,
        msg: &Message,
        method: &str,
        transport: Transport,
        from: SocketAddr,
        refusal: Refusal,
        cx: &mut Cx<'_>,
    ) {
        cx.out.push(Output::Refused { from, refusal });
        if method != "ACK" {
            self.reply_stateless(msg, transport, from, 403, "Forbidden", cx);
        }
    }

    /// Sends a request we originate in `leg`'s dialog, as a client transaction.
    pub(super) fn send_request(
        &mut self,
        call: CallId,
        leg: Leg,
        req: Outgoing<'_>,
        cx: &mut Cx<'_>,
    ) -> Option<(u32, String)> {
        let branch = self.new_id("z9hG4bK");
        let (transport, secure) = {
            let d = self.calls.get_mut(&call)?.dialog(leg);
            (d.transport, d.secure())
        };
        let contact = self.contact(transport, secure);
        let host = self.via_host(transport);
        let ua = self.cfg.user_agent.clone();
        let timers = self.cfg.timers;
        let c = self.calls.get_mut(&call)?;
        let d = c.dialog(leg);
        let local = Local {
            via_host: &host,
            contact: &contact,
            user_agent: &ua,
        };
        let Outgoing {
            method,
            purpose,
            extra,
            body,
        } = req;
        let req = d.request(method, &branch, &local, None, extra, body).ok()?;
        let seq = d.local_cseq;
        let (transport, peer) = (d.transport, d.peer);
        let kind = if method == "INVITE" {
            TxKind::Invite
        } else {
            TxKind::NonInvite
        };
        let (tx, actions) = ClientTx::start(
            kind,
            req.as_bytes().clone(),
            transport.reliable(),
            timers,
            cx.now,
        );
        for a in actions {
            if let TxAction::Send(b) = a {
                cx.send(transport, peer, b);
            }
        }
        self.clients.insert(
            branch.clone(),
            ClientEntry {
                tx,
                call,
                leg,
                transport,
                peer,
                purpose,
                request: req,
            },
        );
        Some((seq, branch))
    }

    /// Sends BYE in `leg`'s dialog (with `extra`, e.g. a Reason): our own request.
    pub(super) fn bye(
        &mut self,
        call: CallId,
        leg: Leg,
        extra: &[(&str, String)],
        cx: &mut Cx<'_>,
    ) {
        let req = Outgoing {
            method: "BYE",
            purpose: Purpose::Own,
            extra,
            body: None,
        };
        self.send_request(call, leg, req, cx);
    }

    /// Sends an ACK for a 2xx in `leg`'s dialog (no transaction, §17.1.1.3).
    pub(super) fn send_ack(
        &mut self,
        call: CallId,
        leg: Leg,
        cseq: u32,
        body: Option<(&str, &[u8])>,
        cx: &mut Cx<'_>,
    ) {
        let branch = self.new_id("z9hG4bK");
        let Some(transport) = self.calls.get_mut(&call).map(|c| c.dialog(leg).transport) else {
            return;
        };
        // An ACK carries no Contact (§17.1.1.3, §13.2.2.4 builds it like any in-dialog request).
        let host = self.via_host(transport);
        let ua = self.cfg.user_agent.clone();
        let Some(c) = self.calls.get_mut(&call) else {
            return;
        };
        let d = c.dialog(leg);
        let local = Local {
            via_host: &host,
            contact: "",
            user_agent: &ua,
        };
        if let Ok(ack) = d.request("ACK", &branch, &local, Some(cseq), &[], body) {
            let bytes = ack.into_bytes();
            d.last_ack = Some((cseq, bytes.clone()));
            cx.send(d.transport, d.peer, bytes);
        }
    }

    pub(super) fn new_server(
        &mut self,
        key: SKey,
        call: Option<CallId>,
        kind: TxKind,
        transport: Transport,
        peer: SocketAddr,
        request: Message,
    ) {
        let tx = ServerTx::new(kind, transport.reliable(), self.cfg.timers);
        self.servers.insert(
            key,
            ServerEntry {
                tx,
                call,
                peer,
                transport,
                request,
            },
        );
    }

    pub(super) fn initial_server(&self, call: CallId) -> Option<SKey> {
        self.clients.values().find_map(|e| match &e.purpose {
            Purpose::Invite(r) if r.initial && e.call == call => Some(r.server.clone()),
            _ => None,
        })
    }

    pub(super) fn on_response(&mut self, from: SocketAddr, msg: Message, cx: &mut Cx<'_>) {
        let Some(status) = msg.status() else { return };
        let branch = msg
            .top_via()
            .and_then(|v| v.branch().map(str::to_owned))
            .unwrap_or_default();
        let cseq_method = msg.cseq().map(|c| c.method.to_owned()).unwrap_or_default();
        let ckey = if cseq_method == "CANCEL" {
            format!("{branch}/CANCEL")
        } else {
            branch
        };
        // A response counts only from where its request went (a TCP response arrives on that
        // very connection; a UDP UAS answers from the address we sent to).
        if let Some(e) = self.clients.get(&ckey)
            && e.peer.ip() != from.ip()
        {
            cx.out.push(Output::Refused {
                from,
                refusal: Refusal::Response,
            });
            return;
        }
        let Some(mut e) = self.clients.remove(&ckey) else {
            self.stray_response(from, &msg, status, cx);
            return;
        };
        let ack = if e.tx.kind() == TxKind::Invite && status >= 300 {
            Self::non2xx_ack(&e.request, &msg)
        } else {
            None
        };
        let (fate, actions) = e.tx.on_response(status, ack, cx.now);
        let mut terminated = false;
        for a in actions {
            match a {
                TxAction::Send(b) => cx.send(e.transport, e.peer, b),
                TxAction::Terminated => terminated = true,
                TxAction::Timeout => {}
            }
        }
        let (call, leg, purpose) = (e.call, e.leg, e.purpose.clone());
        if !terminated {
            self.clients.insert(ckey, e);
        }
        if fate == ResponseFate::Absorb {
            return;
        }
        match purpose {
            Purpose::Own => {}
            Purpose::Refresh => self.refresh_answered(call, status, cx),
            Purpose::Invite(relay) => self.invite_response(call, leg, relay, &msg, status, cx),
            Purpose::Relay { server, from } => {
                self.relay_response(call, from, &server, &msg, status, cx)
            }
            Purpose::Return => self.return_response(call, &msg, status, cx),
        }
    }

    /// A 2xx retransmission after its transaction ended: resend our ACK (§13.2.2.4).
    pub(super) fn stray_response(
        &mut self,
        from: SocketAddr,
        msg: &Message,
        status: u16,
        cx: &mut Cx<'_>,
    ) {
        if !(200..300).contains(&status) {
            return;
        }
        let Some(cs) = msg.cseq() else { return };
        if cs.method != "INVITE" {
            return;
        }
        let Some((call, leg)) = msg.call_id().and_then(|id| self.dialogs.get(id).copied()) else {
            return;
        };
        if !self.leg_peer(call, leg, from.ip()) {
            cx.out.push(Output::Refused {
                from,
                refusal: Refusal::Response,
            });
            return;
        }
        let Some(c) = self.calls.get_mut(&call) else {
            return;
        };
        let d = c.dialog(leg);
        if let Some((seq, bytes)) = &d.last_ack
            && *seq == cs.seq
        {
            cx.send(d.transport, d.peer, bytes.clone());
        }
    }

    /// ACK for a non-2xx final response (§17.1.1.3): the INVITE's Request-URI, Call-ID,
    /// From, top Via and Route, and the response's To.
    pub(super) fn non2xx_ack(invite: &Message, resp: &Message) -> Option<Bytes> {
        let uri = invite.request_uri_str()?;
        let mut b = RequestBuilder::new("ACK", uri)
            .header("Via", &lossy(invite.get("Via")?))
            .header("Max-Forwards", "70");
        for r in invite.get_all("Route") {
            b = b.header("Route", &lossy(r));
        }
        let seq = invite.cseq()?.seq;
        b = b
            .header("From", &lossy(invite.get("From")?))
            .header("To", &lossy(resp.get("To")?))
            .header("Call-ID", invite.call_id()?)
            .header("CSeq", &format!("{seq} ACK"));
        b.build().ok().map(Message::into_bytes)
    }

    pub(super) fn reason_of(msg: &Message) -> String {
        msg.reason_phrase()
            .and_then(|r| std::str::from_utf8(r).ok())
            .filter(|r| !r.is_empty())
            .unwrap_or("Unknown")
            .to_owned()
    }

    /// Fires the timers of server transactions that are due.
    pub(super) fn poll_servers(&mut self, cx: &mut Cx<'_>) {
        let due: Vec<SKey> = self
            .servers
            .iter()
            .filter(|(_, e)| e.tx.next_deadline().is_some_and(|d| d <= cx.now))
            .map(|(k, _)| k.clone())
            .collect();
        for k in due {
            let Some(e) = self.servers.get_mut(&k) else {
                continue;
            };
            let mut done = false;
            for a in e.tx.poll(cx.now) {
                match a {
                    TxAction::Send(b) => cx.send(e.transport, e.peer, b),
                    TxAction::Terminated => done = true,
                    TxAction::Timeout => {}
                }
            }
            if done {
                self.servers.remove(&k);
            }
        }
    }

    /// Fires the timers of client transactions that are due; a timeout is handed on as if
    /// the far side had answered 408.
    pub(super) fn poll_clients(&mut self, cx: &mut Cx<'_>) {
        let due: Vec<String> = self
            .clients
            .iter()
            .filter(|(_, e)| e.tx.next_deadline().is_some_and(|d| d <= cx.now))
            .map(|(k, _)| k.clone())
            .collect();
        for k in due {
            let Some(mut e) = self.clients.remove(&k) else {
                continue;
            };
            let (mut done, mut timeout) = (false, false);
            for a in e.tx.poll(cx.now) {
                match a {
                    TxAction::Send(b) => cx.send(e.transport, e.peer, b),
                    TxAction::Terminated => done = true,
                    TxAction::Timeout => timeout = true,
                }
            }
            let (call, purpose) = (e.call, e.purpose.clone());
            if !done {
                self.clients.insert(k, e);
            }
            if timeout {
                self.client_failed(call, purpose, ClientFailure::Timeout, cx);
            }
        }
    }

    /// Our Contact in a response through server transaction `server`: for the transport its
    /// request came over, a SIPS one when that Request-URI is a SIPS URI (RFC 3261 §12.1.1).
    pub(super) fn server_contact(&self, server: &SKey) -> String {
        let Some(e) = self.servers.get(server) else {
            return self.contact(Transport::Udp, false);
        };
        let secure = e.request.request_uri_str().is_some_and(is_sips);
        self.contact(e.transport, secure)
    }

    /// Our 2xx to `req` (the request of `server`), with our Contact and what we allow.
    pub(super) fn build_2xx(
        &self,
        server: &SKey,
        req: &Message,
        status: u16,
        reason: &str,
        tag: &str,
        body: Option<(&str, Vec<u8>)>,
    ) -> Option<Message> {
        let contact = self.server_contact(server);
        // RFC 3261 §12.1.1: the trunk's proxies (a Kamailio dispatcher in front of several
        // nodes) stay in the dialog only if our 2xx copies their Record-Route.
        let mut b = ResponseBuilder::new(req, status, reason)
            .record_route()
            .to_tag(tag)
            .header("Contact", &contact)
            .header("Allow", ALLOW)
            .header("Server", &self.cfg.user_agent);
        for (name, value) in self.timer_headers(server) {
            b = b.header(name, &value);
        }
        if let Some((ct, body)) = body {
            b = b.body(ct, body);
        }
        b.build().ok()
    }

    /// Sends a 2xx to an INVITE through `server` and resends it (T1 doubling to T2) until the
    /// ACK that `wait` describes, for at most 64·T1 (§13.3.1.4).
    pub(super) fn send_2xx_until_ack(
        &mut self,
        call: CallId,
        server: &SKey,
        resp: Message,
        wait: AckWait,
        cx: &mut Cx<'_>,
    ) {
        let bytes = resp.as_bytes().clone();
        self.respond(server, resp, cx);
        let t1 = self.cfg.timers.t1;
        let reliable = self
            .servers
            .get(server)
            .is_some_and(|e| e.transport.reliable());
        if let Some(c) = self.calls.get_mut(&call) {
            // RFC 4028 §9: a 2xx to the trunk's INVITE starts (or refreshes) the session.
            if let Some(t) = c.timer.as_mut().filter(|_| wait.from == Leg::A) {
                t.refreshed(cx.now);
            }
            c.ack_wait = Some(wait);
            c.retrans = Some(Retrans {
                leg: wait.from,
                bytes,
                next: if reliable { u64::MAX } else { cx.now + t1 },
                interval: t1,
                deadline: cx.now + 64 * t1,
            });
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn failures_keep_their_class() {
        assert_eq!(map_failure(486), 486);
        assert_eq!(map_failure(407), 403);
        assert_eq!(map_failure(603), 603);
    }
}
