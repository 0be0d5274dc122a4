//! Media threads: each runs one event loop (mio: epoll on Linux) that owns the relays of the
//! calls dealt to it and moves all their packets.
//!
//! Why not a tokio task per call: `media_load` measured a bare forwarder written as a tokio task
//! per stream at 10.5-10.8 ms of CPU per 1000 packets, and the same forwarder as one epoll loop
//! at 7.3-7.6 ms, on the same pinned core in the same run. Per packet, tokio's readiness
//! bookkeeping, waker chain and task scheduling cost more than the scrubber's DSP. Here a
//! readable socket goes straight from `epoll_wait` to its call's state by index: no waker, no
//! task, no lock. The per-call logic stays in `relay::Relay`; this file owns only the loop,
//! its timers and the inbox through which calls and control commands arrive.
//!
//! Never on this thread: blocking I/O (the recording is written by the caller's runtime), logging
//! per packet, or allocation per packet.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token};
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::oneshot;

use super::relay::{After, Finished, MediaError, Relay, SOCKETS, Scratch, prefetch};
use super::stats::RelayStats;

/// The token the inbox's waker fires with; socket tokens are `slot * SOCKETS + socket`.
const WAKE: Token = Token(usize::MAX);
/// Datagrams read from one socket before the loop turns to the others: a flooded socket gets
/// its turn again on the next pass, after every other ready one.
const BUDGET: usize = 32;
/// Readiness events taken from the kernel per `epoll_wait`.
const EVENTS: usize = 1024;

/// Threads that run the media relays. A call's relay stays on the thread it was given for its
/// whole life, so its state (2-3 KB, read on every packet) and its sockets stay with one core.
/// Calls are dealt round-robin.
#[derive(Clone)]
pub struct MediaWorkers {
    inner: Arc<Workers>,
}

struct Workers {
    threads: Vec<Worker>,
    next: AtomicUsize,
}

struct Worker {
    inbox: Arc<Inbox>,
    join: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Workers {
    /// The last clone gone: each loop is told to end, which ends (and closes) its calls' relays,
    /// and is waited for, so their ports are free when this returns.
    fn drop(&mut self) {
        for w in &self.threads {
            w.inbox.close();
        }
        for w in &mut self.threads {
            if let Some(j) = w.join.take() {
                let _ = j.join();
            }
        }
    }
}

impl std::fmt::Debug for MediaWorkers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MediaWorkers")
            .field("threads", &self.threads())
            .finish()
    }
}

impl MediaWorkers {
    /// Starts `threads` media threads (at least one), named `tw-media-N`.
    pub fn start(threads: usize) -> std::io::Result<MediaWorkers> {
        MediaWorkers::start_with(threads, || {})
    }

    /// [`MediaWorkers::start`], each thread resting `batch` after every wake-up that brought
    /// packets, so that the next one brings those that came meanwhile (see [`Loop::run`]).
    pub fn start_batched(threads: usize, batch: Duration) -> std::io::Result<MediaWorkers> {
        MediaWorkers::spawn_named(threads, "tw-media-", Arc::new(|| {}), batch)
    }

    /// [`MediaWorkers::start`], running `on_start` first on each new thread (to pin it to a
    /// CPU, or note its id for accounting).
    pub fn start_with(
        threads: usize,
        on_start: impl Fn() + Send + Sync + 'static,
    ) -> std::io::Result<MediaWorkers> {
        MediaWorkers::spawn_named(threads, "tw-media-", Arc::new(on_start), Duration::ZERO)
    }

    fn spawn_named(
        threads: usize,
        prefix: &str,
        on_start: Arc<dyn Fn() + Send + Sync>,
        batch: Duration,
    ) -> std::io::Result<MediaWorkers> {
        let mut workers = Workers {
            threads: Vec::new(),
            next: AtomicUsize::new(0),
        };
        for i in 0..threads.max(1) {
            // Made here so that a failure is the caller's error, not a thread's silent exit.
            let poll = Poll::new()?;
            let waker = mio::Waker::new(poll.registry(), WAKE)?;
            let inbox = Arc::new(Inbox {
                state: Mutex::new(InboxState::default()),
                waker,
            });
            let on_start = on_start.clone();
            let lp = Loop::new(poll, inbox.clone(), batch);
            let join = std::thread::Builder::new()
                .name(format!("{prefix}{i}"))
                .spawn(move || {
                    on_start();
                    lp.run();
                })?;
            // Pushed at once: should a later thread fail to start, dropping `workers` ends this one.
            workers.threads.push(Worker {
                inbox,
                join: Some(join),
            });
        }
        Ok(MediaWorkers {
            inner: Arc::new(workers),
        })
    }

    /// The media thread shared by relays started without workers of their own (tests, the
    /// demo): started on first use, and never ended.
    pub(super) fn shared() -> Result<MediaWorkers, MediaError> {
        static SHARED: std::sync::OnceLock<MediaWorkers> = std::sync::OnceLock::new();
        if let Some(w) = SHARED.get() {
            return Ok(w.clone());
        }
        // Named apart from `tw-media-N`, which are a `tonewall run`'s own threads.
        let w = MediaWorkers::spawn_named(1, "tw-relay-shared", Arc::new(|| {}), Duration::ZERO)
            .map_err(|e| MediaError::Register(e.to_string()))?;
        Ok(SHARED.get_or_init(|| w).clone())
    }

    pub fn threads(&self) -> usize {
        self.inner.threads.len()
    }

    /// Hands a call's relay to the next media thread. `done` gets what is left of it when it
    /// stops (or is dropped, with the relay, should the thread have ended).
    pub(super) fn add(&self, id: u64, relay: Box<Relay>, done: Done) -> Bell {
        let n = self.inner.next.fetch_add(1, Ordering::Relaxed);
        let len = self.inner.threads.len().max(1);
        let inbox = self.inner.threads.get(n % len).map(|w| w.inbox.clone());
        if let Some(inbox) = &inbox {
            inbox.with(|s| s.added.push(NewCall { id, relay, done }));
        }
        Bell { id, inbox }
    }
}

/// Where a relay's remains go when it stops.
pub(super) type Done = oneshot::Sender<Result<Finished, MediaError>>;

/// Rings a call's media thread after a control command was queued for it, and once more when
/// the last of the call's control senders is dropped (every handle gone is a stop).
#[derive(Debug)]
pub(super) struct Bell {
    id: u64,
    inbox: Option<Arc<Inbox>>,
}

impl Bell {
    pub(super) fn ring(&self) {
        if let Some(inbox) = &self.inbox {
            inbox.with(|s| s.rung.push(self.id));
        }
    }
}

impl Drop for Bell {
    fn drop(&mut self) {
        self.ring();
    }
}

/// What other threads hand a media thread: new calls and the ids of calls with control commands
/// waiting. The lock is held only to push or to swap the lists out, never across I/O.
pub(super) struct Inbox {
    state: Mutex<InboxState>,
    waker: mio::Waker,
}

impl std::fmt::Debug for Inbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Inbox")
    }
}

#[derive(Default)]
struct InboxState {
    added: Vec<NewCall>,
    rung: Vec<u64>,
    closed: bool,
}

impl InboxState {
    fn is_empty(&self) -> bool {
        self.added.is_empty() && self.rung.is_empty() && !self.closed
    }
}

struct NewCall {
    id: u64,
    relay: Box<Relay>,
    done: Done,
}

impl Inbox {
    fn lock(&self) -> MutexGuard<'_, InboxState> {
        // A panic elsewhere while holding it leaves plain lists, still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies `f` and wakes the loop if it had nothing waiting (otherwise a wake is already on
    /// its way). After `close`, new calls are dropped, which their `done` reports.
    fn with(&self, f: impl FnOnce(&mut InboxState)) {
        let mut s = self.lock();
        if s.closed {
            return;
        }
        let was_empty = s.is_empty();
        f(&mut s);
        drop(s);
        if was_empty && let Err(e) = self.waker.wake() {
            tracing::error!(error = %e, "cannot wake a media thread");
        }
    }

    /// Ends the loop. Calls still waiting to be taken on are dropped, which their `done`
    /// reports, and later ones are turned away.
    fn close(&self) {
        let waiting = {
            let mut s = self.lock();
            s.closed = true;
            std::mem::take(&mut s.added)
        };
        // Dropped outside the lock: each closes its sockets.
        drop(waiting);
        if let Err(e) = self.waker.wake() {
            tracing::error!(error = %e, "cannot wake a media thread to end it");
        }
    }
}

/// One call on a media thread.
struct Entry {
    id: u64,
    /// Held in the slot itself, not boxed: the loop can then fetch a call's state ahead of its
    /// packet from the slot's address alone, where a box first had to be read for its pointer,
    /// a miss of its own that `perf` showed stalling the loop on every packet. The table moves
    /// its entries when it grows (a few MB copied once, at a thousand-odd calls).
    relay: Relay,
    done: Done,
    /// When the relay's next tick is due; timer-heap entries that do not match are stale.
    deadline: Instant,
}

struct Loop {
    poll: Poll,
    inbox: Arc<Inbox>,
    calls: Vec<Option<Entry>>,
    /// Each slot's shared counters, kept apart from `calls` so that fetching them ahead of a
    /// packet needs no load from the call's own (cold) state.
    counters: Vec<Option<Arc<RelayStats>>>,
    free: Vec<usize>,
    by_id: HashMap<u64, usize>,
    /// Ticks due, soonest first: (when, slot, call id). Re-arming pushes a new entry and leaves
    /// the old one to be skipped when it comes up, so there are at most a few per call.
    timers: BinaryHeap<Reverse<(Instant, usize, u64)>>,
    /// Sockets that used up their budget and may hold more.
    again: Vec<Token>,
    scratch: Box<Scratch>,
    /// Rest after a wake-up that brought packets (zero: none).
    batch: Duration,
}

impl Loop {
    fn new(poll: Poll, inbox: Arc<Inbox>, batch: Duration) -> Loop {
        Loop {
            batch,
            poll,
            inbox,
            calls: Vec::new(),
            counters: Vec::new(),
            free: Vec::new(),
            by_id: HashMap::new(),
            timers: BinaryHeap::new(),
            again: Vec::new(),
            scratch: Box::new(Scratch::new()),
        }
    }

    fn run(mut self) {
        let mut events = Events::with_capacity(EVENTS);
        let mut again = Vec::new();
        loop {
            let timeout = if self.again.is_empty() {
                self.timers
                    .peek()
                    .map(|Reverse((at, ..))| at.saturating_duration_since(Instant::now()))
            } else {
                Some(Duration::ZERO)
            };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                // Nothing on this thread can be served any more; the calls' owners see their
                // relays end.
                tracing::error!(error = %e, "media thread cannot wait for packets; its calls end");
                // Calls dealt to it from now on are turned away rather than left waiting.
                self.inbox.close();
                return;
            }
            // One clock read per wake-up, however many packets it brings.
            let now = Instant::now();
            std::mem::swap(&mut again, &mut self.again);
            for t in again.drain(..) {
                self.readable(t, now);
            }
            let mut woken = false;
            let mut ready = events.iter().map(|e| e.token()).peekable();
            // While this socket's system calls run (a few µs, far longer than a miss), the next
            // ready socket's call state is fetched: at thousands of calls it is not in cache 20 ms
            // on. (Fetching a step earlier still, or the state in two halves over two sockets,
            // made no difference that `media_load` could see.)
            if let Some(&t) = ready.peek() {
                self.prefetch(t);
            }
            while let Some(t) = ready.next() {
                if let Some(&next) = ready.peek() {
                    self.prefetch(next);
                }
                match t {
                    WAKE => woken = true,
                    t => self.readable(t, now),
                }
            }
            if woken && !self.take_inbox(now) {
                return;
            }
            self.expire(now);
            // At hundreds of calls packets come every few µs, and without a rest each wake-up
            // brings one or two: the thread sleeps and is woken (two context switches) per
            // packet, which cost more than relaying it. Resting a little after a wake-up that
            // brought packets lets the next bring all that came meanwhile, at the price of that
            // much delay and jitter. Idle, the thread still waits in `poll` for the first one.
            if !self.batch.is_zero() && !events.is_empty() {
                std::thread::sleep(self.batch);
            }
        }
    }

    /// Starts fetching what an RTP packet on `t` will read: the call's state (a caller packet
    /// goes through all of the scrubber's) and its counters. RTCP, a packet every few seconds,
    /// is not worth the bandwidth.
    fn prefetch(&self, t: Token) {
        let (slot, sock) = (t.0 / SOCKETS, t.0 % SOCKETS);
        if sock >= 2 {
            return;
        }
        // Addresses only, nothing loaded from the call: a load would stall right here.
        if let Some(e) = self.calls.get(slot) {
            prefetch(e);
        }
        if let Some(Some(s)) = self.counters.get(slot) {
            prefetch(&**s);
        }
    }

    fn readable(&mut self, t: Token, now: Instant) {
        let (slot, sock) = (t.0 / SOCKETS, t.0 % SOCKETS);
        let Some(Some(e)) = self.calls.get_mut(slot) else {
            return;
        };
        if e.relay.readable(sock, now, &mut self.scratch, BUDGET) {
            self.again.push(t);
        }
        // An RFC 4733 event whose end packets may be lost needs the short tick for its timeout
        // (RFC 4733 §2.5.2.2); re-armed only when that starts.
        if let Some(at) = e.relay.tick_needed_by(now)
            && at < e.deadline
        {
            e.deadline = at;
            self.timers.push(Reverse((at, slot, e.id)));
        }
    }

    /// New calls and control commands. False when the loop is to end.
    fn take_inbox(&mut self, now: Instant) -> bool {
        let (added, rung, closed) = {
            let mut s = self.inbox.lock();
            (
                std::mem::take(&mut s.added),
                std::mem::take(&mut s.rung),
                s.closed,
            )
        };
        if closed {
            return false;
        }
        for c in added {
            self.add(c, now);
        }
        for id in rung {
            self.control(id, now);
        }
        true
    }

    fn add(&mut self, c: NewCall, now: Instant) {
        let slot = self.free.pop().unwrap_or(self.calls.len());
        let NewCall {
            id,
            mut relay,
            done,
        } = c;
        let registry = self.poll.registry();
        for i in 0..SOCKETS {
            let token = Token(slot * SOCKETS + i);
            if let Err(e) = registry.register(relay.socket(i), token, Interest::READABLE) {
                for j in 0..i {
                    let _ = registry.deregister(relay.socket(j));
                }
                self.free.push(slot);
                let _ = done.send(Err(MediaError::Register(e.to_string())));
                return;
            }
        }
        let deadline = relay.started(now);
        self.timers.push(Reverse((deadline, slot, id)));
        let entry = Entry {
            id,
            relay: *relay,
            done,
            deadline,
        };
        let counters = entry.relay.counters();
        match self.calls.get_mut(slot) {
            Some(s) => *s = Some(entry),
            None => self.calls.push(Some(entry)),
        }
        match self.counters.get_mut(slot) {
            Some(s) => *s = Some(counters),
            None => self.counters.push(Some(counters)),
        }
        self.by_id.insert(id, slot);
    }

    fn control(&mut self, id: u64, now: Instant) {
        let Some(&slot) = self.by_id.get(&id) else {
            return;
        };
        let Some(Some(e)) = self.calls.get_mut(slot) else {
            return;
        };
        loop {
            let after = match e.relay.next_control() {
                Ok(c) => e.relay.apply(c, now),
                Err(TryRecvError::Empty) => return,
                // Every handle gone: nobody could stop the relay later.
                Err(TryRecvError::Disconnected) => After::Stop,
            };
            match after {
                After::Go => {}
                After::Rearm(at) => {
                    e.deadline = at;
                    self.timers.push(Reverse((at, slot, id)));
                }
                After::Stop => {
                    self.remove(slot);
                    return;
                }
            }
        }
    }

    fn expire(&mut self, now: Instant) {
        while let Some(&Reverse((at, slot, id))) = self.timers.peek() {
            if at > now {
                return;
            }
            self.timers.pop();
            let Some(Some(e)) = self.calls.get_mut(slot) else {
                continue;
            };
            if e.id != id || e.deadline != at {
                continue;
            }
            let next = e.relay.tick(at, now);
            e.deadline = next;
            self.timers.push(Reverse((next, slot, id)));
        }
    }

    fn remove(&mut self, slot: usize) {
        let Some(e) = self.calls.get_mut(slot).and_then(Option::take) else {
            return;
        };
        if let Some(c) = self.counters.get_mut(slot) {
            *c = None;
        }
        let Entry {
            id,
            mut relay,
            done,
            ..
        } = e;
        let registry = self.poll.registry();
        for i in 0..SOCKETS {
            let _ = registry.deregister(relay.socket(i));
        }
        self.by_id.remove(&id);
        self.free.push(slot);
        // Its owner may have stopped waiting; the relay's sockets close here either way.
        let _ = done.send(Ok(relay.finish()));
    }
}
