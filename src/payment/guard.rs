//! Failed-lookup limiter for locators: a source that misses too often is locked out for a
//! while, so nobody can walk the locator space (10^6 codes at 6 digits) from one address.
//!
//! Sans-IO: callers pass the time as milliseconds on any monotonic clock and the source's IP
//! address; the guard answers, it never sleeps or reads a clock. One guard per surface that
//! resolves locators (the control API's `GET /v1/locators/{locator}`, a loop call's locator).
//!
//! Use:
//! ```
//! # use std::net::{IpAddr, Ipv4Addr};
//! # use tonewall::payment::guard::{GuardConfig, LookupGuard};
//! let mut guard = LookupGuard::new(GuardConfig::default());
//! let ip = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));
//! let now = 1_000;
//! if guard.check(ip, now).is_ok() {
//!     // ... look the locator up; then report the outcome:
//!     guard.failure(ip, now);
//! }
//! ```
//!
//! Rules:
//! - `failures_max` failures within `window_ms` of the first one lock the source out for
//!   `lockout_ms` ([`LookupGuard::check`] then answers [`Locked`] until `until_ms`). After a
//!   lockout the source starts again from zero failures.
//! - A success never forgives a failure: a source that knows one live locator (its own
//!   session) must not buy more guesses with it.
//! - IPv6 sources are counted per /64 (one host usually holds a whole /64); IPv4-mapped IPv6
//!   addresses count as their IPv4 address.
//! - Memory is bounded: at most `max_sources` sources are tracked; when a new one arrives the
//!   one not heard from for longest is forgotten first.
//!
//! What it must never do: hold a locator. It only sees addresses and outcomes.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

/// Limits of a [`LookupGuard`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuardConfig {
    /// Failures within the window that lock a source out (at least 1).
    pub failures_max: u32,
    /// The window failures are counted in, from a source's first failure.
    pub window_ms: u64,
    /// How long a locked-out source stays locked out.
    pub lockout_ms: u64,
    /// Sources tracked at most (at least 1).
    pub max_sources: usize,
}

/// Defaults: 10 misses a minute lock a source out for 5 minutes; 4,096 sources tracked
/// (about 300 KB at most).
pub const DEFAULT_GUARD: GuardConfig = GuardConfig {
    failures_max: 10,
    window_ms: 60_000,
    lockout_ms: 300_000,
    max_sources: 4_096,
};

impl Default for GuardConfig {
    fn default() -> Self {
        DEFAULT_GUARD
    }
}

/// The source is locked out until `until_ms` (same clock as the `now` given).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Locked {
    pub until_ms: u64,
}

impl Locked {
    /// Whole seconds left from `now_ms`, at least 1 (for HTTP's `Retry-After`).
    pub fn retry_after_s(&self, now_ms: u64) -> u64 {
        self.until_ms.saturating_sub(now_ms).div_ceil(1_000).max(1)
    }
}

/// How a source is tracked: IPv4 as is, IPv6 by its /64.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum SourceKey {
    V4([u8; 4]),
    V6Prefix([u8; 8]),
}

impl SourceKey {
    fn of(ip: IpAddr) -> SourceKey {
        match ip {
            IpAddr::V4(v4) => SourceKey::V4(v4.octets()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => SourceKey::V4(v4.octets()),
                None => {
                    let o = v6.octets();
                    let mut p = [0u8; 8];
                    p.copy_from_slice(&o[..8]);
                    SourceKey::V6Prefix(p)
                }
            },
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    failures: u32,
    window_start_ms: u64,
    locked_until_ms: Option<u64>,
    /// Position in `recency`.
    seq: u64,
}

/// Counts failed look-ups per source and locks out those that fail too often.
#[derive(Debug)]
pub struct LookupGuard {
    cfg: GuardConfig,
    sources: HashMap<SourceKey, Entry>,
    /// Sources by last activity, oldest first, for eviction.
    recency: BTreeMap<u64, SourceKey>,
    next_seq: u64,
}

impl LookupGuard {
    /// A guard with `cfg`; `failures_max` and `max_sources` of 0 are taken as 1.
    pub fn new(cfg: GuardConfig) -> LookupGuard {
        let cfg = GuardConfig {
            failures_max: cfg.failures_max.max(1),
            max_sources: cfg.max_sources.max(1),
            ..cfg
        };
        LookupGuard {
            cfg,
            sources: HashMap::new(),
            recency: BTreeMap::new(),
            next_seq: 0,
        }
    }

    pub fn config(&self) -> &GuardConfig {
        &self.cfg
    }

    /// May `ip` look a locator up at `now_ms`? Call before every look-up.
    pub fn check(&mut self, ip: IpAddr, now_ms: u64) -> Result<(), Locked> {
        let key = SourceKey::of(ip);
        let Some(e) = self.sources.get_mut(&key) else {
            return Ok(());
        };
        match e.locked_until_ms {
            Some(until) if now_ms < until => Err(Locked { until_ms: until }),
            Some(_) => {
                // The lockout is over: a clean slate.
                e.locked_until_ms = None;
                e.failures = 0;
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// `ip` looked up a locator that matched nothing. Returns the lockout this failure
    /// started, if it was the one too many.
    pub fn failure(&mut self, ip: IpAddr, now_ms: u64) -> Option<Locked> {
        let key = SourceKey::of(ip);
        let seq = self.touch(key, now_ms);
        let cfg = self.cfg;
        let e = self.sources.get_mut(&key)?;
        e.seq = seq;
        match e.locked_until_ms {
            // Already locked out (the caller did not check): the lockout stands as it is.
            Some(until) if now_ms < until => return None,
            Some(_) => {
                e.locked_until_ms = None;
                e.failures = 0;
            }
            None => {}
        }
        if e.failures == 0 || now_ms.saturating_sub(e.window_start_ms) >= cfg.window_ms {
            e.failures = 0;
            e.window_start_ms = now_ms;
        }
        e.failures = e.failures.saturating_add(1);
        if e.failures >= cfg.failures_max {
            let until = now_ms.saturating_add(cfg.lockout_ms);
            e.locked_until_ms = Some(until);
            e.failures = 0;
            return Some(Locked { until_ms: until });
        }
        None
    }

    /// `ip` looked up a locator that matched a live session. Forgives nothing (see the
    /// module's rules); a source with no failures pending is forgotten, freeing its slot.
    pub fn success(&mut self, ip: IpAddr, now_ms: u64) {
        let key = SourceKey::of(ip);
        let Some(e) = self.sources.get(&key) else {
            return;
        };
        let locked = e.locked_until_ms.is_some_and(|u| now_ms < u);
        let counting =
            e.failures > 0 && now_ms.saturating_sub(e.window_start_ms) < self.cfg.window_ms;
        if !locked && !counting {
            let seq = e.seq;
            self.sources.remove(&key);
            self.recency.remove(&seq);
        }
    }

    /// Sources tracked now.
    pub fn tracked(&self) -> usize {
        self.sources.len()
    }

    /// Marks `key` as the most recent source, creating its entry (evicting the oldest source
    /// when full). Returns its new sequence number.
    fn touch(&mut self, key: SourceKey, now_ms: u64) -> u64 {
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        if let Some(e) = self.sources.get(&key) {
            self.recency.remove(&e.seq);
        } else {
            while self.sources.len() >= self.cfg.max_sources {
                let Some((_, oldest)) = self.recency.pop_first() else {
                    break;
                };
                self.sources.remove(&oldest);
            }
            self.sources.insert(
                key,
                Entry {
                    failures: 0,
                    window_start_ms: now_ms,
                    locked_until_ms: None,
                    seq,
                },
            );
        }
        self.recency.insert(seq, key);
        seq
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn cfg() -> GuardConfig {
        GuardConfig {
            failures_max: 3,
            window_ms: 10_000,
            lockout_ms: 60_000,
            max_sources: 4,
        }
    }

    fn v4(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, last))
    }

    #[test]
    fn failures_within_the_window_lock_out_then_release() {
        let mut g = LookupGuard::new(cfg());
        let ip = v4(1);
        assert_eq!(g.check(ip, 0), Ok(()));
        assert_eq!(g.failure(ip, 0), None);
        assert_eq!(g.failure(ip, 1_000), None);
        assert_eq!(g.failure(ip, 2_000), Some(Locked { until_ms: 62_000 }));
        assert_eq!(g.check(ip, 2_000), Err(Locked { until_ms: 62_000 }));
        assert_eq!(g.check(ip, 61_999), Err(Locked { until_ms: 62_000 }));
        // Another source is not affected.
        assert_eq!(g.check(v4(2), 3_000), Ok(()));
        // After the lockout: a clean slate, three more failures to the next one.
        assert_eq!(g.check(ip, 62_000), Ok(()));
        assert_eq!(g.failure(ip, 62_000), None);
        assert_eq!(g.failure(ip, 62_001), None);
        assert!(g.failure(ip, 62_002).is_some());
    }

    #[test]
    fn failures_spread_beyond_the_window_do_not_lock_out() {
        let mut g = LookupGuard::new(cfg());
        let ip = v4(1);
        for i in 0..20u64 {
            // Two failures per 10 s window, never three.
            assert_eq!(g.failure(ip, i * 5_000), None, "failure {i}");
            assert_eq!(g.check(ip, i * 5_000), Ok(()));
        }
    }

    #[test]
    fn a_success_forgives_nothing() {
        let mut g = LookupGuard::new(cfg());
        let ip = v4(1);
        g.failure(ip, 0);
        g.success(ip, 1);
        g.failure(ip, 2);
        g.success(ip, 3);
        assert!(g.failure(ip, 4).is_some());
        g.success(ip, 5);
        assert!(g.check(ip, 6).is_err());
        // A source with nothing pending is forgotten on success; unknown sources stay unknown.
        let other = v4(9);
        g.success(other, 7);
        assert_eq!(g.tracked(), 1);
        g.failure(other, 0);
        g.success(other, 20_000);
        assert_eq!(g.tracked(), 1);
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_v4_as_v4() {
        let mut g = LookupGuard::new(cfg());
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        g.failure(a, 0);
        g.failure(b, 1);
        assert!(g.failure(a, 2).is_some());
        assert!(g.check(b, 3).is_err(), "same /64");
        assert!(g.check(c, 3).is_ok(), "another /64");
        let mapped = IpAddr::V6(Ipv4Addr::new(192, 0, 2, 5).to_ipv6_mapped());
        g.failure(mapped, 0);
        g.failure(v4(5), 1);
        assert!(g.failure(mapped, 2).is_some());
        assert!(g.check(v4(5), 3).is_err());
        assert!(g.check(IpAddr::V6(Ipv6Addr::LOCALHOST), 3).is_ok());
    }

    #[test]
    fn memory_is_bounded_and_the_oldest_source_goes_first() {
        let mut g = LookupGuard::new(cfg());
        for i in 0..4u8 {
            g.failure(v4(i), u64::from(i));
        }
        // Source 0 is heard from again: now source 1 is the oldest.
        g.failure(v4(0), 10);
        g.failure(v4(0), 11);
        assert_eq!(g.check(v4(0), 12), Err(Locked { until_ms: 60_011 }));
        g.failure(v4(100), 20);
        assert_eq!(g.tracked(), 4);
        // Source 1 was forgotten (its one failure with it); source 0 is still locked out.
        assert!(g.check(v4(0), 21).is_err());
        assert!(!g.sources.contains_key(&SourceKey::of(v4(1))));
        for i in 0..10_000u32 {
            let ip = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i));
            g.failure(ip, 100 + u64::from(i));
        }
        assert_eq!(g.tracked(), 4);
        assert_eq!(g.recency.len(), 4);
    }

    #[test]
    fn zero_limits_are_taken_as_one_and_retry_after_rounds_up() {
        let mut g = LookupGuard::new(GuardConfig {
            failures_max: 0,
            max_sources: 0,
            ..cfg()
        });
        assert!(g.failure(v4(1), 0).is_some());
        assert_eq!(g.tracked(), 1);
        let l = Locked { until_ms: 10_500 };
        assert_eq!(l.retry_after_s(0), 11);
        assert_eq!(l.retry_after_s(10_499), 1);
        assert_eq!(l.retry_after_s(20_000), 1);
    }
}
