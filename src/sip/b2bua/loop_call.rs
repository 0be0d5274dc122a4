//! The loop model (PCI Pal style) on top of the B2BUA core: the contact centre transfers the
//! caller to our loop number, we learn a locator (Request-URI, header, or DTMF after answering
//! the caller ourselves), the shell resolves it to an agent, and we call the contact centre's
//! return number with that agent in a header, then bridge the two legs like an inline call.
//!
//! Owns locating, answering the A-leg ourselves, the return call and the failure paths
//! (fallback URI, failure tone then BYE, 404). It never reads a clock: deadlines are
//! `now`-based like the rest of the core, and it never puts an agent or locator that is not
//! header-safe on the wire.

#![warn(clippy::unwrap_used, clippy::indexing_slicing)]

use std::net::SocketAddr;

use rand::Rng;

use super::B2bua;
use super::context::{Cx, Reply};
use super::media::{
    Origin, answer_offer, is_sdp, local_offer, read_answer, return_offer_codecs, sdp_failure_reason,
};
use super::route::OnFailure;
use super::state::{AckWait, InviteRelay, Phase, Purpose, SKey};
use super::transactions::lossy;
use super::types::{CallEvent, CallId, EndCause, Leg, LegMedia, LocateOutcome, Output};
use crate::sip::Side;
use crate::sip::dialog::Dialog;
use crate::sip::headers::Contacts;
use crate::sip::message::Message;

/// Agent ids and locators go into header values: printable ASCII only (no CR/LF injection).
fn header_safe(s: &str) -> bool {
    (1..=128).contains(&s.len()) && s.bytes().all(|b| (0x20..0x7f).contains(&b))
}

impl B2bua {
    pub(super) fn new_number(&mut self) -> u64 {
        // SDP session ids are decimal; keep them within i64 for picky parsers.
        self.ids.next_u64() >> 2
    }

    pub(super) fn new_origin(&mut self) -> Origin {
        Origin {
            session: self.new_number(),
            version: 0,
        }
    }

    /// Starts a loop call set up by `new_call` in Phase::Locating: asks the shell to resolve
    /// `locator`, or answers the A-leg with `answer` (DTMF mode) and asks it to collect one.
    pub(super) fn start_loop(
        &mut self,
        call: CallId,
        locator: Option<String>,
        answer: Option<Vec<u8>>,
        cx: &mut Cx<'_>,
    ) {
        let Some(c) = self.calls.get(&call) else {
            return;
        };
        let Some(lp) = &c.lp else { return };
        let server = lp.server.clone();
        // Who asks: the shell rate-limits failed look-ups per source (locators are short).
        let source = server.0.ip();
        if let Some(l) = locator {
            cx.out.push(Output::Locate {
                call,
                locator: Some(l),
                source,
            });
            return;
        }
        let Some(body) = answer else {
            // No locator and DTMF not allowed.
            self.not_found(call, cx);
            return;
        };
        let Some(req) = self.servers.get(&server).map(|e| e.request.clone()) else {
            return;
        };
        self.answer_own(call, &server, &req, Some(&body), true, cx);
        self.media_a_only(call, cx);
        cx.out.push(Output::Locate {
            call,
            locator: None,
            source,
        });
    }

    /// Sends our own 2xx (with `body`) to the A-leg request of `server`; for an INVITE it is
    /// resent until its ACK (§13.3.1.4), which ends here.
    pub(super) fn answer_own(
        &mut self,
        call: CallId,
        server: &SKey,
        req: &Message,
        body: Option<&[u8]>,
        invite: bool,
        cx: &mut Cx<'_>,
    ) {
        let Some(c) = self.calls.get(&call) else {
            return;
        };
        let tag = c.a.local_tag.clone();
        let body = body.map(|b| ("application/sdp", b.to_vec()));
        let Some(resp) = self.build_2xx(server, req, 200, "OK", &tag, body) else {
            return;
        };
        if !invite {
            self.respond(server, resp, cx);
            return;
        }
        let wait = AckWait {
            from: Leg::A,
            from_cseq: req.cseq().map_or(0, |c| c.seq),
            to_cseq: 0,
            own: true,
        };
        self.send_2xx_until_ack(call, server, resp, wait, cx);
        if let Some(c) = self.calls.get_mut(&call) {
            c.invite_busy = true;
        }
    }

    /// Media with only the A side known (DTMF mode before the return leg answers): the shell
    /// starts the relay so the locator digits can be heard.
    pub(super) fn media_a_only(&mut self, call: CallId, cx: &mut Cx<'_>) {
        let Some(c) = self.calls.get_mut(&call) else {
            return;
        };
        if c.ended() {
            return;
        }
        let Some((remote, codecs)) = c.a_remote else {
            return;
        };
        let a = LegMedia {
            local: c.ports_a,
            remote: Some(remote),
            codecs,
        };
        let b = LegMedia {
            local: c.ports_b,
            remote: None,
            codecs,
        };
        if c.last_media != Some((a, b)) {
            c.last_media = Some((a, b));
            cx.out.push(Output::Media {
                call,
                a,
                b,
                srtp: None,
            });
        }
    }

    /// The ACK for our own 2xx on the A-leg; a late offer's answer comes in it (§13.2.1).
    pub(super) fn own_ack(&mut self, call: CallId, msg: &Message, cx: &mut Cx<'_>) {
        if is_sdp(msg) {
            match read_answer(msg.body()) {
                Ok((remote, codecs)) => {
                    if let Some(c) = self.calls.get_mut(&call) {
                        c.a_remote = Some((remote, codecs));
                        if let Some(lp) = &mut c.lp {
                            lp.a_codecs = Some(codecs);
                        }
                    }
                }
                Err(_) => {
                    // The trunk's answer to our offer is one we cannot use.
                    self.hangup(call, EndCause::Failed(Side::Trunk), None, cx);
                    return;
                }
            }
        }
        self.loop_media(call, cx);
        let resolved = self.calls.get(&call).is_some_and(|c| {
            c.phase == Phase::Locating && c.lp.as_ref().is_some_and(|l| l.found.is_some())
        });
        if resolved {
            self.send_return(call, false, cx);
        }
    }

    pub(super) fn loop_media(&mut self, call: CallId, cx: &mut Cx<'_>) {
        if self.calls.get(&call).is_some_and(|c| c.bridged()) {
            self.media_update(call, cx);
        } else {
            self.media_a_only(call, cx);
        }
    }

    /// An INVITE, UPDATE or INFO from the A-leg of a loop call we answered, while there is no
    /// return leg to relay it to: we answer it ourselves on the same A ports.
    pub(super) fn answer_locally(
        &mut self,
        call: CallId,
        key: SKey,
        req: &Message,
        tag: &str,
        cx: &mut Cx<'_>,
    ) {
        let method = req
            .method()
            .map(|m| m.as_str().to_owned())
            .unwrap_or_default();
        if method == "INFO" {
            self.reply(&key, Reply::new(200, "OK").tag(tag), cx);
            return;
        }
        let invite = method == "INVITE";
        if invite && self.calls.get(&call).is_some_and(|c| c.invite_busy) {
            // §14.2: one INVITE at a time.
            self.reply(&key, Reply::new(491, "Request Pending").tag(tag), cx);
            return;
        }
        let addr = self.cfg.media_address;
        let Some(c) = self.calls.get_mut(&call) else {
            return;
        };
        let pa = c.ports_a;
        let Some(lp) = &mut c.lp else { return };
        let keep = lp.a_codecs;
        let origin = lp.origin_a.next();
        let body = if is_sdp(req) {
            match answer_offer(req.body(), addr, pa, keep, origin) {
                Ok(a) => {
                    lp.a_codecs = Some(a.codecs);
                    c.a_remote = Some((a.remote, a.codecs));
                    Some(a.body)
                }
                Err(e) => {
                    let s = e.sip_status();
                    let r = sdp_failure_reason(s);
                    self.reply(&key, Reply::new(s, r).tag(tag), cx);
                    return;
                }
            }
        } else if invite {
            // Late offer re-INVITE: we offer, the answer comes in the ACK.
            let codecs = return_offer_codecs(keep);
            Some(local_offer(addr, pa, &codecs, origin))
        } else {
            None
        };
        self.answer_own(call, &key, req, body.as_deref(), invite, cx);
        self.loop_media(call, cx);
    }

    /// The shell's answer to [`Output::Locate`].
    pub(super) fn on_located(&mut self, call: CallId, outcome: LocateOutcome, cx: &mut Cx<'_>) {
        let Some(c) = self.calls.get_mut(&call) else {
            return;
        };
        if c.phase != Phase::Locating || c.lp.as_ref().is_some_and(|l| l.found.is_some()) {
            return; // late: timed out, hung up, or already resolved
        }
        match outcome {
            LocateOutcome::Found { agent, locator }
                if header_safe(&agent) && header_safe(&locator) =>
            {
                // Late offer not yet answered in the ACK: the return offer needs the law the
                // caller picks, so it waits for that ACK (or its 64·T1 timeout).
                let wait_ack = c.ack_wait.is_some_and(|w| w.own)
                    && c.lp
                        .as_ref()
                        .is_some_and(|l| l.answered && l.a_codecs.is_none());
                if let Some(lp) = &mut c.lp {
                    lp.found = Some((agent.clone(), locator));
                }
                cx.out.push(Output::Event {
                    call,
                    event: CallEvent::Located { agent },
                });
                if !wait_ack {
                    self.send_return(call, false, cx);
                }
            }
            LocateOutcome::Refused => self.locate_failed(call, true, cx),
            _ => self.not_found(call, cx),
        }
    }

    /// Locating failed: the fallback, a failure tone then BYE (answered A-leg), or 404.
    pub(super) fn not_found(&mut self, call: CallId, cx: &mut Cx<'_>) {
        self.locate_failed(call, false, cx);
    }

    /// Locating failed, or (`refused`) the source is locked out for guessing: then no fallback
    /// takes the call and an unanswered transfer gets 403, so guessing leads nowhere.
    pub(super) fn locate_failed(&mut self, call: CallId, refused: bool, cx: &mut Cx<'_>) {
        cx.out.push(Output::Event {
            call,
            event: CallEvent::LocateFailed,
        });
        let Some(c) = self.calls.get(&call) else {
            return;
        };
        let Some(lr) = self
            .cfg
            .routes
            .get(c.route)
            .and_then(|r| r.loop_route.as_ref())
        else {
            return;
        };
        let (on_failure, announce_ms) = (lr.on_failure, lr.announce_ms);
        let a_answered = c.a_answered();
        let tag = c.a.local_tag.clone();
        let server = c.lp.as_ref().map(|l| l.server.clone());
        if !refused && on_failure == OnFailure::Fallback && self.try_fallback(call, cx) {
            return;
        }
        if a_answered {
            cx.out.push(Output::Announce { call });
            if let Some(c) = self.calls.get_mut(&call) {
                c.phase = Phase::Announcing {
                    until: cx.now + announce_ms,
                };
            }
            return;
        }
        // Never answered: refuse the transfer rather than half-bridge it.
        let Some(server) = server else {
            return;
        };
        let answer = if refused {
            Reply::new(403, "Forbidden").tag(&tag)
        } else {
            Reply::new(404, "Locator Not Found").tag(&tag)
        };
        let end = Some(EndCause::NotLocated);
        self.fail_invite(call, &server, answer, end, cx);
    }

    /// Loop timers: the locate deadline and the end of the failure tone.
    pub(super) fn loop_tick(&mut self, call: CallId, cx: &mut Cx<'_>) {
        let Some(c) = self.calls.get(&call) else {
            return;
        };
        match c.phase {
            Phase::Locating
                if c.lp
                    .as_ref()
                    .is_some_and(|l| cx.now >= l.deadline && l.found.is_none()) =>
            {
                // No answer from the shell in time: as if not found.
                self.not_found(call, cx);
            }
            Phase::Announcing { until } if cx.now >= until => {
                let reason = [(
                    "Reason",
                    "SIP;cause=404;text=\"locator not found\"".to_owned(),
                )];
                self.bye(call, Leg::A, &reason, cx);
                self.end_call(call, EndCause::NotLocated, cx);
            }
            _ => {}
        }
    }

    /// Calls the return number (or, with `fallback`, the route's fallback URI): A's own offer
    /// relayed when the A-leg is still unanswered, our own offer when we answered it.
    pub(super) fn send_return(&mut self, call: CallId, fallback: bool, cx: &mut Cx<'_>) {
        let addr = self.cfg.media_address;
        let fresh_b = if fallback {
            Some((self.new_id("tw"), self.new_id("b")))
        } else {
            None
        };
        let origin_b = self.new_origin();
        let Some(c) = self.calls.get_mut(&call) else {
            return;
        };
        let Some(lr) = self
            .cfg
            .routes
            .get(c.route)
            .and_then(|r| r.loop_route.clone())
        else {
            return;
        };
        if let Some(ids) = fresh_b {
            let Some(target) = lr.fallback.clone() else {
                return;
            };
            self.restart_b_dialog(call, target, ids);
        }
        let Some(c) = self.calls.get_mut(&call) else {
            return;
        };
        let pb = c.ports_b;
        let Some(lp) = &mut c.lp else { return };
        if fallback {
            lp.fallback_used = true;
        }
        let mut extra: Vec<(String, String)> = lp.extra.clone();
        if let Some((agent, locator)) = &lp.found {
            extra.push((lr.agent_header.clone(), agent.clone()));
            extra.push((lr.locator_header.clone(), locator.clone()));
        }
        let answered = lp.answered;
        let (body, purpose) = if answered {
            lp.origin_b = origin_b;
            let codecs = return_offer_codecs(lp.a_codecs);
            (
                Some(local_offer(addr, pb, &codecs, origin_b)),
                Purpose::Return,
            )
        } else {
            let p = Purpose::Invite(InviteRelay {
                server: lp.server.clone(),
                from: Leg::A,
                initial: true,
            });
            (lp.offer.clone(), p)
        };
        let server = lp.server.clone();
        let tag = c.a.local_tag.clone();
        c.phase = Phase::Calling;
        let extra_ref: Vec<(&str, String)> =
            extra.iter().map(|(n, v)| (n.as_str(), v.clone())).collect();
        let body = body.as_deref().map(|b| ("application/sdp", b));
        let sent = self.send_invite(call, Leg::B, purpose, &extra_ref, body, cx);
        if sent.is_none() {
            self.return_not_sent(call, answered, &server, &tag, cx);
        }
    }

    /// Our return INVITE could not be built: the caller is told (BYE when we answered it,
    /// else 500 to its INVITE) and the call ends.
    fn return_not_sent(
        &mut self,
        call: CallId,
        answered: bool,
        server: &SKey,
        tag: &str,
        cx: &mut Cx<'_>,
    ) {
        if answered {
            let reason = [(
                "Reason",
                "SIP;cause=500;text=\"return leg failed\"".to_owned(),
            )];
            self.bye(call, Leg::A, &reason, cx);
            self.end_call(call, EndCause::Failed(Side::Internal), cx);
        } else {
            let answer = Reply::new(500, "Server Internal Error").tag(tag);
            let end = Some(EndCause::Failed(Side::Internal));
            self.fail_invite(call, server, answer, end, cx);
        }
    }

    /// A new B dialog towards the fallback `(uri, target)` with fresh `(call_id, tag)`
    /// (§12.1.2: nothing of the failed one carries over).
    fn restart_b_dialog(
        &mut self,
        call: CallId,
        (uri, target): (String, SocketAddr),
        (call_id, tag): (String, String),
    ) {
        let Some(c) = self.calls.get_mut(&call) else {
            return;
        };
        let user =
            c.b.local
                .split_once(";tag=")
                .map_or(c.b.local.clone(), |(u, _)| u.to_owned());
        let transport = c.b.transport;
        let old = std::mem::replace(
            &mut c.b,
            Dialog {
                call_id: format!("{call_id}@tonewall"),
                local: format!("{user};tag={tag}"),
                remote: format!("<{uri}>"),
                local_tag: tag,
                remote_tag: None,
                remote_target: uri,
                route_set: Vec::new(),
                local_cseq: 0,
                remote_cseq: None,
                peer: target,
                transport,
                last_ack: None,
            },
        );
        let new_id = c.b.call_id.clone();
        c.b_invite = None;
        c.cancel_pending = false;
        c.b_remote = None;
        self.dialogs.remove(&old.call_id);
        self.dialogs.insert(new_id, (call, Leg::B));
    }

    /// Moves a loop call to its fallback URI, once, while the caller is still there.
    pub(super) fn try_fallback(&mut self, call: CallId, cx: &mut Cx<'_>) -> bool {
        let Some(c) = self.calls.get(&call) else {
            return false;
        };
        let Some(lp) = &c.lp else { return false };
        let has = self
            .cfg
            .routes
            .get(c.route)
            .and_then(|r| r.loop_route.as_ref())
            .is_some_and(|lr| lr.fallback.is_some());
        if !has || lp.fallback_used || !matches!(c.phase, Phase::Locating | Phase::Calling) {
            return false;
        }
        cx.out.push(Output::Event {
            call,
            event: CallEvent::Fallback,
        });
        self.send_return(call, true, cx);
        true
    }

    /// A response to our own return INVITE (A-leg answered by us).
    pub(super) fn return_response(
        &mut self,
        call: CallId,
        msg: &Message,
        status: u16,
        cx: &mut Cx<'_>,
    ) {
        let Some(c) = self.calls.get_mut(&call) else {
            return;
        };
        let cancelled = matches!(c.phase, Phase::Cancelling | Phase::Ended { .. });
        if status < 200 {
            if status > 100
                && c.b.remote_tag.is_none()
                && let Some(t) = msg.to_tag()
            {
                c.b.remote_tag = Some(t.to_owned());
                c.b.remote = lossy(msg.get("To").unwrap_or(b""));
            }
            // §9.1: a CANCEL waits for a provisional response.
            if c.cancel_pending {
                self.cancel_b(call, cx);
            }
            return;
        }
        if status >= 300 {
            if !cancelled {
                self.return_failed(call, status, EndCause::Rejected(status), cx);
            }
            return;
        }
        // 2xx: the return dialog is confirmed (§12.1.2); we ACK it ourselves (§13.2.2.4).
        c.b.remote_tag = msg.to_tag().map(str::to_owned);
        c.b.remote = lossy(msg.get("To").unwrap_or(b""));
        let mut rr: Vec<String> = msg.get_all("Record-Route").map(lossy).collect();
        rr.reverse();
        c.b.route_set = rr;
        if let Ok(Contacts::List(l)) = msg.contacts()
            && let Some(n) = l.first()
        {
            c.b.remote_target = n.uri_raw.to_owned();
        }
        let seq = msg.cseq().map_or(1, |c| c.seq);
        self.send_ack(call, Leg::B, seq, None, cx);
        if cancelled {
            // The caller left while the return leg answered (§15: ACK then BYE).
            self.bye(call, Leg::B, &[], cx);
            return;
        }
        let answer = if is_sdp(msg) {
            read_answer(msg.body()).ok()
        } else {
            None
        };
        let Some((remote, codecs)) = answer else {
            // We offered: a 2xx without a usable answer cannot carry media (§13.2.1).
            self.bye(call, Leg::B, &[], cx);
            let cause = EndCause::Failed(Side::ContactCentre);
            self.return_failed(call, 488, cause, cx);
            return;
        };
        if let Some(c) = self.calls.get_mut(&call) {
            c.b_remote = Some((remote, codecs));
            c.phase = Phase::Confirmed;
        }
        self.media_update(call, cx);
        cx.out.push(Output::Event {
            call,
            // The locator named the agent; binding tags the call with it.
            event: CallEvent::Answered { agent: None },
        });
    }

    /// The return leg failed (`status`, or 408 for Timer B) with the A-leg answered by us:
    /// the fallback if there is one, else BYE to the caller saying why.
    pub(super) fn return_failed(
        &mut self,
        call: CallId,
        status: u16,
        cause: EndCause,
        cx: &mut Cx<'_>,
    ) {
        if self.try_fallback(call, cx) {
            return;
        }
        if self.calls.get(&call).is_none_or(|c| c.ended()) {
            return;
        }
        let reason = [(
            "Reason",
            format!("SIP;cause={status};text=\"return leg failed\""),
        )];
        self.bye(call, Leg::A, &reason, cx);
        self.end_call(call, cause, cx);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn agents_with_line_breaks_are_refused() {
        assert!(header_safe("agent-7"));
        assert!(!header_safe("a\r\nVia: x"));
        assert!(!header_safe(""));
    }
}
