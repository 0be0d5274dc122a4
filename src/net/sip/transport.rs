//! SIP transports: UDP and TCP (RFC 3261 §18), framing and parsing what arrives, answering what
//! cannot be parsed, and handing messages to the core task. TCP connections are admitted by the
//! allow-list and connection limits, and closed when they stay silent too long.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::call::Event;
use crate::config::{Config, Transport};
use crate::net::limits::{ConnLimiter, ConnMetrics, ConnPermit, LogGate, Refusal, SourcePolicy};
use crate::sip::b2bua::Input;
use crate::sip::framer::{Frame, FrameError, PONG, StreamFramer};
use crate::sip::message::{Framing, Limits, Message};

/// Messages waiting to be written on one TCP connection.
pub(super) const TCP_QUEUE: usize = 256;

/// What the core task receives.
pub(super) enum CoreMsg {
    Call(Event),
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
}

impl CoreMsg {
    fn sip(input: Input) -> CoreMsg {
        CoreMsg::Call(Event::Sip(input))
    }
}

/// The sockets SIP listens on (bound by the caller, so it can report the addresses).
pub struct SipSockets {
    pub udp: Option<UdpSocket>,
    pub tcp: Option<TcpListener>,
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

/// The `transport` label of SIP TCP connection metrics.
const TCP_TRANSPORT: &str = "sip_tcp";

/// What the TCP transport enforces on accepted connections: who may connect, how many, and
/// how long a connection may stay without sending a whole message.
pub(super) struct TcpGuard {
    policy: SourcePolicy,
    limiter: ConnLimiter,
    metrics: ConnMetrics,
    gate: LogGate,
    timers: ConnTimers,
}

impl TcpGuard {
    pub(super) fn from_config(config: &Config, metrics: &ConnMetrics) -> TcpGuard {
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

pub(super) async fn tcp_accept(
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
pub(super) async fn tcp_conn(
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
