//! `tonewall run`: binds SIP, the media port pool and the control API from the config, and
//! runs them until shutdown. Owns start-up order and error reporting, nothing else: the SIP
//! and media wiring is `net::sip`'s, the API's is `net::api`'s.

use std::future::Future;
use std::net::SocketAddr;

use futures_util::{Stream, StreamExt, stream};
use tokio::sync::watch;

use crate::config::Config;
use crate::net::api::{self, ApiInitError, ApiState};
use crate::net::http::{self, HttpLimits, TlsConfigError};
use crate::net::limits::{self, FileLimitError};
use crate::net::media::MediaWorkers;
use crate::net::ports::{PortError, PortPool};
use crate::net::sip;
use crate::sip::b2bua::B2buaError;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Route(#[from] B2buaError),
    #[error(transparent)]
    Ports(#[from] PortError),
    #[error("cannot set up the control API")]
    Api(#[from] ApiInitError),
    #[error(transparent)]
    Tls(#[from] TlsConfigError),
    #[error(transparent)]
    SipTls(#[from] sip::SipTlsError),
    #[error("cannot listen for {what} on {addr}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("control API server: {0}")]
    Serve(std::io::Error),
    #[error("cannot start the media threads: {0}")]
    MediaThreads(std::io::Error),
    #[error(transparent)]
    FileLimit(#[from] FileLimitError),
}

/// What the process was told to do (by a signal).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// Leave gracefully (SIGTERM): no new calls, the calls in progress go on for up to
    /// `sip.drain_s`, then the rest is hung up and `run` returns. A second `Drain` is `Now`.
    Drain,
    /// Hang up every call and return (SIGINT).
    Now,
}

/// Runs tonewall until `shutdown` resolves: hangs up calls in progress, stops the API, returns.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), RunError> {
    run_until(config, stream::once(shutdown).map(|()| Stop::Now)).await
}

/// Runs tonewall, obeying each [`Stop`] from `stops` as it comes; returns when a drain has
/// ended (no call left) or after a [`Stop::Now`].
pub async fn run_until(config: Config, stops: impl Stream<Item = Stop>) -> Result<(), RunError> {
    // Fail on a bad route, or a config the open-file limit cannot hold, before binding anything.
    config.b2bua([0; 32])?;
    let nofile = limits::ensure_nofile(&config)?;
    let pool = PortPool::from_config(&config.media)?;
    let workers = MediaWorkers::start_batched(config.media.worker_threads(), config.media.batch())
        .map_err(RunError::MediaThreads)?;
    let api_state = ApiState::from_config(&config).await?;
    let api_tls = match config.api.tls_files() {
        Some((cert, key)) => Some(http::tls_acceptor(cert, key)?),
        None => None,
    };
    let api_listener = tokio::net::TcpListener::bind(config.api.listen)
        .await
        .map_err(|source| RunError::Bind {
            what: "the control API",
            addr: config.api.listen,
            source,
        })?;
    let sip_tls = sip::SipTls::from_config(&config)?;
    let sockets = sip::bind(&config)
        .await
        .map_err(|(addr, source)| RunError::Bind {
            what: "SIP",
            addr,
            source,
        })?;
    tracing::info!(
        sip = %config.sip.listen,
        transports = ?config.sip.transports,
        sip_tls = ?sip_tls.listens().then(|| config.sip.tls_listen_addr()),
        media = %format!("{}:{}-{}", config.media.address, config.media.port_min, config.media.port_max),
        media_threads = workers.threads(),
        api = %config.api.listen,
        api_tls = api_tls.is_some(),
        open_files = nofile,
        "tonewall running"
    );

    let (stop_tx, stop_rx) = watch::channel(false);
    let api_stop = sip::wait_true(stop_rx.clone());
    let api_task = tokio::spawn(api::serve_with(
        api_listener,
        api_state.clone(),
        api_tls,
        HttpLimits::from_config(&config.api),
        api_stop,
    ));
    let drain = api_state.clone();
    let sip_task = sip::serve(&config, sockets, sip_tls, pool, workers, api_state, stop_rx);
    tokio::pin!(sip_task);
    tokio::pin!(stops);
    let mut stops_open = true;
    let sip_result = loop {
        tokio::select! {
            r = &mut sip_task => {
                // SIP ended on its own: a drain left no call. Stop the rest.
                let _ = stop_tx.send(true);
                break r;
            }
            stop = stops.next(), if stops_open => match stop {
                Some(Stop::Drain) if !drain.drain().order().exit => {
                    tracing::info!(drain_s = config.sip.drain_s, "draining before exit");
                    drain.drain().drain(true, drain.clock().now_ms());
                }
                Some(_) => {
                    let _ = stop_tx.send(true);
                    break sip_task.await;
                }
                None => stops_open = false,
            },
        }
    };
    let api_result = api_task.await;
    sip_result?;
    match api_result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(RunError::Serve(e)),
        Err(e) => tracing::warn!(error = %e, "control API task failed"),
    }
    tracing::info!("tonewall stopped");
    Ok(())
}
