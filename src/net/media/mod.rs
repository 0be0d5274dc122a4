//! The per-call RTP relay, as the SIP side starts and steers it: a relay between two legs
//! (A = trunk/caller, B = contact centre/agent) that scrubs the caller's keys out of what the
//! agent hears, run on a media thread.
//!
//! Three layers, each building only on the ones below it: `stats` (the counters), `relay` (one
//! call's state and its packet path, control commands and events) and `workers` (the media
//! threads' event loops that own the relays). This file starts a relay on a media thread and
//! hands back its handle; everything public is re-exported here.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

mod relay;
mod stats;
mod workers;

pub use relay::{KeyTap, MediaControl, MediaError, MediaEvent, RelayOutcome};
pub use stats::{RelayStats, RelayStatsSnapshot};
pub use workers::MediaWorkers;

use crate::net::ports::PortPair;
use crate::net::recording::Recorder;
use crate::rtp::scrubber::{ScrubbedDigit, ScrubberConfig};
use crate::sip::b2bua::RelaySrtp;
use relay::{LegSockets, Relay, Wires};
use workers::Bell;

/// Digits waiting for the capture side; a full channel means capture has stalled.
const DIGIT_QUEUE: usize = 64;

/// Options beyond the two legs; the defaults suit tests and a plain relay.
#[derive(Clone, Debug)]
pub struct RelayOptions {
    /// No RTP from either side for this long raises `MediaEvent::Inactive`.
    pub inactivity: Duration,
    /// Directory for a stereo recording streamed to disk as the call goes (agent-received left,
    /// caller-received right; `<call>-<unix ms>.wav`, mode 0600); none when unset.
    pub record_dir: Option<PathBuf>,
    /// File name stem for the recording (the call id).
    pub call_label: String,
    /// Listen for keys on the agent→caller direction from the start (see
    /// [`MediaControl::AgentDigits`]).
    pub agent_digits: bool,
    /// Recording length cap, seconds per channel.
    pub max_record_s: u64,
    /// Media threads to run the relay on (one picked per call); one thread shared by all relays
    /// started without their own when unset.
    pub workers: Option<MediaWorkers>,
    /// Where keys go; the handle's `digits` and `agent_digits` channels when unset.
    pub key_tap: Option<KeyTap>,
}

impl Default for RelayOptions {
    fn default() -> Self {
        RelayOptions {
            inactivity: Duration::from_secs(60),
            record_dir: None,
            call_label: "call".into(),
            agent_digits: false,
            max_record_s: 3600,
            workers: None,
            key_tap: None,
        }
    }
}

/// The caller's side of a running relay.
#[derive(Debug)]
pub struct MediaHandle {
    control: ControlSender,
    stats: Arc<RelayStats>,
    /// Digits heard on the caller→agent direction, for capture. Never log them.
    pub digits: mpsc::Receiver<ScrubbedDigit>,
    /// Keys the agent pressed (agent→caller direction), while listening for them is on
    /// ([`MediaControl::AgentDigits`]). Never log them.
    pub agent_digits: mpsc::Receiver<ScrubbedDigit>,
    pub events: mpsc::Receiver<MediaEvent>,
    /// Addresses to advertise in SDP: leg A (towards the trunk) and leg B (towards the agent).
    pub a_addr: SocketAddr,
    pub b_addr: SocketAddr,
}

impl MediaHandle {
    pub fn stats(&self) -> RelayStatsSnapshot {
        self.stats.snapshot()
    }

    /// The relay's counters themselves, for whoever folds them while the handle is busy.
    pub fn shared_stats(&self) -> Arc<RelayStats> {
        self.stats.clone()
    }

    /// A sender for control commands, for callers that want to keep one apart from the handle.
    pub fn control(&self) -> ControlSender {
        self.control.clone()
    }

    /// Returns false when the relay has already stopped.
    pub async fn set_scrubbing(&self, on: bool) -> bool {
        self.control.send(MediaControl::Scrub(on)).await.is_ok()
    }

    pub async fn update_peers(&self, a: Option<SocketAddr>, b: Option<SocketAddr>) -> bool {
        self.control
            .send(MediaControl::Peers { a, b })
            .await
            .is_ok()
    }

    /// Listens for the agent's keys (or stops); returns false when the relay has stopped.
    pub async fn set_agent_digits(&self, on: bool) -> bool {
        self.control
            .send(MediaControl::AgentDigits(on))
            .await
            .is_ok()
    }

    pub async fn stop(&self) -> bool {
        self.control.send(MediaControl::Stop).await.is_ok()
    }
}

/// Sends control commands to a running relay. Like an mpsc sender (a bounded queue per call,
/// closed once the relay has stopped), and each command sent also wakes the relay's media
/// thread. When the last clone is dropped the relay stops: nobody could stop it later.
#[derive(Clone, Debug)]
pub struct ControlSender {
    tx: mpsc::Sender<MediaControl>,
    bell: Option<Arc<Bell>>,
}

impl ControlSender {
    /// A sender for a queue nobody wakes for: the receiving end polls it itself (tests of the
    /// code that sends).
    pub fn unattached(tx: mpsc::Sender<MediaControl>) -> ControlSender {
        ControlSender { tx, bell: None }
    }

    /// Queues `c` without waiting; fails when the queue is full or the relay has stopped.
    pub fn try_send(&self, c: MediaControl) -> Result<(), mpsc::error::TrySendError<MediaControl>> {
        self.tx.try_send(c)?;
        self.ring();
        Ok(())
    }

    /// Queues `c`, waiting for room; fails when the relay has stopped.
    pub async fn send(&self, c: MediaControl) -> Result<(), mpsc::error::SendError<MediaControl>> {
        self.tx.send(c).await?;
        self.ring();
        Ok(())
    }

    fn ring(&self) {
        if let Some(b) = &self.bell {
            b.ring();
        }
    }
}

pub struct MediaRelay;

impl MediaRelay {
    /// Starts a relay with default options. See [`MediaRelay::start_with`].
    pub fn start(
        a: PortPair,
        b: PortPair,
        a_peer: Option<SocketAddr>,
        b_peer: Option<SocketAddr>,
        scrubber: ScrubberConfig,
        scrub_on: bool,
    ) -> (MediaHandle, JoinHandle<Result<RelayOutcome, MediaError>>) {
        MediaRelay::start_with(
            a,
            b,
            a_peer,
            b_peer,
            scrubber,
            scrub_on,
            RelayOptions::default(),
        )
    }

    /// Starts the relay on a media thread (`opts.workers`, else one shared by all such relays)
    /// and returns its handle and a task, on the current tokio runtime, that ends with the relay
    /// and writes its recording. `a_peer`/`b_peer` are the RTP addresses from each side's SDP
    /// (None: latch on whoever sends first).
    pub fn start_with(
        a: PortPair,
        b: PortPair,
        a_peer: Option<SocketAddr>,
        b_peer: Option<SocketAddr>,
        scrubber: ScrubberConfig,
        scrub_on: bool,
        opts: RelayOptions,
    ) -> (MediaHandle, JoinHandle<Result<RelayOutcome, MediaError>>) {
        Self::start_secure(a, b, (a_peer, b_peer), scrubber, scrub_on, opts, None)
    }

    /// [`MediaRelay::start_with`] with SRTP on either leg or both from the first packet:
    /// each SRTP leg's packets are decrypted before the latch and the scrubber see them, and
    /// what goes out to it is encrypted with our key for that leg.
    pub fn start_secure(
        a: PortPair,
        b: PortPair,
        (a_peer, b_peer): (Option<SocketAddr>, Option<SocketAddr>),
        scrubber: ScrubberConfig,
        scrub_on: bool,
        opts: RelayOptions,
        srtp: Option<Box<RelaySrtp>>,
    ) -> (MediaHandle, JoinHandle<Result<RelayOutcome, MediaError>>) {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        let (control_tx, control_rx) = mpsc::channel(16);
        let (digit_tx, digit_rx) = mpsc::channel(DIGIT_QUEUE);
        let (agent_tx, agent_rx) = mpsc::channel(DIGIT_QUEUE);
        let (event_tx, event_rx) = mpsc::channel(8);
        let (done_tx, done_rx) = oneshot::channel();
        let stats = Arc::new(RelayStats::default());
        let (a_addr, b_addr) = (a.rtp_addr(), b.rtp_addr());
        let recorder = opts
            .record_dir
            .as_ref()
            .map(|dir| Box::new(Recorder::create(dir, &opts.call_label, opts.max_record_s)));
        let mut cfg = scrubber;
        cfg.enabled = scrub_on;
        let legs = LegSockets::take(a).and_then(|a| Ok((a, LegSockets::take(b)?)));
        let workers = match opts.workers {
            Some(w) => Ok(w),
            None => MediaWorkers::shared(),
        };
        let bell = match (legs, workers) {
            (Ok(legs), Ok(workers)) => {
                let wires = Wires {
                    stats: stats.clone(),
                    digits: digit_tx,
                    agent_digits: agent_tx,
                    events: event_tx,
                    control: control_rx,
                    key_tap: opts.key_tap.clone(),
                };
                let relay = Relay::new(
                    legs,
                    (a_peer, b_peer),
                    cfg,
                    opts.agent_digits,
                    wires,
                    opts.inactivity,
                    (recorder, srtp),
                );
                let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
                Some(Arc::new(workers.add(id, Box::new(relay), done_tx)))
            }
            (Err(e), _) | (_, Err(e)) => {
                let _ = done_tx.send(Err(e));
                None
            }
        };
        let handle = MediaHandle {
            control: ControlSender {
                tx: control_tx,
                bell,
            },
            stats,
            digits: digit_rx,
            agent_digits: agent_rx,
            events: event_rx,
            a_addr,
            b_addr,
        };
        let task = tokio::spawn(async move {
            match done_rx.await {
                Ok(finished) => finished?.write().await,
                Err(_) => Err(MediaError::ThreadEnded),
            }
        });
        (handle, task)
    }
}
