//! The loop model (PCI Pal style) on top of the B2BUA core: the contact centre transfers the
//! caller to our loop number, we learn a locator (Request-URI, header, or DTMF after answering
//! the caller ourselves), the shell resolves it to an agent, and we call the contact centre's
//! return number with that agent in a header, then bridge the two legs like an inline call.
//!
//! Owns the per-call loop state, locator extraction, the SDP we write ourselves when we answer
//! the A-leg or offer to the return leg (RFC 3264), and the failure paths (fallback URI, failure
//! tone then BYE, 404). It never reads a clock: deadlines are `now`-based like the rest of the
//! core, and it never puts an agent or locator that is not header-safe on the wire.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use rand::Rng;

use super::{
    ALLOW, AckWait, B2bua, CallEvent, CallId, Dialog, EndCause, Leg, LegMedia, LocateOutcome,
    Output, Phase, PortAllocator, Purpose, RelayPorts, Retrans, Route, SKey, is_sdp, lossy,
    sdp_failure_reason,
};
use crate::config::{LocatorSource, OnFailure, Transport};
use crate::sip::message::{Message, ResponseBuilder};
use crate::sip::sdp::{Codecs, Direction, Sdp, SdpError};

/// Telephone-event payload type we use in our own offers (RFC 4733 §7: dynamic).
const TE_PT: u8 = 101;

/// Our SDP origin towards one leg (RFC 8866 §5.2): the version steps with every description
/// we send, so the peer reads each as a modification of one session (RFC 3264 §8).
#[derive(Debug, Clone, Copy)]
pub(super) struct Origin {
    pub session: u64,
    pub version: u64,
}

impl Origin {
    fn next(&mut self) -> Origin {
        self.version = self.version.wrapping_add(1);
        *self
    }
}

/// A loop call's state beside the common [`super::Call`] fields.
#[derive(Debug)]
pub(super) struct LoopCall {
    /// The A-leg's initial INVITE server transaction.
    pub server: SKey,
    /// We answered the A-leg ourselves (DTMF mode); otherwise its INVITE is still open.
    pub answered: bool,
    /// End of locating (Phase::Locating).
    pub deadline: u64,
    /// A's offer anchored on the B ports (Request-URI/header mode): the return leg's offer.
    pub offer: Option<Vec<u8>>,
    /// Headers for the return INVITE besides agent and locator (Max-Forwards, identities,
    /// carried headers).
    pub extra: Vec<(String, String)>,
    /// Agent and locator once found.
    pub found: Option<(String, String)>,
    pub fallback_used: bool,
    /// What the A-leg and we agreed on (DTMF mode).
    pub a_codecs: Option<Codecs>,
    pub origin_a: Origin,
    pub origin_b: Origin,
}

/// A locator is a short run of digits.
fn is_locator(s: &str) -> bool {
    (1..=32).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit())
}

/// Agent ids and locators go into header values: printable ASCII only (no CR/LF injection).
fn header_safe(s: &str) -> bool {
    (1..=128).contains(&s.len()) && s.bytes().all(|b| (0x20..0x7f).contains(&b))
}

/// Whether `route` takes a call to `ruri_user`, and the locator the Request-URI carries.
/// `None`: no match. A loop route with user `pay` also takes `pay*1234` / `pay-1234`; one with
/// no user reads an all-digit user as the locator.
pub(super) fn match_user(route: &Route, ruri_user: Option<&str>) -> Option<Option<String>> {
    let Some(lr) = &route.loop_route else {
        return route
            .user
            .as_deref()
            .is_none_or(|u| Some(u) == ruri_user)
            .then_some(None);
    };
    let from_ruri = lr.locator_from.contains(&LocatorSource::Ruri);
    let Some(u) = route.user.as_deref() else {
        let loc = ruri_user.filter(|u| from_ruri && is_locator(u));
        return Some(loc.map(str::to_owned));
    };
    let ru = ruri_user?;
    if ru == u {
        return Some(None);
    }
    let rest = ru.strip_prefix(u)?;
    let loc = ["*", "%2A", "%2a", "-"]
        .iter()
        .find_map(|sep| rest.strip_prefix(sep))?;
    is_locator(loc).then(|| from_ruri.then(|| loc.to_owned()))
}

/// The locator in header `name` of the INVITE, if it holds one.
pub(super) fn header_locator(msg: &Message, name: &str) -> Option<String> {
    msg.get_all(name)
        .filter_map(|v| std::str::from_utf8(v).ok())
        .map(str::trim)
        .find(|v| is_locator(v))
        .map(str::to_owned)
}

fn ip_kind(addr: IpAddr) -> &'static str {
    if addr.is_ipv4() { "IP4" } else { "IP6" }
}

fn session_head(addr: IpAddr, o: Origin) -> String {
    let k = ip_kind(addr);
    format!(
        "v=0\r\no=tonewall {} {} IN {k} {addr}\r\ns=tonewall\r\nc=IN {k} {addr}\r\nt=0 0\r\n",
        o.session, o.version
    )
}

fn audio_lines(out: &mut String, ports: RelayPorts, proto: &str, codecs: &[(u8, &str)]) {
    let pts: Vec<String> = codecs.iter().map(|(pt, _)| pt.to_string()).collect();
    let _ = write!(out, "m=audio {} {proto} {}\r\n", ports.rtp, pts.join(" "));
    if ports.rtcp != ports.rtp.wrapping_add(1) {
        // RFC 3605: RTCP is not on the port above RTP.
        let _ = write!(out, "a=rtcp:{}\r\n", ports.rtcp);
    }
    for (pt, name) in codecs {
        let _ = write!(out, "a=rtpmap:{pt} {name}/8000\r\n");
        if *name == "telephone-event" {
            let _ = write!(out, "a=fmtp:{pt} 0-15\r\n");
        }
    }
    out.push_str("a=ptime:20\r\n");
}

/// Our offer on `ports`: `codecs` in order of preference (RFC 3264 §5).
pub(super) fn local_offer(
    addr: IpAddr,
    ports: RelayPorts,
    codecs: &[(u8, &str)],
    o: Origin,
) -> Vec<u8> {
    let mut s = session_head(addr, o);
    audio_lines(&mut s, ports, "RTP/AVP", codecs);
    s.push_str("a=sendrecv\r\n");
    s.into_bytes()
}

/// The offer for the return leg: the codec the A-leg uses (both G.711 laws when not known
/// yet) and telephone-event, with the A-leg's payload type numbers, so that the relay passes
/// packets between the legs without renumbering (RFC 3264 §6.1: the answer keeps them).
fn return_offer_codecs(a: Option<Codecs>) -> Vec<(u8, &'static str)> {
    let mut v = match a {
        Some(Codecs { pcmu: Some(pt), .. }) => vec![(pt, "PCMU")],
        Some(Codecs { pcma: Some(pt), .. }) => vec![(pt, "PCMA")],
        _ => vec![(0, "PCMU"), (8, "PCMA")],
    };
    let te = a.and_then(|c| c.telephone_event).unwrap_or(TE_PT);
    v.push((te, "telephone-event"));
    v
}

/// What we agreed with a peer when we answered its offer ourselves.
pub(super) struct LocalAnswer {
    pub body: Vec<u8>,
    pub remote: SocketAddr,
    pub codecs: Codecs,
}

fn first_audio(sdp: &Sdp<'_>) -> Result<crate::sip::sdp::MediaInfo, SdpError> {
    let media = sdp.media()?;
    let m = media
        .into_iter()
        .find(|m| m.kind == "audio" && !m.is_disabled())
        .ok_or(SdpError::NoG711 { index: 0 })?;
    let proto = m.proto.to_ascii_uppercase();
    if proto.contains("SAVP") {
        return Err(SdpError::Srtp { index: m.index });
    }
    if proto != "RTP/AVP" && proto != "RTP/AVPF" {
        return Err(SdpError::UnsupportedTransport { index: m.index });
    }
    Ok(m)
}

/// Answers `offer` on `ports` (RFC 3264 §6): the first of PCMU/PCMA in the offer's order (the
/// one in `keep` if offered, so a re-offer does not switch laws), telephone-event if offered;
/// every other `m=` line is refused with port 0.
pub(super) fn answer_offer(
    offer: &[u8],
    addr: IpAddr,
    ports: RelayPorts,
    keep: Option<Codecs>,
    o: Origin,
) -> Result<LocalAnswer, SdpError> {
    let sdp = Sdp::parse(offer)?;
    let media = sdp.media()?;
    let audio = first_audio(&sdp)?;
    let c = audio.codecs;
    let kept = keep.and_then(|k| {
        if k.pcmu.is_some() && c.pcmu.is_some() {
            c.pcmu.map(|pt| (pt, "PCMU"))
        } else if k.pcma.is_some() && c.pcma.is_some() {
            c.pcma.map(|pt| (pt, "PCMA"))
        } else {
            None
        }
    });
    let chosen = kept
        .or_else(|| {
            audio.payload_types.iter().find_map(|pt| {
                if Some(*pt) == c.pcmu {
                    Some((*pt, "PCMU"))
                } else if Some(*pt) == c.pcma {
                    Some((*pt, "PCMA"))
                } else {
                    None
                }
            })
        })
        .ok_or(SdpError::NoG711 { index: audio.index })?;
    let remote = audio
        .rtp_addr()
        .ok_or(SdpError::MissingConnection { index: audio.index })?;
    let mut codecs = Codecs::default();
    match chosen.1 {
        "PCMU" => codecs.pcmu = Some(chosen.0),
        _ => codecs.pcma = Some(chosen.0),
    }
    codecs.telephone_event = c.telephone_event;
    let mut list = vec![chosen];
    if let Some(te) = c.telephone_event {
        list.push((te, "telephone-event"));
    }
    let dir = match audio.direction {
        Direction::SendRecv => "sendrecv",
        Direction::SendOnly => "recvonly",
        Direction::RecvOnly => "sendonly",
        Direction::Inactive => "inactive",
    };
    let mut s = session_head(addr, o);
    for m in &media {
        if m.index == audio.index {
            audio_lines(&mut s, ports, &m.proto, &list);
            let _ = write!(s, "a={dir}\r\n");
        } else {
            let fmt = m
                .payload_types
                .first()
                .map_or_else(|| "0".to_owned(), u8::to_string);
            let _ = write!(s, "m={} 0 {} {fmt}\r\n", m.kind, m.proto);
        }
    }
    Ok(LocalAnswer {
        body: s.into_bytes(),
        remote,
        codecs,
    })
}

/// Reads a peer's answer to our offer: where its audio goes and which of our codecs it kept.
pub(super) fn read_answer(body: &[u8]) -> Result<(SocketAddr, Codecs), SdpError> {
    let sdp = Sdp::parse(body)?;
    let audio = first_audio(&sdp)?;
    let c = audio.codecs;
    if c.pcmu.is_none() && c.pcma.is_none() {
        return Err(SdpError::NoG711 { index: audio.index });
    }
    let remote = audio
        .rtp_addr()
        .ok_or(SdpError::MissingConnection { index: audio.index })?;
    Ok((remote, c))
}

/// Replaces the `o=` line with ours (RFC 8866 §5.2): the leg keeps seeing one session although
/// the descriptions behind it come from the other leg.
pub(super) fn set_origin(body: &[u8], addr: IpAddr, o: Origin) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 16);
    for line in body.split_inclusive(|b| *b == b'\n') {
        if line.starts_with(b"o=") {
            let term: &[u8] = if line.ends_with(b"\r\n") {
                b"\r\n"
            } else if line.ends_with(b"\n") {
                b"\n"
            } else {
                b""
            };
            let o_line = format!(
                "o=tonewall {} {} IN {} {addr}",
                o.session,
                o.version,
                ip_kind(addr)
            );
            out.extend_from_slice(o_line.as_bytes());
            out.extend_from_slice(term);
        } else {
            out.extend_from_slice(line);
        }
    }
    out
}

impl B2bua {
    fn new_number(&mut self) -> u64 {
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
        now: u64,
        ports: &mut dyn PortAllocator,
        out: &mut Vec<Output>,
    ) {
        let Some(c) = self.calls.get(&call) else {
            return;
        };
        let Some(lp) = &c.lp else { return };
        let server = lp.server.clone();
        // Who asks: the shell rate-limits failed look-ups per source (locators are short).
        let source = server.0.ip();
        if let Some(l) = locator {
            out.push(Output::Locate {
                call,
                locator: Some(l),
                source,
            });
            return;
        }
        let Some(body) = answer else {
            // No locator and DTMF not allowed.
            self.not_found(call, now, ports, out);
            return;
        };
        let Some(req) = self.servers.get(&server).map(|e| e.request.clone()) else {
            return;
        };
        self.answer_own(call, &server, &req, Some(&body), true, now, out);
        self.media_a_only(call, out);
        out.push(Output::Locate {
            call,
            locator: None,
            source,
        });
    }

    /// Sends our own 2xx (with `body`) to the A-leg request of `server`; for an INVITE it is
    /// resent until its ACK (§13.3.1.4), which ends here.
    #[allow(clippy::too_many_arguments)]
    fn answer_own(
        &mut self,
        call: CallId,
        server: &SKey,
        req: &Message,
        body: Option<&[u8]>,
        invite: bool,
        now: u64,
        out: &mut Vec<Output>,
    ) {
        let Some(c) = self.calls.get(&call) else {
            return;
        };
        let tag = c.a.local_tag.clone();
        let (contact, _) = self.local();
        let mut b = ResponseBuilder::new(req, 200, "OK")
            .to_tag(&tag)
            .header("Contact", &contact)
            .header("Allow", ALLOW)
            .header("Server", &self.cfg.user_agent);
        if let Some(body) = body {
            b = b.body("application/sdp", body.to_vec());
        }
        let Ok(resp) = b.build() else { return };
        let bytes = resp.as_bytes().clone();
        self.respond(server, resp, now, out);
        if !invite {
            return;
        }
        let from_cseq = req.cseq().map_or(0, |c| c.seq);
        let t1 = self.cfg.timers.t1;
        let reliable = self
            .servers
            .get(server)
            .is_some_and(|e| e.transport == Transport::Tcp);
        if let Some(c) = self.calls.get_mut(&call) {
            c.invite_busy = true;
            c.ack_wait = Some(AckWait {
                from: Leg::A,
                from_cseq,
                to_cseq: 0,
                own: true,
            });
            c.retrans = Some(Retrans {
                leg: Leg::A,
                bytes,
                next: if reliable { u64::MAX } else { now + t1 },
                interval: t1,
                deadline: now + 64 * t1,
            });
        }
    }

    /// Media with only the A side known (DTMF mode before the return leg answers): the shell
    /// starts the relay so the locator digits can be heard.
    fn media_a_only(&mut self, call: CallId, out: &mut Vec<Output>) {
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
            out.push(Output::Media { call, a, b });
        }
    }

    /// The ACK for our own 2xx on the A-leg; a late offer's answer comes in it (§13.2.1).
    pub(super) fn own_ack(
        &mut self,
        call: CallId,
        msg: &Message,
        now: u64,
        ports: &mut dyn PortAllocator,
        out: &mut Vec<Output>,
    ) {
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
                    self.hangup(call, EndCause::Failed, None, now, ports, out);
                    return;
                }
            }
        }
        self.loop_media(call, out);
        let resolved = self.calls.get(&call).is_some_and(|c| {
            c.phase == Phase::Locating && c.lp.as_ref().is_some_and(|l| l.found.is_some())
        });
        if resolved {
            self.send_return(call, false, now, ports, out);
        }
    }

    fn loop_media(&mut self, call: CallId, out: &mut Vec<Output>) {
        if self.calls.get(&call).is_some_and(|c| c.bridged()) {
            self.media_update(call, out);
        } else {
            self.media_a_only(call, out);
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
        now: u64,
        out: &mut Vec<Output>,
    ) {
        let method = req
            .method()
            .map(|m| m.as_str().to_owned())
            .unwrap_or_default();
        if method == "INFO" {
            self.reply(&key, 200, "OK", Some(tag), &[], None, now, out);
            return;
        }
        let invite = method == "INVITE";
        if invite && self.calls.get(&call).is_some_and(|c| c.invite_busy) {
            // §14.2: one INVITE at a time.
            self.reply(&key, 491, "Request Pending", Some(tag), &[], None, now, out);
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
                    self.reply(&key, s, r, Some(tag), &[], None, now, out);
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
        self.answer_own(call, &key, req, body.as_deref(), invite, now, out);
        self.loop_media(call, out);
    }

    /// The shell's answer to [`Output::Locate`].
    pub(super) fn on_located(
        &mut self,
        call: CallId,
        outcome: LocateOutcome,
        now: u64,
        ports: &mut dyn PortAllocator,
        out: &mut Vec<Output>,
    ) {
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
                out.push(Output::Event {
                    call,
                    event: CallEvent::Located { agent },
                });
                if !wait_ack {
                    self.send_return(call, false, now, ports, out);
                }
            }
            LocateOutcome::Refused => self.locate_failed(call, true, now, ports, out),
            _ => self.not_found(call, now, ports, out),
        }
    }

    /// Locating failed: the fallback, a failure tone then BYE (answered A-leg), or 404.
    fn not_found(
        &mut self,
        call: CallId,
        now: u64,
        ports: &mut dyn PortAllocator,
        out: &mut Vec<Output>,
    ) {
        self.locate_failed(call, false, now, ports, out);
    }

    /// Locating failed, or (`refused`) the source is locked out for guessing: then no fallback
    /// takes the call and an unanswered transfer gets 403, so guessing leads nowhere.
    fn locate_failed(
        &mut self,
        call: CallId,
        refused: bool,
        now: u64,
        ports: &mut dyn PortAllocator,
        out: &mut Vec<Output>,
    ) {
        out.push(Output::Event {
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
        if !refused && on_failure == OnFailure::Fallback && self.try_fallback(call, now, ports, out)
        {
            return;
        }
        if a_answered {
            out.push(Output::Announce { call });
            if let Some(c) = self.calls.get_mut(&call) {
                c.phase = Phase::Announcing {
                    until: now + announce_ms,
                };
            }
            return;
        }
        // Never answered: refuse the transfer rather than half-bridge it.
        let Some(server) = server else {
            return;
        };
        let answer = if refused {
            (403, "Forbidden", Some(tag.as_str()))
        } else {
            (404, "Locator Not Found", Some(tag.as_str()))
        };
        let end = Some(EndCause::NotLocated);
        self.fail_invite(call, &server, answer, &[], end, now, ports, out);
    }

    /// Loop timers: the locate deadline and the end of the failure tone.
    pub(super) fn loop_tick(
        &mut self,
        call: CallId,
        now: u64,
        ports: &mut dyn PortAllocator,
        out: &mut Vec<Output>,
    ) {
        let Some(c) = self.calls.get(&call) else {
            return;
        };
        match c.phase {
            Phase::Locating
                if c.lp
                    .as_ref()
                    .is_some_and(|l| now >= l.deadline && l.found.is_none()) =>
            {
                // No answer from the shell in time: as if not found.
                self.not_found(call, now, ports, out);
            }
            Phase::Announcing { until } if now >= until => {
                let reason = [(
                    "Reason",
                    "SIP;cause=404;text=\"locator not found\"".to_owned(),
                )];
                self.send_request(call, Leg::A, "BYE", Purpose::Own, &reason, None, now, out);
                self.end_call(call, EndCause::NotLocated, now, ports, out);
            }
            _ => {}
        }
    }

    /// Calls the return number (or, with `fallback`, the route's fallback URI): A's own offer
    /// relayed when the A-leg is still unanswered, our own offer when we answered it.
    fn send_return(
        &mut self,
        call: CallId,
        fallback: bool,
        now: u64,
        ports: &mut dyn PortAllocator,
        out: &mut Vec<Output>,
    ) {
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
        if let Some((call_id, tag)) = fresh_b {
            let Some((uri, target)) = lr.fallback.clone() else {
                return;
            };
            // A new dialog towards the fallback (§12.1.2: nothing of the failed one carries over).
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
            let p = Purpose::Invite {
                server: lp.server.clone(),
                from: Leg::A,
                initial: true,
            };
            (lp.offer.clone(), p)
        };
        let server = lp.server.clone();
        let tag = c.a.local_tag.clone();
        c.phase = Phase::Calling;
        let extra_ref: Vec<(&str, String)> =
            extra.iter().map(|(n, v)| (n.as_str(), v.clone())).collect();
        let body = body.as_deref().map(|b| ("application/sdp", b));
        let sent = self.send_invite(call, Leg::B, purpose, &extra_ref, body, now, out);
        if sent.is_some() {
            return;
        }
        if answered {
            let reason = [(
                "Reason",
                "SIP;cause=500;text=\"return leg failed\"".to_owned(),
            )];
            self.send_request(call, Leg::A, "BYE", Purpose::Own, &reason, None, now, out);
            self.end_call(call, EndCause::Failed, now, ports, out);
        } else {
            let answer = (500, "Server Internal Error", Some(tag.as_str()));
            let end = Some(EndCause::Failed);
            self.fail_invite(call, &server, answer, &[], end, now, ports, out);
        }
    }

    /// Moves a loop call to its fallback URI, once, while the caller is still there.
    pub(super) fn try_fallback(
        &mut self,
        call: CallId,
        now: u64,
        ports: &mut dyn PortAllocator,
        out: &mut Vec<Output>,
    ) -> bool {
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
        out.push(Output::Event {
            call,
            event: CallEvent::Fallback,
        });
        self.send_return(call, true, now, ports, out);
        true
    }

    /// A response to our own return INVITE (A-leg answered by us).
    pub(super) fn return_response(
        &mut self,
        call: CallId,
        msg: &Message,
        status: u16,
        now: u64,
        ports: &mut dyn PortAllocator,
        out: &mut Vec<Output>,
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
                self.cancel_b(call, now, out);
            }
            return;
        }
        if status >= 300 {
            if !cancelled {
                self.return_failed(call, status, EndCause::Rejected(status), now, ports, out);
            }
            return;
        }
        // 2xx: the return dialog is confirmed (§12.1.2); we ACK it ourselves (§13.2.2.4).
        c.b.remote_tag = msg.to_tag().map(str::to_owned);
        c.b.remote = lossy(msg.get("To").unwrap_or(b""));
        let mut rr: Vec<String> = msg.get_all("Record-Route").map(lossy).collect();
        rr.reverse();
        c.b.route_set = rr;
        if let Ok(crate::sip::headers::Contacts::List(l)) = msg.contacts()
            && let Some(n) = l.first()
        {
            c.b.remote_target = n.uri_raw.to_owned();
        }
        let seq = msg.cseq().map_or(1, |c| c.seq);
        self.send_ack(call, Leg::B, seq, None, out);
        if cancelled {
            // The caller left while the return leg answered (§15: ACK then BYE).
            self.send_request(call, Leg::B, "BYE", Purpose::Own, &[], None, now, out);
            return;
        }
        let answer = if is_sdp(msg) {
            read_answer(msg.body()).ok()
        } else {
            None
        };
        let Some((remote, codecs)) = answer else {
            // We offered: a 2xx without a usable answer cannot carry media (§13.2.1).
            self.send_request(call, Leg::B, "BYE", Purpose::Own, &[], None, now, out);
            self.return_failed(call, 488, EndCause::Failed, now, ports, out);
            return;
        };
        if let Some(c) = self.calls.get_mut(&call) {
            c.b_remote = Some((remote, codecs));
            c.phase = Phase::Confirmed;
        }
        self.media_update(call, out);
        out.push(Output::Event {
            call,
            event: CallEvent::Answered,
        });
    }

    /// The return leg failed (`status`, or 408 for Timer B) with the A-leg answered by us:
    /// the fallback if there is one, else BYE to the caller saying why.
    pub(super) fn return_failed(
        &mut self,
        call: CallId,
        status: u16,
        cause: EndCause,
        now: u64,
        ports: &mut dyn PortAllocator,
        out: &mut Vec<Output>,
    ) {
        if self.try_fallback(call, now, ports, out) {
            return;
        }
        if self.calls.get(&call).is_none_or(|c| c.ended()) {
            return;
        }
        let reason = [(
            "Reason",
            format!("SIP;cause={status};text=\"return leg failed\""),
        )];
        self.send_request(call, Leg::A, "BYE", Purpose::Own, &reason, None, now, out);
        self.end_call(call, cause, now, ports, out);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::config::{RouteConfig, RouteMode};

    fn loop_route(user: Option<&str>) -> Route {
        let rc = RouteConfig {
            mode: RouteMode::Loop,
            user: user.map(str::to_owned),
            ..RouteConfig::default()
        };
        Route::from_config(&rc).unwrap()
    }

    #[test]
    fn request_uri_locators() {
        let r = loop_route(Some("pay"));
        assert_eq!(match_user(&r, Some("pay")), Some(None));
        assert_eq!(match_user(&r, Some("pay*1234")), Some(Some("1234".into())));
        assert_eq!(match_user(&r, Some("pay-99")), Some(Some("99".into())));
        assert_eq!(match_user(&r, Some("pay%2A77")), Some(Some("77".into())));
        assert_eq!(match_user(&r, Some("pay*12a")), None);
        assert_eq!(match_user(&r, Some("payroll")), None);
        assert_eq!(match_user(&r, None), None);
        let any = loop_route(None);
        assert_eq!(
            match_user(&any, Some("5551234")),
            Some(Some("5551234".into()))
        );
        assert_eq!(match_user(&any, Some("loop")), Some(None));
        let inline = Route::from_config(&RouteConfig {
            user: Some("pay".into()),
            ..RouteConfig::default()
        })
        .unwrap();
        assert_eq!(match_user(&inline, Some("pay*1234")), None);
        assert_eq!(match_user(&inline, Some("pay")), Some(None));
    }

    #[test]
    fn agents_with_line_breaks_are_refused() {
        assert!(header_safe("agent-7"));
        assert!(!header_safe("a\r\nVia: x"));
        assert!(!header_safe(""));
    }

    #[test]
    fn answer_picks_first_g711_in_offer_order_and_refuses_other_media() {
        let offer = b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n\
m=audio 4000 RTP/AVP 18 8 0 96\r\na=rtpmap:96 telephone-event/8000\r\na=sendonly\r\n\
m=video 4002 RTP/AVP 97\r\n";
        let o = Origin {
            session: 5,
            version: 1,
        };
        let ports = RelayPorts {
            rtp: 30000,
            rtcp: 30001,
        };
        let a = answer_offer(offer, "10.0.0.1".parse().unwrap(), ports, None, o).unwrap();
        let body = String::from_utf8(a.body).unwrap();
        assert!(body.contains("m=audio 30000 RTP/AVP 8 96\r\n"), "{body}");
        assert!(body.contains("a=rtpmap:96 telephone-event/8000"));
        assert!(body.contains("a=recvonly"));
        assert!(body.contains("m=video 0 RTP/AVP 97\r\n"));
        assert!(body.contains("o=tonewall 5 1 IN IP4 10.0.0.1"));
        assert_eq!(a.remote, "192.0.2.1:4000".parse().unwrap());
        assert_eq!((a.codecs.pcma, a.codecs.pcmu), (Some(8), None));
        // A re-offer keeps the law already in use when it still offers it.
        let again = answer_offer(offer, "10.0.0.1".parse().unwrap(), ports, Some(a.codecs), o);
        assert_eq!(again.unwrap().codecs.pcma, Some(8));
        let g729 = b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 18\r\n";
        assert_eq!(
            answer_offer(g729, "10.0.0.1".parse().unwrap(), ports, None, o)
                .err()
                .map(|e| e.sip_status()),
            Some(488)
        );
    }

    #[test]
    fn origin_is_replaced_and_the_rest_kept() {
        let o = Origin {
            session: 9,
            version: 3,
        };
        let out = set_origin(
            b"v=0\r\no=x 1 2 IN IP4 1.2.3.4\r\ns=-\r\n",
            "10.0.0.1".parse().unwrap(),
            o,
        );
        assert_eq!(
            out,
            b"v=0\r\no=tonewall 9 3 IN IP4 10.0.0.1\r\ns=-\r\n".to_vec()
        );
    }
}
