//! The RTP/RTCP port pool: hands out bound socket pairs (RTP on an even port, RTCP on the next
//! odd one, RFC 3550 §11) from the configured range, and takes each pair back when its lease is
//! dropped.
//!
//! It owns the free list and nothing else: what flows through the sockets is `net::media`'s
//! business. The pool is bounded by the range; ports another process holds are skipped and
//! retried later. Released pairs go to the back of the queue so a late packet for a finished call
//! does not land in the next call that happens to reuse the port.

use std::collections::VecDeque;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::net::UdpSocket;

use crate::config::MediaConfig;

#[derive(Debug, thiserror::Error)]
pub enum PortError {
    #[error(
        "media port range {min}..={max} on {ip} is exhausted ({in_use} pairs in use, {busy} held by other processes)"
    )]
    Exhausted {
        ip: IpAddr,
        min: u16,
        max: u16,
        in_use: usize,
        busy: usize,
    },
    #[error("media port range {min}..={max} holds no RTP/RTCP pair (RTP must be even)")]
    EmptyRange { min: u16, max: u16 },
    #[error("cannot bind media socket {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

struct PoolState {
    /// RTP ports (even) not leased, oldest release first.
    free: VecDeque<u16>,
    in_use: usize,
}

/// A bounded pool of RTP/RTCP port pairs on one address. Cheap to clone (shared state).
#[derive(Clone)]
pub struct PortPool {
    ip: IpAddr,
    min: u16,
    max: u16,
    state: Arc<Mutex<PoolState>>,
}

impl fmt::Debug for PortPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PortPool")
            .field("ip", &self.ip)
            .field("min", &self.min)
            .field("max", &self.max)
            .field("available", &self.available())
            .finish()
    }
}

impl PortPool {
    /// A pool over every even port `p` in `[min, max]` whose `p + 1` is also `<= max`.
    pub fn new(ip: IpAddr, min: u16, max: u16) -> Result<PortPool, PortError> {
        let first = min.saturating_add(min % 2);
        let free: VecDeque<u16> = (u32::from(first)..u32::from(max))
            .step_by(2)
            .filter_map(|p| u16::try_from(p).ok())
            .filter(|&p| p > 0)
            .collect();
        if free.is_empty() {
            return Err(PortError::EmptyRange { min, max });
        }
        Ok(PortPool {
            ip,
            min,
            max,
            state: Arc::new(Mutex::new(PoolState { free, in_use: 0 })),
        })
    }

    pub fn from_config(cfg: &MediaConfig) -> Result<PortPool, PortError> {
        PortPool::new(cfg.address, cfg.port_min, cfg.port_max)
    }

    pub fn ip(&self) -> IpAddr {
        self.ip
    }

    /// Pairs that could be leased now (some may turn out to be held by other processes).
    pub fn available(&self) -> usize {
        self.lock().free.len()
    }

    pub fn in_use(&self) -> usize {
        self.lock().in_use
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PoolState> {
        // The state is a queue and a counter; a panic elsewhere cannot leave it inconsistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Leases a pair and binds both sockets. Must run inside a tokio runtime (the sockets are
    /// registered with its reactor). Binding is synchronous and quick; the lock is never held
    /// while binding.
    pub fn allocate(&self) -> Result<PortPair, PortError> {
        // Each free port is tried at most once per call, so a range full of ports held by
        // others ends in `Exhausted` instead of spinning.
        let attempts = self.available();
        let mut busy = 0;
        for _ in 0..attempts {
            let Some(port) = ({
                let mut st = self.lock();
                let p = st.free.pop_front();
                if p.is_some() {
                    st.in_use += 1;
                }
                p
            }) else {
                break;
            };
            let lease = PortLease {
                pool: self.clone(),
                port,
            };
            match bind_pair(self.ip, port) {
                Ok((rtp, rtcp)) => return Ok(PortPair { rtp, rtcp, lease }),
                Err(e) if is_in_use(&e) => {
                    // Held by another process: the lease's drop puts it back at the tail.
                    busy += 1;
                    drop(lease);
                }
                Err(BindError { addr, source }) => {
                    drop(lease);
                    return Err(PortError::Bind { addr, source });
                }
            }
        }
        Err(PortError::Exhausted {
            ip: self.ip,
            min: self.min,
            max: self.max,
            in_use: self.in_use(),
            busy,
        })
    }

    fn release(&self, port: u16) {
        let mut st = self.lock();
        st.in_use = st.in_use.saturating_sub(1);
        st.free.push_back(port);
    }
}

struct BindError {
    addr: SocketAddr,
    source: std::io::Error,
}

fn is_in_use(e: &BindError) -> bool {
    matches!(
        e.source.kind(),
        std::io::ErrorKind::AddrInUse | std::io::ErrorKind::PermissionDenied
    )
}

fn bind_one(addr: SocketAddr) -> Result<UdpSocket, BindError> {
    let bind = || -> std::io::Result<UdpSocket> {
        let s = std::net::UdpSocket::bind(addr)?;
        s.set_nonblocking(true)?;
        UdpSocket::from_std(s)
    };
    bind().map_err(|source| BindError { addr, source })
}

fn bind_pair(ip: IpAddr, port: u16) -> Result<(UdpSocket, UdpSocket), BindError> {
    let rtp = bind_one(SocketAddr::new(ip, port))?;
    let rtcp = bind_one(SocketAddr::new(ip, port.wrapping_add(1)))?;
    Ok((rtp, rtcp))
}

/// The right to a port pair; dropping it returns the pair to the pool.
pub struct PortLease {
    pool: PortPool,
    port: u16,
}

impl PortLease {
    /// The RTP port; RTCP is this plus one.
    pub fn rtp_port(&self) -> u16 {
        self.port
    }
}

impl fmt::Debug for PortLease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PortLease({})", self.port)
    }
}

impl Drop for PortLease {
    fn drop(&mut self) {
        self.pool.release(self.port);
    }
}

/// Bound RTP and RTCP sockets plus their lease. Drop order does not matter: the sockets close
/// when dropped and the lease only re-queues the number, to be bound again later.
#[derive(Debug)]
pub struct PortPair {
    pub rtp: UdpSocket,
    pub rtcp: UdpSocket,
    pub lease: PortLease,
}

impl PortPair {
    /// Address to advertise in SDP (`c=` and `m=` port).
    pub fn rtp_addr(&self) -> SocketAddr {
        SocketAddr::new(self.lease.pool.ip, self.lease.port)
    }

    pub fn rtcp_addr(&self) -> SocketAddr {
        SocketAddr::new(self.lease.pool.ip, self.lease.port.wrapping_add(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn free_base(ip: IpAddr, pairs: u16) -> u16 {
        // Find a run of free ports by asking the OS, then use its neighbourhood; retries cover
        // the rare collision with another test.
        for _ in 0..50 {
            let probe = std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).unwrap();
            let p = probe.local_addr().unwrap().port();
            drop(probe);
            let base = (p & !1).clamp(20_000, 60_000);
            let ok = (base..base + 2 * pairs)
                .all(|q| std::net::UdpSocket::bind(SocketAddr::new(ip, q)).is_ok());
            if ok {
                return base;
            }
        }
        panic!("no free port run");
    }

    #[tokio::test]
    async fn pairs_are_even_odd_bounded_and_returned_on_drop() {
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let base = free_base(ip, 2);
        let pool = PortPool::new(ip, base, base + 3).unwrap();
        assert_eq!(pool.available(), 2);
        let a = pool.allocate().unwrap();
        let b = pool.allocate().unwrap();
        for p in [&a, &b] {
            let rtp = p.rtp.local_addr().unwrap();
            let rtcp = p.rtcp.local_addr().unwrap();
            assert_eq!(rtp.port() % 2, 0);
            assert_eq!(rtcp.port(), rtp.port() + 1);
            assert_eq!(p.rtp_addr(), rtp);
        }
        assert_ne!(a.rtp_addr(), b.rtp_addr());
        let err = pool.allocate().unwrap_err();
        assert!(
            matches!(err, PortError::Exhausted { in_use: 2, .. }),
            "{err}"
        );
        let freed = a.rtp_addr().port();
        drop(a);
        assert_eq!(pool.in_use(), 1);
        let c = pool.allocate().unwrap();
        assert_eq!(c.rtp_addr().port(), freed);
    }

    #[tokio::test]
    async fn ports_held_elsewhere_are_skipped() {
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let base = free_base(ip, 2);
        // Someone else holds the first pair's RTCP port.
        let squatter = std::net::UdpSocket::bind(SocketAddr::new(ip, base + 1)).unwrap();
        let pool = PortPool::new(ip, base, base + 3).unwrap();
        let p = pool.allocate().unwrap();
        assert_eq!(p.rtp_addr().port(), base + 2);
        let err = pool.allocate().unwrap_err();
        assert!(matches!(err, PortError::Exhausted { busy: 1, .. }), "{err}");
        drop(squatter);
        let q = pool.allocate().unwrap();
        assert_eq!(q.rtp_addr().port(), base);
    }

    #[tokio::test]
    async fn ipv6_loopback_binds_when_available() {
        let ip: IpAddr = "::1".parse().unwrap();
        if std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_err() {
            return; // no IPv6 on this host
        }
        let base = free_base(ip, 1);
        let pool = PortPool::new(ip, base, base + 1).unwrap();
        let p = pool.allocate().unwrap();
        assert!(p.rtp.local_addr().unwrap().is_ipv6());
    }

    #[test]
    fn odd_or_tiny_ranges() {
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(matches!(
            PortPool::new(ip, 30_001, 30_002),
            Err(PortError::EmptyRange { .. })
        ));
        assert_eq!(PortPool::new(ip, 30_001, 30_004).unwrap().available(), 1);
        assert_eq!(PortPool::new(ip, 65_534, 65_535).unwrap().available(), 1);
    }
}
