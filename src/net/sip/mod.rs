//! The SIP shell: the transports around the sans-IO [`CallCore`], and the carrying out of its
//! actions: bytes to sockets, relays started and stopped, look-ups and keys to the payment desk.
//!
//! One core task owns the call core: transports parse what they receive and hand it over an mpsc
//! channel, relays report the keys they hear the same way, a timer fires at
//! [`CallCore::next_deadline`], and the core task performs the returned actions. Every decision
//! about a call is the core's; this file carries bytes, sockets and time. The port allocator the
//! core calls is synchronous: it binds sockets at once and keeps them (as leases) until the
//! call's relay takes them or the core releases them.
//!
//! It must never log per packet or log a digit; call events are logged with the call id.

mod tls;
mod transport;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_rustls::TlsStream;

use crate::call::{Action, CallCore, CallCoreConfig, Event, KeyFrom, LocateFor, Note, RelayPlan};
use crate::config::{Config, Transport};
use crate::ids::CallId;
use crate::net::api::ApiState;
use crate::net::calls::CallInfo;
use crate::net::limits::LogGate;
use crate::net::media::{
    ControlSender, KeyTap, MediaControl, MediaEvent, MediaHandle, MediaRelay, MediaWorkers,
    RelayOptions, RelayStats, RelayStatsSnapshot,
};
use crate::net::ports::{PortPair, PortPool};
use crate::payment::desk::DeskError;
use crate::rtp::scrubber::{ScrubbedDigit, ScrubberConfig};
use crate::sip::b2bua::Refusal as MessageRefusal;
use crate::sip::b2bua::{
    B2buaError, Input, LegMedia, LocateOutcome, PortAllocator, RelayPorts, RelaySrtp,
};
use crate::sip::message::Limits;
pub use tls::{SipTls, SipTlsError};
use transport::{CoreMsg, Stream, TCP_QUEUE, TLS_HANDSHAKE, TcpGuard};
pub use transport::{SipSockets, bind, wait_true};

/// Inputs waiting for the core; transports wait (backpressure) when it is full.
const CORE_QUEUE: usize = 4096;
/// How long shutdown waits for hung-up calls to finish their BYE transactions.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Ports the call core allocated whose relay has not started yet.
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
        // Ports already moved into a relay are freed when that relay stops.
        self.pending.remove(&ports.rtp);
    }
}

/// The core task's state besides the call core itself: sockets, relays, the desk.
struct Shell {
    udp: Option<Arc<UdpSocket>>,
    /// Open TCP and TLS connections by transport and peer: responses and in-dialog requests
    /// to a peer go on the connection it has with us (RFC 3261 §18.2.2, RFC 5923's reuse).
    conns: HashMap<(Transport, SocketAddr), mpsc::Sender<Bytes>>,
    tls: SipTls,
    ports: ShellPorts,
    relays: HashMap<CallId, ControlSender>,
    scrubber: ScrubberConfig,
    relay_opts: RelayOptions,
    api: ApiState,
    core_tx: mpsc::Sender<CoreMsg>,
    limits: Limits,
    started: Instant,
    /// Refused sources are logged at most once a minute each.
    refusals_logged: LogGate,
    folder: StatsFolder,
}

/// Runs SIP until `shutdown` turns true: the transports and the core task. On shutdown every
/// call is hung up and given [`SHUTDOWN_GRACE`] to finish.
pub async fn serve(
    config: &Config,
    sockets: SipSockets,
    tls: SipTls,
    pool: PortPool,
    workers: MediaWorkers,
    api: ApiState,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), B2buaError> {
    // The core's identifiers come from a CSPRNG seeded by the OS (rand's ThreadRng is
    // ChaCha12 reseeded from getrandom).
    let seed: [u8; 32] = rand::random();
    api.calls().attach();
    let mut core = CallCore::new(CallCoreConfig::from_config(config, seed)?);
    let limits = Limits {
        max_size: config.sip.max_message_size,
        ..Limits::default()
    };
    let (core_tx, mut core_rx) = mpsc::channel::<CoreMsg>(CORE_QUEUE);
    let udp = sockets.udp.map(Arc::new);
    let mut tasks = Vec::new();
    if let Some(sock) = &udp {
        tasks.push(tokio::spawn(transport::udp_loop(
            sock.clone(),
            core_tx.clone(),
            limits,
        )));
    }
    if let Some(listener) = sockets.tcp {
        let guard = TcpGuard::from_config(config, &api.metrics().conn, Transport::Tcp);
        tasks.push(tokio::spawn(transport::stream_accept(
            listener,
            None,
            core_tx.clone(),
            limits,
            guard,
        )));
    }
    if let (Some(listener), Some(acceptor)) = (sockets.tls, tls.acceptor.clone()) {
        let guard = TcpGuard::from_config(config, &api.metrics().conn, Transport::Tls);
        tasks.push(tokio::spawn(transport::stream_accept(
            listener,
            Some(acceptor),
            core_tx.clone(),
            limits,
            guard,
        )));
    }
    let mut shell = Shell::new(config, udp, tls, pool, workers, api, core_tx, limits);
    tasks.push(tokio::spawn(shell.folder.clone().run(shell.api.clone())));

    let mut out = Vec::new();
    let mut grace: Option<Instant> = None;
    let mut drain_rx = shell.api.drain().subscribe();
    let mut drain_open = true;
    // A signal's drain: leave once the last call has ended.
    let mut exit_when_idle = false;
    let drain_ms = config.sip.drain_s.saturating_mul(1_000);
    loop {
        let deadline = core
            .next_deadline()
            .map(|d| shell.started + Duration::from_millis(d));
        let event = tokio::select! {
            biased;
            _ = shutdown.changed(), if grace.is_none() => {
                grace = Some(Instant::now() + SHUTDOWN_GRACE);
                let calls = core.live_calls();
                tracing::info!(calls = calls.len(), "shutting down: hanging up calls");
                for call in calls {
                    let hangup = Event::Sip(Input::Hangup { call });
                    core.handle(hangup, shell.now(), &mut shell.ports, &mut out);
                    shell.perform(&mut out).await;
                }
                None
            }
            _ = sleep_opt(grace) => break,
            changed = drain_rx.changed(), if drain_open => {
                if changed.is_err() {
                    drain_open = false;
                    None
                } else {
                    let order = *drain_rx.borrow_and_update();
                    exit_when_idle = order.exit;
                    shell.api.metrics().draining.set(i64::from(order.draining));
                    if order.draining {
                        tracing::info!(
                            calls = core.active_calls(),
                            drain_s = config.sip.drain_s,
                            exit = order.exit,
                            "draining: refusing new calls"
                        );
                        Some(Event::Sip(Input::Drain { limit_ms: Some(drain_ms) }))
                    } else {
                        tracing::info!("drain ended: taking calls again");
                        Some(Event::Sip(Input::Resume))
                    }
                }
            }
            msg = core_rx.recv() => match msg {
                Some(CoreMsg::Call(event)) => Some(event),
                Some(CoreMsg::ConnUp { transport, peer, tx }) => {
                    shell.conns.insert((transport, peer), tx);
                    None
                }
                Some(CoreMsg::ConnDown { transport, peer, tx }) => {
                    let key = (transport, peer);
                    if shell.conns.get(&key).is_some_and(|t| t.same_channel(&tx)) {
                        shell.conns.remove(&key);
                    }
                    None
                }
                None => break,
            },
            _ = sleep_opt(deadline) => Some(Event::Sip(Input::Tick)),
        };
        if let Some(event) = event {
            core.handle(event, shell.now(), &mut shell.ports, &mut out);
            shell.perform(&mut out).await;
        }
        let leaving = grace.is_some() || exit_when_idle;
        if leaving && core.active_calls() == 0 {
            // The last BYEs get their answers (or the grace runs out) before we go: on UDP a
            // lost BYE is only retransmitted while we are here.
            if core.sip().open_requests() == 0 {
                break;
            }
            if grace.is_none() {
                tracing::info!("drained: no call left; leaving");
                grace = Some(Instant::now() + SHUTDOWN_GRACE);
            }
        }
    }
    for task in tasks {
        task.abort();
    }
    for control in shell.relays.values() {
        let _ = control.try_send(MediaControl::Stop);
    }
    Ok(())
}

impl Shell {
    #[allow(clippy::too_many_arguments)]
    fn new(
        config: &Config,
        udp: Option<Arc<UdpSocket>>,
        tls: SipTls,
        pool: PortPool,
        workers: MediaWorkers,
        api: ApiState,
        core_tx: mpsc::Sender<CoreMsg>,
        limits: Limits,
    ) -> Shell {
        Shell {
            udp,
            conns: HashMap::new(),
            tls,
            ports: ShellPorts {
                pool,
                pending: HashMap::new(),
            },
            relays: HashMap::new(),
            scrubber: ScrubberConfig {
                mask: config.media.mask.into(),
                presence: crate::dsp::dtmf::PresenceConfig {
                    delay: config.delay_samples(),
                    ..Default::default()
                },
                ..ScrubberConfig::default()
            },
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
            folder: StatsFolder::default(),
        }
    }
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

    async fn perform(&mut self, out: &mut Vec<Action>) {
        for action in out.drain(..) {
            match action {
                Action::Send {
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
                Action::Send {
                    transport: transport @ (Transport::Tcp | Transport::Tls),
                    to,
                    bytes,
                } => self.send_stream(transport, to, bytes),
                Action::StartRelay {
                    call,
                    a,
                    b,
                    plan,
                    srtp,
                } => self.start_relay(call, (a, b), plan, srtp),
                Action::UpdateRelay {
                    call,
                    a,
                    b,
                    event_pt,
                    srtp,
                } => {
                    if let Some(control) = self.relays.get(&call) {
                        let _ = control.try_send(MediaControl::Peers { a, b });
                        if let Some(pt) = event_pt {
                            let _ = control.try_send(MediaControl::EventPayloadType(pt));
                        }
                        if let Some(s) = srtp {
                            let _ = control.try_send(MediaControl::Srtp(s));
                        }
                    }
                }
                Action::StopRelay { call } => {
                    if let Some(control) = self.relays.remove(&call) {
                        stop_relay(&control);
                    }
                }
                Action::Announce { call, for_ms } => {
                    tracing::info!(
                        call = call.0,
                        for_ms,
                        "loop route: locator not found, announcing"
                    );
                    if let Some(control) = self.relays.get(&call) {
                        let tone = MediaControl::Announce(Duration::from_millis(for_ms));
                        let _ = control.try_send(tone);
                    }
                }
                Action::StopAgentKeys { call } => {
                    if let Some(control) = self.relays.get(&call) {
                        let _ = control.try_send(MediaControl::AgentDigits(false));
                    }
                }
                Action::Locate { call, locator, by } => self.locate(call, locator, by),
                Action::Capture {
                    call,
                    digit,
                    source,
                    at_ms,
                } => match self.api.feed_digit_now(call, digit, source, at_ms) {
                    // A call with no session capturing is the normal case, not an error.
                    Ok(()) | Err(DeskError::NoSession | DeskError::NotCapturing) => {}
                    Err(e) => tracing::warn!(call = call.0, error = %e, "key not taken by capture"),
                },
                Action::Started {
                    call,
                    route,
                    looped,
                    from,
                    to,
                    scrub,
                } => {
                    tracing::info!(call = call.0, route = %route, "call started");
                    let m = self.api.metrics();
                    m.calls_started.inc();
                    m.calls_active.inc();
                    let info = CallInfo {
                        route,
                        mode: if looped { "loop" } else { "inline" },
                        from,
                        to,
                        started_ms: self.api.clock().now_ms(),
                    };
                    self.api.calls().started(call, info, scrub);
                }
                Action::Answered { call, agent } => {
                    tracing::info!(call = call.0, agent = agent.as_deref(), "call answered");
                    // The agent's desk lists the calls tagged with its agent.
                    if let Some(agent) = agent {
                        self.api.calls().assign(call, &agent);
                    }
                }
                Action::Ended { call, cause, known } => {
                    let side = cause.side().label();
                    tracing::info!(call = call.0, ?cause, side, "call ended");
                    if known {
                        let m = self.api.metrics();
                        m.calls_active.dec();
                        m.call_ended(cause.label(), side);
                    }
                    self.api.call_ended(call);
                }
                Action::Note { call, note } => log_note(call, &note),
                Action::Refused { from, refusal } => self.refused(from, refusal),
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

    /// Looks a locator up (in the shared directory too) and binds the call to its session, off
    /// the core task (a shared store is a network round trip); the answer goes back to the core.
    fn locate(&self, call: CallId, locator: String, by: LocateFor) {
        let api = self.api.clone();
        let core_tx = self.core_tx.clone();
        tokio::spawn(async move {
            let outcome = match by {
                LocateFor::Loop { source } => locate_loop(&api, call, locator, source).await,
                LocateFor::Agent => match bind_by_locator(&api, call, &locator).await {
                    Some((session, agent)) => {
                        tracing::info!(call = call.0, %session, "agent keyed the locator: call bound to its payment session");
                        LocateOutcome::Found { agent, locator }
                    }
                    None => LocateOutcome::NotFound,
                },
            };
            let _ = core_tx
                .send(CoreMsg::Call(Event::Located { call, outcome }))
                .await;
        });
    }

    fn send_stream(&mut self, transport: Transport, to: SocketAddr, bytes: Bytes) {
        if let Some(tx) = self.conns.get(&(transport, to)) {
            match tx.try_send(bytes) {
                Ok(()) => return,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    tracing::warn!(%to, transport = transport.param(), "SIP connection backed up; message dropped");
                    return;
                }
                // The connection went away; open a new one below.
                Err(mpsc::error::TrySendError::Closed(b)) => {
                    self.conns.remove(&(transport, to));
                    return self.connect(transport, to, b);
                }
            }
        }
        self.connect(transport, to, bytes);
    }

    /// RFC 3261 §18.1.1: with no connection to the destination, open one (over TLS, with the
    /// settings of the route that leads there, §26.3.1). The message waits in the new
    /// connection's queue until it is up. When it cannot be opened, the core hears of it, so
    /// the requests waiting on that peer fail at once (§8.1.3.1) rather than at Timer B.
    fn connect(&mut self, transport: Transport, to: SocketAddr, first: Bytes) {
        let tls = match transport {
            Transport::Tls => match self.tls.peer(to) {
                Some(p) => Some(p.clone()),
                None => {
                    // A trunk's connection is its own to open: its source port is no listener.
                    tracing::warn!(%to, "no SIP TLS connection to this peer, and no TLS route to open one; message dropped");
                    let failed = Input::TransportFailed {
                        transport,
                        peer: to,
                    };
                    let _ = self.core_tx.try_send(CoreMsg::sip(failed));
                    return;
                }
            },
            Transport::Udp | Transport::Tcp => None,
        };
        let (tx, rx) = mpsc::channel(TCP_QUEUE);
        let _ = tx.try_send(first);
        self.conns.insert((transport, to), tx.clone());
        let core_tx = self.core_tx.clone();
        let limits = self.limits;
        let metrics = self.api.metrics().conn.clone();
        tokio::spawn(async move {
            let opened = match open_stream(to, tls).await {
                Ok(stream) => stream,
                Err(failure) => {
                    match failure {
                        OpenFailure::Connect(e) => {
                            tracing::warn!(%to, transport = transport.param(), error = %e, "SIP connect failed");
                        }
                        OpenFailure::Handshake { name, error } => {
                            let reason = tls::failure_label(&error);
                            metrics.tls_handshake_failed("outbound", reason);
                            tracing::warn!(
                                peer = %to,
                                name = %name,
                                reason,
                                error = %error,
                                "SIP TLS handshake with the contact centre failed"
                            );
                        }
                    }
                    let down = CoreMsg::ConnDown {
                        transport,
                        peer: to,
                        tx,
                    };
                    let _ = core_tx.send(down).await;
                    let failed = Input::TransportFailed {
                        transport,
                        peer: to,
                    };
                    let _ = core_tx.send(CoreMsg::sip(failed)).await;
                    return;
                }
            };
            transport::opened_conn(opened, to, core_tx, limits, tx, rx).await;
        });
    }

    fn start_relay(
        &mut self,
        call: CallId,
        (a, b): (LegMedia, LegMedia),
        plan: RelayPlan,
        srtp: Option<Box<RelaySrtp>>,
    ) {
        let (Some(pa), Some(pb)) = (
            self.ports.pending.remove(&a.local.rtp),
            self.ports.pending.remove(&b.local.rtp),
        ) else {
            tracing::warn!(call = call.0, "media ports not held; call has no relay");
            return;
        };
        let cfg = ScrubberConfig {
            event_pt: plan.event_pt,
            default_codec: plan.codec,
            always: plan.always,
            ..self.scrubber.clone()
        };
        // Keys go from the media thread straight onto the core's queue. A full queue (the core
        // thousands of inputs behind) loses the key, counted, rather than stall the media thread.
        let core_tx = self.core_tx.clone();
        let key_tap = KeyTap(Arc::new(move |agent: bool, d: ScrubbedDigit| {
            let from = if agent {
                KeyFrom::Agent
            } else {
                KeyFrom::Caller
            };
            core_tx.try_send(key_event(call, from, d)).is_ok()
        }));
        let opts = RelayOptions {
            call_label: call.to_string(),
            agent_digits: plan.agent_keys,
            key_tap: Some(key_tap),
            ..self.relay_opts.clone()
        };
        let srtp_legs = srtp
            .as_deref()
            .map_or((false, false), |s| (s.a.is_some(), s.b.is_some()));
        let (handle, task) =
            MediaRelay::start_secure(pa, pb, (a.remote, b.remote), cfg, plan.scrub, opts, srtp);
        tracing::info!(
            call = call.0,
            a = %handle.a_addr,
            b = %handle.b_addr,
            scrub = plan.scrub,
            srtp_trunk = srtp_legs.0,
            srtp_contact_centre = srtp_legs.1,
            "media relay started"
        );
        self.api.calls().media(call, handle.control(), plan.scrub);
        self.relays.insert(call, handle.control());
        self.folder.add(call, handle.shared_stats());
        tokio::spawn(supervise(
            call,
            handle,
            task,
            self.api.clone(),
            self.core_tx.clone(),
            self.folder.clone(),
        ));
    }
}

/// Why a connection tonewall opens did not come up.
enum OpenFailure {
    Connect(std::io::Error),
    Handshake { name: String, error: std::io::Error },
}

/// Opens a TCP connection to `to`, and TLS over it with `tls`'s settings: the server's
/// certificate verified against the route's CAs for the route's name (RFC 5922 §7.2).
async fn open_stream(to: SocketAddr, tls: Option<tls::TlsPeer>) -> Result<Stream, OpenFailure> {
    let tcp = TcpStream::connect(to).await.map_err(OpenFailure::Connect)?;
    let Some(peer) = tls else {
        return Ok(Stream::Tcp(tcp));
    };
    let _ = tcp.set_nodelay(true);
    let name = peer.name.to_str().into_owned();
    let handshake = peer.connector.connect(peer.name, tcp);
    match tokio::time::timeout(TLS_HANDSHAKE, handshake).await {
        Ok(Ok(s)) => Ok(Stream::Tls(Box::new(TlsStream::Client(s)))),
        Ok(Err(error)) => Err(OpenFailure::Handshake { name, error }),
        Err(_) => Err(OpenFailure::Handshake {
            name,
            error: std::io::ErrorKind::TimedOut.into(),
        }),
    }
}

fn log_note(call: CallId, note: &Note) {
    match note {
        Note::ReadingLocator => {
            tracing::info!(call = call.0, "loop call answered: reading the locator")
        }
        Note::LocatorKeyed => tracing::info!(call = call.0, "locator keyed"),
        Note::Located { .. } => {
            tracing::info!(call = call.0, "loop call located: calling the agent back")
        }
        Note::LocateFailed => tracing::warn!(
            call = call.0,
            "loop call: locator not found or not given in time"
        ),
        Note::Fallback => tracing::info!(call = call.0, "loop call: routed to fallback"),
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

/// A loop call's locator: refused while its source is locked out of look-ups, otherwise looked
/// up and bound, the outcome counted against the source.
async fn locate_loop(
    api: &ApiState,
    call: CallId,
    locator: String,
    source: IpAddr,
) -> LocateOutcome {
    if !api.sip_lookup_allowed(source) {
        tracing::info!(call = call.0, %source, "loop call refused: its source is locked out of locator look-ups");
        return LocateOutcome::Refused;
    }
    let bound = bind_by_locator(api, call, &locator).await;
    api.sip_lookup_done(source, bound.is_some());
    match bound {
        Some((session, agent)) => {
            tracing::info!(call = call.0, %session, "loop call bound to its payment session");
            LocateOutcome::Found { agent, locator }
        }
        None => LocateOutcome::NotFound,
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
    match api.bind_call(session, call, true).await {
        Ok(()) => Some((session, agent)),
        Err(e) => {
            tracing::warn!(call = call.0, %session, error = %e, "call cannot be bound to the locator's session");
            None
        }
    }
}

/// How often the relays' counters are added to the process metrics (a relay never touches
/// shared metrics: its counters are its own atomics).
const METRICS_FOLD: Duration = Duration::from_secs(1);

/// The counters of every running relay and what of them the metrics already have, folded by
/// one task for all calls. A timer per call woke the runtime once per call per second: at 500
/// calls, 500 task wake-ups a second, a fifth of the process's CPU with the media idle.
#[derive(Clone, Default)]
struct StatsFolder {
    live: Arc<std::sync::Mutex<LiveRelays>>,
}

/// Each running relay's counters, and what of them the metrics have.
type LiveRelays = HashMap<CallId, (Arc<RelayStats>, RelayStatsSnapshot)>;

impl StatsFolder {
    fn add(&self, call: CallId, stats: Arc<RelayStats>) {
        self.lock()
            .insert(call, (stats, RelayStatsSnapshot::default()));
    }

    /// Folds what the relay counted since the last fold, and forgets it: it has ended.
    fn finish(&self, call: CallId, api: &ApiState) {
        let entry = self.lock().remove(&call);
        if let Some((stats, mut last)) = entry {
            fold_stats(api, &mut last, stats.snapshot());
        }
    }

    fn fold_all(&self, api: &ApiState) {
        for (stats, last) in self.lock().values_mut() {
            fold_stats(api, last, stats.snapshot());
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LiveRelays> {
        // Counters only: a panic elsewhere while folding leaves nothing inconsistent.
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn run(self, api: ApiState) {
        let mut every = tokio::time::interval(METRICS_FOLD);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            self.fold_all(&api);
        }
    }
}

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
    m.dropped(
        "srtp_auth",
        now.dropped_srtp_auth.saturating_sub(last.dropped_srtp_auth),
    );
    m.dropped(
        "srtp_replay",
        now.dropped_srtp_replay
            .saturating_sub(last.dropped_srtp_replay),
    );
    m.dtmf_keys_heard
        .inc_by(now.digits.saturating_sub(last.digits));
    m.samples_masked
        .inc_by(now.samples_masked.saturating_sub(last.samples_masked));
    m.events_stripped
        .inc_by(now.events_stripped.saturating_sub(last.events_stripped));
    *last = now;
}

/// A key a relay heard, as the call core's input.
fn key_event(call: CallId, from: KeyFrom, d: ScrubbedDigit) -> CoreMsg {
    CoreMsg::Call(Event::Key {
        call,
        from,
        digit: d.digit,
        source: d.source,
        // The scrubber's timeline is samples at 8 kHz.
        media_ms: d.start / 8,
    })
}

/// Follows one relay: inactivity (and keys, for a relay started without a key tap) to the core,
/// its last counters to the metrics, the outcome to the log.
async fn supervise(
    call: CallId,
    mut handle: MediaHandle,
    mut task: tokio::task::JoinHandle<
        Result<crate::net::media::RelayOutcome, crate::net::media::MediaError>,
    >,
    api: ApiState,
    core_tx: mpsc::Sender<CoreMsg>,
    folder: StatsFolder,
) {
    loop {
        tokio::select! {
            Some(d) = handle.digits.recv() => {
                let _ = core_tx.send(key_event(call, KeyFrom::Caller, d)).await;
            }
            Some(d) = handle.agent_digits.recv() => {
                let _ = core_tx.send(key_event(call, KeyFrom::Agent, d)).await;
            }
            Some(ev) = handle.events.recv() => {
                if ev == MediaEvent::Inactive {
                    tracing::info!(call = call.0, "no media: hanging up");
                    let _ = core_tx.send(CoreMsg::Call(Event::Sip(Input::MediaTimeout { call }))).await;
                }
            }
            res = &mut task => {
                folder.finish(call, &api);
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
                            rtcp_a_in = s.rtcp_a_in,
                            rtcp_b_in = s.rtcp_b_in,
                            dropped_srtp_auth = s.dropped_srtp_auth,
                            dropped_srtp_replay = s.dropped_srtp_replay,
                            samples_masked = s.samples_masked,
                            events_stripped = s.events_stripped,
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
