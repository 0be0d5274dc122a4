//! Limits on what a stranger can make the process hold open: connection caps (global and per
//! source), the SIP allow-list applied at TCP accept, rate-limited logging of refusals, the
//! connection metrics, and the open-file budget checked at start.
//!
//! It owns counting and deciding, never I/O on a connection: the SIP and HTTP shells ask it
//! whether to keep a connection and hold the permit it gives for as long as they keep it. It
//! must never log per packet or per refused connection: at most one line per source a minute.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::config::Config;
use crate::sip::b2bua::{Route, any_route_allows};

/// `transport` and `reason` labels, both from fixed lists.
pub type ConnLabels = [(&'static str, &'static str); 2];

/// The `transport` label alone.
pub type TransportLabel = [(&'static str, &'static str); 1];

/// Connection metrics of the SIP TCP transport (`transport="sip_tcp"`) and the control API
/// (`transport="api"`). Cheap to clone: the families are shared.
#[derive(Clone, Debug, Default)]
pub struct ConnMetrics {
    /// Connections closed at accept, by reason: `not_allowed` (no route allows the source),
    /// `global_cap`, `source_cap`.
    pub refused: Family<ConnLabels, Counter>,
    /// Connections tonewall closed, by reason: `first_message_timeout`, `idle_timeout`,
    /// `too_large`, `framing` (SIP); `header_timeout`, `idle_timeout`, `handshake_timeout` (API).
    pub closed: Family<ConnLabels, Counter>,
    /// Accepted connections open now.
    pub open: Family<TransportLabel, Gauge>,
    /// SIP over TLS handshakes that failed, by `direction` (`inbound`: a trunk or peer
    /// connecting to us; `outbound`: us connecting to a contact centre) and `reason`
    /// (`expired`, `unknown_ca`, `wrong_name`, `no_client_certificate`, `not_tls`, …).
    pub tls_handshakes_failed: Family<ConnLabels, Counter>,
}

impl ConnMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "connections_refused",
            "Connections closed at accept, by transport and reason",
            self.refused.clone(),
        );
        registry.register(
            "connections_closed",
            "Connections closed by tonewall (timeouts, oversize), by transport and reason",
            self.closed.clone(),
        );
        registry.register(
            "connections_open",
            "Accepted connections open, by transport",
            self.open.clone(),
        );
        registry.register(
            "sip_tls_handshakes_failed",
            "SIP over TLS handshakes that failed, by direction and reason",
            self.tls_handshakes_failed.clone(),
        );
    }

    pub fn tls_handshake_failed(&self, direction: &'static str, reason: &'static str) {
        self.tls_handshakes_failed
            .get_or_create(&[("direction", direction), ("reason", reason)])
            .inc();
    }

    pub fn refused(&self, transport: &'static str, reason: &'static str) {
        self.refused
            .get_or_create(&[("transport", transport), ("reason", reason)])
            .inc();
    }

    pub fn closed(&self, transport: &'static str, reason: &'static str) {
        self.closed
            .get_or_create(&[("transport", transport), ("reason", reason)])
            .inc();
    }
}

/// The key per-source limits count under: an IPv4 address, or an IPv6 /64 (one host usually
/// holds a whole /64, so counting single IPv6 addresses would not limit it).
fn source_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

/// Why an accept was refused; the metric's `reason` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    NotAllowed,
    GlobalCap,
    SourceCap,
}

impl Refusal {
    pub fn label(self) -> &'static str {
        match self {
            Refusal::NotAllowed => "not_allowed",
            Refusal::GlobalCap => "global_cap",
            Refusal::SourceCap => "source_cap",
        }
    }
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    by_source: HashMap<IpAddr, usize>,
}

#[derive(Debug)]
struct LimiterInner {
    transport: &'static str,
    max: usize,
    per_source: usize,
    counts: Mutex<Counts>,
    open: Gauge,
}

/// Counts open connections of one transport, globally and per source. Taken once per accept,
/// never per packet, so a mutex is fine.
#[derive(Clone, Debug)]
pub struct ConnLimiter(Arc<LimiterInner>);

impl ConnLimiter {
    pub fn new(
        transport: &'static str,
        max: usize,
        per_source: usize,
        metrics: &ConnMetrics,
    ) -> ConnLimiter {
        ConnLimiter(Arc::new(LimiterInner {
            transport,
            max,
            per_source,
            counts: Mutex::new(Counts::default()),
            open: metrics
                .open
                .get_or_create(&[("transport", transport)])
                .clone(),
        }))
    }

    /// A permit for one more connection from `ip`, held for as long as the connection is.
    pub fn try_acquire(&self, ip: IpAddr) -> Result<ConnPermit, Refusal> {
        let key = source_key(ip);
        let mut c = self.0.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if c.total >= self.0.max {
            return Err(Refusal::GlobalCap);
        }
        let n = c.by_source.entry(key).or_insert(0);
        if *n >= self.0.per_source {
            return Err(Refusal::SourceCap);
        }
        *n += 1;
        c.total += 1;
        self.0.open.inc();
        Ok(ConnPermit {
            limiter: self.0.clone(),
            key,
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.0
            .counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .total
    }

    pub fn transport(&self) -> &'static str {
        self.0.transport
    }
}

/// One counted connection; dropping it gives the place back.
#[derive(Debug)]
pub struct ConnPermit {
    limiter: Arc<LimiterInner>,
    key: IpAddr,
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        let mut c = self
            .limiter
            .counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.by_source.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.by_source.remove(&self.key);
            }
        }
        self.limiter.open.dec();
    }
}

/// Sources a gate remembers; beyond this, lines for new sources are dropped (counted in the
/// metrics all the same) rather than letting a flood of addresses grow the map.
const LOG_GATE_SOURCES: usize = 4096;

/// One log line per source per [`LogGate::every`] at most, with how many were held back.
#[derive(Debug)]
pub struct LogGate {
    every: Duration,
    seen: Mutex<HashMap<IpAddr, (Instant, u64)>>,
}

impl Default for LogGate {
    fn default() -> Self {
        LogGate::new(Duration::from_secs(60))
    }
}

impl LogGate {
    pub fn new(every: Duration) -> LogGate {
        LogGate {
            every,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// `Some(suppressed)` when a line may be logged for `ip` now (with the number of events
    /// not logged since the last line), `None` when it must stay quiet.
    pub fn admit(&self, ip: IpAddr, now: Instant) -> Option<u64> {
        let key = source_key(ip);
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((last, held)) = seen.get_mut(&key) {
            if now.saturating_duration_since(*last) < self.every {
                *held += 1;
                return None;
            }
            let n = std::mem::take(held);
            *last = now;
            return Some(n);
        }
        if seen.len() >= LOG_GATE_SOURCES {
            let every = self.every;
            seen.retain(|_, (last, _)| now.saturating_duration_since(*last) < every);
            if seen.len() >= LOG_GATE_SOURCES {
                return None;
            }
        }
        seen.insert(key, (now, 0));
        Some(0)
    }
}

/// Who may open a SIP TCP connection: whoever the B2BUA core would take a message from
/// (`sip::b2bua::any_route_allows`): any route's `sources`, its target's and fallback's host,
/// its `peer_sources`. A route with an empty `sources` list takes calls from anywhere, so then
/// anyone may connect.
#[derive(Clone, Debug)]
pub struct SourcePolicy {
    routes: Vec<Route>,
}

impl SourcePolicy {
    /// Routes the core cannot use are left out (`run` refuses such a config before this).
    pub fn sip_from_config(cfg: &Config) -> SourcePolicy {
        SourcePolicy {
            routes: cfg.routes.iter().filter_map(|r| r.route().ok()).collect(),
        }
    }

    pub fn allows(&self, ip: IpAddr) -> bool {
        any_route_allows(&self.routes, ip)
    }
}

// ---------------------------------------------------------------------------------------------
// Open files

/// Descriptors one call holds: an RTP and an RTCP socket on each of its two legs
/// (`net::ports::PortPool::allocate`, one pair per leg; the relay keeps them for the call).
pub const FDS_PER_CALL: u64 = 4;

/// A call with a recording open on disk holds its file too.
pub const FDS_PER_RECORDING: u64 = 1;

/// The process besides calls and connections: standard streams, tokio's epoll and wake-up
/// descriptors, the SIP and API listeners and UDP socket, Redis, outgoing SIP TCP connections
/// to contact centres, files opened at start; a margin over what was counted.
pub const FDS_BASE: u64 = 128;

/// Each media thread's event loop: its epoll instance and its waker.
pub const FDS_PER_MEDIA_THREAD: u64 = 2;

/// How many descriptors a config may need at its limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FdBudget {
    pub max_calls: u64,
    pub per_call: u64,
    pub sip_connections: u64,
    pub api_connections: u64,
    pub base: u64,
}

impl FdBudget {
    pub fn from_config(cfg: &Config) -> FdBudget {
        let per_call = FDS_PER_CALL
            + if cfg.media.record_dir.is_some() {
                FDS_PER_RECORDING
            } else {
                0
            };
        // TCP and TLS each admit up to max_connections.
        use crate::config::Transport;
        let streams = [Transport::Tcp, Transport::Tls]
            .iter()
            .filter(|t| cfg.sip.transports.contains(t))
            .count() as u64;
        let sip_connections = (cfg.sip.max_connections as u64).saturating_mul(streams);
        FdBudget {
            max_calls: cfg.sip.max_calls as u64,
            per_call,
            sip_connections,
            api_connections: cfg.api.max_connections as u64,
            base: FDS_BASE + FDS_PER_MEDIA_THREAD * cfg.media.worker_threads() as u64,
        }
    }

    pub fn total(&self) -> u64 {
        self.max_calls
            .saturating_mul(self.per_call)
            .saturating_add(self.sip_connections)
            .saturating_add(self.api_connections)
            .saturating_add(self.base)
    }
}

#[derive(Debug, thiserror::Error)]
#[error(
    "the open-file limit is too low: this config needs {needed} descriptors \
     (sip.max_calls {calls} x {per_call} per call + sip.max_connections {sip} + \
     api.max_connections {api} + {base} for the process), but RLIMIT_NOFILE allows {limit} \
     (hard limit {hard}); raise the hard limit (ulimit -Hn, systemd LimitNOFILE=) or lower \
     sip.max_calls, sip.max_connections or api.max_connections",
    calls = budget.max_calls,
    per_call = budget.per_call,
    sip = budget.sip_connections,
    api = budget.api_connections,
    base = budget.base,
    hard = hard.map_or_else(|| "unlimited".to_string(), |h| h.to_string())
)]
pub struct FileLimitError {
    pub needed: u64,
    pub limit: u64,
    pub hard: Option<u64>,
    pub budget: FdBudget,
}

/// Raises the soft RLIMIT_NOFILE to the hard limit (or, where the hard limit is "unlimited",
/// as far as the kernel lets it go, at least to `wanted`) and returns the soft limit now in
/// force.
pub fn raise_nofile(wanted: u64) -> u64 {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let now = getrlimit(Resource::Nofile);
    let soft = now.current.unwrap_or(u64::MAX);
    let targets = [now.maximum, Some(wanted.max(soft))];
    for target in targets.into_iter().flatten() {
        if target <= soft {
            continue;
        }
        let new = Rlimit {
            current: Some(target),
            maximum: now.maximum,
        };
        if setrlimit(Resource::Nofile, new).is_ok() {
            break;
        }
    }
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

/// Raises the open-file limit and checks that `cfg` fits in it.
pub fn ensure_nofile(cfg: &Config) -> Result<u64, FileLimitError> {
    let budget = FdBudget::from_config(cfg);
    let needed = budget.total();
    let limit = raise_nofile(needed);
    if limit < needed {
        let hard = rustix::process::getrlimit(rustix::process::Resource::Nofile).maximum;
        return Err(FileLimitError {
            needed,
            limit,
            hard,
            budget,
        });
    }
    Ok(limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_count_globally_and_per_source_and_give_back_on_drop() {
        let m = ConnMetrics::default();
        let l = ConnLimiter::new("sip_tcp", 3, 2, &m);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let p1 = l.try_acquire(a).unwrap();
        let _p2 = l.try_acquire(a).unwrap();
        assert_eq!(l.try_acquire(a).unwrap_err(), Refusal::SourceCap);
        let _p3 = l.try_acquire(b).unwrap();
        assert_eq!(l.try_acquire(b).unwrap_err(), Refusal::GlobalCap);
        assert_eq!(l.open(), 3);
        drop(p1);
        assert_eq!(l.open(), 2);
        let _p4 = l.try_acquire(a).unwrap();
        assert_eq!(
            m.open.get_or_create(&[("transport", "sip_tcp")]).get(),
            3,
            "the gauge follows the permits"
        );
    }

    #[test]
    fn ipv6_sources_count_per_64() {
        let l = ConnLimiter::new("api", 10, 1, &ConnMetrics::default());
        let _p = l.try_acquire("2001:db8::1".parse().unwrap()).unwrap();
        assert_eq!(
            l.try_acquire("2001:db8::2".parse().unwrap()).unwrap_err(),
            Refusal::SourceCap
        );
        assert!(l.try_acquire("2001:db8:0:1::1".parse().unwrap()).is_ok());
        // IPv4-mapped addresses count as the IPv4 address.
        let _q = l.try_acquire("192.0.2.9".parse().unwrap()).unwrap();
        assert!(l.try_acquire("::ffff:192.0.2.9".parse().unwrap()).is_err());
    }

    #[test]
    fn the_log_gate_admits_one_line_per_source_per_period() {
        let g = LogGate::new(Duration::from_secs(60));
        let t0 = Instant::now();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(g.admit(a, t0), Some(0));
        assert_eq!(g.admit(a, t0 + Duration::from_secs(1)), None);
        assert_eq!(g.admit(a, t0 + Duration::from_secs(2)), None);
        assert_eq!(
            g.admit("192.0.2.2".parse().unwrap(), t0),
            Some(0),
            "another source has its own line"
        );
        assert_eq!(g.admit(a, t0 + Duration::from_secs(61)), Some(2));
    }

    #[test]
    fn the_sip_policy_allows_sources_targets_and_peers() {
        let cfg = Config::parse(
            "[[route]]\nsources = [\"127.0.0.1/32\"]\ntarget = \"sip:cc@192.0.2.10:5080\"\npeer_sources = [\"198.51.100.0/24\"]\n",
        )
        .unwrap();
        let p = SourcePolicy::sip_from_config(&cfg);
        for ok in [
            "127.0.0.1",
            "192.0.2.10",
            "198.51.100.7",
            "::ffff:127.0.0.1",
        ] {
            assert!(p.allows(ok.parse().unwrap()), "{ok}");
        }
        for no in ["127.0.0.2", "192.0.2.11", "10.0.0.1"] {
            assert!(!p.allows(no.parse().unwrap()), "{no}");
        }
        let open = Config::parse("[[route]]\nsources = []\n").unwrap();
        assert!(SourcePolicy::sip_from_config(&open).allows("203.0.113.1".parse().unwrap()));
    }

    #[test]
    fn the_budget_counts_calls_connections_and_the_process() {
        let mut cfg = Config::default();
        cfg.media.threads = 2;
        let b = FdBudget::from_config(&cfg);
        assert_eq!(b.per_call, 4);
        assert_eq!(
            b.total(),
            1000 * 4 + cfg.sip.max_connections as u64 + cfg.api.max_connections as u64 + 132
        );
        cfg.media.record_dir = Some("/tmp".into());
        assert_eq!(FdBudget::from_config(&cfg).per_call, 5);
        cfg.sip.transports = vec![crate::config::Transport::Udp];
        assert_eq!(FdBudget::from_config(&cfg).sip_connections, 0);
    }

    #[test]
    fn an_impossible_budget_names_the_numbers_and_keys() {
        let mut cfg = Config::default();
        cfg.sip.max_calls = 1 << 40;
        let e = ensure_nofile(&cfg).unwrap_err().to_string();
        for part in [
            "sip.max_calls 1099511627776",
            "x 4 per call",
            "sip.max_connections",
            "api.max_connections",
            "RLIMIT_NOFILE",
        ] {
            assert!(e.contains(part), "{e}");
        }
    }
}
