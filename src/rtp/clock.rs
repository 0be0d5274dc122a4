//! A relay's sense of time: the media clock its scrubber counts milliseconds on, when its timer
//! must fire next, and whether its call has gone quiet.
//!
//! The timer feeds time to the scrubber (RFC 4733 event timeouts) and checks for silence. It
//! runs at `TICK` while an event is sounding, whose end packets may be lost (RFC 4733
//! §2.5.2.2), and otherwise at a tenth of the inactivity period, between `TICK` and
//! `IDLE_TICK`: at thousands of calls, ticks every 100 ms would cost a fifth as many wake-ups
//! as the packets themselves. Missed ticks are not made up.
//!
//! Sans-IO and on the per-packet path (`ms`, `heard`): time is passed in, never read.

use std::time::{Duration, Instant};

/// How often time is fed to the scrubber while an RFC 4733 event is sounding.
// 100 ms: event timeouts are 250 ms and inactivity is seconds; at thousands of calls a finer tick
// would cost as many wake-ups as the packets themselves.
pub const TICK: Duration = Duration::from_millis(100);
/// The longest tick, used while no RFC 4733 event is pending.
pub const IDLE_TICK: Duration = Duration::from_secs(1);
/// The interval of an announcement's packets.
pub const ANNOUNCE_PTIME: Duration = Duration::from_millis(20);

/// A change in whether RTP flows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    /// No RTP from either side for the inactivity period.
    Stopped,
    /// RTP again after `Stopped`.
    Resumed,
}

/// One relay's clock and silence watch.
#[derive(Debug)]
pub struct RelayClock {
    /// The media clock's zero: the scrubber's milliseconds count from here.
    start: Instant,
    last_rtp: Instant,
    inactivity: Duration,
    inactive: bool,
}

impl RelayClock {
    /// A clock started at `now`, reporting silence after `inactivity` without RTP.
    pub fn new(inactivity: Duration, now: Instant) -> RelayClock {
        RelayClock {
            start: now,
            last_rtp: now,
            inactivity,
            inactive: false,
        }
    }

    /// Starts over at `now` (the relay is taken on by the thread that runs it); returns when
    /// the first tick is due.
    pub fn restart(&mut self, now: Instant) -> Instant {
        self.start = now;
        self.last_rtp = now;
        now + self.idle_tick()
    }

    /// Milliseconds on the media clock at `t`.
    #[inline]
    pub fn ms(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.start).as_millis() as u64
    }

    /// RTP was heard, from either side, at `now`.
    #[inline]
    pub fn heard(&mut self, now: Instant) {
        self.last_rtp = now;
    }

    /// When a tick is needed by, if sooner than the idle period: while an RFC 4733 event is
    /// sounding.
    #[inline]
    pub fn tick_needed_by(&self, now: Instant, event_pending: bool) -> Option<Instant> {
        event_pending.then(|| now + TICK)
    }

    /// The tick due at `at`: whether RTP stopped or resumed since the last change. Reported
    /// once per silent spell.
    pub fn check(&mut self, at: Instant) -> Option<Flow> {
        let silent = at.saturating_duration_since(self.last_rtp) >= self.inactivity;
        if silent == self.inactive {
            return None;
        }
        self.inactive = silent;
        Some(if silent { Flow::Stopped } else { Flow::Resumed })
    }

    /// When the tick after one run at `now` is due: one period on, the short one while an event
    /// is sounding.
    pub fn next_tick(&self, now: Instant, event_pending: bool) -> Instant {
        let period = if event_pending {
            TICK
        } else {
            self.idle_tick()
        };
        now + period
    }

    fn idle_tick(&self) -> Duration {
        (self.inactivity / 10).clamp(TICK, IDLE_TICK)
    }
}

/// When an announcement's next packet is due, the one due at `due` having gone out at `now`:
/// on the 20 ms grid, but a late loop skips what it missed rather than bursting.
pub fn next_frame(due: Instant, now: Instant) -> Instant {
    let next = due + ANNOUNCE_PTIME;
    if next <= now {
        now + ANNOUNCE_PTIME
    } else {
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn the_media_clock_counts_from_the_restart() {
        let t0 = Instant::now();
        let mut c = RelayClock::new(Duration::from_secs(60), t0);
        assert_eq!(c.ms(t0 + 1500 * MS), 1500);
        let t1 = t0 + 700 * MS;
        c.restart(t1);
        assert_eq!(c.ms(t1 + 20 * MS), 20);
        assert_eq!(c.ms(t0), 0, "before the start is zero");
    }

    #[test]
    fn ticks_are_a_tenth_of_the_inactivity_within_bounds_and_short_for_events() {
        let t0 = Instant::now();
        for (inactivity, idle) in [(60_000, 1000), (5_000, 500), (200, 100)] {
            let mut c = RelayClock::new(inactivity * MS, t0);
            assert_eq!(c.restart(t0), t0 + idle * MS);
            assert_eq!(c.next_tick(t0, false), t0 + idle * MS);
            assert_eq!(c.next_tick(t0, true), t0 + TICK);
            assert_eq!(c.tick_needed_by(t0, true), Some(t0 + TICK));
            assert_eq!(c.tick_needed_by(t0, false), None);
        }
    }

    #[test]
    fn silence_is_reported_once_per_spell() {
        let t0 = Instant::now();
        let mut c = RelayClock::new(Duration::from_secs(2), t0);
        assert_eq!(c.check(t0 + 1999 * MS), None);
        assert_eq!(c.check(t0 + 2000 * MS), Some(Flow::Stopped));
        assert_eq!(c.check(t0 + 3000 * MS), None);
        c.heard(t0 + 3100 * MS);
        assert_eq!(c.check(t0 + 3200 * MS), Some(Flow::Resumed));
        assert_eq!(c.check(t0 + 4000 * MS), None);
        assert_eq!(c.check(t0 + 5100 * MS), Some(Flow::Stopped));
    }

    #[test]
    fn announcement_frames_stay_on_the_grid_and_skip_what_was_missed() {
        let t0 = Instant::now();
        assert_eq!(next_frame(t0, t0 + 3 * MS), t0 + 20 * MS);
        assert_eq!(next_frame(t0, t0 + 20 * MS), t0 + 40 * MS);
        assert_eq!(next_frame(t0, t0 + 55 * MS), t0 + 75 * MS);
    }
}
