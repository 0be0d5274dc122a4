//! The control API's HTTP server: one accept loop for plain HTTP and HTTPS, with the same
//! limits on both: connection caps (global and per source), a header-read timeout that starts
//! when the connection opens (TLS handshake included) and applies to every later request, an
//! idle timeout, and a graceful shutdown that cuts what is still open after a drain period.
//!
//! It owns sockets and connection lifetimes, never routes or state: it serves whatever router
//! it is given (the control API's, from `net::api`). It must never log per request or per refused connection (at most one
//! line per source a minute).

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path as FsPath, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use zeroize::Zeroizing;

use crate::config::ApiConfig;
use crate::net::limits::{ConnLimiter, ConnMetrics, ConnPermit, LogGate};

/// The `transport` label of the API's connection metrics.
const TRANSPORT: &str = "api";

/// A client that connects but does not finish its TLS handshake is dropped after this long
/// (or after the header-read timeout, when that is shorter).
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// On shutdown, connections still busy after this long are cut.
const DRAIN: Duration = Duration::from_secs(5);

/// Timeouts and caps of the API's connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpLimits {
    /// The first request's headers must have arrived this long after the connection opened;
    /// each later request's, this long after it started (hyper's HTTP/1 header timeout).
    pub header_read_timeout: Duration,
    /// A connection that moved no byte for this long is closed.
    pub idle_timeout: Duration,
    pub max_connections: usize,
    pub max_connections_per_source: usize,
}

impl HttpLimits {
    pub fn from_config(api: &ApiConfig) -> HttpLimits {
        HttpLimits {
            header_read_timeout: Duration::from_secs(api.header_read_timeout_s),
            idle_timeout: Duration::from_secs(api.idle_timeout_s),
            max_connections: api.max_connections,
            max_connections_per_source: api.max_connections_per_source,
        }
    }
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits::from_config(&ApiConfig::default())
    }
}

/// Serves `app` on `listener` (over TLS when `tls` is given) until `shutdown` resolves,
/// counting connections in `metrics`. On shutdown it stops accepting, calls `on_shutdown` (the
/// API closes its SSE streams there, which would otherwise never finish), asks every
/// connection to finish its in-flight requests and cuts those still open after [`DRAIN`].
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    metrics: ConnMetrics,
    on_shutdown: impl FnOnce(),
    tls: Option<TlsAcceptor>,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let limiter = ConnLimiter::new(
        TRANSPORT,
        limits.max_connections,
        limits.max_connections_per_source,
        &metrics,
    );
    let gate = LogGate::default();
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut conns = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            r = listener.accept() => r,
        };
        // Reap finished connections so the set does not grow with the server's age.
        while conns.try_join_next().is_some() {}
        match accepted {
            Ok((tcp, peer)) => {
                let permit = match limiter.try_acquire(peer.ip()) {
                    Ok(p) => p,
                    Err(refusal) => {
                        // Dropping the stream closes it at once.
                        drop(tcp);
                        metrics.refused(TRANSPORT, refusal.label());
                        if let Some(held) = gate.admit(peer.ip(), std::time::Instant::now()) {
                            tracing::warn!(
                                source = %peer.ip(),
                                reason = refusal.label(),
                                open = limiter.open(),
                                not_logged = held,
                                "control API connection refused"
                            );
                        }
                        continue;
                    }
                };
                conns.spawn(connection(Conn {
                    tls: tls.clone(),
                    tcp,
                    peer,
                    app: app.clone(),
                    limits,
                    metrics: metrics.clone(),
                    stop: stop_rx.clone(),
                    _permit: permit,
                }));
            }
            Err(e) => {
                // Out of descriptors and the like: back off rather than spin.
                tracing::warn!(error = %e, "control API accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    drop(listener);
    on_shutdown();
    let _ = stop_tx.send(true);
    let drained =
        tokio::time::timeout(DRAIN, async { while conns.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!(
            open = conns.len(),
            "control API connections cut after the drain period"
        );
        conns.shutdown().await;
    }
    Ok(())
}

/// One accepted connection and what it needs.
struct Conn {
    tls: Option<TlsAcceptor>,
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    app: Router,
    limits: HttpLimits,
    metrics: ConnMetrics,
    stop: watch::Receiver<bool>,
    /// Counted against the caps until the connection ends.
    _permit: ConnPermit,
}

async fn connection(c: Conn) {
    let Conn {
        tls,
        tcp,
        peer,
        app,
        limits,
        metrics,
        stop,
        _permit,
    } = c;
    let opened = Instant::now();
    let _ = tcp.set_nodelay(true);
    let served = Served {
        peer,
        tls: tls.is_some(),
        app,
        limits,
        metrics,
        stop,
        opened,
    };
    let Some(tls) = tls else {
        return served.run(tcp).await;
    };
    let handshake_by = opened + TLS_HANDSHAKE_TIMEOUT.min(limits.header_read_timeout);
    match tokio::time::timeout_at(handshake_by, tls.accept(tcp)).await {
        Ok(Ok(stream)) => served.run(stream).await,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "control API TLS handshake failed");
        }
        Err(_) => {
            served.metrics.closed(TRANSPORT, "handshake_timeout");
            tracing::debug!(%peer, "control API TLS handshake timed out");
        }
    }
}

/// Whether the request came over TLS: a request extension (the desk login marks its cookie
/// `Secure` then).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OverTls(pub bool);

/// A connection past its TLS handshake (if any), served until it ends, times out or `stop`.
struct Served {
    peer: SocketAddr,
    tls: bool,
    app: Router,
    limits: HttpLimits,
    metrics: ConnMetrics,
    stop: watch::Receiver<bool>,
    opened: Instant,
}

impl Served {
    async fn run<I>(self, io: I)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Served {
            peer,
            tls,
            app,
            limits,
            metrics,
            mut stop,
            opened,
        } = self;
        let moved = Arc::new(AtomicU64::new(0));
        let asked = Arc::new(AtomicBool::new(false));
        let io = Tracked {
            inner: io,
            opened,
            moved: moved.clone(),
        };
        let svc = {
            let asked = asked.clone();
            let inner = TowerToHyperService::new(app);
            hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                asked.store(true, Ordering::Relaxed);
                // Handlers that limit per source (the locator look-up) read the peer here.
                req.extensions_mut()
                    .insert(axum::extract::ConnectInfo(peer));
                req.extensions_mut().insert(OverTls(tls));
                hyper::service::Service::call(&inner, req)
            })
        };
        let mut builder = auto::Builder::new(TokioExecutor::new());
        // hyper starts this timer for every request head, including the wait for the next
        // request on a kept-alive HTTP/1.1 connection.
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout);
        builder.http2().timer(TokioTimer::new());
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
        tokio::pin!(conn);
        // Until the first request, the header timeout counts from the accept: the version
        // sniffing of the auto builder and HTTP/2's preface have no timeout of their own.
        let first_by = opened + limits.header_read_timeout;
        let ended = loop {
            let deadline = if asked.load(Ordering::Relaxed) {
                opened + Duration::from_millis(moved.load(Ordering::Relaxed)) + limits.idle_timeout
            } else {
                first_by
            };
            tokio::select! {
                r = conn.as_mut() => break Ended::Done(r),
                _ = stop.wait_for(|s| *s) => break Ended::Stop,
                () = tokio::time::sleep_until(deadline) => {
                    let now = Instant::now();
                    if !asked.load(Ordering::Relaxed) {
                        if now >= first_by {
                            break Ended::TimedOut("header_timeout");
                        }
                    } else if now
                        >= opened
                            + Duration::from_millis(moved.load(Ordering::Relaxed))
                            + limits.idle_timeout
                    {
                        break Ended::TimedOut("idle_timeout");
                    }
                }
            }
        };
        let result = match ended {
            Ended::Done(r) => r,
            Ended::Stop => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
            Ended::TimedOut(reason) => {
                // Nothing is in flight (no request yet, or no byte for the idle timeout):
                // dropping the connection closes the socket.
                metrics.closed(TRANSPORT, reason);
                tracing::debug!(%peer, reason, "control API connection closed");
                return;
            }
        };
        if let Err(e) = result {
            if e.downcast_ref::<hyper::Error>()
                .is_some_and(hyper::Error::is_timeout)
            {
                metrics.closed(TRANSPORT, "header_timeout");
            }
            tracing::debug!(%peer, error = %e, "control API connection ended with an error");
        }
    }
}

enum Ended<R> {
    Done(R),
    Stop,
    TimedOut(&'static str),
}

/// A stream that notes when a byte last moved either way, in milliseconds since `opened`.
struct Tracked<I> {
    inner: I,
    opened: Instant,
    moved: Arc<AtomicU64>,
}

impl<I> Tracked<I> {
    fn touch(&self) {
        let ms = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.moved.store(ms, Ordering::Relaxed);
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Tracked<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.touch();
        }
        r
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Tracked<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

// ---------------------------------------------------------------------------------------------
// TLS

/// The API's certificate or key cannot be used. Names the file, never shows its content (PEM
/// parser messages can quote the offending line, so they are not kept).
#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    #[error("cannot read control API TLS {what} file {path}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("control API TLS {what} file {path}: {problem}")]
    Pem {
        what: &'static str,
        path: PathBuf,
        problem: &'static str,
    },
    #[error("control API TLS certificate {cert} and key {key} cannot be used together")]
    Rejected {
        cert: PathBuf,
        key: PathBuf,
        source: rustls::Error,
    },
}

/// Loads the PEM certificate chain and private key for HTTPS; TLS 1.2 and 1.3 with ring's
/// algorithms, given explicitly so no process-wide crypto provider has to be installed.
pub fn tls_acceptor(cert: &FsPath, key: &FsPath) -> Result<TlsAcceptor, TlsConfigError> {
    let read = |what: &'static str, path: &FsPath| {
        std::fs::read(path)
            .map(Zeroizing::new)
            .map_err(|source| TlsConfigError::Read {
                what,
                path: path.to_owned(),
                source,
            })
    };
    let pem = |what: &'static str, path: &FsPath, problem: &'static str| TlsConfigError::Pem {
        what,
        path: path.to_owned(),
        problem,
    };
    let chain = CertificateDer::pem_slice_iter(&read("certificate", cert)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| pem("certificate", cert, "malformed PEM"))?;
    if chain.is_empty() {
        return Err(pem("certificate", cert, "no CERTIFICATE block"));
    }
    let private = PrivateKeyDer::from_pem_slice(&read("key", key)?).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => pem("key", key, "no private key block"),
        _ => pem("key", key, "malformed PEM"),
    })?;
    let rejected = |source| TlsConfigError::Rejected {
        cert: cert.to_owned(),
        key: key.to_owned(),
        source,
    };
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(rejected)?
    .with_no_client_auth()
    .with_single_cert(chain, private)
    .map_err(rejected)?;
    // RFC 7301: offer HTTP/2 and HTTP/1.1; the auto builder serves either.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
