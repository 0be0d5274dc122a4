//! The B2BUA call core (RFC 3261 §6 "back-to-back user agent"), sans-IO.
//!
//! Owns every call's two dialogs — the A-leg (trunk, we are its UAS) and the B-leg (contact
//! centre, we are its UAC) — their transactions, the mapping of requests and responses between
//! them, SDP anchoring on the relay's ports and the call limit. The shell feeds it received
//! messages and ticks with the current time and performs the returned [`Output`]s.
//! Inline routes relay the A-leg INVITE at once; loop routes (PCI Pal model, see `locate`)
//! first learn a locator and then place the B-leg to the contact centre's return number.
//!
//! It must never read a clock, touch a socket, forward a header of one leg onto the other (Via,
//! Contact, Record-Route, Route, Call-ID and tags are per leg), forward a DTMF INFO from the
//! trunk, or put a digit anywhere but [`Output::Digit`]. It never panics on wire input.

#![warn(clippy::unwrap_used, clippy::indexing_slicing)]

mod locate;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;
use ipnet::IpNet;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::config::{Config, LocatorSource, OnFailure, RouteConfig, RouteMode, Transport};
use crate::digit::Digit;
use crate::sip::dialog::{Dialog, Local};
use crate::sip::message::{Message, Method, ResponseBuilder};
use crate::sip::sdp::{Codecs, MediaPorts, RewriteTarget, Sdp, SdpError};
use crate::sip::transaction::{
    ClientTx, ResponseFate, ServerState, ServerTx, TimerConfig, TxAction, TxKind,
};
use crate::sip::uri::Uri;
use locate::LoopCall;

/// Methods we implement; anything else gets 501 (RFC 3261 §8.2.1) and the call goes on.
const ALLOW: &str = "INVITE, ACK, BYE, CANCEL, OPTIONS, INFO, UPDATE";

/// Reason phrase for a rejected SDP body: 488 when we cannot use the offer (RFC 3261 §21.4.26),
/// else the body was malformed.
fn sdp_failure_reason(status: u16) -> &'static str {
    if status == 488 {
        "Not Acceptable Here"
    } else {
        "Bad Request"
    }
}

pub use crate::ids::CallId;

/// A-leg: towards the trunk (caller). B-leg: towards the contact centre (agent).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Leg {
    A,
    B,
}

impl Leg {
    fn other(self) -> Leg {
        match self {
            Leg::A => Leg::B,
            Leg::B => Leg::A,
        }
    }
}

/// One RTP/RTCP port pair on the relay's media address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RelayPorts {
    pub rtp: u16,
    pub rtcp: u16,
}

/// The shell's port pool. Allocation is synchronous so the core stays a plain state machine;
/// the core releases everything it allocated when a call ends.
pub trait PortAllocator {
    fn allocate(&mut self) -> Option<RelayPorts>;
    fn release(&mut self, ports: RelayPorts);
}

/// Where calls from a set of trunk sources go.
#[derive(Clone, Debug)]
pub struct Route {
    pub name: String,
    /// Allowed sources; empty = any.
    pub sources: Vec<IpNet>,
    /// Request-URI user this route matches; `None` = any.
    pub user: Option<String>,
    /// B-leg Request-URI.
    pub target_uri: String,
    /// Where B-leg signalling is sent.
    pub target: SocketAddr,
    pub transport: Transport,
    /// Other addresses the contact centre speaks from (besides the target's and fallback's).
    pub peer_sources: Vec<IpNet>,
    /// Inline: relay at once. Loop: learn a locator first (`loop_route` holds how).
    pub mode: RouteMode,
    /// Set for `RouteMode::Loop` routes.
    pub loop_route: Option<LoopRoute>,
}

/// How a loop route learns its locator and what it does when that fails.
#[derive(Clone, Debug)]
pub struct LoopRoute {
    /// Request-URI and header tried in this order; DTMF (answering the caller) when listed and
    /// neither gave a locator.
    pub locator_from: Vec<LocatorSource>,
    pub locator_header: String,
    pub agent_header: String,
    /// DTMF collection and resolution must end within this (ms).
    pub locator_timeout_ms: u64,
    pub on_failure: OnFailure,
    /// Called when the locator is not found (with `OnFailure::Fallback`) or when the return
    /// call fails: Request-URI and where it is sent.
    pub fallback: Option<(String, SocketAddr)>,
    /// Failure tone length before the BYE (ms).
    pub announce_ms: u64,
}

/// Whether `ip` may send us anything at all: on some route's allow-list, or one of a contact
/// centre's addresses. The SIP TCP accept applies the same rule.
pub fn any_route_allows(routes: &[Route], ip: IpAddr) -> bool {
    routes
        .iter()
        .any(|r| r.may_speak(Leg::A, ip) || r.may_speak(Leg::B, ip))
}

/// Why the core cannot be configured.
#[derive(Debug, thiserror::Error)]
pub enum B2buaError {
    #[error(
        "route {route}: target {target} must be a sip: URI whose host is an IP address (the core does no DNS)"
    )]
    RouteTarget { route: String, target: String },
    #[error(
        "route {route}: fallback {fallback} must be a sip: URI whose host is an IP address (the core does no DNS)"
    )]
    RouteFallback { route: String, fallback: String },
    #[error("route {route}: on_failure = \"fallback\" needs a fallback URI")]
    MissingFallback { route: String },
}

/// Where signalling for a sip: URI with an IP host goes (5060 unless the URI says otherwise).
fn resolve_ip_uri(s: &str) -> Option<SocketAddr> {
    let uri = Uri::parse(s).ok()?;
    let sip = uri.as_sip()?;
    let ip: IpAddr = sip
        .host
        .to_string()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()?;
    Some(SocketAddr::new(ip, sip.port.unwrap_or(5060)))
}

impl Route {
    /// Whether `ip` may send requests and responses on `leg` of a call on this route: the
    /// trunk's allow-list on the A-leg (empty: anyone), the contact centre's addresses on the
    /// B-leg (DESIGN.md §3.6).
    pub fn may_speak(&self, leg: Leg, ip: IpAddr) -> bool {
        // A dual-stack socket shows an IPv4 peer as ::ffff:a.b.c.d.
        let ip = ip.to_canonical();
        match leg {
            Leg::A => self.sources.is_empty() || self.sources.iter().any(|n| n.contains(&ip)),
            Leg::B => self.is_contact_centre(ip),
        }
    }

    /// The target's host, the fallback's, or one of `peer_sources`.
    fn is_contact_centre(&self, ip: IpAddr) -> bool {
        self.target.ip().to_canonical() == ip
            || self
                .loop_route
                .as_ref()
                .and_then(|l| l.fallback.as_ref())
                .is_some_and(|(_, f)| f.ip().to_canonical() == ip)
            || self.peer_sources.iter().any(|n| n.contains(&ip))
    }

    pub fn from_config(rc: &RouteConfig) -> Result<Route, B2buaError> {
        let target = resolve_ip_uri(&rc.target).ok_or_else(|| B2buaError::RouteTarget {
            route: rc.name.clone(),
            target: rc.target.clone(),
        })?;
        let loop_route = match rc.mode {
            RouteMode::Inline => None,
            RouteMode::Loop => {
                let fallback = match &rc.fallback {
                    None => None,
                    Some(f) => {
                        let addr = resolve_ip_uri(f).ok_or_else(|| B2buaError::RouteFallback {
                            route: rc.name.clone(),
                            fallback: f.clone(),
                        })?;
                        Some((f.clone(), addr))
                    }
                };
                if rc.on_failure == OnFailure::Fallback && fallback.is_none() {
                    return Err(B2buaError::MissingFallback {
                        route: rc.name.clone(),
                    });
                }
                Some(LoopRoute {
                    locator_from: rc.locator_from.clone(),
                    locator_header: rc.locator_header.clone(),
                    agent_header: rc.agent_header.clone(),
                    locator_timeout_ms: rc.locator_timeout_s.saturating_mul(1000),
                    on_failure: rc.on_failure,
                    fallback,
                    announce_ms: rc.announce_ms,
                })
            }
        };
        Ok(Route {
            name: rc.name.clone(),
            sources: rc.sources.clone(),
            user: rc.user.clone(),
            target_uri: rc.target.clone(),
            target,
            transport: rc.target_transport,
            peer_sources: rc.peer_sources.clone(),
            mode: rc.mode,
            loop_route,
        })
    }
}

/// Settings of the core.
#[derive(Clone, Debug)]
pub struct B2buaConfig {
    /// host:port put in our Via and Contact.
    pub sip_host: String,
    /// Address SDP advertises for the relay's ports.
    pub media_address: IpAddr,
    pub routes: Vec<Route>,
    pub max_calls: usize,
    pub retry_after_s: u32,
    /// Headers copied from the A-leg INVITE to the B-leg INVITE.
    pub carry_headers: Vec<String>,
    pub user_agent: String,
    pub timers: TimerConfig,
    /// Seed of the CSPRNG that draws tags, branches, Call-IDs and call ids. The shell passes 32
    /// bytes from the OS; tests a fixed seed, so the core stays deterministic. Knowing any
    /// number of drawn ids does not give the seed or the next id (ChaCha12, RFC 7539 family).
    pub id_seed: [u8; 32],
}

impl B2buaConfig {
    pub fn from_config(cfg: &Config, id_seed: [u8; 32]) -> Result<B2buaConfig, B2buaError> {
        let host = cfg
            .sip
            .advertised_host
            .clone()
            .unwrap_or_else(|| cfg.sip.listen.ip().to_string());
        // RFC 3261 §25.1: an IPv6 reference in a host:port is bracketed.
        let host = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]")
        } else {
            host
        };
        Ok(B2buaConfig {
            sip_host: format!("{host}:{}", cfg.sip.listen.port()),
            media_address: cfg.media.address,
            routes: cfg
                .routes
                .iter()
                .map(Route::from_config)
                .collect::<Result<_, _>>()?,
            max_calls: cfg.sip.max_calls,
            retry_after_s: cfg.sip.retry_after_s,
            carry_headers: cfg.sip.carry_headers.clone(),
            user_agent: cfg.sip.user_agent.clone(),
            timers: TimerConfig::default(),
            id_seed,
        })
    }
}

/// What the shell hands the core.
#[derive(Debug)]
pub enum Input {
    Received {
        transport: Transport,
        from: SocketAddr,
        msg: Message,
    },
    /// Time passed; fire due timers. Call at [`B2bua::next_deadline`].
    Tick,
    /// No media from either side for the configured time: hang up both legs.
    MediaTimeout { call: CallId },
    /// Hang up a call (control API, shutdown).
    Hangup { call: CallId },
    /// Loop route: the answer to [`Output::Locate`].
    Located {
        call: CallId,
        outcome: LocateOutcome,
    },
}

/// What resolving a loop call's locator gave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LocateOutcome {
    /// The payment session `locator` belongs to `agent`.
    Found {
        agent: String,
        locator: String,
    },
    NotFound,
    /// The source is locked out after too many failed look-ups: refused, no fallback.
    Refused,
}

/// Media of one leg: the relay's ports on that side and what the peer said in SDP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LegMedia {
    pub local: RelayPorts,
    pub remote: Option<SocketAddr>,
    pub codecs: Codecs,
}

/// Why a call ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndCause {
    ByeFromA,
    ByeFromB,
    Cancelled,
    /// The contact centre refused the call with this status.
    Rejected(u16),
    /// Timer B/F, or no ACK for our 2xx.
    Timeout,
    MediaTimeout,
    Hangup,
    /// Loop route: the locator was not found (or not given in time) and no fallback took the call.
    NotLocated,
    /// Something we could not relay (an SDP answer we cannot use, a build failure).
    Failed,
}

/// Call life-cycle events for logs and metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallEvent {
    Started {
        route: String,
        /// User parts of the A-leg's From and Request-URI (the caller's and the dialled
        /// number), for the control API's call list.
        from: String,
        to: String,
    },
    Answered,
    Ended(EndCause),
    /// Loop route: the locator resolved to this agent; the return call is being placed.
    Located {
        agent: String,
    },
    /// Loop route: the locator was not found (or not given in time).
    LocateFailed,
    /// Loop route: the call goes to the route's fallback URI.
    Fallback,
}

/// What the shell must do.
#[derive(Debug, PartialEq, Eq)]
pub enum Output {
    Send {
        transport: Transport,
        to: SocketAddr,
        bytes: Bytes,
    },
    /// (Re)configure the relay after an offer/answer: A-side and B-side ports and peers.
    Media {
        call: CallId,
        a: LegMedia,
        b: LegMedia,
    },
    /// The call's media ports were released: stop its relay tasks.
    MediaStopped {
        call: CallId,
    },
    /// A DTMF digit the trunk sent in SIP INFO (not forwarded). `Digit` redacts itself.
    Digit {
        call: CallId,
        digit: Digit,
    },
    Event {
        call: CallId,
        event: CallEvent,
    },
    /// Loop route: resolve `locator`, or (None) collect one from the A-leg's DTMF; answer with
    /// [`Input::Located`]. `source` sent the transfer (failed look-ups are limited per source).
    Locate {
        call: CallId,
        locator: Option<String>,
        source: IpAddr,
    },
    /// Loop route failed with on_failure = announce: play the failure tone towards the A-leg.
    /// The core sends BYE after announce_ms.
    Announce {
        call: CallId,
    },
    /// A message from an address that may not send it was refused (answered 403 or dropped);
    /// the shell counts it and logs the source now and then, never the message.
    Refused {
        from: SocketAddr,
        refusal: Refusal,
    },
}

/// What was refused, for the metric label and the log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// A request from an address on no allow-list (any method, in a dialog or not).
    Stranger,
    /// An in-dialog request from an allowed address that is not this leg's peer (the trunk's
    /// on the contact-centre leg, or the other way round).
    WrongLeg(Leg),
    /// A response from an address other than the one its request went to.
    Response,
}

impl Refusal {
    /// Fixed metric label.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Stranger => "stranger",
            Refusal::WrongLeg(Leg::A) => "wrong_leg_trunk",
            Refusal::WrongLeg(Leg::B) => "wrong_leg_contact_centre",
            Refusal::Response => "response",
        }
    }
}

type SKey = (SocketAddr, String, String);

#[derive(Debug)]
struct ServerEntry {
    tx: ServerTx,
    call: Option<CallId>,
    peer: SocketAddr,
    transport: Transport,
    request: Message,
}

#[derive(Debug, Clone)]
enum Purpose {
    /// INVITE relayed from `from` (initial when the call is being set up).
    Invite {
        server: SKey,
        from: Leg,
        initial: bool,
    },
    /// Non-INVITE relayed from `from`.
    Relay { server: SKey, from: Leg },
    /// Loop route, A-leg answered by us: our own INVITE to the return number (or fallback).
    Return,
    /// Our own request (BYE, CANCEL): responses need no mapping.
    Own,
}

#[derive(Debug)]
struct ClientEntry {
    tx: ClientTx,
    call: CallId,
    leg: Leg,
    /// Where the transaction's retransmissions and ACK go: fixed at send time, since a loop
    /// call's B dialog may move to the fallback while this transaction still lingers.
    transport: Transport,
    peer: SocketAddr,
    purpose: Purpose,
    request: Message,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Loop route: waiting for the locator (the A-leg may be answered by us: DTMF mode).
    Locating,
    /// Loop route failed: the failure tone plays to the A-leg until `until`, then BYE.
    Announcing {
        until: u64,
    },
    /// B-leg INVITE outstanding.
    Calling,
    /// A CANCEL (or hang-up) stopped the set-up; the B-leg INVITE may still be answered.
    Cancelling,
    Confirmed,
    Ended {
        at: u64,
    },
}

/// 2xx to an INVITE we answered, resent until its ACK (§13.3.1.4).
#[derive(Debug)]
struct Retrans {
    leg: Leg,
    bytes: Bytes,
    next: u64,
    interval: u64,
    deadline: u64,
}

/// An INVITE relayed from `from` got its 2xx; its ACK must be relayed to the other leg.
#[derive(Debug, Clone, Copy)]
struct AckWait {
    from: Leg,
    from_cseq: u32,
    to_cseq: u32,
    /// The 2xx was our own answer (loop call, DTMF mode): the ACK ends here.
    own: bool,
}

#[derive(Debug)]
struct Call {
    route: usize,
    phase: Phase,
    a: Dialog,
    b: Dialog,
    /// Branch of the B-leg INVITE while it is outstanding (for CANCEL).
    b_invite: Option<String>,
    cancel_pending: bool,
    /// An INVITE transaction in progress in either direction (for 491, §14.1/§14.2).
    invite_busy: bool,
    ports_a: RelayPorts,
    ports_b: RelayPorts,
    a_remote: Option<(SocketAddr, Codecs)>,
    b_remote: Option<(SocketAddr, Codecs)>,
    last_media: Option<(LegMedia, LegMedia)>,
    retrans: Option<Retrans>,
    ack_wait: Option<AckWait>,
    /// Loop route state (None for inline calls).
    lp: Option<LoopCall>,
}

impl Call {
    fn dialog(&mut self, leg: Leg) -> &mut Dialog {
        match leg {
            Leg::A => &mut self.a,
            Leg::B => &mut self.b,
        }
    }
    fn ports(&self, leg: Leg) -> RelayPorts {
        match leg {
            Leg::A => self.ports_a,
            Leg::B => self.ports_b,
        }
    }
    fn ended(&self) -> bool {
        matches!(self.phase, Phase::Ended { .. })
    }
    /// Loop call whose A-leg we answered ourselves (DTMF mode).
    fn a_answered(&self) -> bool {
        self.lp.as_ref().is_some_and(|l| l.answered)
    }
    /// Both legs are up and requests relay between them.
    fn bridged(&self) -> bool {
        self.phase == Phase::Confirmed
    }
}

/// The call core. See the module docs.
#[derive(Debug)]
pub struct B2bua {
    cfg: B2buaConfig,
    calls: HashMap<CallId, Call>,
    /// Call-ID of either leg → call and leg.
    dialogs: HashMap<String, (CallId, Leg)>,
    servers: HashMap<SKey, ServerEntry>,
    clients: HashMap<String, ClientEntry>,
    /// Draws every identifier a stranger could use to reach a call (RFC 3261 §19.3 asks
    /// tags and Call-IDs to be globally unique and cryptographically random).
    ids: StdRng,
    active: usize,
}

fn uri_user<'a>(uri: &Uri<'a>) -> Option<&'a str> {
    match uri {
        Uri::Sip(s) => s.user,
        Uri::Tel(t) => Some(t.number),
        _ => None,
    }
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn is_sdp(msg: &Message) -> bool {
    !msg.body().is_empty() && matches!(msg.content_type(), Ok(Some(ct)) if ct.is_sdp())
}

/// Result of anchoring one SDP body: the rewritten body and what the sender said.
struct Anchored {
    body: Vec<u8>,
    remote: Option<(SocketAddr, Codecs)>,
}

/// Rewrites `body` so media goes to `ports` on `addr` (RFC 3264 via [`Sdp::rewrite`]). Only
/// the first active audio section is anchored; a second one makes the rewrite fail.
fn anchor(body: &[u8], addr: IpAddr, ports: RelayPorts) -> Result<Anchored, SdpError> {
    let sdp = Sdp::parse(body)?;
    let media = sdp.media()?;
    let idx = media
        .iter()
        .position(|m| m.kind == "audio" && !m.is_disabled());
    let target = RewriteTarget {
        address: addr,
        media: (0..media.len())
            .map(|i| {
                (Some(i) == idx).then_some(MediaPorts {
                    rtp: ports.rtp,
                    rtcp: (ports.rtcp != ports.rtp.wrapping_add(1)).then_some(ports.rtcp),
                })
            })
            .collect(),
    };
    let rw = sdp.rewrite(&target)?;
    let remote = idx.and_then(|i| {
        let orig = media.get(i)?;
        let codecs = rw.media.get(i).map_or(orig.codecs, |m| m.codecs);
        Some((orig.rtp_addr()?, codecs))
    });
    Ok(Anchored {
        body: hide_origin(&rw.body, addr),
        remote,
    })
}

/// Puts our address in the `o=` line (RFC 8866 §5.2): the peer's host must not cross legs.
/// Session id and version are kept, so the peer's version stepping still reads as it meant.
fn hide_origin(body: &[u8], addr: IpAddr) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 16);
    for line in body.split_inclusive(|b| *b == b'\n') {
        let content_len = line
            .iter()
            .rposition(|b| *b != b'\r' && *b != b'\n')
            .map_or(0, |p| p + 1);
        let (content, term) = line.split_at(content_len);
        let fields: Vec<&[u8]> = content.split(|b| *b == b' ').collect();
        if content.starts_with(b"o=") && fields.len() == 6 {
            let kind: &[u8] = if addr.is_ipv4() { b"IP4" } else { b"IP6" };
            for f in fields.iter().take(4) {
                out.extend_from_slice(f);
                out.push(b' ');
            }
            out.extend_from_slice(kind);
            out.push(b' ');
            out.extend_from_slice(addr.to_string().as_bytes());
            out.extend_from_slice(term);
        } else {
            out.extend_from_slice(line);
        }
    }
    out
}

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

/// What a failure from the contact centre becomes towards the trunk (same class; challenges
/// for the contact centre's realm mean nothing to the trunk).
fn map_failure(status: u16) -> u16 {
    match status {
        401 | 407 => 403,
        s => s,
    }
}

impl B2bua {
    pub fn new(cfg: B2buaConfig) -> B2bua {
        B2bua {
            ids: StdRng::from_seed(cfg.id_seed),
            cfg,
            calls: HashMap::new(),
            dialogs: HashMap::new(),
            servers: HashMap::new(),
            clients: HashMap::new(),
            active: 0,
        }
    }

    /// Calls not yet ended (what the call limit counts).
    pub fn active_calls(&self) -> usize {
        self.active
    }

    /// The route a call took (its scrub mode and target are the shell's business).
    pub fn route_of(&self, call: CallId) -> Option<&Route> {
        self.calls
            .get(&call)
            .and_then(|c| self.cfg.routes.get(c.route))
    }

    /// The earliest time [`Input::Tick`] has something to do.
    pub fn next_deadline(&self) -> Option<u64> {
        let gc = 64 * self.cfg.timers.t1;
        let s = self.servers.values().filter_map(|e| e.tx.next_deadline());
        let c = self.clients.values().filter_map(|e| e.tx.next_deadline());
        let r = self.calls.values().filter_map(|c| {
            if let Phase::Ended { at } = c.phase {
                return Some(at + gc);
            }
            let retrans = c.retrans.as_ref().map(|r| r.next.min(r.deadline));
            let lp = match c.phase {
                Phase::Locating => c.lp.as_ref().map(|l| l.deadline),
                Phase::Announcing { until } => Some(until),
                _ => None,
            };
            [retrans, lp].into_iter().flatten().min()
        });
        s.chain(c).chain(r).min()
    }

    /// A tag, branch or Call-ID: 64 random bits after `prefix`.
    fn new_id(&mut self, prefix: &str) -> String {
        let v = self.ids.next_u64();
        format!("{prefix}{v:016x}")
    }

    /// A call's id: random (the control API shows it), never 0, never one in use.
    fn new_call_id(&mut self) -> CallId {
        loop {
            let id = CallId(self.ids.next_u64());
            if id.0 != 0 && !self.calls.contains_key(&id) {
                return id;
            }
        }
    }

    fn local(&self) -> (String, String) {
        (
            format!("<sip:{}>", self.cfg.sip_host),
            self.cfg.user_agent.clone(),
        )
    }

    /// Feeds one input; outputs are appended to `out`.
    pub fn handle(
        &mut self,
        input: Input,
        now: u64,
        ports: &mut dyn PortAllocator,
        out: &mut Vec<Output>,
    ) {
        match input {
            Input::Received {
                transport,
                from,
                msg,
            } => {
                if msg.is_request() {
                    self.on_request(transport, from, msg, now, ports, out);
                } else if !self.allowed_source(from.ip()) {
                    out.push(Output::Refused {
                        from,
                        refusal: Refusal::Stranger,
                    });
                } else {
                    self.on_response(from, msg, now, ports, out);
                }
            }
            Input::Tick => self.on_tick(now, ports, out),
            Input::MediaTimeout { call } => self.hangup(
                call,
                EndCause::MediaTimeout,
                Some("SIP;cause=408;text=\"media inactivity\""),
                now,
                ports,
                out,
            ),
            Input::Hangup { call } => {
                self.hangup(call, EndCause::Hangup, None, now, ports, out);
            }
            Input::Located { call, outcome } => self.on_located(call, outcome, now, ports, out),
        }
    }

    // ---------------------------------------------------------------- sending

    fn send(out: &mut Vec<Output>, transport: Transport, to: SocketAddr, bytes: Bytes) {
        out.push(Output::Send {
            transport,
            to,
            bytes,
        });
    }

    /// Sends a response through the server transaction `key` (if it still exists).
    fn respond(&mut self, key: &SKey, resp: Message, now: u64, out: &mut Vec<Output>) {
        let Some(status) = resp.status() else { return };
        let Some(e) = self.servers.get_mut(key) else {
            return;
        };
        for a in e.tx.respond(status, resp.into_bytes(), now) {
            if let TxAction::Send(b) = a {
                out.push(Output::Send {
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
    #[allow(clippy::too_many_arguments)]
    fn reply(
        &mut self,
        key: &SKey,
        status: u16,
        reason: &str,
        to_tag: Option<&str>,
        extra: &[(&str, String)],
        body: Option<(&str, Vec<u8>)>,
        now: u64,
        out: &mut Vec<Output>,
    ) {
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
        for (n, v) in extra {
            b = b.header(n, v);
        }
        b = b.header("Server", &self.cfg.user_agent);
        if let Some((ct, body)) = body {
            b = b.body(ct, body);
        }
        if let Ok(resp) = b.build() {
            self.respond(key, resp, now, out);
        }
    }

    /// Answers a request outside any transaction we keep (stateless; used for what we refuse
    /// before a transaction exists, e.g. 481 to a stray CANCEL).
    fn reply_stateless(
        &mut self,
        req: &Message,
        transport: Transport,
        to: SocketAddr,
        status: u16,
        reason: &str,
        out: &mut Vec<Output>,
    ) {
        let tag = self.new_id("s");
        if let Ok(r) = ResponseBuilder::new(req, status, reason)
            .to_tag(&tag)
            .build()
        {
            Self::send(out, transport, to, r.into_bytes());
        }
    }

    /// Refuses a request because of who sent it: counted, and answered 403 unless it is an
    /// ACK (which gets no answer, §17.2.3).
    fn refuse_request(
        &mut self,
        msg: &Message,
        method: &str,
        transport: Transport,
        from: SocketAddr,
        refusal: Refusal,
        out: &mut Vec<Output>,
    ) {
        out.push(Output::Refused { from, refusal });
        if method != "ACK" {
            self.reply_stateless(msg, transport, from, 403, "Forbidden", out);
        }
    }

    /// Sends a request we originate in `leg`'s dialog, as a client transaction.
    #[allow(clippy::too_many_arguments)]
    fn send_request(
        &mut self,
        call: CallId,
        leg: Leg,
        method: &str,
        purpose: Purpose,
        extra: &[(&str, String)],
        body: Option<(&str, &[u8])>,
        now: u64,
        out: &mut Vec<Output>,
    ) -> Option<(u32, String)> {
        let branch = self.new_id("z9hG4bK");
        let (contact, ua) = self.local();
        let host = self.cfg.sip_host.clone();
        let timers = self.cfg.timers;
        let c = self.calls.get_mut(&call)?;
        let d = c.dialog(leg);
        let local = Local {
            via_host: &host,
            contact: &contact,
            user_agent: &ua,
        };
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
            transport == Transport::Tcp,
            timers,
            now,
        );
        for a in actions {
            if let TxAction::Send(b) = a {
                Self::send(out, transport, peer, b);
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

    /// Sends an ACK for a 2xx in `leg`'s dialog (no transaction, §17.1.1.3).
    fn send_ack(
        &mut self,
        call: CallId,
        leg: Leg,
        cseq: u32,
        body: Option<(&str, &[u8])>,
        out: &mut Vec<Output>,
    ) {
        let branch = self.new_id("z9hG4bK");
        let (contact, ua) = self.local();
        let host = self.cfg.sip_host.clone();
        let Some(c) = self.calls.get_mut(&call) else {
            return;
        };
        let d = c.dialog(leg);
        let local = Local {
            via_host: &host,
            contact: &contact,
            user_agent: &ua,
        };
        if let Ok(ack) = d.request("ACK", &branch, &local, Some(cseq), &[], body) {
            let bytes = ack.into_bytes();
            d.last_ack = Some((cseq, bytes.clone()));
            Self::send(out, d.transport, d.peer, bytes);
        }
    }

    fn end_call(
        &mut self,
        call: CallId,
        cause: EndCause,
        now: u64,
        ports: &mut dyn PortAllocator,
        out: &mut Vec<Output>,
    ) {
        let Some(c) = self.calls.get_mut(&call) else {
            return;
        };
        if c.ended() {
            return;
        }
        c.phase = Phase::Ended { at: now };
        c.retrans = None;
        c.ack_wait = None;
        ports.release(c.ports_a);
        ports.release(c.ports_b);
        self.active = self.active.saturating_sub(1);
        out.push(Output::MediaStopped { call });
        out.push(Output::Event {
            call,
            event: CallEvent::Ended(cause),
        });
    }

    /// Ends a call from our side: BYE both confirmed legs, or stop a set-up in progress.
    fn hangup(
        &mut self,
        call: CallId,
        cause: EndCause,
        reason: Option<&str>,
        now: u64,
        ports: &mut dyn PortAllocator,
        out: &mut Vec<Output>,
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
                    self.send_request(call, leg, "BYE", Purpose::Own, &extra, None, now, out);
                }
            }
            Phase::Calling | Phase::Locating | Phase::Announcing { .. } if a_answered => {
                // Loop call answered by us: the A dialog is up, the return leg is not.
                self.send_request(call, Leg::A, "BYE", Purpose::Own, &extra, None, now, out);
                self.cancel_b(call, now, out);
            }
            Phase::Locating | Phase::Announcing { .. } => {
                // Loop call still locating: the A-leg INVITE is open; no B-leg exists yet.
                let server = c.lp.as_ref().map(|l| l.server.clone());
                let tag = c.a.local_tag.clone();
                if let Some(key) = server {
                    let answer = (480, "Temporarily Unavailable", Some(tag.as_str()));
                    self.fail_invite(call, &key, answer, &extra, None, now, ports, out);
                }
            }
            Phase::Calling => {
                // The trunk's INVITE is still open: refuse it, and CANCEL the B-leg (§9.1).
                let server = self.initial_server(call);
                if let Some(key) = server {
                    let tag = c.a.local_tag.clone();
                    self.reply(
                        &key,
                        480,
                        "Temporarily Unavailable",
                        Some(&tag),
                        &extra,
                        None,
                        now,
                        out,
                    );
                }
                self.cancel_b(call, now, out);
            }
            Phase::Cancelling | Phase::Ended { .. } => {}
        }
        self.end_call(call, cause, now, ports, out);
    }

    fn initial_server(&self, call: CallId) -> Option<SKey> {
        self.clients.values().find_map(|e| match &e.purpose {
            Purpose::Invite {
                server,
                initial: true,
                ..
            } if e.call == call => Some(server.clone()),
            _ => None,
        })
    }

    /// CANCELs the outstanding B-leg INVITE (§9.1): at once if it has had a provisional
    /// response, otherwise as soon as one arrives.
    fn cancel_b(&mut self, call: CallId, now: u64, out: &mut Vec<Output>) {
        let ua = self.cfg.user_agent.clone();
        let host = self.cfg.sip_host.clone();
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
        if e.tx.state() != crate::sip::transaction::ClientState::Proceeding {
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
            transport == Transport::Tcp,
            self.cfg.timers,
            now,
        );
        for a in actions {
            if let TxAction::Send(b) = a {
                Self::send(out, transport, peer, b);
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

    // ---------------------------------------------------------------- requests

    /// On some route's allow-list or one of the contact centre's addresses: who may send us
    /// anything at all.
    fn allowed_source(&self, ip: IpAddr) -> bool {
        any_route_allows(&self.cfg.routes, ip)
    }

    /// Whether `ip` is the peer of `leg` of `call` (see [`Route::may_speak`]).
    fn leg_peer(&self, call: CallId, leg: Leg, ip: IpAddr) -> bool {
        self.calls
            .get(&call)
            .and_then(|c| self.cfg.routes.get(c.route))
            .is_some_and(|r| r.may_speak(leg, ip))
    }

    #[allow(clippy::too_many_arguments)]
    fn on_request(
        &mut self,
        transport: Transport,
        from: SocketAddr,
        msg: Message,
        now: u64,
        ports: &mut dyn PortAllocator,
        out: &mut Vec<Output>,
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
        let key: SKey = (from, branch.clone(), key_method);

        // Retransmissions and ACKs of non-2xx finals belong to their transaction (§17.2.3).
        if let Some(e) = self.servers.get_mut(&key) {
            let actions = if method == "ACK" {
                if e.tx.state() == ServerState::Terminated {
                    Vec::new() // a 2xx ACK reusing the branch: dialog level below
                } else {
                    e.tx.on_ack(now)
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
                    Self::send(out, t, p, b);
                }
            }
            // The transaction ended with our 2xx; until the ACK, the TU answers a
            // retransmitted INVITE with that 2xx again (§13.3.1.4).
            if inv_2xx && let Some(r) = call.and_then(|c| self.calls.get(&c)?.retrans.as_ref()) {
                Self::send(out, t, p, r.bytes.clone());
            }
            if !is_2xx_ack {
                return;
            }
        }

        // The allow-list applies to every request, in a dialog or not, before anything is
        // looked up: a stranger learns nothing of which identifiers are live.
        if !self.allowed_source(from.ip()) {
            self.refuse_request(&msg, &method, transport, from, Refusal::Stranger, out);
            return;
        }

        if method == "CANCEL" {
            self.on_cancel(transport, from, msg, &branch, now, ports, out);
            return;
        }

        let to_tag = msg.to_tag().map(str::to_owned);
        if let Some(tag) = to_tag {
            self.in_dialog(transport, from, msg, &method, key, &tag, now, ports, out);
            return;
        }
        if method == "ACK" {
            return; // stray ACK: nothing to answer (§17.2.3)
        }
        match method.as_str() {
            "INVITE" => self.new_call(transport, from, msg, key, now, ports, out),
            "OPTIONS" => {
                self.new_server(key.clone(), None, TxKind::NonInvite, transport, from, msg);
                self.reply(
                    &key,
                    200,
                    "OK",
                    None,
                    &[
                        ("Allow", ALLOW.to_owned()),
                        ("Accept", "application/sdp".to_owned()),
                    ],
                    None,
                    now,
                    out,
                );
            }
            "BYE" | "INFO" | "UPDATE" => {
                self.reply_stateless(
                    &msg,
                    transport,
                    from,
                    481,
                    "Call/Transaction Does Not Exist",
                    out,
                );
            }
            _ => {
                self.new_server(key.clone(), None, TxKind::NonInvite, transport, from, msg);
                self.reply(
                    &key,
                    501,
                    "Not Implemented",
                    None,
                    &[("Allow", ALLOW.to_owned())],
                    None,
                    now,
                    out,
                );
            }
        }
    }

    fn new_server(
        &mut self,
        key: SKey,
        call: Option<CallId>,
        kind: TxKind,
        transport: Transport,
        peer: SocketAddr,
        request: Message,
    ) {
        let tx = ServerTx::new(kind, transport == Transport::Tcp, self.cfg.timers);
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

    #[allow(clippy::too_many_arguments)]
    fn new_call(
        &mut self,
        transport: Transport,
        from: SocketAddr,
        msg: Message,
        key: SKey,
        now: u64,
        ports: &mut dyn PortAllocator,
        out: &mut Vec<Output>,
    ) {
        // §17.2.1: 100 Trying at once, so the trunk stops retransmitting.
        self.new_server(
            key.clone(),
            None,
            TxKind::Invite,
            transport,
            from,
            msg.clone(),
        );
        self.reply(&key, 100, "Trying", None, &[], None, now, out);
        let tag = self.new_id("a");
        let reject = |s: &mut B2bua,
                      status: u16,
                      reason: &str,
                      extra: &[(&str, String)],
                      out: &mut Vec<Output>| {
            s.reply(&key, status, reason, Some(&tag), extra, None, now, out);
        };

        let ruri_user = msg
            .request_uri()
            .and_then(|u| uri_user(&u).map(str::to_owned));
        let route = self.cfg.routes.iter().enumerate().find_map(|(i, r)| {
            let src_ok = r.sources.is_empty() || r.sources.iter().any(|n| n.contains(&from.ip()));
            if !src_ok {
                return None;
            }
            locate::match_user(r, ruri_user.as_deref()).map(|loc| (i, loc))
        });
        let Some((route, ruri_locator)) = route else {
            reject(self, 404, "Not Found", &[], out);
            return;
        };
        // Loop route: the locator from the Request-URI or header, else DTMF after we answer.
        let lr = self
            .cfg
            .routes
            .get(route)
            .and_then(|r| r.loop_route.clone());
        let locator = lr.as_ref().and_then(|lr| {
            lr.locator_from.iter().find_map(|src| match src {
                LocatorSource::Ruri => ruri_locator.clone(),
                LocatorSource::Header => locate::header_locator(&msg, &lr.locator_header),
                LocatorSource::Dtmf => None,
            })
        });
        let dtmf_mode = lr
            .as_ref()
            .is_some_and(|lr| locator.is_none() && lr.locator_from.contains(&LocatorSource::Dtmf));
        // §16.3 item 2 applied by a UA relaying a request: Max-Forwards 0 ends here.
        let mf = msg.max_forwards().unwrap_or(70);
        if mf == 0 {
            reject(self, 483, "Too Many Hops", &[], out);
            return;
        }
        // §8.2.2.3: we support no extension, so any Require is unknown (100rel included).
        if let Ok(req) = msg.require()
            && !req.is_empty()
        {
            let list = req.join(", ");
            reject(self, 420, "Bad Extension", &[("Unsupported", list)], out);
            return;
        }
        if self.active >= self.cfg.max_calls {
            let ra = self.cfg.retry_after_s.to_string();
            reject(
                self,
                503,
                "Service Unavailable",
                &[("Retry-After", ra)],
                out,
            );
            return;
        }
        if !msg.body().is_empty() && !is_sdp(&msg) {
            reject(
                self,
                415,
                "Unsupported Media Type",
                &[("Accept", "application/sdp".to_owned())],
                out,
            );
            return;
        }
        let (Some(pa), Some(pb)) = (ports.allocate(), ports.allocate()) else {
            // Either may have succeeded; give it back.
            reject(self, 503, "Service Unavailable", &[], out);
            return;
        };
        let mut offer = None;
        let mut a_remote = None;
        let origin_a = self.new_origin();
        let mut own_answer = None;
        let mut a_codecs = None;
        if dtmf_mode && !is_sdp(&msg) {
            // Late offer: we offer; the answer comes in the ACK (RFC 3261 §13.2.1).
            let codecs = [(0, "PCMU"), (8, "PCMA"), (101, "telephone-event")];
            own_answer = Some(locate::local_offer(
                self.cfg.media_address,
                pa,
                &codecs,
                origin_a,
            ));
        }
        if is_sdp(&msg) {
            let anchored = if dtmf_mode {
                // We answer the caller ourselves, on the A ports (RFC 3264 §6).
                locate::answer_offer(msg.body(), self.cfg.media_address, pa, None, origin_a).map(
                    |a| {
                        a_codecs = Some(a.codecs);
                        own_answer = Some(a.body);
                        Anchored {
                            body: Vec::new(),
                            remote: Some((a.remote, a.codecs)),
                        }
                    },
                )
            } else {
                anchor(msg.body(), self.cfg.media_address, pb)
            };
            match anchored {
                Ok(a) => {
                    a_remote = a.remote;
                    offer = (!dtmf_mode).then_some(a.body);
                }
                Err(e) => {
                    ports.release(pa);
                    ports.release(pb);
                    let status = e.sip_status();
                    reject(self, status, sdp_failure_reason(status), &[], out);
                    return;
                }
            }
        }

        let Some(r) = self.cfg.routes.get(route).cloned() else {
            return;
        };
        let from_na = msg.from().ok();
        let to_na = msg.to().ok();
        let from_user = from_na
            .as_ref()
            .and_then(|n| uri_user(&n.uri))
            .unwrap_or("anonymous")
            .to_owned();
        // A loop call's To is the return number itself: the loop number (and a locator in
        // it) means nothing to the contact centre.
        let to_user = to_na
            .as_ref()
            .and_then(|n| uri_user(&n.uri))
            .or(ruri_user.as_deref())
            .filter(|_| lr.is_none())
            .map(str::to_owned);
        let a_contact = match msg.contacts() {
            Ok(crate::sip::headers::Contacts::List(l)) => l.first().map(|n| n.uri_raw.to_owned()),
            _ => None,
        };
        let a_contact = a_contact
            .or_else(|| from_na.as_ref().map(|n| n.uri_raw.to_owned()))
            .unwrap_or_else(|| format!("sip:{from}"));
        let a_dialog = Dialog {
            call_id: msg.call_id().unwrap_or_default().to_owned(),
            local: format!("{};tag={tag}", lossy(msg.get("To").unwrap_or(b""))),
            remote: lossy(msg.get("From").unwrap_or(b"")),
            local_tag: tag.clone(),
            remote_tag: msg.from_tag().map(str::to_owned),
            remote_target: a_contact,
            route_set: msg.get_all("Record-Route").map(lossy).collect(),
            local_cseq: 0,
            remote_cseq: msg.cseq().map(|c| c.seq),
            peer: from,
            transport,
            last_ack: None,
        };
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
        let b_dialog = Dialog {
            call_id: format!("{}@tonewall", self.new_id("tw")),
            local: format!("<sip:{from_user}@{}>;tag={b_tag}", self.cfg.sip_host),
            remote: match &to_user {
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
        };
        let call = self.new_call_id();
        self.active += 1;
        if let Some(e) = self.servers.get_mut(&key) {
            e.call = Some(call);
        }
        self.dialogs
            .insert(a_dialog.call_id.clone(), (call, Leg::A));
        self.dialogs
            .insert(b_dialog.call_id.clone(), (call, Leg::B));
        self.calls.insert(
            call,
            Call {
                route,
                phase: if lr.is_some() {
                    Phase::Locating
                } else {
                    Phase::Calling
                },
                a: a_dialog,
                b: b_dialog,
                b_invite: None,
                cancel_pending: false,
                invite_busy: true,
                ports_a: pa,
                ports_b: pb,
                a_remote,
                b_remote: None,
                last_media: None,
                retrans: None,
                ack_wait: None,
                lp: None,
            },
        );
        out.push(Output::Event {
            call,
            event: CallEvent::Started {
                route: r.name.clone(),
                from: from_user.clone(),
                to: ruri_user.clone().unwrap_or_default(),
            },
        });

        // What crosses to the B-leg: identities and the configured headers, never routing.
        let mut extra: Vec<(&str, String)> = vec![("Max-Forwards", (mf - 1).to_string())];
        for v in msg.get_all("P-Asserted-Identity") {
            extra.push(("P-Asserted-Identity", lossy(v)));
        }
        let carry = self.cfg.carry_headers.clone();
        for name in &carry {
            // A loop call's agent and locator headers are ours to set, never the caller side's.
            let ours = lr.as_ref().is_some_and(|lr| {
                name.eq_ignore_ascii_case(&lr.agent_header)
                    || name.eq_ignore_ascii_case(&lr.locator_header)
            });
            if ours {
                continue;
            }
            for v in msg.get_all(name) {
                extra.push((name.as_str(), lossy(v)));
            }
        }
        extra.push(("Allow", ALLOW.to_owned()));
        if let Some(lr) = &lr {
            let origin_b = self.new_origin();
            let answered = own_answer.is_some();
            if let Some(c) = self.calls.get_mut(&call) {
                c.lp = Some(LoopCall {
                    server: key.clone(),
                    answered,
                    deadline: now + lr.locator_timeout_ms,
                    offer,
                    extra: extra
                        .iter()
                        .map(|(n, v)| ((*n).to_owned(), v.clone()))
                        .collect(),
                    found: None,
                    fallback_used: false,
                    a_codecs,
                    origin_a,
                    origin_b,
                });
            }
            self.start_loop(call, locator, own_answer, now, ports, out);
            return;
        }
        let body = offer.as_deref().map(|b| ("application/sdp", b));
        let purpose = Purpose::Invite {
            server: key.clone(),
            from: Leg::A,
            initial: true,
        };
        // Max-Forwards is set through `extra`; drop the dialog default.
        let sent = self.send_invite(call, Leg::B, purpose, &extra, body, now, out);
        if sent.is_none() {
            self.reply(
                &key,
                500,
                "Server Internal Error",
                Some(&tag),
                &[],
                None,
                now,
                out,
            );
            self.end_call(call, EndCause::Failed, now, ports, out);
        }
    }

    /// Sends an INVITE on `leg` and remembers its branch for CANCEL.
    #[allow(clippy::too_many_arguments)]
    fn send_invite(
        &mut self,
        call: CallId,
        leg: Leg,
        purpose: Purpose,
        extra: &[(&str, String)],
        body: Option<(&str, &[u8])>,
        now: u64,
        out: &mut Vec<Output>,
    ) -> Option<u32> {
        let (seq, branch) =
            self.send_request(call, leg, "INVITE", purpose, extra, body, now, out)?;
        if leg == Leg::B
            && let Some(c) = self.calls.get_mut(&call)
        {
            c.b_invite = Some(branch);
        }
        Some(seq)
    }

    #[allow(clippy::too_many_arguments)]
    fn on_cancel(
        &mut self,
        transport: Transport,
        from: SocketAddr,
        msg: Message,
        branch: &str,
        now: u64,
        ports: &mut dyn PortAllocator,
        out: &mut Vec<Output>,
    ) {
        // §9.2: the CANCEL matches the INVITE transaction with the same branch.
        let inv_key: SKey = (from, branch.to_owned(), "INVITE".to_owned());
        let Some(inv) = self.servers.get(&inv_key) else {
            self.reply_stateless(
                &msg,
                transport,
                from,
                481,
                "Call/Transaction Does Not Exist",
                out,
            );
            return;
        };
        let call = inv.call;
        let open = inv.tx.state() == ServerState::Proceeding;
        let key: SKey = (from, branch.to_owned(), "CANCEL".to_owned());
        self.new_server(key.clone(), call, TxKind::NonInvite, transport, from, msg);
        let tag = call
            .and_then(|c| self.calls.get(&c))
            .map(|c| c.a.local_tag.clone());
        self.reply(&key, 200, "OK", tag.as_deref(), &[], None, now, out);
        let Some(call) = call else { return };
        if !open {
            return; // already answered: the CANCEL has no effect (§9.2)
        }
        self.reply(
            &inv_key,
            487,
            "Request Terminated",
            tag.as_deref(),
            &[],
            None,
            now,
            out,
        );
        let was_calling = self
            .calls
            .get(&call)
            .is_some_and(|c| c.phase == Phase::Calling);
        if was_calling {
            self.cancel_b(call, now, out);
        }
        self.end_call(call, EndCause::Cancelled, now, ports, out);
    }

    #[allow(clippy::too_many_arguments)]
    fn in_dialog(
        &mut self,
        transport: Transport,
        from: SocketAddr,
        msg: Message,
        method: &str,
        key: SKey,
        to_tag: &str,
        now: u64,
        ports: &mut dyn PortAllocator,
        out: &mut Vec<Output>,
    ) {
        let found = msg
            .call_id()
            .and_then(|id| self.dialogs.get(id).copied())
            .filter(|(call, leg)| {
                self.calls.get(call).is_some_and(|c| {
                    let d = match leg {
                        Leg::A => &c.a,
                        Leg::B => &c.b,
                    };
                    d.local_tag == to_tag
                })
            });
        let Some((call, leg)) = found else {
            if method != "ACK" {
                self.reply_stateless(
                    &msg,
                    transport,
                    from,
                    481,
                    "Call/Transaction Does Not Exist",
                    out,
                );
            }
            return;
        };
        // Only the leg's own peer may act in its dialog: the trunk can neither hang up nor
        // re-INVITE the contact centre's leg, and the other way round.
        if !self.leg_peer(call, leg, from.ip()) {
            self.refuse_request(&msg, method, transport, from, Refusal::WrongLeg(leg), out);
            return;
        }
        let ended = self.calls.get(&call).is_none_or(Call::ended);
        if method == "ACK" {
            self.on_dialog_ack(call, leg, &msg, now, ports, out);
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
        let tag = to_tag.to_owned();
        if ended {
            // BYE glare or a late request: the dialog is gone (§15.1.2 answers a BYE anyway).
            let (s, r) = if method == "BYE" {
                (200, "OK")
            } else {
                (481, "Call/Transaction Does Not Exist")
            };
            self.reply(&key, s, r, Some(&tag), &[], None, now, out);
            return;
        }
        match method {
            "BYE" => {
                self.reply(&key, 200, "OK", Some(&tag), &[], None, now, out);
                let other = leg.other();
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
                    self.send_ack(call, w.from.other(), w.to_cseq, None, out);
                    if let Some(c) = self.calls.get_mut(&call) {
                        c.phase = Phase::Confirmed;
                    }
                }
                let (confirmed, return_pending) =
                    self.calls.get(&call).map_or((false, false), |c| {
                        (
                            c.phase == Phase::Confirmed,
                            c.phase == Phase::Calling && c.a_answered(),
                        )
                    });
                if confirmed {
                    self.send_request(call, other, "BYE", Purpose::Own, &reason, None, now, out);
                } else if return_pending {
                    // Loop call: the caller left while the return leg rings (§9.1).
                    self.cancel_b(call, now, out);
                }
                let cause = match leg {
                    Leg::A => EndCause::ByeFromA,
                    Leg::B => EndCause::ByeFromB,
                };
                self.end_call(call, cause, now, ports, out);
            }
            "OPTIONS" => {
                self.reply(
                    &key,
                    200,
                    "OK",
                    Some(&tag),
                    &[("Allow", ALLOW.to_owned())],
                    None,
                    now,
                    out,
                );
            }
            "INFO" if leg == Leg::A && Self::is_dtmf_info(&req) => {
                // Card digits must not reach the agent: answer here, hand the digit to capture.
                self.reply(&key, 200, "OK", Some(&tag), &[], None, now, out);
                let sub = req
                    .content_type()
                    .ok()
                    .flatten()
                    .map(|ct| ct.subtype.to_owned())
                    .unwrap_or_default();
                if let Some(digit) = info_digit(&sub, req.body()) {
                    out.push(Output::Digit { call, digit });
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
                self.answer_locally(call, key, &req, &tag, now, out);
            }
            "INVITE" | "UPDATE" | "INFO" => {
                self.relay(call, leg, key, &req, &tag, now, out);
            }
            _ => {
                self.reply(
                    &key,
                    501,
                    "Not Implemented",
                    Some(&tag),
                    &[("Allow", ALLOW.to_owned())],
                    None,
                    now,
                    out,
                );
            }
        }
    }

    fn is_dtmf_info(req: &Message) -> bool {
        matches!(req.content_type(), Ok(Some(ct))
            if ct.is("application", "dtmf-relay") || ct.is("application", "dtmf"))
    }

    /// Relays an in-dialog INVITE, UPDATE or INFO from `leg` to the other leg.
    #[allow(clippy::too_many_arguments)]
    fn relay(
        &mut self,
        call: CallId,
        leg: Leg,
        key: SKey,
        req: &Message,
        tag: &str,
        now: u64,
        out: &mut Vec<Output>,
    ) {
        let is_invite = req.method() == Some(Method::Invite);
        if is_invite {
            self.reply(&key, 100, "Trying", None, &[], None, now, out);
            // §14.2: one INVITE at a time per dialog; glare gets 491.
            let busy = self.calls.get(&call).is_some_and(|c| c.invite_busy);
            if busy {
                self.reply(&key, 491, "Request Pending", Some(tag), &[], None, now, out);
                return;
            }
        }
        if let Some(mf) = req.max_forwards()
            && mf == 0
        {
            self.reply(&key, 483, "Too Many Hops", Some(tag), &[], None, now, out);
            return;
        }
        let other = leg.other();
        let mut body: Option<(String, Vec<u8>)> = None;
        if is_sdp(req) {
            match self.anchor_from(call, leg, req.body()) {
                Ok(b) => body = Some(("application/sdp".to_owned(), b)),
                Err(e) => {
                    let s = e.sip_status();
                    let r = sdp_failure_reason(s);
                    self.reply(&key, s, r, Some(tag), &[], None, now, out);
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
            let p = Purpose::Invite {
                server: key.clone(),
                from: leg,
                initial: false,
            };
            self.send_request(call, other, "INVITE", p, &extra, b, now, out)
        } else {
            let m = req.method().map_or("INFO", |m| m.as_str()).to_owned();
            let p = Purpose::Relay {
                server: key.clone(),
                from: leg,
            };
            self.send_request(call, other, &m, p, &extra, b, now, out)
        };
        if sent.is_none() {
            self.reply(
                &key,
                500,
                "Server Internal Error",
                Some(tag),
                &[],
                None,
                now,
                out,
            );
        }
    }

    /// Anchors SDP that `from` sent, for the other leg: rewritten onto the other side's ports,
    /// and `from`'s media address noted.
    fn anchor_from(&mut self, call: CallId, from: Leg, body: &[u8]) -> Result<Vec<u8>, SdpError> {
        let addr = self.cfg.media_address;
        let Some(c) = self.calls.get_mut(&call) else {
            return Err(SdpError::NoPorts { index: 0 });
        };
        let a = anchor(body, addr, c.ports(from.other()))?;
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
            return Ok(locate::set_origin(&a.body, addr, *o));
        }
        Ok(a.body)
    }

    /// Tells the shell about media once both sides have described theirs, and on change.
    fn media_update(&mut self, call: CallId, out: &mut Vec<Output>) {
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
        if c.last_media != Some((a, b)) {
            c.last_media = Some((a, b));
            out.push(Output::Media { call, a, b });
        }
    }

    fn on_dialog_ack(
        &mut self,
        call: CallId,
        leg: Leg,
        msg: &Message,
        now: u64,
        ports: &mut dyn PortAllocator,
        out: &mut Vec<Output>,
    ) {
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
            self.own_ack(call, msg, now, ports, out);
            return;
        }
        let first = c.phase == Phase::Calling;
        if first {
            c.phase = Phase::Confirmed;
        }
        // Late offer: the answer comes in this ACK (RFC 3261 §13.2.1).
        let mut body = None;
        if is_sdp(msg) {
            match self.anchor_from(call, leg, msg.body()) {
                Ok(b) => body = Some(b),
                Err(_) => {
                    // An answer we cannot relay: the call cannot have media; end it.
                    self.send_ack(call, leg.other(), w.to_cseq, None, out);
                    self.hangup(call, EndCause::Failed, None, now, ports, out);
                    return;
                }
            }
        }
        let b = body.as_deref().map(|b| ("application/sdp", b));
        self.send_ack(call, leg.other(), w.to_cseq, b, out);
        self.media_update(call, out);
        if first {
            out.push(Output::Event {
                call,
                event: CallEvent::Answered,
            });
        }
    }

    // ---------------------------------------------------------------- responses

    fn on_response(
        &mut self,
        from: SocketAddr,
        msg: Message,
        now: u64,
        ports: &mut dyn PortAllocator,
        out: &mut Vec<Output>,
    ) {
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
            out.push(Output::Refused {
                from,
                refusal: Refusal::Response,
            });
            return;
        }
        let Some(mut e) = self.clients.remove(&ckey) else {
            self.stray_response(from, &msg, status, out);
            return;
        };
        let ack = if e.tx.kind() == TxKind::Invite && status >= 300 {
            Self::non2xx_ack(&e.request, &msg)
        } else {
            None
        };
        let (fate, actions) = e.tx.on_response(status, ack, now);
        let mut terminated = false;
        for a in actions {
            match a {
                TxAction::Send(b) => Self::send(out, e.transport, e.peer, b),
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
            Purpose::Invite {
                server,
                from,
                initial,
            } => self.invite_response(
                call, leg, from, server, initial, &msg, status, now, ports, out,
            ),
            Purpose::Relay { server, from } => {
                self.relay_response(call, from, &server, &msg, status, now, out)
            }
            Purpose::Return => self.return_response(call, &msg, status, now, ports, out),
        }
    }

    /// A 2xx retransmission after its transaction ended: resend our ACK (§13.2.2.4).
    fn stray_response(
        &mut self,
        from: SocketAddr,
        msg: &Message,
        status: u16,
        out: &mut Vec<Output>,
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
            out.push(Output::Refused {
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
            Self::send(out, d.transport, d.peer, bytes.clone());
        }
    }

    /// ACK for a non-2xx final response (§17.1.1.3): the INVITE's Request-URI, Call-ID,
    /// From, top Via and Route, and the response's To.
    fn non2xx_ack(invite: &Message, resp: &Message) -> Option<Bytes> {
        let uri = invite.request_uri_str()?;
        let mut b = crate::sip::message::RequestBuilder::new("ACK", uri)
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

    fn reason_of(msg: &Message) -> String {
        msg.reason_phrase()
            .and_then(|r| std::str::from_utf8(r).ok())
            .filter(|r| !r.is_empty())
            .unwrap_or("Unknown")
            .to_owned()
    }

    /// A response to an INVITE we relayed from leg `from` onto `leg`.
    #[allow(clippy::too_many_arguments)]
    fn invite_response(
        &mut self,
        call: CallId,
        leg: Leg,
        from: Leg,
        server: SKey,
        initial: bool,
        msg: &Message,
        status: u16,
        now: u64,
        ports: &mut dyn PortAllocator,
        out: &mut Vec<Output>,
    ) {
        // §9.1: a CANCEL waits for a provisional response (a 100 will do).
        if initial && status < 200 && self.calls.get(&call).is_some_and(|c| c.cancel_pending) {
            self.cancel_b(call, now, out);
            return;
        }
        if status == 100 {
            return; // hop-by-hop; we sent our own
        }
        let Some(c) = self.calls.get_mut(&call) else {
            return;
        };
        let cancelled = initial && matches!(c.phase, Phase::Cancelling | Phase::Ended { .. });
        if initial && status > 100 && status < 200 && c.b.remote_tag.is_none() {
            // Early dialog (§12.1.2): later CANCEL/UPDATE need the contact centre's tag.
            if let Some(t) = msg.to_tag() {
                c.b.remote_tag = Some(t.to_owned());
                c.b.remote = lossy(msg.get("To").unwrap_or(b""));
            }
        }
        if (200..300).contains(&status) {
            // The dialog on `leg` is confirmed (§12.1.2): learn its tag, target and route set.
            let d = c.dialog(leg);
            if initial {
                d.remote_tag = msg.to_tag().map(str::to_owned);
                d.remote = lossy(msg.get("To").unwrap_or(b""));
                let mut rr: Vec<String> = msg.get_all("Record-Route").map(lossy).collect();
                rr.reverse();
                d.route_set = rr;
            }
            if let Ok(crate::sip::headers::Contacts::List(l)) = msg.contacts()
                && let Some(n) = l.first()
            {
                d.remote_target = n.uri_raw.to_owned();
            }
        }
        if cancelled {
            // The trunk gave up while the contact centre answered (CANCEL crossing a 200):
            // confirm and end the B dialog (§15: ACK then BYE).
            if (200..300).contains(&status) {
                let seq = msg.cseq().map_or(1, |c| c.seq);
                self.send_ack(call, leg, seq, None, out);
                self.send_request(call, leg, "BYE", Purpose::Own, &[], None, now, out);
            }
            return;
        }
        let Some(c) = self.calls.get(&call) else {
            return;
        };
        let tag = match from {
            Leg::A => c.a.local_tag.clone(),
            Leg::B => c.b.local_tag.clone(),
        };
        let mut body = None;
        if is_sdp(msg) && status < 300 {
            match self.anchor_from(call, leg, msg.body()) {
                Ok(b) => body = Some(("application/sdp", b)),
                Err(_) if status >= 200 => {
                    // An answer without a codec we can relay: take the call down on both sides.
                    let seq = msg.cseq().map_or(1, |c| c.seq);
                    self.send_ack(call, leg, seq, None, out);
                    self.send_request(call, leg, "BYE", Purpose::Own, &[], None, now, out);
                    let answer = (488, "Not Acceptable Here", Some(tag.as_str()));
                    let end = initial.then_some(EndCause::Failed);
                    self.fail_invite(call, &server, answer, &[], end, now, ports, out);
                    return;
                }
                Err(_) => {}
            }
        }
        let reason = Self::reason_of(msg);
        let (contact, _) = self.local();
        if status < 200 {
            let extra = [("Contact", contact)];
            self.reply(&server, status, &reason, Some(&tag), &extra, body, now, out);
            return;
        }
        if status < 300 {
            let Some(req) = self.servers.get(&server).map(|e| e.request.clone()) else {
                return;
            };
            let mut b = ResponseBuilder::new(&req, status, &reason)
                .to_tag(&tag)
                .header("Contact", &contact)
                .header("Allow", ALLOW)
                .header("Server", &self.cfg.user_agent);
            if let Some((ct, body)) = body {
                b = b.body(ct, body);
            }
            let Ok(resp) = b.build() else { return };
            let bytes = resp.as_bytes().clone();
            self.respond(&server, resp, now, out);
            let from_cseq = req.cseq().map_or(0, |c| c.seq);
            let to_cseq = msg.cseq().map_or(0, |c| c.seq);
            let t1 = self.cfg.timers.t1;
            let reliable = self
                .servers
                .get(&server)
                .is_some_and(|e| e.transport == Transport::Tcp);
            if let Some(c) = self.calls.get_mut(&call) {
                c.ack_wait = Some(AckWait {
                    from,
                    from_cseq,
                    to_cseq,
                    own: false,
                });
                // §13.3.1.4: the TU resends the 2xx (T1 doubling to T2) until the ACK, 64·T1.
                c.retrans = Some(Retrans {
                    leg: from,
                    bytes,
                    next: if reliable { u64::MAX } else { now + t1 },
                    interval: t1,
                    deadline: now + 64 * t1,
                });
            }
            return;
        }
        // 3xx-6xx: same class towards the other side, without the contact centre's Contact.
        // A loop call's failed return leg goes to the fallback first (the caller stays).
        if initial && from == Leg::A && self.try_fallback(call, now, ports, out) {
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
            reason
        } else {
            "Forbidden".to_owned()
        };
        let end = initial.then_some(EndCause::Rejected(status));
        let answer = (mapped, reason.as_str(), Some(tag.as_str()));
        self.fail_invite(call, &server, answer, &extra, end, now, ports, out);
    }

    /// A response to a non-INVITE request we relayed from leg `from`.
    #[allow(clippy::too_many_arguments)]
    fn relay_response(
        &mut self,
        call: CallId,
        from: Leg,
        server: &SKey,
        msg: &Message,
        status: u16,
        now: u64,
        out: &mut Vec<Output>,
    ) {
        if status < 200 {
            return; // provisionals to non-INVITE stay hop-by-hop
        }
        let tag = self.calls.get(&call).map(|c| match from {
            Leg::A => c.a.local_tag.clone(),
            Leg::B => c.b.local_tag.clone(),
        });
        let mut body = None;
        if is_sdp(msg) {
            if let Ok(b) = self.anchor_from(call, from.other(), msg.body()) {
                body = Some(("application/sdp", b));
            }
            self.media_update(call, out);
        }
        let reason = Self::reason_of(msg);
        self.reply(
            server,
            map_failure(status),
            &reason,
            tag.as_deref(),
            &[],
            body,
            now,
            out,
        );
    }

    // ---------------------------------------------------------------- timers

    fn on_tick(&mut self, now: u64, ports: &mut dyn PortAllocator, out: &mut Vec<Output>) {
        let due: Vec<SKey> = self
            .servers
            .iter()
            .filter(|(_, e)| e.tx.next_deadline().is_some_and(|d| d <= now))
            .map(|(k, _)| k.clone())
            .collect();
        for k in due {
            let Some(e) = self.servers.get_mut(&k) else {
                continue;
            };
            let mut done = false;
            for a in e.tx.poll(now) {
                match a {
                    TxAction::Send(b) => Self::send(out, e.transport, e.peer, b),
                    TxAction::Terminated => done = true,
                    TxAction::Timeout => {}
                }
            }
            if done {
                self.servers.remove(&k);
            }
        }
        // Terminated 2xx INVITE server transactions have no timers: drop them with their call.
        let due: Vec<String> = self
            .clients
            .iter()
            .filter(|(_, e)| e.tx.next_deadline().is_some_and(|d| d <= now))
            .map(|(k, _)| k.clone())
            .collect();
        for k in due {
            let Some(mut e) = self.clients.remove(&k) else {
                continue;
            };
            let (mut done, mut timeout) = (false, false);
            for a in e.tx.poll(now) {
                match a {
                    TxAction::Send(b) => Self::send(out, e.transport, e.peer, b),
                    TxAction::Terminated => done = true,
                    TxAction::Timeout => timeout = true,
                }
            }
            let (call, purpose) = (e.call, e.purpose.clone());
            if !done {
                self.clients.insert(k, e);
            }
            if timeout {
                self.client_timeout(call, purpose, now, ports, out);
            }
        }
        // 2xx retransmission and calls that never got their ACK.
        let ids: Vec<CallId> = self.calls.keys().copied().collect();
        let gc = 64 * self.cfg.timers.t1;
        for id in ids {
            let Some(c) = self.calls.get_mut(&id) else {
                continue;
            };
            if let Phase::Ended { at } = c.phase {
                if now >= at + gc {
                    let (a, b) = (c.a.call_id.clone(), c.b.call_id.clone());
                    self.calls.remove(&id);
                    self.dialogs.remove(&a);
                    self.dialogs.remove(&b);
                    self.servers
                        .retain(|_, e| e.call != Some(id) || e.tx.next_deadline().is_some());
                }
                continue;
            }
            self.loop_tick(id, now, ports, out);
            let Some(c) = self.calls.get_mut(&id) else {
                continue;
            };
            let Some(r) = &mut c.retrans else { continue };
            if now >= r.deadline {
                // §13.3.1.4: no ACK within 64·T1: the dialog is over; BYE both legs (the
                // other leg's 2xx is ACKed first, which we held for the end-to-end ACK).
                c.retrans = None;
                let wait = c.ack_wait.take();
                if !wait.is_some_and(|w| w.own) {
                    c.phase = Phase::Confirmed;
                }
                if let Some(w) = wait.filter(|w| !w.own) {
                    self.send_ack(id, w.from.other(), w.to_cseq, None, out);
                }
                self.hangup(id, EndCause::Timeout, None, now, ports, out);
                continue;
            }
            if now >= r.next {
                let d = match r.leg {
                    Leg::A => &c.a,
                    Leg::B => &c.b,
                };
                out.push(Output::Send {
                    transport: d.transport,
                    to: d.peer,
                    bytes: r.bytes.clone(),
                });
                r.interval = (r.interval * 2).min(self.cfg.timers.t2);
                r.next = now + r.interval;
            }
        }
        let live: std::collections::HashSet<CallId> = self.calls.keys().copied().collect();
        self.servers.retain(|_, e| {
            e.call.is_none_or(|c| live.contains(&c)) || e.tx.next_deadline().is_some()
        });
        self.servers
            .retain(|_, e| !(e.tx.state() == ServerState::Terminated && e.call.is_none()));
    }

    fn client_timeout(
        &mut self,
        call: CallId,
        purpose: Purpose,
        now: u64,
        ports: &mut dyn PortAllocator,
        out: &mut Vec<Output>,
    ) {
        let (server, from, initial) = match purpose {
            Purpose::Own => return,
            Purpose::Return => {
                self.return_failed(call, 408, EndCause::Timeout, now, ports, out);
                return;
            }
            Purpose::Invite {
                server,
                from,
                initial,
            } => (server, from, initial),
            Purpose::Relay { server, from } => (server, from, false),
        };
        let tag = self.calls.get(&call).map(|c| match from {
            Leg::A => c.a.local_tag.clone(),
            Leg::B => c.b.local_tag.clone(),
        });
        // §8.1.3.1: a timeout is a 408 from the far side.
        if initial && from == Leg::A && self.try_fallback(call, now, ports, out) {
            return;
        }
        let end = initial.then_some(EndCause::Timeout);
        let answer = (408, "Request Timeout", tag.as_deref());
        self.fail_invite(call, &server, answer, &[], end, now, ports, out);
    }

    /// Answers the INVITE transaction `server` with a failure (`status`, reason, To tag), frees
    /// the call for the next INVITE, and ends the call when it was the initial INVITE (`end`).
    #[allow(clippy::too_many_arguments)]
    fn fail_invite(
        &mut self,
        call: CallId,
        server: &SKey,
        (status, reason, tag): (u16, &str, Option<&str>),
        extra: &[(&str, String)],
        end: Option<EndCause>,
        now: u64,
        ports: &mut dyn PortAllocator,
        out: &mut Vec<Output>,
    ) {
        self.reply(server, status, reason, tag, extra, None, now, out);
        if let Some(c) = self.calls.get_mut(&call) {
            c.invite_busy = false;
        }
        if let Some(cause) = end {
            self.end_call(call, cause, now, ports, out);
        }
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

    #[test]
    fn failures_keep_their_class() {
        assert_eq!(map_failure(486), 486);
        assert_eq!(map_failure(407), 403);
        assert_eq!(map_failure(603), 603);
    }

    #[test]
    fn origin_address_is_ours_and_the_rest_untouched() {
        let body = b"v=0\r\no=alice 2890844526 2890844527 IN IP4 192.0.2.10\r\ns=-\r\n";
        let out = hide_origin(body, "10.0.0.1".parse().unwrap());
        assert_eq!(
            out,
            b"v=0\r\no=alice 2890844526 2890844527 IN IP4 10.0.0.1\r\ns=-\r\n".to_vec()
        );
        let v6 = hide_origin(
            b"o=- 1 1 IN IP4 192.0.2.10\n",
            "2001:db8::1".parse().unwrap(),
        );
        assert_eq!(v6, b"o=- 1 1 IN IP6 2001:db8::1\n".to_vec());
    }

    #[test]
    fn route_target_must_be_an_ip_literal() {
        let mut rc = RouteConfig::default();
        let r = Route::from_config(&rc).unwrap();
        assert_eq!(r.target, "127.0.0.1:5080".parse().unwrap());
        rc.target = "sip:agents@cc.example.com".into();
        assert!(Route::from_config(&rc).is_err());
    }

    #[test]
    fn ids_follow_the_seed_and_never_repeat() {
        let cfg = |seed: u8| {
            let c = Config::default();
            B2buaConfig::from_config(&c, [seed; 32]).unwrap()
        };
        let draw = |seed: u8| {
            let mut core = B2bua::new(cfg(seed));
            (0..1000).map(|_| core.new_id("t")).collect::<Vec<_>>()
        };
        let (a, a2, b) = (draw(1), draw(1), draw(2));
        assert_eq!(
            a, a2,
            "a seed replays the same ids (tests stay deterministic)"
        );
        assert!(
            a.iter().all(|id| !b.contains(id)),
            "another seed, other ids"
        );
        let unique: std::collections::HashSet<_> = a.iter().collect();
        assert_eq!(unique.len(), a.len());
    }

    #[test]
    fn a_route_hears_each_leg_only_from_its_peer() {
        let mut rc = RouteConfig {
            sources: vec!["192.0.2.0/24".parse().unwrap()],
            peer_sources: vec!["198.51.100.7/32".parse().unwrap()],
            ..RouteConfig::default()
        };
        let r = Route::from_config(&rc).unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(r.may_speak(Leg::A, ip("192.0.2.9")));
        assert!(
            r.may_speak(Leg::A, ip("::ffff:192.0.2.9")),
            "IPv4 seen on a dual-stack socket"
        );
        assert!(r.may_speak(Leg::B, ip("::ffff:127.0.0.1")));
        assert!(
            !r.may_speak(Leg::A, ip("127.0.0.1")),
            "the target is not the trunk"
        );
        assert!(!r.may_speak(Leg::A, ip("198.51.100.7")));
        assert!(r.may_speak(Leg::B, ip("127.0.0.1")), "the target's host");
        assert!(
            r.may_speak(Leg::B, ip("198.51.100.7")),
            "a listed peer source"
        );
        assert!(
            !r.may_speak(Leg::B, ip("192.0.2.9")),
            "the trunk is not the contact centre"
        );
        rc.sources.clear();
        let any = Route::from_config(&rc).unwrap();
        assert!(
            any.may_speak(Leg::A, ip("203.0.113.1")),
            "an empty allow-list is anyone"
        );
        assert!(!any.may_speak(Leg::B, ip("203.0.113.1")));
    }
}
