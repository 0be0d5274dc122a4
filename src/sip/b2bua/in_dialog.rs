//! Requests within a dialog: BYE, OPTIONS, DTMF INFO kept from the agent, re-INVITE, UPDATE
//! and INFO relayed to the other leg with their SDP anchored, ACKs relayed end to end.

#![warn(clippy::unwrap_used, clippy::indexing_slicing)]

use super::B2bua;
use super::context::{Cx, Outgoing, Reply};
use super::media::{anchor, is_sdp, sdp_failure_reason, sdp_warning, set_origin};
use super::state::{CallLegs, Incoming, InviteRelay, Phase, Purpose, SKey};
use super::transactions::{ALLOW, lossy, map_failure};
use super::types::{CallEvent, CallId, EndCause, Leg, LegMedia, Output, Refusal};
use crate::digit::Digit;
use crate::sip::Side;
use crate::sip::message::{Message, Method};
use crate::sip::sdp::SdpError;
use crate::sip::transaction::TxKind;

/// Digit carried by an INFO body (application/dtmf-relay `Signal=`, or application/dtmf).
fn info_digit(ct_sub: &str, body: &[u8]) -> Option<Digit> {
    let text = std::str::from_utf8(body).ok()?;
    let s = if ct_sub.eq_ignore_ascii_case("dtmf-relay") {
        text.lines().find_map(|l| {
            let (k, v) = l.split_once('=')?;
            k.trim().eq_ignore_ascii_case("signal").then(|| v.trim())
        })?
    } else {
        text.trim()
    };
    let mut chars = s.chars();
    let c = chars.next()?;
    if chars.next().is_some() {
        return None;
    }
    Digit::from_char(c)
}

impl B2bua {
    /// A request with a To tag: matched to its dialog, checked against the leg's peer, and
    /// answered or relayed.
    pub(super) fn in_dialog(&mut self, inc: Incoming, to_tag: &str, cx: &mut Cx<'_>) {
        let Incoming {
            transport,
            from,
            msg,
            method,
            key,
        } = inc;
        let found = msg
            .call_id()
            .and_then(|id| self.dialogs.get(id).copied())
            .filter(|(call, leg)| {
                self.calls
                    .get(call)
                    .is_some_and(|c| c.local_tag(*leg) == to_tag)
            });
        let Some((call, leg)) = found else {
            if method != "ACK" {
                let r = "Call/Transaction Does Not Exist";
                self.reply_stateless(&msg, transport, from, 481, r, cx);
            }
            return;
        };
        // Only the leg's own peer may act in its dialog: the trunk can neither hang up nor
        // re-INVITE the contact centre's leg, and the other way round.
        if !self.leg_peer(call, leg, from.ip()) {
            let refusal = Refusal::WrongLeg(leg);
            self.refuse_request(&msg, &method, transport, from, refusal, cx);
            return;
        }
        let ended = self.calls.get(&call).is_none_or(CallLegs::ended);
        if method == "ACK" {
            self.on_dialog_ack(call, leg, &msg, cx);
            return;
        }
        let kind = if method == "INVITE" {
            TxKind::Invite
        } else {
            TxKind::NonInvite
        };
        self.new_server(key.clone(), Some(call), kind, transport, from, msg);
        let Some(req) = self.servers.get(&key).map(|e| e.request.clone()) else {
            return;
        };
        if let Some(c) = self.calls.get_mut(&call) {
            let d = c.dialog(leg);
            if let Some(cs) = req.cseq() {
                d.remote_cseq = Some(cs.seq);
            }
        }
        if ended {
            // BYE glare or a late request: the dialog is gone (§15.1.2 answers a BYE anyway).
            let (s, r) = if method == "BYE" {
                (200, "OK")
            } else {
                (481, "Call/Transaction Does Not Exist")
            };
            self.reply(&key, Reply::new(s, r).tag(to_tag), cx);
            return;
        }
        self.dialog_request(call, leg, key, &req, to_tag, cx);
    }

    /// A request in a live dialog, by method.
    fn dialog_request(
        &mut self,
        call: CallId,
        leg: Leg,
        key: SKey,
        req: &Message,
        tag: &str,
        cx: &mut Cx<'_>,
    ) {
        let allow = [("Allow", ALLOW.to_owned())];
        let refresh = matches!(req.method(), Some(Method::Invite | Method::Update));
        if leg == Leg::A && refresh && self.trunk_refresh(call, &key, req, tag, cx) {
            return;
        }
        match req.method().map_or("", |m| m.as_str()) {
            "BYE" => {
                self.reply(&key, Reply::new(200, "OK").tag(tag), cx);
                self.on_bye(call, leg, req, cx);
            }
            "OPTIONS" => {
                self.reply(&key, Reply::new(200, "OK").tag(tag).extra(&allow), cx);
            }
            "INFO" if leg == Leg::A && Self::is_dtmf_info(req) => {
                // Card digits must not reach the agent: answer here, hand the digit to capture.
                self.reply(&key, Reply::new(200, "OK").tag(tag), cx);
                let sub = req
                    .content_type()
                    .ok()
                    .flatten()
                    .map(|ct| ct.subtype.to_owned())
                    .unwrap_or_default();
                if let Some(digit) = info_digit(&sub, req.body()) {
                    cx.out.push(Output::Digit { call, digit });
                }
            }
            "INVITE" | "UPDATE" | "INFO"
                if leg == Leg::A
                    && self
                        .calls
                        .get(&call)
                        .is_some_and(|c| !c.bridged() && c.a_answered()) =>
            {
                // Loop call answered by us, return leg not up: nobody to relay to.
                self.answer_locally(call, key, req, tag, cx);
            }
            "INVITE" | "UPDATE" | "INFO" => {
                self.relay(call, leg, key, req, tag, cx);
            }
            _ => {
                let r = Reply::new(501, "Not Implemented").tag(tag);
                self.reply(&key, r.extra(&allow), cx);
            }
        }
    }

    /// A BYE from `leg` (already answered): the other leg is hung up too, and the call ends.
    fn on_bye(&mut self, call: CallId, leg: Leg, req: &Message, cx: &mut Cx<'_>) {
        let reason: Vec<(&str, String)> = req
            .get_all("Reason")
            .map(|v| ("Reason", lossy(v)))
            .collect();
        // A BYE may come before the ACK of a 2xx (§15.1.1): ACK the other leg first.
        let wait = self.calls.get_mut(&call).and_then(|c| {
            c.retrans = None;
            c.ack_wait.take()
        });
        if let Some(w) = wait.filter(|w| !w.own) {
            self.send_ack(call, w.from.other(), w.to_cseq, None, cx);
            if let Some(c) = self.calls.get_mut(&call) {
                c.phase = Phase::Confirmed;
            }
        }
        let (confirmed, return_pending) = self.calls.get(&call).map_or((false, false), |c| {
            (
                c.phase == Phase::Confirmed,
                c.phase == Phase::Calling && c.a_answered(),
            )
        });
        if confirmed {
            self.bye(call, leg.other(), &reason, cx);
        } else if return_pending {
            // Loop call: the caller left while the return leg rings (§9.1).
            self.cancel_b(call, cx);
        }
        let cause = match leg {
            Leg::A => EndCause::ByeFromA,
            Leg::B => EndCause::ByeFromB,
        };
        self.end_call(call, cause, cx);
    }

    pub(super) fn is_dtmf_info(req: &Message) -> bool {
        matches!(req.content_type(), Ok(Some(ct))
            if ct.is("application", "dtmf-relay") || ct.is("application", "dtmf"))
    }

    /// Relays an in-dialog INVITE, UPDATE or INFO from `leg` to the other leg.
    pub(super) fn relay(
        &mut self,
        call: CallId,
        leg: Leg,
        key: SKey,
        req: &Message,
        tag: &str,
        cx: &mut Cx<'_>,
    ) {
        let is_invite = req.method() == Some(Method::Invite);
        if is_invite {
            self.reply(&key, Reply::new(100, "Trying"), cx);
            // §14.2: one INVITE at a time per dialog; glare gets 491.
            let busy = self.calls.get(&call).is_some_and(|c| c.invite_busy);
            if busy {
                self.reply(&key, Reply::new(491, "Request Pending").tag(tag), cx);
                return;
            }
        }
        if let Some(mf) = req.max_forwards()
            && mf == 0
        {
            self.reply(&key, Reply::new(483, "Too Many Hops").tag(tag), cx);
            return;
        }
        let other = leg.other();
        let mut body: Option<(String, Vec<u8>)> = None;
        if is_sdp(req) {
            match self.anchor_from(call, leg, req.body(), false) {
                Ok(b) => body = Some(("application/sdp".to_owned(), b)),
                Err(e) => {
                    let s = e.sip_status();
                    let r = sdp_failure_reason(s);
                    let warning: Vec<(&str, String)> = sdp_warning(&e, &self.cfg.sip_host)
                        .map(|w| ("Warning", w))
                        .into_iter()
                        .collect();
                    self.reply(&key, Reply::new(s, r).tag(tag).extra(&warning), cx);
                    return;
                }
            }
        } else if !req.body().is_empty() {
            let ct = req
                .get("Content-Type")
                .map(lossy)
                .unwrap_or_else(|| "application/octet-stream".to_owned());
            body = Some((ct, req.body().to_vec()));
        }
        let mut extra: Vec<(&str, String)> = Vec::new();
        for name in ["Reason", "Info-Package", "Event"] {
            for v in req.get_all(name) {
                extra.push((name, lossy(v)));
            }
        }
        let b = body.as_ref().map(|(ct, b)| (ct.as_str(), b.as_slice()));
        let sent = if is_invite {
            if let Some(c) = self.calls.get_mut(&call) {
                c.invite_busy = true;
            }
            let p = Purpose::Invite(InviteRelay {
                server: key.clone(),
                from: leg,
                initial: false,
            });
            self.send_request(
                call,
                other,
                Outgoing {
                    method: "INVITE",
                    purpose: p,
                    extra: &extra,
                    body: b,
                },
                cx,
            )
        } else {
            let m = req.method().map_or("INFO", |m| m.as_str()).to_owned();
            let p = Purpose::Relay {
                server: key.clone(),
                from: leg,
            };
            self.send_request(
                call,
                other,
                Outgoing {
                    method: &m,
                    purpose: p,
                    extra: &extra,
                    body: b,
                },
                cx,
            )
        };
        if sent.is_none() {
            self.reply(&key, Reply::new(500, "Server Internal Error").tag(tag), cx);
        }
    }

    /// Anchors SDP that `from` sent, for the other leg: rewritten onto the other side's ports,
    /// and `from`'s media address noted.
    ///
    /// `in_reply`: the body came in a response or an ACK, so it answers our offer when one
    /// went to `from` (else, as in a request, it is an offer).
    pub(super) fn anchor_from(
        &mut self,
        call: CallId,
        from: Leg,
        body: &[u8],
        in_reply: bool,
    ) -> Result<Vec<u8>, SdpError> {
        let addr = self.cfg.media_address;
        let Some(c) = self.calls.get_mut(&call) else {
            return Err(SdpError::NoPorts { index: 0 });
        };
        let answer = in_reply && c.srtp.awaits_answer(from);
        let ports = c.ports(from.other());
        let srtp = &mut c.srtp;
        let a = anchor(body, addr, ports, |o| {
            if answer {
                srtp.on_answer(from, o)
            } else {
                srtp.on_offer(from, o)
            }
        })?;
        match from {
            Leg::A => c.a_remote = a.remote.or(c.a_remote),
            Leg::B => c.b_remote = a.remote.or(c.b_remote),
        }
        // A loop call we answered: each leg has only ever seen our own session (RFC 3264 §8).
        if let Some(lp) = c.lp.as_mut().filter(|l| l.answered) {
            let o = match from {
                Leg::A => &mut lp.origin_b,
                Leg::B => &mut lp.origin_a,
            };
            o.version = o.version.wrapping_add(1);
            return Ok(set_origin(&a.body, addr, *o));
        }
        Ok(a.body)
    }

    /// Tells the shell about media once both sides have described theirs, and on change.
    pub(super) fn media_update(&mut self, call: CallId, cx: &mut Cx<'_>) {
        let Some(c) = self.calls.get_mut(&call) else {
            return;
        };
        if c.ended() {
            return;
        }
        let (Some(ar), Some(br)) = (c.a_remote, c.b_remote) else {
            return;
        };
        let a = LegMedia {
            local: c.ports_a,
            remote: Some(ar.0),
            codecs: ar.1,
        };
        let b = LegMedia {
            local: c.ports_b,
            remote: Some(br.0),
            codecs: br.1,
        };
        let rekeyed = c.srtp.epoch != c.last_srtp;
        if c.last_media != Some((a, b)) || rekeyed {
            c.last_media = Some((a, b));
            c.last_srtp = c.srtp.epoch;
            let srtp = if c.srtp.any() {
                match c.srtp.relay() {
                    Ok(s) => Some(Box::new(s)),
                    Err(_) => {
                        // Keys we agreed but cannot use: no call rather than media nobody
                        // can read (or worse, sent in the clear).
                        self.hangup(call, EndCause::Failed(Side::Internal), None, cx);
                        return;
                    }
                }
            } else {
                None
            };
            cx.out.push(Output::Media { call, a, b, srtp });
        }
    }

    pub(super) fn on_dialog_ack(&mut self, call: CallId, leg: Leg, msg: &Message, cx: &mut Cx<'_>) {
        let seq = msg.cseq().map(|c| c.seq);
        let Some(c) = self.calls.get_mut(&call) else {
            return;
        };
        let Some(w) = c.ack_wait else { return };
        if w.from != leg || Some(w.from_cseq) != seq {
            return;
        }
        c.ack_wait = None;
        c.retrans = None;
        c.invite_busy = false;
        if w.own {
            self.own_ack(call, msg, cx);
            return;
        }
        let first = c.phase == Phase::Calling;
        if first {
            c.phase = Phase::Confirmed;
        }
        // Late offer: the answer comes in this ACK (RFC 3261 §13.2.1).
        let mut body = None;
        if is_sdp(msg) {
            match self.anchor_from(call, leg, msg.body(), true) {
                Ok(b) => body = Some(b),
                Err(_) => {
                    // An answer we cannot relay: the call cannot have media; end it.
                    self.send_ack(call, leg.other(), w.to_cseq, None, cx);
                    self.hangup(call, EndCause::Failed(Side::from(leg)), None, cx);
                    return;
                }
            }
        }
        let b = body.as_deref().map(|b| ("application/sdp", b));
        self.send_ack(call, leg.other(), w.to_cseq, b, cx);
        self.media_update(call, cx);
        if first {
            let agent = self.calls.get(&call).and_then(|c| c.agent.clone());
            cx.out.push(Output::Event {
                call,
                event: CallEvent::Answered { agent },
            });
        }
    }

    /// A response to a non-INVITE request we relayed from leg `from`.
    pub(super) fn relay_response(
        &mut self,
        call: CallId,
        from: Leg,
        server: &SKey,
        msg: &Message,
        status: u16,
        cx: &mut Cx<'_>,
    ) {
        if status < 200 {
            return; // provisionals to non-INVITE stay hop-by-hop
        }
        let tag = self.calls.get(&call).map(|c| c.local_tag(from).to_owned());
        let mut body = None;
        if is_sdp(msg) {
            if let Ok(b) = self.anchor_from(call, from.other(), msg.body(), true) {
                body = Some(("application/sdp", b));
            }
            self.media_update(call, cx);
        }
        let reason = Self::reason_of(msg);
        let timer = if (200..300).contains(&status) {
            self.timer_headers(server)
        } else {
            Vec::new()
        };
        let timer: Vec<(&str, String)> = timer.into_iter().collect();
        self.reply(
            server,
            Reply::new(map_failure(status), &reason)
                .maybe_tag(tag.as_deref())
                .extra(&timer)
                .body(body),
            cx,
        );
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn info_digit_bodies() {
        let d = info_digit("dtmf-relay", b"Signal=5\r\nDuration=160\r\n").unwrap();
        assert_eq!(d, Digit::from_char('5').unwrap());
        assert_eq!(info_digit("dtmf", b"#\r\n"), Digit::from_char('#'));
        assert_eq!(info_digit("dtmf-relay", b"Duration=160\r\n"), None);
        assert_eq!(info_digit("dtmf", b"12"), None);
    }
}
