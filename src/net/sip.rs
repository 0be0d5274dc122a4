//! The SIP shell: UDP and TCP transports around the sans-IO [`B2bua`], and the wiring of its
//! outputs to the media relays and the control API.
//!
//! One core task owns the B2BUA: transports parse what they receive and hand it over an mpsc
//! channel, a timer fires at [`B2bua::next_deadline`], and the core task performs the outputs
//! (sends through the transports, starts and stops a [`MediaRelay`] per call, feeds digits to
//! the API). The port allocator the core calls is synchronous: it binds sockets at once and
//! keeps them (as leases) until the call's relay takes them or the core releases them.
//!
//! It must never log per packet or log a digit; call events are logged with the call id.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::config::{Config, RouteMode, ScrubMode, Transport};
use crate::digit::DigitSource;
use crate::dsp::g711::Codec;
use crate::net::api::{ApiState, SessionRef};
use crate::net::calls::CallInfo;
use crate::net::limits::{ConnLimiter, ConnMetrics, ConnPermit, LogGate, Refusal, SourcePolicy};
use crate::net::media::{
    ControlSender, MediaControl, MediaEvent, MediaHandle, MediaRelay, MediaWorkers, RelayOptions,
    RelayStatsSnapshot,
};
use crate::net::ports::{PortPair, PortPool};
use crate::payment::locator::LocatorCollector;
use crate::rtp::scrubber::ScrubberConfig;
use crate::sip::b2bua::{
    B2bua, B2buaError, CallEvent, CallId, EndCause, Input, LegMedia, LocateOutcome, Output,
    PortAllocator, Refusal as MessageRefusal, RelayPorts,
};
use crate::sip::framer::{Frame, FrameError, PONG, StreamFramer};
use crate::sip::message::{Framing, Limits, Message};

/// Inputs waiting for the core; transports wait (backpressure) when it is full.
const CORE_QUEUE: usize = 4096;
/// Messages waiting to be written on one TCP connection.
const TCP_QUEUE: usize = 256;
/// How long shutdown waits for hung-up calls to finish their BYE transactions.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// What the core task receives.
enum CoreMsg {
    Sip(Input),
    /// A TCP connection (accepted or opened) can carry messages to `peer`.
    TcpUp {
        peer: SocketAddr,
        tx: mpsc::Sender<Bytes>,
    },
    /// The connection whose queue is `tx` is gone (a newer one to the same peer may not be).
    TcpDown {
        peer: SocketAddr,
        tx: mpsc::Sender<Bytes>,
    },
    /// A loop call's locator was resolved (and the call bound to its session) or not.
    Located {
        call: CallId,
        outcome: LocateOutcome,
    },
    /// A key heard on a loop call before it is bridged: locator material, never capture.
    LocatorKey {
        call: CallId,
        digit: crate::digit::Digit,
        at_ms: u64,
    },
    /// A key the agent pressed on an inline call (agent→caller direction).
    AgentKey {
        call: CallId,
        digit: crate::digit::Digit,
        at_ms: u64,
    },
}

/// The sockets SIP listens on (bound by the caller, so it can report the addresses).
pub struct SipSockets {
    pub udp: Option<UdpSocket>,
    pub tcp: Option<TcpListener>,
}

/// Ports the B2BUA allocated whose relay has not started yet.
struct ShellPorts {
    pool: PortPool,
    pending: HashMap<u16, PortPair>,
}

impl PortAllocator for ShellPorts {
    fn allocate(&mut self) -> Option<RelayPorts> {
        match self.pool.allocate() {
            Ok(pair) => {
                let rtp = pair.lease.rtp_port();
                self.pending.insert(rtp, pair);
                Some(RelayPorts {
                    rtp,
                    rtcp: rtp.wrapping_add(1),
                })
            }
            Err(e) => {
                tracing::warn!(error = %e, "no media ports for a new call");
                None
            }
        }
    }

    fn release(&mut self, ports: RelayPorts) {
        // Ports already moved into a relay are freed when that relay stops (MediaStopped).
        self.pending.remove(&ports.rtp);
    }
}

/// A running relay, as the core task sees it.
struct RelayRef {
    control: ControlSender,
    a_local: u16,
    b_local: u16,
    event_pt: Option<u8>,
}

/// The core task's state besides the B2BUA itself.
struct Shell {
    udp: Option<Arc<UdpSocket>>,
    tcp: HashMap<SocketAddr, mpsc::Sender<Bytes>>,
    ports: ShellPorts,
    relays: HashMap<CallId, RelayRef>,
    calls: HashMap<CallId, CallShell>,
    scrub_routes: HashSet<String>,
    loop_routes: HashSet<String>,
    /// Inline routes where the agent keying a locator binds the call.
    agent_routes: HashSet<String>,
    locator_len: usize,
    locator_inter_key_ms: u64,
    scrubber: ScrubberConfig,
    relay_opts: RelayOptions,
    api: ApiState,
    core_tx: mpsc::Sender<CoreMsg>,
    limits: Limits,
    started: Instant,
    /// Refused sources are logged at most once a minute each.
    refusals_logged: LogGate,
}

/// What the shell keeps per live call.
struct CallShell {
    /// The route scrubs from the start.
    scrub: bool,
    /// Keys on this call are locator material, not card digits: set on a loop call until it is
    /// bridged to the agent. Shared with the call's relay supervisor.
    pre_bridge: Arc<AtomicBool>,
    /// Collecting a locator from the caller leg's keys (loop route, locator by DTMF).
    collector: Option<LocatorCollector>,
    /// Collecting a locator from the agent's keys (inline route, until bound).
    agent: Option<LocatorCollector>,
    /// Loop call reading a locator by DTMF: who transferred it (look-ups are limited per source).
    source: Option<IpAddr>,
}

fn call_label(call: CallId) -> String {
    call.0.to_string()
}

/// Metric label of an end cause: fixed words, never a status text from the wire.
fn cause_label(cause: EndCause) -> &'static str {
    match cause {
        EndCause::ByeFromA => "bye_caller",
        EndCause::ByeFromB => "bye_agent",
        EndCause::Cancelled => "cancelled",
        EndCause::Rejected(_) => "rejected",
        EndCause::Timeout(_) => "timeout",
        EndCause::MediaTimeout => "media_timeout",
        EndCause::Hangup => "hangup",
        EndCause::NotLocated => "not_located",
        EndCause::Failed(_) => "failed",
    }
}

/// Runs SIP until `shutdown` turns true: the transports and the core task. On shutdown every
/// call is hung up and given [`SHUTDOWN_GRACE`] to finish.
pub async fn serve(
    config: &Config,
    sockets: SipSockets,
    pool: PortPool,
    workers: MediaWorkers,
    api: ApiState,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), B2buaError> {
    // The core's identifiers come from a CSPRNG seeded by the OS (rand's ThreadRng is
    // ChaCha12 reseeded from getrandom).
    let seed: [u8; 32] = rand::random();
    api.calls().attach();
    let mut core = B2bua::new(config.b2bua(seed)?);
    let limits = Limits {
        max_size: config.sip.max_message_size,
        ..Limits::default()
    };
    let (core_tx, mut core_rx) = mpsc::channel::<CoreMsg>(CORE_QUEUE);
    let udp = sockets.udp.map(Arc::new);
    let mut tasks = Vec::new();
    if let Some(sock) = &udp {
        tasks.push(tokio::spawn(udp_loop(
            sock.clone(),
            core_tx.clone(),
            limits,
        )));
    }
    if let Some(listener) = sockets.tcp {
        let guard = TcpGuard::from_config(config, &api.metrics().conn);
        tasks.push(tokio::spawn(tcp_accept(
            listener,
            core_tx.clone(),
            limits,
            guard,
        )));
    }
    let scrubber = ScrubberConfig {
        mask: config.media.mask.into(),
        presence: crate::dsp::dtmf::PresenceConfig {
            delay: config.delay_samples(),
            ..Default::default()
        },
        ..ScrubberConfig::default()
    };
    let mut shell = Shell {
        udp,
        tcp: HashMap::new(),
        ports: ShellPorts {
            pool,
            pending: HashMap::new(),
        },
        relays: HashMap::new(),
        calls: HashMap::new(),
        scrub_routes: config
            .routes
            .iter()
            .filter(|r| r.scrub == ScrubMode::Always)
            .map(|r| r.name.clone())
            .collect(),
        loop_routes: config
            .routes
            .iter()
            .filter(|r| r.mode == RouteMode::Loop)
            .map(|r| r.name.clone())
            .collect(),
        agent_routes: config
            .routes
            .iter()
            .filter(|r| r.mode == RouteMode::Inline && r.agent_locator)
            .map(|r| r.name.clone())
            .collect(),
        locator_len: config.payment.locator_len,
        locator_inter_key_ms: config.payment.locator_inter_key_ms,
        scrubber,
        relay_opts: RelayOptions {
            inactivity: Duration::from_secs(config.media.inactivity_timeout_s),
            record_dir: config.media.record_dir.clone(),
            workers: Some(workers),
            ..RelayOptions::default()
        },
        api,
        core_tx,
        limits,
        started: Instant::now(),
        refusals_logged: LogGate::default(),
    };

    let mut out = Vec::new();
    let mut grace: Option<Instant> = None;
    loop {
        let deadline = core
            .next_deadline()
            .map(|d| shell.started + Duration::from_millis(d));
        let input = tokio::select! {
            biased;
            _ = shutdown.changed(), if grace.is_none() => {
                grace = Some(Instant::now() + SHUTDOWN_GRACE);
                let calls: Vec<CallId> = shell.calls.keys().copied().collect();
                tracing::info!(calls = calls.len(), "shutting down: hanging up calls");
                for call in calls {
                    core.handle(Input::Hangup { call }, shell.now(), &mut shell.ports, &mut out);
                    shell.perform(&mut out).await;
                }
                None
            }
            _ = sleep_opt(grace) => break,
            msg = core_rx.recv() => match msg {
                Some(CoreMsg::Sip(input)) => Some(input),
                Some(CoreMsg::TcpUp { peer, tx }) => {
                    shell.tcp.insert(peer, tx);
                    None
                }
                Some(CoreMsg::TcpDown { peer, tx }) => {
                    if shell.tcp.get(&peer).is_some_and(|t| t.same_channel(&tx)) {
                        shell.tcp.remove(&peer);
                    }
                    None
                }
                Some(CoreMsg::Located { call, outcome }) => Some(Input::Located { call, outcome }),
                Some(CoreMsg::LocatorKey { call, digit, at_ms }) => {
                    shell.locator_key(call, digit, at_ms);
                    None
                }
                Some(CoreMsg::AgentKey { call, digit, at_ms }) => {
                    shell.agent_key(call, digit, at_ms);
                    None
                }
                None => break,
            },
            _ = sleep_opt(deadline) => Some(Input::Tick),
        };
        if let Some(input) = input {
            core.handle(input, shell.now(), &mut shell.ports, &mut out);
            shell.perform(&mut out).await;
        }
        if grace.is_some() && core.active_calls() == 0 {
            break;
        }
    }
    for task in tasks {
        task.abort();
    }
    for relay in shell.relays.values() {
        let _ = relay.control.try_send(MediaControl::Stop);
    }
    Ok(())
}

async fn sleep_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl Shell {
    /// Milliseconds since the shell started: the core's clock.
    fn now(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    async fn perform(&mut self, out: &mut Vec<Output>) {
        for o in out.drain(..) {
            match o {
                Output::Send {
                    transport: Transport::Udp,
                    to,
                    bytes,
                } => match &self.udp {
                    Some(sock) => {
                        if let Err(e) = sock.send_to(&bytes, to).await {
                            tracing::warn!(%to, error = %e, "SIP UDP send failed");
                        }
                    }
                    None => tracing::warn!(%to, "SIP over UDP is not enabled; message dropped"),
                },
                Output::Send {
                    transport: Transport::Tcp,
                    to,
                    bytes,
                } => self.send_tcp(to, bytes),
                Output::Media { call, a, b } => self.media(call, a, b),
                Output::MediaStopped { call } => {
                    if let Some(r) = self.relays.remove(&call) {
                        stop_relay(&r.control);
                    }
                }
                Output::Digit { call, digit } => {
                    let at = self.now();
                    if self
                        .calls
                        .get(&call)
                        .is_some_and(|c| c.pre_bridge.load(Ordering::Relaxed))
                    {
                        self.locator_key(call, digit, at);
                        continue;
                    }
                    let api = self.api.clone();
                    tokio::spawn(async move {
                        let label = call_label(call);
                        feed(&api, &label, call, digit, DigitSource::SipInfo, at).await;
                    });
                }
                Output::Event { call, event } => self.event(call, event),
                Output::Locate {
                    call,
                    locator: Some(locator),
                    source,
                } => self.resolve(call, locator, source),
                Output::Locate {
                    call,
                    locator: None,
                    source,
                } => {
                    let (len, gap) = (self.locator_len, self.locator_inter_key_ms);
                    if let Some(c) = self.calls.get_mut(&call) {
                        tracing::info!(call = call.0, "loop call answered: reading the locator");
                        c.collector = Some(LocatorCollector::new(len, gap));
                        c.source = Some(source);
                    }
                }
                Output::Refused { from, refusal } => self.refused(from, refusal),
                Output::Announce { call } => {
                    tracing::info!(call = call.0, "loop route: locator not found, announcing");
                    // The core hangs up after the route's announce_ms, which stops the relay.
                    if let Some(r) = self.relays.get(&call) {
                        let _ = r
                            .control
                            .try_send(MediaControl::Announce(Duration::from_secs(60)));
                    }
                }
            }
        }
    }

    /// Counts a refused message; logs its source at most once a minute, so a flood from one
    /// address costs a counter increment, not a log line each.
    fn refused(&mut self, from: SocketAddr, refusal: MessageRefusal) {
        self.api
            .metrics()
            .sip_refused
            .get_or_create(&[("reason", refusal.label())])
            .inc();
        if let Some(held_back) = self
            .refusals_logged
            .admit(from.ip(), std::time::Instant::now())
        {
            tracing::warn!(
                source = %from.ip(),
                reason = refusal.label(),
                held_back,
                "SIP message refused: the sender may not send it (further ones from this source are only counted for a minute)"
            );
        }
    }

    fn event(&mut self, call: CallId, event: CallEvent) {
        match &event {
            CallEvent::Started { route, from, to } => {
                tracing::info!(call = call.0, route = %route, "call started");
                let scrub = self.scrub_routes.contains(route);
                let looped = self.loop_routes.contains(route);
                let (len, gap) = (self.locator_len, self.locator_inter_key_ms);
                self.calls.insert(
                    call,
                    CallShell {
                        scrub,
                        pre_bridge: Arc::new(AtomicBool::new(looped)),
                        collector: None,
                        source: None,
                        agent: self
                            .agent_routes
                            .contains(route)
                            .then(|| LocatorCollector::new(len, gap)),
                    },
                );
                let m = self.api.metrics();
                m.calls_started.inc();
                m.calls_active.inc();
                let info = CallInfo {
                    route: route.clone(),
                    mode: if looped { "loop" } else { "inline" },
                    from: from.clone(),
                    to: to.clone(),
                    started_ms: self.api.clock().now_ms(),
                };
                self.api.calls().started(&call_label(call), info, scrub);
            }
            CallEvent::Answered => {
                tracing::info!(call = call.0, "call answered");
                if let Some(c) = self.calls.get_mut(&call) {
                    // Bridged: from now on the caller's keys are card digits.
                    c.pre_bridge.store(false, Ordering::Relaxed);
                    c.collector = None;
                }
            }
            CallEvent::Located { .. } => {
                tracing::info!(call = call.0, "loop call located: calling the agent back")
            }
            CallEvent::LocateFailed => {
                tracing::warn!(
                    call = call.0,
                    "loop call: locator not found or not given in time"
                )
            }
            CallEvent::Fallback => tracing::info!(call = call.0, "loop call: routed to fallback"),
            CallEvent::Ended(cause) => {
                tracing::info!(call = call.0, ?cause, "call ended");
                if self.calls.remove(&call).is_some() {
                    let m = self.api.metrics();
                    m.calls_active.dec();
                    m.call_ended(cause_label(*cause));
                }
                self.api.call_ended(&call_label(call));
            }
        }
    }

    /// Looks the locator up (in the shared directory too), binds the call to its session, and
    /// tells the core. Off the core task: a shared store is a network round trip.
    fn resolve(&self, call: CallId, locator: String, source: IpAddr) {
        let api = self.api.clone();
        let core_tx = self.core_tx.clone();
        tokio::spawn(async move {
            if !api.sip_lookup_allowed(source) {
                tracing::info!(call = call.0, %source, "loop call refused: its source is locked out of locator look-ups");
                let outcome = LocateOutcome::Refused;
                let _ = core_tx.send(CoreMsg::Located { call, outcome }).await;
                return;
            }
            let bound = bind_by_locator(&api, call, &locator).await;
            api.sip_lookup_done(source, bound.is_some());
            let outcome = match bound {
                Some((session, agent)) => {
                    tracing::info!(call = call.0, %session, "loop call bound to its payment session");
                    LocateOutcome::Found { agent, locator }
                }
                None => LocateOutcome::NotFound,
            };
            let _ = core_tx.send(CoreMsg::Located { call, outcome }).await;
        });
    }

    /// A key the agent pressed on an inline call not yet bound: when it completes a locator
    /// of a live session, the call is bound to it (capture starts, scrubbing switches on) and
    /// the relay stops listening to the agent.
    fn agent_key(&mut self, call: CallId, digit: crate::digit::Digit, at_ms: u64) {
        let Some(c) = self.calls.get_mut(&call) else {
            return;
        };
        let Some(locator) = c.agent.as_mut().and_then(|a| a.push(digit, at_ms)) else {
            return;
        };
        let api = self.api.clone();
        let control = self.relays.get(&call).map(|r| r.control.clone());
        tokio::spawn(async move {
            let Some((session, _)) = bind_by_locator(&api, call, locator.as_str()).await else {
                return;
            };
            tracing::info!(call = call.0, %session, "agent keyed the locator: call bound to its payment session");
            if let Some(c) = control {
                let _ = c.send(MediaControl::AgentDigits(false)).await;
            }
        });
    }

    /// A key on a loop call before it is bridged: locator material while one is being read,
    /// dropped otherwise (the agent is not connected yet, so it cannot be a card digit asked for).
    fn locator_key(&mut self, call: CallId, digit: crate::digit::Digit, at_ms: u64) {
        let Some(c) = self.calls.get_mut(&call) else {
            return;
        };
        let Some(collector) = c.collector.as_mut() else {
            return;
        };
        if let Some(locator) = collector.push(digit, at_ms) {
            c.collector = None;
            tracing::info!(call = call.0, "locator keyed");
            let source = c.source.unwrap_or(IpAddr::from([0, 0, 0, 0]));
            self.resolve(call, locator.as_str().to_string(), source);
        }
    }

    fn send_tcp(&mut self, to: SocketAddr, bytes: Bytes) {
        if let Some(tx) = self.tcp.get(&to) {
            match tx.try_send(bytes) {
                Ok(()) => return,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    tracing::warn!(%to, "SIP TCP connection backed up; message dropped");
                    return;
                }
                // The connection went away; open a new one below.
                Err(mpsc::error::TrySendError::Closed(b)) => {
                    self.tcp.remove(&to);
                    return self.connect_tcp(to, b);
                }
            }
        }
        self.connect_tcp(to, bytes);
    }

    /// RFC 3261 §18.1.1: with no connection to the destination, open one. The message waits in
    /// the new connection's queue until it is up.
    fn connect_tcp(&mut self, to: SocketAddr, first: Bytes) {
        let (tx, rx) = mpsc::channel(TCP_QUEUE);
        let _ = tx.try_send(first);
        self.tcp.insert(to, tx.clone());
        let core_tx = self.core_tx.clone();
        let limits = self.limits;
        tokio::spawn(async move {
            match TcpStream::connect(to).await {
                Ok(stream) => tcp_conn(stream, to, core_tx, limits, tx, rx).await,
                Err(e) => {
                    tracing::warn!(%to, error = %e, "SIP TCP connect failed");
                    let _ = core_tx.send(CoreMsg::TcpDown { peer: to, tx }).await;
                }
            }
        });
    }

    fn media(&mut self, call: CallId, a: LegMedia, b: LegMedia) {
        let event_pt = a.codecs.telephone_event;
        if let Some(r) = self.relays.get_mut(&call) {
            if r.a_local == a.local.rtp && r.b_local == b.local.rtp {
                // A re-INVITE: new peers and maybe another telephone-event payload type.
                let _ = r.control.try_send(MediaControl::Peers {
                    a: a.remote,
                    b: b.remote,
                });
                if r.event_pt != event_pt {
                    r.event_pt = event_pt;
                    let _ = r.control.try_send(MediaControl::EventPayloadType(event_pt));
                }
                return;
            }
            // Other ports than the running relay's: replace it.
            if let Some(old) = self.relays.remove(&call) {
                stop_relay(&old.control);
            }
        }
        let (Some(pa), Some(pb)) = (
            self.ports.pending.remove(&a.local.rtp),
            self.ports.pending.remove(&b.local.rtp),
        ) else {
            tracing::warn!(call = call.0, "media ports not held; call has no relay");
            return;
        };
        let mut cfg = self.scrubber.clone();
        cfg.event_pt = event_pt;
        cfg.default_codec = if a.codecs.pcmu.is_some() || a.codecs.pcma.is_none() {
            Codec::Pcmu
        } else {
            Codec::Pcma
        };
        let scrub_on = self.calls.get(&call).is_none_or(|c| c.scrub);
        // `scrub` is the route's "always": the scrubber itself then refuses to be switched off.
        cfg.always = scrub_on;
        let pre_bridge = self.calls.get(&call).map_or_else(
            || Arc::new(AtomicBool::new(false)),
            |c| c.pre_bridge.clone(),
        );
        let opts = RelayOptions {
            call_label: call_label(call),
            agent_digits: self.calls.get(&call).is_some_and(|c| c.agent.is_some()),
            ..self.relay_opts.clone()
        };
        let (handle, task) =
            MediaRelay::start_with(pa, pb, a.remote, b.remote, cfg, scrub_on, opts);
        tracing::info!(
            call = call.0,
            a = %handle.a_addr,
            b = %handle.b_addr,
            scrub = scrub_on,
            "media relay started"
        );
        self.api
            .calls()
            .media(&call_label(call), handle.control(), scrub_on);
        self.relays.insert(
            call,
            RelayRef {
                control: handle.control(),
                a_local: a.local.rtp,
                b_local: b.local.rtp,
                event_pt,
            },
        );
        tokio::spawn(supervise(
            call,
            handle,
            task,
            self.api.clone(),
            self.core_tx.clone(),
            pre_bridge,
        ));
    }
}

fn stop_relay(control: &ControlSender) {
    if let Err(mpsc::error::TrySendError::Full(_)) = control.try_send(MediaControl::Stop) {
        let c = control.clone();
        tokio::spawn(async move {
            let _ = c.send(MediaControl::Stop).await;
        });
    }
}

/// Finds the live session holding `locator` (in the shared directory too) and binds the call to
/// it, capture started. Returns the session and its agent; logs why not otherwise.
async fn bind_by_locator(
    api: &ApiState,
    call: CallId,
    locator: &str,
) -> Option<(crate::payment::session::SessionId, String)> {
    let Some((session, agent)) = api.locate(locator).await else {
        tracing::info!(call = call.0, "no live session holds the locator keyed");
        return None;
    };
    match api.bind_call(session, &call_label(call), true).await {
        Ok(()) => Some((session, agent)),
        Err(e) => {
            tracing::warn!(call = call.0, %session, code = e.code, "call cannot be bound to the locator's session");
            None
        }
    }
}

/// Feeds one key to the API. A call with no session capturing is the normal case, not an error.
async fn feed(
    api: &ApiState,
    label: &str,
    call: CallId,
    digit: crate::digit::Digit,
    source: DigitSource,
    at_ms: u64,
) {
    if let Err(e) = api
        .feed_digit(SessionRef::Call(label), digit, source, at_ms)
        .await
        && e.code != "conflict"
        && e.code != "not_found"
    {
        tracing::warn!(call = call.0, code = e.code, "key not taken by capture");
    }
}

/// How often a relay's counters are added to the process metrics (the relay task itself never
/// touches shared metrics: its counters are its own atomics).
const METRICS_FOLD: Duration = Duration::from_secs(1);

/// Adds what a relay counted since the last fold to the process metrics.
fn fold_stats(api: &ApiState, last: &mut RelayStatsSnapshot, now: RelayStatsSnapshot) {
    let m = api.metrics();
    m.packets("caller_to_agent", now.b_out.saturating_sub(last.b_out));
    m.packets("agent_to_caller", now.a_out.saturating_sub(last.a_out));
    m.dropped(
        "stranger",
        now.dropped_stranger.saturating_sub(last.dropped_stranger),
    );
    m.dropped(
        "scrubber",
        now.dropped_scrubber.saturating_sub(last.dropped_scrubber),
    );
    m.dropped(
        "no_peer",
        now.dropped_no_peer.saturating_sub(last.dropped_no_peer),
    );
    m.dropped(
        "send_error",
        now.send_errors.saturating_sub(last.send_errors),
    );
    m.dtmf_keys_heard
        .inc_by(now.digits.saturating_sub(last.digits));
    m.samples_masked
        .inc_by(now.samples_masked.saturating_sub(last.samples_masked));
    m.events_stripped
        .inc_by(now.events_stripped.saturating_sub(last.events_stripped));
    *last = now;
}

/// Follows one relay: digits to the API, inactivity to the core, the outcome to the log.
async fn supervise(
    call: CallId,
    mut handle: MediaHandle,
    mut task: tokio::task::JoinHandle<
        Result<crate::net::media::RelayOutcome, crate::net::media::MediaError>,
    >,
    api: ApiState,
    core_tx: mpsc::Sender<CoreMsg>,
    pre_bridge: Arc<AtomicBool>,
) {
    let label = call_label(call);
    let mut folded = RelayStatsSnapshot::default();
    let mut fold_every = tokio::time::interval(METRICS_FOLD);
    loop {
        tokio::select! {
            _ = fold_every.tick() => fold_stats(&api, &mut folded, handle.stats()),
            Some(d) = handle.digits.recv() => {
                // The scrubber's timeline is samples at 8 kHz.
                let at_ms = d.start / 8;
                if pre_bridge.load(Ordering::Relaxed) {
                    let key = CoreMsg::LocatorKey { call, digit: d.digit, at_ms };
                    let _ = core_tx.send(key).await;
                } else {
                    feed(&api, &label, call, d.digit, d.source, at_ms).await;
                }
            }
            Some(d) = handle.agent_digits.recv() => {
                let key = CoreMsg::AgentKey { call, digit: d.digit, at_ms: d.start / 8 };
                let _ = core_tx.send(key).await;
            }
            Some(ev) = handle.events.recv() => {
                if ev == MediaEvent::Inactive {
                    tracing::info!(call = call.0, "no media: hanging up");
                    let _ = core_tx.send(CoreMsg::Sip(Input::MediaTimeout { call })).await;
                }
            }
            res = &mut task => {
                fold_stats(&api, &mut folded, handle.stats());
                match res {
                    Ok(Ok(outcome)) => {
                        let s = outcome.stats;
                        tracing::info!(
                            call = call.0,
                            a_in = s.a_in,
                            b_out = s.b_out,
                            b_in = s.b_in,
                            a_out = s.a_out,
                            dropped_stranger = s.dropped_stranger,
                            dropped_scrubber = s.dropped_scrubber,
                            samples_masked = s.samples_masked,
                            digits = s.digits,
                            "media relay stopped"
                        );
                    }
                    Ok(Err(e)) => tracing::warn!(call = call.0, error = %e, "media relay ended with an error"),
                    Err(e) => tracing::warn!(call = call.0, error = %e, "media relay task failed"),
                }
                return;
            }
        }
    }
}

/// Parses a received message, or answers / drops it (RFC 3261 §16.3 / §8.2.6).
fn parse_or_answer(
    data: Bytes,
    framing: Framing,
    limits: &Limits,
) -> Result<Message, Option<Bytes>> {
    match Message::parse(data, framing, limits) {
        Ok(m) => Ok(m),
        Err(rej) => {
            if rej.can_respond() {
                tracing::debug!(error = %rej.error(), "malformed SIP request answered");
                let tag = format!("{:016x}", rand::random::<u64>());
                Err(rej.response(&tag).map(Message::into_bytes))
            } else {
                tracing::debug!(error = %rej.error(), "malformed SIP message dropped");
                Err(None)
            }
        }
    }
}

async fn udp_loop(sock: Arc<UdpSocket>, core_tx: mpsc::Sender<CoreMsg>, limits: Limits) {
    let mut buf = vec![0u8; 65_536];
    loop {
        let (n, from) = match sock.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                // ICMP port unreachable surfaces here on some systems; keep serving.
                tracing::debug!(error = %e, "SIP UDP receive error");
                continue;
            }
        };
        let Some(data) = buf.get(..n) else { continue };
        // Keep-alive CRLFs (RFC 5626 §3.5.1 over UDP uses STUN; stray CRLFs are common).
        if data.iter().all(|b| matches!(b, b'\r' | b'\n')) {
            continue;
        }
        match parse_or_answer(Bytes::copy_from_slice(data), Framing::Datagram, &limits) {
            Ok(msg) => {
                let input = Input::Received {
                    transport: Transport::Udp,
                    from,
                    msg,
                };
                if core_tx.send(CoreMsg::Sip(input)).await.is_err() {
                    return;
                }
            }
            Err(Some(resp)) => {
                let _ = sock.send_to(&resp, from).await;
            }
            Err(None) => {}
        }
    }
}

/// The `transport` label of SIP TCP connection metrics.
const TCP_TRANSPORT: &str = "sip_tcp";

/// What the TCP transport enforces on accepted connections: who may connect, how many, and
/// how long a connection may stay without sending a whole message.
struct TcpGuard {
    policy: SourcePolicy,
    limiter: ConnLimiter,
    metrics: ConnMetrics,
    gate: LogGate,
    timers: ConnTimers,
}

impl TcpGuard {
    fn from_config(config: &Config, metrics: &ConnMetrics) -> TcpGuard {
        TcpGuard {
            policy: SourcePolicy::sip_from_config(config),
            limiter: ConnLimiter::new(
                TCP_TRANSPORT,
                config.sip.max_connections,
                config.sip.max_connections_per_source,
                metrics,
            ),
            metrics: metrics.clone(),
            gate: LogGate::default(),
            timers: ConnTimers {
                first_message: Some(Duration::from_secs(config.sip.tcp_first_message_s)),
                idle: Some(Duration::from_secs(config.sip.tcp_idle_s)),
            },
        }
    }

    /// Keeps the connection from `peer` (and counts it) or says why not.
    fn admit(&self, peer: SocketAddr) -> Result<ConnPermit, Refusal> {
        if !self.policy.allows(peer.ip()) {
            return Err(Refusal::NotAllowed);
        }
        self.limiter.try_acquire(peer.ip())
    }
}

/// How long a TCP connection may wait for its first whole message, and then between messages.
/// `None`: no limit (connections tonewall opened itself).
#[derive(Clone, Copy, Debug)]
struct ConnTimers {
    first_message: Option<Duration>,
    idle: Option<Duration>,
}

impl ConnTimers {
    const NONE: ConnTimers = ConnTimers {
        first_message: None,
        idle: None,
    };
}

async fn tcp_accept(
    listener: TcpListener,
    core_tx: mpsc::Sender<CoreMsg>,
    limits: Limits,
    guard: TcpGuard,
) {
    let guard = Arc::new(guard);
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let permit = match guard.admit(peer) {
                    Ok(p) => p,
                    Err(refusal) => {
                        // Closed before anything is read: no message from it reaches the core.
                        drop(stream);
                        guard.metrics.refused(TCP_TRANSPORT, refusal.label());
                        if let Some(held) = guard.gate.admit(peer.ip(), std::time::Instant::now()) {
                            tracing::warn!(
                                source = %peer.ip(),
                                reason = refusal.label(),
                                open = guard.limiter.open(),
                                not_logged = held,
                                "SIP TCP connection refused"
                            );
                        }
                        continue;
                    }
                };
                let (tx, rx) = mpsc::channel(TCP_QUEUE);
                if core_tx
                    .send(CoreMsg::TcpUp {
                        peer,
                        tx: tx.clone(),
                    })
                    .await
                    .is_err()
                {
                    return;
                }
                let guard = guard.clone();
                let core_tx = core_tx.clone();
                tokio::spawn(async move {
                    let closed =
                        tcp_conn_with(stream, peer, core_tx, limits, tx, rx, guard.timers).await;
                    if let Some(reason) = closed {
                        guard.metrics.closed(TCP_TRANSPORT, reason);
                        if let Some(held) = guard.gate.admit(peer.ip(), std::time::Instant::now()) {
                            tracing::info!(
                                source = %peer.ip(),
                                reason,
                                not_logged = held,
                                "SIP TCP connection closed"
                            );
                        }
                    }
                    drop(permit);
                });
            }
            Err(e) => {
                // Out of descriptors and the like: back off rather than spin.
                tracing::warn!(error = %e, "SIP TCP accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// One TCP connection tonewall opened: no timeouts (it is ours, and at most one per peer).
async fn tcp_conn(
    stream: TcpStream,
    peer: SocketAddr,
    core_tx: mpsc::Sender<CoreMsg>,
    limits: Limits,
    tx: mpsc::Sender<Bytes>,
    rx: mpsc::Receiver<Bytes>,
) {
    let _ = tcp_conn_with(stream, peer, core_tx, limits, tx, rx, ConnTimers::NONE).await;
}

/// Largest read from a TCP socket at once. The buffer lives on the stack of the read, not in
/// the connection, so an idle connection holds no read buffer.
const TCP_READ: usize = 16 * 1024;

/// Reads what the socket has into the framer: `Ok(0)` at end of stream.
fn read_into(
    reader: &tokio::net::tcp::OwnedReadHalf,
    framer: &mut StreamFramer,
) -> std::io::Result<usize> {
    let mut chunk = [0u8; TCP_READ];
    let n = reader.try_read(&mut chunk)?;
    framer.push(chunk.get(..n).unwrap_or_default());
    Ok(n)
}

/// One TCP connection: a writer draining `rx`, and a reader framing messages (RFC 3261 §18.3).
/// Returns why tonewall closed it (a metric label), or `None` when the peer did or the core is
/// gone.
async fn tcp_conn_with(
    stream: TcpStream,
    peer: SocketAddr,
    core_tx: mpsc::Sender<CoreMsg>,
    limits: Limits,
    tx: mpsc::Sender<Bytes>,
    mut rx: mpsc::Receiver<Bytes>,
    timers: ConnTimers,
) -> Option<&'static str> {
    let _ = stream.set_nodelay(true);
    let (reader, mut writer) = stream.into_split();
    let writer_task = tokio::spawn(async move {
        while let Some(b) = rx.recv().await {
            if writer.write_all(&b).await.is_err() {
                break;
            }
        }
    });
    let mut framer = StreamFramer::new(&limits);
    // Until the first whole message or keep-alive, the first-message timer runs; after it,
    // the idle timer, restarted by each whole message or keep-alive. Bytes alone do not
    // restart it, so a message sent a byte at a time cannot hold the connection.
    let mut greeted = false;
    let mut deadline = timers.first_message.map(|d| Instant::now() + d);
    let closed = 'conn: loop {
        let ready = match deadline {
            Some(at) => match tokio::time::timeout_at(at, reader.readable()).await {
                Ok(r) => r,
                Err(_) => {
                    break 'conn Some(if greeted {
                        "idle_timeout"
                    } else {
                        "first_message_timeout"
                    });
                }
            },
            None => reader.readable().await,
        };
        if ready.is_err() {
            break None;
        }
        match read_into(&reader, &mut framer) {
            Ok(0) => break None,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(_) => break None,
        }
        loop {
            let heard = match framer.next_frame() {
                Ok(None) => break,
                Ok(Some(Frame::Ping)) => {
                    let _ = tx.try_send(Bytes::from_static(PONG));
                    true
                }
                Ok(Some(Frame::Pong)) => false,
                Ok(Some(Frame::Message(data))) => {
                    match parse_or_answer(data, Framing::Stream, &limits) {
                        Ok(msg) => {
                            let input = Input::Received {
                                transport: Transport::Tcp,
                                from: peer,
                                msg,
                            };
                            if core_tx.send(CoreMsg::Sip(input)).await.is_err() {
                                break 'conn None;
                            }
                            true
                        }
                        Err(Some(resp)) => {
                            let _ = tx.try_send(resp);
                            false
                        }
                        Err(None) => false,
                    }
                }
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "SIP TCP framing error: closing");
                    break 'conn Some(match e {
                        FrameError::TooLarge { .. } => "too_large",
                        FrameError::BadContentLength => "framing",
                    });
                }
            };
            if heard {
                greeted = true;
                deadline = timers.idle.map(|d| Instant::now() + d);
            }
        }
    };
    writer_task.abort();
    let _ = core_tx.send(CoreMsg::TcpDown { peer, tx }).await;
    closed
}

/// Binds the SIP sockets the config asks for.
pub async fn bind(config: &Config) -> std::io::Result<SipSockets> {
    let addr = config.sip.listen;
    let udp = if config.sip.transports.contains(&Transport::Udp) {
        Some(UdpSocket::bind(addr).await?)
    } else {
        None
    };
    let tcp = if config.sip.transports.contains(&Transport::Tcp) {
        Some(TcpListener::bind(addr).await?)
    } else {
        None
    };
    Ok(SipSockets { udp, tcp })
}

/// For callers that need the shutdown signal as a future.
pub async fn wait_true(mut rx: watch::Receiver<bool>) {
    while !*rx.borrow() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}
