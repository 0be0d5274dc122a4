//! SIP transports: UDP, TCP (RFC 3261 §18) and TLS over TCP (§26.2), framing and parsing what
//! arrives, answering what cannot be parsed, and handing messages to the core task. TCP and TLS
//! connections are admitted by the allow-list and connection limits (before any handshake), and
//! closed when they stay silent too long; a TLS handshake counts against the first-message
//! time. A failed handshake is counted and logged with the peer and the reason, never a key.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_rustls::{TlsAcceptor, TlsStream};

use crate::call::Event;
use crate::config::{Config, Transport};
use crate::net::limits::{ConnLimiter, ConnMetrics, ConnPermit, LogGate, Refusal, SourcePolicy};
use crate::sip::b2bua::Input;
use crate::sip::framer::{Frame, FrameError, PONG, StreamFramer};
use crate::sip::message::{Framing, Limits, Message};

/// Messages waiting to be written on one TCP or TLS connection.
pub(super) const TCP_QUEUE: usize = 256;

/// How long a TLS handshake tonewall starts may take.
pub(super) const TLS_HANDSHAKE: Duration = Duration::from_secs(10);

/// What the core task receives.
pub(super) enum CoreMsg {
    Call(Event),
    /// A TCP or TLS connection (accepted or opened) can carry messages to `peer`.
    ConnUp {
        transport: Transport,
        peer: SocketAddr,
        tx: mpsc::Sender<Bytes>,
    },
    /// The connection whose queue is `tx` is gone (a newer one to the same peer may not be).
    ConnDown {
        transport: Transport,
        peer: SocketAddr,
        tx: mpsc::Sender<Bytes>,
    },
}

impl CoreMsg {
    pub(super) fn sip(input: Input) -> CoreMsg {
        CoreMsg::Call(Event::Sip(input))
    }
}

/// The sockets SIP listens on (bound by the caller, so it can report the addresses).
pub struct SipSockets {
    pub udp: Option<UdpSocket>,
    pub tcp: Option<TcpListener>,
    pub tls: Option<TcpListener>,
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

pub(super) async fn udp_loop(sock: Arc<UdpSocket>, core_tx: mpsc::Sender<CoreMsg>, limits: Limits) {
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
                if core_tx.send(CoreMsg::sip(input)).await.is_err() {
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

/// The `transport` label of SIP connection metrics.
fn conn_label(transport: Transport) -> &'static str {
    match transport {
        Transport::Tls => "sip_tls",
        Transport::Udp | Transport::Tcp => "sip_tcp",
    }
}

/// What a stream transport (TCP or TLS) enforces on accepted connections: who may connect,
/// how many, and how long a connection may stay without sending a whole message.
pub(super) struct TcpGuard {
    label: &'static str,
    policy: SourcePolicy,
    limiter: ConnLimiter,
    metrics: ConnMetrics,
    gate: LogGate,
    timers: ConnTimers,
}

impl TcpGuard {
    /// The guard of `transport`'s listener: the same caps and timers for TCP and TLS, each
    /// counted on its own.
    pub(super) fn from_config(
        config: &Config,
        metrics: &ConnMetrics,
        transport: Transport,
    ) -> TcpGuard {
        let label = conn_label(transport);
        TcpGuard {
            label,
            policy: SourcePolicy::sip_from_config(config),
            limiter: ConnLimiter::new(
                label,
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

/// How long a connection may wait for its first whole message, and then between messages.
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

/// A SIP stream: plain TCP, or TLS over it.
pub(super) enum Stream {
    Tcp(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Stream {
    fn transport(&self) -> Transport {
        match self {
            Stream::Tcp(_) => Transport::Tcp,
            Stream::Tls(_) => Transport::Tls,
        }
    }
}

/// Accepts on a TCP listener, plain or (with `tls`) TLS: admission first, then the handshake
/// under the first-message timer, then the connection.
pub(super) async fn stream_accept(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
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
                        guard.metrics.refused(guard.label, refusal.label());
                        if let Some(held) = guard.gate.admit(peer.ip(), std::time::Instant::now()) {
                            tracing::warn!(
                                source = %peer.ip(),
                                transport = guard.label,
                                reason = refusal.label(),
                                open = guard.limiter.open(),
                                not_logged = held,
                                "SIP connection refused"
                            );
                        }
                        continue;
                    }
                };
                let guard = guard.clone();
                let core_tx = core_tx.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let opened = Instant::now();
                    let stream = match tls {
                        None => Stream::Tcp(stream),
                        Some(acceptor) => {
                            match handshake_in(acceptor, stream, peer, opened, &guard).await {
                                Some(s) => s,
                                None => return drop(permit),
                            }
                        }
                    };
                    let (tx, rx) = mpsc::channel(TCP_QUEUE);
                    let transport = stream.transport();
                    let up = CoreMsg::ConnUp {
                        transport,
                        peer,
                        tx: tx.clone(),
                    };
                    if core_tx.send(up).await.is_err() {
                        return drop(permit);
                    }
                    let closed =
                        conn_with(stream, peer, opened, core_tx, limits, tx, rx, guard.timers)
                            .await;
                    if let Some(reason) = closed {
                        guard.metrics.closed(guard.label, reason);
                        if let Some(held) = guard.gate.admit(peer.ip(), std::time::Instant::now()) {
                            tracing::info!(
                                source = %peer.ip(),
                                transport = guard.label,
                                reason,
                                not_logged = held,
                                "SIP connection closed"
                            );
                        }
                    }
                    drop(permit);
                });
            }
            Err(e) => {
                // Out of descriptors and the like: back off rather than spin.
                tracing::warn!(error = %e, "SIP stream accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// The server side of a TLS handshake, bounded by the first-message timer. A failure is
/// counted and logged (at most once a minute per source) with the peer and rustls's reason.
async fn handshake_in(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
    opened: Instant,
    guard: &TcpGuard,
) -> Option<Stream> {
    let _ = tcp.set_nodelay(true);
    let by = guard.timers.first_message.map(|d| opened + d);
    let accept = acceptor.accept(tcp);
    let result = match by {
        Some(at) => tokio::time::timeout_at(at, accept)
            .await
            .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into())),
        None => accept.await,
    };
    match result {
        Ok(s) => Some(Stream::Tls(Box::new(TlsStream::Server(s)))),
        Err(e) => {
            let reason = super::tls::failure_label(&e);
            guard.metrics.tls_handshake_failed("inbound", reason);
            if let Some(held) = guard.gate.admit(peer.ip(), std::time::Instant::now()) {
                tracing::warn!(
                    %peer,
                    reason,
                    error = %e,
                    not_logged = held,
                    "SIP TLS handshake failed: connection closed"
                );
            }
            None
        }
    }
}

/// One TCP or TLS connection tonewall opened: no timeouts (it is ours, and at most one per
/// peer).
pub(super) async fn opened_conn(
    stream: Stream,
    peer: SocketAddr,
    core_tx: mpsc::Sender<CoreMsg>,
    limits: Limits,
    tx: mpsc::Sender<Bytes>,
    rx: mpsc::Receiver<Bytes>,
) {
    let opened = Instant::now();
    let _ = conn_with(
        stream,
        peer,
        opened,
        core_tx,
        limits,
        tx,
        rx,
        ConnTimers::NONE,
    )
    .await;
}

/// Largest read from a TCP socket at once. For plain TCP the buffer lives on the stack of the
/// read, not in the connection, so an idle connection holds no read buffer; rustls keeps its
/// own buffers per TLS connection anyway.
const TCP_READ: usize = 16 * 1024;

/// The read half of a connection.
enum Reader {
    Tcp(tokio::net::tcp::OwnedReadHalf),
    Tls(ReadHalf<TlsStream<TcpStream>>),
}

/// The write half of a connection.
enum Writer {
    Tcp(tokio::net::tcp::OwnedWriteHalf),
    Tls(WriteHalf<TlsStream<TcpStream>>),
}

impl Writer {
    async fn send(&mut self, b: &[u8]) -> std::io::Result<()> {
        match self {
            Writer::Tcp(w) => w.write_all(b).await,
            Writer::Tls(w) => {
                // rustls may hold the last record until flushed.
                w.write_all(b).await?;
                w.flush().await
            }
        }
    }
}

impl Reader {
    /// Reads what the connection has into the framer: `Ok(0)` at end of stream. Cancel-safe:
    /// nothing read is lost when the wait is abandoned (the idle timer).
    async fn fill(&mut self, framer: &mut StreamFramer) -> std::io::Result<usize> {
        match self {
            Reader::Tcp(r) => loop {
                r.readable().await?;
                match read_into(r, framer) {
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    other => return other,
                }
            },
            Reader::Tls(r) => {
                let mut chunk = [0u8; TCP_READ];
                let n = r.read(&mut chunk).await?;
                framer.push(chunk.get(..n).unwrap_or_default());
                Ok(n)
            }
        }
    }
}

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

/// One TCP or TLS connection: a writer draining `rx`, and a reader framing messages (RFC 3261
/// §18.3). Returns why tonewall closed it (a metric label), or `None` when the peer did or the
/// core is gone.
#[allow(clippy::too_many_arguments)]
async fn conn_with(
    stream: Stream,
    peer: SocketAddr,
    opened: Instant,
    core_tx: mpsc::Sender<CoreMsg>,
    limits: Limits,
    tx: mpsc::Sender<Bytes>,
    mut rx: mpsc::Receiver<Bytes>,
    timers: ConnTimers,
) -> Option<&'static str> {
    let transport = stream.transport();
    let (mut reader, mut writer) = match stream {
        Stream::Tcp(s) => {
            let _ = s.set_nodelay(true);
            let (r, w) = s.into_split();
            (Reader::Tcp(r), Writer::Tcp(w))
        }
        Stream::Tls(s) => {
            let (r, w) = tokio::io::split(*s);
            (Reader::Tls(r), Writer::Tls(w))
        }
    };
    let writer_task = tokio::spawn(async move {
        while let Some(b) = rx.recv().await {
            if writer.send(&b).await.is_err() {
                break;
            }
        }
    });
    let mut framer = StreamFramer::new(&limits);
    // Until the first whole message or keep-alive, the first-message timer runs (from the
    // moment the connection opened: a TLS handshake spends it too); after it, the idle timer,
    // restarted by each whole message or keep-alive. Bytes alone do not restart it, so a
    // message sent a byte at a time cannot hold the connection.
    let mut greeted = false;
    let mut deadline = timers.first_message.map(|d| opened + d);
    let closed = 'conn: loop {
        let read = match deadline {
            Some(at) => match tokio::time::timeout_at(at, reader.fill(&mut framer)).await {
                Ok(r) => r,
                Err(_) => {
                    break 'conn Some(if greeted {
                        "idle_timeout"
                    } else {
                        "first_message_timeout"
                    });
                }
            },
            None => reader.fill(&mut framer).await,
        };
        match read {
            Ok(0) | Err(_) => break None,
            Ok(_) => {}
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
                                transport,
                                from: peer,
                                msg,
                            };
                            if core_tx.send(CoreMsg::sip(input)).await.is_err() {
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
                    tracing::debug!(%peer, error = %e, "SIP stream framing error: closing");
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
    let _ = core_tx
        .send(CoreMsg::ConnDown {
            transport,
            peer,
            tx,
        })
        .await;
    closed
}

/// Binds the SIP sockets the config asks for; a failure names the address.
pub async fn bind(config: &Config) -> Result<SipSockets, (SocketAddr, std::io::Error)> {
    let addr = config.sip.listen;
    let tls_addr = config.sip.tls_listen_addr();
    let on = |t| config.sip.transports.contains(&t);
    let udp = match on(Transport::Udp) {
        true => Some(UdpSocket::bind(addr).await.map_err(|e| (addr, e))?),
        false => None,
    };
    let tcp = match on(Transport::Tcp) {
        true => Some(TcpListener::bind(addr).await.map_err(|e| (addr, e))?),
        false => None,
    };
    let tls = match on(Transport::Tls) {
        true => Some(
            TcpListener::bind(tls_addr)
                .await
                .map_err(|e| (tls_addr, e))?,
        ),
        false => None,
    };
    Ok(SipSockets { udp, tcp, tls })
}

/// For callers that need the shutdown signal as a future.
pub async fn wait_true(mut rx: watch::Receiver<bool>) {
    while !*rx.borrow() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}
