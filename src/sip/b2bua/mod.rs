//! The B2BUA call core (RFC 3261 §6 "back-to-back user agent"), sans-IO.
//!
//! Owns every call's two dialogs — the A-leg (trunk, we are its UAS) and the B-leg (contact
//! centre, we are its UAC) — their transactions, the mapping of requests and responses between
//! them, SDP anchoring on the relay's ports and the call limit. The shell feeds it received
//! messages and ticks with the current time and performs the returned [`Output`]s.
//! Inline routes relay the A-leg INVITE at once; loop routes (PCI Pal model, see `loop_call`)
//! first learn a locator and then place the B-leg to the contact centre's return number.
//!
//! It must never read a clock, touch a socket, forward a header of one leg onto the other (Via,
//! Contact, Record-Route, Route, Call-ID and tags are per leg), forward a DTMF INFO from the
//! trunk, or put a digit anywhere but [`Output::Digit`]. It never panics on wire input.
//!
//! The files: `types` (what goes in and out), `route` (where calls go), `state` (per call and
//! per transaction), `context` (what one input carries), `media` (SDP anchoring and the SDP
//! we write), `transactions` (sending, answering, responses), `invite` (new calls and their
//! INVITE), `in_dialog` (requests within a dialog), `teardown` (ending calls, timers) and
//! `loop_call` (the loop model) and `session_timer` (RFC 4028 on the trunk's leg).

#![warn(clippy::unwrap_used, clippy::indexing_slicing)]

mod context;
mod in_dialog;
mod invite;
mod loop_call;
mod media;
mod route;
mod session_timer;
mod srtp;
mod state;
mod teardown;
mod transactions;
mod types;

use std::collections::HashMap;
use std::net::IpAddr;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

pub use crate::ids::CallId;
pub use crate::sip::Side;
pub use route::{LocatorSource, LoopRoute, OnFailure, Route, RouteMode, any_route_allows};
pub use session_timer::MIN_SE_S;
pub use srtp::{LegCrypto, RelaySrtp};
pub use types::{
    CallEvent, EndCause, Input, Leg, LegMedia, LocateOutcome, Output, PortAllocator, Refusal,
    RelayPorts,
};

use crate::sip::Transport;
use crate::sip::transaction::TimerConfig;
use context::Cx;
use state::{CallLegs, ClientEntry, Phase, SKey, ServerEntry};

/// Settings of the core.
#[derive(Clone, Debug)]
pub struct B2buaConfig {
    /// host:port put in our Via and Contact on UDP and TCP legs.
    pub sip_host: String,
    /// host:port of the TLS listener, put in our Via and Contact on TLS legs.
    pub tls_host: String,
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
    #[error(
        "route {route}: a loop route's legs are plain RTP for now: srtp_trunk may not be \"required\" nor srtp_target other than \"off\""
    )]
    LoopSrtp { route: String },
}

impl B2buaError {
    /// Which side's settings are wrong: every route error names the contact centre's
    /// addresses (the trunk side is only an allow-list, which cannot be malformed here).
    pub fn side(&self) -> Side {
        match self {
            B2buaError::RouteTarget { .. }
            | B2buaError::RouteFallback { .. }
            | B2buaError::MissingFallback { .. }
            | B2buaError::LoopSrtp { .. } => Side::ContactCentre,
        }
    }
}

/// The call core. See the module docs.
#[derive(Debug)]
pub struct B2bua {
    cfg: B2buaConfig,
    calls: HashMap<CallId, CallLegs>,
    /// Call-ID of either leg → call and leg.
    dialogs: HashMap<String, (CallId, Leg)>,
    servers: HashMap<SKey, ServerEntry>,
    clients: HashMap<String, ClientEntry>,
    /// Draws every identifier a stranger could use to reach a call (RFC 3261 §19.3 asks
    /// tags and Call-IDs to be globally unique and cryptographically random).
    ids: StdRng,
    active: usize,
    /// The earliest deadline as of the last scan of every call and transaction, and that
    /// scan's time (see [`B2bua::next_deadline`]).
    deadline: std::cell::Cell<Option<Option<u64>>>,
    scanned_at: std::cell::Cell<u64>,
    /// Whether an input came since the last scan, and the time of the latest.
    stale: std::cell::Cell<Option<u64>>,
    /// Leaving service: set by [`Input::Drain`], cleared by [`Input::Resume`].
    drain: Option<Drain>,
}

/// A drain in progress.
#[derive(Clone, Copy, Debug)]
struct Drain {
    /// When the calls still up are hung up; none: they may last.
    deadline: Option<u64>,
    /// The deadline passed and they were.
    done: bool,
}

/// The Reason (RFC 3326) on the BYEs of calls still up when the drain limit passes: the
/// far ends' logs say why the call ended.
const DRAIN_REASON: &str = "SIP;cause=503;text=\"node draining\"";

/// How late a deadline set by an input may fire: the deadlines are rescanned at most this
/// often while inputs keep coming. SIP's timers run in half seconds (T1) and more.
const DEADLINE_REFRESH_MS: u64 = 10;

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
            deadline: std::cell::Cell::new(None),
            scanned_at: std::cell::Cell::new(0),
            stale: std::cell::Cell::new(None),
            drain: None,
        }
    }

    /// Whether a drain is in progress (new calls and OPTIONS get 503).
    pub fn draining(&self) -> bool {
        self.drain.is_some()
    }

    /// Whether a new call would be taken now: not draining and below the call limit. OPTIONS
    /// answers 200 exactly then, so a load balancer's probe tells what an INVITE would get.
    pub fn accepting(&self) -> bool {
        self.drain.is_none() && self.active < self.cfg.max_calls
    }

    /// Requests of ours still waiting for an answer (a BYE at shutdown, say): a shell that
    /// is about to exit gives them a moment to complete.
    pub fn open_requests(&self) -> usize {
        use crate::sip::transaction::ClientState as S;
        self.clients
            .values()
            .filter(|e| matches!(e.tx.state(), S::Calling | S::Trying | S::Proceeding))
            .count()
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

    /// When [`Input::Tick`] next has something to do: the earliest deadline, or a moment at
    /// most [`DEADLINE_REFRESH_MS`] after the last scan when inputs have come since, whichever
    /// is sooner. Finding the earliest deadline is a scan of every call and transaction; the
    /// shell asks after every event, and at 1,000 calls a second a scan per SIP message was
    /// two thirds of the process's CPU. So inputs within one refresh share a scan, and a
    /// deadline one of them set fires at most that much late.
    pub fn next_deadline(&self) -> Option<u64> {
        let cached = self.deadline.get();
        match (cached, self.stale.get()) {
            (Some(d), None) => d,
            (Some(d), Some(now)) if now < self.scanned_at.get() + DEADLINE_REFRESH_MS => {
                let bound = self.scanned_at.get() + DEADLINE_REFRESH_MS;
                Some(d.map_or(bound, |d| d.min(bound)))
            }
            _ => {
                let d = self.scan_deadlines();
                self.deadline.set(Some(d));
                if let Some(now) = self.stale.take() {
                    self.scanned_at.set(now);
                }
                d
            }
        }
    }

    fn scan_deadlines(&self) -> Option<u64> {
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
            let timer = c.timer.filter(|_| c.a_up()).and_then(|t| t.deadline());
            [retrans, lp, timer].into_iter().flatten().min()
        });
        let d = self.drain.filter(|d| !d.done).and_then(|d| d.deadline);
        s.chain(c).chain(r).chain(d).min()
    }

    /// A tag, branch or Call-ID: 64 random bits after `prefix`.
    pub(super) fn new_id(&mut self, prefix: &str) -> String {
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

    /// Our Contact on a leg over `transport`: where the peer sends its requests in the dialog.
    /// A `secure` dialog (its Request-URI or the peer's Contact is a SIPS URI) gets a SIPS
    /// Contact (RFC 3261 §8.1.1.8, §12.1.1; RFC 5630 §3.1.3 drops `transport=tls` from it);
    /// a plain sip: dialog over TLS names the transport, or the peer would come back over
    /// UDP to the wrong port (§19.1.1).
    pub(super) fn contact(&self, transport: Transport, secure: bool) -> String {
        match transport {
            Transport::Tls if secure => format!("<sips:{}>", self.cfg.tls_host),
            Transport::Tls => format!("<sip:{};transport=tls>", self.cfg.tls_host),
            Transport::Udp | Transport::Tcp => format!("<sip:{}>", self.cfg.sip_host),
        }
    }

    /// The sent-by of our Via on a leg over `transport` (§18.2.2 answers a broken connection
    /// there, so it names the listener of that transport).
    pub(super) fn via_host(&self, transport: Transport) -> String {
        match transport {
            Transport::Tls => self.cfg.tls_host.clone(),
            Transport::Udp | Transport::Tcp => self.cfg.sip_host.clone(),
        }
    }

    /// Feeds one input; outputs are appended to `out`.
    pub fn handle(
        &mut self,
        input: Input,
        now: u64,
        ports: &mut dyn PortAllocator,
        out: &mut Vec<Output>,
    ) {
        self.stale.set(Some(now));
        let cx = &mut Cx { now, ports, out };
        match input {
            Input::Received {
                transport,
                from,
                msg,
            } => {
                if msg.is_request() {
                    self.on_request(transport, from, msg, cx);
                } else if !self.allowed_source(from.ip()) {
                    cx.out.push(Output::Refused {
                        from,
                        refusal: Refusal::Stranger,
                    });
                } else {
                    self.on_response(from, msg, cx);
                }
            }
            Input::Tick => {
                self.drain_tick(cx);
                self.on_tick(cx);
            }
            Input::TransportFailed { transport, peer } => {
                self.transport_failed(transport, peer, cx)
            }
            Input::MediaTimeout { call } => self.hangup(
                call,
                EndCause::MediaTimeout,
                Some("SIP;cause=408;text=\"media inactivity\""),
                cx,
            ),
            Input::Hangup { call } => {
                self.hangup(call, EndCause::Hangup, None, cx);
            }
            Input::Drain { limit_ms } => {
                if self.drain.is_none() {
                    self.drain = Some(Drain {
                        deadline: limit_ms.map(|l| now.saturating_add(l)),
                        done: false,
                    });
                    // The new deadline must be seen by the next scan.
                    self.deadline.set(None);
                }
            }
            Input::Resume => self.drain = None,
            Input::Located { call, outcome } => self.on_located(call, outcome, cx),
        }
    }

    /// Hangs up every call still up once the drain's deadline has passed.
    fn drain_tick(&mut self, cx: &mut Cx<'_>) {
        let Some(d) = &mut self.drain else { return };
        if d.done || d.deadline.is_none_or(|at| cx.now < at) {
            return;
        }
        d.done = true;
        let live: Vec<CallId> = self
            .calls
            .iter()
            .filter(|(_, c)| !c.ended())
            .map(|(id, _)| *id)
            .collect();
        for call in live {
            self.hangup(call, EndCause::Drained, Some(DRAIN_REASON), cx);
        }
    }

    /// On some route's allow-list or one of the contact centre's addresses: who may send us
    /// anything at all.
    pub(super) fn allowed_source(&self, ip: IpAddr) -> bool {
        any_route_allows(&self.cfg.routes, ip)
    }

    /// Whether `ip` is the peer of `leg` of `call` (see [`Route::may_speak`]).
    pub(super) fn leg_peer(&self, call: CallId, leg: Leg, ip: IpAddr) -> bool {
        self.calls
            .get(&call)
            .and_then(|c| self.cfg.routes.get(c.route))
            .is_some_and(|r| r.may_speak(leg, ip))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_the_seed_and_never_repeat() {
        let cfg = |seed: u8| B2buaConfig {
            sip_host: "127.0.0.1:5060".into(),
            tls_host: "127.0.0.1:5061".into(),
            media_address: "127.0.0.1".parse().unwrap(),
            routes: Vec::new(),
            max_calls: 1,
            retry_after_s: 1,
            carry_headers: Vec::new(),
            user_agent: "t".into(),
            timers: TimerConfig::default(),
            id_seed: [seed; 32],
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
}
