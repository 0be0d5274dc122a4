//! New calls: admission of a trunk INVITE to a route, its ports, media and dialogs, the
//! B-leg INVITE, and the responses to relayed INVITEs.

#![warn(clippy::unwrap_used, clippy::indexing_slicing)]

use std::net::{IpAddr, SocketAddr};

use super::B2bua;
use super::context::{Cx, Outgoing, Reply};
use super::media::{
    Origin, anchor, answer_offer, is_sdp, local_offer, sdp_failure_reason, sdp_warning,
};
use super::route::{LocatorSource, LoopRoute, Route, header_locator, match_user};
use super::session_timer::{self, Ask, SessionTimer};
use super::srtp::CallSrtp;
use super::state::{AckWait, CallLegs, Incoming, InviteRelay, LoopCall, Phase, Purpose, SKey};
use super::transactions::{ALLOW, lossy, map_failure};
use super::types::{CallEvent, CallId, EndCause, Leg, Output, Refusal, RelayPorts};
use crate::rtp::srtp::SrtpPolicy;
use crate::sip::dialog::{Dialog, is_sips};
use crate::sip::headers::Contacts;
use crate::sip::message::Message;
use crate::sip::sdp::{Codecs, SdpError};
use crate::sip::transaction::{ServerState, TxAction, TxKind};
use crate::sip::uri::Uri;
use crate::sip::{Side, Transport};

fn uri_user<'a>(uri: &Uri<'a>) -> Option<&'a str> {
    match uri {
        Uri::Sip(s) => s.user,
        Uri::Tel(t) => Some(t.number),
        _ => None,
    }
}

/// A new INVITE that passed admission: its route and what the Request-URI or a header said.
struct Admission {
    route: usize,
    ruri_user: Option<String>,
    locator: Option<String>,
    /// Loop route with no locator yet and DTMF allowed: we answer the caller ourselves.
    dtmf_mode: bool,
    max_forwards: u8,
}

/// Why a new INVITE is refused before it becomes a call, as the answer says it.
struct SetupRefusal {
    status: u16,
    reason: &'static str,
    extra: Vec<(&'static str, String)>,
}

impl SetupRefusal {
    fn new(status: u16, reason: &'static str) -> SetupRefusal {
        SetupRefusal {
            status,
            reason,
            extra: Vec::new(),
        }
    }

    fn with(mut self, name: &'static str, value: String) -> SetupRefusal {
        self.extra.push((name, value));
        self
    }
}

/// The media side of a new call.
#[derive(Default)]
struct SetupMedia {
    /// The trunk's offer anchored on the B ports, relayed to the contact centre.
    offer: Option<Vec<u8>>,
    /// Where the trunk wants media, and its codecs.
    a_remote: Option<(SocketAddr, Codecs)>,
    /// Our own answer (or late-offer offer) to the trunk, in DTMF mode.
    own_answer: Option<Vec<u8>>,
    /// What the trunk and we agreed on, in DTMF mode.
    a_codecs: Option<Codecs>,
}

/// The caller's user (for our From towards the contact centre) and the dialled user (for
/// its To). A loop call's To is the return number itself: the loop number (and a locator in
/// it) means nothing to the contact centre.
fn b_users(msg: &Message, adm: &Admission, looped: bool) -> (String, Option<String>) {
    let from_user = msg
        .from()
        .ok()
        .and_then(|n| uri_user(&n.uri).map(str::to_owned))
        .unwrap_or_else(|| "anonymous".to_owned());
    let to_user = msg
        .to()
        .ok()
        .and_then(|n| uri_user(&n.uri).map(str::to_owned))
        .or(adm.ruri_user.clone())
        .filter(|_| !looped);
    (from_user, to_user)
}

/// Our dialog with the trunk, from its INVITE (§12.1.1).
fn a_dialog(msg: &Message, from: SocketAddr, transport: Transport, tag: &str) -> Dialog {
    let from_na = msg.from().ok();
    let contact = match msg.contacts() {
        Ok(Contacts::List(l)) => l.first().map(|n| n.uri_raw.to_owned()),
        _ => None,
    };
    let remote_target = contact
        .or_else(|| from_na.as_ref().map(|n| n.uri_raw.to_owned()))
        .unwrap_or_else(|| format!("sip:{from}"));
    Dialog {
        call_id: msg.call_id().unwrap_or_default().to_owned(),
        local: format!("{};tag={tag}", lossy(msg.get("To").unwrap_or(b""))),
        remote: lossy(msg.get("From").unwrap_or(b"")),
        local_tag: tag.to_owned(),
        remote_tag: msg.from_tag().map(str::to_owned),
        remote_target,
        route_set: msg.get_all("Record-Route").map(lossy).collect(),
        local_cseq: 0,
        remote_cseq: msg.cseq().map(|c| c.seq),
        peer: from,
        transport,
        last_ack: None,
    }
}

impl B2bua {
    /// A received request: its transaction's retransmission, refused, or handed to the
    /// CANCEL, in-dialog or new-call paths.
    pub(super) fn on_request(
        &mut self,
        transport: Transport,
        from: SocketAddr,
        msg: Message,
        cx: &mut Cx<'_>,
    ) {
        let Some(method) = msg.method().map(|m| m.as_str().to_owned()) else {
            return;
        };
        let branch = msg
            .top_via()
            .and_then(|v| v.branch().map(str::to_owned))
            .unwrap_or_default();
        let key_method = if method == "ACK" {
            "INVITE".to_owned()
        } else {
            method.clone()
        };
        let key: SKey = (from, branch, key_method);
        if self.absorbed_by_transaction(&key, &method, cx) {
            return;
        }
        // The allow-list applies to every request, in a dialog or not, before anything is
        // looked up: a stranger learns nothing of which identifiers are live.
        if !self.allowed_source(from.ip()) {
            self.refuse_request(&msg, &method, transport, from, Refusal::Stranger, cx);
            return;
        }
        let to_tag = msg.to_tag().map(str::to_owned);
        let inc = Incoming {
            transport,
            from,
            msg,
            method,
            key,
        };
        if inc.method == "CANCEL" {
            self.on_cancel(inc, cx);
        } else if let Some(tag) = to_tag {
            self.in_dialog(inc, &tag, cx);
        } else if inc.method != "ACK" {
            // A stray ACK gets nothing (§17.2.3).
            self.out_of_dialog(inc, cx);
        }
    }

    /// Retransmissions and ACKs of non-2xx finals belong to their transaction (§17.2.3):
    /// true when the request ends there. A 2xx ACK reusing the INVITE's branch goes on to
    /// the dialog.
    fn absorbed_by_transaction(&mut self, key: &SKey, method: &str, cx: &mut Cx<'_>) -> bool {
        let Some(e) = self.servers.get_mut(key) else {
            return false;
        };
        let terminated = e.tx.state() == ServerState::Terminated;
        let actions = if method == "ACK" {
            if terminated {
                Vec::new() // a 2xx ACK reusing the branch: dialog level below
            } else {
                e.tx.on_ack(cx.now)
            }
        } else {
            e.tx.on_retransmission()
        };
        let (t, p) = (e.transport, e.peer);
        let is_2xx_ack = method == "ACK" && e.tx.state() == ServerState::Terminated;
        let inv_2xx = method == "INVITE" && e.tx.state() == ServerState::Terminated;
        let call = e.call;
        for a in actions {
            if let TxAction::Send(b) = a {
                cx.send(t, p, b);
            }
        }
        // The transaction ended with our 2xx; until the ACK, the TU answers a
        // retransmitted INVITE with that 2xx again (§13.3.1.4).
        if inv_2xx && let Some(r) = call.and_then(|c| self.calls.get(&c)?.retrans.as_ref()) {
            cx.send(t, p, r.bytes.clone());
        }
        !is_2xx_ack
    }

    /// A request outside any dialog other than CANCEL and ACK.
    fn out_of_dialog(&mut self, inc: Incoming, cx: &mut Cx<'_>) {
        match inc.method.as_str() {
            "INVITE" => self.new_call(inc, cx),
            "BYE" | "INFO" | "UPDATE" => {
                let (t, f) = (inc.transport, inc.from);
                let r = "Call/Transaction Does Not Exist";
                self.reply_stateless(&inc.msg, t, f, 481, r, cx);
            }
            other => {
                let mut extra = vec![("Allow", ALLOW.to_owned())];
                let answer = if other != "OPTIONS" {
                    Reply::new(501, "Not Implemented")
                } else if self.accepting() {
                    extra.push(("Accept", "application/sdp".to_owned()));
                    Reply::new(200, "OK")
                } else {
                    // A load balancer probes with OPTIONS (Kamailio's dispatcher): answer
                    // what an INVITE would get now, so it sends new calls elsewhere.
                    extra.push(("Retry-After", self.cfg.retry_after_s.to_string()));
                    Reply::new(503, "Service Unavailable")
                };
                let key = inc.key.clone();
                let Incoming {
                    transport,
                    from,
                    msg,
                    ..
                } = inc;
                self.new_server(key.clone(), None, TxKind::NonInvite, transport, from, msg);
                self.reply(&key, answer.extra(&extra), cx);
            }
        }
    }

    /// A new INVITE from the trunk side: admitted to a route, given ports and media, set up
    /// as a call, and relayed to the contact centre (inline) or held while the locator is
    /// learnt (loop).
    pub(super) fn new_call(&mut self, inc: Incoming, cx: &mut Cx<'_>) {
        let Incoming {
            transport,
            from,
            msg,
            key,
            ..
        } = inc;
        // §17.2.1: 100 Trying at once, so the trunk stops retransmitting.
        self.new_server(
            key.clone(),
            None,
            TxKind::Invite,
            transport,
            from,
            msg.clone(),
        );
        self.reply(&key, Reply::new(100, "Trying"), cx);
        let tag = self.new_id("a");
        let refuse = |s: &mut B2bua, no: SetupRefusal, cx: &mut Cx<'_>| {
            let r = Reply::new(no.status, no.reason).tag(&tag);
            s.reply(&key, r.extra(&no.extra), cx);
        };
        // A SIPS Request-URI asks for TLS on every hop (RFC 3261 §26.2.2, RFC 5630 §3.1.3): one
        // that reached us in the clear has already lost that, so the call is not taken.
        if transport != Transport::Tls && msg.request_uri_str().is_some_and(is_sips) {
            let w = format!(
                "399 {} \"SIPS Request-URI over {}\"",
                self.cfg.sip_host,
                transport.via_name()
            );
            return refuse(
                self,
                SetupRefusal::new(403, "Forbidden").with("Warning", w),
                cx,
            );
        }
        let adm = match self.admit(&msg, from.ip()) {
            Ok(adm) => adm,
            Err(no) => return refuse(self, no, cx),
        };
        let timer = match session_timer::ask(&msg) {
            Ask::TooSmall { min_se_s } => {
                let no = SetupRefusal::new(422, "Session Interval Too Small");
                return refuse(self, no.with("Min-SE", min_se_s.to_string()), cx);
            }
            Ask::Timer {
                interval_s,
                refresher,
                trunk_supports,
            } => Some(SessionTimer::new(
                interval_s,
                refresher,
                trunk_supports,
                cx.now,
            )),
            Ask::None => None,
        };
        let (Some(pa), Some(pb)) = (cx.ports.allocate(), cx.ports.allocate()) else {
            // Either may have succeeded; give it back.
            return refuse(self, SetupRefusal::new(503, "Service Unavailable"), cx);
        };
        let origin_a = self.new_origin();
        let mut srtp = match self.cfg.routes.get(adm.route) {
            Some(r) if r.loop_route.is_none() => CallSrtp::new(r.srtp_trunk, r.srtp_target),
            _ => CallSrtp::new(SrtpPolicy::Off, SrtpPolicy::Off),
        };
        let setup = self.setup_media(&msg, adm.dtmf_mode, (pa, pb), origin_a, &mut srtp);
        let media = match setup {
            Ok(m) => m,
            Err(e) => {
                cx.ports.release(pa);
                cx.ports.release(pb);
                let status = e.sip_status();
                let mut no = SetupRefusal::new(status, sdp_failure_reason(status));
                if let Some(w) = sdp_warning(&e, &self.cfg.sip_host) {
                    no = no.with("Warning", w);
                }
                return refuse(self, no, cx);
            }
        };
        let Some(r) = self.cfg.routes.get(adm.route).cloned() else {
            return;
        };
        let a = a_dialog(&msg, from, transport, &tag);
        let (from_user, to_user) = b_users(&msg, &adm, r.loop_route.is_some());
        let b = self.b_dialog(&r, &from_user, to_user.as_deref());
        let call = self.register_call(&key, &adm, (a, b), (pa, pb), media.a_remote, srtp);
        if let Some(c) = self.calls.get_mut(&call) {
            c.timer = timer;
        }
        cx.out.push(Output::Event {
            call,
            event: CallEvent::Started {
                route: r.name.clone(),
                from: from_user,
                to: adm.ruri_user.clone().unwrap_or_default(),
            },
        });
        let extra = self.b_leg_headers(&msg, adm.max_forwards, r.loop_route.as_ref());
        if let Some(lr) = &r.loop_route {
            let origin_b = self.new_origin();
            if let Some(c) = self.calls.get_mut(&call) {
                c.lp = Some(LoopCall {
                    server: key.clone(),
                    answered: media.own_answer.is_some(),
                    deadline: cx.now + lr.locator_timeout_ms,
                    offer: media.offer,
                    extra,
                    found: None,
                    fallback_used: false,
                    a_codecs: media.a_codecs,
                    origin_a,
                    origin_b,
                });
            }
            self.start_loop(call, adm.locator, media.own_answer, cx);
            return;
        }
        let body = media.offer.as_deref().map(|b| ("application/sdp", b));
        let purpose = Purpose::Invite(InviteRelay {
            server: key.clone(),
            from: Leg::A,
            initial: true,
        });
        // Max-Forwards is set through `extra`; drop the dialog default.
        let extra: Vec<(&str, String)> =
            extra.iter().map(|(n, v)| (n.as_str(), v.clone())).collect();
        let sent = self.send_invite(call, Leg::B, purpose, &extra, body, cx);
        if sent.is_none() {
            self.reply(&key, Reply::new(500, "Server Internal Error").tag(&tag), cx);
            // Our own INVITE could not be built.
            self.end_call(call, EndCause::Failed(Side::Internal), cx);
        }
    }

    /// Whether a new INVITE from `src` may become a call, and on which route: the checks
    /// that need no ports, in the order their answers are owed.
    fn admit(&self, msg: &Message, src: IpAddr) -> Result<Admission, SetupRefusal> {
        let ruri_user = msg
            .request_uri()
            .and_then(|u| uri_user(&u).map(str::to_owned));
        let found = self.cfg.routes.iter().enumerate().find_map(|(i, r)| {
            let src_ok = r.sources.is_empty() || r.sources.iter().any(|n| n.contains(&src));
            if !src_ok {
                return None;
            }
            match_user(r, ruri_user.as_deref()).map(|loc| (i, r, loc))
        });
        let Some((route, r, ruri_locator)) = found else {
            return Err(SetupRefusal::new(404, "Not Found"));
        };
        // Loop route: the locator from the Request-URI or header, else DTMF after we answer.
        let lr = r.loop_route.as_ref();
        let locator = lr.and_then(|lr| {
            lr.locator_from.iter().find_map(|src| match src {
                LocatorSource::Ruri => ruri_locator.clone(),
                LocatorSource::Header => header_locator(msg, &lr.locator_header),
                LocatorSource::Dtmf => None,
            })
        });
        let dtmf_mode = lr
            .is_some_and(|lr| locator.is_none() && lr.locator_from.contains(&LocatorSource::Dtmf));
        // §16.3 item 2 applied by a UA relaying a request: Max-Forwards 0 ends here.
        let max_forwards = msg.max_forwards().unwrap_or(70);
        if max_forwards == 0 {
            return Err(SetupRefusal::new(483, "Too Many Hops"));
        }
        // §8.2.2.3: we support no extension, so any Require is unknown (100rel included).
        if let Ok(req) = msg.require()
            && !req.is_empty()
        {
            let list = req.join(", ");
            return Err(SetupRefusal::new(420, "Bad Extension").with("Unsupported", list));
        }
        if self.draining() || self.active >= self.cfg.max_calls {
            let ra = self.cfg.retry_after_s.to_string();
            return Err(SetupRefusal::new(503, "Service Unavailable").with("Retry-After", ra));
        }
        if !msg.body().is_empty() && !is_sdp(msg) {
            let no = SetupRefusal::new(415, "Unsupported Media Type");
            return Err(no.with("Accept", "application/sdp".to_owned()));
        }
        Ok(Admission {
            route,
            ruri_user,
            locator,
            dtmf_mode,
            max_forwards,
        })
    }

    /// The trunk's offer anchored on the B ports for the contact centre (inline, or a loop
    /// call that relays it), or answered by us on the A ports (DTMF mode: we take the call).
    fn setup_media(
        &self,
        msg: &Message,
        dtmf_mode: bool,
        (pa, pb): (RelayPorts, RelayPorts),
        origin_a: Origin,
        srtp: &mut CallSrtp,
    ) -> Result<SetupMedia, SdpError> {
        let addr = self.cfg.media_address;
        let mut media = SetupMedia::default();
        if !is_sdp(msg) {
            if dtmf_mode {
                // Late offer: we offer; the answer comes in the ACK (RFC 3261 §13.2.1).
                let codecs = [(0, "PCMU"), (8, "PCMA"), (101, "telephone-event")];
                media.own_answer = Some(local_offer(addr, pa, &codecs, origin_a));
            }
            return Ok(media);
        }
        if dtmf_mode {
            // We answer the caller ourselves, on the A ports (RFC 3264 §6).
            let a = answer_offer(msg.body(), addr, pa, None, origin_a)?;
            media.a_codecs = Some(a.codecs);
            media.own_answer = Some(a.body);
            media.a_remote = Some((a.remote, a.codecs));
        } else {
            let a = anchor(msg.body(), addr, pb, |o| srtp.on_offer(Leg::A, o))?;
            media.a_remote = a.remote;
            media.offer = Some(a.body);
        }
        Ok(media)
    }

    /// Our dialog with the contact centre for a new call on route `r`.
    fn b_dialog(&mut self, r: &Route, from_user: &str, to_user: Option<&str>) -> Dialog {
        let target_host = Uri::parse(&r.target_uri)
            .ok()
            .and_then(|u| {
                u.as_sip().map(|s| match s.port {
                    Some(p) => format!("{}:{p}", s.host),
                    None => s.host.to_string(),
                })
            })
            .unwrap_or_else(|| r.target.to_string());
        let b_tag = self.new_id("b");
        Dialog {
            call_id: format!("{}@tonewall", self.new_id("tw")),
            local: format!("<sip:{from_user}@{}>;tag={b_tag}", self.cfg.sip_host),
            remote: match to_user {
                Some(u) => format!("<sip:{u}@{target_host}>"),
                None => format!("<{}>", r.target_uri),
            },
            local_tag: b_tag,
            remote_tag: None,
            remote_target: r.target_uri.clone(),
            route_set: Vec::new(),
            local_cseq: 0,
            remote_cseq: None,
            peer: r.target,
            transport: r.transport,
            last_ack: None,
        }
    }

    /// Files a new call under a fresh id: counted, its dialogs findable by Call-ID, the
    /// trunk's INVITE transaction tied to it.
    fn register_call(
        &mut self,
        key: &SKey,
        adm: &Admission,
        (a, b): (Dialog, Dialog),
        (ports_a, ports_b): (RelayPorts, RelayPorts),
        a_remote: Option<(SocketAddr, Codecs)>,
        srtp: CallSrtp,
    ) -> CallId {
        let call = self.new_call_id();
        self.active += 1;
        if let Some(e) = self.servers.get_mut(key) {
            e.call = Some(call);
        }
        self.dialogs.insert(a.call_id.clone(), (call, Leg::A));
        self.dialogs.insert(b.call_id.clone(), (call, Leg::B));
        let looped = self
            .cfg
            .routes
            .get(adm.route)
            .is_some_and(|r| r.loop_route.is_some());
        self.calls.insert(
            call,
            CallLegs {
                route: adm.route,
                phase: if looped {
                    Phase::Locating
                } else {
                    Phase::Calling
                },
                a,
                b,
                b_invite: None,
                cancel_pending: false,
                invite_busy: true,
                ports_a,
                ports_b,
                a_remote,
                b_remote: None,
                last_media: None,
                retrans: None,
                ack_wait: None,
                lp: None,
                srtp,
                last_srtp: 0,
                timer: None,
                agent: None,
            },
        );
        call
    }

    /// What crosses to the B-leg: identities and the configured headers, never routing.
    fn b_leg_headers(
        &self,
        msg: &Message,
        max_forwards: u8,
        lr: Option<&LoopRoute>,
    ) -> Vec<(String, String)> {
        let mut extra = vec![("Max-Forwards".to_owned(), (max_forwards - 1).to_string())];
        for v in msg.get_all("P-Asserted-Identity") {
            extra.push(("P-Asserted-Identity".to_owned(), lossy(v)));
        }
        for name in &self.cfg.carry_headers {
            // A loop call's agent and locator headers are ours to set, never the caller side's.
            let ours = lr.is_some_and(|lr| {
                name.eq_ignore_ascii_case(&lr.agent_header)
                    || name.eq_ignore_ascii_case(&lr.locator_header)
            });
            if ours {
                continue;
            }
            for v in msg.get_all(name) {
                extra.push((name.clone(), lossy(v)));
            }
        }
        extra.push(("Allow".to_owned(), ALLOW.to_owned()));
        extra
    }

    /// Sends an INVITE on `leg` and remembers its branch for CANCEL.
    pub(super) fn send_invite(
        &mut self,
        call: CallId,
        leg: Leg,
        purpose: Purpose,
        extra: &[(&str, String)],
        body: Option<(&str, &[u8])>,
        cx: &mut Cx<'_>,
    ) -> Option<u32> {
        let (seq, branch) = self.send_request(
            call,
            leg,
            Outgoing {
                method: "INVITE",
                purpose,
                extra,
                body,
            },
            cx,
        )?;
        if leg == Leg::B
            && let Some(c) = self.calls.get_mut(&call)
        {
            c.b_invite = Some(branch);
        }
        Some(seq)
    }

    /// A response to an INVITE relayed from leg `relay.from` onto `leg`.
    pub(super) fn invite_response(
        &mut self,
        call: CallId,
        leg: Leg,
        relay: InviteRelay,
        msg: &Message,
        status: u16,
        cx: &mut Cx<'_>,
    ) {
        let initial = relay.initial;
        // §9.1: a CANCEL waits for a provisional response (a 100 will do).
        if initial && status < 200 && self.calls.get(&call).is_some_and(|c| c.cancel_pending) {
            self.cancel_b(call, cx);
            return;
        }
        if status == 100 {
            return; // hop-by-hop; we sent our own
        }
        let Some(c) = self.calls.get_mut(&call) else {
            return;
        };
        let cancelled = initial && matches!(c.phase, Phase::Cancelling | Phase::Ended { .. });
        learn_dialog(c, leg, initial, msg, status);
        if cancelled {
            // The trunk gave up while the contact centre answered (CANCEL crossing a 200):
            // confirm and end the B dialog (§15: ACK then BYE).
            if (200..300).contains(&status) {
                let seq = msg.cseq().map_or(1, |c| c.seq);
                self.send_ack(call, leg, seq, None, cx);
                self.bye(call, leg, &[], cx);
            }
            return;
        }
        let Some(c) = self.calls.get(&call) else {
            return;
        };
        let tag = c.local_tag(relay.from).to_owned();
        let mut body = None;
        if is_sdp(msg) && status < 300 {
            match self.anchor_from(call, leg, msg.body(), true) {
                Ok(b) => body = Some(("application/sdp", b)),
                Err(_) if status >= 200 => {
                    // An answer without a codec we can relay: take the call down on both sides.
                    let seq = msg.cseq().map_or(1, |c| c.seq);
                    self.send_ack(call, leg, seq, None, cx);
                    self.bye(call, leg, &[], cx);
                    let answer = Reply::new(488, "Not Acceptable Here").tag(&tag);
                    let end = initial.then_some(EndCause::Failed(Side::from(leg)));
                    self.fail_invite(call, &relay.server, answer, end, cx);
                    return;
                }
                Err(_) => {}
            }
        }
        let reason = Self::reason_of(msg);
        if status < 200 {
            let extra = [("Contact", self.server_contact(&relay.server))];
            let r = Reply::new(status, &reason).tag(&tag).extra(&extra);
            self.reply(&relay.server, r.body(body), cx);
        } else if status < 300 {
            let Some(req) = self.servers.get(&relay.server).map(|e| e.request.clone()) else {
                return;
            };
            let Some(resp) = self.build_2xx(&relay.server, &req, status, &reason, &tag, body)
            else {
                return;
            };
            let wait = AckWait {
                from: relay.from,
                from_cseq: req.cseq().map_or(0, |c| c.seq),
                to_cseq: msg.cseq().map_or(0, |c| c.seq),
                own: false,
            };
            self.send_2xx_until_ack(call, &relay.server, resp, wait, cx);
        } else {
            self.relay_invite_failure(call, relay, msg, status, &tag, cx);
        }
    }

    /// 3xx-6xx to a relayed INVITE: the same class towards the other side, without the contact
    /// centre's Contact. A loop call's failed return leg goes to the fallback first (the
    /// caller stays).
    fn relay_invite_failure(
        &mut self,
        call: CallId,
        relay: InviteRelay,
        msg: &Message,
        status: u16,
        tag: &str,
        cx: &mut Cx<'_>,
    ) {
        if relay.initial && relay.from == Leg::A && self.try_fallback(call, cx) {
            return;
        }
        let mapped = map_failure(status);
        let mut extra: Vec<(&str, String)> = Vec::new();
        for name in ["Retry-After", "Reason", "Warning"] {
            for v in msg.get_all(name) {
                extra.push((name, lossy(v)));
            }
        }
        let reason = if mapped == status {
            Self::reason_of(msg)
        } else {
            "Forbidden".to_owned()
        };
        let end = relay.initial.then_some(EndCause::Rejected(status));
        let answer = Reply::new(mapped, &reason).tag(tag).extra(&extra);
        self.fail_invite(call, &relay.server, answer, end, cx);
    }
}

/// What a response to our INVITE on `leg` tells about that dialog: the contact centre's tag
/// of an early dialog (later CANCEL/UPDATE need it), and on a 2xx the confirmed dialog's tag,
/// route set and remote target (§12.1.2).
/// An agent identity from the contact centre's `X-Agent`: 1-64 characters a desk token's name
/// may hold; anything else is ignored (it only labels the call for the agent's desk).
fn agent_id(v: &[u8]) -> Option<String> {
    let v = std::str::from_utf8(v).ok()?.trim();
    let ok = (1..=64).contains(&v.len())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._@+-".contains(&b));
    ok.then(|| v.to_owned())
}

fn learn_dialog(c: &mut CallLegs, leg: Leg, initial: bool, msg: &Message, status: u16) {
    if initial
        && status > 100
        && status < 200
        && c.b.remote_tag.is_none()
        && let Some(t) = msg.to_tag()
    {
        c.b.remote_tag = Some(t.to_owned());
        c.b.remote = lossy(msg.get("To").unwrap_or(b""));
    }
    if !(200..300).contains(&status) {
        return;
    }
    if initial && leg == Leg::B {
        c.agent = msg.get("X-Agent").and_then(agent_id);
    }
    let d = c.dialog(leg);
    if initial {
        d.remote_tag = msg.to_tag().map(str::to_owned);
        d.remote = lossy(msg.get("To").unwrap_or(b""));
        let mut rr: Vec<String> = msg.get_all("Record-Route").map(lossy).collect();
        rr.reverse();
        d.route_set = rr;
    }
    if let Ok(Contacts::List(l)) = msg.contacts()
        && let Some(n) = l.first()
    {
        d.remote_target = n.uri_raw.to_owned();
    }
}
